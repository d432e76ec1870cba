package budgetfile_test

import (
	"strings"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/budgetfile"
)

func TestParse(t *testing.T) {
	data := `{
  "default_region": "us-west-2",
  "budgets": [
    {"model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "tpm": 2000000, "rpm": 200},
    {"region": "eu-west-1", "model": "amazon.nova-pro-v1:0", "tpd": 100, "max_output_tokens": 5000, "output_burndown": 1}
  ]
}`
	now := time.Unix(1000, 0)
	specs, err := budgetfile.Parse("b.json", []byte(data), "budgets-file:b.json", now)
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 2 {
		t.Fatalf("%d specs", len(specs))
	}
	want0 := broker.Key{Region: "us-west-2", Scope: broker.ScopeCrossRegion, Model: "anthropic.claude-sonnet-4-5-20250929-v1:0"}
	if specs[0].Key != want0 || specs[0].Quota != (broker.Limits{RPM: 200, TPM: 2000000}) || !specs[0].SourceTime.Equal(now) {
		t.Fatalf("spec 0: %+v", specs[0])
	}
	if specs[1].Key.Region != "eu-west-1" || specs[1].MaxOutputTokens != 5000 || specs[1].Burndown != 1 {
		t.Fatalf("spec 1: %+v", specs[1])
	}
}

// TestParseProvisioned: a Provisioned Throughput's budget is keyed by its
// ARN (the Region comes from it) and names the model it serves and the
// tokens per minute its model units buy.
func TestParseProvisioned(t *testing.T) {
	const arn = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc123"
	specs, err := budgetfile.Parse("b.json", []byte(`{"budgets": [
  {"model": "`+arn+`", "serves": "anthropic.claude-3-haiku-20240307-v1:0", "tpm": 400000}]}`), "x", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	want := broker.Key{Region: "us-east-1", Scope: broker.ScopeProvisioned, Model: arn}
	if len(specs) != 1 || specs[0].Key != want || specs[0].Serves != "anthropic.claude-3-haiku-20240307-v1:0" || specs[0].Quota != (broker.Limits{TPM: 400000}) {
		t.Fatalf("specs %+v", specs)
	}
}

// TestParseProvisionedRates: what one model unit buys, per base model, for
// discovery to size every throughput of the model; a budgets-only reader
// refuses the file rather than drop the rates.
func TestParseProvisionedRates(t *testing.T) {
	const haiku = "anthropic.claude-3-haiku-20240307-v1:0"
	data := []byte(`{"provisioned_rates": {"` + haiku + `": 200000}, "budgets": [
  {"region": "us-east-1", "model": "` + haiku + `", "tpm": 5}]}`)
	f, err := budgetfile.ParseFile("b.json", data, "x", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Specs) != 1 || len(f.ProvisionedRates) != 1 || f.ProvisionedRates[haiku] != 200000 {
		t.Fatalf("file %+v", f)
	}
	if _, err := budgetfile.Parse("b.json", data, "x", time.Time{}); err == nil || !strings.Contains(err.Error(), "b.json: provisioned_rates: need quota discovery") {
		t.Fatalf("Parse of a file with rates: %v", err)
	}
	for _, tc := range []struct{ name, data, want string }{
		{"profile", `{"provisioned_rates": {"us.` + haiku + `": 5}, "budgets": []}`, `f.json:1: provisioned_rates: "us.` + haiku + `" is not a base model id`},
		{"zero", `{"budgets": [],` + "\n" + `"provisioned_rates": {"` + haiku + `": 0}}`, `f.json:2: provisioned_rates["` + haiku + `"]: 0 tokens per minute per model unit; want more than 0`},
		{"type", `{"provisioned_rates": {"` + haiku + `": "lots"}, "budgets": []}`, "provisioned_rates"},
		{"rate and entry", `{"provisioned_rates": {"` + haiku + `": 5}, "budgets": [` + "\n" +
			`{"model": "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc", "serves": "` + haiku + `", "tpm": 5}]}`,
			"f.json:2: budgets[0].serves: " + haiku + " has a rate in provisioned_rates (line 1)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := budgetfile.ParseFile("f.json", []byte(tc.data), "x", time.Time{})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "f.json:") {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseErrorsNameFileLineAndField(t *testing.T) {
	for _, tc := range []struct{ name, data, want string }{
		{"syntax", "{\n  \"budgets\": [\n    {\"model\": \"x\",, }\n  ]\n}", "f.json:3: invalid JSON"},
		{"type", "{\"budgets\": [\n  {\"model\": \"amazon.nova-pro-v1:0\",\n   \"region\": \"us-east-1\",\n   \"tpm\": \"lots\"}\n]}", "f.json:4: budgets[0].tpm: want int64"},
		{"negative", "{\"budgets\": [\n  {\"model\": \"amazon.nova-pro-v1:0\", \"region\": \"us-east-1\", \"tpm\": 1},\n  {\"model\": \"amazon.nova-lite-v1:0\", \"region\": \"us-east-1\", \"tpm\": -5}\n]}", "f.json:3: budgets[1].tpm: must not be negative"},
		{"unknown field", "{\"budgets\": [\n\n  {\"model\": \"amazon.nova-pro-v1:0\", \"region\": \"us-east-1\", \"tmp\": 5}\n]}", "f.json:3: budgets[0]: unknown field \"tmp\""},
		{"missing region", "{\"budgets\": [{\"model\": \"amazon.nova-pro-v1:0\", \"tpm\": 5}]}", "f.json:1: budgets[0].region: is missing"},
		{"bad region", "{\"budgets\": [{\"model\": \"amazon.nova-pro-v1:0\", \"region\": \"moon\", \"tpm\": 5}]}", "budgets[0].region: region: \"moon\" is not an AWS Region"},
		{"no limits", "{\"budgets\": [{\"model\": \"amazon.nova-pro-v1:0\", \"region\": \"us-east-1\"}]}", "no limit set"},
		{"duplicate", "{\"budgets\": [\n{\"model\": \"amazon.nova-pro-v1:0\", \"region\": \"us-east-1\", \"tpm\": 5},\n{\"model\": \"amazon.nova-pro-v1:0\", \"region\": \"us-east-1\", \"rpm\": 5}]}", "f.json:3: budgets[1]: the same budget"},
		{"truncated", "{\"budgets\": [{\"model\": ", "unexpected end of file"},
		{"not object", "[1,2]", "want a JSON object"},
		{"no budgets", "{}", "no \"budgets\" array"},
		{"top-level typo", "{\"budget\": []}", "unknown field \"budget\""},
		{"provisioned without serves", "{\"budgets\": [\n{\"model\": \"arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc\", \"tpm\": 5}]}", "f.json:2: budgets[0].serves: is missing"},
		{"provisioned without tpm", "{\"budgets\": [{\"model\": \"arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc\", \"serves\": \"amazon.nova-pro-v1:0\", \"rpm\": 5}]}", "budgets[0].tpm: is missing: state the tokens per minute"},
		{"provisioned serves a profile", "{\"budgets\": [{\"model\": \"arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc\", \"serves\": \"us.amazon.nova-pro-v1:0\", \"tpm\": 5}]}", "budgets[0].serves: \"us.amazon.nova-pro-v1:0\" is not a base model id"},
		{"provisioned in another region", "{\"budgets\": [{\"region\": \"us-west-2\", \"model\": \"arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc\", \"serves\": \"amazon.nova-pro-v1:0\", \"tpm\": 5}]}", "budgets[0].region: region: \"us-west-2\" disagrees with the Region \"us-east-1\""},
		{"malformed provisioned ARN", "{\"budgets\": [{\"model\": \"arn:aws:bedrock:us-east-1:1234:provisioned-model/abc\", \"serves\": \"amazon.nova-pro-v1:0\", \"tpm\": 5}]}", "budgets[0].model: model_id: \"arn:aws:bedrock:us-east-1:1234:provisioned-model/abc\" is not a provisioned model ARN"},
		{"serves on demand", "{\"budgets\": [{\"model\": \"amazon.nova-pro-v1:0\", \"region\": \"us-east-1\", \"serves\": \"amazon.nova-pro-v1:0\", \"tpm\": 5}]}", "budgets[0].serves: only a Provisioned Throughput"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := budgetfile.Parse("f.json", []byte(tc.data), "x", time.Time{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestLoadMissingFileNamesIt(t *testing.T) {
	_, err := budgetfile.Load("/nonexistent/budgets.json", time.Time{})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/budgets.json") {
		t.Fatalf("got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"budgets":[{"model":"amazon.nova-pro-v1:0","region":"us-east-1","tpm":5}]}`))
	f.Add([]byte(`{"default_region":"eu-west-1","budgets":[{"model":"us.x.y","rpm":-1}]}`))
	f.Add([]byte(`{"budgets":[{"model":"arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc","serves":"amazon.nova-pro-v1:0","tpm":5}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		specs, err := budgetfile.Parse("fuzz.json", data, "fuzz", time.Time{})
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.json:") {
				t.Fatalf("error without file and line: %v", err)
			}
			return
		}
		for _, s := range specs {
			if s.Quota.RPM < 0 || s.Quota.TPM < 0 || s.Quota.TPD < 0 || s.Quota.Concurrency < 0 {
				t.Fatalf("negative limit accepted: %+v", s)
			}
			if (s.Key.Scope == broker.ScopeProvisioned) != (s.Serves != "") || s.Key.Scope == broker.ScopeProvisioned && (s.Quota.TPM <= 0 || s.Burndown != 0) {
				t.Fatalf("a provisioned budget without its model or capacity, or a model on another: %+v", s)
			}
		}
	})
}
