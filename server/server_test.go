package server_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/clocktest"
	"github.com/bedrockqb/quotabroker/internal/sysclock"
	"github.com/bedrockqb/quotabroker/server"
)

const sonnet = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

type fixture struct {
	client pb.QuotaBrokerClient
	conn   *grpc.ClientConn
	b      *broker.Broker
	clock  *clocktest.Clock
}

// start runs a broker on a real bbolt file behind a real gRPC server on
// loopback, with one budget for sonnet.
func start(t *testing.T, clock broker.Clock, cfg broker.Config, limits broker.Limits) *fixture {
	t.Helper()
	return startWith(t, clock, cfg, limits, server.Config{})
}

// startWith is start with a server configuration.
func startWith(t *testing.T, clock broker.Clock, cfg broker.Config, limits broker.Limits, scfg server.Config) *fixture {
	t.Helper()
	b := openBroker(t, clock, cfg, limits)
	conn := serve(t, b, scfg)
	f := &fixture{client: pb.NewQuotaBrokerClient(conn), conn: conn, b: b}
	if c, ok := clock.(*clocktest.Clock); ok {
		f.clock = c
	}
	return f
}

// openBroker opens a broker on a real bbolt file, with full margin unless
// cfg sets one, and one budget for sonnet with limits.
func openBroker(t *testing.T, clock broker.Clock, cfg broker.Config, limits broker.Limits) *broker.Broker {
	t.Helper()
	ctx := context.Background()
	store, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if cfg.Margin == 0 {
		cfg.Margin = 1
	}
	b, err := broker.Open(ctx, store, clock, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	key, _ := broker.ParseModelID(sonnet, "", "us-east-1")
	if err := b.SetSpecs(ctx, []broker.Spec{{Key: key, Quota: limits, Source: "test"}}); err != nil {
		t.Fatal(err)
	}
	return b
}

// newBroker is openBroker on a fake clock with one generous TPM limit.
func newBroker(t *testing.T) *broker.Broker {
	return openBroker(t, fakeClock(), broker.Config{}, broker.Limits{TPM: 1_000_000})
}

// serve runs a server with scfg in front of b on loopback for the test and
// returns a connection to it.
func serve(t testing.TB, b server.Broker, scfg server.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(serveOn(t, server.New(b, scfg)), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func fakeClock() *clocktest.Clock {
	return clocktest.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
}

func TestLeaseRoundTripAndReport(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{RPM: 10, TPM: 1_000_000})
	ctx := metadata.AppendToOutgoingContext(context.Background(), server.ClientHeader, "svc-a")
	resp, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 1000, MaxOutputTokens: 500, Priority: pb.Priority_PRIORITY_INTERACTIVE})
	if err != nil {
		t.Fatal(err)
	}
	l := resp.GetLease()
	if l.GetReservedTokens() != 1000+2500 || l.GetBudget().GetScope() != pb.Scope_SCOPE_CROSS_REGION || l.GetExpiresAt() == nil {
		t.Fatalf("lease %v", l)
	}
	done, err := f.client.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: l.GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS,
		Usage: &pb.Usage{InputTokens: 1000, OutputTokens: 100}})
	if err != nil {
		t.Fatal(err)
	}
	if done.GetChargedTokens() != 1500 || done.GetReturnedTokens() != 2000 || done.GetAlreadyCompleted() {
		t.Fatalf("completion %v", done)
	}
	again, err := f.client.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: l.GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS})
	if err != nil || !again.GetAlreadyCompleted() || again.GetChargedTokens() != 1500 {
		t.Fatalf("duplicate completion: %v %v", again, err)
	}
	rep, err := f.client.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.GetBudgets()) != 1 {
		t.Fatalf("report has %d budgets", len(rep.GetBudgets()))
	}
	br := rep.GetBudgets()[0]
	if br.GetUsage().GetTokensLastMinute() != 1500 || br.GetCounters().GetGranted() != 1 || br.GetCounters().GetCompleted() != 1 ||
		br.GetBudget().GetQuota().GetRequestsPerMinute() != 10 || br.GetOutstandingLeases() != 0 {
		t.Fatalf("report %v", br)
	}
	list, err := f.client.ListBudgets(ctx, &pb.ListBudgetsRequest{})
	if err != nil || len(list.GetBudgets()) != 1 || list.GetBudgets()[0].GetSource() != "test" {
		t.Fatalf("list budgets: %v %v", list, err)
	}

	// Once the minute is over and the sweep has written it to bbolt, the
	// report's activity shows the call, by client.
	f.clock.Advance(time.Minute)
	f.b.Sweep(context.Background())
	rep, err = f.client.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	act := rep.GetBudgets()[0].GetActivity()
	h := act.GetLastHour()
	if rep.GetHistoryError() != "" || h.GetGranted() != 1 || h.GetSuccessful() != 1 || h.GetCalls() != 1 || h.GetSettledTokens() != 1500 ||
		h.GetReservedTokens() != 3500 || h.GetOutputTokens() != 100 || act.GetLastMinute().GetGranted() != 1 ||
		len(act.GetTopClients()) != 1 || act.GetTopClients()[0].GetClient() != "svc-a" || act.GetRecommendationNote() == "" {
		t.Fatalf("activity %v (history error %q)", act, rep.GetHistoryError())
	}
}

func TestRefusalCarriesRetryInfoAndLimit(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{RPM: 1, TPM: 1_000_000})
	ctx := context.Background()
	if _, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(20 * time.Second)
	_, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10})
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "RPM") {
		t.Fatalf("got %v", err)
	}
	retry, info := refusalDetails(st)
	if retry == nil || retry.GetRetryDelay().AsDuration() != 40250*time.Millisecond {
		t.Fatalf("RetryInfo %v, want 40.25s", retry)
	}
	if info == nil || info.GetReason() != "LIMIT_RPM" || info.GetDomain() != server.ErrorDomain || info.GetMetadata()["scope"] != "cross-region" {
		t.Fatalf("ErrorInfo %v", info)
	}
}

// refusalDetails returns a refusal's RetryInfo and ErrorInfo (nil if absent).
func refusalDetails(st *status.Status) (*errdetails.RetryInfo, *errdetails.ErrorInfo) {
	var retry *errdetails.RetryInfo
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.RetryInfo:
			retry = d
		case *errdetails.ErrorInfo:
			info = d
		}
	}
	return retry, info
}

// TestBadInput checks that every kind of malformed request gets the right
// code and a message that names what is wrong, over a real connection.
func TestBadInput(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{LeaseTTL: time.Minute}, broker.Limits{TPM: 100_000})
	ctx := context.Background()
	granted, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	expiring, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Minute)
	f.b.Sweep(ctx)
	acq := func(r *pb.AcquireLeaseRequest) func() error {
		return func() error { _, err := f.client.AcquireLease(ctx, r); return err }
	}
	comp := func(r *pb.CompleteLeaseRequest) func() error {
		return func() error { _, err := f.client.CompleteLease(ctx, r); return err }
	}
	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"empty model", acq(&pb.AcquireLeaseRequest{}), codes.InvalidArgument, "model_id: is empty"},
		{"unknown model", acq(&pb.AcquireLeaseRequest{ModelId: "meta.llama9-secret-v1:0"}), codes.NotFound, "no budget for on-demand meta.llama9-secret-v1:0 in us-east-1"},
		{"unknown region", acq(&pb.AcquireLeaseRequest{ModelId: sonnet, Region: "eu-west-3"}), codes.NotFound, "no budget"},
		{"malformed region", acq(&pb.AcquireLeaseRequest{ModelId: sonnet, Region: "the moon"}), codes.InvalidArgument, "region"},
		{"negative input", acq(&pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: -1}), codes.InvalidArgument, "input_tokens: is negative"},
		{"absurd max tokens", acq(&pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 1 << 40}), codes.InvalidArgument, "max_output_tokens"},
		{"never fits", acq(&pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 30_000}), codes.InvalidArgument, "exceeds the TPM limit 100000"},
		{"negative wait", acq(&pb.AcquireLeaseRequest{ModelId: sonnet, Wait: &durationpb.Duration{Seconds: -1}}), codes.InvalidArgument, "wait"},
		{"bad priority", acq(&pb.AcquireLeaseRequest{ModelId: sonnet, Priority: 42}), codes.InvalidArgument, "priority"},
		{"oversized model id", acq(&pb.AcquireLeaseRequest{ModelId: strings.Repeat("m", 5000)}), codes.InvalidArgument, "model_id: is 5000 bytes long"},
		{"oversized message", acq(&pb.AcquireLeaseRequest{ModelId: strings.Repeat("m", 100_000)}), codes.ResourceExhausted, "larger than max"},
		{"empty lease id", comp(&pb.CompleteLeaseRequest{Outcome: pb.Outcome_OUTCOME_SUCCESS}), codes.InvalidArgument, "lease_id: is empty"},
		{"unknown lease", comp(&pb.CompleteLeaseRequest{LeaseId: "nosuchlease", Outcome: pb.Outcome_OUTCOME_SUCCESS}), codes.NotFound, "lease \"nosuchlease\" not found"},
		{"missing outcome", comp(&pb.CompleteLeaseRequest{LeaseId: granted.GetLease().GetLeaseId()}), codes.InvalidArgument, "outcome"},
		{"negative usage", comp(&pb.CompleteLeaseRequest{LeaseId: granted.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS, Usage: &pb.Usage{OutputTokens: -5}}), codes.InvalidArgument, "usage.output_tokens: is negative"},
		{"completion after expiry", comp(&pb.CompleteLeaseRequest{LeaseId: expiring.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS, Usage: &pb.Usage{OutputTokens: 3}}), codes.FailedPrecondition, "expired"},
		{"renew unknown", func() error {
			_, err := f.client.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: "nosuchlease"})
			return err
		}, codes.NotFound, "not found"},
		{"throttle for unknown model", func() error {
			_, err := f.client.ReportThrottle(ctx, &pb.ReportThrottleRequest{ModelId: "x.y"})
			return err
		}, codes.NotFound, "no budget"},
		{"negative override", func() error {
			v := int64(-3)
			_, err := f.client.SetOverride(ctx, &pb.SetOverrideRequest{ModelId: sonnet, Override: &pb.LimitOverride{TokensPerMinute: &v}})
			return err
		}, codes.InvalidArgument, "override.tokens_per_minute: is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(tc.call())
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Fatalf("got %v %q, want %v containing %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}
	// The expired lease's late usage was recorded (charge corrected).
	rep, _ := f.client.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if c := rep.GetBudgets()[0].GetCounters(); c.GetExpired() != 2 || c.GetSettledTokens() != 15 {
		t.Fatalf("counters after the late completion: %v", c)
	}
}

// TestWaitIsClampedToServerMaximum asks to wait an hour on a full budget;
// the server's maximum (here 300 ms of real time) bounds it.
func TestWaitIsClampedToServerMaximum(t *testing.T) {
	f := start(t, sysclock.Clock{}, broker.Config{MaxWait: 300 * time.Millisecond}, broker.Limits{Concurrency: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 1}); err != nil {
		t.Fatal(err)
	}
	_, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 1, Wait: durationpb.New(time.Hour)})
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "concurrency") {
		t.Fatalf("got %v", err)
	}
}

// TestDeadlineBoundsWait: a caller whose RPC deadline is shorter than its
// wait gets a refusal before the deadline, not DEADLINE_EXCEEDED.
func TestDeadlineBoundsWait(t *testing.T) {
	// The margin kept back from the deadline is what the refusal has to
	// travel back in: a wide one, so a loaded machine's scheduling delays
	// cannot turn the refusal into DEADLINE_EXCEEDED (seen with the 50 ms
	// default and a 400 ms deadline).
	f := startWith(t, sysclock.Clock{}, broker.Config{}, broker.Limits{Concurrency: 1}, server.Config{DeadlineMargin: time.Second})
	if _, err := f.client.AcquireLease(context.Background(), &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 1}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 1, Wait: durationpb.New(time.Minute)})
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted {
		t.Fatalf("got %v, want RESOURCE_EXHAUSTED before the deadline", err)
	}
}

func TestHealthAndReflection(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{TPM: 1})
	ctx := context.Background()
	h, err := healthpb.NewHealthClient(f.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "quotabroker.v1.QuotaBroker"})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", h, err)
	}
	stream, err := reflectionpb.NewServerReflectionClient(f.conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !strings.Contains(strings.Join(names, " "), "quotabroker.v1.QuotaBroker") {
		t.Fatalf("reflection lists %v", names)
	}
	stream.CloseSend()
}

func TestOverrideOverGRPC(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{TPM: 1000})
	ctx := context.Background()
	v := int64(50_000)
	resp, err := f.client.SetOverride(ctx, &pb.SetOverrideRequest{ModelId: sonnet, Override: &pb.LimitOverride{TokensPerMinute: &v, Reason: "approved raise"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetBudget().GetEffective().GetTokensPerMinute() != 50_000 || resp.GetBudget().GetOverride().GetReason() != "approved raise" {
		t.Fatalf("override response %v", resp)
	}
	if _, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 5000}); err != nil {
		t.Fatalf("a lease the override allows: %v", err)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, fakeClock(), broker.Config{}, broker.Limits{RPM: 10, TPM: 100_000})
	reg := server.NewRegistry(b)
	c := pb.NewQuotaBrokerClient(serve(t, b, server.Config{Metrics: reg}))
	if _, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 100, MaxOutputTokens: 100}); err != nil {
		t.Fatal(err)
	}
	c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: "nope.model"})

	body := scrape(t, reg)
	for _, want := range []string{
		`grpc_server_handled_total{grpc_code="OK",grpc_method="AcquireLease",grpc_service="quotabroker.v1.QuotaBroker",grpc_type="unary"} 1`,
		`grpc_server_handled_total{grpc_code="NotFound",grpc_method="AcquireLease",grpc_service="quotabroker.v1.QuotaBroker",grpc_type="unary"} 1`,
		// The rest of go-grpc-middleware's series, as it counted them: a
		// failed call sent no message; a method not called shows at 0.
		`grpc_server_started_total{grpc_method="AcquireLease",grpc_service="quotabroker.v1.QuotaBroker",grpc_type="unary"} 2`,
		`grpc_server_msg_received_total{grpc_method="AcquireLease",grpc_service="quotabroker.v1.QuotaBroker",grpc_type="unary"} 2`,
		`grpc_server_msg_sent_total{grpc_method="AcquireLease",grpc_service="quotabroker.v1.QuotaBroker",grpc_type="unary"} 1`,
		`grpc_server_handling_seconds_count{grpc_method="AcquireLease",grpc_service="quotabroker.v1.QuotaBroker",grpc_type="unary"} 2`,
		`grpc_server_handled_total{grpc_code="Unavailable",grpc_method="Watch",grpc_service="grpc.health.v1.Health",grpc_type="server_stream"} 0`,
		`quotabroker_budget_limit{limit="tpm",model="anthropic.claude-sonnet-4-5-20250929-v1:0",region="us-east-1",scope="cross-region"} 100000`,
		`quotabroker_budget_used{limit="tpm",model="anthropic.claude-sonnet-4-5-20250929-v1:0",region="us-east-1",scope="cross-region"} 600`,
		`quotabroker_budget_events_total{event="granted",model="anthropic.claude-sonnet-4-5-20250929-v1:0",region="us-east-1",scope="cross-region"} 1`,
		`quotabroker_budget_outstanding_leases{model="anthropic.claude-sonnet-4-5-20250929-v1:0",region="us-east-1",scope="cross-region"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// scrape is the text reg's /metrics handler serves, read over HTTP.
func scrape(t *testing.T, reg *prometheus.Registry) []byte {
	t.Helper()
	hs := httptest.NewServer(server.MetricsHandler(reg))
	defer hs.Close()
	resp, err := http.Get(hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return body
}
