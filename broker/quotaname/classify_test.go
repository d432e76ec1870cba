package quotaname

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.json from the code (review the diff by hand)")

func TestClassify(t *testing.T) {
	t.Parallel()
	type want struct {
		scope    Scope
		metric   Metric
		runtime  bool
		provider string
		model    string
		context  string
		latency  bool
		doubled  bool
		async    bool
	}
	tests := []struct {
		name string
		want want
	}{
		// Irregular model names, as AWS writes them.
		{"Cross-region model inference tokens per minute for Anthropic Claude 3.7 Sonnet V1",
			want{scope: CrossRegion, metric: TPM, runtime: true, provider: "Anthropic", model: "Claude 3.7 Sonnet V1"}},
		{"Cross-region model inference tokens per minute for Anthropic Claude Sonnet 4.5 V1 1M Context Length",
			want{scope: CrossRegion, metric: TPM, runtime: true, provider: "Anthropic", model: "Claude Sonnet 4.5 V1", context: "1M"}},
		{"On-demand InvokeModel tokens per minute for Mistral AI Mixtral 8X7BB Instruct",
			want{scope: OnDemand, metric: TPM, runtime: true, provider: "Mistral AI", model: "Mixtral 8X7BB Instruct"}},
		{"On-demand InvokeModel concurrent requests for Amazon Nova Reel1.0",
			want{scope: OnDemand, metric: Concurrency, runtime: true, provider: "Amazon", model: "Nova Reel1.0"}},
		{"On-demand model inference requests per minute for Meta Llama 3.1 405B Instruct",
			want{scope: OnDemand, metric: RPM, runtime: true, provider: "Meta", model: "Llama 3.1 405B Instruct"}},
		{"On-demand InvokeModel requests per minute for Stability.ai Stable Image Core",
			want{scope: OnDemand, metric: RPM, runtime: true, provider: "Stability.ai", model: "Stable Image Core"}},
		{"Cross-region model inference requests per minute for Writer AI Palmyra X5 V1",
			want{scope: CrossRegion, metric: RPM, runtime: true, provider: "Writer AI", model: "Palmyra X5 V1"}},
		{"On-demand model inference tokens per minute for Mistral Large 2407",
			want{scope: OnDemand, metric: TPM, runtime: true, provider: "Mistral", model: "Large 2407"}},
		// Models and providers that do not exist yet classify by wording.
		{"Cross-region model inference tokens per minute for Anthropic Claude Opus 7 V1",
			want{scope: CrossRegion, metric: TPM, runtime: true, provider: "Anthropic", model: "Claude Opus 7 V1"}},
		{"Global cross-region model inference tokens per day for Zeta Labs Hyperion 2",
			want{scope: Global, metric: TPD, runtime: true, provider: "Zeta Labs", model: "Hyperion 2"}},
		{"Global cross-region model inference requests per minute for Anthropic Claude Haiku 4.5",
			want{scope: Global, metric: RPM, runtime: true, provider: "Anthropic", model: "Claude Haiku 4.5"}},
		{"On-demand model inference tokens per minute for Qwen Qwen3 Coder 480B A35B V1",
			want{scope: OnDemand, metric: TPM, runtime: true, provider: "Qwen", model: "Qwen3 Coder 480B A35B V1"}},
		{"On-demand model inference tokens per minute for Black Forest Labs FLUX 2 Pro",
			want{scope: OnDemand, metric: TPM, runtime: true, provider: "Black Forest Labs", model: "FLUX 2 Pro"}},
		// L-DCADBC78, before and after AWS reworded it: one class.
		{"Cross-region InvokeModel tokens per minute for Anthropic Claude 3 Haiku",
			want{scope: CrossRegion, metric: TPM, runtime: true, provider: "Anthropic", model: "Claude 3 Haiku"}},
		{"Cross-region model inference tokens per minute for Anthropic Claude 3 Haiku",
			want{scope: CrossRegion, metric: TPM, runtime: true, provider: "Anthropic", model: "Claude 3 Haiku"}},
		{"Cross-Region InvokeModel requests per minute for Anthropic Claude 3.5 Sonnet V2",
			want{scope: CrossRegion, metric: RPM, runtime: true, provider: "Anthropic", model: "Claude 3.5 Sonnet V2"}},
		// Tokens per day: with and without the cross-region note.
		{"Model invocation max tokens per day for Anthropic Claude Sonnet 4 V1",
			want{scope: OnDemand, metric: TPD, runtime: true, provider: "Anthropic", model: "Claude Sonnet 4 V1"}},
		{"Model invocation max tokens per day for Anthropic Claude Sonnet 4.5 V1 (doubled for cross-region calls)",
			want{scope: OnDemand, metric: TPD, runtime: true, provider: "Anthropic", model: "Claude Sonnet 4.5 V1", doubled: true}},
		{"Model invocation max tokens per day for Anthropic Claude Sonnet 4.5 V1 1M Context Length (doubled for cross-region calls)",
			want{scope: OnDemand, metric: TPD, runtime: true, provider: "Anthropic", model: "Claude Sonnet 4.5 V1", context: "1M", doubled: true}},
		// Latency-optimized, both spellings.
		{"On-demand latency-optimized InvokeModel tokens per minute for Anthropic Claude 3.5 Haiku",
			want{scope: OnDemand, metric: TPM, runtime: true, provider: "Anthropic", model: "Claude 3.5 Haiku", latency: true}},
		{"On-Demand, latency-optimized model inference requests per minute for Meta Llama 3.1 70B Instruct",
			want{scope: OnDemand, metric: RPM, runtime: true, provider: "Meta", model: "Llama 3.1 70B Instruct", latency: true}},
		// Concurrency, sync and async.
		{"On-demand model inference concurrent requests for Luma Ray V2",
			want{scope: OnDemand, metric: Concurrency, runtime: true, provider: "Luma", model: "Ray V2"}},
		{"On-demand InvokeModel async concurrent requests for Amazon Nova Reel1.1",
			want{scope: OnDemand, metric: Concurrency, runtime: true, provider: "Amazon", model: "Nova Reel1.1", async: true}},
		// Case and spacing do not matter.
		{"  CROSS-REGION   model  INFERENCE tokens per   minute for  anthropic claude 3 haiku ",
			want{scope: CrossRegion, metric: TPM, runtime: true, provider: "anthropic", model: "claude 3 haiku"}},
		{"cross region model inference tokens per minute for Amazon Nova Pro",
			want{scope: CrossRegion, metric: TPM, runtime: true, provider: "Amazon", model: "Nova Pro"}},
		// Not runtime budgets.
		{"[bedrock-mantle endpoint] Input tokens per minute for OpenAI gpt-oss-120b",
			want{scope: Mantle, metric: TPM, provider: "OpenAI", model: "gpt-oss-120b"}},
		{"[bedrock-mantle endpoint] Output tokens per minute",
			want{scope: Mantle, metric: TPM}},
		{"Model units per provisioned model for Anthropic Claude 3.5 Sonnet V2 51K",
			want{scope: Provisioned, provider: "Anthropic", model: "Claude 3.5 Sonnet V2", context: "51K"}},
		{"Model units per provisioned model for the 300k context length variant for Amazon Nova Pro",
			want{scope: Provisioned, provider: "Amazon", model: "Nova Pro", context: "300k"}},
		{"Model units, with commitment, for Provisioned Throughout created for Meta Llama 4 Scout 17B Instruct 10M",
			want{scope: Provisioned, provider: "Meta", model: "Llama 4 Scout 17B Instruct", context: "10M"}},
		{"Maximum hourly output token units for model claude-3-5-sonnet-20241022-v2",
			want{scope: Provisioned, model: "claude-3-5-sonnet-20241022-v2"}},
		{"Records per batch inference job for Claude 3.5 Sonnet v2",
			want{scope: Batch, model: "Claude 3.5 Sonnet v2"}},
		{"Batch inference input file size for Titan Text Embeddings V2 (in GB)",
			want{scope: Batch, model: "Titan Text Embeddings V2"}},
		{"Records per batch inference job for Mistral Large 2 (24.07)",
			want{scope: Batch, provider: "Mistral", model: "Large 2 (24.07)"}},
		{"(Guardrails) On-demand ApplyGuardrail requests per second", want{}},
		{"Sum of training and validation records for a Claude 3 Haiku v1 Fine-tuning job", want{}},
		{"Inference profiles per account", want{}},
		// Runtime wording with pieces missing is explained, not budgeted.
		{"On-demand model inference tokens per minute for", want{scope: OnDemand, metric: TPM}},
		{"On-demand model inference tokens per minute for Anthropic", want{scope: OnDemand, metric: TPM, provider: "Anthropic"}},
		{"On-demand model inference tokens per hour for Anthropic Claude 3 Haiku", want{}},
		{"Regional model inference tokens per minute for Anthropic Claude 3 Haiku", want{}},
		{"", want{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Classify(tt.name)
			got := want{c.Scope, c.Metric, c.Runtime, c.Provider, c.Model, c.Context, c.LatencyOptimized, c.DoubledCrossRegion, c.Async}
			if got != tt.want {
				t.Errorf("Classify(%q)\n got %+v\nwant %+v\nreason %q", tt.name, got, tt.want, c.Reason)
			}
			if !c.Runtime && c.Reason == "" {
				t.Errorf("Classify(%q): not runtime and no Reason", tt.name)
			}
			if c.Runtime && c.Reason != "" {
				t.Errorf("Classify(%q): runtime with Reason %q", tt.name, c.Reason)
			}
		})
	}
}

func TestClassifyMantleDirection(t *testing.T) {
	t.Parallel()
	in := Classify("[bedrock-mantle endpoint] Input tokens per minute for OpenAI gpt-oss-120b")
	out := Classify("[Bedrock-Mantle Endpoint] output tokens per minute for OpenAI gpt-oss-120b")
	if !in.Input || in.Output || out.Input || !out.Output {
		t.Errorf("input %+v / output %+v: directions wrong", in, out)
	}
}

// TestRealData classifies every row of AWS's published table and checks the
// totals reviewed by hand in testdata/classified.golden.json.
func TestRealData(t *testing.T) {
	t.Parallel()
	rows := loadRows(t)
	counts := map[string]int{}
	runtime := 0
	for _, r := range rows {
		c := Classify(r.Name)
		counts[c.Scope.String()+"/"+c.Metric.String()]++
		if c.Runtime {
			runtime++
		}
		// Every row whose wording starts like a runtime quota must be one.
		lower := strings.ToLower(r.Name)
		looksRuntime := strings.HasPrefix(lower, "on-demand") || strings.HasPrefix(lower, "cross-region") ||
			strings.HasPrefix(lower, "global cross-region") || strings.HasPrefix(lower, "model invocation")
		if looksRuntime != c.Runtime {
			t.Errorf("%q: runtime %v, wording says %v (%s)", r.Name, c.Runtime, looksRuntime, c.Reason)
		}
	}
	t.Logf("%d rows, %d runtime; by scope/metric: %v", len(rows), runtime, counts)
	want := map[string]int{
		"on-demand/rpm": 62, "on-demand/tpm": 52, "on-demand/tpd": 3, "on-demand/concurrency": 4,
		"cross-region/rpm": 25, "cross-region/tpm": 25,
		"provisioned/other": 87, "batch/other": 140, "other/other": 224,
	}
	if len(rows) != 622 || runtime != 171 {
		t.Errorf("rows %d runtime %d, want 622 and 171", len(rows), runtime)
	}
	for k, n := range want {
		if counts[k] != n {
			t.Errorf("%s: %d rows, want %d", k, counts[k], n)
		}
	}
	if len(counts) != len(want) {
		t.Errorf("unexpected scope/metric combinations: %v", counts)
	}
}

// goldenClass is Class as the golden file shows it.
type goldenClass struct {
	Name     string `json:"name"`
	Code     string `json:"code,omitempty"`
	Scope    string `json:"scope"`
	Metric   string `json:"metric"`
	Runtime  bool   `json:"runtime"`
	Provider string `json:"provider,omitempty"`
	Model    string `json:"model,omitempty"`
	Context  string `json:"context,omitempty"`
	Variant  string `json:"variant,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

func golden(c Class, code string) goldenClass {
	var v []string
	for _, f := range []struct {
		on   bool
		name string
	}{{c.LatencyOptimized, "latency-optimized"}, {c.DoubledCrossRegion, "doubled-cross-region"}, {c.Async, "async"}, {c.Input, "input"}, {c.Output, "output"}} {
		if f.on {
			v = append(v, f.name)
		}
	}
	if code == "-" {
		code = ""
	}
	return goldenClass{c.Name, code, c.Scope.String(), c.Metric.String(), c.Runtime, c.Provider, c.Model, c.Context, strings.Join(v, ","), c.Reason}
}

// TestGolden compares every row's classification, and every runtime row's
// match against the modern catalogue, with the reviewed golden files.
func TestGolden(t *testing.T) {
	rows := loadRows(t)
	cat := loadCatalogue(t, "testdata/catalogue-modern.json")
	var classes []goldenClass
	var matches []goldenMatch
	for _, r := range rows {
		c := Classify(r.Name)
		classes = append(classes, golden(c, r.Code))
		if c.Runtime {
			m := Match(c, cat)
			matches = append(matches, goldenMatch{r.Name, m.Failure.String(), m.ModelID, m.IDs, m.Candidates, m.Reason})
		}
	}
	checkGolden(t, "testdata/classified.golden.json", classes)
	checkGolden(t, "testdata/matched-modern.golden.json", matches)
}

type goldenMatch struct {
	Name       string   `json:"name"`
	Result     string   `json:"result"`
	ModelID    string   `json:"model_id,omitempty"`
	IDs        []string `json:"ids,omitempty"`
	Candidates []string `json:"candidates,omitempty"`
	Reason     string   `json:"reason,omitempty"`
}

func checkGolden(t *testing.T, path string, v any) {
	t.Helper()
	got, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatalf("encode %s: %v", path, err)
	}
	got = append(got, '\n')
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatalf("write golden: %v", err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (regenerate with go test -run TestGolden -update): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the code; run go test -run TestGolden -update and review the diff: %s", path, firstDiff(got, want))
	}
}

func firstDiff(a, b []byte) string {
	la, lb := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	for i := range min(len(la), len(lb)) {
		if la[i] != lb[i] {
			return fmt.Sprintf("line %d: got %q, golden %q", i+1, la[i], lb[i])
		}
	}
	return fmt.Sprintf("length %d vs %d lines", len(la), len(lb))
}
