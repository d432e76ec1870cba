package bedrocksim

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/bedrock"
	brtypes "github.com/aws/aws-sdk-go-v2/service/bedrock/types"
	"github.com/aws/aws-sdk-go-v2/service/servicequotas"
	sqtypes "github.com/aws/aws-sdk-go-v2/service/servicequotas/types"
)

func TestDefaultScenario(t *testing.T) {
	t.Parallel()
	sc := DefaultScenario()
	if len(sc.Models) < 30 || len(sc.InferenceProfiles) < 30 {
		t.Fatalf("default scenario too small: %d models, %d profiles", len(sc.Models), len(sc.InferenceProfiles))
	}
	// Every code said to come from the General Reference table is in it,
	// under a name that only differs by AWS's later rewording.
	raw, err := os.ReadFile("testdata/bedrock-general-reference-quotas-2025-06.json")
	if err != nil {
		t.Fatal(err)
	}
	var gr []struct{ Name, Code string }
	if err := json.Unmarshal(raw, &gr); err != nil {
		t.Fatal(err)
	}
	grCodes := map[string]string{}
	for _, r := range gr {
		grCodes[r.Code] = r.Name
	}
	scopes := map[string]int{}
	for region, rows := range sc.Quotas {
		for _, q := range rows {
			if q.CodeSource == "gr-2025-06" {
				if _, ok := grCodes[q.Code]; !ok {
					t.Errorf("%s %s %q: marked gr-2025-06 but not in the GR table", region, q.Code, q.Name)
				}
			}
			if q.Enforces != nil {
				for _, s := range q.Enforces.Scopes {
					scopes[s+"/"+q.Enforces.Metric]++
				}
			}
		}
	}
	for _, k := range []string{"on-demand/TPM", "cross-region/TPM", "global/TPM", "on-demand/TPD", "global/TPD", "cross-region/RPM"} {
		if scopes[k] == 0 {
			t.Errorf("default scenario has no %s quota", k)
		}
	}
}

func TestParseScenarioRejectsBadInput(t *testing.T) {
	t.Parallel()
	for name, mutate := range map[string]func(*Scenario){
		"unknown model":   func(sc *Scenario) { sc.Quotas["us-east-1"][0].Enforces.Model = "nope" },
		"bad metric":      func(sc *Scenario) { sc.Quotas["us-east-1"][0].Enforces.Metric = "TPS" },
		"no region":       func(sc *Scenario) { sc.DefaultRegion = "eu-west-9" },
		"duplicate code":  func(sc *Scenario) { sc.Quotas["us-east-1"][1].Code = sc.Quotas["us-east-1"][0].Code },
		"fault rate":      func(sc *Scenario) { sc.Runtime.Faults.ServiceUnavailableRate = 2 },
		"two changes set": func(sc *Scenario) { sc.Runtime.Changes = []Change{{SetTrue: f64(1), ScaleTrue: f64(1)}} },
	} {
		sc := testScenario()
		mutate(sc)
		if _, err := New(Config{Scenario: sc}); err == nil {
			t.Errorf("%s: New accepted an invalid scenario", name)
		}
	}
	if _, err := ParseScenario([]byte(`{"defaultRegion":"us-east-1","quotas":{"us-east-1":[]},"typo":1}`)); err == nil {
		t.Error("ParseScenario accepted an unknown field")
	}
}

func TestListServiceQuotasPaginatesThroughEmptyPage(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil) // the default scenario has the empty page on
	ctx := context.Background()
	want := len(h.sim.Scenario().Quotas["us-east-1"])
	var got, pages, empty int
	seen := map[string]bool{}
	in := &servicequotas.ListServiceQuotasInput{ServiceCode: aws.String("bedrock"), MaxResults: aws.Int32(40)}
	for {
		out, err := h.sq.ListServiceQuotas(ctx, in)
		if err != nil {
			t.Fatalf("page %d: %v", pages, err)
		}
		pages++
		if len(out.Quotas) == 0 && out.NextToken != nil {
			empty++
		}
		for _, q := range out.Quotas {
			if seen[*q.QuotaCode] {
				t.Errorf("quota %s listed twice", *q.QuotaCode)
			}
			seen[*q.QuotaCode] = true
			if q.Value == nil || q.QuotaName == nil || q.QuotaArn == nil {
				t.Fatalf("incomplete quota %+v", q)
			}
		}
		got += len(out.Quotas)
		if out.NextToken == nil {
			break
		}
		in.NextToken = out.NextToken
	}
	if got != want || empty != 1 {
		t.Fatalf("listed %d quotas in %d pages with %d empty pages; want %d quotas and 1 empty page", got, pages, empty, want)
	}

	// The SDK's own paginator gets there too.
	p := servicequotas.NewListServiceQuotasPaginator(h.sq, &servicequotas.ListServiceQuotasInput{ServiceCode: aws.String("bedrock")})
	n := 0
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n += len(out.Quotas)
	}
	if n != want {
		t.Fatalf("paginator listed %d quotas, want %d", n, want)
	}

	// Another Region is another table.
	west := newClients(h.sim, h.clock, h.url, "eu-central-1")
	out, err := west.sq.ListServiceQuotas(ctx, &servicequotas.ListServiceQuotasInput{ServiceCode: aws.String("bedrock"), MaxResults: aws.Int32(100)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(*out.Quotas[0].QuotaArn, ":eu-central-1:") {
		t.Fatalf("eu-central-1 quota ARN %s", *out.Quotas[0].QuotaArn)
	}
}

func TestGetServiceQuota(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario())
	ctx := context.Background()
	out, err := h.sq.GetServiceQuota(ctx, &servicequotas.GetServiceQuotaInput{ServiceCode: aws.String("bedrock"), QuotaCode: aws.String("L-SON45XR")})
	if err != nil {
		t.Fatal(err)
	}
	// The published value, never the hidden capacity.
	if *out.Quota.Value != 100000 || !out.Quota.Adjustable || out.Quota.Period.PeriodUnit != sqtypes.PeriodUnitMinute {
		t.Fatalf("quota = %+v", out.Quota)
	}
	def, err := h.sq.GetAWSDefaultServiceQuota(ctx, &servicequotas.GetAWSDefaultServiceQuotaInput{ServiceCode: aws.String("bedrock"), QuotaCode: aws.String("L-HAIKUTPM")})
	if err != nil || *def.Quota.Value != 20000 {
		t.Fatalf("default quota = %+v, %v", def, err)
	}
	_, err = h.sq.GetServiceQuota(ctx, &servicequotas.GetServiceQuotaInput{ServiceCode: aws.String("bedrock"), QuotaCode: aws.String("L-NOPE")})
	var nsr *sqtypes.NoSuchResourceException
	if !errors.As(err, &nsr) {
		t.Fatalf("unknown quota: err = %v, want NoSuchResourceException", err)
	}
	list, err := h.sq.ListAWSDefaultServiceQuotas(ctx, &servicequotas.ListAWSDefaultServiceQuotasInput{ServiceCode: aws.String("bedrock")})
	if err != nil || len(list.Quotas) != len(testScenario().Quotas["us-east-1"]) {
		t.Fatalf("ListAWSDefaultServiceQuotas = %d quotas, %v", len(list.Quotas), err)
	}
}

func TestQuotaIncreaseHistoryAndApproval(t *testing.T) {
	t.Parallel()
	sc := testScenario()
	sc.ServiceQuotas.AutoApproveAfter = Duration(30 * time.Second)
	h := newHarness(t, sc)
	ctx := context.Background()
	req, err := h.sq.RequestServiceQuotaIncrease(ctx, &servicequotas.RequestServiceQuotaIncreaseInput{
		ServiceCode: aws.String("bedrock"), QuotaCode: aws.String("L-SON45XR"), DesiredValue: aws.Float64(400000),
	})
	if err != nil {
		t.Fatal(err)
	}
	if req.RequestedQuota.Status != sqtypes.RequestStatusPending || *req.RequestedQuota.DesiredValue != 400000 {
		t.Fatalf("request = %+v", req.RequestedQuota)
	}
	_, err = h.sq.RequestServiceQuotaIncrease(ctx, &servicequotas.RequestServiceQuotaIncreaseInput{
		ServiceCode: aws.String("bedrock"), QuotaCode: aws.String("L-LLAMARPM"), DesiredValue: aws.Float64(10),
	})
	if err == nil {
		t.Fatal("increase of a non-adjustable quota was accepted")
	}
	hist, err := h.sq.ListRequestedServiceQuotaChangeHistoryByQuota(ctx, &servicequotas.ListRequestedServiceQuotaChangeHistoryByQuotaInput{
		ServiceCode: aws.String("bedrock"), QuotaCode: aws.String("L-SON45XR"),
	})
	if err != nil || len(hist.RequestedQuotas) != 1 || *hist.RequestedQuotas[0].Id != *req.RequestedQuota.Id {
		t.Fatalf("history by quota = %+v, %v", hist, err)
	}
	if hist.RequestedQuotas[0].Created == nil || !hist.RequestedQuotas[0].Created.Equal(h.clock.Now()) {
		t.Fatalf("created = %v, want %v", hist.RequestedQuotas[0].Created, h.clock.Now())
	}

	h.clock.Advance(31 * time.Second)
	all, err := h.sq.ListRequestedServiceQuotaChangeHistory(ctx, &servicequotas.ListRequestedServiceQuotaChangeHistoryInput{ServiceCode: aws.String("bedrock")})
	if err != nil || len(all.RequestedQuotas) != 1 || all.RequestedQuotas[0].Status != sqtypes.RequestStatusApproved {
		t.Fatalf("history = %+v, %v", all, err)
	}
	q, err := h.sq.GetServiceQuota(ctx, &servicequotas.GetServiceQuotaInput{ServiceCode: aws.String("bedrock"), QuotaCode: aws.String("L-SON45XR")})
	if err != nil || *q.Quota.Value != 400000 {
		t.Fatalf("applied after approval = %v, %v", q, err)
	}
	// The hidden capacity keeps its ratio (50,000 of 100,000).
	if qs, _ := h.sim.Quota("us-east-1", "L-SON45XR"); qs.TrueCapacity != 200000 {
		t.Fatalf("true capacity after approval = %v, want 200000", qs.TrueCapacity)
	}
}

func TestControlPlane(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := context.Background()
	fm, err := h.br.ListFoundationModels(ctx, &bedrock.ListFoundationModelsInput{})
	if err != nil {
		t.Fatal(err)
	}
	if len(fm.ModelSummaries) != len(h.sim.Scenario().Models) {
		t.Fatalf("%d models listed, want %d", len(fm.ModelSummaries), len(h.sim.Scenario().Models))
	}
	byID := map[string]bool{}
	for _, m := range fm.ModelSummaries {
		byID[*m.ModelId] = len(m.InferenceTypesSupported) > 0 && m.ModelLifecycle != nil && *m.ProviderName != ""
	}
	if !byID[sonnet45] {
		t.Fatalf("Sonnet 4.5 missing or incomplete in %v", byID)
	}
	anth, err := h.br.ListFoundationModels(ctx, &bedrock.ListFoundationModelsInput{ByProvider: aws.String("anthropic")})
	if err != nil || len(anth.ModelSummaries) == 0 || len(anth.ModelSummaries) >= len(fm.ModelSummaries) {
		t.Fatalf("byProvider filter: %d models, %v", len(anth.ModelSummaries), err)
	}

	p := bedrock.NewListInferenceProfilesPaginator(h.br, &bedrock.ListInferenceProfilesInput{MaxResults: aws.Int32(7)})
	ids := map[string]int{}
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, ip := range out.InferenceProfileSummaries {
			ids[*ip.InferenceProfileId] = len(ip.Models)
			if ip.CreatedAt == nil || !strings.HasPrefix(*ip.InferenceProfileArn, "arn:aws:bedrock:us-east-1:") {
				t.Fatalf("profile %+v", ip)
			}
		}
	}
	if ids["us."+sonnet45] == 0 || ids["global."+sonnet45] == 0 {
		t.Fatalf("profiles listed in us-east-1: %v", ids)
	}
	if _, ok := ids["eu."+sonnet45]; ok {
		t.Fatal("an eu. profile is listed in us-east-1")
	}
	pt, err := h.br.ListProvisionedModelThroughputs(ctx, &bedrock.ListProvisionedModelThroughputsInput{})
	if err != nil || len(pt.ProvisionedModelSummaries) != 0 {
		t.Fatalf("provisioned = %+v, %v", pt, err)
	}
}

// TestControlPlaneGets covers the single-resource gets a capacity check
// makes, through the Go SDK and the AWS CLI.
func TestControlPlaneGets(t *testing.T) {
	t.Parallel()
	sc := testScenario()
	sc.ProvisionedModelThroughputs = []ProvisionedThroughput{{Name: "haiku-pt", ModelID: haiku3, ModelUnits: 1}}
	h := newHarness(t, sc)
	ctx := context.Background()
	fm, err := h.br.GetFoundationModel(ctx, &bedrock.GetFoundationModelInput{ModelIdentifier: aws.String(haiku3)})
	if err != nil || aws.ToString(fm.ModelDetails.ModelId) != haiku3 {
		t.Fatalf("GetFoundationModel: %+v %v", fm, err)
	}
	ip, err := h.br.GetInferenceProfile(ctx, &bedrock.GetInferenceProfileInput{InferenceProfileIdentifier: aws.String("us." + sonnet45)})
	if err != nil || len(ip.Models) != 2 {
		t.Fatalf("GetInferenceProfile: %+v %v", ip, err)
	}
	byName, err := h.br.GetProvisionedModelThroughput(ctx, &bedrock.GetProvisionedModelThroughputInput{ProvisionedModelId: aws.String("haiku-pt")})
	if err != nil || aws.ToInt32(byName.ModelUnits) != 1 || byName.Status != "InService" || byName.CreationTime == nil {
		t.Fatalf("GetProvisionedModelThroughput by name: %+v %v", byName, err)
	}
	byARN, err := h.br.GetProvisionedModelThroughput(ctx, &bedrock.GetProvisionedModelThroughputInput{ProvisionedModelId: byName.ProvisionedModelArn})
	if err != nil || aws.ToString(byARN.ProvisionedModelName) != "haiku-pt" {
		t.Fatalf("GetProvisionedModelThroughput by ARN: %+v %v", byARN, err)
	}
	_, err = h.br.GetProvisionedModelThroughput(ctx, &bedrock.GetProvisionedModelThroughputInput{ProvisionedModelId: aws.String("nope")})
	var nf *brtypes.ResourceNotFoundException
	if !errors.As(err, &nf) {
		t.Fatalf("unknown provisioned model: %v", err)
	}

	awsBin := tool(t, "aws")
	out, stderr, code := runTool(t, awsEnv(), awsBin, "bedrock", "get-provisioned-model-throughput", "--provisioned-model-id", "haiku-pt",
		"--endpoint-url", h.url, "--output", "json")
	var got struct{ ProvisionedModelName, Status string }
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got.ProvisionedModelName != "haiku-pt" || got.Status != "InService" {
		t.Fatalf("aws bedrock get-provisioned-model-throughput: exit %d %s %s", code, out, stderr)
	}
}
