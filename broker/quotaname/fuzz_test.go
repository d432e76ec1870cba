package quotaname

import (
	"strings"
	"testing"
)

// FuzzClassify checks that Classify never panics, that Runtime implies a
// runtime scope, a metric and a model, and that case and spacing do not
// change the answer. Seeds are the real table plus odd shapes.
func FuzzClassify(f *testing.F) {
	for _, r := range loadRows(f) {
		f.Add(r.Name)
	}
	for _, s := range []string{
		"Model invocation max tokens per day for Anthropic Claude Sonnet 4.5 V1 1M Context Length (doubled for cross-region calls)",
		"Global cross-region model inference tokens per day for Zeta Labs Hyperion 2",
		"[bedrock-mantle endpoint] Input tokens per minute for OpenAI gpt-oss-120b",
		"On-demand InvokeModel async concurrent requests for Amazon Nova Reel1.1",
		"on-demand tokens per minute for for for", "(", "[bedrock-mantle]", " for ", "\xff\xfe", "ſ ı K",
	} {
		f.Add(s)
	}
	cat := Catalogue{
		Models:   []Model{{ID: "anthropic.claude-3-haiku-20240307-v1:0", Name: "Claude 3 Haiku", Provider: "Anthropic"}},
		Profiles: []Profile{{ID: "us.anthropic.claude-3-haiku-20240307-v1:0"}},
	}
	f.Fuzz(func(t *testing.T, name string) {
		c := Classify(name)
		if c.Runtime && (!c.Scope.Runtime() || c.Metric == OtherMetric || c.Model == "" || c.Provider == "") {
			t.Fatalf("Classify(%q) = %+v: runtime without a runtime scope, metric, provider and model", name, c)
		}
		if !c.Runtime && c.Reason == "" {
			t.Fatalf("Classify(%q): not runtime and no reason", name)
		}
		for _, variant := range []string{
			strings.ToUpper(name), strings.ToLower(name),
			"  " + strings.Join(strings.Fields(name), " \t ") + "\n",
		} {
			if v := Classify(variant); !sameClass(c, v) {
				t.Fatalf("Classify(%q) = %+v\nbut Classify(%q) = %+v", name, c, variant, v)
			}
		}
		m := Match(c, cat)
		if m.Failure == NoFailure && len(m.IDs) == 0 || m.Failure != NoFailure && (len(m.IDs) > 0 || m.Reason == "") {
			t.Fatalf("Match(%q) = %+v: IDs and Failure disagree", name, m)
		}
	})
}

// sameClass compares classifications up to the case and spacing of the
// text fields.
func sameClass(a, b Class) bool {
	key := func(s string) string { return strings.Join(strings.Fields(strings.Map(fold, s)), " ") }
	return a.Scope == b.Scope && a.Metric == b.Metric && a.Runtime == b.Runtime &&
		a.LatencyOptimized == b.LatencyOptimized && a.DoubledCrossRegion == b.DoubledCrossRegion &&
		a.Async == b.Async && a.Input == b.Input && a.Output == b.Output &&
		key(a.Provider) == key(b.Provider) && key(a.Model) == key(b.Model) &&
		key(a.Context) == key(b.Context) && key(a.Reason) == key(b.Reason)
}
