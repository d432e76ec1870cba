package quotaclient_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	"github.com/bedrockqb/quotabroker/internal/clocktest"
)

// The client's errors are the inverse of the server's table.
func TestErrorsAreTyped(t *testing.T) {
	t.Parallel()
	clock := clocktest.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
	bp := startBroker(t, brokerOpts{clock: clock, specs: []broker.Spec{spec(t, haiku3, broker.Limits{RPM: 1, TPM: 100_000})}})
	qc := quotaclient.New(dial(t, bp.addr), quotaclient.WithName("typed"), quotaclient.WithWait(-1))
	ctx := context.Background()

	l, err := qc.Acquire(ctx, quotaclient.Request{ModelID: haiku3, InputTokens: 100, MaxOutputTokens: 200, Priority: quotaclient.PriorityInteractive})
	if err != nil {
		t.Fatal(err)
	}
	if l.ReservedTokens != 300 || l.Scope != "on-demand" || l.Model != haiku3 || l.Local || !l.ExpiresAt.After(l.GrantedAt) {
		t.Fatalf("lease %+v", l)
	}

	_, err = qc.Acquire(ctx, quotaclient.Request{ModelID: haiku3, MaxOutputTokens: 10})
	var refused *quotaclient.RefusedError
	if !errors.As(err, &refused) || !errors.Is(err, quotaclient.ErrRefused) || refused.Limit != quotaclient.LimitRPM ||
		refused.RetryAfter <= 0 || refused.Model != haiku3 || refused.Scope != "on-demand" {
		t.Fatalf("second request in the minute: %v, want a refusal on RPM", err)
	}

	_, err = qc.Acquire(ctx, quotaclient.Request{ModelID: haiku3, MaxOutputTokens: 10_000_000})
	var qe *quotaclient.Error
	if !errors.Is(err, quotaclient.ErrInvalid) || !errors.As(err, &qe) || qe.Field != "max_output_tokens" {
		t.Fatalf("never-fits request: %v, want ErrInvalid on max_output_tokens", err)
	}
	if _, err := qc.Acquire(ctx, quotaclient.Request{}); !errors.Is(err, quotaclient.ErrInvalid) {
		t.Fatalf("empty model: %v", err)
	}
	if _, err := qc.Acquire(ctx, quotaclient.Request{ModelID: "acme.unknown-model-v1:0"}); !errors.Is(err, quotaclient.ErrNotFound) {
		t.Fatalf("unknown model: %v, want ErrNotFound", err)
	}

	if _, err := l.Renew(ctx, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	for range 2 { // completing twice is fine
		if err := l.Complete(ctx, quotaclient.OutcomeSuccess, quotaclient.Usage{InputTokens: 100, OutputTokens: 20}); err != nil {
			t.Fatal(err)
		}
	}
	if err := qc.ReportThrottle(ctx, haiku3, "", "Too many tokens"); err != nil {
		t.Fatal(err)
	}

	// A lease that outlives its TTL: completing it says ErrExpired.
	clock.Advance(61 * time.Second)
	l2, err := qc.Acquire(ctx, quotaclient.Request{ModelID: haiku3, MaxOutputTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(6 * time.Minute)
	bp.b.Sweep(ctx)
	if err := l2.Complete(ctx, quotaclient.OutcomeSuccess, quotaclient.Usage{}); !errors.Is(err, quotaclient.ErrExpired) {
		t.Fatalf("expired lease: %v, want ErrExpired", err)
	}
	if _, err := l2.Renew(ctx, 0); !errors.Is(err, quotaclient.ErrExpired) && !errors.Is(err, quotaclient.ErrNotFound) {
		t.Fatalf("renew expired lease: %v", err)
	}

	// Cancelled by the caller: a context error, not a broker kind.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := qc.Acquire(cctx, quotaclient.Request{ModelID: haiku3}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if !qc.BrokerReachable() {
		t.Fatal("a cancelled call marked the broker unreachable")
	}
}

// With a token counter the lease reserves CountTokens' exact input; the
// Claude 4.5 burndown (5x output) is settled as the simulator charges it.
func TestCountTokensAndBurndown(t *testing.T) {
	t.Parallel()
	sim, url := startSim(t, testScenario(1000, 1e6, 1e6), 1)
	bp := startBroker(t, brokerOpts{specs: []broker.Spec{
		spec(t, haiku3, broker.Limits{TPM: 1_000_000}), spec(t, "us."+sonnet45, broker.Limits{TPM: 1_000_000}),
	}})
	conn := dial(t, bp.addr)
	ctx := context.Background()
	text := strings.Repeat("word ", 80) // 100 tokens by the simulator's count

	estimating := runtimeClient(url, quotaclient.WithLeases(quotaclient.New(conn)))
	counting := runtimeClient(url, quotaclient.WithLeases(quotaclient.New(conn, quotaclient.WithTokenCounter(runtimeClient(url)))))
	if _, err := estimating.Converse(ctx, converseIn(haiku3, text, 200)); err != nil {
		t.Fatal(err)
	}
	if got := report(t, conn, haiku3).GetCounters().GetReservedTokens(); got != 110+200 {
		t.Errorf("estimated reservation %d, want ceil(400/4) x 1.1 + 200", got)
	}
	if _, err := counting.Converse(ctx, converseIn(haiku3, text, 200)); err != nil {
		t.Fatal(err)
	}
	if got := report(t, conn, haiku3).GetCounters().GetReservedTokens(); got != 310+300 {
		t.Errorf("counted reservation %d, want 100 + 200 more", got)
	}

	out, err := counting.Converse(ctx, converseIn("us."+sonnet45, text, 200))
	if err != nil {
		t.Fatal(err)
	}
	want := int64(*out.Usage.InputTokens) + 5*int64(*out.Usage.OutputTokens)
	c := report(t, conn, sonnet45).GetCounters()
	q, _ := sim.Quota("us-east-1", "L-SON45XR")
	if c.GetReservedTokens() != 100+5*200 || c.GetSettledTokens() != want || int64(q.Settled) != want {
		t.Errorf("sonnet: reserved %d settled %d, simulator settled %.0f, want %d", c.GetReservedTokens(), c.GetSettledTokens(), q.Settled, want)
	}
}
