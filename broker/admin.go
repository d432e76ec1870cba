package broker

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// SetSpecs adds or updates budgets. They are stored first, then take effect;
// waiters are re-examined, since a limit may have grown. Budgets not named
// keep their current spec.
func (b *Broker) SetSpecs(ctx context.Context, specs []Spec) error {
	for _, s := range specs {
		if err := s.validate(); err != nil {
			return &Error{Kind: KindInvalid, Message: err.Error()}
		}
	}
	if err := b.store.Commit(ctx, Change{Specs: specs}); err != nil {
		return &Error{Kind: KindUnavailable, Message: "budgets could not be recorded", Err: err}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock.Now()
	for _, s := range specs {
		bg := b.budgets[s.Key]
		if bg == nil {
			b.budgets[s.Key] = newBudget(s, &b.cfg)
			continue
		}
		bg.spec = s
		bg.recompute(b.cfg.Margin)
		b.dispatch(bg, now)
	}
	return nil
}

// SetOverride sets the operator override of the budget modelID names; an
// empty override clears it.
func (b *Broker) SetOverride(ctx context.Context, modelID, region string, o Override) (BudgetInfo, error) {
	key, err := b.knownBudget(modelID, region)
	if err != nil {
		return BudgetInfo{}, err
	}
	for _, f := range []struct {
		name string
		v    *int64
	}{{"override.requests_per_minute", o.RPM}, {"override.tokens_per_minute", o.TPM}, {"override.tokens_per_day", o.TPD}, {"override.concurrency", o.Concurrency}} {
		if f.v != nil && *f.v < 0 {
			return BudgetInfo{}, invalidf(f.name, "is negative (%d)", *f.v)
		}
	}
	if len(o.Reason) > 1024 {
		return BudgetInfo{}, invalidf("override.reason", "is %d bytes long; at most 1024", len(o.Reason))
	}
	var op *Override
	if !o.empty() {
		o.SetAt = b.clock.Now()
		op = &o
	}
	if err := b.store.Commit(ctx, Change{Overrides: []OverrideRecord{{Key: key, Override: op}}}); err != nil {
		return BudgetInfo{}, &Error{Kind: KindUnavailable, Message: "override could not be recorded", Err: err}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	bg := b.budgets[key]
	bg.override = op
	bg.recompute(b.cfg.Margin)
	now := b.clock.Now()
	b.dispatch(bg, now)
	return b.info(bg), nil
}

// knownBudget resolves modelID to the key of a budget the broker has.
func (b *Broker) knownBudget(modelID, region string) (Key, error) {
	key, err := ParseModelID(modelID, region, b.cfg.DefaultRegion)
	if err != nil {
		return Key{}, err
	}
	b.mu.Lock()
	_, ok := b.budgets[key]
	b.mu.Unlock()
	if !ok {
		return Key{}, notFoundf("no budget for %s %s in %s", key.Scope, key.Model, key.Region)
	}
	return key, nil
}

// BudgetInfo describes a budget's configuration.
type BudgetInfo struct {
	Spec     Spec
	Override *Override
	// Static is override or quota x margin; Effective is Static lowered by
	// the adaptive ceiling in force.
	Static, Effective Limits
	Adaptive          AdaptiveState
	Margin            float64
	Burndown          float64
	MaxOutputTokens   int64
}

func (b *Broker) info(bg *budget) BudgetInfo {
	var o *Override
	if bg.override != nil {
		c := *bg.override
		o = &c
	}
	now := b.clock.Now()
	return BudgetInfo{Spec: bg.spec, Override: o, Effective: bg.limits(now), Static: bg.static(), Margin: b.cfg.Margin,
		Burndown: bg.spec.burndown(), MaxOutputTokens: bg.spec.maxOutput(), Adaptive: b.adaptiveState(bg, now)}
}

// Budgets lists every budget, sorted by key.
func (b *Broker) Budgets() []BudgetInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]BudgetInfo, 0, len(b.budgets))
	for _, bg := range b.budgets {
		out = append(out, b.info(bg))
	}
	slices.SortFunc(out, func(x, y BudgetInfo) int { return compareKeys(x.Spec.Key, y.Spec.Key) })
	return out
}

func compareKeys(x, y Key) int {
	if c := strings.Compare(x.Region, y.Region); c != 0 {
		return c
	}
	if c := strings.Compare(x.Model, y.Model); c != 0 {
		return c
	}
	return int(x.Scope) - int(y.Scope)
}

// WindowUsage is what a budget has used in each of its windows.
type WindowUsage struct {
	RequestsLastMinute, TokensLastMinute, TokensLastDay, Concurrent int64
}

// BudgetReport is one budget's state.
type BudgetReport struct {
	BudgetInfo
	Usage       WindowUsage
	Outstanding int64 // active leases
	Waiters     int64
	Counters    Counters
	Utilisation float64 // of the tightest limit, 0..1
}

// ReportFilter selects budgets; empty fields match all. Model matches a
// substring of the model id, case-insensitively.
type ReportFilter struct {
	Region string
	Model  string
}

// Report describes every budget the filter selects, sorted by key, as of
// the returned time.
func (b *Broker) Report(f ReportFilter) ([]BudgetReport, time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock.Now()
	var out []BudgetReport
	match := f.matcher()
	for k, bg := range b.budgets {
		if !match(k) {
			continue
		}
		out = append(out, BudgetReport{
			BudgetInfo: b.info(bg),
			Usage: WindowUsage{
				RequestsLastMinute: bg.requests.used(now),
				TokensLastMinute:   bg.tokens.used(now),
				TokensLastDay:      bg.dayTokens.used(now),
				Concurrent:         bg.concurrent,
			},
			Outstanding: bg.concurrent,
			Waiters:     int64(bg.queue.len()),
			Counters:    bg.counters,
			Utilisation: bg.utilisation(now),
		})
	}
	slices.SortFunc(out, func(x, y BudgetReport) int { return compareKeys(x.Spec.Key, y.Spec.Key) })
	return out, now
}

// String renders limits compactly for logs and messages.
func (l Limits) String() string {
	return fmt.Sprintf("rpm=%d tpm=%d tpd=%d concurrency=%d", l.RPM, l.TPM, l.TPD, l.Concurrency)
}

// LeaseClient returns the client a lease was granted to ("" if unknown).
func (b *Broker) LeaseClient(id string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if l := b.leases[id]; l != nil {
		return l.Client
	}
	return ""
}
