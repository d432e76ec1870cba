package server

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// TestAcquiredToPB: the answer built in one allocation is the one built
// message by message (leaseToPB, durationPB).
func TestAcquiredToPB(t *testing.T) {
	at := time.Date(2026, 12, 3, 17, 0, 0, 123456789, time.UTC)
	key := broker.Key{Region: "us-east-1", Scope: broker.ScopeCrossRegion, Model: "anthropic.claude-sonnet-4-5-20250929-v1:0"}
	lease := broker.Lease{ID: "0123456789abcdefghijklmnopqrstuv01", Key: key, Reserved: 1500, GrantedAt: at,
		ExpiresAt: at.Add(5 * time.Minute), Burndown: 5, MaxOutputTokens: 500}
	req := &pb.AcquireLeaseRequest{ModelId: "us.anthropic.claude-sonnet-4-5-20250929-v1:0"}
	for _, d := range []broker.Decision{
		{Key: key, Granted: true, Lease: lease},
		{Key: key, Granted: true, Lease: lease, Waited: 2*time.Second + 345*time.Millisecond},
		{Key: key, Granted: true, Lease: broker.Lease{ID: "x", Key: key}}, // zero times: absent
		{Key: key, Granted: true, Lease: lease, Waited: time.Millisecond, Route: broker.RouteGrant{Route: "sonnet", Index: 1,
			Reason: broker.ReasonSpill, Target: broker.Target{Key: key, ModelID: "us.anthropic.claude-sonnet-4-5-20250929-v1:0"}}},
	} {
		want := &pb.AcquireLeaseResponse{Lease: leaseToPB(d.Lease), Waited: durationPB(d.Waited)}
		if r := d.Route; r.Route != "" {
			want.Lease.Region, want.Lease.ModelId = r.Target.Key.Region, r.Target.ModelID
			want.Route = &pb.RouteGrant{Route: r.Route, TargetIndex: int32(r.Index), Reason: routeReasonToPB(r.Reason)}
		} else {
			want.Lease.Region, want.Lease.ModelId = d.Lease.Key.Region, req.GetModelId()
		}
		if got := acquiredToPB(d, req); !proto.Equal(got, want) {
			t.Errorf("acquiredToPB(%+v) =\n%v\nwant\n%v", d, got, want)
		}
	}
}
