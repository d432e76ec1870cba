package awspricing

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/bedrock"
	bedrocktypes "github.com/aws/aws-sdk-go-v2/service/bedrock/types"
	"github.com/aws/aws-sdk-go-v2/service/pricing"

	"github.com/bedrockqb/quotabroker/broker"
)

// awsDocument is a Meta document as AWS sent it (aws/aws-cli issue 9567),
// reflowed; tests edit copies of it.
const awsDocument = `{"product":{"productFamily":"Amazon Bedrock","attributes":{"regionCode":"us-east-1","inferenceType":"Input tokens",` +
	`"servicecode":"AmazonBedrock","feature":"Batch Inference","provider":"Meta","usagetype":"USE1-Llama3-1-8B-input-tokens-batch",` +
	`"locationType":"AWS Region","location":"US East (N. Virginia)","model":"Llama 3.1 8B","servicename":"Amazon Bedrock","operation":""},` +
	`"sku":"SKU1"},"serviceCode":"AmazonBedrock","terms":{"OnDemand":{"SKU1.JRTCKXETXF":{"priceDimensions":{"SKU1.JRTCKXETXF.6YS6EN2CT7":` +
	`{"unit":"1K tokens","endRange":"Inf","description":"$0.00011 per 1K tokens","appliesTo":[],"rateCode":"SKU1.JRTCKXETXF.6YS6EN2CT7",` +
	`"beginRange":"0","pricePerUnit":{"USD":"0.0001100000"}}},"sku":"SKU1","effectiveDate":"2025-06-01T00:00:00Z","offerTermCode":"JRTCKXETXF",` +
	`"termAttributes":{}}}},"version":"20250618225550","publicationDate":"2025-06-18T22:55:50Z"}`

func TestReadDocumentAWSSample(t *testing.T) {
	p, reason, err := readDocument(ServiceCodeBedrock, "us-east-1", 0, awsDocument)
	if err != nil || reason != "" {
		t.Fatalf("%v %q", err, reason)
	}
	if p.sku != "SKU1" || p.name != "Llama 3.1 8B" || p.provider != "Meta" || p.kind.rate != broker.RateBatchInput || p.kind.global || !near(p.perK, 0.00011) {
		t.Errorf("%+v", p)
	}
}

// TestReadDocumentShapes: each broken document names its product and the
// field at fault.
func TestReadDocumentShapes(t *testing.T) {
	for _, tc := range []struct {
		name, from, to, sku, field string
	}{
		{"not JSON", awsDocument, `{"product":`, "", "(document)"},
		{"no sku", `"sku":"SKU1"},"serviceCode"`, `"sku":""},"serviceCode"`, "", "product.sku"},
		{"attribute not a string", `"operation":""`, `"operation":7`, "SKU1", "product.attributes.operation"},
		{"no attributes", `"attributes":{`, `"attributez":{`, "SKU1", "product.attributes"},
		{"other service", `"serviceCode":"AmazonBedrock"`, `"serviceCode":"AmazonEC2"`, "SKU1", "serviceCode"},
		{"other Region", `"regionCode":"us-east-1"`, `"regionCode":"us-west-2"`, "SKU1", "product.attributes.regionCode"},
		{"no usagetype", `"usagetype":"USE1-Llama3-1-8B-input-tokens-batch",`, ``, "SKU1", "product.attributes.usagetype"},
		{"no terms", `"terms":{"OnDemand"`, `"termz":{"OnDemand"`, "SKU1", "terms.OnDemand"},
		{"price not a number", `"USD":"0.0001100000"`, `"USD":"cheap"`, "SKU1", "terms.OnDemand.SKU1.JRTCKXETXF.priceDimensions.SKU1.JRTCKXETXF.6YS6EN2CT7.pricePerUnit.USD"},
		{"negative price", `"USD":"0.0001100000"`, `"USD":"-1"`, "SKU1", "terms.OnDemand.SKU1.JRTCKXETXF.priceDimensions.SKU1.JRTCKXETXF.6YS6EN2CT7.pricePerUnit.USD"},
		{"no USD", `"USD":"0.0001100000"`, `"CNY":"0.0008"`, "SKU1", "terms.OnDemand.SKU1.JRTCKXETXF.priceDimensions.SKU1.JRTCKXETXF.6YS6EN2CT7.pricePerUnit.USD"},
		{"unknown unit", `"unit":"1K tokens"`, `"unit":"Images"`, "SKU1", "terms.OnDemand.SKU1.JRTCKXETXF.priceDimensions.SKU1.JRTCKXETXF.6YS6EN2CT7.unit"},
		{"tiered", `"pricePerUnit":{"USD":"0.0001100000"}}}`, `"pricePerUnit":{"USD":"0.0001100000"}},"SKU1.JRTCKXETXF.X":{"unit":"1K tokens","pricePerUnit":{"USD":"1"}}}`,
			"SKU1", "terms.OnDemand.SKU1.JRTCKXETXF.priceDimensions"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := strings.Replace(awsDocument, tc.from, tc.to, 1)
			if text == awsDocument {
				t.Fatal("the edit changed nothing")
			}
			_, _, err := readDocument(ServiceCodeBedrock, "us-east-1", 3, text)
			var se *ShapeError
			if !errors.As(err, &se) {
				t.Fatalf("error %v, want a ShapeError", err)
			}
			if se.SKU != tc.sku || se.Field != tc.field || se.Index != 3 {
				t.Errorf("sku %q field %q index %d, want %q %q", se.SKU, se.Field, se.Index, tc.sku, tc.field)
			}
			want := "product " + tc.sku
			if tc.sku == "" {
				want = "document 3"
			}
			if msg := se.Error(); !strings.Contains(msg, want) || !strings.Contains(msg, tc.field) || !strings.Contains(msg, "AmazonBedrock in us-east-1") {
				t.Errorf("message %q", msg)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	mp := func(ut string) map[string]string {
		return map[string]string{"servicename": "Claude Sonnet 4.5 (Amazon Bedrock Edition)", "usagetype": ut}
	}
	br := func(feature, inferenceType string) map[string]string {
		return map[string]string{"model": "Nova Pro", "feature": feature, "inferenceType": inferenceType}
	}
	for _, tc := range []struct {
		attrs       map[string]string
		marketplace bool
		want        rateKind
	}{
		{mp("USE1-MP:USE1_InputTokenCount-Units"), true, rateKind{rate: broker.RateInput}},
		{mp("USE1-MP:USE1_OutputTokenCount_Global-Units"), true, rateKind{rate: broker.RateOutput, global: true}},
		{mp("APS3-MP:APS3_CacheReadInputTokenCount-Units"), true, rateKind{rate: broker.RateCacheRead}},
		{mp("USE1-MP:USE1_CacheWriteInputTokenCount_Global-Units"), true, rateKind{rate: broker.RateCacheWrite, global: true}},
		{mp("USW2-MP:USW2_input_tokens_standard-Units"), true, rateKind{rate: broker.RateInput}},
		{mp("USW2-MP:USW2_output_tokens_global_standard-Units"), true, rateKind{rate: broker.RateOutput, global: true}},
		{mp("USW2-MP:USW2_cache_read_input_tokens_standard-Units"), true, rateKind{rate: broker.RateCacheRead}},
		{mp("USE1-MP:USE1_InputTokenCount_Batch-Units"), true, rateKind{rate: broker.RateBatchInput}},
		// Not charged by the broker: skipped.
		{mp("USE1-MP:USE1_CacheWrite1hInputTokenCount-Units"), true, rateKind{}},
		{mp("USE1-MP:USE1_InputTokenCount_LCtx-Units"), true, rateKind{}},
		{mp("USE1-MP:USE1_output_tokens_flex-Units"), true, rateKind{}},
		{mp("USE1-MP:USE1_Created_Image-Units"), true, rateKind{}},
		{mp("USE1-InputTokenCount"), true, rateKind{}},
		{map[string]string{"servicename": "Amazon Bedrock", "usagetype": "USE1-MP:USE1_InputTokenCount-Units"}, true, rateKind{}},
		{br("On-demand Inference", "Input tokens"), false, rateKind{rate: broker.RateInput}},
		{br("On-demand Inference", "Output Tokens"), false, rateKind{rate: broker.RateOutput}},
		{br("On-demand Inference", "Cache read input tokens"), false, rateKind{rate: broker.RateCacheRead}},
		{br("Batch Inference", "Output tokens"), false, rateKind{rate: broker.RateBatchOutput}},
		{br("Batch Inference", "Cache read input tokens"), false, rateKind{}},
		{br("Provisioned Throughput", "Model unit hours"), false, rateKind{}},
		{br("On-demand Inference", "Images"), false, rateKind{}},
		{map[string]string{"feature": "On-demand Inference", "inferenceType": "Input tokens"}, false, rateKind{}},
		{map[string]string{"model": "Nova Pro", "feature": "On-demand Inference", "inferenceType": "Input tokens", "service_tier": "flex"}, false, rateKind{}},
	} {
		var got rateKind
		var reason string
		if tc.marketplace {
			_, got, reason = classifyMarketplace(tc.attrs)
		} else {
			_, got, reason = classifyBedrock(tc.attrs)
		}
		if got != tc.want || (tc.want.rate == 0) != (reason != "") {
			t.Errorf("%v: %+v %q, want %+v", tc.attrs, got, reason, tc.want)
		}
	}
}

// fakeProducts serves pages from a list, following its own tokens; repeat
// makes it hand back the same token forever.
type fakeProducts struct {
	pages  [][]string
	repeat bool
}

func (f *fakeProducts) GetProducts(_ context.Context, in *pricing.GetProductsInput, _ ...func(*pricing.Options)) (*pricing.GetProductsOutput, error) {
	i := 0
	if in.NextToken != nil {
		i = int((*in.NextToken)[0] - '0')
	}
	out := &pricing.GetProductsOutput{}
	if aws.ToString(in.ServiceCode) == ServiceCodeBedrock {
		out.PriceList = f.pages[i]
		if i+1 < len(f.pages) {
			out.NextToken = aws.String(string(rune('0' + i + 1)))
		}
		if f.repeat {
			out.NextToken = aws.String("1")
		}
	}
	return out, nil
}

type fakeBedrock struct{}

func (fakeBedrock) ListFoundationModels(context.Context, *bedrock.ListFoundationModelsInput, ...func(*bedrock.Options)) (*bedrock.ListFoundationModelsOutput, error) {
	return &bedrock.ListFoundationModelsOutput{ModelSummaries: []bedrocktypes.FoundationModelSummary{
		{ModelId: aws.String("meta.llama3-1-8b-instruct-v1:0"), ModelName: aws.String("Llama 3.1 8B Instruct"), ProviderName: aws.String("Meta")},
	}}, nil
}

func (fakeBedrock) ListInferenceProfiles(context.Context, *bedrock.ListInferenceProfilesInput, ...func(*bedrock.Options)) (*bedrock.ListInferenceProfilesOutput, error) {
	return &bedrock.ListInferenceProfilesOutput{}, nil
}

func TestPagination(t *testing.T) {
	output := strings.NewReplacer(`"Input tokens"`, `"Output tokens"`, `"SKU1`, `"SKU2`, "input-tokens", "output-tokens").Replace(awsDocument)
	empty := &fakeProducts{pages: [][]string{{awsDocument}, {}, {output}}}
	src, err := newSource(Config{Regions: []string{"us-east-1"}}, func(context.Context, string) (clients, error) {
		return clients{products: empty, models: fakeBedrock{}, profiles: fakeBedrock{}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	res, err := src.Inspect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Both batch rates, across an empty page; no on-demand rate, so unpriced.
	k := broker.PriceKey{Region: "us-east-1", Model: "meta.llama3-1-8b-instruct-v1:0"}
	if p := res.Prices[k]; p.Has != broker.RateBatchInput|broker.RateBatchOutput || p.Source != "aws pricing (AmazonBedrock, 2025-06-18)" {
		t.Errorf("%+v", p)
	}
	if !slices.Contains(res.Unpriced, k) {
		t.Errorf("unpriced %v", res.Unpriced)
	}
	loop := &fakeProducts{pages: [][]string{{awsDocument}, {output}}, repeat: true}
	src, _ = newSource(Config{Regions: []string{"us-east-1"}}, func(context.Context, string) (clients, error) {
		return clients{products: loop, models: fakeBedrock{}, profiles: fakeBedrock{}}, nil
	})
	if _, err := src.Inspect(context.Background()); err == nil || !strings.Contains(err.Error(), "same NextToken twice") {
		t.Errorf("a token repeated: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	for _, cfg := range []Config{{}, {Regions: []string{"US East"}}, {Regions: []string{"us-east-1"}, APIRegion: "us-west-2"}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
}

func FuzzReadDocument(f *testing.F) {
	f.Add(awsDocument)
	f.Add(`{"product":{"sku":"X","attributes":{"regionCode":"us-east-1","usagetype":"u"}},"serviceCode":"AmazonBedrock"}`)
	f.Fuzz(func(t *testing.T, text string) {
		p, reason, err := readDocument(ServiceCodeBedrock, "us-east-1", 0, text)
		if err == nil && reason == "" && (p.kind.rate == 0 || p.perK < 0 || p.sku == "") {
			t.Fatalf("accepted %+v", p)
		}
	})
}
