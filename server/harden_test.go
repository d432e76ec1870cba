package server_test

// Tests for what a hostile or buggy client could do to the domain and its
// history (issue 16, items 4, 5, 7, 9 and 11), each through the real server
// on loopback and a real bbolt file.

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

func asClient(name string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), server.ClientHeader, name)
}

func counters(t *testing.T, c pb.QuotaBrokerClient) *pb.Counters {
	t.Helper()
	rep, err := c.GetQuotaReport(context.Background(), &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return rep.GetBudgets()[0].GetCounters()
}

// Item 7: the first completion of an expired lease corrects its charge;
// every later one changes nothing, in the counters or in history.
func TestLateCompletionIsIdempotent(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{LeaseTTL: time.Minute}, broker.Limits{TPM: 1_000_000})
	ctx := context.Background()
	l, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 100})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Minute)
	f.b.Sweep(ctx)
	t1 := f.clock.Now().Truncate(time.Minute)
	for i := range 5 {
		_, err := f.client.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: l.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_THROTTLED})
		want := "its usage is recorded"
		if i > 0 {
			want = "already recorded"
		}
		if st := status.Convert(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), want) {
			t.Fatalf("late completion %d: %v, want FAILED_PRECONDITION %q", i, err, want)
		}
	}
	if c := counters(t, f.client); c.GetCompleted() != 1 || c.GetThrottled() != 1 || c.GetExpired() != 1 {
		t.Fatalf("counters after 5 late completions: %v", c)
	}
	f.clock.Advance(time.Minute)
	f.b.Sweep(ctx)
	h, err := f.client.GetUsageHistory(ctx, span(t1, time.Minute, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if tot := h.GetSeries()[0].GetTotal(); tot.GetCompleted() != 1 || tot.GetThrottled() != 1 {
		t.Fatalf("history after 5 late completions: %v", tot)
	}
}

// Item 9: a throttle report moves a ceiling only from a client that holds
// (or held within the minute) a lease on the budget, and one client causes
// at most a few decreases a minute, however many leases it takes out.
func TestThrottleReportsNeedEvidence(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{Margin: 0.9}, broker.Limits{RPM: 200, TPM: 2_000_000})
	ctx := context.Background()
	// Real traffic: alice has 20 calls in flight.
	var alice []string
	for range 20 {
		r, err := f.client.AcquireLease(asClient("alice"), &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 1000, MaxOutputTokens: 1000})
		if err != nil {
			t.Fatal(err)
		}
		alice = append(alice, r.GetLease().GetLeaseId())
	}
	effective := func() *pb.Budget {
		t.Helper()
		rep, err := f.client.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return rep.GetBudgets()[0].GetBudget()
	}
	static := effective().GetStatic()
	// mallory holds no lease: 20 reports, each after MinInterval, are
	// counted and cut nothing.
	for range 20 {
		f.clock.Advance(2 * time.Second)
		if _, err := f.client.ReportThrottle(asClient("mallory"), &pb.ReportThrottleRequest{ModelId: sonnet}); err != nil {
			t.Fatal(err)
		}
	}
	if b := effective(); b.GetAdaptive().GetDecreases() != 0 || b.GetEffective().GetTokensPerMinute() != static.GetTokensPerMinute() {
		t.Fatalf("reports without a lease moved the ceiling: %v", b.GetAdaptive())
	}
	if c := counters(t, f.client); c.GetReportedThrottles() != 20 {
		t.Fatalf("reports without evidence not counted: %v", c)
	}
	// With leases of its own, mallory's reports count, but at most three
	// decreases a minute however many it sends.
	f.clock.Advance(time.Second)
	for i := range 5 {
		if _, err := f.client.AcquireLease(asClient("mallory"), &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 1}); err != nil {
			t.Fatalf("mallory's lease %d: %v", i, err)
		}
	}
	for range 20 {
		f.clock.Advance(2 * time.Second)
		if _, err := f.client.ReportThrottle(asClient("mallory"), &pb.ReportThrottleRequest{ModelId: sonnet}); err != nil {
			t.Fatal(err)
		}
	}
	if d := effective().GetAdaptive().GetDecreases(); d < 1 || d > 3 {
		t.Fatalf("one client's 20 reports with leases made %d decreases, want 1 to 3", d)
	}
	// alice's throttled call is evidence of its own and cuts again.
	before := effective().GetAdaptive().GetDecreases()
	f.clock.Advance(3 * time.Second)
	r, err := f.client.AcquireLease(asClient("alice"), &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 1})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Millisecond)
	if _, err := f.client.CompleteLease(asClient("alice"), &pb.CompleteLeaseRequest{LeaseId: r.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_THROTTLED}); err != nil {
		t.Fatal(err)
	}
	if d := effective().GetAdaptive().GetDecreases(); d != before+1 {
		t.Fatalf("a throttled lease of another client: %d decreases, want %d", d, before+1)
	}
}

// Item 11: usage above the reservation is charged, and nothing negative is
// answered as returned.
func TestUsageAboveReservationReturnsNothing(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{TPM: 1_000_000})
	ctx := context.Background()
	l, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 100, MaxOutputTokens: 100})
	if err != nil {
		t.Fatal(err)
	}
	done, err := f.client.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: l.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS,
		Usage: &pb.Usage{InputTokens: 50_000}})
	if err != nil {
		t.Fatal(err)
	}
	if done.GetChargedTokens() != 50_000 || done.GetReturnedTokens() != 0 {
		t.Fatalf("completion %v, want charged 50000 and returned 0", done)
	}
	again, err := f.client.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: l.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS})
	if err != nil || again.GetReturnedTokens() != 0 {
		t.Fatalf("repeated completion %v %v", again, err)
	}
	if c := counters(t, f.client); c.GetReturnedTokens() != 0 {
		t.Fatalf("counters %v", c)
	}
}

// Item 11: after a crash that lost the grant's second of history, the
// settlement's correction does not make history show a negative window.
func TestHistoryAfterCrashIsNeverNegative(t *testing.T) {
	clock := fakeClock()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	open := func() (*broker.Broker, *bolt.Store) {
		store, err := bolt.Open(path, bolt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := broker.Open(ctx, store, clock, broker.Config{Margin: 1})
		if err != nil {
			t.Fatal(err)
		}
		return b, store
	}
	b1, store1 := open()
	key, _ := broker.ParseModelID(sonnet, "", "us-east-1")
	if err := b1.SetSpecs(ctx, []broker.Spec{{Key: key, Quota: broker.Limits{TPM: 1_000_000}, Source: "test"}}); err != nil {
		t.Fatal(err)
	}
	c1 := pb.NewQuotaBrokerClient(serve(t, b1, server.Config{}))
	t0 := clock.Now().Truncate(time.Minute)
	l, err := c1.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 1000, MaxOutputTokens: 1000})
	if err != nil {
		t.Fatal(err)
	}
	// kill -9: the grant is on disk, its history (written by the sweep) not.
	b1.Close()
	store1.Close()

	b2, store2 := open()
	t.Cleanup(func() { b2.Close(); store2.Close() })
	c2 := pb.NewQuotaBrokerClient(serve(t, b2, server.Config{}))
	if _, err := c2.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: l.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS,
		Usage: &pb.Usage{InputTokens: 1000, OutputTokens: 10}}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	b2.Sweep(ctx)
	h, err := c2.GetUsageHistory(ctx, span(t0, 2*time.Minute, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range h.GetSeries() {
		for _, p := range append(s.GetPoints(), s.GetTotal()) {
			if p.GetWindowTokens() < 0 || p.GetWindowRequests() < 0 {
				t.Fatalf("negative window in history: %v", p)
			}
		}
	}
	rep, err := c2.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	act := rep.GetBudgets()[0].GetActivity()
	for _, p := range []*pb.UsageStats{act.GetLastMinute(), act.GetLastHour(), act.GetLastDay()} {
		if p.GetWindowTokens() < 0 || p.GetWindowRequests() < 0 {
			t.Fatalf("negative window in the report's activity: %v", act)
		}
	}
	for _, c := range act.GetTopClients() {
		if c.GetUsage().GetWindowTokens() < 0 {
			t.Fatalf("negative window for a top client: %v", c)
		}
	}
}

// Item 11: a span from year 1 to 9999 is refused, not answered with a
// negative number of steps.
func TestUsageHistoryAbsurdRange(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{TPM: 1_000_000})
	req := &pb.GetUsageHistoryRequest{
		From: timestamppb.New(time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)),
		To:   timestamppb.New(time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)),
	}
	for _, step := range []time.Duration{time.Minute, 24 * time.Hour, 1 << 62} {
		req.Step = durationpb.New(step.Truncate(time.Minute))
		resp, err := f.client.GetUsageHistory(context.Background(), req)
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "step") {
			t.Fatalf("step %v: %v (steps %d), want INVALID_ARGUMENT naming step", step, err, resp.GetSteps())
		}
	}
}

// Item 11: a negative wait is refused the same with a deadline as without.
func TestNegativeWaitRefusedWithDeadline(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{TPM: 1_000_000})
	withDeadline, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for name, ctx := range map[string]context.Context{"without a deadline": context.Background(), "with a deadline": withDeadline} {
		_, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 1, Wait: &durationpb.Duration{Seconds: -1}})
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "wait") {
			t.Errorf("%s: %v, want INVALID_ARGUMENT naming wait", name, err)
		}
	}
}

// Item 11: an override of int64 max, then a throttle: the ceiling is a
// share of what was in use, floored at a share of the quota, not of the
// override.
func TestThrottleUnderHugeOverride(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{Margin: 0.9}, broker.Limits{RPM: 200, TPM: 2_000_000})
	ctx := context.Background()
	huge := int64(math.MaxInt64)
	if _, err := f.client.SetOverride(ctx, &pb.SetOverrideRequest{ModelId: sonnet, Override: &pb.LimitOverride{TokensPerMinute: &huge, RequestsPerMinute: &huge}}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 5 {
		r, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 1000, MaxOutputTokens: 100})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.GetLease().GetLeaseId())
	}
	f.clock.Advance(time.Millisecond)
	if _, err := f.client.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: ids[0], Outcome: pb.Outcome_OUTCOME_THROTTLED}); err != nil {
		t.Fatal(err)
	}
	rep, err := f.client.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	b := rep.GetBudgets()[0].GetBudget()
	// Floor: 2% of quota x margin (2,000,000 x 0.9), 36,000 tokens and 3
	// requests a minute; nothing near int64 max.
	if e := b.GetEffective(); b.GetAdaptive().GetDecreases() != 1 || e.GetTokensPerMinute() > 36_000 || e.GetRequestsPerMinute() > 4 {
		t.Fatalf("effective %v after a throttle under an override of int64 max (adaptive %v)", e, b.GetAdaptive())
	}
}

// Item 11: a report whose history cannot be read says so without showing
// the data file's path; the cause goes to the log.
func TestHistoryErrorDoesNotLeakThePath(t *testing.T) {
	dir := t.TempDir()
	store, err := bolt.Open(filepath.Join(dir, "state.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b, err := broker.Open(ctx, store, fakeClock(), broker.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	key, _ := broker.ParseModelID(sonnet, "", "us-east-1")
	if err := b.SetSpecs(ctx, []broker.Spec{{Key: key, Quota: broker.Limits{TPM: 1000}, Source: "test"}}); err != nil {
		t.Fatal(err)
	}
	c := pb.NewQuotaBrokerClient(serve(t, b, server.Config{}))
	store.Close() // every read of history now fails, naming the file
	rep, err := c.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.GetHistoryError() == "" || strings.Contains(rep.GetHistoryError(), dir) || strings.Contains(rep.GetHistoryError(), "state.db") {
		t.Fatalf("history_error %q (data in %s)", rep.GetHistoryError(), dir)
	}
}

// Item 5: a budget's history keeps at most ClientsPerMinute clients by name
// in a minute; the rest are counted together under "(other)".
func TestClientHistoryIsBounded(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{TPM: 10_000_000})
	ctx := context.Background()
	n := broker.ClientsPerMinute + 10
	for i := range n {
		if _, err := f.client.AcquireLease(asClient(fmt.Sprintf("name-%03d", i)), &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 100}); err != nil {
			t.Fatal(err)
		}
	}
	f.clock.Advance(time.Minute)
	f.b.Sweep(ctx)
	rep, err := f.client.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	top := rep.GetBudgets()[0].GetActivity().GetTopClients()
	if len(top) == 0 || top[0].GetClient() != broker.OtherClients || top[0].GetUsage().GetGranted() != 10 {
		t.Fatalf("top clients %v, want %q first with the 10 names beyond %d", top, broker.OtherClients, broker.ClientsPerMinute)
	}
	if g := rep.GetBudgets()[0].GetActivity().GetLastMinute().GetGranted(); g != int64(n) {
		t.Fatalf("the budget's history counts %d grants, want %d", g, n)
	}
}

// seedHistory opens a broker on a bbolt file holding minutes of history for
// each of budgets budgets (one call a minute each), ending at the fake
// clock's now.
func seedHistory(tb testing.TB, budgets, minutes int) (*broker.Broker, []broker.Key) {
	tb.Helper()
	ctx := context.Background()
	clock := fakeClock()
	store, err := bolt.Open(filepath.Join(tb.TempDir(), "state.db"), bolt.Options{NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { store.Close() })
	var keys []broker.Key
	var specs []broker.Spec
	for i := range budgets {
		k := broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: fmt.Sprintf("amazon.test-%03d-v1:0", i)}
		keys = append(keys, k)
		specs = append(specs, broker.Spec{Key: k, Quota: broker.Limits{TPM: 1_000_000_000}, Source: "test"})
	}
	now := clock.Now().Unix() / 60
	var recs []broker.StatsRecord
	flush := func() {
		if err := store.Commit(ctx, broker.Change{Stats: recs}); err != nil {
			tb.Fatal(err)
		}
		recs = recs[:0]
	}
	for _, k := range keys {
		for m := range minutes {
			recs = append(recs, broker.StatsRecord{Key: k, Minute: now - int64(minutes) + int64(m), Client: "svc",
				Stats: broker.Stats{Granted: 1, Completed: 1, WindowTokens: 1000, WindowRequests: 1}})
			if len(recs) == 50_000 {
				flush()
			}
		}
	}
	flush()
	b, err := broker.Open(ctx, store, clock, broker.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(b.Close)
	if err := b.SetSpecs(ctx, specs); err != nil {
		tb.Fatal(err)
	}
	return b, keys
}

// Item 4: one call's work is bounded over all budgets (budgets x points),
// not per series.
func TestUsageHistoryBoundsPointsOverAllBudgets(t *testing.T) {
	b, keys := seedHistory(t, 21, 10)
	c := pb.NewQuotaBrokerClient(serve(t, b, server.Config{}))
	ctx := context.Background()
	to := fakeClock().Now()
	from := to.Add(-10_000 * time.Minute)
	_, err := c.GetUsageHistory(ctx, span(from, 10_000*time.Minute, time.Minute))
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "50000 points") || !fieldViolation(st, "step") {
		t.Fatalf("21 budgets x 10,000 points: %v, want INVALID_ARGUMENT on step", err)
	}
	// The same span for one budget, or for all at a wider step, is answered.
	one := span(from, 10_000*time.Minute, time.Minute)
	one.Model = keys[0].Model
	if resp, err := c.GetUsageHistory(ctx, one); err != nil || len(resp.GetSeries()) != 1 {
		t.Fatalf("one budget: %v %v", resp, err)
	}
	if resp, err := c.GetUsageHistory(ctx, span(from, 10_000*time.Minute, time.Hour)); err != nil || len(resp.GetSeries()) != 21 || resp.GetSeries()[0].GetTotal().GetGranted() != 10 {
		t.Fatalf("21 budgets by the hour: %v", err)
	}
}

// blockingCloudWatch holds every call until release is closed.
type blockingCloudWatch struct{ entered, release chan struct{} }

func (c blockingCloudWatch) Usage(ctx context.Context, _ broker.Key, _ time.Time, _ time.Duration, n int) (server.CloudWatchUsage, error) {
	c.entered <- struct{}{}
	<-c.release
	return server.CloudWatchUsage{Points: make([]server.CloudWatchPoint, n)}, nil
}

// Item 4: history calls at work at once are bounded; one more is refused
// with RESOURCE_EXHAUSTED and a retry delay after a short wait.
func TestUsageHistoryCallsAreBounded(t *testing.T) {
	b, _ := seedHistory(t, 1, 10)
	cw := blockingCloudWatch{entered: make(chan struct{}, 1), release: make(chan struct{})}
	c := pb.NewQuotaBrokerClient(serve(t, b, server.Config{MaxConcurrentHistory: 1, CloudWatch: cw}))
	ctx := context.Background()
	req := span(fakeClock().Now().Add(-10*time.Minute), 10*time.Minute, time.Minute)
	first := make(chan error, 1)
	go func() { _, err := c.GetUsageHistory(ctx, req); first <- err }()
	<-cw.entered // the first call holds the only slot
	_, err := c.GetUsageHistory(ctx, req)
	st := status.Convert(err)
	if retry, _ := refusalDetails(st); st.Code() != codes.ResourceExhausted || retry == nil || retry.GetRetryDelay().AsDuration() <= 0 {
		t.Fatalf("a second call while the slot is held: %v, want RESOURCE_EXHAUSTED with a retry delay", err)
	}
	close(cw.release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetUsageHistory(ctx, req); err != nil {
		t.Fatalf("after the slot is free: %v", err)
	}
}
