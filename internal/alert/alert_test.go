package alert

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

var (
	t0     = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	sonnet = broker.Key{Region: "us-east-1", Scope: broker.ScopeCrossRegion, Model: "anthropic.claude-sonnet-4-5-20250929-v1:0"}
	haiku  = broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: "anthropic.claude-3-haiku-20240307-v1:0"}
)

func report(k broker.Key, util float64, c broker.Counters) broker.BudgetReport {
	r := broker.BudgetReport{Utilisation: util, Counters: c}
	r.Spec.Key = k
	return r
}

func newAlerter(t *testing.T, cfg Config, sinks ...Sink) *Alerter {
	t.Helper()
	a, err := New(&fakeSource{}, sinks, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// fakeSource returns what the test set, as of the time it set.
type fakeSource struct {
	mu      sync.Mutex
	reports []broker.BudgetReport
	now     func() time.Time
}

func (f *fakeSource) set(r ...broker.BudgetReport) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports = r
}

func (f *fakeSource) Report(broker.ReportFilter) ([]broker.BudgetReport, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]broker.BudgetReport(nil), f.reports...), f.now()
}

// recorder is a Sink that keeps what it is given.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) Notify(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) all() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

func only(t *testing.T, events []Event, status Status, rule Rule) Event {
	t.Helper()
	if len(events) != 1 || events[0].Status != status || events[0].Rule != rule {
		t.Fatalf("want one %s %s event, got %+v", status, rule, events)
	}
	return events[0]
}

func none(t *testing.T, events []Event, when string) {
	t.Helper()
	if len(events) != 0 {
		t.Fatalf("%s: want no event, got %+v", when, events)
	}
}

func TestUtilisationMustBeSustained(t *testing.T) {
	a := newAlerter(t, Config{ThrottleRate: Off})
	step := 15 * time.Second
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * step) }
	// 4m45s above, one sample below, then above again.
	i := 0
	for ; i < 20; i++ {
		none(t, a.Observe([]broker.BudgetReport{report(sonnet, 0.9, broker.Counters{})}, at(i)), "above for less than 5m")
	}
	none(t, a.Observe([]broker.BudgetReport{report(sonnet, 0.79, broker.Counters{})}, at(i)), "a dip")
	i++
	start := at(i)
	for ; at(i).Sub(start) < 5*time.Minute; i++ {
		none(t, a.Observe([]broker.BudgetReport{report(sonnet, 0.8, broker.Counters{})}, at(i)), "above again, not for 5m yet")
	}
	e := only(t, a.Observe([]broker.BudgetReport{report(sonnet, 0.95, broker.Counters{})}, at(i)), StatusFiring, RuleUtilisation)
	if !e.Since.Equal(start) || !e.At.Equal(at(i)) || e.Value != 0.95 || e.Threshold != 0.8 || e.Budget != budgetOf(sonnet) {
		t.Fatalf("firing event %+v; want since %v at %v", e, start, at(i))
	}
	if !strings.Contains(e.Summary, "utilisation 95.0%, at or above 80.0% for 5m0s") || !strings.HasPrefix(e.Text, "[FIRING] ") {
		t.Fatalf("summary %q text %q", e.Summary, e.Text)
	}
	// Deduplicated while it holds.
	for range 100 {
		i++
		none(t, a.Observe([]broker.BudgetReport{report(sonnet, 1.0, broker.Counters{})}, at(i)), "still firing")
	}
	i++
	r := only(t, a.Observe([]broker.BudgetReport{report(sonnet, 0.5, broker.Counters{})}, at(i)), StatusResolved, RuleUtilisation)
	if !r.Since.Equal(start) || r.Value != 0.5 || !strings.HasPrefix(r.Text, "[RESOLVED] ") {
		t.Fatalf("resolved event %+v", r)
	}
	i++
	none(t, a.Observe([]broker.BudgetReport{report(sonnet, 0.5, broker.Counters{})}, at(i)), "resolved once")
}

// traffic adds calls and throttles to c.
func traffic(c *broker.Counters, calls, throttles int64) {
	c.Completed += calls
	c.Throttled += throttles
}

func TestThrottleRate(t *testing.T) {
	a := newAlerter(t, Config{Utilisation: Off})
	var c broker.Counters
	now := t0
	obs := func(calls, throttles int64) []Event {
		now = now.Add(15 * time.Second)
		traffic(&c, calls, throttles)
		return a.Observe([]broker.BudgetReport{report(sonnet, 0, c)}, now)
	}
	none(t, a.Observe([]broker.BudgetReport{report(sonnet, 0, c)}, now), "first sample")
	// One throttle in 3 calls: 33%, but too few calls to page anyone.
	none(t, obs(3, 1), "3 calls")
	for range 7 {
		none(t, obs(2, 0), "quiet traffic") // 17 calls, 1 throttle in the window
	}
	// The 20th call in the window is throttled: 2/20 = 10%.
	e := only(t, obs(3, 1), StatusFiring, RuleThrottleRate)
	if e.Value != 0.1 || e.Threshold != 0.01 || !e.Since.Equal(now) {
		t.Fatalf("firing %+v", e)
	}
	if !strings.Contains(e.Summary, "throttle rate 10.0% (2 throttles in 20 calls over the last 2m15s), above 1.0%") {
		t.Fatalf("summary %q", e.Summary)
	}
	firedAt := now
	// Traffic falls below MinCalls while throttles go on: still firing,
	// no new event.
	for range 19 { // 4m45s: the throttles are still in the window
		none(t, obs(0, 0), "no traffic yet throttles in the window")
	}
	// A whole window without calls: the rate is 0, resolved.
	r := only(t, obs(0, 0), StatusResolved, RuleThrottleRate)
	if r.Status != StatusResolved || !r.Since.Equal(firedAt) || r.Value != 0 {
		t.Fatalf("resolved %+v", r)
	}
}

func TestThrottleRateCountsReportedThrottles(t *testing.T) {
	a := newAlerter(t, Config{Utilisation: Off, Window: time.Minute, MinCalls: 10})
	var c broker.Counters
	none(t, a.Observe([]broker.BudgetReport{report(haiku, 0, c)}, t0), "first")
	c.Completed, c.ReportedThrottles = 9, 1 // 10 calls, one reported throttle
	e := only(t, a.Observe([]broker.BudgetReport{report(haiku, 0, c)}, t0.Add(time.Second)), StatusFiring, RuleThrottleRate)
	if e.Value != 0.1 {
		t.Fatalf("rate %v, want 1/10", e.Value)
	}
}

func TestThrottleRateWindowSlides(t *testing.T) {
	// A burst of throttles long ago does not count against today's calls.
	a := newAlerter(t, Config{Utilisation: Off, Window: time.Minute})
	var c broker.Counters
	now := t0
	none(t, a.Observe([]broker.BudgetReport{report(sonnet, 0, c)}, now), "first")
	traffic(&c, 100, 50)
	now = now.Add(10 * time.Second)
	only(t, a.Observe([]broker.BudgetReport{report(sonnet, 0, c)}, now), StatusFiring, RuleThrottleRate)
	for range 5 { // 50 s: the burst is still in the window
		now = now.Add(10 * time.Second)
		traffic(&c, 100, 0)
		none(t, a.Observe([]broker.BudgetReport{report(sonnet, 0, c)}, now), "burst still in the window")
	}
	now = now.Add(10 * time.Second)
	traffic(&c, 100, 1) // 1 in the 600 calls of the last minute
	only(t, a.Observe([]broker.BudgetReport{report(sonnet, 0, c)}, now), StatusResolved, RuleThrottleRate)
}

func TestRefusalRateIsOffUnlessSet(t *testing.T) {
	for _, rate := range []float64{0, 0.05} {
		a := newAlerter(t, Config{Utilisation: Off, ThrottleRate: Off, RefusalRate: rate})
		c := broker.Counters{}
		none(t, a.Observe([]broker.BudgetReport{report(sonnet, 0, c)}, t0), "first")
		c.Granted, c.Refused = 50, 50
		ev := a.Observe([]broker.BudgetReport{report(sonnet, 0, c)}, t0.Add(time.Second))
		if rate == 0 {
			none(t, ev, "refusal rule off")
			continue
		}
		if e := only(t, ev, StatusFiring, RuleRefusalRate); e.Value != 0.5 {
			t.Fatalf("refusal rate %v", e.Value)
		}
	}
}

func TestRepeat(t *testing.T) {
	a := newAlerter(t, Config{ThrottleRate: Off, UtilisationFor: time.Minute, Repeat: time.Hour})
	obs := func(at time.Duration) []Event {
		return a.Observe([]broker.BudgetReport{report(sonnet, 0.9, broker.Counters{})}, t0.Add(at))
	}
	none(t, obs(0), "start")
	first := only(t, obs(time.Minute), StatusFiring, RuleUtilisation)
	none(t, obs(59*time.Minute), "before the repeat interval")
	again := only(t, obs(61*time.Minute), StatusFiring, RuleUtilisation)
	if !again.Repeat || first.Repeat || !again.Since.Equal(first.Since) {
		t.Fatalf("repeat %+v after %+v", again, first)
	}
	none(t, obs(62*time.Minute), "just repeated")
	only(t, obs(121*time.Minute), StatusFiring, RuleUtilisation)
}

func TestBudgetsAreIndependentAndGoneResolves(t *testing.T) {
	a := newAlerter(t, Config{ThrottleRate: Off, UtilisationFor: time.Minute})
	both := func(at time.Duration, us, uh float64) []Event {
		return a.Observe([]broker.BudgetReport{report(haiku, uh, broker.Counters{}), report(sonnet, us, broker.Counters{})}, t0.Add(at))
	}
	none(t, both(0, 0.9, 0.1), "start")
	e := only(t, both(time.Minute, 0.9, 0.9), StatusFiring, RuleUtilisation)
	if e.Budget.Model != sonnet.Model {
		t.Fatalf("fired for %v", e.Budget)
	}
	if al := a.Alerts(); len(al) != 2 || al[0].Firing || !al[1].Firing || al[1].Budget.Scope != "cross-region" {
		t.Fatalf("alerts %+v", al)
	}
	// Sonnet disappears from the report: its alert resolves.
	ev := a.Observe([]broker.BudgetReport{report(haiku, 0.9, broker.Counters{})}, t0.Add(90*time.Second))
	r := only(t, ev, StatusResolved, RuleUtilisation)
	if r.Budget.Model != sonnet.Model || !strings.Contains(r.Summary, "no longer reported") {
		t.Fatalf("resolved %+v", r)
	}
	if al := a.Alerts(); len(al) != 1 || al[0].Budget.Model != haiku.Model {
		t.Fatalf("alerts after sonnet went: %+v", al)
	}
}

func TestCounterResetStartsOver(t *testing.T) {
	a := newAlerter(t, Config{Utilisation: Off})
	none(t, a.Observe([]broker.BudgetReport{report(sonnet, 0, broker.Counters{Completed: 1000})}, t0), "first")
	// A new broker behind the source: counters from zero. Without the
	// reset the delta would be negative calls.
	none(t, a.Observe([]broker.BudgetReport{report(sonnet, 0, broker.Counters{Completed: 30, Throttled: 30})}, t0.Add(time.Second)), "reset")
	e := only(t, a.Observe([]broker.BudgetReport{report(sonnet, 0, broker.Counters{Completed: 60, Throttled: 60})}, t0.Add(2*time.Second)), StatusFiring, RuleThrottleRate)
	if e.Value != 1 {
		t.Fatalf("rate after reset %v", e.Value)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Utilisation: 1.5}, "utilisation 1.5"},
		{Config{ThrottleRate: -0.5}, "throttle_rate -0.5"},
		{Config{Window: -time.Second}, "window -1s"},
		{Config{MinCalls: -1}, "min_calls -1"},
		{Config{Interval: -1}, "interval"},
	} {
		if _, err := New(&fakeSource{}, nil, tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v; want an error naming %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := New(nil, nil, Config{}); err == nil {
		t.Error("New with a nil source succeeded")
	}
}

// TestEventsAlternate drives random samples and checks, after each one,
// that every (rule, budget) alternates firing, resolved, firing... (no
// repeat configured) and that each firing met its rule.
func TestEventsAlternate(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	a := newAlerter(t, Config{UtilisationFor: time.Minute, Window: time.Minute, MinCalls: 5})
	last := map[alertKey]Status{}
	counters := map[broker.Key]*broker.Counters{sonnet: {}, haiku: {}}
	now := t0
	for i := range 5000 {
		now = now.Add(time.Duration(1+rng.IntN(20)) * time.Second)
		var reps []broker.BudgetReport
		for _, k := range []broker.Key{haiku, sonnet} {
			c := counters[k]
			calls := rng.Int64N(10)
			traffic(c, calls, rng.Int64N(calls+1)/max(1, rng.Int64N(20)))
			reps = append(reps, report(k, 0.6+0.4*rng.Float64(), *c))
		}
		for _, e := range a.Observe(reps, now) {
			key := haiku
			if e.Budget.Model == sonnet.Model {
				key = sonnet
			}
			ak := alertKey{rule: e.Rule, key: key}
			prev, seen := last[ak]
			if e.Status == prev || (!seen && e.Status == StatusResolved) {
				t.Fatalf("step %d: %s %s after %q", i, e.Status, e.Rule, prev)
			}
			last[ak] = e.Status
			if e.Status == StatusFiring && !(e.Value > e.Threshold || (e.Rule == RuleUtilisation && e.Value >= e.Threshold)) {
				t.Fatalf("step %d: fired %+v below its threshold", i, e)
			}
		}
	}
	if len(last) < 4 {
		t.Fatalf("the walk exercised only %v", last)
	}
}

// TestRunEvaluatesEveryInterval runs the loop on synctest's clock: the
// alert fires at the first evaluation that sees the condition held for
// UtilisationFor, and Run returns when its ctx ends.
func TestRunEvaluatesEveryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		src := &fakeSource{now: time.Now}
		src.set(report(sonnet, 0.9, broker.Counters{}))
		rec := &recorder{}
		a, err := New(src, []Sink{rec}, Config{Interval: 10 * time.Second, UtilisationFor: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { a.Run(ctx); close(done) }()
		time.Sleep(25 * time.Second)
		synctest.Wait()
		none(t, rec.all(), "after 25s")
		time.Sleep(10 * time.Second)
		synctest.Wait()
		e := only(t, rec.all(), StatusFiring, RuleUtilisation)
		if !e.Since.Equal(start) || e.At.Sub(start) != 30*time.Second {
			t.Fatalf("fired %+v; start %v", e, start)
		}
		cancel()
		<-done
	})
}
