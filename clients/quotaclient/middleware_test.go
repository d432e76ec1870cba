package quotaclient_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"

	"google.golang.org/grpc"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

// fastStandardRetries is the SDK's standard retryer (3 attempts) without
// its backoff, so a test sees what it retries without waiting.
func fastStandardRetries(o *bedrockruntime.Options) {
	o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
		so.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return 0, nil })
	})
}

type fixture struct {
	url string
	qc  *quotaclient.Client
	log *settledLog
}

// A throttle from Bedrock settles the lease as throttled and is retried by
// the client's policy with a fresh lease each time, never by the SDK.
func TestThrottleSettlesAndClientRetries(t *testing.T) {
	t.Parallel()
	sim, url := startSim(t, testScenario(1000, 400, 1e6), 1) // room for one 300-token reservation
	bp := startBroker(t, brokerOpts{specs: []broker.Spec{spec(t, haiku3, broker.Limits{TPM: 1_000_000})}})
	conn := dial(t, bp.addr)
	ctx := context.Background()
	text := strings.Repeat("word ", 80)

	// Without the middleware the SDK's standard retryer retries throttles.
	plain := runtimeClient(url, fastStandardRetries)
	if _, err := plain.Converse(ctx, converseIn(haiku3, text, 200)); err != nil {
		t.Fatal(err)
	}
	_, err := plain.Converse(ctx, converseIn(haiku3, text, 200))
	var te *rttypes.ThrottlingException
	if !errors.As(err, &te) || sim.Stats().Throttles != 3 {
		t.Fatalf("plain SDK: %v after %d throttles, want 3 attempts", err, sim.Stats().Throttles)
	}

	// With it, the same retryer makes one attempt per lease; the client makes
	// three leases.
	qc := quotaclient.New(conn, quotaclient.WithThrottleRetries(3, time.Millisecond))
	leased := runtimeClient(url, fastStandardRetries, quotaclient.WithLeases(qc))
	_, err = leased.Converse(ctx, converseIn(haiku3, text, 200))
	if !errors.As(err, &te) {
		t.Fatalf("leased: %v, want ThrottlingException", err)
	}
	if got := sim.Stats().Throttles; got != 6 {
		t.Errorf("simulator saw %d throttles in all, want 3 + 3", got)
	}
	c := report(t, conn, haiku3).GetCounters()
	if c.GetGranted() != 3 || c.GetThrottled() != 3 || c.GetCompleted() != 3 || c.GetSettledTokens() != 0 {
		t.Errorf("broker counters %v, want 3 leases granted and settled as throttled", c)
	}
}

// ServiceUnavailable is not a throttle: the SDK retries it within one
// lease, which settles once as an error.
func TestServiceUnavailableLeftToSDK(t *testing.T) {
	t.Parallel()
	sc := testScenario(1000, 1e6, 1e6)
	sc.Runtime.Faults.ServiceUnavailableRate = 1
	sim, url := startSim(t, sc, 1)
	bp := startBroker(t, brokerOpts{specs: []broker.Spec{spec(t, haiku3, broker.Limits{TPM: 1_000_000})}})
	conn := dial(t, bp.addr)
	qc := quotaclient.New(conn)
	rt := runtimeClient(url, fastStandardRetries, quotaclient.WithLeases(qc))
	_, err := rt.Converse(context.Background(), converseIn(haiku3, "hello", 100))
	var su *rttypes.ServiceUnavailableException
	if !errors.As(err, &su) {
		t.Fatalf("got %v, want ServiceUnavailableException", err)
	}
	if got := sim.Stats().Faults; got != 3 {
		t.Errorf("simulator saw %d faulted attempts, want the SDK's 3", got)
	}
	c := report(t, conn, haiku3).GetCounters()
	if c.GetGranted() != 1 || c.GetErrors() != 1 || c.GetCompleted() != 1 || c.GetThrottled() != 0 {
		t.Errorf("broker counters %v, want one lease settled as an error", c)
	}
}

func streamFixture(t *testing.T, midStreamThrottle float64) (*simHandle, *fixture) {
	t.Helper()
	sc := testScenario(1000, 1e6, 1e6)
	sc.Runtime.Faults.MidStreamThrottleRate = midStreamThrottle
	sim, url := startSim(t, sc, 1)
	bp := startBroker(t, brokerOpts{specs: []broker.Spec{spec(t, haiku3, broker.Limits{TPM: 1_000_000})}})
	conn := dial(t, bp.addr)
	log := newSettledLog()
	qc := quotaclient.New(conn, quotaclient.WithLogger(slog.New(log)))
	return &simHandle{sim: sim, conn: conn}, &fixture{url: url, qc: qc, log: log}
}

// A stream broken by a mid-stream ThrottlingException settles as an error
// at the reservation (Bedrock charges the output already sent, which the
// client cannot count) and reports the throttle to the broker.
func TestMidStreamThrottleSettles(t *testing.T) {
	t.Parallel()
	h, f := streamFixture(t, 1)
	rt := runtimeClient(f.url, quotaclient.WithLeases(f.qc))
	_, _, err := converseStream(context.Background(), rt, converseStreamIn(haiku3, "hello sim:output_tokens=400", 1000))
	var te *rttypes.ThrottlingException
	if !errors.As(err, &te) {
		t.Fatalf("got %v, want a ThrottlingException from the stream", err)
	}
	if r := f.log.next(t); r != "stream_exception_throttlingException" {
		t.Fatalf("settled as %q", r)
	}
	rep := report(t, h.conn, haiku3)
	c := rep.GetCounters()
	if rep.GetOutstandingLeases() != 0 || c.GetErrors() != 1 || c.GetReportedThrottles() != 1 || c.GetSettledTokens() != c.GetReservedTokens() {
		t.Errorf("report %v: want one lease settled as an error at its reservation, one reported throttle", rep)
	}
	if st := h.sim.Stats(); st.Admitted != 1 {
		t.Errorf("simulator admitted %d", st.Admitted)
	}
}

// A stream the caller abandons, by closing it early or by cancelling its
// context, settles at once as an error at the reservation.
func TestAbandonedStreamsSettle(t *testing.T) {
	t.Parallel()
	h, f := streamFixture(t, 0)
	rt := runtimeClient(f.url, quotaclient.WithLeases(f.qc))
	in := converseStreamIn(haiku3, "hello sim:output_tokens=800", 1000)

	// Closed after the first event.
	out, err := rt.ConverseStream(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	<-out.GetStream().Events()
	out.GetStream().Close()
	if r := f.log.next(t); r != "stream_abandoned" {
		t.Fatalf("closed stream settled as %q", r)
	}

	// Cancelled after the first event, never closed by the caller. A new
	// SDK client: the SDK shares one event-stream decoder per client, and
	// the first stream's reader goroutine may still be winding down.
	rt = runtimeClient(f.url, quotaclient.WithLeases(f.qc))
	ctx, cancel := context.WithCancel(context.Background())
	body := anthropicBody("hello sim:output_tokens=800", 1000)
	out2, err := rt.InvokeModelWithResponseStream(ctx, &bedrockruntime.InvokeModelWithResponseStreamInput{ModelId: aws.String(haiku3), Body: body})
	if err != nil {
		t.Fatal(err)
	}
	<-out2.GetStream().Events()
	cancel()
	if r := f.log.next(t); r != "stream_abandoned" {
		t.Fatalf("cancelled stream settled as %q", r)
	}
	out2.GetStream().Close()

	rep := report(t, h.conn, haiku3)
	c := rep.GetCounters()
	if rep.GetOutstandingLeases() != 0 || c.GetCompleted() != 2 || c.GetErrors() != 2 || c.GetSettledTokens() != c.GetReservedTokens() {
		t.Errorf("report %v: want two leases settled as errors at their reservation", rep)
	}
}

type simHandle struct {
	sim  *bedrocksim.Sim
	conn *grpc.ClientConn
}
