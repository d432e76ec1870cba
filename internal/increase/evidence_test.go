package increase

import (
	"strings"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

func TestBuildEvidence(t *testing.T) {
	key := broker.Key{Region: "us-east-1", Scope: broker.ScopeCrossRegion, Model: "m"}
	// Five minutes with traffic (one refusing), one with a settlement only.
	points := []*pb.UsagePoint{
		{Granted: 2, WindowRequests: 2, WindowTokens: 1000, Calls: 1, Successful: 1, InputTokens: 300, OutputTokens: 40},
		{Granted: 4, WindowRequests: 4, WindowTokens: 4000, Calls: 4, Successful: 3, Throttled: 1, InputTokens: 900, OutputTokens: 100},
		{Granted: 1, WindowRequests: 1, WindowTokens: 500, Calls: 1, Successful: 1, InputTokens: 300, OutputTokens: 20},
		{Granted: 3, WindowRequests: 3, WindowTokens: 3000, Refused: 2, Calls: 3, Successful: 3, InputTokens: 900, OutputTokens: 60},
		{Granted: 2, WindowRequests: 2, WindowTokens: 1500, Calls: 2, Successful: 2, ReportedThrottles: 1, InputTokens: 600, OutputTokens: 30},
		{Calls: 1, Successful: 1, InputTokens: 300, OutputTokens: 10}, // settled a call of the minute before
	}
	ev := buildEvidence(key, time.Time{}, time.Time{}, points, 0.8)
	if ev.Minutes != 5 || ev.Calls != 12 || ev.Successful != 11 || ev.Throttles != 2 || ev.Refused != 2 {
		t.Fatalf("counts %+v", ev)
	}
	if ev.AvgInputTokens != 3300.0/11 || ev.AvgOutputTokens != 260.0/11 {
		t.Errorf("averages %v %v", ev.AvgInputTokens, ev.AvgOutputTokens)
	}
	// Per-minute TPM sorted: 500 1000 1500 3000 4000.
	if ev.TPM.Steady != 1500 || ev.TPM.Peak != 4000 || ev.TPM.P95 != 4000 {
		t.Errorf("TPM %+v", ev.TPM)
	}
	// Refusals priced at the average charge, 10000/12 per request:
	// 3000 + 2 x 833.3 = 4666.7, above the 4000 charged.
	if ev.TPM.PeakDemand != 4667 || ev.RPM.PeakDemand != 5 || ev.RPM.Steady != 2 || ev.RPM.Peak != 4 {
		t.Errorf("TPM %+v RPM %+v", ev.TPM, ev.RPM)
	}
	// 4667 / 0.8 = 5833.75, rounded up to two digits.
	if v, rule := ev.Suggest("TPM"); v != 5900 || !strings.Contains(rule, "margin 0.8") {
		t.Errorf("suggested %v (%s)", v, rule)
	}
	if v, _ := ev.Suggest("RPM"); v != 7 { // 5 / 0.8 = 6.25
		t.Errorf("suggested RPM %v", v)
	}
}

func TestRoundUpAndThousands(t *testing.T) {
	for in, want := range map[float64]float64{1_234_567: 1_300_000, 1_200_000: 1_200_000, 5833.75: 5900, 7: 7, 6.25: 7, 99.1: 100} {
		if got := roundUp2(in); got != want {
			t.Errorf("roundUp2(%v) = %v, want %v", in, got, want)
		}
	}
	if got := Thousands(1234567); got != "1,234,567" {
		t.Errorf("Thousands: %s", got)
	}
}
