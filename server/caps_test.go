package server_test

import (
	"context"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

// sonnetModel is the budget's model id of sonnet (its burndown is 5).
const sonnetModel = "anthropic.claude-sonnet-4-5-20250929-v1:0"

// TestClientCapRaceOverGRPC is the race users report: 50 concurrent callers
// of one client with a 100-TPM cap, round after round for two and a half
// minutes with settlements returning part of each reservation, never hold
// more than 100 tokens in any 60 s; the refused ones get LIMIT_CLIENT_CAP
// with a RetryInfo and a message naming the cap, and another client on the
// same budget is granted throughout.
func TestClientCapRaceOverGRPC(t *testing.T) {
	caps := broker.Caps{Clients: map[string]broker.ClientCaps{"team": {All: broker.CapLimits{TPM: 100}}}}
	f := start(t, fakeClock(), broker.Config{Caps: caps}, broker.Limits{TPM: 1_000_000})
	type grant struct {
		at     time.Time
		charge int64
	}
	var grants []grant
	var refused int
	for round := range 30 {
		now := f.clock.Now()
		var mu sync.Mutex
		var ids []string
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				// 10 input + 2 output x burndown 5 = 20 tokens reserved.
				resp, err := f.client.AcquireLease(asClient("team"), &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 10, MaxOutputTokens: 2})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					st := status.Convert(err)
					retry, info := refusalDetails(st)
					if st.Code() != codes.ResourceExhausted || info.GetReason() != "LIMIT_CLIENT_CAP" || retry.GetRetryDelay().AsDuration() <= 0 ||
						!strings.Contains(st.Message(), `TPM cap 100 of client "team"`) {
						t.Errorf("round %d: refusal %v (%v %v)", round, err, retry, info)
					}
					refused++
					return
				}
				ids = append(ids, resp.GetLease().GetLeaseId())
			})
		}
		wg.Wait()
		if _, err := f.client.AcquireLease(asClient("other"), &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 5000, MaxOutputTokens: 100}); err != nil {
			t.Fatalf("round %d: another client was refused: %v", round, err)
		}
		// Half are settled with no output (charged 10 of 20), half stay
		// active at their reservation.
		for i, id := range ids {
			charge := int64(20)
			if i%2 == 0 {
				if _, err := f.client.CompleteLease(asClient("team"), &pb.CompleteLeaseRequest{LeaseId: id, Outcome: pb.Outcome_OUTCOME_SUCCESS,
					Usage: &pb.Usage{InputTokens: 10}}); err != nil {
					t.Fatal(err)
				}
				charge = 10
			}
			grants = append(grants, grant{now, charge})
		}
		f.clock.Advance(5 * time.Second)
	}
	// 150 s at 100 tokens a minute, grants of 10 to 20 tokens: about 20.
	if refused == 0 || len(grants) < 15 {
		t.Fatalf("%d grants, %d refusals: the cap was never reached or never granted", len(grants), refused)
	}
	for _, g := range grants {
		var sum int64
		for _, o := range grants {
			if !o.at.After(g.at) && g.at.Sub(o.at) < time.Minute {
				sum += o.charge
			}
		}
		if sum > 100 {
			t.Fatalf("the 60 s up to %v hold %d tokens of client team, over its cap of 100", g.at, sum)
		}
	}
	t.Logf("%d grants, %d refusals over 30 rounds of 50 callers", len(grants), refused)
}

// TestCapNeverFitsOverGRPC: a reservation larger than a cap fails at once
// with INVALID_ARGUMENT naming the cap.
func TestCapNeverFitsOverGRPC(t *testing.T) {
	caps := broker.Caps{Clients: map[string]broker.ClientCaps{"team": {Models: map[string]broker.CapLimits{sonnetModel: {TPM: 100}}}}}
	f := start(t, fakeClock(), broker.Config{Caps: caps}, broker.Limits{TPM: 1_000_000})
	_, err := f.client.AcquireLease(asClient("team"), &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 10, MaxOutputTokens: 100})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), `TPM cap 100 of client "team" on model `+sonnetModel) {
		t.Fatalf("got %v", err)
	}
}

// sonnetPrice is Claude Sonnet 4.5's on-demand price in us-east-1.
var sonnetPrice = map[broker.PriceKey]broker.Price{
	{Region: "us-east-1", Model: sonnetModel}: {Input: 0.003, Output: 0.015, CacheRead: 0.0003, CacheWrite: 0.00375,
		Has: broker.RateInput | broker.RateOutput | broker.RateCacheRead | broker.RateCacheWrite, Source: "test"},
}

// TestMoneyBudgetOverGRPC: a client's daily money budget stops its grants
// within one reservation's worth of the budget, with LIMIT_MONEY and a
// RetryInfo until the next UTC day; other clients are unaffected; failed
// and throttled calls are charged what Bedrock charges; the next day the
// client is granted again; the report shows the spend.
func TestMoneyBudgetOverGRPC(t *testing.T) {
	caps := broker.Caps{Clients: map[string]broker.ClientCaps{"team": {Money: broker.Money{USDPerDay: 1}}}}
	f := start(t, fakeClock(), broker.Config{Caps: caps, Prices: sonnetPrice}, broker.Limits{TPM: 100_000_000})
	// Reservation: 1000 input at $0.003/1k + 1000 output at $0.015/1k = $0.018.
	req := &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 1000, MaxOutputTokens: 1000}
	const reservation = 0.018
	spent := 0.0
	var refusal error
	for i := 0; i < 200 && refusal == nil; i++ {
		resp, err := f.client.AcquireLease(asClient("team"), req)
		if err != nil {
			refusal = err
			break
		}
		// Alternate: a streamed call that ran to the end, one that failed
		// half way (charged its usage), one throttled (charged nothing).
		outcome, usage, cost := pb.Outcome_OUTCOME_SUCCESS, &pb.Usage{InputTokens: 1000, OutputTokens: 800}, 0.003+0.012
		switch i % 3 {
		case 1:
			outcome, usage, cost = pb.Outcome_OUTCOME_ERROR, &pb.Usage{InputTokens: 1000, OutputTokens: 200}, 0.003+0.003
		case 2:
			outcome, usage, cost = pb.Outcome_OUTCOME_THROTTLED, &pb.Usage{}, 0
		}
		if _, err := f.client.CompleteLease(asClient("team"), &pb.CompleteLeaseRequest{LeaseId: resp.GetLease().GetLeaseId(), Outcome: outcome, Usage: usage}); err != nil {
			t.Fatal(err)
		}
		spent += cost
		// A throttle slows the budget's pace (adaptive.go); a second
		// between calls keeps the budget out of this test's way.
		f.clock.Advance(time.Second)
	}
	st := status.Convert(refusal)
	retry, info := refusalDetails(st)
	if st.Code() != codes.ResourceExhausted || info.GetReason() != "LIMIT_MONEY" || !strings.Contains(st.Message(), `client "team"'s money budget per day $1.0000`) {
		t.Fatalf("refusal %v (%v)", refusal, info)
	}
	midnight := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	if d := retry.GetRetryDelay().AsDuration(); d != midnight.Sub(f.clock.Now()) {
		t.Errorf("RetryInfo %v, want %v: until the next UTC day", d, midnight.Sub(f.clock.Now()))
	}
	if spent > 1 || spent < 1-reservation {
		t.Errorf("stopped at $%.4f: not within one reservation ($%.3f) of the $1 budget", spent, reservation)
	}
	if _, err := f.client.AcquireLease(asClient("other"), req); err != nil {
		t.Fatalf("another client was refused: %v", err)
	}
	rep, err := f.client.GetQuotaReport(context.Background(), &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var team *pb.ClientSpend
	for _, c := range rep.GetSpend().GetClients() {
		if c.GetClient() == "team" {
			team = c
		}
	}
	if team == nil || math.Abs(team.GetSpending().GetTodayUsd()-spent) > 1e-6 || team.GetSpending().GetBudgetUsdPerDay() != 1 ||
		team.GetSpending().GetRefused() != 1 || team.GetSpending().GetForecastTodayUsd() < 1.9 {
		t.Fatalf("report's spend of team %v, want today $%.4f", team, spent)
	}
	mfs, err := server.NewRegistry(f.b).Gather()
	if err != nil {
		t.Fatal(err)
	}
	var metric float64 = -1
	for _, mf := range mfs {
		if mf.GetName() != "quotabroker_spend_usd" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["client"] == "team" && labels["period"] == "today" {
				metric = m.GetGauge().GetValue()
			}
		}
	}
	if math.Abs(metric-spent) > 1e-6 {
		t.Errorf("/metrics: quotabroker_spend_usd{client=team,period=today} = %v, want %v", metric, spent)
	}
	f.clock.Advance(midnight.Sub(f.clock.Now()))
	if _, err := f.client.AcquireLease(asClient("team"), req); err != nil {
		t.Fatalf("the next day: %v", err)
	}
}

// TestUnpricedModelUnderMoneyBudget: a call on a model with no price is
// refused under a money budget (FAILED_PRECONDITION naming the model), and
// granted and reported as unpriced without one.
func TestUnpricedModelUnderMoneyBudget(t *testing.T) {
	caps := broker.Caps{Clients: map[string]broker.ClientCaps{"team": {Money: broker.Money{USDPerMonth: 100}}}}
	f := start(t, fakeClock(), broker.Config{Caps: caps}, broker.Limits{TPM: 1_000_000})
	_, err := f.client.AcquireLease(asClient("team"), &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10})
	if st := status.Convert(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "no price for "+sonnetModel) {
		t.Fatalf("got %v", err)
	}
	if _, err := f.client.AcquireLease(asClient("free"), &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10}); err != nil {
		t.Fatal(err)
	}
	rep, err := f.client.GetQuotaReport(context.Background(), &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	m := rep.GetSpend().GetModels()
	if len(m) != 1 || m[0].GetPriced() || m[0].GetSpending().GetUnpricedCalls() != 1 {
		t.Fatalf("models' spend %v, want one unpriced call", m)
	}
}

// TestCapsAndSpendSurviveRestart: a client at its cap and its spend stay so
// after the broker stops without a sweep or a Close (what kill -9 leaves:
// only what was committed before each answer) and opens the file again.
func TestCapsAndSpendSurviveRestart(t *testing.T) {
	ctx := context.Background()
	clock := fakeClock()
	path := filepath.Join(t.TempDir(), "state.db")
	caps := broker.Caps{Clients: map[string]broker.ClientCaps{"team": {All: broker.CapLimits{TPM: 100, TPD: 150}, Money: broker.Money{USDPerDay: 10}}}}
	cfg := broker.Config{Caps: caps, Prices: sonnetPrice, Margin: 1}
	key, _ := broker.ParseModelID(sonnet, "", "us-east-1")
	open := func() (*broker.Broker, *bolt.Store) {
		store, err := bolt.Open(path, bolt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := broker.Open(ctx, store, clock, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.SetSpecs(ctx, []broker.Spec{{Key: key, Quota: broker.Limits{TPM: 1_000_000}, Source: "test"}}); err != nil {
			t.Fatal(err)
		}
		return b, store
	}
	b1, store1 := open()
	c1 := pb.NewQuotaBrokerClient(serve(t, b1, server.Config{}))
	for range 5 {
		if _, err := c1.AcquireLease(asClient("team"), &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 10, MaxOutputTokens: 2}); err != nil {
			t.Fatal(err)
		}
	}
	spend := b1.Spend().Account.TodayUSD
	// The crash: the store is closed under the broker, nothing more is
	// written; the broker is closed only to free its goroutines.
	store1.Close()
	b1.Close()

	clock.Advance(10 * time.Second)
	b2, store2 := open()
	t.Cleanup(func() { b2.Close(); store2.Close() })
	c2 := pb.NewQuotaBrokerClient(serve(t, b2, server.Config{}))
	_, err := c2.AcquireLease(asClient("team"), &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 10, MaxOutputTokens: 2})
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "TPM cap 100") {
		t.Fatalf("after the restart the capped client got %v, want a refusal on its TPM cap", err)
	}
	if got := b2.Spend().Account.TodayUSD; got != spend || spend <= 0 {
		t.Errorf("spend after the restart $%v, before $%v", got, spend)
	}
	// The minute slides by; the day cap (150) still holds what the first
	// life granted (100): two more grants of 20 fit, not three.
	clock.Advance(time.Minute)
	for i := range 3 {
		_, err := c2.AcquireLease(asClient("team"), &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 10, MaxOutputTokens: 2})
		if (err == nil) != (i < 2) {
			t.Fatalf("grant %d of the next minute: %v", i, err)
		}
		if err != nil && !strings.Contains(status.Convert(err).Message(), "TPD cap 150") {
			t.Fatalf("refused on %v, want the TPD cap", err)
		}
	}
}

// TestSpendOwnView: with authentication, a client sees the account's
// spend and its own caps and spend, no other client's; an admin sees all.
func TestSpendOwnView(t *testing.T) {
	f := startWithAuth(t)
	caps := broker.Caps{Clients: map[string]broker.ClientCaps{
		"alice": {All: broker.CapLimits{TPM: 1_000_000}}, "bob": {All: broker.CapLimits{TPM: 1_000_000}}}}
	if err := f.b.SetCaps(caps); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{f.alice, f.bob} {
		if _, err := f.client.AcquireLease(as(tok), &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10}); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := f.client.GetQuotaReport(as(f.alice), &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	sp := rep.GetSpend()
	if len(sp.GetCaps()) != 1 || sp.GetCaps()[0].GetClient() != "alice" || sp.GetCaps()[0].GetTokensLastMinute() != 50 ||
		len(sp.GetClients()) != 1 || sp.GetClients()[0].GetClient() != "alice" || len(sp.GetModels()) != 0 || sp.GetAccount().GetCalls() != 2 {
		t.Fatalf("alice's view of spend: %v", sp)
	}
	rep, err = f.client.GetQuotaReport(as(f.admin), &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(rep.GetSpend().GetCaps()); n != 2 {
		t.Fatalf("the admin sees %d clients' caps, want 2", n)
	}
}
