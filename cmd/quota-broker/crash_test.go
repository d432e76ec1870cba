package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// These tests stop a real broker process (SIGKILL or SIGTERM) while callers
// wait in its queue, restart it on the same bbolt file, and check from the
// callers' side what the broker promised: every lease a caller received is
// on disk, every settlement a caller saw acknowledged is on disk, the
// limits hold across both lives, and the learned adaptive ceiling carries
// over.

// ledger is what the callers saw, across a broker's lives.
type ledger struct {
	mu        sync.Mutex
	received  []string         // every lease id a caller received
	completed map[string]bool  // CompleteLease answered OK
	ambiguous map[string]error // CompleteLease failed: settled or not
	ackedAt   map[string]time.Time
	held      atomic.Int64 // received and CompleteLease not yet sent
	maxHeld   atomic.Int64
	grants    atomic.Int64
}

func newLedger() *ledger {
	return &ledger{completed: map[string]bool{}, ambiguous: map[string]error{}, ackedAt: map[string]time.Time{}}
}

// callerResult is how one caller's run ended.
type callerResult struct {
	err         error     // the Acquire error that ended it; nil: stopped
	started, at time.Time // when that Acquire was sent, and answered
}

// callers runs n callers against c, each looping Acquire (waiting up to
// wait) -> hold -> Complete until stop is closed or an Acquire fails; a
// refusal ends a caller only when untilRefused. onGrant sees the running
// total of grants.
func callers(ctx context.Context, c pb.QuotaBrokerClient, n int, wait, hold time.Duration, lg *ledger, stop <-chan struct{}, untilRefused bool, onGrant func(int64)) []callerResult {
	res := make([]callerResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					res[i] = callerResult{err: ctx.Err()}
					return
				default:
				}
				start := time.Now()
				resp, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: crashModel, InputTokens: 100, MaxOutputTokens: 100,
					Wait: durationpb.New(wait)})
				if err != nil {
					if status.Code(err) == codes.ResourceExhausted && !untilRefused {
						continue
					}
					res[i] = callerResult{err: err, started: start, at: time.Now()}
					return
				}
				id := resp.GetLease().GetLeaseId()
				lg.mu.Lock()
				lg.received = append(lg.received, id)
				lg.mu.Unlock()
				h := lg.held.Add(1)
				for m := lg.maxHeld.Load(); h > m && !lg.maxHeld.CompareAndSwap(m, h); m = lg.maxHeld.Load() {
				}
				if onGrant != nil {
					onGrant(lg.grants.Add(1))
				} else {
					lg.grants.Add(1)
				}
				time.Sleep(hold) // the simulated Bedrock call
				lg.held.Add(-1)  // before the broker can release it
				_, err = c.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: id, Outcome: pb.Outcome_OUTCOME_SUCCESS,
					Usage: &pb.Usage{InputTokens: 100, OutputTokens: 20}})
				lg.mu.Lock()
				if err == nil {
					lg.completed[id] = true
					lg.ackedAt[id] = time.Now()
				} else {
					lg.ambiguous[id] = err
				}
				lg.mu.Unlock()
			}
		})
	}
	wg.Wait()
	return res
}

// checkOnDisk completes, on a restarted broker, every lease the callers
// received before: a lease whose settlement was acknowledged must be known
// as completed, any other must be known at all (granted answers only
// after the grant is on disk). It returns how many it settled now.
func checkOnDisk(t *testing.T, ctx context.Context, c pb.QuotaBrokerClient, lg *ledger) (settledNow int) {
	t.Helper()
	lg.mu.Lock()
	defer lg.mu.Unlock()
	for _, id := range lg.received {
		// Success, as for a call that was made: a cancelled call would
		// give its request back to the minute.
		resp, err := c.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: id, Outcome: pb.Outcome_OUTCOME_SUCCESS,
			Usage: &pb.Usage{InputTokens: 100, OutputTokens: 20}})
		switch {
		case lg.completed[id]:
			if err != nil || !resp.GetAlreadyCompleted() {
				t.Errorf("lease %s: its settlement was acknowledged before the stop, but after the restart CompleteLease says %v, already_completed=%v",
					id, err, resp.GetAlreadyCompleted())
			}
		case status.Code(err) == codes.NotFound:
			t.Errorf("lease %s was granted to a caller but the restarted broker does not know it: %v", id, err)
		case err == nil && !resp.GetAlreadyCompleted():
			settledNow++
		case err != nil && status.Code(err) != codes.FailedPrecondition: // FailedPrecondition: expired meanwhile
			t.Errorf("lease %s after the restart: %v", id, err)
		}
	}
	return settledNow
}

func writeBudget(t *testing.T, dir, limits string) string {
	t.Helper()
	p := filepath.Join(dir, "budgets.json")
	if err := os.WriteFile(p, []byte(fmt.Sprintf(`{"budgets":[{"region":"us-east-1","model":%q,%s}]}`, crashModel, limits)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func budgetReport(t *testing.T, ctx context.Context, c pb.QuotaBrokerClient) *pb.BudgetReport {
	t.Helper()
	rep, err := c.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.GetBudgets()) != 1 {
		t.Fatalf("report has %d budgets, want 1", len(rep.GetBudgets()))
	}
	return rep.GetBudgets()[0]
}

// waitFor polls cond every 10 ms until it holds, for at most limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCrashWithWaitersKeepsInvariants kills a broker with SIGKILL while
// callers wait in its queue (a concurrency limit keeps most of them
// waiting) and grants flow. The waiters get UNAVAILABLE from the dead
// connection; they retry against the restarted broker, which knows every
// lease granted before the crash, keeps every acknowledged settlement, and
// holds both the RPM limit across the two lives and the concurrency limit.
func TestCrashWithWaitersKeepsInvariants(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	dir := t.TempDir()
	const rpm, concurrency, nCallers = 240, 4, 16
	budgets := writeBudget(t, dir, fmt.Sprintf(`"rpm":%d,"tpm":100000000,"concurrency":%d`, rpm, concurrency))
	args := []string{"serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "state.db"), "--budgets", budgets,
		"--margin", "1", "--lease-ttl", "3s", "--log-level", "warn"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()

	// First life: grants flow through the 4 slots to 16 callers until about
	// a quarter of the minute's requests are granted.
	first := startBroker(t, args...)
	c1 := dial(t, first.addr)
	lg := newLedger()
	reached := make(chan struct{})
	var once sync.Once
	var res1 []callerResult
	var wg sync.WaitGroup
	wg.Go(func() {
		res1 = callers(ctx, c1, nCallers, 20*time.Second, 5*time.Millisecond, lg, nil, false, func(n int64) {
			if n >= rpm/4 {
				once.Do(func() { close(reached) })
			}
		})
	})
	select {
	case <-reached:
	case <-first.done:
		t.Fatalf("broker exited early\n%s", first.output())
	case <-ctx.Done():
		t.Fatal("first life granted too little")
	}
	var queued int64
	waitFor(t, 5*time.Second, "callers waiting in the queue", func() bool {
		queued = budgetReport(t, ctx, c1).GetWaiters()
		return queued >= nCallers/2
	})
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	wg.Wait()
	if err := <-first.done; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("first broker did not die of SIGKILL: %v", err)
	}
	waiting := 0
	for i, r := range res1 {
		if status.Code(r.err) != codes.Unavailable {
			t.Errorf("caller %d: the crash ended its Acquire with %v, want UNAVAILABLE", i, r.err)
		}
		if r.started.Before(killed) {
			waiting++ // in the queue (or about to be) when the broker died
		}
	}
	if waiting < int(queued)/2 {
		t.Fatalf("%d callers had an Acquire in flight when the broker died (the report showed %d waiters just before)", waiting, queued)
	}
	before := lg.grants.Load()

	// Second life: the restarted broker knows what the first granted and
	// settled; the callers retry until refused.
	second := startBroker(t, args...)
	c2 := dial(t, second.addr)
	orphans := checkOnDisk(t, ctx, c2, lg)
	lg.maxHeld.Store(0)
	res2 := callers(ctx, c2, nCallers, 2*time.Second, 5*time.Millisecond, lg, nil, true, nil)
	elapsed := time.Since(start)
	if elapsed > 55*time.Second {
		t.Skipf("the run took %v, longer than the minute window the check relies on", elapsed)
	}
	refused := 0
	for i, r := range res2 {
		switch status.Code(r.err) {
		case codes.ResourceExhausted:
			refused++
		default:
			t.Errorf("caller %d after the restart: %v, want a refusal once the minute's requests are spent", i, r.err)
		}
	}
	total := lg.grants.Load()
	rep := budgetReport(t, ctx, c2)
	t.Logf("granted %d before the crash (%d callers waiting at the kill, %d leases held and settled after the restart), %d after; limit %d per minute; at most %d held at once after the restart",
		before, waiting, orphans, total-before, rpm, lg.maxHeld.Load())
	if total > rpm {
		t.Errorf("granted %d in under a minute across a crash; limit is %d", total, rpm)
	}
	if refused == 0 {
		t.Error("no caller was refused after the restart: the load did not reach the limit, so the check proves nothing")
	}
	if m := lg.maxHeld.Load(); m > concurrency {
		t.Errorf("callers held %d leases at once after the restart; concurrency limit %d", m, concurrency)
	}
	if got := rep.GetUsage().GetRequestsLastMinute(); got < total {
		t.Errorf("report counts %d requests in the minute; callers saw %d grants", got, total)
	}
	if rep.GetWaiters() != 0 {
		t.Errorf("%d waiters left after every caller stopped", rep.GetWaiters())
	}
	second.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-second.done; err != nil {
		t.Fatalf("graceful stop: %v\n%s", err, second.output())
	}
}

// TestSigtermUnderLoadDrains sends SIGTERM while callers wait in the queue
// and others hold leases: the waiters are answered at once with
// UNAVAILABLE "shutting down" (not cut off when the drain time runs out),
// leases held at the signal are all settled before the server stops
// serving (it waits for them, within --drain), the process exits cleanly, and after a restart every acknowledged
// settlement is on disk and every other lease is still known.
func TestSigtermUnderLoadDrains(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	dir := t.TempDir()
	const concurrency, nCallers = 4, 16
	budgets := writeBudget(t, dir, fmt.Sprintf(`"rpm":100000,"tpm":1000000000,"concurrency":%d`, concurrency))
	// A drain far longer than the test: if the waiters were left for the
	// drain timeout to cut off, the test would time out rather than pass.
	args := []string{"serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "state.db"), "--budgets", budgets,
		"--margin", "1", "--drain", "2m", "--log-level", "warn"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	p := startBroker(t, args...)
	c := dial(t, p.addr)
	lg := newLedger()
	reached := make(chan struct{})
	var once sync.Once
	var res []callerResult
	var wg sync.WaitGroup
	wg.Go(func() {
		// Callers hold their lease 50 ms: a SIGTERM finds leases held, and
		// their CompleteLease comes after the broker stopped granting.
		res = callers(ctx, c, nCallers, 30*time.Second, 50*time.Millisecond, lg, nil, false, func(n int64) {
			if n >= 40 {
				once.Do(func() { close(reached) })
			}
		})
	})
	select {
	case <-reached:
	case <-p.done:
		t.Fatalf("broker exited early\n%s", p.output())
	case <-ctx.Done():
		t.Fatal("too few grants")
	}
	var queued int64
	waitFor(t, 5*time.Second, "callers waiting in the queue", func() bool {
		queued = budgetReport(t, ctx, c).GetWaiters()
		return queued >= nCallers/2
	})
	heldAtSignal := lg.held.Load()
	signalled := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := <-p.done; err != nil {
		t.Fatalf("SIGTERM: exit %v\n%s", err, p.output())
	}
	exited := time.Since(signalled)
	if !strings.Contains(p.output(), "quota-broker stopped") {
		t.Fatalf("no clean stop:\n%s", p.output())
	}
	answered, slowest := 0, time.Duration(0)
	for i, r := range res {
		st := status.Convert(r.err)
		if st.Code() != codes.Unavailable {
			t.Errorf("caller %d: %v, want UNAVAILABLE", i, r.err)
			continue
		}
		// Waiters and Acquires after the signal are answered by the
		// broker; an Acquire sent after the server stopped accepting gets
		// the transport's UNAVAILABLE instead.
		if strings.Contains(st.Message(), "broker is shutting down") {
			answered++
			slowest = max(slowest, r.at.Sub(signalled))
		}
	}
	lg.mu.Lock()
	acked, failed, ackedAfter := len(lg.completed), len(lg.ambiguous), 0
	for _, at := range lg.ackedAt {
		if at.After(signalled) {
			ackedAfter++
		}
	}
	for id, err := range lg.ambiguous {
		if status.Code(err) != codes.Unavailable {
			t.Errorf("settling lease %s during the stop: %v, want OK or UNAVAILABLE", id, err)
		}
	}
	lg.mu.Unlock()
	t.Logf("SIGTERM with %d waiting and %d leases held: %d callers answered \"shutting down\" (the last %v after the signal), process exited after %v; %d settlements acknowledged (%d after the signal), %d refused by the stopping server",
		queued, heldAtSignal, answered, slowest.Round(time.Millisecond), exited.Round(time.Millisecond), acked, ackedAfter, failed)
	if answered == 0 {
		t.Error("no waiter was answered by the broker's shutdown")
	}
	// The stopping broker waits for held leases to settle before it stops
	// serving: none of their settlements may be refused.
	if failed != 0 {
		t.Errorf("%d settlements of leases held at the signal were refused by the stopping server", failed)
	}

	// After a restart: acknowledged settlements are on disk, and the
	// leases whose settlement the stopping server refused are outstanding
	// (still charged at their reservation), and can be settled now.
	p2 := startBroker(t, args...)
	c2 := dial(t, p2.addr)
	if out := budgetReport(t, ctx, c2).GetOutstandingLeases(); out != int64(failed) {
		t.Errorf("%d leases outstanding after the restart; %d settlements failed before the stop", out, failed)
	}
	if n := checkOnDisk(t, ctx, c2, lg); n != failed {
		t.Errorf("settled %d leases after the restart, want the %d refused during the stop", n, failed)
	}
	p2.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-p2.done; err != nil {
		t.Fatalf("graceful stop: %v\n%s", err, p2.output())
	}
}

// adaptiveCurve is the adaptive ceiling during recovery with the broker's
// default AdaptiveConfig (Recovery 30 s): from cut x wmax at the decrease
// back to wmax (broker/adaptive.go, ceiling.at).
func adaptiveCurve(wmax, cut float64, since time.Duration) float64 {
	u := 1 - since.Seconds()/30
	if u < 0 {
		return wmax
	}
	return wmax - wmax*(1-cut)*u*u*u
}

// TestCrashKeepsAdaptiveCeiling engages the adaptive ceiling with a
// throttle report, kills the broker with SIGKILL right after, and checks
// that the restarted broker continues the same recovery curve instead of
// starting again from the static limit.
func TestCrashKeepsAdaptiveCeiling(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	crashKeepsAdaptiveCeiling(t, 1, 0.9)
}

// TestCrashKeepsDeepenedAdaptiveCut is the same with a second throttle
// while the ceiling is still recovering, which deepens the cut to
// Beta^2 = 0.81 of the level throttled. Before AdaptiveRecord kept the
// depth and the cuts, a restart resumed the cut as Beta and raised the
// ceiling by about 11% of Wmax (measured: 193,669 -> 215,229 TPM).
func TestCrashKeepsDeepenedAdaptiveCut(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	crashKeepsAdaptiveCeiling(t, 2, 0.81)
}

func crashKeepsAdaptiveCeiling(t *testing.T, throttles int64, cut float64) {
	dir := t.TempDir()
	const tpm = 1_000_000
	budgets := writeBudget(t, dir, fmt.Sprintf(`"rpm":600,"tpm":%d`, tpm))
	args := []string{"serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "state.db"), "--budgets", budgets,
		"--margin", "1", "--log-level", "warn"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	first := startBroker(t, args...)
	c1 := dial(t, first.addr)
	// Use in the minute: 20 leases of 10,000 input + 1,000 x 5 output.
	for i := range 20 {
		resp, err := c1.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: crashModel, InputTokens: 10_000, MaxOutputTokens: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if _, err := c1.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: resp.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS,
				Usage: &pb.Usage{InputTokens: 10_000, OutputTokens: 200}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range throttles {
		if i > 0 {
			time.Sleep(2100 * time.Millisecond) // the default MinInterval between decreases is 2 s
		}
		if _, err := c1.ReportThrottle(ctx, &pb.ReportThrottleRequest{ModelId: crashModel, Message: "Too many tokens, please wait before trying again."}); err != nil {
			t.Fatal(err)
		}
	}
	pre := budgetReport(t, ctx, c1)
	a1 := pre.GetBudget().GetAdaptive()
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-first.done
	if a1.GetDecreases() != throttles || a1.GetCeiling().GetTokensPerMinute() == 0 || a1.GetCeiling().GetTokensPerMinute() >= tpm {
		t.Fatalf("the throttle did not engage the ceiling: %v", a1)
	}

	second := startBroker(t, args...)
	postRep, err := dial(t, second.addr).GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	post, postAt := postRep.GetBudgets()[0], postRep.GetGeneratedAt().AsTime()
	a2 := post.GetBudget().GetAdaptive()
	t.Logf("before the crash: ceiling %d TPM, %d RPM (%s); after the restart: %d TPM, %d RPM (%s); static %d TPM",
		a1.GetCeiling().GetTokensPerMinute(), a1.GetCeiling().GetRequestsPerMinute(), a1.GetReason(),
		a2.GetCeiling().GetTokensPerMinute(), a2.GetCeiling().GetRequestsPerMinute(), a2.GetReason(), tpm)
	if a2.GetTokensPerMinuteAtThrottle() != a1.GetTokensPerMinuteAtThrottle() || a2.GetRequestsPerMinuteAtThrottle() != a1.GetRequestsPerMinuteAtThrottle() ||
		!a2.GetLastDecrease().AsTime().Equal(a1.GetLastDecrease().AsTime()) || a2.GetDecreases() != a1.GetDecreases() {
		t.Fatalf("learned state lost in the crash:\nbefore %v\nafter  %v", a1, a2)
	}
	// The ceiling in force continues the curve: where the curve is at the
	// report's time (to within the few microseconds between the report's
	// time stamp and the ceiling's, and the truncation to whole units),
	// so neither back at the static limit nor relearning from scratch.
	for _, d := range []struct {
		name        string
		before, now int64
		wmax        float64
		static      float64
	}{
		{"tokens", a1.GetCeiling().GetTokensPerMinute(), a2.GetCeiling().GetTokensPerMinute(), a1.GetTokensPerMinuteAtThrottle(), tpm},
		{"requests", a1.GetCeiling().GetRequestsPerMinute(), a2.GetCeiling().GetRequestsPerMinute(), a1.GetRequestsPerMinuteAtThrottle(), 600},
	} {
		since := postAt.Sub(a1.GetLastDecrease().AsTime())
		lo, hi := adaptiveCurve(d.wmax, cut, since)-1, adaptiveCurve(d.wmax, cut, since+100*time.Millisecond)+1
		if d.now < d.before || float64(d.now) < lo || float64(d.now) > hi || float64(d.now) >= d.static {
			t.Errorf("%s ceiling after the restart %d (before the crash %d): want on the recovery curve, %.0f..%.0f %v after the decrease, below the static %v",
				d.name, d.now, d.before, lo, hi, since, d.static)
		}
	}
	if e := post.GetBudget().GetEffective().GetTokensPerMinute(); e != a2.GetCeiling().GetTokensPerMinute() {
		t.Errorf("effective TPM %d after the restart, want the ceiling %d", e, a2.GetCeiling().GetTokensPerMinute())
	}
	second.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-second.done; err != nil {
		t.Fatalf("graceful stop: %v\n%s", err, second.output())
	}
}
