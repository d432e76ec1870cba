package awsquota

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/bedrock"
	brtypes "github.com/aws/aws-sdk-go-v2/service/bedrock/types"
	"github.com/aws/aws-sdk-go-v2/service/servicequotas"
	sqtypes "github.com/aws/aws-sdk-go-v2/service/servicequotas/types"
	"github.com/aws/smithy-go"

	"github.com/bedrockqb/quotabroker/broker"
)

// Fakes of the four SDK calls, as func types.
type (
	listQuotasFunc   func(context.Context, *servicequotas.ListServiceQuotasInput, ...func(*servicequotas.Options)) (*servicequotas.ListServiceQuotasOutput, error)
	listDefaultsFunc func(context.Context, *servicequotas.ListAWSDefaultServiceQuotasInput, ...func(*servicequotas.Options)) (*servicequotas.ListAWSDefaultServiceQuotasOutput, error)
	listModelsFunc   func(context.Context, *bedrock.ListFoundationModelsInput, ...func(*bedrock.Options)) (*bedrock.ListFoundationModelsOutput, error)
	listProfilesFunc func(context.Context, *bedrock.ListInferenceProfilesInput, ...func(*bedrock.Options)) (*bedrock.ListInferenceProfilesOutput, error)
)

func (f listQuotasFunc) ListServiceQuotas(ctx context.Context, in *servicequotas.ListServiceQuotasInput, o ...func(*servicequotas.Options)) (*servicequotas.ListServiceQuotasOutput, error) {
	return f(ctx, in, o...)
}
func (f listDefaultsFunc) ListAWSDefaultServiceQuotas(ctx context.Context, in *servicequotas.ListAWSDefaultServiceQuotasInput, o ...func(*servicequotas.Options)) (*servicequotas.ListAWSDefaultServiceQuotasOutput, error) {
	return f(ctx, in, o...)
}
func (f listModelsFunc) ListFoundationModels(ctx context.Context, in *bedrock.ListFoundationModelsInput, o ...func(*bedrock.Options)) (*bedrock.ListFoundationModelsOutput, error) {
	return f(ctx, in, o...)
}
func (f listProfilesFunc) ListInferenceProfiles(ctx context.Context, in *bedrock.ListInferenceProfilesInput, o ...func(*bedrock.Options)) (*bedrock.ListInferenceProfilesOutput, error) {
	return f(ctx, in, o...)
}

func sq(code, name string, v float64) sqtypes.ServiceQuota {
	return sqtypes.ServiceQuota{ServiceCode: aws.String("bedrock"), QuotaCode: aws.String(code), QuotaName: aws.String(name), Value: aws.Float64(v), Adjustable: true}
}

// pages serves quota pages in order, keyed by the token that asks for
// them ("" for the first); each page's NextToken is the next key.
type pages [][]sqtypes.ServiceQuota

func (p pages) serve(t testing.TB, calls *[]string) func(token *string) ([]sqtypes.ServiceQuota, *string) {
	return func(token *string) ([]sqtypes.ServiceQuota, *string) {
		tok := aws.ToString(token)
		*calls = append(*calls, tok)
		i := 0
		if tok != "" {
			if _, err := fmt.Sscanf(tok, "page-%d", &i); err != nil {
				t.Errorf("unexpected token %q", tok)
				return nil, nil
			}
		}
		if i >= len(p) {
			t.Errorf("token %q past the last page", tok)
			return nil, nil
		}
		var next *string
		if i+1 < len(p) {
			next = aws.String(fmt.Sprintf("page-%d", i+1))
		}
		return p[i], next
	}
}

const arn = "arn:aws:bedrock:us-east-1::foundation-model/"

// testCatalogue is a small Region: an on-demand model with geo profiles, a
// profile-only model with geo and global profiles, and an on-demand model.
var testModels = []brtypes.FoundationModelSummary{
	{ModelId: aws.String("anthropic.claude-3-haiku-20240307-v1:0"), ModelName: aws.String("Claude 3 Haiku"), ProviderName: aws.String("Anthropic"),
		InferenceTypesSupported: []brtypes.InferenceType{"ON_DEMAND", "INFERENCE_PROFILE"}},
	{ModelId: aws.String("anthropic.claude-sonnet-4-5-20250929-v1:0"), ModelName: aws.String("Claude Sonnet 4.5"), ProviderName: aws.String("Anthropic"),
		InferenceTypesSupported: []brtypes.InferenceType{"INFERENCE_PROFILE"}},
	{ModelId: aws.String("amazon.nova-lite-v1:0"), ModelName: aws.String("Nova Lite"), ProviderName: aws.String("Amazon"),
		InferenceTypesSupported: []brtypes.InferenceType{"ON_DEMAND", "INFERENCE_PROFILE"}},
}

func profile(id, model string) brtypes.InferenceProfileSummary {
	return brtypes.InferenceProfileSummary{InferenceProfileId: aws.String(id), Type: brtypes.InferenceProfileTypeSystemDefined,
		Models: []brtypes.InferenceProfileModel{{ModelArn: aws.String(arn + model)}}}
}

var testProfiles = [][]brtypes.InferenceProfileSummary{
	{
		profile("us.anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku-20240307-v1:0"),
		profile("eu.anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku-20240307-v1:0"),
		profile("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "anthropic.claude-sonnet-4-5-20250929-v1:0"),
	},
	{}, // an empty page in the middle: listing must go on
	{
		profile("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "anthropic.claude-sonnet-4-5-20250929-v1:0"),
		profile("us.amazon.nova-lite-v1:0", "amazon.nova-lite-v1:0"),
		// The account's own alias of a system profile: not matched against.
		{InferenceProfileId: aws.String("abc123"), Type: brtypes.InferenceProfileTypeApplication,
			Models: []brtypes.InferenceProfileModel{{ModelArn: aws.String(arn + "amazon.nova-lite-v1:0")}}},
	},
}

// fake is one Region of a fake account.
type fake struct {
	applied, defaults pages
	errQuotas         error // returned by ListServiceQuotas
	errDefaults       error
	errModels         error
	errProfiles       error

	quotaCalls, defaultCalls, profileCalls []string
}

func (f *fake) clients(t testing.TB) clients {
	applied := f.applied.serve(t, &f.quotaCalls)
	defaults := f.defaults.serve(t, &f.defaultCalls)
	return clients{
		quotas: listQuotasFunc(func(_ context.Context, in *servicequotas.ListServiceQuotasInput, _ ...func(*servicequotas.Options)) (*servicequotas.ListServiceQuotasOutput, error) {
			if aws.ToString(in.ServiceCode) != "bedrock" {
				t.Errorf("ListServiceQuotas for service %q", aws.ToString(in.ServiceCode))
			}
			if f.errQuotas != nil {
				return nil, f.errQuotas
			}
			qs, next := applied(in.NextToken)
			return &servicequotas.ListServiceQuotasOutput{Quotas: qs, NextToken: next}, nil
		}),
		defaults: listDefaultsFunc(func(_ context.Context, in *servicequotas.ListAWSDefaultServiceQuotasInput, _ ...func(*servicequotas.Options)) (*servicequotas.ListAWSDefaultServiceQuotasOutput, error) {
			if f.errDefaults != nil {
				return nil, f.errDefaults
			}
			qs, next := defaults(in.NextToken)
			return &servicequotas.ListAWSDefaultServiceQuotasOutput{Quotas: qs, NextToken: next}, nil
		}),
		models: listModelsFunc(func(context.Context, *bedrock.ListFoundationModelsInput, ...func(*bedrock.Options)) (*bedrock.ListFoundationModelsOutput, error) {
			if f.errModels != nil {
				return nil, f.errModels
			}
			return &bedrock.ListFoundationModelsOutput{ModelSummaries: testModels}, nil
		}),
		profiles: listProfilesFunc(func(_ context.Context, in *bedrock.ListInferenceProfilesInput, _ ...func(*bedrock.Options)) (*bedrock.ListInferenceProfilesOutput, error) {
			if f.errProfiles != nil {
				return nil, f.errProfiles
			}
			tok := aws.ToString(in.NextToken)
			f.profileCalls = append(f.profileCalls, tok)
			i := 0
			if tok != "" {
				fmt.Sscanf(tok, "p%d", &i)
			}
			out := &bedrock.ListInferenceProfilesOutput{InferenceProfileSummaries: testProfiles[i]}
			if i+1 < len(testProfiles) {
				out.NextToken = aws.String(fmt.Sprintf("p%d", i+1))
			}
			return out, nil
		}),
	}
}

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newFakeSource(t testing.TB, regions map[string]*fake) *Source {
	t.Helper()
	var names []string
	for r := range regions {
		names = append(names, r)
	}
	slices.Sort(names)
	s, err := newSource(Config{Regions: names, Now: func() time.Time { return testNow }}, func(_ context.Context, region string) (clients, error) {
		return regions[region].clients(t), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checkAccounted is the invariant that no quota is dropped: every row is
// either runtime (it set a limit of some budget) or skipped with a reason,
// never both, and the skipped list is exactly the non-runtime rows.
func checkAccounted(t testing.TB, res Result) {
	t.Helper()
	skipped := map[string]int{}
	for _, s := range res.Skipped {
		if s.Reason == "" {
			t.Errorf("skipped %s %s %q without a reason", s.Region, s.Code, s.Name)
		}
		skipped[s.Region+"/"+s.Code+"/"+s.Name]++
	}
	runtime := 0
	for _, q := range res.Quotas {
		k := q.Region + "/" + q.QuotaCode + "/" + q.QuotaName
		switch n := skipped[k]; {
		case q.Runtime && n != 0:
			t.Errorf("%s: runtime and skipped", k)
		case !q.Runtime && n != 1:
			t.Errorf("%s: not runtime, skipped %d times", k, n)
		case !q.Runtime && q.Reason == "":
			t.Errorf("%s: not runtime, no reason", k)
		case q.Runtime && len(q.ModelIDs) == 0:
			t.Errorf("%s: runtime without model ids", k)
		}
		if q.Runtime {
			runtime++
		}
	}
	if runtime+len(res.Skipped) != len(res.Quotas) {
		t.Errorf("%d runtime + %d skipped != %d quotas", runtime, len(res.Skipped), len(res.Quotas))
	}
	// Every budget limit comes from some runtime quota and every spec has
	// at least one limit.
	for _, s := range res.Specs {
		if s.Quota == (broker.Limits{}) {
			t.Errorf("budget %s has no limit", s.Key)
		}
	}
}

const (
	haiku  = "anthropic.claude-3-haiku-20240307-v1:0"
	sonnet = "anthropic.claude-sonnet-4-5-20250929-v1:0"
	nova   = "amazon.nova-lite-v1:0"
)

func TestDiscover(t *testing.T) {
	t.Parallel()
	f := &fake{
		applied: pages{
			{
				sq("L-HAIKU-RPM", "On-demand model inference requests per minute for Anthropic Claude 3 Haiku", 800),
				sq("L-HAIKU-TPM", "On-demand model inference tokens per minute for Anthropic Claude 3 Haiku", 2_000_000),
			},
			{}, // empty page with a NextToken, as AWS sends
			{
				sq("L-HAIKU-GEO", "Cross-region model inference tokens per minute for Anthropic Claude 3 Haiku", 4_000_000),
				sq("L-HAIKU-TPD", "Model invocation max tokens per day for Anthropic Claude 3 Haiku (doubled for cross-region calls)", 1_000_000),
				sq("L-SONNET-GEO", "Cross-region model inference tokens per minute for Anthropic Claude Sonnet 4.5 V1", 500_000),
				sq("L-SONNET-GLOBAL", "Global cross-region model inference tokens per minute for Anthropic Claude Sonnet 4.5 V1", 1_000_000),
				sq("L-SONNET-TPD", "Model invocation max tokens per day for Anthropic Claude Sonnet 4.5 V1", 720_000),
				sq("L-SONNET-1M", "Cross-region model inference tokens per minute for Anthropic Claude Sonnet 4.5 V1 1M Context Length", 100_000),
				sq("L-NOVA-LAT", "On-demand latency-optimized model inference tokens per minute for Amazon Nova Lite", 100),
				sq("L-NOVA-ZERO", "On-demand model inference tokens per minute for Amazon Nova Lite", 0),
				sq("L-PT", "Model units per provisioned model for Anthropic Claude 3 Haiku 200K", 0),
				sq("L-BATCH", "Records per batch inference job for Claude 3 Haiku", 50000),
				sq("L-MANTLE", "[bedrock-mantle endpoint] Input tokens per minute for Amazon Nova Lite", 1000),
				sq("L-UNKNOWN", "On-demand model inference tokens per minute for Zeta Labs Frobnicator 9", 1000),
			},
		},
		defaults: pages{
			{sq("L-HAIKU-RPM", "On-demand model inference requests per minute for Anthropic Claude 3 Haiku", 1000)},
			{sq("L-NOVA-RPM", "On-demand model inference requests per minute for Amazon Nova Lite", 500)},
		},
	}
	src := newFakeSource(t, map[string]*fake{"us-east-1": f})
	res, err := src.Inspect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checkAccounted(t, res)

	if want := []string{"", "page-1", "page-2"}; !slices.Equal(f.quotaCalls, want) {
		t.Errorf("ListServiceQuotas tokens %q, want %q", f.quotaCalls, want)
	}
	if want := []string{"", "page-1"}; !slices.Equal(f.defaultCalls, want) {
		t.Errorf("ListAWSDefaultServiceQuotas tokens %q, want %q", f.defaultCalls, want)
	}
	if want := []string{"", "p1", "p2"}; !slices.Equal(f.profileCalls, want) {
		t.Errorf("ListInferenceProfiles tokens %q, want %q", f.profileCalls, want)
	}

	got := map[broker.Key]broker.Limits{}
	for _, s := range res.Specs {
		got[s.Key] = s.Quota
		if s.Source != "aws:service-quotas:us-east-1" || !s.SourceTime.Equal(testNow) {
			t.Errorf("%s: source %q at %v", s.Key, s.Source, s.SourceTime)
		}
	}
	key := func(scope broker.Scope, model string) broker.Key {
		return broker.Key{Region: "us-east-1", Scope: scope, Model: model}
	}
	want := map[broker.Key]broker.Limits{
		// Applied 800 wins over the default 1000.
		key(broker.ScopeOnDemand, haiku): {RPM: 800, TPM: 2_000_000, TPD: 1_000_000},
		// Doubled for cross-region calls.
		key(broker.ScopeCrossRegion, haiku): {TPM: 4_000_000, TPD: 2_000_000},
		// Profile quotas are keyed by the base model id; the TPD row
		// without "doubled" sets the geo profile's TPD as it is.
		key(broker.ScopeCrossRegion, sonnet): {TPM: 500_000, TPD: 720_000},
		key(broker.ScopeGlobal, sonnet):      {TPM: 1_000_000},
		// Only in the default listing: still a quota AWS enforces.
		key(broker.ScopeOnDemand, nova): {RPM: 500},
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("budget %s = %+v, want %+v", k, got[k], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d budgets, want %d: %v", len(got), len(want), got)
	}

	q := map[string]Quota{}
	for _, x := range res.Quotas {
		q[x.QuotaCode] = x
	}
	if x := q["L-HAIKU-RPM"]; x.Source != sourceApplied || x.DefaultValue == nil || *x.DefaultValue != 1000 || x.Value != 800 {
		t.Errorf("merged applied quota: %+v", x)
	}
	if x := q["L-NOVA-RPM"]; x.Source != sourceDefault || x.Value != 500 || !x.Runtime {
		t.Errorf("default-only quota: %+v", x)
	}
	if x := q["L-SONNET-GEO"]; x.ModelID != sonnet || !slices.Equal(x.ModelIDs, []string{"us." + sonnet}) || x.Provider != "Anthropic" || x.Model != "Claude Sonnet 4.5 V1" {
		t.Errorf("geo quota: %+v", x)
	}
	if x := q["L-SONNET-GLOBAL"]; !slices.Equal(x.ModelIDs, []string{"global." + sonnet}) {
		t.Errorf("global quota: %+v", x)
	}
	if x := q["L-HAIKU-TPD"]; !slices.Equal(x.ModelIDs, []string{haiku, "eu." + haiku, "us." + haiku}) || x.Reason != "" {
		t.Errorf("doubled TPD quota: %+v", x)
	}
	if x := q["L-SONNET-TPD"]; !x.Runtime || !strings.Contains(x.Reason, "on-demand part not applied") {
		t.Errorf("profile-only TPD quota: %+v", x)
	}
	for code, reason := range map[string]string{
		"L-SONNET-1M": "1M context-length variant",
		"L-NOVA-LAT":  "latency-optimized variant",
		"L-NOVA-ZERO": reasonZero,
		"L-PT":        "not a runtime quota (provisioned)",
		"L-BATCH":     "not a runtime quota (batch)",
		"L-MANTLE":    "not a runtime quota (mantle)",
		"L-UNKNOWN":   "Zeta Labs",
	} {
		if x := q[code]; x.Runtime || !strings.Contains(x.Reason, reason) {
			t.Errorf("%s: runtime %v, reason %q, want it to say %q", code, x.Runtime, x.Reason, reason)
		}
	}
}

func TestDiscoverErrors(t *testing.T) {
	t.Parallel()
	denied := &sqtypes.AccessDeniedException{Message: aws.String("User: arn:aws:iam::123456789012:role/broker is not authorized to perform: servicequotas:ListServiceQuotas")}
	for _, tc := range []struct {
		name   string
		fake   fake
		want   string
		target any
	}{
		{"access denied", fake{errQuotas: denied},
			"list service quotas in us-east-1: access denied (AccessDeniedException): the broker's role needs servicequotas:ListServiceQuotas; AWS says: User:",
			new(*sqtypes.AccessDeniedException)},
		{"throttled", fake{errQuotas: &sqtypes.TooManyRequestsException{Message: aws.String("Rate exceeded")}},
			"list service quotas in us-east-1: throttled (TooManyRequestsException) even after the SDK's retries",
			new(*sqtypes.TooManyRequestsException)},
		{"defaults: no such resource", fake{errDefaults: &sqtypes.NoSuchResourceException{Message: aws.String("no")}},
			"list default service quotas in us-east-1: not found (NoSuchResourceException)",
			new(*sqtypes.NoSuchResourceException)},
		{"models: generic API error", fake{errModels: &smithy.GenericAPIError{Code: "AccessDeniedException", Message: "denied"}},
			"list foundation models in us-east-1: access denied (AccessDeniedException): the broker's role needs bedrock:ListFoundationModels; AWS says: denied",
			new(*smithy.GenericAPIError)},
		{"profiles: throttled", fake{errProfiles: &brtypes.ThrottlingException{Message: aws.String("slow down")}},
			"list inference profiles in us-east-1: throttled (ThrottlingException)",
			new(*brtypes.ThrottlingException)},
		{"network", fake{errQuotas: errors.New("dial tcp: connection refused")},
			"list service quotas in us-east-1: dial tcp: connection refused", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.fake
			f.applied = pages{{sq("L-1", "On-demand model inference tokens per minute for Amazon Nova Lite", 1)}}
			f.defaults = pages{{}}
			src := newFakeSource(t, map[string]*fake{"us-east-1": &f})
			d, err := src.Discover(context.Background())
			if err == nil {
				t.Fatalf("no error; %d specs", len(d.Specs))
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("error:\n got %s\nwant %s...", err, tc.want)
			}
			if tc.target != nil && !errors.As(err, tc.target) {
				t.Errorf("error %v does not unwrap to %T", err, tc.target)
			}
		})
	}
}

// A service that hands back the token it was given must not make the
// Source loop until its timeout.
func TestPaginationLoop(t *testing.T) {
	t.Parallel()
	calls := 0
	c := clients{quotas: listQuotasFunc(func(context.Context, *servicequotas.ListServiceQuotasInput, ...func(*servicequotas.Options)) (*servicequotas.ListServiceQuotasOutput, error) {
		calls++
		return &servicequotas.ListServiceQuotasOutput{NextToken: aws.String("same")}, nil
	})}
	_, err := fetchQuotas(context.Background(), c, "us-east-1", testNow)
	if err == nil || !strings.Contains(err.Error(), "same NextToken twice") || calls != 2 {
		t.Fatalf("err %v after %d calls", err, calls)
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{{}, {Regions: []string{"us-east-1", "US East"}}} {
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "Config.Regions") {
			t.Errorf("New(%+v): %v, want an error naming Config.Regions", cfg, err)
		}
	}
	s, err := New(Config{Regions: []string{"us-east-1", "eu-west-1", "us-east-1"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Regions(); !slices.Equal(got, []string{"us-east-1", "eu-west-1"}) {
		t.Errorf("Regions() = %q", got)
	}
}

// Two names matched to one model set the same limit twice: the lower wins
// and the other is reported, not dropped.
func TestSupersededQuota(t *testing.T) {
	t.Parallel()
	f := &fake{
		applied: pages{{
			sq("L-A", "On-demand InvokeModel tokens per minute for Anthropic Claude 3 Haiku", 300_000),
			sq("L-B", "On-demand model inference tokens per minute for Anthropic Claude 3 Haiku", 200_000),
		}},
		defaults: pages{{}},
	}
	res, err := newFakeSource(t, map[string]*fake{"us-east-1": f}).Inspect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checkAccounted(t, res)
	if len(res.Specs) != 1 || res.Specs[0].Quota.TPM != 200_000 {
		t.Fatalf("specs %+v", res.Specs)
	}
	if len(res.Skipped) != 1 || res.Skipped[0].Code != "L-A" || !strings.HasPrefix(res.Skipped[0].Reason, "superseded: L-B") {
		t.Errorf("skipped %+v", res.Skipped)
	}
}
