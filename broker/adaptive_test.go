package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// fill grants n leases of 1000 tokens each on haiku3 (burndown 1).
func (e *env) fill(n int) []broker.Lease {
	e.t.Helper()
	var ls []broker.Lease
	for range n {
		ls = append(ls, e.mustGrant(broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 1000}))
	}
	return ls
}

func TestThrottleLowersCeilingThenItRecovers(t *testing.T) {
	e := newEnv(t, spec(haiku3, broker.Limits{RPM: 1000, TPM: 100_000}))
	ctx := context.Background()
	ls := e.fill(41) // 41,000 tokens in the minute
	e.clock.Advance(time.Millisecond)
	if _, err := e.b.Complete(ctx, ls[0].ID, broker.OutcomeThrottled, broker.Usage{}); err != nil {
		t.Fatal(err)
	}
	// Wmax is what Bedrock had accepted when it throttled: 40 leases.
	r := e.report(haiku3)
	if r.Adaptive.Throttles != 1 || r.Adaptive.TokensWmax != 40_000 || r.Adaptive.RequestsWmax != 40 {
		t.Fatalf("adaptive after a throttle: %+v", r.Adaptive)
	}
	if r.Effective.TPM != 28_000 || r.Effective.RPM != 28 || r.Static.TPM != 100_000 {
		t.Fatalf("effective %+v static %+v, want the ceiling at 0.7 x Wmax", r.Effective, r.Static)
	}
	if d, _ := e.acquire(broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 1000}); d.Granted || d.Blocked == broker.LimitNone {
		t.Fatalf("granted above the ceiling: %+v", d)
	}
	// Leases granted before the decrease were sent at the old rate: their
	// throttles do not cut again.
	e.b.Complete(ctx, ls[1].ID, broker.OutcomeThrottled, broker.Usage{})
	e.b.Complete(ctx, ls[2].ID, broker.OutcomeThrottled, broker.Usage{})
	if got := e.report(haiku3).Adaptive.Throttles; got != 1 {
		t.Fatalf("%d decreases after throttles of leases from before the first", got)
	}
	// CUBIC: back to Wmax after Recovery (60 s), then probing above it,
	// until it disengages at the static limit.
	e.clock.Advance(30 * time.Second)
	mid := e.report(haiku3).Effective.TPM
	if mid <= 28_000 || mid >= 40_000 {
		t.Fatalf("after 30 s the ceiling is %d, want between 28000 and 40000", mid)
	}
	e.clock.Advance(30 * time.Second)
	if got := e.report(haiku3).Effective.TPM; got < 39_990 || got > 40_010 {
		t.Fatalf("after 60 s the ceiling is %d, want back at Wmax 40000", got)
	}
	// The request ceiling started at 4% of its static limit: the cubic
	// takes about 5 minutes to climb that far.
	e.clock.Advance(5 * time.Minute)
	r = e.report(haiku3)
	if r.Effective != r.Static || !strings.Contains(r.Adaptive.Reason, "recovered") {
		t.Fatalf("not recovered after 6 minutes: effective %+v, %q", r.Effective, r.Adaptive.Reason)
	}
}

func TestLaterThrottlesCutAgainAndFlagLowCapacity(t *testing.T) {
	e := newEnv(t, spec(haiku3, broker.Limits{TPM: 1_000_000}))
	ctx := context.Background()
	// Each round fits under the ceiling left by the round before (it is
	// back at the last Wmax a minute later) and throttles one of its own
	// leases: Wmax 10000, then 5000, then 2000.
	for i, n := range []int{11, 6, 3} {
		ls := e.fill(n)
		e.clock.Advance(time.Millisecond) // granted after the last decrease
		e.b.Complete(ctx, ls[0].ID, broker.OutcomeThrottled, broker.Usage{})
		if got := e.report(haiku3).Adaptive.Throttles; got != int64(i+1) {
			t.Fatalf("round %d: %d decreases", i, got)
		}
		e.clock.Advance(61 * time.Second)
	}
	r := e.report(haiku3)
	if r.Adaptive.TokensWmax != 2000 || !strings.Contains(r.Adaptive.Reason, "real capacity looks lower") {
		t.Fatalf("adaptive %+v does not flag the low capacity", r.Adaptive)
	}
}

func TestReportedThrottlesAreRateLimited(t *testing.T) {
	e := newEnv(t, spec(haiku3, broker.Limits{TPM: 100_000}))
	ctx := context.Background()
	e.fill(10)
	for range 5 {
		if _, err := e.b.ReportThrottle(ctx, haiku3, ""); err != nil {
			t.Fatal(err)
		}
	}
	r := e.report(haiku3)
	if r.Adaptive.Throttles != 1 || r.Counters.ReportedThrottles != 5 || r.Effective.TPM != 7000 {
		t.Fatalf("after 5 reports at once: %+v %+v", r.Adaptive, r.Effective)
	}
	e.clock.Advance(2 * time.Second)
	e.b.ReportThrottle(ctx, haiku3, "")
	if got := e.report(haiku3).Adaptive.Throttles; got != 2 {
		t.Fatalf("a report after MinInterval did not decrease: %d", got)
	}
}

func TestLearnedCeilingSurvivesRestart(t *testing.T) {
	e := newEnv(t, spec(haiku3, broker.Limits{TPM: 100_000}))
	ls := e.fill(21)
	e.clock.Advance(time.Millisecond)
	e.b.Complete(context.Background(), ls[0].ID, broker.OutcomeThrottled, broker.Usage{})
	before := e.report(haiku3)
	e.b.Close()
	e.open()
	after := e.report(haiku3)
	if after.Effective != before.Effective || after.Adaptive.Throttles != 1 || after.Adaptive.TokensWmax != 20_000 {
		t.Fatalf("ceiling lost on restart: before %+v/%+v after %+v/%+v", before.Effective, before.Adaptive, after.Effective, after.Adaptive)
	}
}

func TestAdaptationCanBeDisabled(t *testing.T) {
	e := newEnv(t)
	e.cfg.Adaptive.Disabled = true
	e.open()
	e.b.SetSpecs(context.Background(), []broker.Spec{spec(haiku3, broker.Limits{TPM: 100_000})})
	ls := e.fill(5)
	e.b.Complete(context.Background(), ls[0].ID, broker.OutcomeThrottled, broker.Usage{})
	if r := e.report(haiku3); r.Effective != r.Static || r.Counters.Throttled != 1 {
		t.Fatalf("disabled adaptation changed limits: %+v", r)
	}
}
