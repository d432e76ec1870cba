package awsquota

import (
	"context"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/quotaname"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

// startSim runs the Bedrock simulator on loopback for the test.
func startSim(t testing.TB, sc *bedrocksim.Scenario) (*bedrocksim.Sim, string) {
	t.Helper()
	sim, err := bedrocksim.New(bedrocksim.Config{Scenario: sc, DisableLatency: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sim.Handler())
	t.Cleanup(srv.Close)
	return sim, srv.URL
}

func staticAWS() *aws.Config {
	return &aws.Config{
		Region:      "us-east-1",
		Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""),
	}
}

// TestSimulatorDefaultScenario discovers the simulator's default account
// with the real SDK clients and checks the budgets against what the
// simulator enforces: the simulator is written independently, so agreement
// is evidence that names were matched to the right models.
func TestSimulatorDefaultScenario(t *testing.T) {
	t.Parallel()
	sim, url := startSim(t, nil)
	sc := sim.Scenario()
	if !sc.ServiceQuotas.EmptyPage {
		t.Log("the default scenario no longer sends an empty page; pagination is then covered by the unit tests only")
	}
	var regions []string
	for r := range sc.Quotas {
		regions = append(regions, r)
	}
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	src, err := New(Config{Regions: regions, AWS: staticAWS(), Endpoint: url, Now: func() time.Time { return at }})
	if err != nil {
		t.Fatal(err)
	}
	res, err := src.Inspect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	d, err := src.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Specs) != len(res.Specs) || len(d.Skipped) != len(res.Skipped) {
		t.Errorf("Discover and Inspect disagree: %d/%d specs, %d/%d skipped", len(d.Specs), len(res.Specs), len(d.Skipped), len(res.Skipped))
	}
	checkAccounted(t, res)

	specs := map[broker.Key]broker.Spec{}
	for _, s := range res.Specs {
		specs[s.Key] = s
		if s.Source != "aws:service-quotas:"+s.Key.Region || !s.SourceTime.Equal(at) {
			t.Errorf("%s: source %q at %v", s.Key, s.Source, s.SourceTime)
		}
	}
	byCode := map[string]Quota{}
	for _, q := range res.Quotas {
		byCode[q.Region+"/"+q.QuotaCode] = q
	}
	total, runtime, ambiguous := 0, 0, 0
	for region, rows := range sc.Quotas {
		total += len(rows)
		for _, row := range rows {
			q, ok := byCode[region+"/"+row.Code]
			if !ok {
				t.Errorf("%s %s %q: not in the discovery", region, row.Code, row.Name)
				continue
			}
			if q.Value != row.Value {
				t.Errorf("%s %s: value %v, simulator applies %v", region, row.Code, q.Value, row.Value)
			}
			if q.DefaultValue == nil || *q.DefaultValue != row.DefaultValue {
				t.Errorf("%s %s: default %v, simulator %v", region, row.Code, q.DefaultValue, row.DefaultValue)
			}
			e := row.Enforces
			if e == nil {
				if q.Runtime {
					t.Errorf("%s %s %q: became a budget, but the simulator enforces nothing with it", region, row.Code, row.Name)
				}
				continue
			}
			if !q.Runtime {
				if knownAmbiguous[q.Provider+" "+q.Model] && strings.Contains(q.Reason, "equally well") {
					t.Logf("%s %s %q: enforced by the simulator, left ambiguous by quotaname: %s", region, row.Code, row.Name, q.Reason)
					ambiguous++
					continue
				}
				t.Errorf("%s %s %q: not brokered (%s), but the simulator enforces it", region, row.Code, row.Name, q.Reason)
				continue
			}
			runtime++
			for _, scope := range e.Scopes {
				if !callable(sc, region, scope, e.Model) {
					// The simulator enforces "Model invocation max tokens
					// per day" on both scopes whatever the model offers;
					// a budget nobody can draw on is not made.
					continue
				}
				bs, err := broker.ParseScope(scope)
				if err != nil {
					t.Fatal(err)
				}
				k := broker.Key{Region: region, Scope: bs, Model: e.Model}
				s, ok := specs[k]
				if !ok {
					t.Errorf("%s %q: no budget %s", row.Code, row.Name, k)
					continue
				}
				want := int64(row.Value)
				if e.Metric == bedrocksim.MetricTPD && bs == broker.ScopeCrossRegion && q.QuotaName != "" && doubled(q.QuotaName) {
					want *= 2
				}
				got := map[string]int64{bedrocksim.MetricRPM: s.Quota.RPM, bedrocksim.MetricTPM: s.Quota.TPM, bedrocksim.MetricTPD: s.Quota.TPD}[e.Metric]
				if got != want {
					t.Errorf("%s %s: %s of %s is %d, want %d", region, row.Code, e.Metric, k, got, want)
				}
			}
		}
	}
	if len(res.Quotas) != total {
		t.Errorf("%d quotas discovered, the simulator lists %d", len(res.Quotas), total)
	}
	if len(res.Specs) == 0 {
		t.Fatal("no budgets discovered from the default scenario")
	}
	t.Logf("default scenario, %d Regions: %d quotas, %d runtime became %d budgets, %d skipped (%d of them enforced by the simulator but ambiguous by name)",
		len(regions), len(res.Quotas), runtime, len(res.Specs), len(res.Skipped), ambiguous)
}

// knownAmbiguous are quota subjects the simulator's scenario pins to one
// model that quotaname, which never guesses, leaves ambiguous: "Mistral
// Large" fits both mistral-large-2402 and mistral-large-2407 by name.
var knownAmbiguous = map[string]bool{"Mistral AI Mistral Large": true}

// callable reports whether the scenario's catalogue lets model be called in
// scope from region: ON_DEMAND for on-demand, a geo or global profile
// routing to it (and open to the Region) otherwise.
func callable(sc *bedrocksim.Scenario, region, scope, model string) bool {
	if scope == bedrocksim.ScopeOnDemand {
		for _, m := range sc.Models {
			if m.ID == model {
				return slices.Contains(m.InferenceTypes, "ON_DEMAND")
			}
		}
		return false
	}
	for _, p := range sc.InferenceProfiles {
		global := strings.HasPrefix(p.ID, "global.")
		if global != (scope == bedrocksim.ScopeGlobal) {
			continue
		}
		if len(p.SourceRegions) > 0 && !slices.Contains(p.SourceRegions, region) {
			continue
		}
		for _, m := range p.Models {
			if strings.HasSuffix(m.ModelArn, "/"+model) {
				return true
			}
		}
	}
	return false
}

func doubled(name string) bool { return quotaname.Classify(name).DoubledCrossRegion }

// TestSimulatorDummyCredentials runs the path the CLI takes: no AWS
// configuration at all, only an endpoint.
func TestSimulatorDummyCredentials(t *testing.T) {
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"} {
		t.Setenv(k, "")
	}
	_, url := startSim(t, nil)
	src, err := New(Config{Regions: []string{"eu-central-1"}, Endpoint: url})
	if err != nil {
		t.Fatal(err)
	}
	d, err := src.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Specs) == 0 {
		t.Fatal("no budgets")
	}
	for _, s := range d.Specs {
		if s.Key.Region != "eu-central-1" {
			t.Fatalf("budget %s outside the Region asked for", s.Key)
		}
	}
}

// TestSimulatorProvisionedAndQuotaRefs checks, through the real SDK, that
// discovery lists the account's Provisioned Throughputs and that each
// budget names the AWS quotas behind its limits as Service Quotas states
// them.
func TestSimulatorProvisionedAndQuotaRefs(t *testing.T) {
	t.Parallel()
	sc, err := bedrocksim.LoadScenario("")
	if err != nil {
		t.Fatal(err)
	}
	sc.ProvisionedModelThroughputs = []bedrocksim.ProvisionedThroughput{
		{Name: "support-bot-pt", ModelID: "anthropic.claude-3-haiku-20240307-v1:0", ModelUnits: 2, Status: "InService"},
	}
	_, url := startSim(t, sc)
	src, err := New(Config{Regions: []string{"us-east-1"}, AWS: staticAWS(), Endpoint: url})
	if err != nil {
		t.Fatal(err)
	}
	d, err := src.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Provisioned) != 1 || d.Provisioned[0].Name != "support-bot-pt" || d.Provisioned[0].ModelUnits != 2 ||
		d.Provisioned[0].Region != "us-east-1" || !strings.Contains(d.Provisioned[0].Model, "claude-3-haiku") || len(d.Notes) != 0 {
		t.Fatalf("provisioned %+v, notes %v", d.Provisioned, d.Notes)
	}
	for _, s := range d.Specs {
		if s.Key.Model != "anthropic.claude-sonnet-4-5-20250929-v1:0" || s.Key.Scope != broker.ScopeCrossRegion {
			continue
		}
		var tpm *broker.QuotaRef
		for i := range s.Quotas {
			if s.Quotas[i].Limit == "tpm" {
				tpm = &s.Quotas[i]
			}
		}
		if tpm == nil || tpm.Code == "" || tpm.Applied != s.Quota.TPM || !tpm.Adjustable || tpm.Default == 0 ||
			!strings.Contains(tpm.Name, "tokens per minute") {
			t.Fatalf("Sonnet 4.5 cross-region TPM quota ref %+v (quota %+v)", tpm, s.Quota)
		}
		return
	}
	t.Fatal("no cross-region Sonnet 4.5 budget discovered")
}
