package pricefile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bedrockqb/quotabroker/broker"
)

const good = `{"currency": "USD", "unit": "1M tokens", "default_region": "us-east-1",
 "prices": [
  {"model": "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
   "input": 3, "output": 15, "cache_read": 0.3, "cache_write": 3.75},
  {"region": "eu-central-1", "model": "amazon.nova-pro-v1:0", "currency": "USD",
   "input": 1.05, "output": 4.2, "batch_input": 0.525, "batch_output": 2.1},
  {"model": "amazon.titan-embed-text-v2:0", "input": 0.02}
 ]}`

func TestParse(t *testing.T) {
	f, err := Parse("prices.json", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if f.Replace || len(f.Prices) != 3 {
		t.Fatalf("%+v", f)
	}
	s := f.Prices[broker.PriceKey{Region: "us-east-1", Model: "global.anthropic.claude-sonnet-4-5-20250929-v1:0"}]
	want := broker.Price{Input: 0.003, Output: 0.015, CacheRead: 0.0003, CacheWrite: 0.00375,
		Has: broker.RateInput | broker.RateOutput | broker.RateCacheRead | broker.RateCacheWrite, Source: "prices.json"}
	if !close(s, want) {
		t.Errorf("sonnet: %+v, want %+v", s, want)
	}
	n := f.Prices[broker.PriceKey{Region: "eu-central-1", Model: "amazon.nova-pro-v1:0"}]
	if n.Has != broker.RateInput|broker.RateOutput|broker.RateBatchInput|broker.RateBatchOutput || !n.Priced() {
		t.Errorf("nova: %+v", n)
	}
	// An input-only entry is known input and nothing else: not priced.
	e := f.Prices[broker.PriceKey{Region: "us-east-1", Model: "amazon.titan-embed-text-v2:0"}]
	if e.Has != broker.RateInput || e.Priced() {
		t.Errorf("embedding: %+v", e)
	}
}

func close(a, b broker.Price) bool {
	d := func(x, y float64) bool { return x-y < 1e-12 && y-x < 1e-12 }
	return a.Has == b.Has && a.Source == b.Source && d(a.Input, b.Input) && d(a.Output, b.Output) &&
		d(a.CacheRead, b.CacheRead) && d(a.CacheWrite, b.CacheWrite) && d(a.BatchInput, b.BatchInput) && d(a.BatchOutput, b.BatchOutput)
}

// TestParseErrors: every error names the file, the line and the field.
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ name, data, want string }{
		{"not JSON", `{"unit": "1K tokens", "prices": [`, "p.json:1: unexpected end of file"},
		{"no prices", `{"unit": "1K tokens"}`, `p.json:1: no "prices" array`},
		{"no unit", `{"prices": []}`, "p.json:1: unit: is missing"},
		{"bad unit", "{\n\"unit\": \"tokens\", \"prices\": []}", `p.json:2: unit: "tokens"`},
		{"bad mode", "{\"unit\": \"1K tokens\",\n \"mode\": \"merge\", \"prices\": []}", `p.json:2: mode: "merge"`},
		{"euro file", "{\"unit\": \"1K tokens\",\n\n \"currency\": \"EUR\", \"prices\": []}", `p.json:3: currency: "EUR": prices are in USD`},
		{"unknown top field", "{\"unit\": \"1K tokens\",\n \"price\": []}", `p.json:2: unknown field "price"`},
		{"unknown entry field", "{\"unit\": \"1K tokens\", \"prices\": [\n {\"region\": \"us-east-1\", \"model\": \"m\", \"inptu\": 1}]}", `p.json:2: prices[0]: unknown field "inptu"`},
		{"wrong type", "{\"unit\": \"1K tokens\", \"prices\": [\n\n {\"region\": \"us-east-1\", \"model\": \"m\", \"input\": \"0.1\"}]}", "p.json:3: prices[0].input: want float64"},
		{"negative", "{\"unit\": \"1K tokens\", \"prices\": [\n {\"region\": \"us-east-1\", \"model\": \"m\", \"input\": 0.1},\n {\"region\": \"us-east-1\", \"model\": \"n\", \"output\": -0.1}]}", "p.json:3: prices[1].output: must not be negative"},
		{"per million as per thousand", "{\"unit\": \"1K tokens\", \"prices\": [\n {\"region\": \"us-east-1\", \"model\": \"m\", \"output\": 15}]}", `p.json:2: prices[0].output: 15 USD per 1,000 tokens is more than any Bedrock model charges; is "unit" right?`},
		{"entry currency", "{\"unit\": \"1K tokens\", \"prices\": [\n {\"region\": \"us-east-1\", \"model\": \"m\", \"input\": 1, \"currency\": \"JPY\"}]}", `p.json:2: prices[0].currency: "JPY"`},
		{"no rate", "{\"unit\": \"1K tokens\", \"prices\": [\n {\"region\": \"us-east-1\", \"model\": \"m\"}]}", "p.json:2: prices[0].input: no rate set"},
		{"no model", "{\"unit\": \"1K tokens\", \"prices\": [\n {\"region\": \"us-east-1\", \"input\": 0.1}]}", "p.json:2: prices[0].model: is missing"},
		{"no region", "{\"unit\": \"1K tokens\", \"prices\": [\n {\"model\": \"m\", \"input\": 0.1}]}", "p.json:2: prices[0].region: is missing (or set default_region)"},
		{"bad region", "{\"unit\": \"1K tokens\", \"prices\": [\n {\"region\": \"Virginia\", \"model\": \"m\", \"input\": 0.1}]}", `p.json:2: prices[0].region: "Virginia" is not an AWS Region name`},
		{"duplicate", "{\"unit\": \"1K tokens\", \"default_region\": \"us-east-1\", \"prices\": [\n {\"model\": \"m\", \"input\": 0.1},\n {\"region\": \"us-east-1\", \"model\": \"m\", \"output\": 0.1}]}", "p.json:3: prices[1]: the same model and Region (m in us-east-1) as prices[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("p.json", []byte(tc.data))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestApply(t *testing.T) {
	k1 := broker.PriceKey{Region: "us-east-1", Model: "a"}
	k2 := broker.PriceKey{Region: "us-east-1", Model: "b"}
	k3 := broker.PriceKey{Region: "us-east-1", Model: "c"}
	api := map[broker.PriceKey]broker.Price{
		k1: {Input: 0.001, Output: 0.002, CacheRead: 0.0001, Has: broker.RateInput | broker.RateOutput | broker.RateCacheRead, Source: "aws pricing (AmazonBedrock, 2025-11-01)"},
		k2: {Input: 0.5, Has: broker.RateInput, Source: "aws"},
	}
	f, err := Parse("p.json", []byte(`{"unit": "1K tokens", "default_region": "us-east-1", "prices": [
		{"model": "a", "output": 0.003, "cache_write": 0.0002}, {"model": "b", "input": 0.4}, {"model": "c", "input": 0.1, "output": 0.2}]}`))
	if err != nil {
		t.Fatal(err)
	}
	got := f.Apply(api)
	if a := got[k1]; a.Input != 0.001 || a.Output != 0.003 || a.CacheRead != 0.0001 || a.CacheWrite != 0.0002 ||
		a.Has != broker.RateInput|broker.RateOutput|broker.RateCacheRead|broker.RateCacheWrite || a.Source != "aws pricing (AmazonBedrock, 2025-11-01) with p.json" {
		t.Errorf("override of a: %+v", a)
	}
	if b := got[k2]; b.Input != 0.4 || b.Has != broker.RateInput || b.Source != "p.json" {
		t.Errorf("override of b: %+v", b)
	}
	if c := got[k3]; !c.Priced() || c.Source != "p.json" {
		t.Errorf("c, only in the file: %+v", c)
	}
	if api[k1].Output != 0.002 || api[k1].Has&broker.RateCacheWrite != 0 {
		t.Errorf("Apply changed its input: %+v", api[k1])
	}
	f.Replace = true
	if got := f.Apply(api); len(got) != 3 || got[k1].Has != broker.RateOutput|broker.RateCacheWrite || got[k1].Source != "p.json" {
		t.Errorf("replace: %+v", got)
	}
	if got := f.Apply(nil); len(got) != 3 {
		t.Errorf("replace without AWS: %+v", got)
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prices.json")
	if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Load(path)
	if err != nil || len(f.Prices) != 3 {
		t.Fatalf("%+v %v", f, err)
	}
	for _, p := range f.Prices {
		if p.Source != path {
			t.Errorf("source %q", p.Source)
		}
	}
	if _, err := Load(path + ".missing"); err == nil || !strings.Contains(err.Error(), "prices file") {
		t.Errorf("missing file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte(`{"unit": "1K tokens", "mode": "replace", "prices": [{"region": "us-east-1", "model": "m", "input": 0.1}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("f.json", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.json:") {
				t.Fatalf("error without the file's name: %v", err)
			}
			return
		}
		for k, p := range file.Prices {
			if k.Region == "" || k.Model == "" || p.Has == 0 || p.Source != "f.json" {
				t.Fatalf("%+v: %+v", k, p)
			}
			for _, v := range []float64{p.Input, p.Output, p.CacheRead, p.CacheWrite, p.BatchInput, p.BatchOutput} {
				if v < 0 || v > maxPerK {
					t.Fatalf("%+v: rate %v", k, v)
				}
			}
		}
	})
}
