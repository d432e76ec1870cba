package quotaclient_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"google.golang.org/grpc"

	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// regionReport is the report of Sonnet 4.5's US profile budget in region.
func regionReport(t *testing.T, conn *grpc.ClientConn, region string) *pb.BudgetReport {
	t.Helper()
	rep, err := pb.NewQuotaBrokerClient(conn).GetQuotaReport(context.Background(), &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range rep.GetBudgets() {
		if k := b.GetBudget().GetKey(); k.GetRegion() == region && k.GetScope() == pb.Scope_SCOPE_CROSS_REGION && k.GetModel() == sonnet45 {
			return b
		}
	}
	t.Fatalf("no budget of %s in %s", sonnet45, region)
	return nil
}

// TestRouterStreams: ConverseStream and InvokeModelWithResponseStream on a
// route run on the granted target (the first one is full, so they spill
// to the second), and each lease is settled when its stream ends with the
// usage the stream's last event reports, not the reservation.
func TestRouterStreams(t *testing.T) {
	t.Parallel()
	sim, url := startSim(t, routeScenario(6000, 1e6), 1)
	bp := routeBroker(t, 6000, 1_000_000, usRoute)
	conn := dial(t, bp.addr)
	log := newSettledLog()
	qc := quotaclient.New(conn, quotaclient.WithWait(-1), quotaclient.WithLogger(slog.New(log)))
	ctx := context.Background()
	// us-east-1 full: 5,000 + 80 x 5 = 5,400 of its 0.9 x 6,000.
	if _, err := qc.Acquire(ctx, quotaclient.Request{ModelID: "us." + sonnet45, Region: "us-east-1", InputTokens: 5000, MaxOutputTokens: 80}); err != nil {
		t.Fatal(err)
	}
	r := newRouter(t, qc, "sonnet-us", url)
	var want int64 // tokens the calls' usage charges at burndown 5

	out, err := r.ConverseStream(ctx, converseStreamIn("", "hello sim:output_tokens=30", 200))
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := quotaclient.LeaseOf(out.ResultMetadata); !ok || l.Region != "us-east-2" || l.CallModelID != "us."+sonnet45 || l.RouteReason != "spill" {
		t.Fatalf("ConverseStream's lease: %+v %v", l, ok)
	}
	var usage *rttypes.TokenUsage
	st := out.GetStream()
	for ev := range st.Events() {
		if m, ok := ev.(*rttypes.ConverseStreamOutputMemberMetadata); ok {
			usage = m.Value.Usage
		}
	}
	if err := st.Err(); err != nil || usage == nil || *usage.OutputTokens != 30 {
		t.Fatalf("ConverseStream: usage %v, %v", usage, err)
	}
	st.Close()
	if got := log.next(t); got != "stream_complete" {
		t.Fatalf("ConverseStream settled as %q", got)
	}
	want += int64(*usage.InputTokens) + 5*int64(*usage.OutputTokens)

	body := anthropicBody("hello sim:output_tokens=40", 200)
	sout, err := r.InvokeModelWithResponseStream(ctx, &bedrockruntime.InvokeModelWithResponseStreamInput{ModelId: aws.String(sonnet45), Body: body, ContentType: aws.String("application/json")})
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := quotaclient.LeaseOf(sout.ResultMetadata); !ok || l.Region != "us-east-2" || l.CallModelID != "us."+sonnet45 || l.Route != "sonnet-us" {
		t.Fatalf("InvokeModelWithResponseStream's lease: %+v %v", l, ok)
	}
	in, outTokens, err := streamUsage(sout.GetStream())
	if err != nil || outTokens != 40 {
		t.Fatalf("InvokeModelWithResponseStream: %d output tokens, %v", outTokens, err)
	}
	if got := log.next(t); got != "stream_complete" {
		t.Fatalf("InvokeModelWithResponseStream settled as %q", got)
	}
	want += in + 5*outTokens

	rep := regionReport(t, conn, "us-east-2")
	c := rep.GetCounters()
	if c.GetGranted() != 2 || c.GetCompleted() != 2 || rep.GetOutstandingLeases() != 0 || c.GetSettledTokens() != want || c.GetReservedTokens() <= want {
		t.Fatalf("us-east-2: %v; want two leases settled at %d tokens, their usage", c, want)
	}
	admitted := map[string]int64{}
	for _, q := range sim.Stats().Quotas {
		if q.Code == "L-SON45XR" {
			admitted[q.Region] += q.Admitted
		}
	}
	if admitted["us-east-2"] != 2 || admitted["us-east-1"]+admitted["us-west-2"] != 0 {
		t.Errorf("the simulator admitted %v, want both calls in us-east-2", admitted)
	}
	if n := sim.Stats().Throttles; n != 0 {
		t.Fatalf("%d throttles", n)
	}
}

// TestRouterMidStreamThrottle: a routed stream cut by a mid-stream
// ThrottlingException settles as an error at its reservation and reports
// the throttle on the target it ran on, as WithLeases' streams do.
func TestRouterMidStreamThrottle(t *testing.T) {
	t.Parallel()
	sc := routeScenario(6000, 1e6)
	sc.Runtime.Faults.MidStreamThrottleRate = 1
	_, url := startSim(t, sc, 1)
	bp := routeBroker(t, 6000, 1_000_000, usRoute)
	conn := dial(t, bp.addr)
	log := newSettledLog()
	qc := quotaclient.New(conn, quotaclient.WithWait(-1), quotaclient.WithLogger(slog.New(log)))
	out, err := newRouter(t, qc, "sonnet-us", url).ConverseStream(context.Background(), converseStreamIn("", "hello sim:output_tokens=400", 500))
	if err != nil {
		t.Fatal(err)
	}
	st := out.GetStream()
	for range st.Events() {
	}
	var te *rttypes.ThrottlingException
	if err := st.Err(); !errors.As(err, &te) {
		t.Fatalf("stream error %v, want a ThrottlingException", err)
	}
	st.Close()
	if got := log.next(t); got != "stream_exception_throttlingException" {
		t.Fatalf("settled as %q", got)
	}
	rep := regionReport(t, conn, "us-east-1")
	c := rep.GetCounters()
	if rep.GetOutstandingLeases() != 0 || c.GetErrors() != 1 || c.GetReportedThrottles() != 1 || c.GetSettledTokens() != c.GetReservedTokens() {
		t.Fatalf("us-east-1: %v; want one lease settled as an error at its reservation and one throttle reported", c)
	}
}
