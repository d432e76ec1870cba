package broker_test

import (
	"context"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// TestHistoryCountsEveryEvent drives grants, settlements of each outcome, a
// refusal, a reported throttle and an expiry, and checks that Activity and
// History see each exactly once, before the sweep writes them (from memory)
// and after (from the store), and that the store saw them once.
func TestHistoryCountsEveryEvent(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, spec("anthropic.claude-3-haiku-20240307-v1:0", broker.Limits{RPM: 4, TPM: 100_000}))
	req := func(client string) broker.AcquireRequest {
		return broker.AcquireRequest{ModelID: haiku3, Client: client, InputTokens: 100, MaxOutputTokens: 400}
	}
	a1, a2, a3 := e.mustGrant(req("a")), e.mustGrant(req("a")), e.mustGrant(req("a"))
	b1 := e.mustGrant(req("b"))
	if d, err := e.acquire(req("b")); err != nil || d.Granted {
		t.Fatalf("fifth call in the minute: %+v, %v; want a refusal (RPM 4)", d, err)
	}
	e.clock.Advance(10 * time.Second)
	mustComplete := func(id string, o broker.Outcome, out int64) {
		t.Helper()
		if _, err := e.b.Complete(ctx, id, o, broker.Usage{InputTokens: 100, OutputTokens: out}); err != nil {
			t.Fatal(err)
		}
	}
	mustComplete(a1.ID, broker.OutcomeSuccess, 150)
	mustComplete(a2.ID, broker.OutcomeSuccess, 400) // hit max_tokens
	mustComplete(a3.ID, broker.OutcomeThrottled, 0)
	if _, err := e.b.ReportThrottle(ctx, haiku3, "", "b"); err != nil {
		t.Fatal(err)
	}
	_ = b1                                       // left to expire
	e.clock.Advance(5*time.Minute + time.Second) // the default LeaseTTL, and then some
	e.b.Sweep(ctx)

	check := func(when string) {
		t.Helper()
		e.clock.Advance(0)
		act, _, err := e.b.Activity(ctx, broker.ReportFilter{})
		if err != nil {
			t.Fatal(err)
		}
		a := act[broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: "anthropic.claude-3-haiku-20240307-v1:0"}]
		if a == nil {
			t.Fatalf("%s: no activity for the budget: %v", when, act)
		}
		h := a.LastHour
		want := broker.Stats{Granted: 4, Refused: 1, Completed: 3, Throttled: 1, ReportedThrottles: 1, Expired: 1,
			ReservedTokens: 4 * 500, SettledTokens: 250 + 500, InputTokens: 300, OutputTokens: 550, Truncated: 1,
			WindowTokens: 250 + 500 + 500, WindowRequests: 3}
		got := h
		got.OutputHist, got.LimitTPM, got.LimitRPM = nil, 0, 0
		if got != want {
			t.Errorf("%s: last hour\n got %+v\nwant %+v", when, got, want)
		}
		if h.OutputHist.Count() != 2 {
			t.Errorf("%s: output histogram counts %d calls; want the 2 successful ones", when, h.OutputHist.Count())
		}
		if h.Calls() != 4 || h.ThrottleRate() != 0.5 { // 3 settled + 1 reported; 2 throttled
			t.Errorf("%s: calls %d, throttle rate %v; want 4 and 0.5", when, h.Calls(), h.ThrottleRate())
		}
		if len(a.TopClients) != 2 || a.TopClients[0].Client != "a" || a.TopClients[0].WindowTokens != 750 || a.TopClients[1].Client != "b" {
			t.Errorf("%s: top clients %+v; want a (750 tokens) then b", when, a.TopClients)
		}
		series, err := e.b.History(ctx, broker.HistoryQuery{From: t0, To: t0.Add(10 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if len(series) != 1 || len(series[0].Points) != 10 {
			t.Fatalf("%s: history %+v; want one budget with 10 points", when, series)
		}
		p := series[0].Points
		if p[0].Granted != 4 || p[0].Completed != 3 || p[5].Expired != 1 || series[0].Total.Granted != 4 {
			t.Errorf("%s: points %+v", when, p)
		}
	}
	// The minute of the events must be over for LastHour to include it.
	e.clock.Advance(time.Minute)
	check("before the flush")
	e.b.Sweep(ctx)
	if n := len(e.store.stats); n == 0 {
		t.Fatal("the sweep wrote no history to the store")
	}
	check("after the flush")
	e.b.Sweep(ctx) // nothing new: a second flush must not add again
	check("after a second sweep")
}

func TestHistoryUndoneGrantIsNotCounted(t *testing.T) {
	e := newEnv(t, spec("anthropic.claude-3-haiku-20240307-v1:0", broker.Limits{RPM: 10, TPM: 100_000}))
	e.store.setFail(errDiskFull)
	if _, err := e.acquire(broker.AcquireRequest{ModelID: haiku3, Client: "a", InputTokens: 10, MaxOutputTokens: 10}); err == nil {
		t.Fatal("grant succeeded with a failing store")
	}
	e.store.setFail(nil)
	e.clock.Advance(time.Minute)
	act, _, err := e.b.Activity(context.Background(), broker.ReportFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for k, a := range act {
		if a.LastHour.Granted != 0 || a.LastHour.WindowTokens != 0 || a.LastHour.ReservedTokens != 0 {
			t.Errorf("%v: an undone grant is in history: %+v", k, a.LastHour)
		}
	}
}

func TestHistoryRecommendsMaxTokens(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, spec("anthropic.claude-3-haiku-20240307-v1:0", broker.Limits{RPM: 1000, TPM: 10_000_000}))
	settle := func(n int, out func(i int) int64, maxTokens int64) {
		for i := range n {
			l := e.mustGrant(broker.AcquireRequest{ModelID: haiku3, Client: "a", InputTokens: 10, MaxOutputTokens: maxTokens})
			if _, err := e.b.Complete(ctx, l.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 10, OutputTokens: out(i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	activity := func() *broker.Activity {
		e.clock.Advance(time.Minute)
		act, _, err := e.b.Activity(ctx, broker.ReportFilter{})
		if err != nil || len(act) != 1 {
			t.Fatalf("activity %v, %v", act, err)
		}
		for _, a := range act {
			return a
		}
		return nil
	}
	settle(10, func(i int) int64 { return 100 }, 4096)
	if a := activity(); a.RecommendedMaxTokens != 0 || a.RecommendationNote == "" {
		t.Errorf("10 calls: recommended %d (%q); want none, with a reason", a.RecommendedMaxTokens, a.RecommendationNote)
	}
	// Outputs 1..100: the 99th percentile is 99, in the bucket with bound
	// ceil(2^(27/4)) = 108, rounded up to 128.
	settle(90, func(i int) int64 { return int64(i + 11) }, 4096)
	if a := activity(); a.RecommendedMaxTokens != 128 || a.OutputP99 != 108 {
		t.Errorf("outputs 1..100: recommended %d, p99 %d; want 128 and 108 (%s)", a.RecommendedMaxTokens, a.OutputP99, a.RecommendationNote)
	}
	// Outputs capped by a small max_tokens say nothing about the need.
	settle(10, func(int) int64 { return 64 }, 64)
	if a := activity(); a.RecommendedMaxTokens != 0 {
		t.Errorf("10%% truncated: recommended %d; want none (%s)", a.RecommendedMaxTokens, a.RecommendationNote)
	}
}

func TestHistogramBuckets(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 100_000 {
		v := r.Int64N(1 << 20)
		var h broker.Histogram
		h.Observe(v)
		q := h.Quantile(1)
		if q < v {
			t.Fatalf("value %d counted in a bucket with bound %d", v, q)
		}
		if v > 0 && float64(q) > float64(v)*1.19+1 {
			t.Fatalf("value %d counted in a bucket with bound %d: more than 19%% above", v, q)
		}
	}
	var h broker.Histogram
	if h.Quantile(0.5) != 0 {
		t.Error("empty histogram has a quantile")
	}
}

func TestHistoryQueryBounds(t *testing.T) {
	e := newEnv(t)
	for _, q := range []broker.HistoryQuery{
		{From: t0, To: t0},
		{From: t0, To: t0.Add(time.Hour), Step: 90 * time.Second},
		{From: t0, To: t0.Add(365 * 24 * time.Hour)},
	} {
		if _, err := e.b.History(context.Background(), q); err == nil {
			t.Errorf("History(%+v) succeeded; want an invalid-argument error", q)
		}
	}
}

// TestHistoryReadersShareNothingWithPending reads history while settlements
// keep changing the minute in memory; under -race, a reader holding the
// pending histogram instead of a copy is reported.
func TestHistoryReadersShareNothingWithPending(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, spec("anthropic.claude-3-haiku-20240307-v1:0", broker.Limits{RPM: 100_000, TPM: 1 << 40}))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 300 {
			l, err := e.b.Acquire(ctx, broker.AcquireRequest{ModelID: haiku3, Client: "a", InputTokens: 10, MaxOutputTokens: 1000})
			if err != nil || !l.Granted {
				t.Errorf("acquire: %+v %v", l, err)
				return
			}
			e.b.Complete(ctx, l.Lease.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 10, OutputTokens: int64(i)})
		}
	}()
	for reading := true; reading; {
		select {
		case <-done:
			reading = false
		default:
		}
		if _, err := e.b.History(ctx, broker.HistoryQuery{From: t0, To: t0.Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		series, err := e.b.History(ctx, broker.HistoryQuery{From: t0, To: t0.Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range series {
			s.Total.OutputHist.Count()
		}
	}
	e.clock.Advance(time.Minute)
	act, _, err := e.b.Activity(ctx, broker.ReportFilter{})
	if err != nil || len(act) != 1 {
		t.Fatalf("activity %v %v", act, err)
	}
	for _, a := range act {
		if n := a.LastMinute.OutputHist.Count(); n != 300 {
			t.Fatalf("output histogram counts %d; want 300", n)
		}
	}
}

// TestHistoryExactWhileFoldedAndSwept: the core hands events over under its
// lock and the Recorder folds them off it (at a backlog, on reads, in the
// sweep). With several clients granting and settling thousands of leases
// (many backlogs' worth) while another goroutine sweeps and reads, every
// event is counted exactly once: nothing lost between a hand-over and a
// fold, nothing counted twice between memory and the store. Under -race
// this also checks the hand-over.
func TestHistoryExactWhileFoldedAndSwept(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, spec("anthropic.claude-3-haiku-20240307-v1:0", broker.Limits{RPM: 1 << 30, TPM: 1 << 40}))
	const clients, each = 4, 1500
	done := make(chan struct{})
	for c := range clients {
		go func() {
			defer func() { done <- struct{}{} }()
			for range each {
				d, err := e.b.Acquire(ctx, broker.AcquireRequest{ModelID: haiku3, Client: string(rune('a' + c)), InputTokens: 10, MaxOutputTokens: 20})
				if err != nil || !d.Granted {
					t.Errorf("acquire: %+v %v", d, err)
					return
				}
				if _, err := e.b.Complete(ctx, d.Lease.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 10, OutputTokens: 5}); err != nil {
					t.Errorf("complete: %v", err)
					return
				}
			}
		}()
	}
	for running := clients; running > 0; {
		select {
		case <-done:
			running--
		default:
			e.b.Sweep(ctx)
			if _, err := e.b.History(ctx, broker.HistoryQuery{From: t0, To: t0.Add(time.Minute)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func(when string) {
		t.Helper()
		series, err := e.b.History(ctx, broker.HistoryQuery{From: t0, To: t0.Add(time.Minute)})
		if err != nil || len(series) != 1 {
			t.Fatalf("%s: history %v %v", when, series, err)
		}
		const n = clients * each
		got := series[0].Total
		if got.Granted != n || got.Completed != n || got.ReservedTokens != n*30 || got.SettledTokens != n*15 ||
			got.WindowTokens != n*15 || got.WindowRequests != n || got.InputTokens != n*10 || got.OutputHist.Count() != n {
			t.Errorf("%s: %+v; want %d grants and settlements, each counted once", when, got, n)
		}
	}
	check("before the last sweep")
	e.b.Sweep(ctx)
	check("after it")
}

// TestHistoryVisibleWhileSwept: history a sweep takes out of memory stays
// visible until the store has it: a reader that comes while the sweep's
// commit is in flight counts every grant once, and so does one after a
// failed commit, whose history the next sweep writes once.
func TestHistoryVisibleWhileSwept(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, spec(haiku3, broker.Limits{RPM: 1000, TPM: 1 << 30}))
	for range 3 {
		e.mustGrant(broker.AcquireRequest{ModelID: haiku3, Client: "a", InputTokens: 10, MaxOutputTokens: 20})
	}
	granted := func() int64 {
		t.Helper()
		series, err := e.b.History(ctx, broker.HistoryQuery{From: t0, To: t0.Add(time.Minute)})
		if err != nil || len(series) != 1 {
			t.Fatalf("history %v %v", series, err)
		}
		return series[0].Total.Granted
	}
	e.store.setFail(errDiskFull)
	e.b.Sweep(ctx)
	e.store.setFail(nil)
	if g := granted(); g != 3 {
		t.Fatalf("after a failed sweep commit: %d grants in history, want 3", g)
	}

	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	e.store.setHook(func(c broker.Change) {
		if len(c.Stats) > 0 {
			once.Do(func() { close(entered); <-release })
		}
	})
	swept := make(chan struct{})
	go func() { e.b.Sweep(ctx); close(swept) }()
	<-entered
	read := make(chan int64, 1)
	go func() { read <- granted() }()
	runtime.Gosched() // let the reader reach the store while the commit is held
	close(release)
	<-swept
	if g := <-read; g != 3 {
		t.Errorf("a reader during the sweep's commit: %d grants, want 3", g)
	}
	if g := granted(); g != 3 {
		t.Errorf("after the sweep: %d grants, want 3", g)
	}
}
