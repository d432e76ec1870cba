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
	if r.Effective.TPM != 36_000 || r.Effective.RPM != 36 || r.Static.TPM != 100_000 {
		t.Fatalf("effective %+v static %+v, want the ceiling at 0.9 x Wmax", r.Effective, r.Static)
	}
	// The ceiling (36000 TPM) is below the minute's use (40000), yet grants
	// do not stop until the minute slides by: they are paced at the
	// ceiling's rate, 600 tokens a second, from the decrease on. The pace
	// starts owing the throttled call's 1000 tokens (Bedrock's bucket had
	// just shown it empty), so the first grant, too, comes 1000/600 s on.
	// Both paces owe one call (1000 tokens, 1 request at 36 a minute); the
	// request ceiling, rounded down to whole requests, binds once the
	// ceilings have climbed a little.
	paced := func(which string, blocked broker.Limit) time.Duration {
		d, _ := e.acquire(broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 1000})
		if d.Granted || d.Blocked != blocked || d.RetryAfter < 1660*time.Millisecond || d.RetryAfter > 1670*time.Millisecond {
			t.Fatalf("%s grant after the cut: %+v, want a refusal by %v for 1000/600 s", which, d, blocked)
		}
		e.clock.Advance(d.RetryAfter)
		return d.RetryAfter
	}
	waited := paced("first", broker.LimitTPM)
	first := e.mustGrant(broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 1000})
	waited += paced("second", broker.LimitRPM)
	second := e.mustGrant(broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 1000})
	for _, l := range []broker.Lease{first, second} {
		e.b.Complete(ctx, l.ID, broker.OutcomeSuccess, broker.Usage{OutputTokens: 1000})
	}
	// Leases granted before the decrease were sent at the old rate: their
	// throttles do not cut again.
	e.b.Complete(ctx, ls[1].ID, broker.OutcomeThrottled, broker.Usage{})
	e.b.Complete(ctx, ls[2].ID, broker.OutcomeThrottled, broker.Usage{})
	if got := e.report(haiku3).Adaptive.Throttles; got != 1 {
		t.Fatalf("%d decreases after throttles of leases from before the first", got)
	}
	// Back at Wmax after Recovery (30 s), concave: most of the way after
	// half of it (40000 - 4000 x 0.5^3 = 39500).
	e.clock.Advance(15*time.Second - waited)
	if mid := e.report(haiku3).Effective.TPM; mid < 39_400 || mid > 39_600 {
		t.Fatalf("after 15 s the ceiling is %d, want about 39500", mid)
	}
	e.clock.Advance(15 * time.Second)
	if got := e.report(haiku3).Effective.TPM; got < 39_990 || got > 40_010 {
		t.Fatalf("after 30 s the ceiling is %d, want back at Wmax 40000", got)
	}
	// Then it probes above Wmax: 5% a minute later, faster after.
	e.clock.Advance(time.Minute)
	if got := e.report(haiku3).Effective.TPM; got < 41_990 || got > 42_010 {
		t.Fatalf("a minute after recovering the ceiling is %d, want 42000", got)
	}
	e.clock.Advance(time.Minute)
	if got := e.report(haiku3).Effective.TPM; got < 55_990 || got > 56_010 {
		t.Fatalf("two minutes after recovering the ceiling is %d, want 40000 x 1.4", got)
	}
	// The request ceiling started at 4% of its static limit: the probe
	// takes about 8 minutes to climb that far (40 x (1 + 0.05 m^3) >= 1000).
	e.clock.Advance(5 * time.Minute)
	if r := e.report(haiku3); r.Effective.RPM >= 1000 {
		t.Fatalf("request ceiling disengaged after 7.5 minutes: %+v", r.Effective)
	}
	e.clock.Advance(time.Minute)
	r = e.report(haiku3)
	if r.Effective != r.Static || !strings.Contains(r.Adaptive.Reason, "recovered") {
		t.Fatalf("not recovered after 8.5 minutes: effective %+v, %q", r.Effective, r.Adaptive.Reason)
	}
}

func TestThrottlesBeforeRecoveryCutDeeper(t *testing.T) {
	e := newEnv(t, spec(haiku3, broker.Limits{TPM: 1_000_000}))
	ctx := context.Background()
	throttleNew := func(n int) {
		t.Helper()
		ls := e.fill(n)
		e.clock.Advance(time.Millisecond) // granted after the last decrease
		if _, err := e.b.Complete(ctx, ls[0].ID, broker.OutcomeThrottled, broker.Usage{}); err != nil {
			t.Fatal(err)
		}
	}
	throttleNew(101) // Wmax 100000, cut to 0.9
	if got := e.report(haiku3).Effective.TPM; got != 90_000 {
		t.Fatalf("first cut to %d, want 90000", got)
	}
	// 61 s later the window is empty and the ceiling back above Wmax
	// (100000 x 1.0069 after 31 s of probing).
	e.clock.Advance(61 * time.Second)
	// Capacity fell: the next leases throttle again 5 s after that decrease,
	// before the ceiling has recovered. Each such cut goes deeper: 0.81,
	// then 0.729, of the ceiling in force (never above what was used).
	throttleNew(81) // used 80000 < ceiling: Wmax 80000, a cut of 0.9 (the last decrease was 61 s ago)
	if r := e.report(haiku3); r.Adaptive.TokensWmax != 80_000 || r.Effective.TPM != 72_000 {
		t.Fatalf("after a recovered cut: %+v %+v", r.Adaptive, r.Effective)
	}
	// The window is above the new ceiling, so no new lease can be granted
	// to throttle: clients report throttles seen outside leases instead.
	e.clock.Advance(5 * time.Second)
	if _, err := e.b.ReportThrottle(ctx, haiku3, "", ""); err != nil { // used 80000: Wmax = the ceiling in force
		t.Fatal(err)
	}
	r := e.report(haiku3)
	ceil5s := 80_000 - 8_000*(1-5.0/30)*(1-5.0/30)*(1-5.0/30) // the ceiling 5 s after the cut
	if r.Adaptive.Throttles != 3 || r.Adaptive.TokensWmax < ceil5s-1 || r.Adaptive.TokensWmax > ceil5s+1 {
		t.Fatalf("second throttle: Wmax %v, want the ceiling in force %v", r.Adaptive.TokensWmax, ceil5s)
	}
	if want := int64(r.Adaptive.TokensWmax * 0.81); r.Effective.TPM < want-1 || r.Effective.TPM > want+1 {
		t.Fatalf("second cut to %d, want 0.81 x Wmax = %d", r.Effective.TPM, want)
	}
	wmax2 := r.Adaptive.TokensWmax
	e.clock.Advance(5 * time.Second)
	e.b.ReportThrottle(ctx, haiku3, "", "")
	r = e.report(haiku3)
	if r.Adaptive.TokensWmax >= wmax2 {
		t.Fatalf("third throttle raised Wmax: %v after %v", r.Adaptive.TokensWmax, wmax2)
	}
	if want := int64(r.Adaptive.TokensWmax * 0.729); r.Effective.TPM < want-1 || r.Effective.TPM > want+1 {
		t.Fatalf("third cut to %d, want 0.729 x Wmax = %d", r.Effective.TPM, want)
	}
	// After a full recovery the next throttle cuts by Beta again.
	e.clock.Advance(2 * time.Minute)
	throttleNew(41)
	r = e.report(haiku3)
	if r.Adaptive.TokensWmax != 40_000 || r.Effective.TPM != 36_000 {
		t.Fatalf("after recovering, a throttle cut to %+v (Wmax %v), want 0.9 x 40000", r.Effective, r.Adaptive.TokensWmax)
	}
}

func TestLaterThrottlesCutAgainAndFlagLowCapacity(t *testing.T) {
	e := newEnv(t, spec(haiku3, broker.Limits{TPM: 1_000_000}))
	ctx := context.Background()
	// Each round fits under the ceiling left by the round before (it is
	// back above the last Wmax a minute later) and throttles one of its own
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
		if _, err := e.b.ReportThrottle(ctx, haiku3, "", ""); err != nil {
			t.Fatal(err)
		}
	}
	r := e.report(haiku3)
	if r.Adaptive.Throttles != 1 || r.Counters.ReportedThrottles != 5 || r.Effective.TPM != 9000 {
		t.Fatalf("after 5 reports at once: %+v %+v", r.Adaptive, r.Effective)
	}
	e.clock.Advance(2 * time.Second)
	e.b.ReportThrottle(ctx, haiku3, "", "")
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

func TestResetForgetsTheCeilingAcrossRestarts(t *testing.T) {
	e := newEnv(t, spec(haiku3, broker.Limits{TPM: 100_000}))
	ls := e.fill(21)
	e.clock.Advance(time.Millisecond)
	e.b.Complete(context.Background(), ls[0].ID, broker.OutcomeThrottled, broker.Usage{})
	if r := e.report(haiku3); r.Effective.TPM >= r.Static.TPM {
		t.Fatalf("no ceiling engaged: %+v", r.Effective)
	}
	info, err := e.b.ResetAdaptive(context.Background(), haiku3, "")
	if err != nil {
		t.Fatal(err)
	}
	if info.Effective != info.Static || info.Adaptive.Throttles != 0 {
		t.Fatalf("after reset: effective %+v static %+v adaptive %+v", info.Effective, info.Static, info.Adaptive)
	}
	e.b.Close()
	e.open()
	if r := e.report(haiku3); r.Effective != r.Static || r.Adaptive.Throttles != 0 {
		t.Fatalf("the reset ceiling came back after a restart: %+v %+v", r.Effective, r.Adaptive)
	}
	if _, err := e.b.ResetAdaptive(context.Background(), "anthropic.claude-unknown-v1:0", ""); err == nil {
		t.Fatal("reset of an unknown budget succeeded")
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

// After a cut, grants are paced at the ceiling's rate; a throttled call
// gives its tokens back to the window (Bedrock consumed nothing) but not to
// the pace, or its retry would pass at once and throttle again.
func TestThrottledCallsDoNotRefundThePace(t *testing.T) {
	e := newEnv(t, spec(haiku3, broker.Limits{TPM: 100_000}))
	ctx := context.Background()
	ls := e.fill(41)
	e.clock.Advance(time.Millisecond)
	e.b.Complete(ctx, ls[0].ID, broker.OutcomeThrottled, broker.Usage{}) // ceiling 36000: 600 tokens/s
	d, _ := e.acquire(broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 1000})
	if d.Granted {
		t.Fatal("not paced after the cut: the pace owes the throttled call")
	}
	e.clock.Advance(d.RetryAfter)
	a := e.mustGrant(broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 1000}) // the pace is in debt again
	before := e.report(haiku3)
	// a throttles within MinInterval of the cut: counted, no new cut.
	e.b.Complete(ctx, a.ID, broker.OutcomeThrottled, broker.Usage{})
	after := e.report(haiku3)
	if after.Adaptive.Throttles != 1 || after.Usage.TokensLastMinute != before.Usage.TokensLastMinute-1000 {
		t.Fatalf("after the throttle: %d decreases, window %d -> %d", after.Adaptive.Throttles, before.Usage.TokensLastMinute, after.Usage.TokensLastMinute)
	}
	if d, _ := e.acquire(broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 1000}); d.Granted {
		t.Fatal("the throttled call's tokens went back to the pace: a grant passed at once")
	}
}
