package quotaclient_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/clients/quotaclient"
)

// The broker is stopped mid-run and started again on the same address and
// state file. FailClosed makes no Bedrock call while it is away and says
// ErrUnavailable; FailOpen carries on under its local limiter, refuses
// beyond it, and both return to the broker when it is back.
func TestBrokerOutageFailClosedAndFailOpen(t *testing.T) {
	t.Parallel()
	sim, url := startSim(t, testScenario(1000, 1e6, 1e6), 1)
	specs := []broker.Spec{spec(t, haiku3, broker.Limits{TPM: 1_000_000})}
	path := filepath.Join(t.TempDir(), "state.db")
	bp := startBroker(t, brokerOpts{path: path, specs: specs})
	addr := bp.addr
	conn := dial(t, addr)
	ctx := context.Background()

	closed := quotaclient.New(conn, quotaclient.WithName("closed"), quotaclient.WithFailureMode(quotaclient.FailClosed))
	open := quotaclient.New(conn, quotaclient.WithName("open"), quotaclient.WithFailureMode(quotaclient.FailOpen),
		quotaclient.WithFallbackLimits(quotaclient.FallbackLimits{RequestsPerMinute: 3}),
		quotaclient.WithProbeInterval(20*time.Millisecond), quotaclient.WithWait(-1))
	rtClosed := runtimeClient(url, quotaclient.WithLeases(closed))
	rtOpen := runtimeClient(url, quotaclient.WithLeases(open))
	// callLease makes a call and returns the lease its output says it ran on.
	callLease := func(rt *bedrockruntime.Client) (quotaclient.CallLease, error) {
		out, err := rt.Converse(ctx, converseIn(haiku3, "hello", 100))
		if err != nil {
			return quotaclient.CallLease{}, err
		}
		l, ok := quotaclient.LeaseOf(out.ResultMetadata)
		if !ok {
			t.Fatal("a leased call's output carries no lease")
		}
		return l, nil
	}
	call := func(rt *bedrockruntime.Client) error {
		_, err := callLease(rt)
		return err
	}

	// Up: both go through the broker, on broker leases.
	for _, rt := range []*bedrockruntime.Client{rtClosed, rtOpen} {
		l, err := callLease(rt)
		if err != nil {
			t.Fatal(err)
		}
		if l.Local || l.ID == "" || l.Model != haiku3 || l.Attempts != 1 || l.ReservedTokens <= 0 {
			t.Fatalf("lease of a call with the broker up: %+v", l)
		}
	}
	if g := report(t, conn, haiku3).GetCounters().GetGranted(); g != 2 {
		t.Fatalf("granted %d before the outage", g)
	}

	bp.stop()
	before := sim.Stats().Requests

	// Down, FailClosed: the broker's error, and no call to Bedrock.
	err := call(rtClosed)
	if !errors.Is(err, quotaclient.ErrUnavailable) || sim.Stats().Requests != before {
		t.Fatalf("fail-closed during the outage: %v (Bedrock requests %d -> %d)", err, before, sim.Stats().Requests)
	}
	// Its words say so, and what FailOpen would do.
	for _, want := range []string{"broker unavailable", "no Bedrock call", "FailClosed", "WithFailureMode(FailOpen) the call would run on a local lease"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("fail-closed error %q lacks %q", err, want)
		}
	}
	// Down, FailOpen: three calls under the local limit, each told it ran
	// on a local lease; the fourth refused.
	for i := range 3 {
		l, err := callLease(rtOpen)
		if err != nil {
			t.Fatalf("fail-open call %d during the outage: %v", i, err)
		}
		if !l.Local || !strings.HasPrefix(l.ID, "local-") {
			t.Fatalf("fail-open call %d during the outage ran on %+v, not a local lease", i, l)
		}
	}
	err = call(rtOpen)
	var refused *quotaclient.RefusedError
	if !errors.As(err, &refused) || !refused.Local || refused.Limit != quotaclient.LimitRPM || refused.RetryAfter <= 0 {
		t.Fatalf("fourth fail-open call: %v, want a local RPM refusal", err)
	}
	if open.BrokerReachable() || closed.BrokerReachable() {
		t.Fatal("clients think the broker is reachable")
	}
	if got := sim.Stats().Requests - before; got != 3 {
		t.Fatalf("Bedrock saw %d calls during the outage, want 3", got)
	}

	// Back on the same address and state file.
	bp2 := startBroker(t, brokerOpts{path: path, addr: addr})
	recovered := func(c *quotaclient.Client, rt *bedrockruntime.Client) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := call(rt)
			if err == nil && c.BrokerReachable() {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no recovery within 10s: %v", err)
			}
			time.Sleep(10 * time.Millisecond) // pace the retry loop while gRPC reconnects
		}
	}
	recovered(closed, rtClosed)
	recovered(open, rtOpen)
	rep := report(t, conn, haiku3)
	c := rep.GetCounters()
	if c.GetGranted() < 2 || c.GetCompleted() != c.GetGranted() || rep.GetOutstandingLeases() != 0 {
		t.Errorf("after recovery: %v", rep)
	}
	_ = bp2
}
