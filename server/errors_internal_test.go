package server

import (
	"testing"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// The ErrorInfo reasons are the names of the proto's Limit values, so that
// clients in any language can decode them from the published contract.
func TestRefusalReasonsAreProtoLimitNames(t *testing.T) {
	for l := broker.LimitRPM; l <= broker.LimitClientLeases; l++ {
		reason := "LIMIT_" + limitReason(l)
		v, ok := pb.Limit_value[reason]
		if !ok || v != int32(l) {
			t.Errorf("broker limit %v: reason %s is proto value %d (present %v), want %d", l, reason, v, ok, int(l))
		}
	}
}
