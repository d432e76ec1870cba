package increase

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

// Prepare against the simulator's Service Quotas, through the real SDK:
// it finds the quota, asks for what the evidence or the caller says, files
// only when told to, and lists what was filed.
func TestPrepareAgainstSimulator(t *testing.T) {
	t.Parallel()
	sim, err := bedrocksim.New(bedrocksim.Config{DisableLatency: true, Seed: 11})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim.Handler())
	t.Cleanup(hs.Close)
	ctx := context.Background()
	key, err := broker.ParseModelID("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "us-east-1", "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	const code = "L-CCB5CBE9" // its cross-region TPM, 500,000 in the default scenario
	ev := Evidence{Budget: key.String(), Minutes: 3, Margin: 0.9, TPM: Figures{Peak: 90_000, PeakDemand: 100_000}}
	opts := Options{Key: key, Metric: "TPM", Endpoint: hs.URL}

	// The evidence asks for 120,000 (100,000 / 0.9, rounded up): below
	// the quota, so not an increase, and nothing is filed.
	rep, err := Prepare(ctx, ev, opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Quota.QuotaCode != code || rep.Quota.Value != 500_000 || rep.Desired != 120_000 || !strings.Contains(rep.Rule, "margin 0.9") {
		t.Fatalf("quota %+v, desired %v (%s)", rep.Quota, rep.Desired, rep.Rule)
	}
	if rep.Err() == nil || !strings.Contains(rep.Problem, "not an increase") || rep.Filed != nil || len(rep.History) != 0 {
		t.Fatalf("below the quota: err %v, problem %q, filed %+v, history %+v", rep.Err(), rep.Problem, rep.Filed, rep.History)
	}

	// A value above it, not filed: the command to file it, no problem.
	opts.Desired = 750_000
	rep, err = Prepare(ctx, ev, opts)
	if err != nil || rep.Err() != nil || rep.Filed != nil || len(rep.History) != 0 ||
		!strings.Contains(rep.Command, "--quota-code "+code+" --desired-value 750000") || rep.Rule != "--desired" {
		t.Fatalf("--desired without filing: %v, %+v", err, rep)
	}

	// Filed: pending, and listed.
	opts.File = true
	rep, err = Prepare(ctx, ev, opts)
	if err != nil || rep.Err() != nil || rep.Filed == nil || rep.Filed.Status != "PENDING" || rep.Filed.Desired != 750_000 {
		t.Fatalf("filed: %v, %+v", err, rep)
	}
	if len(rep.History) != 1 || rep.History[0].ID != rep.Filed.ID {
		t.Errorf("history %+v, filed %+v", rep.History, rep.Filed)
	}

	// A model Service Quotas has no quota for is an error, not a report.
	opts.Key.Model = "anthropic.no-such-model-v1:0"
	if rep, err := Prepare(ctx, ev, opts); err == nil || !strings.Contains(err.Error(), "lists no TPM quota") {
		t.Errorf("unknown model: %v, %+v", err, rep)
	}
}
