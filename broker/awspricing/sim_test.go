package awspricing

import (
	"context"
	"errors"
	"math"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

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
	return &aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", "")}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-12*math.Max(1, math.Abs(b)) }

// checkPrice compares the rates want names (Has) and that nothing else is
// claimed known.
func checkPrice(t *testing.T, prices map[broker.PriceKey]broker.Price, region, model string, want broker.Price) {
	t.Helper()
	if f, ok := factor[region]; ok {
		want.Input, want.Output, want.CacheRead, want.CacheWrite = want.Input*f, want.Output*f, want.CacheRead*f, want.CacheWrite*f
		want.BatchInput, want.BatchOutput = want.BatchInput*f, want.BatchOutput*f
	}
	got, ok := prices[broker.PriceKey{Region: region, Model: model}]
	if !ok {
		t.Errorf("%s %s: no price", region, model)
		return
	}
	if got.Has != want.Has {
		t.Errorf("%s %s: rates known %06b, want %06b (%+v)", region, model, got.Has, want.Has, got)
	}
	pairs := [][2]float64{{got.Input, want.Input}, {got.Output, want.Output}, {got.CacheRead, want.CacheRead},
		{got.CacheWrite, want.CacheWrite}, {got.BatchInput, want.BatchInput}, {got.BatchOutput, want.BatchOutput}}
	for i, p := range pairs {
		if !near(p[0], p[1]) {
			t.Errorf("%s %s: rate %d is %v, want %v", region, model, i, p[0], p[1])
		}
	}
	if !strings.HasPrefix(got.Source, "aws pricing (Amazon") || !strings.HasSuffix(got.Source, ", 2025-11-01)") {
		t.Errorf("%s %s: source %q", region, model, got.Source)
	}
}

const all = broker.RateInput | broker.RateOutput

// factor is how much dearer than us-east-1 TestSimulatorPrices makes a
// Region's prices.
var factor = map[string]float64{"eu-central-1": 1.25}

// TestSimulatorPrices reads the simulator's price lists with the real SDK
// (pricing and bedrock clients) and checks prices from both service codes,
// both usage-type styles, the global profiles' own rates, and that every
// model of the catalogue that generates text is priced.
func TestSimulatorPrices(t *testing.T) {
	t.Parallel()
	// Frankfurt a quarter dearer: prices must stay with their Region.
	sc := bedrocksim.DefaultScenario()
	sc.Pricing.RegionFactor = factor
	sim, url := startSim(t, sc)
	var regions []string
	for r := range sim.Scenario().Quotas {
		regions = append(regions, r)
	}
	slices.Sort(regions)
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	src, err := New(Config{Regions: regions, AWS: staticAWS(), Endpoint: url, Now: func() time.Time { return at }})
	if err != nil {
		t.Fatal(err)
	}
	res, err := src.Inspect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !res.At.Equal(at) {
		t.Errorf("At %v", res.At)
	}
	p := res.Prices
	for _, region := range regions {
		geo := region[:2] + "." // the geo profiles callable from region
		// AmazonBedrock, per 1K tokens, batch and cache read listed.
		checkPrice(t, p, region, "amazon.nova-pro-v1:0", broker.Price{Input: 0.0008, Output: 0.0032, CacheRead: 0.0002, BatchInput: 0.0004, BatchOutput: 0.0016,
			Has: all | broker.RateCacheRead | broker.RateBatchInput | broker.RateBatchOutput})
		// Geo profiles cost what the model costs in the source Region.
		checkPrice(t, p, region, geo+"amazon.nova-pro-v1:0", broker.Price{Input: 0.0008, Output: 0.0032, CacheRead: 0.0002, BatchInput: 0.0004, BatchOutput: 0.0016,
			Has: all | broker.RateCacheRead | broker.RateBatchInput | broker.RateBatchOutput})
		// "Llama 3.1 8B Instruct" in the catalogue.
		checkPrice(t, p, region, "meta.llama3-1-8b-instruct-v1:0", broker.Price{Input: 0.00022, Output: 0.00022, BatchInput: 0.00011, BatchOutput: 0.00011,
			Has: all | broker.RateBatchInput | broker.RateBatchOutput})
		// Marketplace, per 1M tokens, CamelCase usage types, a global rate 10% below.
		sonnet45 := "anthropic.claude-sonnet-4-5-20250929-v1:0"
		regional := broker.Price{Input: 0.0033, Output: 0.0165, CacheRead: 0.00033, CacheWrite: 0.004125, Has: all | broker.RateCacheRead | broker.RateCacheWrite}
		checkPrice(t, p, region, sonnet45, regional)
		checkPrice(t, p, region, geo+sonnet45, regional)
		if _, ok := p[broker.PriceKey{Region: region, Model: "jp." + sonnet45}]; ok {
			t.Errorf("%s: a price for a profile that cannot be called from there", region)
		}
		checkPrice(t, p, region, "global."+sonnet45, broker.Price{Input: 0.003, Output: 0.015, CacheRead: 0.0003, CacheWrite: 0.00375, Has: regional.Has})
		// snake_case usage types.
		opus45 := "anthropic.claude-opus-4-5-20251101-v1:0"
		checkPrice(t, p, region, geo+opus45, broker.Price{Input: 0.0055, Output: 0.0275, CacheRead: 0.00055, CacheWrite: 0.006875, Has: regional.Has})
		checkPrice(t, p, region, "global."+opus45, broker.Price{Input: 0.005, Output: 0.025, CacheRead: 0.0005, CacheWrite: 0.00625, Has: regional.Has})
		// A global profile without its own rates takes the model's.
		sonnet4 := "anthropic.claude-sonnet-4-20250514-v1:0"
		checkPrice(t, p, region, "global."+sonnet4, broker.Price{Input: 0.003, Output: 0.015, CacheRead: 0.0003, CacheWrite: 0.00375, BatchInput: 0.0015, BatchOutput: 0.0075,
			Has: all | broker.RateCacheRead | broker.RateCacheWrite | broker.RateBatchInput | broker.RateBatchOutput})
		// "Command R" and "Command R+" are two models.
		checkPrice(t, p, region, "cohere.command-r-v1:0", broker.Price{Input: 0.0005, Output: 0.0015, Has: all})
		checkPrice(t, p, region, "cohere.command-r-plus-v1:0", broker.Price{Input: 0.003, Output: 0.015, Has: all})
		// Embeddings list input only: a partial price, and unpriced.
		checkPrice(t, p, region, "amazon.titan-embed-text-v2:0", broker.Price{Input: 0.00002, Has: broker.RateInput})
	}
	// Unpriced is exactly the embedding models: everything that generates
	// text has both rates, and nothing is zero in silence.
	embedding := map[string]bool{}
	for _, m := range sim.Scenario().Models {
		embedding[m.ID] = slices.Contains(m.OutputModalities, "EMBEDDING")
	}
	var unpriced []string
	for _, k := range res.Unpriced {
		if !embedding[k.Model] {
			t.Errorf("%s %s: unpriced", k.Region, k.Model)
		}
		unpriced = append(unpriced, k.Model)
	}
	for id, emb := range embedding {
		if emb && !slices.Contains(unpriced, id) {
			t.Errorf("embedding model %s is not reported unpriced", id)
		}
	}
	for k, pr := range p {
		if pr.Has == 0 {
			t.Errorf("%v: a price with no known rate", k)
		}
		if k.Region == "" || k.Model == "" {
			t.Errorf("key %+v", k)
		}
	}
	for _, n := range res.Notes {
		t.Errorf("note: %s", n) // one product per rate: nothing to reconcile
	}
	for _, s := range res.Skipped {
		t.Errorf("skipped: %+v", s) // the simulator lists only what is priced
	}
}

// TestSimulatorShapeError: a document of a shape the package does not
// expect fails the read with an error naming the product and the field;
// once the document is gone the prices read again.
func TestSimulatorShapeError(t *testing.T) {
	t.Parallel()
	sim, url := startSim(t, nil)
	src, err := New(Config{Regions: []string{"us-east-1"}, AWS: staticAWS(), Endpoint: url})
	if err != nil {
		t.Fatal(err)
	}
	sim.InjectPriceDocument(bedrocksim.ServiceCodeFoundationModels, `{"product":{"sku":"BADSKU123","attributes":{"regionCode":"us-east-1",`+
		`"servicename":"Claude 3 Haiku (Amazon Bedrock Edition)","usagetype":"USE1-MP:USE1_OutputTokenCount-Units"}},`+
		`"serviceCode":"AmazonBedrockFoundationModels","terms":{"OnDemand":{"BADSKU123.JRTCKXETXF":{"priceDimensions":`+
		`{"BADSKU123.JRTCKXETXF.6YS6EN2CT7":{"unit":"1M tokens","pricePerUnit":{"EUR":"1.2"}}}}}}}`)
	_, err = src.Inspect(context.Background())
	var se *ShapeError
	if !errors.As(err, &se) || se.SKU != "BADSKU123" || se.Field != "terms.OnDemand.BADSKU123.JRTCKXETXF.priceDimensions.BADSKU123.JRTCKXETXF.6YS6EN2CT7.pricePerUnit.USD" {
		t.Fatalf("Inspect: %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "product BADSKU123") || !strings.Contains(msg, "pricePerUnit.USD: missing") {
		t.Errorf("message: %s", msg)
	}
	sim.ClearPriceDocuments()
	prices, err := src.Prices(context.Background())
	if err != nil || !prices[broker.PriceKey{Region: "us-east-1", Model: "anthropic.claude-3-haiku-20240307-v1:0"}].Priced() {
		t.Fatalf("after the document is gone: %v", err)
	}
}
