package awsquota

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	"github.com/bedrockqb/quotabroker/broker/routefile"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
	"github.com/bedrockqb/quotabroker/internal/clocktest"
)

// TestProvisionedTargetGoneAtRefresh: through the real SDK, discovery sees
// a Provisioned Throughput InService, and once it is deleted the next
// refresh retires its budget and takes it out of the route in one step,
// saying so in the discovery status; a route file naming it no longer
// loads. A throughput InService without a budget gets a note asking for its
// capacity, not an invented one.
func TestProvisionedTargetGoneAtRefresh(t *testing.T) {
	t.Parallel()
	const haiku = "anthropic.claude-3-haiku-20240307-v1:0"
	sc, err := bedrocksim.LoadScenario("")
	if err != nil {
		t.Fatal(err)
	}
	sc.ProvisionedModelThroughputs = []bedrocksim.ProvisionedThroughput{
		{Name: "pt-haiku", ModelID: haiku, ModelUnits: 1, Region: "us-east-1", TokensPerMinutePerUnit: 10000},
		{Name: "pt-unbudgeted", ModelID: haiku, ModelUnits: 3, Region: "us-east-1", TokensPerMinutePerUnit: 10000},
	}
	sim, url := startSim(t, sc)
	arn := "arn:aws:bedrock:us-east-1:" + sc.AccountID + ":provisioned-model/pt-haiku"
	ctx := context.Background()
	store, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	b, err := broker.Open(ctx, store, clocktest.NewScaled(1), broker.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	pt := broker.Key{Region: "us-east-1", Scope: broker.ScopeProvisioned, Model: arn}
	if err := b.SetSpecs(ctx, []broker.Spec{{Key: pt, Quota: broker.Limits{TPM: 9000}, Serves: haiku, Source: "test"}}); err != nil {
		t.Fatal(err)
	}
	src, err := New(Config{Regions: []string{"us-east-1"}, AWS: staticAWS(), Endpoint: url})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx, src); err != nil {
		t.Fatal(err)
	}
	routes := `{"routes": [{"name": "haiku", "model": "` + haiku + `", "targets": [
  {"region": "us-east-1", "model": "` + arn + `"},
  {"region": "us-east-1", "model": "` + haiku + `"}]}]}`
	load := func() error {
		var keys []broker.Key
		for _, bi := range b.Budgets() {
			keys = append(keys, bi.Spec.Key)
		}
		f, err := routefile.Parse("routes.json", []byte(routes))
		if err != nil {
			return err
		}
		rs, err := f.Resolve(keys)
		if err != nil {
			return err
		}
		return b.SetRoutes(rs)
	}
	if err := load(); err != nil {
		t.Fatal(err)
	}
	notes := strings.Join(b.DiscoveryStatus().Notes, "\n")
	if !strings.Contains(notes, "provisioned-model/pt-unbudgeted (pt-unbudgeted, 3 model units of "+haiku+") is InService but has no budget") {
		t.Fatalf("notes:\n%s\nwant one asking for pt-unbudgeted's capacity", notes)
	}
	for _, bi := range b.Budgets() {
		if strings.Contains(bi.Spec.Key.Model, "pt-unbudgeted") {
			t.Fatalf("a budget was invented for pt-unbudgeted: %+v", bi.Spec)
		}
	}
	if got := targetsOf(b, "haiku"); !slices.Equal(got, []string{arn, haiku}) {
		t.Fatalf("route before: %v", got)
	}

	if err := sim.SetProvisionedStatus("pt-haiku", "Deleted"); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx, src); err != nil {
		t.Fatal(err)
	}
	if got := targetsOf(b, "haiku"); !slices.Equal(got, []string{haiku}) {
		t.Fatalf("route after the throughput was deleted: %v, want only on-demand", got)
	}
	notes = strings.Join(b.DiscoveryStatus().Notes, "\n")
	for _, want := range []string{"retired budget " + pt.String() + ": provisioned throughput " + arn + " is gone",
		"route haiku: target 1 (us-east-1/" + arn + ") out of service, 1 of 2 targets left"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes:\n%s\nwant %q", notes, want)
		}
	}
	if err := load(); err == nil || !strings.Contains(err.Error(), "routes.json:2: routes[0].targets[0].model: no budget for the provisioned throughput "+arn) {
		t.Fatalf("loading a route file naming the gone throughput: %v", err)
	}
	if _, err := b.Acquire(ctx, broker.AcquireRequest{ModelID: arn, MaxOutputTokens: 10}); broker.KindOf(err) != broker.KindNotFound {
		t.Fatalf("Acquire on the gone throughput: %v, want KindNotFound", err)
	}
}

func targetsOf(b *broker.Broker, route string) []string {
	for _, r := range b.Routes() {
		if r.Name == route {
			var out []string
			for _, t := range r.Targets {
				out = append(out, t.ModelID)
			}
			return out
		}
	}
	return nil
}

// TestProvisionedRatesSizeBudgets: through the real SDK, with a rate per
// model unit for a model, discovery makes a budget of each InService
// throughput of it: units x rate, keyed by the ARN, serving the model; a
// throughput not InService, or of a model without a rate, gets none.
func TestProvisionedRatesSizeBudgets(t *testing.T) {
	t.Parallel()
	const haiku = "anthropic.claude-3-haiku-20240307-v1:0"
	sc, err := bedrocksim.LoadScenario("")
	if err != nil {
		t.Fatal(err)
	}
	sc.ProvisionedModelThroughputs = []bedrocksim.ProvisionedThroughput{
		{Name: "pt-a", ModelID: haiku, ModelUnits: 2, Region: "us-east-1", TokensPerMinutePerUnit: 1000},
		{Name: "pt-creating", ModelID: haiku, ModelUnits: 1, Region: "us-east-1", Status: "Creating", TokensPerMinutePerUnit: 1000},
		{Name: "pt-other", ModelID: "anthropic.claude-sonnet-4-5-20250929-v1:0", ModelUnits: 1, Region: "us-east-1", TokensPerMinutePerUnit: 1000},
	}
	_, url := startSim(t, sc)
	src, err := New(Config{Regions: []string{"us-east-1"}, AWS: staticAWS(), Endpoint: url, ProvisionedRates: map[string]int64{haiku: 75_000}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := src.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var got []broker.Spec
	for _, s := range d.Specs {
		if s.Key.Scope == broker.ScopeProvisioned {
			got = append(got, s)
		}
	}
	arn := "arn:aws:bedrock:us-east-1:" + sc.AccountID + ":provisioned-model/pt-a"
	if len(got) != 1 || got[0].Key != (broker.Key{Region: "us-east-1", Scope: broker.ScopeProvisioned, Model: arn}) ||
		got[0].Quota != (broker.Limits{TPM: 150_000}) || got[0].Serves != haiku || !strings.Contains(got[0].Source, "2 model units x 75000") {
		t.Fatalf("provisioned specs %+v, want one for pt-a of 2 x 75,000 TPM", got)
	}
	if !slices.Equal(d.ProvisionedRegions, []string{"us-east-1"}) {
		t.Fatalf("provisioned regions %v", d.ProvisionedRegions)
	}
}
