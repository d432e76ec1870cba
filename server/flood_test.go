package server_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

type rpcResult struct {
	resp *pb.AcquireLeaseResponse
	err  error
}

// TestFloodOverGRPC: one client opens thousands of waiting AcquireLease
// calls over one connection. Beyond its bound it is refused at once with
// RESOURCE_EXHAUSTED, a retry delay and reason LIMIT_CLIENT_WAITERS; another
// client is still served. The clock is fake, so nothing times out.
func TestFloodOverGRPC(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{Concurrency: 1, TPM: 1_000_000})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a guard against a hang, not an assertion
	defer cancel()
	floodCtx := metadata.AppendToOutgoingContext(ctx, server.ClientHeader, "flood")
	quietCtx := metadata.AppendToOutgoingContext(ctx, server.ClientHeader, "quiet")
	req := &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10, Wait: durationpb.New(time.Hour)}
	first, err := f.client.AcquireLease(floodCtx, req)
	if err != nil {
		t.Fatal(err)
	}

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const n = 2 * broker.DefaultClientMaxWaiters
	results := make(chan rpcResult, n)
	for range n {
		go func() {
			resp, err := f.client.AcquireLease(floodCtx, req)
			results <- rpcResult{resp, err}
		}()
	}
	// A call is refused only once the client has its full count waiting,
	// so after n - bound refusals exactly the bound is waiting.
	for range n - broker.DefaultClientMaxWaiters {
		r := <-results
		st := status.Convert(r.err)
		if st.Code() != codes.ResourceExhausted {
			t.Fatalf("a flooding call: %v %v, want RESOURCE_EXHAUSTED", r.resp, r.err)
		}
		retry, info := refusalDetails(st)
		if retry == nil || retry.GetRetryDelay().AsDuration() <= 0 || info.GetReason() != pb.Limit_LIMIT_CLIENT_WAITERS.String() {
			t.Fatalf("refusal details: %v %v", retry, info)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("per waiting call, client and server side in one process: %d B heap, %d B stack",
		(int64(after.HeapAlloc)-int64(before.HeapAlloc))/broker.DefaultClientMaxWaiters,
		(int64(after.StackInuse)-int64(before.StackInuse))/broker.DefaultClientMaxWaiters)

	rep, err := f.client.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if br := rep.GetBudgets()[0]; br.GetWaiters() != broker.DefaultClientMaxWaiters || br.GetCounters().GetRefused() != n-broker.DefaultClientMaxWaiters {
		t.Fatalf("report: %d waiters, %d refused", br.GetWaiters(), br.GetCounters().GetRefused())
	}

	// The quiet client waits within its own bound and is served long before
	// the flood's thousand waiters: within two grants of its arrival under
	// fair queuing. Its call is in flight while the grants go on, so the
	// test counts grants to the flood before it, and fails only if quiet
	// had to queue behind the whole flood.
	quiet := make(chan rpcResult, 1)
	go func() {
		resp, err := f.client.AcquireLease(quietCtx, req)
		quiet <- rpcResult{resp, err}
	}()
	lease := first.GetLease()
	floodGrants := 0
	for {
		if _, err := f.client.CompleteLease(floodCtx, &pb.CompleteLeaseRequest{LeaseId: lease.GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS}); err != nil {
			t.Fatal(err)
		}
		var r rpcResult
		select {
		case r = <-quiet:
		case r = <-results:
			if r.err != nil {
				t.Fatalf("flood waiter: %v", r.err)
			}
			lease = r.resp.GetLease()
			if floodGrants++; floodGrants == broker.DefaultClientMaxWaiters {
				t.Fatal("the quiet client was served only after the whole flood")
			}
			continue
		}
		if r.err != nil || r.resp.GetLease().GetLeaseId() == "" {
			t.Fatalf("quiet client: %v %v", r.resp, r.err)
		}
		break
	}
	t.Logf("the quiet client was served after %d grants to the flood", floodGrants)
	f.b.Close() // answers the flood's waiters, so the server can stop
	for range broker.DefaultClientMaxWaiters - floodGrants {
		if r := <-results; status.Code(r.err) != codes.Unavailable {
			t.Fatalf("flood waiter after Close: %v", r.err)
		}
	}
}
