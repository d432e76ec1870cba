package quotaclient

import (
	"testing"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// Every reason the proto defines decodes to its own value with a name, so a
// limit added to the proto needs no change in this client; the names of the
// limits known today stay as they were spelled by hand before.
func TestLimitsDeriveFromProto(t *testing.T) {
	want := map[Limit]string{
		LimitUnknown: "unknown", LimitRPM: "RPM", LimitTPM: "TPM", LimitTPD: "TPD", LimitConcurrency: "concurrency",
		LimitClientWaiters: "client waiters", LimitWaiters: "waiters", LimitClientLeases: "client leases",
		LimitClientCap: "client cap", LimitMoney: "money",
	}
	for v, reason := range pb.Limit_name {
		l := limitOfReason(reason)
		if l != Limit(v) {
			t.Errorf("reason %s decodes to %d, want %d", reason, l, v)
		}
		if w, ok := want[l]; ok && l.String() != w {
			t.Errorf("%s: String %q, want %q", reason, l.String(), w)
		}
		if l != LimitUnknown && (l.String() == "" || l.String() == "unknown") {
			t.Errorf("%s: String %q, want a name", reason, l.String())
		}
	}
	if len(want) > len(pb.Limit_name) {
		t.Errorf("client constants %d, proto values %d: a proto value was removed", len(want), len(pb.Limit_name))
	}
	for _, r := range []string{"", "LIMIT_UNKNOWN", "LIMIT_SOMETHING_NEW"} {
		if l := limitOfReason(r); l != LimitUnknown || l.String() != "unknown" {
			t.Errorf("reason %q: %d %q, want LimitUnknown", r, l, l.String())
		}
	}
	if s := Limit(99).String(); s != "unknown" {
		t.Errorf("Limit(99) = %q, want unknown", s)
	}
}
