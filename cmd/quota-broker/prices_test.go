package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/awspricing"
	"github.com/bedrockqb/quotabroker/broker/awsquota"
	"github.com/bedrockqb/quotabroker/broker/pricefile"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

func startPricingSim(t *testing.T) (*bedrocksim.Sim, string) {
	t.Helper()
	sim, err := bedrocksim.New(bedrocksim.Config{DisableLatency: true})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim.Handler())
	t.Cleanup(hs.Close)
	return sim, hs.URL
}

// badPriceDocument is a Marketplace price in euros only.
const badPriceDocument = `{"product":{"sku":"EURONLY1","attributes":{"regionCode":"us-east-1",` +
	`"servicename":"Claude 3 Haiku (Amazon Bedrock Edition)","usagetype":"USE1-MP:USE1_OutputTokenCount-Units"}},` +
	`"serviceCode":"AmazonBedrockFoundationModels","terms":{"OnDemand":{"EURONLY1.JRTCKXETXF":{"priceDimensions":` +
	`{"EURONLY1.JRTCKXETXF.6YS6EN2CT7":{"unit":"1M tokens","pricePerUnit":{"EUR":"1.2"}}}}}}}`

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestDiscoverPrices: discover --prices prints what each budget's calls
// cost, from the simulator's price lists through the real SDK; a prices
// file overrides them; a price document AWS would not send fails the
// command naming the product, and --prices is what to drop.
func TestDiscoverPrices(t *testing.T) {
	isolateAWS(t)
	sim, url := startPricingSim(t)
	out, stderr, err := runDiscover(t, "--aws-endpoint", url, "--regions", "us-east-1", "--prices")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^REGION +SCOPE +MODEL +RPM +TPM +TPD +CONCURRENCY +IN \$/1M +OUT \$/1M$`),
		regexp.MustCompile(`(?m)^us-east-1 +cross-region +anthropic\.claude-sonnet-4-5-20250929-v1:0 +250 +500000 +1440000000 +- +\$3\.3 +\$16\.5$`),
		regexp.MustCompile(`(?m)^us-east-1 +global +anthropic\.claude-sonnet-4-5-20250929-v1:0 +500 +1000000 +1440000000 +- +\$3 +\$15$`),
		regexp.MustCompile(`(?m)^us-east-1 +on-demand +amazon\.nova-micro-v1:0 .* \$0\.035 +\$0\.14$`),
		regexp.MustCompile(`(?m)^us-east-1 +on-demand +amazon\.titan-embed-text-v2:0 .* \$0\.02 +-$`),
		regexp.MustCompile(`(?m)^prices: \d+ of \d+ budgets priced; unpriced \(no input or output price listed, never counted as free\): .*us-east-1/on-demand/amazon\.titan-embed-text-v2:0`),
	} {
		if !want.MatchString(out) {
			t.Errorf("table lacks %s:\n%s", want, out)
		}
	}

	// A file over AWS's prices, in JSON this time.
	file := writeFile(t, "prices.json", `{"unit": "1M tokens", "default_region": "us-east-1", "prices": [
		{"model": "global.anthropic.claude-sonnet-4-5-20250929-v1:0", "input": 2.5}]}`)
	out, stderr, err = runDiscover(t, "--aws-endpoint", url, "--regions", "us-east-1", "--prices-file", file, "--output", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	var got discoveryJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, b := range got.Budgets {
		switch {
		case b.Scope == "global" && b.Model == "anthropic.claude-sonnet-4-5-20250929-v1:0":
			seen++
			if p := b.Price; p == nil || p.Input == nil || *p.Input != 0.0025 || p.Output == nil || *p.Output != 0.015 ||
				p.Source != "aws pricing (AmazonBedrockFoundationModels, 2025-11-01) with "+file || b.Unpriced {
				t.Errorf("global Sonnet 4.5: %+v %+v", b, p)
			}
		case b.Model == "amazon.titan-embed-text-v2:0":
			seen++
			if p := b.Price; p == nil || p.Output != nil || !b.Unpriced {
				t.Errorf("embedding: %+v %+v", b, p)
			}
		}
	}
	if seen != 2 {
		t.Errorf("%d of the budgets looked for", seen)
	}

	sim.InjectPriceDocument(bedrocksim.ServiceCodeFoundationModels, badPriceDocument)
	_, _, err = runDiscover(t, "--aws-endpoint", url, "--regions", "us-east-1", "--prices")
	if err == nil || !strings.Contains(err.Error(), "product EURONLY1") || !strings.Contains(err.Error(), "pricePerUnit.USD: missing") ||
		!strings.Contains(err.Error(), "drop --prices") {
		t.Errorf("a bad document: %v", err)
	}
	if _, _, err := runDiscover(t, "--aws-endpoint", url, "--regions", "us-east-1"); err != nil {
		t.Errorf("without --prices the quotas still list: %v", err)
	}
}

func TestDiscoverPricesOffline(t *testing.T) {
	t.Parallel()
	file := writeFile(t, "prices.json", `{"unit": "1K tokens", "mode": "replace", "prices": [
		{"region": "us-east-1", "model": "anthropic.claude-3-haiku-20240307-v1:0", "input": 0.00025, "output": 0.00125}]}`)
	out, _, err := runDiscover(t, "--region", "us-east-1", "--from-file", "testdata/list-service-quotas.json",
		"--models-file", "testdata/list-foundation-models.json", "--prices-file", file)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^us-east-1 +on-demand +anthropic\.claude-3-haiku-20240307-v1:0 +1000 +2000000 +2880000000 +- +\$0\.25 +\$1\.25$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^us-east-1 +cross-region +anthropic\.claude-3-haiku-20240307-v1:0 .* - +-$`).MatchString(out) {
		t.Errorf("table:\n%s", out)
	}
	bad := writeFile(t, "bad.json", "{\"unit\": \"1K tokens\", \"prices\": [\n {\"region\": \"us-east-1\", \"model\": \"m\", \"input\": 0.1, \"currency\": \"EUR\"}]}")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--from-file", "testdata/list-service-quotas.json", "--prices"}, "prices come from --prices-file only"},
		{[]string{"--from-file", "testdata/list-service-quotas.json", "--prices-file", bad}, bad + `:2: prices[0].currency: "EUR"`},
	} {
		if _, _, err := runDiscover(t, append([]string{"--region", "us-east-1"}, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("discover %q: %v, want %q", tc.args, err, tc.want)
		}
	}
}

func staticAWSConfig() *aws.Config {
	return &aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", "")}
}

// syncBuffer is a bytes.Buffer the logger may write while a test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestPricedSourceKeepsLastGood: each discovery reads the prices too; a
// price read that fails hands the broker nothing (its last good prices
// stay), fails nothing else, and says why; the next good read replaces
// them.
func TestPricedSourceKeepsLastGood(t *testing.T) {
	t.Parallel()
	sim, url := startPricingSim(t)
	aq, err := awsquota.New(awsquota.Config{Regions: []string{"us-east-1"}, AWS: staticAWSConfig(), Endpoint: url})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := awspricing.New(awspricing.Config{Regions: []string{"us-east-1"}, AWS: staticAWSConfig(), Endpoint: url})
	if err != nil {
		t.Fatal(err)
	}
	file, err := pricefile.Parse("over.json", []byte(`{"unit": "1K tokens", "prices": [
		{"region": "us-east-1", "model": "amazon.nova-pro-v1:0", "output": 0.003}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var log syncBuffer
	var sets []map[broker.PriceKey]broker.Price
	src := pricedSource{QuotaSource: aq, prices: ps, file: &file, log: slog.New(slog.NewTextHandler(&log, nil)),
		set: func(p map[broker.PriceKey]broker.Price) { sets = append(sets, p) }}
	ctx := context.Background()
	nova := broker.PriceKey{Region: "us-east-1", Model: "amazon.nova-pro-v1:0"}

	d, err := src.Discover(ctx)
	if err != nil || len(d.Specs) == 0 || len(sets) != 1 {
		t.Fatalf("first discovery: %d specs, %d price sets, %v", len(d.Specs), len(sets), err)
	}
	if p := sets[0][nova]; p.Input != 0.0008 || p.Output != 0.003 || !p.Priced() {
		t.Errorf("Nova Pro with the file over AWS: %+v", p)
	}

	sim.InjectPriceDocument(bedrocksim.ServiceCodeFoundationModels, badPriceDocument)
	d, err = src.Discover(ctx)
	if err != nil || len(d.Specs) == 0 {
		t.Fatalf("a bad price document failed the quotas: %v", err)
	}
	if len(sets) != 1 {
		t.Fatalf("a failed price read handed the broker prices (%d sets)", len(sets))
	}
	if l := log.String(); !strings.Contains(l, "keeping the last good prices") || !strings.Contains(l, "product EURONLY1") {
		t.Errorf("log:\n%s", l)
	}

	sim.ClearPriceDocuments()
	if _, err := src.Discover(ctx); err != nil || len(sets) != 2 || !sets[1][nova].Priced() {
		t.Fatalf("after the document is gone: %d sets, %v", len(sets), err)
	}
}

// TestServePrices: serve --prices with --aws reads the file and AWS's
// prices at start-up and says so; a broken prices file stops it at once.
func TestServePrices(t *testing.T) {
	isolateAWS(t)
	_, url := startPricingSim(t)
	file := writeFile(t, "prices.json", `{"unit": "1M tokens", "prices": [{"region": "us-east-1", "model": "amazon.nova-pro-v1:0", "input": 0.9, "output": 3.6}]}`)
	var stdout, stderr syncBuffer
	m := NewMain(&stdout, &stderr)
	if err := m.ParseFlags([]string{"--listen", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "state.db"),
		"--aws-endpoint", url, "--refresh", "1h", "--prices", file}); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err != nil {
		m.Close()
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	l := stderr.String()
	if !regexp.MustCompile(`msg="prices from file" file=\S+ entries=1 priced=1 replace=false`).MatchString(l) ||
		!regexp.MustCompile(`msg="prices read" priced=\d{2,} unpriced=\d+`).MatchString(l) {
		t.Errorf("log:\n%s", l)
	}

	bad := writeFile(t, "bad.json", `{"unit": "1K tokens", "prices": [{"region": "us-east-1", "model": "m", "input": -1}]}`)
	m = NewMain(&stdout, &stderr)
	if err := m.ParseFlags([]string{"--listen", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "state.db"), "--prices", bad}); err != nil {
		t.Fatal(err)
	}
	err := m.Run(context.Background())
	m.Close()
	if err == nil || !strings.Contains(err.Error(), bad+":1: prices[0].input: must not be negative") {
		t.Errorf("a broken prices file: %v", err)
	}
}
