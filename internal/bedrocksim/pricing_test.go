package bedrocksim

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/pricing"
	pricingtypes "github.com/aws/aws-sdk-go-v2/service/pricing/types"
)

// priceDoc is the part of an aws_v1 price document the tests read.
type priceDoc struct {
	Product struct {
		SKU        string            `json:"sku"`
		Attributes map[string]string `json:"attributes"`
	} `json:"product"`
	ServiceCode string `json:"serviceCode"`
	Terms       struct {
		OnDemand map[string]struct {
			SKU             string `json:"sku"`
			OfferTermCode   string `json:"offerTermCode"`
			PriceDimensions map[string]struct {
				Unit         string            `json:"unit"`
				RateCode     string            `json:"rateCode"`
				PricePerUnit map[string]string `json:"pricePerUnit"`
			} `json:"priceDimensions"`
		} `json:"OnDemand"`
	} `json:"terms"`
}

func (d priceDoc) onlyPrice(t *testing.T) (unit string, usd float64) {
	t.Helper()
	if len(d.Terms.OnDemand) != 1 {
		t.Fatalf("%s: %d OnDemand terms", d.Product.SKU, len(d.Terms.OnDemand))
	}
	for code, term := range d.Terms.OnDemand {
		if code != d.Product.SKU+"."+onDemandTermCode || term.SKU != d.Product.SKU || term.OfferTermCode != onDemandTermCode {
			t.Fatalf("%s: term %q %+v", d.Product.SKU, code, term)
		}
		for rc, dim := range term.PriceDimensions {
			if rc != code+"."+onDemandRateCode || dim.RateCode != rc {
				t.Fatalf("%s: rate code %q %q", d.Product.SKU, rc, dim.RateCode)
			}
			v, err := strconv.ParseFloat(dim.PricePerUnit["USD"], 64)
			if err != nil {
				t.Fatalf("%s: USD %q", d.Product.SKU, dim.PricePerUnit["USD"])
			}
			return dim.Unit, v
		}
	}
	t.Fatalf("%s: no price dimension", d.Product.SKU)
	return "", 0
}

func newPricingClient(url string) *pricing.Client {
	return pricing.NewFromConfig(awsConfig("us-east-1"), func(o *pricing.Options) { o.BaseEndpoint = aws.String(url) })
}

// TestPricingGetProductsSDK lists the Bedrock price lists with the real SDK:
// every page (NextToken), filters, both service codes, the document shape.
func TestPricingGetProductsSDK(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	pc := newPricingClient(h.url)
	ctx := context.Background()
	list := func(code string, filters ...pricingtypes.Filter) []priceDoc {
		var docs []priceDoc
		var token *string
		pages := 0
		for {
			out, err := pc.GetProducts(ctx, &pricing.GetProductsInput{
				ServiceCode: aws.String(code), Filters: filters, FormatVersion: aws.String("aws_v1"),
				MaxResults: aws.Int32(7), NextToken: token,
			})
			if err != nil {
				t.Fatalf("GetProducts %s: %v", code, err)
			}
			if aws.ToString(out.FormatVersion) != "aws_v1" || len(out.PriceList) > 7 {
				t.Fatalf("page: format %q, %d documents", aws.ToString(out.FormatVersion), len(out.PriceList))
			}
			for _, s := range out.PriceList {
				var d priceDoc
				if err := json.Unmarshal([]byte(s), &d); err != nil {
					t.Fatalf("document is not JSON: %v\n%s", err, s)
				}
				docs = append(docs, d)
			}
			pages++
			if token = out.NextToken; token == nil {
				break
			}
		}
		if len(docs) > 7 && pages < 2 {
			t.Fatalf("%d documents in %d pages", len(docs), pages)
		}
		return docs
	}
	region := pricingtypes.Filter{Type: pricingtypes.FilterTypeTermMatch, Field: aws.String("regionCode"), Value: aws.String("us-east-1")}

	bedrockDocs := list(ServiceCodeBedrock, region)
	found := false
	for _, d := range bedrockDocs {
		a := d.Product.Attributes
		if d.ServiceCode != ServiceCodeBedrock || a["regionCode"] != "us-east-1" || a["servicecode"] != ServiceCodeBedrock {
			t.Fatalf("filtered on us-east-1, got %+v", d)
		}
		if a["model"] == "Nova Pro" && a["feature"] == "On-demand Inference" && a["inferenceType"] == "Output tokens" {
			found = true
			if unit, usd := d.onlyPrice(t); unit != "1K tokens" || usd != 0.0032 {
				t.Errorf("Nova Pro output: %v per %q, want 0.0032 per 1K tokens", usd, unit)
			}
			if a["usagetype"] != "USE1-NovaPro-output-tokens" {
				t.Errorf("usagetype %q", a["usagetype"])
			}
		}
	}
	if !found {
		t.Fatal("no Nova Pro output price in us-east-1")
	}

	fm := list(ServiceCodeFoundationModels, region,
		pricingtypes.Filter{Type: pricingtypes.FilterTypeTermMatch, Field: aws.String("servicename"), Value: aws.String("Claude Sonnet 4.5 (Amazon Bedrock Edition)")})
	rates := map[string]float64{}
	for _, d := range fm {
		unit, usd := d.onlyPrice(t)
		if unit != "1M tokens" {
			t.Fatalf("Marketplace unit %q", unit)
		}
		rates[d.Product.Attributes["usagetype"]] = usd
	}
	want := map[string]float64{
		"USE1-MP:USE1_InputTokenCount-Units": 3.3, "USE1-MP:USE1_OutputTokenCount-Units": 16.5,
		"USE1-MP:USE1_InputTokenCount_Global-Units": 3, "USE1-MP:USE1_OutputTokenCount_Global-Units": 15,
		"USE1-MP:USE1_CacheReadInputTokenCount-Units": 0.33, "USE1-MP:USE1_CacheWriteInputTokenCount-Units": 4.125,
		"USE1-MP:USE1_CacheReadInputTokenCount_Global-Units": 0.3, "USE1-MP:USE1_CacheWriteInputTokenCount_Global-Units": 3.75,
	}
	for ut, usd := range want {
		if got, ok := rates[ut]; !ok || got != usd {
			t.Errorf("%s: %v (listed %v), want %v", ut, got, ok, usd)
		}
	}
	if len(rates) != len(want) {
		t.Errorf("Claude Sonnet 4.5 in us-east-1: %d rates, want %d: %v", len(rates), len(want), rates)
	}

	// A Region the scenario lists no quotas for has no prices, and a
	// filter on it returns an empty list, not an error.
	if docs := list(ServiceCodeBedrock, pricingtypes.Filter{Type: pricingtypes.FilterTypeTermMatch, Field: aws.String("regionCode"), Value: aws.String("sa-east-1")}); len(docs) != 0 {
		t.Errorf("sa-east-1: %d documents", len(docs))
	}

	_, err := pc.GetProducts(ctx, &pricing.GetProductsInput{ServiceCode: aws.String(ServiceCodeBedrock), NextToken: aws.String("garbage!")})
	var bad *pricingtypes.InvalidNextTokenException
	if !errors.As(err, &bad) {
		t.Errorf("bad NextToken: %v", err)
	}
	_, err = pc.GetProducts(ctx, &pricing.GetProductsInput{ServiceCode: aws.String("AmazonNoSuchService")})
	var nf *pricingtypes.NotFoundException
	if !errors.As(err, &nf) {
		t.Errorf("unknown service code: %v", err)
	}

	ds, err := pc.DescribeServices(ctx, &pricing.DescribeServicesInput{ServiceCode: aws.String(ServiceCodeFoundationModels)})
	if err != nil || len(ds.Services) != 1 || !strings.Contains(strings.Join(ds.Services[0].AttributeNames, ","), "servicename") {
		t.Errorf("DescribeServices: %+v %v", ds, err)
	}
}

// TestPricingGetProductsCLI checks that the AWS CLI reads the simulator's
// GetProducts as it reads AWS's: every page, PriceList as strings.
func TestPricingGetProductsCLI(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	awsBin := tool(t, "aws")
	// The CLI follows NextToken itself; --page-size makes it do so.
	out, stderr, code := runTool(t, awsEnv(), awsBin, "pricing", "get-products", "--endpoint-url", h.url, "--region", "us-east-1",
		"--service-code", ServiceCodeFoundationModels, "--page-size", "3", "--output", "json",
		"--filters", "Type=TERM_MATCH,Field=regionCode,Value=eu-central-1", "Type=TERM_MATCH,Field=servicename,Value=Claude 3 Haiku (Amazon Bedrock Edition)")
	if code != 0 {
		t.Fatalf("aws pricing get-products: exit %d\n%s", code, stderr)
	}
	var got struct{ PriceList []string }
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output: %v\n%s", err, out)
	}
	rates := map[string]float64{}
	for _, s := range got.PriceList {
		var d priceDoc
		if err := json.Unmarshal([]byte(s), &d); err != nil {
			t.Fatalf("document: %v", err)
		}
		_, usd := d.onlyPrice(t)
		rates[d.Product.Attributes["usagetype"]] = usd
	}
	want := map[string]float64{
		"EUC1-MP:EUC1_InputTokenCount-Units": 0.25, "EUC1-MP:EUC1_OutputTokenCount-Units": 1.25,
		"EUC1-MP:EUC1_InputTokenCount_Batch-Units": 0.125, "EUC1-MP:EUC1_OutputTokenCount_Batch-Units": 0.625,
	}
	if len(rates) != len(want) {
		t.Fatalf("Claude 3 Haiku in eu-central-1 through the CLI: %v, want %v", rates, want)
	}
	for ut, usd := range want {
		if rates[ut] != usd {
			t.Errorf("%s: %v, want %v", ut, rates[ut], usd)
		}
	}
}
