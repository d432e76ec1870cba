package server_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

// TestRouteCapOverGRPC: 20 concurrent callers of one client with a
// 100-TPM cap on a route, round after round for two and a half minutes,
// are granted on both of the route's targets (the first allows 2 requests
// a minute) and never hold more than 100 tokens in any 60 s over the two
// together; the refused ones get LIMIT_CLIENT_CAP naming the route's cap.
// Another client on the route, and the client's direct calls and calls on
// another route, are granted throughout. The report and /metrics show the
// cap with its route.
func TestRouteCapOverGRPC(t *testing.T) {
	ctx := context.Background()
	caps := broker.Caps{Clients: map[string]broker.ClientCaps{"team": {Routes: map[string]broker.CapLimits{"sonnet-us": {TPM: 100}}}}}
	clock := fakeClock()
	b := openBroker(t, clock, broker.Config{}, broker.Limits{RPM: 2}) // us-east-1
	east, _ := broker.NewTarget(sonnet, "us-east-1")
	west, err := broker.NewTarget(sonnet, "us-west-2")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetSpecs(ctx, []broker.Spec{{Key: west.Key, Quota: broker.Limits{TPM: 1_000_000}, Source: "test"}}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetRoutes([]broker.Route{{Name: "sonnet-us", Targets: []broker.Target{east, west}}, {Name: "sonnet-west", Targets: []broker.Target{west}}}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetCaps(caps); err != nil {
		t.Fatal(err)
	}
	reg := server.NewRegistry(b)
	c := pb.NewQuotaBrokerClient(serve(t, b, server.Config{Metrics: reg, Clock: clock}))
	type grant struct {
		at     time.Time
		charge int64
	}
	var grants []grant
	regions := map[string]int{}
	var refused int
	for round := range 30 {
		now := clock.Now()
		var mu sync.Mutex
		var ids []string
		var wg sync.WaitGroup
		for range 20 {
			wg.Go(func() {
				// 10 input + 2 output x burndown 5 = 20 tokens reserved.
				resp, err := c.AcquireLease(asClient("team"), &pb.AcquireLeaseRequest{Route: "sonnet-us", InputTokens: 10, MaxOutputTokens: 2})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					st := status.Convert(err)
					retry, info := refusalDetails(st)
					if st.Code() != codes.ResourceExhausted || info.GetReason() != "LIMIT_CLIENT_CAP" || retry.GetRetryDelay().AsDuration() <= 0 ||
						!strings.Contains(st.Message(), `TPM cap 100 of client "team" on route sonnet-us`) {
						t.Errorf("round %d: refusal %v (%v %v)", round, err, retry, info)
					}
					refused++
					return
				}
				ids = append(ids, resp.GetLease().GetLeaseId())
				regions[resp.GetLease().GetRegion()]++
			})
		}
		wg.Wait()
		for _, r := range []struct {
			client string
			req    *pb.AcquireLeaseRequest
		}{
			{"other", &pb.AcquireLeaseRequest{Route: "sonnet-us", InputTokens: 5000, MaxOutputTokens: 100}},
			{"team", &pb.AcquireLeaseRequest{ModelId: sonnet, Region: "us-west-2", InputTokens: 5000, MaxOutputTokens: 100}},
			{"team", &pb.AcquireLeaseRequest{Route: "sonnet-west", InputTokens: 5000, MaxOutputTokens: 100}},
		} {
			if _, err := c.AcquireLease(asClient(r.client), r.req); err != nil {
				t.Fatalf("round %d: %s %v held back by the route cap: %v", round, r.client, r.req, err)
			}
		}
		// Half are settled with no output (charged 10 of 20), half stay
		// active at their reservation.
		for i, id := range ids {
			charge := int64(20)
			if i%2 == 0 {
				if _, err := c.CompleteLease(asClient("team"), &pb.CompleteLeaseRequest{LeaseId: id, Outcome: pb.Outcome_OUTCOME_SUCCESS,
					Usage: &pb.Usage{InputTokens: 10}}); err != nil {
					t.Fatal(err)
				}
				charge = 10
			}
			grants = append(grants, grant{now, charge})
		}
		clock.Advance(5 * time.Second)
	}
	if refused == 0 || len(grants) < 15 || regions["us-east-1"] == 0 || regions["us-west-2"] == 0 {
		t.Fatalf("%d grants on %v, %d refusals: want the cap reached, and grants on both targets", len(grants), regions, refused)
	}
	for _, g := range grants {
		var sum int64
		for _, o := range grants {
			if !o.at.After(g.at) && g.at.Sub(o.at) < time.Minute {
				sum += o.charge
			}
		}
		if sum > 100 {
			t.Fatalf("the 60 s up to %v hold %d tokens of client team on route sonnet-us, over its cap of 100", g.at, sum)
		}
	}
	t.Logf("%d grants (%v), %d refusals over 30 rounds of 20 callers", len(grants), regions, refused)

	rep, err := c.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cs := rep.GetSpend().GetCaps()
	if len(cs) != 1 || cs[0].GetClient() != "team" || cs[0].GetRoute() != "sonnet-us" || cs[0].GetModel() != "" || cs[0].GetTpm() != 100 ||
		cs[0].GetRefused() != int64(refused) {
		t.Fatalf("caps in the report: %v (refused %d)", cs, refused)
	}
	body := scrape(t, reg)
	if want := `quotabroker_client_cap{client="team",limit="tpm",model="",route="sonnet-us"} 100`; !strings.Contains(string(body), want) {
		t.Errorf("/metrics lacks %s", want)
	}
}
