package server_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/sysclock"
	"github.com/bedrockqb/quotabroker/server"
)

// FuzzRequests feeds arbitrary request messages (any bytes the proto
// decoder accepts) to every client RPC of one server: request validation
// must answer each with a result or a status from the documented set
// (never Internal or Unknown, never a panic), an INVALID_ARGUMENT must say
// what is wrong, and whatever it grants must keep every window within its
// static limit.
func FuzzRequests(f *testing.F) {
	ctx := context.Background()
	store, err := bolt.Open(filepath.Join(f.TempDir(), "state.db"), bolt.Options{NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { store.Close() })
	b, err := broker.Open(ctx, store, sysclock.Clock{}, broker.Config{Margin: 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(b.Close)
	key, _ := broker.ParseModelID(sonnet, "", "us-east-1")
	if err := b.SetSpecs(ctx, []broker.Spec{{Key: key, Quota: broker.Limits{RPM: 1000, TPM: 10_000_000, TPD: 1_000_000_000, Concurrency: 500}, Source: "fuzz"}}); err != nil {
		f.Fatal(err)
	}
	srv := server.New(b, server.Config{})

	seed := func(m proto.Message) []byte {
		data, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		return data
	}
	f.Add(seed(&pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 1000, MaxOutputTokens: 500, Priority: pb.Priority_PRIORITY_BATCH, Wait: durationpb.New(time.Second)}),
		seed(&pb.CompleteLeaseRequest{Outcome: pb.Outcome_OUTCOME_SUCCESS, Usage: &pb.Usage{InputTokens: 900, OutputTokens: 100}}),
		seed(&pb.RenewLeaseRequest{Extend: durationpb.New(time.Minute)}))
	f.Add(seed(&pb.AcquireLeaseRequest{ModelId: "arn:aws:bedrock:us-east-1:111122223333:inference-profile/" + sonnet, Region: "us-east-1", MaxOutputTokens: -1}),
		seed(&pb.CompleteLeaseRequest{Outcome: pb.Outcome(99), Usage: &pb.Usage{OutputTokens: -5}}),
		seed(&pb.RenewLeaseRequest{Extend: &durationpb.Duration{Seconds: -1, Nanos: 5}}))
	f.Add([]byte{0xff, 0x01}, []byte{}, []byte{0x0a, 0x80})

	f.Fuzz(func(t *testing.T, acquire, complete, renew []byte) {
		// A deadline shorter than the server's margin makes every wait
		// zero: the fuzzer explores validation, not the clock.
		ctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
		var acq pb.AcquireLeaseRequest
		if proto.Unmarshal(acquire, &acq) != nil {
			return
		}
		resp, err := srv.AcquireLease(ctx, &acq)
		check(t, "AcquireLease", err, codes.InvalidArgument, codes.NotFound, codes.ResourceExhausted, codes.DeadlineExceeded)
		var leaseID string
		if err == nil {
			l := resp.GetLease()
			if l.GetLeaseId() == "" || l.GetReservedTokens() <= 0 || l.GetBudget().GetModel() != key.Model {
				t.Fatalf("granted %v for %v", l, &acq)
			}
			leaseID = l.GetLeaseId()
		}
		var cr pb.CompleteLeaseRequest
		if proto.Unmarshal(complete, &cr) == nil {
			if leaseID != "" && cr.GetLeaseId() == "" {
				cr.LeaseId = leaseID
			}
			_, err := srv.CompleteLease(ctx, &cr)
			check(t, "CompleteLease", err, codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition)
		}
		var rr pb.RenewLeaseRequest
		if proto.Unmarshal(renew, &rr) == nil {
			if leaseID != "" && rr.GetLeaseId() == "" {
				rr.LeaseId = leaseID
			}
			_, err := srv.RenewLease(ctx, &rr)
			check(t, "RenewLease", err, codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition)
		}
		_, err = srv.ReportThrottle(ctx, &pb.ReportThrottleRequest{ModelId: acq.GetModelId(), Region: acq.GetRegion(), Message: cr.GetLeaseId()})
		check(t, "ReportThrottle", err, codes.InvalidArgument, codes.NotFound)
		_, err = srv.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{Model: acq.GetModelId(), Region: acq.GetRegion()})
		check(t, "GetQuotaReport", err, codes.InvalidArgument)

		// Against the static limits: reported throttles lower the adaptive
		// ceiling, which may then sit below what was granted before it.
		reports, _ := b.Report(broker.ReportFilter{})
		for _, r := range reports {
			l := r.Static
			if (l.RPM > 0 && r.Usage.RequestsLastMinute > l.RPM) || (l.TPM > 0 && r.Usage.TokensLastMinute > l.TPM) ||
				(l.TPD > 0 && r.Usage.TokensLastDay > l.TPD) || (l.Concurrency > 0 && r.Usage.Concurrent > l.Concurrency) {
				t.Fatalf("%v: usage %+v over limits %+v", r.Spec.Key, r.Usage, l)
			}
		}
	})
}

// check fails t unless err is nil or a status with one of the codes, and
// an INVALID_ARGUMENT says something.
func check(t *testing.T, rpc string, err error, allowed ...codes.Code) {
	t.Helper()
	if err == nil {
		return
	}
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("%s: not a status: %v", rpc, err)
	}
	if st.Code() == codes.InvalidArgument && len(st.Message()) < 10 {
		t.Fatalf("%s: INVALID_ARGUMENT with no explanation: %q", rpc, st.Message())
	}
	for _, c := range allowed {
		if st.Code() == c {
			return
		}
	}
	t.Fatalf("%s: %v: %s", rpc, st.Code(), st.Message())
}
