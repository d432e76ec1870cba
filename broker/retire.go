package broker

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Provisioned Throughputs come and go (a no-commitment one is deleted, a
// commitment ends), and a call to a gone one fails at AWS; so a
// provisioned budget serves only while discovery sees its throughput
// InService. Its capacity is the operator's to state (a budgets file
// entry keyed by the ARN, or a rate per model unit that discovery
// multiplies by the units it lists): AWS publishes no tokens-per-minute
// rate per model unit, and a number invented here would over-grant or
// waste it.
//
// A budget whose throughput is gone is retired, not deleted: it grants
// nothing (Acquire and route members fail with KindNotFound naming the
// ARN), leaves every route it is in and Budgets (the report too, once
// nothing of it runs), and keeps its leases, chunks and windows, which
// wind down as any budget's do. When its throughput is back
// in service it returns, and so do its routes' targets. Retirement is not
// stored: after a restart the budget serves until the first discovery
// says otherwise (a call to a gone throughput fails at AWS; it over-grants
// nothing).

// ProvisionedState is what one discovery saw of the account's Provisioned
// Throughputs, for SetProvisioned.
type ProvisionedState struct {
	// Regions whose listing succeeded: only their budgets can be judged.
	Regions []string
	// Throughputs listed in those Regions.
	Throughputs []ProvisionedThroughput
	At          time.Time
}

// provisionedInService is the status AWS gives a throughput that serves
// calls (Creating, Updating, Failed do not).
const provisionedInService = "InService"

// SetProvisioned retires the provisioned budgets of st's Regions whose
// throughput is not InService and brings back those that are, and updates
// the routes in service to match, all under one hold of the lock: no
// caller sees a route whose target is retired, or a half-applied set. It
// returns what changed and what an operator should know (a throughput in
// service with no budget, a budget serving another model than AWS says),
// one sentence each, for the discovery status and the log.
func (b *Core) SetProvisioned(st ProvisionedState) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock.Now()
	regions := make(map[string]bool, len(st.Regions))
	for _, r := range st.Regions {
		regions[r] = true
	}
	listed := make(map[string]ProvisionedThroughput, len(st.Throughputs))
	for _, p := range st.Throughputs {
		listed[p.ARN] = p
	}
	var notes []string
	changed := false
	for _, k := range slices.SortedFunc(maps.Keys(b.budgets), compareKeys) {
		bg := b.budgets[k]
		if k.Scope != ScopeProvisioned || !regions[k.Region] {
			continue
		}
		p, ok := listed[k.Model]
		why := ""
		switch {
		case !ok:
			why = fmt.Sprintf("provisioned throughput %s is gone (not listed in %s at %s)", k.Model, k.Region, st.At.UTC().Format(time.RFC3339))
		case p.Status != provisionedInService:
			why = fmt.Sprintf("provisioned throughput %s is %s, not InService (at %s)", k.Model, p.Status, st.At.UTC().Format(time.RFC3339))
		}
		if ok {
			if base := baseModelOf(p.Model); base != "" && base != bg.spec.Serves {
				notes = append(notes, fmt.Sprintf("budget %s serves %s by its spec, but AWS says the throughput runs %s; correct the budgets file", k, bg.spec.Serves, base))
			}
		}
		switch {
		case why != "" && bg.retired == "":
			bg.retired = why
			notes = append(notes, "retired budget "+k.String()+": "+why)
			changed = true
			// Its waiters fail now (a route's wait on its other
			// targets), not at their deadline.
			b.dispatch(bg, now)
		case why == "" && bg.retired != "":
			bg.retired = ""
			notes = append(notes, "budget "+k.String()+" is back: its provisioned throughput is InService")
			changed = true
		}
	}
	for _, p := range st.Throughputs {
		if p.Status != provisionedInService || !regions[p.Region] {
			continue
		}
		if _, ok := b.budgets[Key{Region: p.Region, Scope: ScopeProvisioned, Model: p.ARN}]; !ok {
			notes = append(notes, fmt.Sprintf("provisioned throughput %s (%s, %d model units of %s) is InService but has no budget: AWS publishes no per-model-unit rate, so state its capacity in the budgets file (\"model\": the ARN, \"serves\", \"tpm\"), or what one model unit buys for its model (\"provisioned_rates\"), to route to it",
				p.ARN, p.Name, p.ModelUnits, cmp.Or(baseModelOf(p.Model), p.Model)))
		}
	}
	if changed {
		notes = append(notes, b.reroute()...)
	}
	return notes
}

// reroute gives each route in service the targets of its configuration
// whose budgets are not retired, as a new route value; callers waiting on
// the old one move onto it as after SetRoutes (follow): they leave a
// retired target and join one back in service. A route with no target left
// keeps its retired ones, so a call on it is refused naming why, rather
// than the route vanishing from under a client's cap. Caller holds b.mu.
func (b *Core) reroute() []string {
	var notes []string
	next := maps.Clone(b.routing.byName)
	for _, name := range slices.Sorted(maps.Keys(b.routing.byName)) {
		rt := b.routing.byName[name]
		nrt := &route{Route: Route{Name: rt.Name, Model: rt.Model}, refused: rt.refused,
			configured: rt.configured, cbudgets: rt.cbudgets}
		var gone []string
		for i, bg := range rt.cbudgets {
			t := rt.configured[i]
			if bg.retired != "" {
				gone = append(gone, fmt.Sprintf("target %d (%s)", i+1, t))
				continue
			}
			c := TargetCounters{}
			if j := slices.Index(rt.Targets, t); j >= 0 {
				c = rt.counters[j]
			}
			nrt.Targets = append(nrt.Targets, t)
			nrt.budgets = append(nrt.budgets, bg)
			nrt.counters = append(nrt.counters, c)
		}
		if len(nrt.Targets) == 0 {
			notes = append(notes, fmt.Sprintf("route %s: every target is out of service (%s); calls on it are refused until one returns", name, strings.Join(gone, ", ")))
			continue
		}
		if slices.Equal(nrt.Targets, rt.Targets) {
			continue
		}
		next[name] = nrt
		if len(gone) > 0 {
			notes = append(notes, fmt.Sprintf("route %s: %s out of service, %d of %d targets left", name, strings.Join(gone, ", "), len(nrt.Targets), len(rt.configured)))
		} else {
			notes = append(notes, fmt.Sprintf("route %s: all %d targets in service again", name, len(nrt.Targets)))
		}
	}
	b.follow(next, b.clock.Now())
	b.routing.byName = next
	return notes
}

// baseModelOf is the model id of a foundation model ARN (what
// ListProvisionedModelThroughputs gives), or s itself when it is an id.
func baseModelOf(s string) string {
	if strings.HasPrefix(s, "arn:") {
		return s[strings.LastIndex(s, "/")+1:]
	}
	return s
}
