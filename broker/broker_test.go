package broker_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/internal/clocktest"
	"github.com/bedrockqb/quotabroker/internal/sysclock"
)

const (
	sonnet45 = "anthropic.claude-sonnet-4-5-20250929-v1:0" // burndown 5
	haiku3   = "anthropic.claude-3-haiku-20240307-v1:0"    // burndown 1
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type env struct {
	t     testing.TB
	clock *clocktest.Clock
	store *memStore
	b     *broker.Broker
	cfg   broker.Config
}

// newEnv opens a broker on a fake clock with full margin and the given
// budgets.
func newEnv(t testing.TB, specs ...broker.Spec) *env {
	t.Helper()
	e := &env{t: t, clock: clocktest.New(t0), store: newMemStore(), cfg: broker.Config{Margin: 1}}
	e.open()
	if len(specs) > 0 {
		if err := e.b.SetSpecs(context.Background(), specs); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func (e *env) open() {
	e.t.Helper()
	b, err := broker.Open(context.Background(), e.store, e.clock, e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.b = b
	e.t.Cleanup(b.Close)
}

func spec(model string, l broker.Limits) broker.Spec {
	return broker.Spec{Key: broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: model}, Quota: l, Source: "test"}
}

func (e *env) acquire(req broker.AcquireRequest) (broker.Decision, error) {
	e.t.Helper()
	if req.ModelID == "" {
		req.ModelID = sonnet45
	}
	return e.b.Acquire(context.Background(), req)
}

func (e *env) mustGrant(req broker.AcquireRequest) broker.Lease {
	e.t.Helper()
	d, err := e.acquire(req)
	if err != nil {
		e.t.Fatalf("acquire: %v", err)
	}
	if !d.Granted {
		e.t.Fatalf("acquire refused: blocked by %v, retry after %v", d.Blocked, d.RetryAfter)
	}
	return d.Lease
}

func (e *env) report(model string) broker.BudgetReport {
	e.t.Helper()
	r, _ := e.b.Report(broker.ReportFilter{Model: model})
	if len(r) != 1 {
		e.t.Fatalf("report for %q has %d budgets", model, len(r))
	}
	return r[0]
}

func TestReservationAndSettlement(t *testing.T) {
	e := newEnv(t, spec(sonnet45, broker.Limits{TPM: 1_000_000}), spec(haiku3, broker.Limits{TPM: 1_000_000}))
	ctx := context.Background()

	l := e.mustGrant(broker.AcquireRequest{InputTokens: 100, CacheWriteTokens: 20, MaxOutputTokens: 1000})
	if want := int64(100 + 20 + 1000*5); l.Reserved != want || l.Burndown != 5 {
		t.Fatalf("reserved %d burndown %v, want %d and 5", l.Reserved, l.Burndown, want)
	}
	if got := e.report(sonnet45).Usage.TokensLastMinute; got != l.Reserved {
		t.Fatalf("window holds %d, want the reservation %d", got, l.Reserved)
	}
	s, err := e.b.Complete(ctx, l.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 110, OutputTokens: 200, CacheReadInputTokens: 5000, CacheWriteInputTokens: 20})
	if err != nil {
		t.Fatal(err)
	}
	// Cache reads are free; output counts 5x.
	if want := int64(110 + 20 + 200*5); s.Charged != want || s.Returned != l.Reserved-want {
		t.Fatalf("settlement %+v, want charged %d", s, want)
	}
	r := e.report(sonnet45)
	if r.Usage.TokensLastMinute != s.Charged || r.Usage.TokensLastDay != s.Charged || r.Outstanding != 0 {
		t.Fatalf("after settlement: %+v outstanding %d", r.Usage, r.Outstanding)
	}
	if r.Counters.ReturnedTokens != s.Returned || r.Counters.SettledTokens != s.Charged {
		t.Fatalf("counters %+v", r.Counters)
	}

	// Unset max_tokens reserves the model's maximum; older Claude burns 1x.
	l2 := e.mustGrant(broker.AcquireRequest{ModelID: haiku3, InputTokens: 10})
	if l2.Reserved != 10+4096 || l2.Burndown != 1 || l2.MaxOutputTokens != 4096 {
		t.Fatalf("haiku lease %+v", l2)
	}
	l3 := e.mustGrant(broker.AcquireRequest{InputTokens: 10})
	if l3.Reserved != 10+64000*5 {
		t.Fatalf("unset max_tokens on sonnet 4.5 reserved %d", l3.Reserved)
	}
	if n := e.report(sonnet45).Counters.UnsetMaxTokens; n != 1 {
		t.Fatalf("UnsetMaxTokens = %d", n)
	}
}

func TestCompletionIsIdempotent(t *testing.T) {
	e := newEnv(t, spec(sonnet45, broker.Limits{TPM: 100_000}))
	ctx := context.Background()
	l := e.mustGrant(broker.AcquireRequest{InputTokens: 100, MaxOutputTokens: 100})
	first, err := e.b.Complete(ctx, l.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 100, OutputTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	before := e.report(sonnet45)
	again, err := e.b.Complete(ctx, l.ID, broker.OutcomeThrottled, broker.Usage{})
	if err != nil {
		t.Fatal(err)
	}
	if !again.AlreadyCompleted || again.Charged != first.Charged {
		t.Fatalf("second completion %+v, first %+v", again, first)
	}
	after := e.report(sonnet45)
	if before.Usage != after.Usage || before.Counters != after.Counters {
		t.Fatalf("repeated completion changed the budget: %+v -> %+v", before, after)
	}
}

func TestThrottledAndCancelledGiveEverythingBack(t *testing.T) {
	for _, o := range []broker.Outcome{broker.OutcomeThrottled, broker.OutcomeCancelled} {
		t.Run(o.String(), func(t *testing.T) {
			e := newEnv(t, spec(sonnet45, broker.Limits{RPM: 1, TPM: 100_000}))
			l := e.mustGrant(broker.AcquireRequest{MaxOutputTokens: 100})
			if d, _ := e.acquire(broker.AcquireRequest{MaxOutputTokens: 100}); d.Granted || d.Blocked != broker.LimitRPM {
				t.Fatalf("second request in the minute: %+v", d)
			}
			if _, err := e.b.Complete(context.Background(), l.ID, o, broker.Usage{InputTokens: 50, OutputTokens: 50}); err != nil {
				t.Fatal(err)
			}
			r := e.report(sonnet45)
			if r.Usage.RequestsLastMinute != 0 || r.Usage.TokensLastMinute != 0 {
				t.Fatalf("%v call still charged: %+v", o, r.Usage)
			}
			e.mustGrant(broker.AcquireRequest{MaxOutputTokens: 100})
		})
	}
}

func TestRefusalCarriesRetryDelay(t *testing.T) {
	e := newEnv(t, spec(sonnet45, broker.Limits{TPM: 10_000}))
	req := broker.AcquireRequest{InputTokens: 1000, MaxOutputTokens: 1000} // 6000 tokens
	e.mustGrant(req)
	e.clock.Advance(10 * time.Second)
	d, err := e.acquire(req)
	if err != nil {
		t.Fatal(err)
	}
	// The first grant's 250 ms slot leaves the window 60.25 s after it was
	// made: the window is 60 s plus one slot, so no 60 s interval can hold
	// more than the limit.
	if d.Granted || d.Blocked != broker.LimitTPM || d.RetryAfter != 50250*time.Millisecond {
		t.Fatalf("decision %+v, want refusal on TPM with retry after 50.25s", d)
	}
	e.clock.Advance(d.RetryAfter - time.Millisecond)
	if d, _ := e.acquire(req); d.Granted {
		t.Fatal("granted before the retry delay passed")
	}
	e.clock.Advance(time.Millisecond)
	e.mustGrant(req)
	if got := e.report(sonnet45).Counters.Refused; got != 2 {
		t.Fatalf("refused counter %d, want 2", got)
	}
}

func TestNeverFitsFailsAtOnce(t *testing.T) {
	e := newEnv(t, spec(sonnet45, broker.Limits{TPM: 10_000}))
	_, err := e.acquire(broker.AcquireRequest{InputTokens: 100, MaxOutputTokens: 2000, Wait: time.Minute}) // 10100 > 10000
	var be *broker.Error
	if !errors.As(err, &be) || be.Kind != broker.KindInvalid || be.Field != "max_output_tokens" {
		t.Fatalf("got %v, want KindInvalid on max_output_tokens", err)
	}
}

// TestNoWindowEverExceedsItsLimit drives random traffic (grants, settlements
// of every outcome, expiries, time jumps) and checks after each step that no
// 60 s interval holds more granted-and-charged requests or tokens than the
// limit: the invariant the sliding windows exist for.
func TestNoWindowEverExceedsItsLimit(t *testing.T) {
	for seed := range uint64(6) {
		rng := rand.New(rand.NewPCG(seed, 7))
		lim := broker.Limits{RPM: 40, TPM: 50_000}
		e := newEnv(t, spec(haiku3, lim))
		type charge struct {
			at       time.Time
			tokens   int64
			requests int64
		}
		charges := map[string]*charge{}
		var active []broker.Lease
		for step := 0; step < 400; step++ {
			switch rng.IntN(4) {
			case 0, 1:
				d, err := e.acquire(broker.AcquireRequest{ModelID: haiku3, InputTokens: 1 + rng.Int64N(2000), MaxOutputTokens: 1 + rng.Int64N(3000)})
				if err != nil {
					t.Fatal(err)
				}
				if d.Granted {
					charges[d.Lease.ID] = &charge{at: d.Lease.GrantedAt, tokens: d.Lease.Reserved, requests: 1}
					active = append(active, d.Lease)
				}
			case 2:
				if len(active) == 0 {
					continue
				}
				i := rng.IntN(len(active))
				l := active[i]
				active = append(active[:i], active[i+1:]...)
				o := broker.Outcome(1 + rng.IntN(4))
				// Real usage within the estimate: a caller that under-estimates
				// input can push a window over after the fact, which no broker
				// can prevent at grant time.
				input := rng.Int64N(l.Reserved - l.MaxOutputTokens + 1)
				s, err := e.b.Complete(context.Background(), l.ID, o, broker.Usage{InputTokens: input, OutputTokens: rng.Int64N(l.MaxOutputTokens + 1)})
				if err != nil && broker.KindOf(err) != broker.KindPrecondition {
					t.Fatal(err)
				}
				c := charges[l.ID]
				c.tokens = s.Charged
				if o == broker.OutcomeThrottled || o == broker.OutcomeCancelled {
					c.requests = 0
				}
			case 3:
				e.clock.Advance(time.Duration(rng.IntN(8000)) * time.Millisecond)
				e.b.Sweep(context.Background())
			}
			now := e.clock.Now()
			for start := now.Add(-2 * time.Minute); !start.After(now); start = start.Add(500 * time.Millisecond) {
				var tok, req int64
				for _, c := range charges {
					if !c.at.Before(start) && c.at.Before(start.Add(time.Minute)) {
						tok += c.tokens
						req += c.requests
					}
				}
				if tok > lim.TPM || req > lim.RPM {
					t.Fatalf("seed %d step %d: the minute from %v holds %d tokens and %d requests; limits %v", seed, step, start.Sub(t0), tok, req, lim)
				}
			}
		}
	}
}

func TestExpiryKeepsChargeAndLateCompletionIsRecorded(t *testing.T) {
	e := newEnv(t, spec(sonnet45, broker.Limits{TPM: 100_000, Concurrency: 1}))
	ctx := context.Background()
	l := e.mustGrant(broker.AcquireRequest{InputTokens: 100, MaxOutputTokens: 1000})
	if d, _ := e.acquire(broker.AcquireRequest{MaxOutputTokens: 10}); d.Granted || d.Blocked != broker.LimitConcurrency {
		t.Fatalf("second concurrent lease: %+v", d)
	}
	e.clock.Advance(5*time.Minute + time.Second)
	e.b.Sweep(ctx)
	r := e.report(sonnet45)
	if r.Counters.Expired != 1 || r.Outstanding != 0 {
		t.Fatalf("after expiry: %+v", r)
	}
	e.mustGrant(broker.AcquireRequest{MaxOutputTokens: 10}) // the slot is free again
	s, err := e.b.Complete(ctx, l.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 100, OutputTokens: 10})
	if broker.KindOf(err) != broker.KindPrecondition {
		t.Fatalf("late completion: %v, want KindPrecondition", err)
	}
	if s.Charged != 150 {
		t.Fatalf("late completion charged %d, want the real usage 150", s.Charged)
	}
	rec := e.store.leases[l.ID]
	if rec.State != broker.LeaseExpired || rec.Usage.OutputTokens != 10 || rec.Charged != 150 {
		t.Fatalf("stored lease %+v", rec)
	}
	if _, err := e.b.Renew(ctx, l.ID, 0); broker.KindOf(err) != broker.KindPrecondition {
		t.Fatalf("renewing an expired lease: %v", err)
	}
}

func TestRenewPostponesExpiry(t *testing.T) {
	e := newEnv(t, spec(sonnet45, broker.Limits{TPM: 100_000}))
	ctx := context.Background()
	l := e.mustGrant(broker.AcquireRequest{MaxOutputTokens: 10})
	e.clock.Advance(4 * time.Minute)
	exp, err := e.b.Renew(ctx, l.ID, 10*time.Minute)
	if err != nil || !exp.Equal(e.clock.Now().Add(10*time.Minute)) {
		t.Fatalf("renew: %v %v", exp, err)
	}
	e.clock.Advance(5 * time.Minute)
	e.b.Sweep(ctx)
	if r := e.report(sonnet45); r.Counters.Expired != 0 || r.Outstanding != 1 {
		t.Fatalf("renewed lease expired: %+v", r.Counters)
	}
	e.clock.Advance(6 * time.Minute)
	e.b.Sweep(ctx)
	if r := e.report(sonnet45); r.Counters.Expired != 1 {
		t.Fatalf("lease did not expire after its renewal ran out: %+v", r.Counters)
	}
}

// TestRestartCountsGrantsMadeBeforeIt reopens a broker on the same store and
// checks that what was granted before still fills the windows.
func TestRestartCountsGrantsMadeBeforeIt(t *testing.T) {
	e := newEnv(t, spec(sonnet45, broker.Limits{RPM: 3, TPM: 100_000, TPD: 1_000_000, Concurrency: 2}))
	a := e.mustGrant(broker.AcquireRequest{MaxOutputTokens: 1000})
	b := e.mustGrant(broker.AcquireRequest{MaxOutputTokens: 1000})
	if _, err := e.b.Complete(context.Background(), a.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 10, OutputTokens: 100}); err != nil {
		t.Fatal(err)
	}
	before := e.report(sonnet45)
	e.clock.Advance(time.Second)
	e.b.Close()
	e.open() // a new process on the same store
	after := e.report(sonnet45)
	if after.Usage != before.Usage || after.Outstanding != 1 {
		t.Fatalf("restored usage %+v outstanding %d, want %+v and 1", after.Usage, after.Outstanding, before.Usage)
	}
	e.mustGrant(broker.AcquireRequest{MaxOutputTokens: 1000})
	if d, _ := e.acquire(broker.AcquireRequest{MaxOutputTokens: 1000}); d.Granted || d.Blocked != broker.LimitRPM {
		t.Fatalf("a fourth request in the minute was not refused on RPM: %+v", d)
	}
	// The day window outlives the minute: a day later than the grants the
	// minute is empty but TPD still counts them until a day has passed.
	e.clock.Advance(2 * time.Minute)
	e.b.Close()
	e.open()
	r := e.report(sonnet45)
	if r.Usage.TokensLastMinute != 0 || r.Usage.TokensLastDay != before.Usage.TokensLastDay+5000 {
		t.Fatalf("after two minutes: %+v", r.Usage)
	}
	// b was outstanding across both restarts; it expires while "down".
	e.clock.Advance(10 * time.Minute)
	e.b.Close()
	e.open()
	e.b.Sweep(context.Background())
	if rec := e.store.leases[b.ID]; rec.State != broker.LeaseExpired {
		t.Fatalf("lease outstanding across restarts is %v, want expired", rec.State)
	}
}

// TestRestartGivesAnExpiringLeaseItsGrace: a lease whose expiry fell in
// the seconds no broker served (a failover's gap) is still settled after
// the restart, as its holder's retried settlement arrives; one that expired
// long before the restart expires as before.
func TestRestartGivesAnExpiringLeaseItsGrace(t *testing.T) {
	e := newEnv(t, spec(sonnet45, broker.Limits{TPM: 100_000, Concurrency: 5}))
	e.cfg.LeaseTTL = 3 * time.Second
	e.b.Close()
	e.open()
	ctx := context.Background()
	late := e.mustGrant(broker.AcquireRequest{MaxOutputTokens: 10})
	e.clock.Advance(time.Second)
	soon := e.mustGrant(broker.AcquireRequest{MaxOutputTokens: 10})
	old := e.mustGrant(broker.AcquireRequest{MaxOutputTokens: 10})
	e.b.Close()
	// Down past late's expiry (3 s after its grant) but within a grace of it.
	e.clock.Advance(2500 * time.Millisecond)
	e.open()
	e.b.Sweep(ctx)
	if _, err := e.b.Complete(ctx, late.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 1, OutputTokens: 1}); err != nil {
		t.Fatalf("settling a lease that expired in the restart's gap: %v", err)
	}
	// soon would have expired 0.5 s after the restart; it has the grace.
	e.clock.Advance(2 * time.Second)
	e.b.Sweep(ctx)
	if _, err := e.b.Renew(ctx, soon.ID, 0); err != nil {
		t.Fatalf("renewing a lease 2 s after the restart, within its grace: %v", err)
	}
	// The grace is one lease TTL here (3 s): old, neither settled nor
	// renewed, expires when it ends.
	e.clock.Advance(1500 * time.Millisecond)
	e.b.Sweep(ctx)
	if _, err := e.b.Complete(ctx, old.ID, broker.OutcomeSuccess, broker.Usage{}); broker.KindOf(err) != broker.KindPrecondition {
		t.Fatalf("settling a lease after its grace ran out: %v, want KindPrecondition (expired)", err)
	}
	// Down for long: a lease that expired well before the restart is not
	// brought back.
	gone := e.mustGrant(broker.AcquireRequest{MaxOutputTokens: 10})
	e.b.Close()
	e.clock.Advance(time.Minute)
	e.open()
	e.b.Sweep(ctx)
	if _, err := e.b.Complete(ctx, gone.ID, broker.OutcomeSuccess, broker.Usage{}); broker.KindOf(err) != broker.KindPrecondition {
		t.Fatalf("settling a lease that expired a minute before the restart: %v, want KindPrecondition (expired)", err)
	}
}

func TestGrantIsUndoneWhenStoreFails(t *testing.T) {
	e := newEnv(t, spec(sonnet45, broker.Limits{RPM: 1, TPM: 100_000}))
	e.store.setFail(errDiskFull)
	_, err := e.acquire(broker.AcquireRequest{MaxOutputTokens: 10})
	if broker.KindOf(err) != broker.KindUnavailable || !errors.Is(err, errDiskFull) {
		t.Fatalf("got %v, want KindUnavailable wrapping the store error", err)
	}
	if r := e.report(sonnet45); r.Usage.RequestsLastMinute != 0 || r.Outstanding != 0 || r.Counters.Granted != 0 {
		t.Fatalf("failed grant still holds capacity: %+v", r)
	}
	e.store.setFail(nil)
	l := e.mustGrant(broker.AcquireRequest{MaxOutputTokens: 10})

	// A settlement whose commit fails is kept and retried by the sweep.
	e.store.setFail(errDiskFull)
	if _, err := e.b.Complete(context.Background(), l.ID, broker.OutcomeSuccess, broker.Usage{OutputTokens: 5}); err != nil {
		t.Fatal(err)
	}
	if e.store.leases[l.ID].State != broker.LeaseActive {
		t.Fatal("failed commit applied")
	}
	e.b.Sweep(context.Background())
	e.store.setFail(nil)
	e.b.Sweep(context.Background())
	if rec := e.store.leases[l.ID]; rec.State != broker.LeaseCompleted || rec.Charged != 25 {
		t.Fatalf("settlement not retried: %+v", rec)
	}
}

func TestOverrideReplacesQuotaTimesMargin(t *testing.T) {
	e := newEnv(t)
	e.cfg.Margin = 0.5
	e.open()
	ctx := context.Background()
	if err := e.b.SetSpecs(ctx, []broker.Spec{spec(sonnet45, broker.Limits{RPM: 10, TPM: 1000})}); err != nil {
		t.Fatal(err)
	}
	if got := e.report(sonnet45).Effective; got.RPM != 5 || got.TPM != 500 {
		t.Fatalf("effective %+v, want the quota halved", got)
	}
	tpm := int64(4000)
	info, err := e.b.SetOverride(ctx, sonnet45, "", broker.Override{TPM: &tpm, Reason: "raise approved, not yet visible"})
	if err != nil {
		t.Fatal(err)
	}
	if info.Effective.TPM != 4000 || info.Effective.RPM != 5 {
		t.Fatalf("effective with override %+v", info.Effective)
	}
	e.b.Close()
	e.open()
	if got := e.report(sonnet45).Effective.TPM; got != 4000 {
		t.Fatalf("override lost on restart: TPM %d", got)
	}
	if info, err = e.b.SetOverride(ctx, sonnet45, "", broker.Override{}); err != nil || info.Override != nil || info.Effective.TPM != 500 {
		t.Fatalf("clearing override: %+v %v", info, err)
	}
	if _, err := e.b.SetOverride(ctx, "meta.llama3-70b", "", broker.Override{TPM: &tpm}); broker.KindOf(err) != broker.KindNotFound {
		t.Fatalf("override of unknown budget: %v", err)
	}
}

// The waiting tests run in a synctest bubble: the broker's timers are real
// timers on the bubble's fake clock, and synctest.Wait tells when every
// goroutine is blocked, so nothing sleeps in real time.

func bubbleBroker(t *testing.T, specs ...broker.Spec) *broker.Broker {
	t.Helper()
	return bubbleBrokerWith(t, broker.Config{Margin: 1}, specs...)
}

func bubbleBrokerWith(t *testing.T, cfg broker.Config, specs ...broker.Spec) *broker.Broker {
	t.Helper()
	b, err := broker.Open(context.Background(), newMemStore(), sysclock.Clock{}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if err := b.SetSpecs(context.Background(), specs); err != nil {
		t.Fatal(err)
	}
	return b
}

type result struct {
	d   broker.Decision
	err error
}

func goAcquire(b *broker.Broker, ctx context.Context, req broker.AcquireRequest) <-chan result {
	ch := make(chan result, 1)
	go func() {
		d, err := b.Acquire(ctx, req)
		ch <- result{d, err}
	}()
	return ch
}

func TestWaiterWakesWhenSettlementReturnsTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := bubbleBroker(t, spec(sonnet45, broker.Limits{TPM: 10_000}))
		ctx := context.Background()
		d, _ := b.Acquire(ctx, broker.AcquireRequest{ModelID: sonnet45, MaxOutputTokens: 1800}) // 9000
		start := time.Now()
		ch := goAcquire(b, ctx, broker.AcquireRequest{ModelID: sonnet45, MaxOutputTokens: 1000, Wait: 30 * time.Second})
		synctest.Wait()
		select {
		case r := <-ch:
			t.Fatalf("granted while the window is full: %+v", r)
		default:
		}
		time.Sleep(3 * time.Second) // the fake clock: the call takes 3 s
		if _, err := b.Complete(ctx, d.Lease.ID, broker.OutcomeSuccess, broker.Usage{OutputTokens: 100}); err != nil {
			t.Fatal(err)
		}
		r := <-ch
		if r.err != nil || !r.d.Granted || time.Since(start) != 3*time.Second || r.d.Waited != 3*time.Second {
			t.Fatalf("waiter: %+v after %v", r, time.Since(start))
		}
	})
}

func TestWaiterWakesWhenWindowSlides(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := bubbleBroker(t, spec(haiku3, broker.Limits{RPM: 2}))
		ctx := context.Background()
		req := broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 10}
		b.Acquire(ctx, req)
		time.Sleep(10 * time.Second)
		b.Acquire(ctx, req)
		start := time.Now()
		req.Wait = 2 * time.Minute
		r := <-goAcquire(b, ctx, req)
		// The first grant leaves the window at the end of its slot + 60 s.
		if !r.d.Granted || time.Since(start) > 51*time.Second || time.Since(start) < 50*time.Second {
			t.Fatalf("granted=%v after %v, want about 50 s", r.d.Granted, time.Since(start))
		}
	})
}

func TestWaitRunsOutWithRefusal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := bubbleBroker(t, spec(haiku3, broker.Limits{RPM: 1}))
		ctx := context.Background()
		req := broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 10}
		b.Acquire(ctx, req)
		req.Wait = 5 * time.Second
		start := time.Now()
		r := <-goAcquire(b, ctx, req)
		if r.err != nil || r.d.Granted || time.Since(start) != 5*time.Second || r.d.Blocked != broker.LimitRPM || r.d.RetryAfter <= 0 {
			t.Fatalf("got %+v after %v", r, time.Since(start))
		}
		rep, _ := b.Report(broker.ReportFilter{})
		if rep[0].Waiters != 0 {
			t.Fatalf("%d waiters left behind", rep[0].Waiters)
		}
	})
}

func TestCancelledWaiterLeavesQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := bubbleBroker(t, spec(haiku3, broker.Limits{Concurrency: 1}))
		bg := context.Background()
		req := broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 10, Wait: time.Minute}
		d, _ := b.Acquire(bg, req)
		ctx, cancel := context.WithCancel(bg)
		ch := goAcquire(b, ctx, req)
		synctest.Wait()
		cancel()
		if r := <-ch; !errors.Is(r.err, context.Canceled) {
			t.Fatalf("cancelled waiter got %+v", r)
		}
		next := goAcquire(b, bg, req)
		synctest.Wait()
		b.Complete(bg, d.Lease.ID, broker.OutcomeSuccess, broker.Usage{})
		if r := <-next; !r.d.Granted {
			t.Fatalf("the next waiter was not served: %+v", r)
		}
	})
}

func TestWaitersServedByPriorityThenRoundRobin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := bubbleBroker(t, spec(haiku3, broker.Limits{Concurrency: 1}))
		ctx := context.Background()
		first, _ := b.Acquire(ctx, broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 10})
		type ticket struct {
			name string
			ch   <-chan result
		}
		var tickets []ticket
		enqueue := func(name, client string, p broker.Priority) {
			tickets = append(tickets, ticket{name, goAcquire(b, ctx, broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 10, Client: client, Priority: p, Wait: time.Hour})})
			synctest.Wait() // queue in a known order
		}
		// A batch flood from client a, then standard from a and b, then one
		// interactive call.
		enqueue("batch-a1", "a", broker.PriorityBatch)
		enqueue("batch-a2", "a", broker.PriorityBatch)
		enqueue("std-a1", "a", broker.PriorityStandard)
		enqueue("std-a2", "a", broker.PriorityStandard)
		enqueue("std-a3", "a", broker.PriorityStandard)
		enqueue("std-b1", "b", broker.PriorityStandard)
		enqueue("std-b2", "b", broker.PriorityStandard)
		enqueue("inter-c", "c", broker.PriorityInteractive)
		want := []string{"inter-c", "std-a1", "std-b1", "std-a2", "std-b2", "std-a3", "batch-a1", "batch-a2"}
		lease := first.Lease
		for _, name := range want {
			b.Complete(ctx, lease.ID, broker.OutcomeSuccess, broker.Usage{})
			synctest.Wait()
			var got []string
			for _, tk := range tickets {
				select {
				case r := <-tk.ch:
					got = append(got, tk.name)
					lease = r.d.Lease
				default:
				}
			}
			if len(got) != 1 || got[0] != name {
				t.Fatalf("served %v, want %s", got, name)
			}
		}
	})
}

func TestParseModelID(t *testing.T) {
	for _, tc := range []struct {
		id, region string
		want       broker.Key
		wantErr    string
	}{
		{id: sonnet45, want: broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: sonnet45}},
		{id: "us." + sonnet45, region: "us-west-2", want: broker.Key{Region: "us-west-2", Scope: broker.ScopeCrossRegion, Model: sonnet45}},
		{id: "global." + sonnet45, want: broker.Key{Region: "us-east-1", Scope: broker.ScopeGlobal, Model: sonnet45}},
		{id: "apac.amazon.nova-pro-v1:0", region: "ap-southeast-2", want: broker.Key{Region: "ap-southeast-2", Scope: broker.ScopeCrossRegion, Model: "amazon.nova-pro-v1:0"}},
		{id: "zz.newco.model-v1:0", want: broker.Key{Region: "us-east-1", Scope: broker.ScopeCrossRegion, Model: "newco.model-v1:0"}},
		{id: "arn:aws:bedrock:eu-west-1::foundation-model/" + haiku3, want: broker.Key{Region: "eu-west-1", Scope: broker.ScopeOnDemand, Model: haiku3}},
		{id: "arn:aws:bedrock:eu-central-1:123456789012:inference-profile/eu." + haiku3, want: broker.Key{Region: "eu-central-1", Scope: broker.ScopeCrossRegion, Model: haiku3}},
		{id: "", wantErr: "model_id: is empty"},
		{id: "arn:aws:bedrock:eu-west-1::foundation-model/" + haiku3, region: "us-east-1", wantErr: "disagrees"},
		{id: "arn:aws:bedrock:us-east-1:1:application-inference-profile/abc", wantErr: "not supported"},
		{id: "arn:aws:s3:::bucket/key", wantErr: "not a Bedrock ARN"},
		{id: haiku3, region: "Mars-1", wantErr: "not an AWS Region"},
		{id: "bad id", wantErr: "not a model"},
		// A Provisioned Throughput is its own budget, keyed by its ARN.
		{id: "arn:aws:bedrock:us-west-2:123456789012:provisioned-model/x1y2z3", want: broker.Key{Region: "us-west-2", Scope: broker.ScopeProvisioned, Model: "arn:aws:bedrock:us-west-2:123456789012:provisioned-model/x1y2z3"}},
		{id: "arn:aws:bedrock:us-west-2:123456789012:provisioned-model/x1y2z3", region: "us-west-2", want: broker.Key{Region: "us-west-2", Scope: broker.ScopeProvisioned, Model: "arn:aws:bedrock:us-west-2:123456789012:provisioned-model/x1y2z3"}},
		{id: "arn:aws:bedrock:us-west-2:123456789012:provisioned-model/x1y2z3", region: "us-east-1", wantErr: `region: "us-east-1" disagrees with the Region "us-west-2" of the provisioned model ARN`},
		{id: "arn:aws:bedrock::123456789012:provisioned-model/x1y2z3", wantErr: `Region "" is not an AWS Region name`},
		{id: "arn:aws:bedrock:us-west-2:12345:provisioned-model/x1y2z3", wantErr: `account "12345" is not 12 digits`},
		{id: "arn:aws:bedrock:us-west-2:123456789012:provisioned-model/", wantErr: "has no resource id"},
		{id: "arn:aws:bedrock:us-west-2:123456789012:provisioned-model/a/b", wantErr: `id "a/b" is not 1 to 128 letters`},
		{id: "arn:aws-xx:bedrock:us-west-2:123456789012:provisioned-model/x", wantErr: `unknown partition "aws-xx"`},
	} {
		got, err := broker.ParseModelID(tc.id, tc.region, "us-east-1")
		if tc.wantErr != "" {
			if err == nil || !contains(err.Error(), tc.wantErr) || broker.KindOf(err) != broker.KindInvalid {
				t.Errorf("ParseModelID(%q, %q) = %v, %v; want error containing %q", tc.id, tc.region, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseModelID(%q, %q) = %v, %v; want %v", tc.id, tc.region, got, err, tc.want)
		}
	}
}

func TestDefaultBurndownAndMaxOutput(t *testing.T) {
	for _, tc := range []struct {
		model    string
		burndown float64
		maxOut   int64
	}{
		{"anthropic.claude-3-7-sonnet-20250219-v1:0", 5, 64000},
		{"anthropic.claude-sonnet-4-20250514-v1:0", 5, 64000},
		{"anthropic.claude-sonnet-4-5-20250929-v1:0", 5, 64000},
		{"anthropic.claude-opus-4-20250514-v1:0", 5, 32000},
		{"anthropic.claude-opus-4-1-20250805-v1:0", 5, 32000},
		{"anthropic.claude-haiku-4-5-20251001-v1:0", 5, 64000},
		{"anthropic.claude-opus-7-20290101-v1:0", 5, 64000}, // a future Claude
		{"anthropic.claude-3-5-sonnet-20241022-v2:0", 1, 8192},
		{"anthropic.claude-3-5-haiku-20241022-v1:0", 1, 8192},
		{"anthropic.claude-3-haiku-20240307-v1:0", 1, 4096},
		{"anthropic.claude-v2:1", 1, 4096},
		{"anthropic.claude-instant-v1", 1, 4096},
		{"amazon.nova-pro-v1:0", 1, 4096},
		{"meta.llama3-1-405b-instruct-v1:0", 1, 4096},
	} {
		if b := broker.DefaultBurndown(tc.model); b != tc.burndown {
			t.Errorf("DefaultBurndown(%s) = %v, want %v", tc.model, b, tc.burndown)
		}
		if m := broker.DefaultMaxOutputTokens(tc.model); m != tc.maxOut {
			t.Errorf("DefaultMaxOutputTokens(%s) = %v, want %v", tc.model, m, tc.maxOut)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestGrantToALeftCallerIsUndone: a caller whose context ended by the time
// its grant is made never hears of the lease, so the grant is undone and
// holds no capacity (a demo stopping its traffic left such leases held
// until they expired).
func TestGrantToALeftCallerIsUndone(t *testing.T) {
	e := newEnv(t, spec(haiku3, broker.Limits{RPM: 10, Concurrency: 1}))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d, err := e.b.Acquire(ctx, broker.AcquireRequest{ModelID: haiku3, Client: "gone", InputTokens: 10, MaxOutputTokens: 10})
	if !errors.Is(err, context.Canceled) || d.Granted {
		t.Fatalf("acquire for a caller that left: %+v %v", d, err)
	}
	// The one concurrency slot is free for the next caller.
	e.mustGrant(broker.AcquireRequest{ModelID: haiku3, Client: "next", InputTokens: 10, MaxOutputTokens: 10})
	reports, _ := e.b.Report(broker.ReportFilter{})
	if u := reports[0].Usage; u.Concurrent != 1 || u.RequestsLastMinute != 1 {
		t.Errorf("usage %+v; want only the next caller's lease", u)
	}
}
