package server_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

// TestRouteOverGRPC: a request names a route; the lease says where to
// call, the refusal which route was full, and the report and metrics where
// the calls went and why.
func TestRouteOverGRPC(t *testing.T) {
	ctx := context.Background()
	b := openBroker(t, fakeClock(), broker.Config{}, broker.Limits{RPM: 1}) // us-east-1
	west, err := broker.NewTarget(sonnet, "us-west-2")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetSpecs(ctx, []broker.Spec{{Key: west.Key, Quota: broker.Limits{RPM: 1}, Source: "test"}}); err != nil {
		t.Fatal(err)
	}
	east, _ := broker.NewTarget(sonnet, "us-east-1")
	if err := b.SetRoutes([]broker.Route{{Name: "sonnet-us", Targets: []broker.Target{east, west}}}); err != nil {
		t.Fatal(err)
	}
	reg := server.NewRegistry(b)
	c := pb.NewQuotaBrokerClient(serve(t, b, server.Config{Metrics: reg}))
	req := &pb.AcquireLeaseRequest{Route: "sonnet-us", AffinityKey: "conv-1", MaxOutputTokens: 100}
	var got []string
	for range 2 {
		resp, err := c.AcquireLease(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		l, r := resp.GetLease(), resp.GetRoute()
		if l.GetModelId() != sonnet || l.GetRegion() != l.GetBudget().GetRegion() || r.GetRoute() != "sonnet-us" {
			t.Fatalf("lease %v route %v", l, r)
		}
		got = append(got, l.GetRegion()+":"+r.GetReason().String())
	}
	if want := "us-east-1:ROUTE_REASON_ROOM us-west-2:ROUTE_REASON_SPILL"; strings.Join(got, " ") != want {
		t.Fatalf("grants %v, want %s", got, want)
	}
	_, err = c.AcquireLease(ctx, req)
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "no capacity on any target of route sonnet-us") {
		t.Fatalf("refusal: %v", err)
	}
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if e, ok := d.(*errdetails.ErrorInfo); ok {
			info = e
		}
	}
	// Both targets free at once; the tie goes to the key's target, tried first.
	if info == nil || info.GetMetadata()["route"] != "sonnet-us" || info.GetMetadata()["region"] != "us-west-2" {
		t.Fatalf("refusal details: %v", st.Details())
	}
	// A model request says where to call too: where it asked.
	if resp, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, Region: "us-west-2"}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("%v %v", resp, err)
	}
	if _, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{Route: "sonnet-us", ModelId: sonnet}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("route and model: %v", err)
	}
	if _, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{Route: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown route: %v", err)
	}

	rep, err := c.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.GetRoutes()) != 1 {
		t.Fatalf("routes in the report: %v", rep.GetRoutes())
	}
	r := rep.GetRoutes()[0]
	ts := r.GetTargets()
	if r.GetRefused() != 1 || len(ts) != 2 || ts[0].GetRoom() != 1 || ts[1].GetSpill() != 1 || ts[1].GetModelId() != sonnet {
		t.Fatalf("route report %v", r)
	}

	body := scrape(t, reg)
	for _, want := range []string{
		`quotabroker_route_grants_total{model_id="` + sonnet + `",reason="room",region="us-east-1",route="sonnet-us",target="0"} 1`,
		`quotabroker_route_grants_total{model_id="` + sonnet + `",reason="spill",region="us-west-2",route="sonnet-us",target="1"} 1`,
		`quotabroker_route_refused_total{route="sonnet-us"} 1`,
		`quotabroker_route_waiters{model_id="` + sonnet + `",region="us-east-1",route="sonnet-us",target="0"} 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestLeaseSaysWhereToCall(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{TPM: 1_000_000})
	resp, err := f.client.AcquireLease(context.Background(), &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	if l := resp.GetLease(); l.GetRegion() != "us-east-1" || l.GetModelId() != sonnet || resp.GetRoute() != nil {
		t.Fatalf("lease %v route %v", l, resp.GetRoute())
	}
}
