package broker

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Operator carries out operator actions (overrides, adaptive resets) and
// answers reports on the budgets. It holds no state: everything it reads or
// changes is the core's, through operatorCore, so the core's lock and the
// budgets' invariants stay the core's business. Actions are stored before
// they take effect.
type Operator struct {
	core operatorCore
}

// operatorCore is what Operator needs of the core.
type operatorCore interface {
	// knownBudget resolves modelID to the key of a budget the core has.
	knownBudget(modelID, region string) (Key, error)
	commit(ctx context.Context, c Change) error
	now() time.Time
	// setOverride and resetAdaptive apply a stored change and return the
	// budget as it now is.
	setOverride(key Key, o *Override) BudgetInfo
	resetAdaptive(key Key) BudgetInfo
	budgetInfos() []BudgetInfo
	reports(match func(Key) bool) ([]BudgetReport, time.Time)
}

// SetOverride sets the operator override of the budget modelID names; an
// empty override clears it.
func (op *Operator) SetOverride(ctx context.Context, modelID, region string, o Override) (BudgetInfo, error) {
	key, err := op.core.knownBudget(modelID, region)
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
	var p *Override
	if !o.empty() {
		o.SetAt = op.core.now()
		p = &o
	}
	if err := op.core.commit(ctx, Change{Overrides: []OverrideRecord{{Key: key, Override: p}}}); err != nil {
		return BudgetInfo{}, &Error{Kind: KindUnavailable, Message: "override could not be recorded", Err: err}
	}
	return op.core.setOverride(key, p), nil
}

// ResetAdaptive forgets the ceiling the budget modelID names has learned
// from throttles: its effective limits are the static ones again. The
// cleared state is stored first, so a restart does not bring it back.
func (op *Operator) ResetAdaptive(ctx context.Context, modelID, region string) (BudgetInfo, error) {
	key, err := op.core.knownBudget(modelID, region)
	if err != nil {
		return BudgetInfo{}, err
	}
	if err := op.core.commit(ctx, Change{Adaptive: []AdaptiveRecord{{Key: key}}}); err != nil {
		return BudgetInfo{}, &Error{Kind: KindUnavailable, Message: "adaptive reset could not be recorded", Err: err}
	}
	return op.core.resetAdaptive(key), nil
}

// Budgets lists every budget, sorted by key.
func (op *Operator) Budgets() []BudgetInfo { return op.core.budgetInfos() }

// Report describes every budget the filter selects, sorted by key, as of
// the returned time.
func (op *Operator) Report(f ReportFilter) ([]BudgetReport, time.Time) {
	return op.core.reports(f.matcher())
}

// The core's side of operatorCore.

func (b *Core) commit(ctx context.Context, c Change) error { return b.store.Commit(ctx, c) }

func (b *Core) now() time.Time { return b.clock.Now() }

func (b *Core) knownBudget(modelID, region string) (Key, error) {
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

func (b *Core) setOverride(key Key, o *Override) BudgetInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	bg := b.budgets[key]
	bg.override = o
	bg.recompute(b.cfg.Margin)
	b.dispatch(bg, b.clock.Now())
	return b.info(bg)
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

func (b *Core) info(bg *budget) BudgetInfo {
	var o *Override
	if bg.override != nil {
		c := *bg.override
		o = &c
	}
	now := b.clock.Now()
	return BudgetInfo{Spec: bg.spec, Override: o, Effective: bg.limits(now), Static: bg.static(), Margin: b.cfg.Margin,
		Burndown: bg.spec.burndown(), MaxOutputTokens: bg.spec.maxOutput(), Adaptive: b.adaptiveState(bg, now)}
}

func (b *Core) budgetInfos() []BudgetInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]BudgetInfo, 0, len(b.budgets))
	for _, bg := range b.budgets {
		if bg.retired != "" {
			// Its throughput is gone (retire.go): not a budget anyone
			// can use, nor a route file name.
			continue
		}
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

func (b *Core) reports(match func(Key) bool) ([]BudgetReport, time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock.Now()
	var out []BudgetReport
	for k, bg := range b.budgets {
		if !match(k) {
			continue
		}
		if bg.retired != "" && bg.concurrent == 0 && bg.queue.len() == 0 {
			// Its throughput is gone and nothing of it is left to
			// watch (retire.go); while leases wind down it shows.
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
