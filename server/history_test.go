package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

// serveWith puts a second server with cfg in front of f's broker.
func serveWith(t *testing.T, f *fixture, cfg server.Config) pb.QuotaBrokerClient {
	t.Helper()
	return pb.NewQuotaBrokerClient(serve(t, f.b, cfg))
}

// historyTraffic makes two minutes of traffic on sonnet (RPM 3) and
// returns the start of the first. The first minute is flushed to the bbolt
// file; the second is still in memory, so answers read both.
func historyTraffic(t *testing.T, f *fixture) time.Time {
	t.Helper()
	ctx := context.Background()
	t0 := f.clock.Now()
	var leases []string
	for range 3 {
		r, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 1000, MaxOutputTokens: 500})
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, r.GetLease().GetLeaseId())
	}
	if _, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 1000, MaxOutputTokens: 500}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("fourth acquire within RPM 3: %v", err)
	}
	for i, id := range leases {
		req := &pb.CompleteLeaseRequest{LeaseId: id, Outcome: pb.Outcome_OUTCOME_SUCCESS, Usage: &pb.Usage{InputTokens: 1000, OutputTokens: 100}}
		if i == 2 {
			req = &pb.CompleteLeaseRequest{LeaseId: id, Outcome: pb.Outcome_OUTCOME_THROTTLED}
		}
		if _, err := f.client.CompleteLease(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.client.ReportThrottle(ctx, &pb.ReportThrottleRequest{ModelId: sonnet}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Minute)
	f.b.Sweep(ctx) // the first minute goes to the store
	r, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 500, MaxOutputTokens: 100})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: r.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS,
		Usage: &pb.Usage{InputTokens: 500, OutputTokens: 50}}); err != nil {
		t.Fatal(err)
	}
	return t0
}

func span(from time.Time, d, step time.Duration) *pb.GetUsageHistoryRequest {
	return &pb.GetUsageHistoryRequest{From: timestamppb.New(from), To: timestamppb.New(from.Add(d)), Step: durationpb.New(step)}
}

// sumPoints adds a series' points up, field by field, as the client would.
func sumPoints(ps []*pb.UsagePoint) *pb.UsagePoint {
	s := &pb.UsagePoint{}
	for _, p := range ps {
		s.Calls += p.GetCalls()
		s.Successful += p.GetSuccessful()
		s.Granted += p.GetGranted()
		s.Refused += p.GetRefused()
		s.Completed += p.GetCompleted()
		s.Throttled += p.GetThrottled()
		s.ReportedThrottles += p.GetReportedThrottles()
		s.InputTokens += p.GetInputTokens()
		s.OutputTokens += p.GetOutputTokens()
		s.WindowTokens += p.GetWindowTokens()
		s.WindowRequests += p.GetWindowRequests()
		s.SettledTokens += p.GetSettledTokens()
		s.ReservedTokens += p.GetReservedTokens()
	}
	return s
}

func sameCounts(a, b *pb.UsagePoint) bool {
	return a.GetCalls() == b.GetCalls() && a.GetSuccessful() == b.GetSuccessful() && a.GetGranted() == b.GetGranted() &&
		a.GetRefused() == b.GetRefused() && a.GetCompleted() == b.GetCompleted() && a.GetThrottled() == b.GetThrottled() &&
		a.GetReportedThrottles() == b.GetReportedThrottles() && a.GetInputTokens() == b.GetInputTokens() &&
		a.GetOutputTokens() == b.GetOutputTokens() && a.GetWindowTokens() == b.GetWindowTokens() &&
		a.GetWindowRequests() == b.GetWindowRequests() && a.GetSettledTokens() == b.GetSettledTokens() &&
		a.GetReservedTokens() == b.GetReservedTokens()
}

func TestUsageHistoryOverGRPC(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{RPM: 3, TPM: 1_000_000})
	t0 := historyTraffic(t, f)
	ctx := context.Background()

	resp, err := f.client.GetUsageHistory(ctx, span(t0, 5*time.Minute, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetSteps() != 5 || !resp.GetFrom().AsTime().Equal(t0) || resp.GetStep().AsDuration() != time.Minute || resp.GetCloudwatchError() != "" {
		t.Fatalf("response header %v %v %d %q", resp.GetFrom(), resp.GetStep(), resp.GetSteps(), resp.GetCloudwatchError())
	}
	if len(resp.GetSeries()) != 1 {
		t.Fatalf("%d series", len(resp.GetSeries()))
	}
	s := resp.GetSeries()[0]
	if s.GetBudget().GetModel() != "anthropic.claude-sonnet-4-5-20250929-v1:0" || s.GetBudget().GetScope() != pb.Scope_SCOPE_CROSS_REGION {
		t.Fatalf("budget %v", s.GetBudget())
	}
	// Only the two minutes with traffic, each stamped with its start.
	if len(s.GetPoints()) != 2 || !s.GetPoints()[0].GetStart().AsTime().Equal(t0) || !s.GetPoints()[1].GetStart().AsTime().Equal(t0.Add(time.Minute)) {
		t.Fatalf("points %v", s.GetPoints())
	}
	m0, m1 := s.GetPoints()[0], s.GetPoints()[1]
	if m0.GetGranted() != 3 || m0.GetRefused() != 1 || m0.GetCompleted() != 3 || m0.GetThrottled() != 1 || m0.GetReportedThrottles() != 1 ||
		m0.GetCalls() != 4 || m0.GetSuccessful() != 2 || m0.GetInputTokens() != 2000 || m0.GetOutputTokens() != 200 || m0.GetLimitRpm() == 0 {
		t.Errorf("first minute %v", m0)
	}
	// Sonnet 4.5 charges output 5x: 2 x (1000 + 5 x 100).
	if m0.GetSettledTokens() != 3000 || m0.GetWindowTokens() != 3000 {
		t.Errorf("first minute charges: settled %d, window %d; want 3000", m0.GetSettledTokens(), m0.GetWindowTokens())
	}
	if m1.GetGranted() != 1 || m1.GetSuccessful() != 1 || m1.GetInputTokens() != 500 || m1.GetOutputTokens() != 50 || m1.GetWindowTokens() != 750 {
		t.Errorf("second minute %v", m1)
	}
	if !sameCounts(sumPoints(s.GetPoints()), s.GetTotal()) {
		t.Errorf("points do not add up to the total:\n sum   %v\n total %v", sumPoints(s.GetPoints()), s.GetTotal())
	}
	if m0.CloudwatchInvocations != nil || s.GetCloudwatchModelIds() != nil {
		t.Errorf("CloudWatch fields set without CloudWatch: %v", m0)
	}

	// Five-minute steps: one point holding both minutes.
	wide, err := f.client.GetUsageHistory(ctx, span(t0, 5*time.Minute, 5*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if ps := wide.GetSeries()[0].GetPoints(); len(ps) != 1 || !sameCounts(ps[0], s.GetTotal()) {
		t.Errorf("one five-minute step: %v, want the total %v", ps, s.GetTotal())
	}
	// Filters: another Region has nothing.
	none, err := f.client.GetUsageHistory(ctx, &pb.GetUsageHistoryRequest{Region: "eu-west-1",
		From: timestamppb.New(t0), To: timestamppb.New(t0.Add(5 * time.Minute))})
	if err != nil || len(none.GetSeries()) != 0 {
		t.Errorf("eu-west-1: %v %v", none, err)
	}
}

// fakeCloudWatch answers with invocations = step index + 1, or fails.
type fakeCloudWatch struct{ err error }

func (c fakeCloudWatch) Usage(_ context.Context, key broker.Key, _ time.Time, _ time.Duration, n int) (server.CloudWatchUsage, error) {
	if c.err != nil {
		return server.CloudWatchUsage{}, c.err
	}
	u := server.CloudWatchUsage{ModelIDs: []string{"us." + key.Model}, Points: make([]server.CloudWatchPoint, n)}
	for i := range u.Points {
		u.Points[i] = server.CloudWatchPoint{Invocations: int64(i + 1), InputTokens: 10}
	}
	return u, nil
}

func TestUsageHistoryWithCloudWatch(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{RPM: 3, TPM: 1_000_000})
	t0 := historyTraffic(t, f)
	ctx := context.Background()

	c := serveWith(t, f, server.Config{CloudWatch: fakeCloudWatch{}})
	resp, err := c.GetUsageHistory(ctx, span(t0, 3*time.Minute, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	s := resp.GetSeries()[0]
	// Every step has CloudWatch activity, so every step is there.
	if len(s.GetPoints()) != 3 || resp.GetCloudwatchError() != "" || len(s.GetCloudwatchModelIds()) != 1 {
		t.Fatalf("series %v (error %q)", s, resp.GetCloudwatchError())
	}
	for i, p := range s.GetPoints() {
		if p.CloudwatchInvocations == nil || p.GetCloudwatchInvocations() != int64(i+1) || p.GetCloudwatchInputTokens() != 10 || p.CloudwatchThrottles == nil {
			t.Errorf("point %d: %v", i, p)
		}
	}
	if s.GetTotal().GetCloudwatchInvocations() != 6 || s.GetTotal().GetGranted() != 4 {
		t.Errorf("total %v", s.GetTotal())
	}

	failing := serveWith(t, f, server.Config{CloudWatch: fakeCloudWatch{err: errors.New("read CloudWatch metrics in us-east-1: access denied")}})
	resp, err = failing.GetUsageHistory(ctx, span(t0, 3*time.Minute, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	s = resp.GetSeries()[0]
	if !strings.Contains(resp.GetCloudwatchError(), "access denied") || len(s.GetPoints()) != 2 || s.GetTotal().GetGranted() != 4 ||
		s.GetPoints()[0].CloudwatchInvocations != nil {
		t.Errorf("with CloudWatch failing: error %q, series %v", resp.GetCloudwatchError(), s)
	}
}

func TestUsageHistoryBadInput(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{RPM: 3})
	ctx := context.Background()
	t0 := f.clock.Now()
	for _, tc := range []struct {
		name  string
		req   *pb.GetUsageHistoryRequest
		field string
	}{
		{"step not whole minutes", span(t0, time.Hour, 90*time.Second), "step"},
		{"negative step", span(t0, time.Hour, -time.Minute), "step"},
		{"to before from", span(t0, -time.Hour, time.Minute), "to"},
		{"too many points", span(t0, 8*24*time.Hour, time.Minute), "step"},
		{"invalid timestamp", &pb.GetUsageHistoryRequest{From: &timestamppb.Timestamp{Seconds: 1, Nanos: -1}}, "from"},
		{"long region", &pb.GetUsageHistoryRequest{Region: strings.Repeat("x", 100)}, "region"},
	} {
		_, err := f.client.GetUsageHistory(ctx, tc.req)
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), tc.field) && !fieldViolation(st, tc.field) {
			t.Errorf("%s: %v, want INVALID_ARGUMENT naming %s", tc.name, err, tc.field)
		}
	}
	// A long span at a coarser step is fine.
	if _, err := f.client.GetUsageHistory(ctx, span(t0, 8*24*time.Hour, time.Hour)); err != nil {
		t.Errorf("eight days in hours: %v", err)
	}
}

func fieldViolation(st *status.Status, field string) bool {
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetField() == field {
					return true
				}
			}
		}
	}
	return false
}

// sourceFunc is a broker.QuotaSource.
type sourceFunc func(ctx context.Context) (broker.Discovery, error)

func (f sourceFunc) Discover(ctx context.Context) (broker.Discovery, error) { return f(ctx) }

// TestServerTimeFromClock: the server reads time from Config.Clock, not the
// system clock: a history request without a span covers the clock's last
// hour, and a refresh's quota age is measured on it. The fake clock is days
// away from the system time, so either reading the system time would miss.
func TestServerTimeFromClock(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{RPM: 3, TPM: 1_000_000})
	historyTraffic(t, f)
	c := serveWith(t, f, server.Config{Clock: f.clock})
	ctx := context.Background()

	resp, err := c.GetUsageHistory(ctx, &pb.GetUsageHistoryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if to := resp.GetFrom().AsTime().Add(time.Duration(resp.GetSteps()) * time.Minute); to.Before(f.clock.Now()) || to.After(f.clock.Now().Add(time.Minute)) {
		t.Errorf("default span ends %v; the clock says %v", to, f.clock.Now())
	}
	// The span ends at the clock's now, where the second minute of traffic
	// starts: it holds the first minute's 3 grants.
	if len(resp.GetSeries()) != 1 || resp.GetSeries()[0].GetTotal().GetGranted() != 3 {
		t.Fatalf("default span: %v, want the 3 grants of the last minute", resp.GetSeries())
	}

	key, _ := broker.ParseModelID(sonnet, "", "us-east-1")
	f.b.UseSource(sourceFunc(func(context.Context) (broker.Discovery, error) {
		return broker.Discovery{Specs: []broker.Spec{{Key: key, Quota: broker.Limits{RPM: 3, TPM: 1_000_000}, Source: "test"}}}, nil
	}))
	r, err := c.RefreshQuotas(ctx, &pb.RefreshQuotasRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if age := r.GetDiscovery().GetQuotaAge().AsDuration(); age != 0 {
		t.Errorf("quota age right after a refresh: %v, want 0 on the server's clock", age)
	}
}
