package quotaname

import (
	"slices"
	"strings"
	"testing"
)

// modernExpect is the hand-checked answer for every distinct runtime
// (scope, provider, model) of the real quota table against
// testdata/catalogue-modern.json: a model id, or a failure kind. The test
// fails on any runtime row missing here, so a new row forces a review.
var modernExpect = map[string]string{
	"cross-region|Amazon Nova Lite":                     "amazon.nova-lite-v1:0",
	"cross-region|Amazon Nova Micro":                    "amazon.nova-micro-v1:0",
	"cross-region|Amazon Nova Premier V1":               "amazon.nova-premier-v1:0",
	"cross-region|Amazon Nova Pro":                      "amazon.nova-pro-v1:0",
	"cross-region|Anthropic Claude 3 Haiku":             "anthropic.claude-3-haiku-20240307-v1:0",
	"cross-region|Anthropic Claude 3 Opus":              "anthropic.claude-3-opus-20240229-v1:0",
	"cross-region|Anthropic Claude 3 Sonnet":            "anthropic.claude-3-sonnet-20240229-v1:0",
	"cross-region|Anthropic Claude 3.5 Haiku":           "anthropic.claude-3-5-haiku-20241022-v1:0",
	"cross-region|Anthropic Claude 3.5 Sonnet":          "anthropic.claude-3-5-sonnet-20240620-v1:0",
	"cross-region|Anthropic Claude 3.5 Sonnet V2":       "anthropic.claude-3-5-sonnet-20241022-v2:0",
	"cross-region|Anthropic Claude 3.7 Sonnet V1":       "anthropic.claude-3-7-sonnet-20250219-v1:0",
	"cross-region|Anthropic Claude Opus 4 V1":           "anthropic.claude-opus-4-20250514-v1:0",
	"cross-region|Anthropic Claude Sonnet 4 V1":         "anthropic.claude-sonnet-4-20250514-v1:0",
	"cross-region|DeepSeek R1 V1":                       "deepseek.r1-v1:0",
	"cross-region|Meta Llama 3.1 405B Instruct":         "meta.llama3-1-405b-instruct-v1:0",
	"cross-region|Meta Llama 3.1 70B Instruct":          "meta.llama3-1-70b-instruct-v1:0",
	"cross-region|Meta Llama 3.1 8B Instruct":           "meta.llama3-1-8b-instruct-v1:0",
	"cross-region|Meta Llama 3.2 1B Instruct":           "meta.llama3-2-1b-instruct-v1:0",
	"cross-region|Meta Llama 3.2 3B Instruct":           "meta.llama3-2-3b-instruct-v1:0",
	"cross-region|Meta Llama 3.3 70B Instruct":          "meta.llama3-3-70b-instruct-v1:0",
	"cross-region|Meta Llama 4 Maverick V1":             "meta.llama4-maverick-17b-instruct-v1:0",
	"cross-region|Meta Llama 4 Scout V1":                "meta.llama4-scout-17b-instruct-v1:0",
	"cross-region|Mistral Pixtral Large 25.02 V1":       "mistral.pixtral-large-2502-v1:0",
	"cross-region|Writer AI Palmyra X4 V1":              "writer.palmyra-x4-v1:0",
	"cross-region|Writer AI Palmyra X5 V1":              "writer.palmyra-x5-v1:0",
	"on-demand|AI21 Labs Jamba 1.5 Large":               "ai21.jamba-1-5-large-v1:0",
	"on-demand|AI21 Labs Jamba 1.5 Mini":                "ai21.jamba-1-5-mini-v1:0",
	"on-demand|AI21 Labs Jamba Instruct":                "ai21.jamba-instruct-v1:0",
	"on-demand|AI21 Labs Jurassic-2 Mid":                "ai21.j2-mid-v1",
	"on-demand|AI21 Labs Jurassic-2 Ultra":              "ai21.j2-ultra-v1",
	"on-demand|Amazon Nova Canvas":                      "amazon.nova-canvas-v1:0",
	"on-demand|Amazon Nova Lite":                        "amazon.nova-lite-v1:0",
	"on-demand|Amazon Nova Micro":                       "amazon.nova-micro-v1:0",
	"on-demand|Amazon Nova Premier V1":                  "not-on-demand amazon.nova-premier-v1:0",
	"on-demand|Amazon Nova Pro":                         "amazon.nova-pro-v1:0",
	"on-demand|Amazon Nova Reel1.0":                     "amazon.nova-reel-v1:0",
	"on-demand|Amazon Nova Reel1.1":                     "amazon.nova-reel-v1:1",
	"on-demand|Amazon Nova Sonic":                       "amazon.nova-sonic-v1:0",
	"on-demand|Amazon Rerank 1.0":                       "amazon.rerank-v1:0",
	"on-demand|Amazon Titan Image Generator G1":         "amazon.titan-image-generator-v1",
	"on-demand|Amazon Titan Image Generator G1 V2":      "amazon.titan-image-generator-v2:0",
	"on-demand|Amazon Titan Multimodal Embeddings G1":   "amazon.titan-embed-image-v1",
	"on-demand|Amazon Titan Text Embeddings":            "amazon.titan-embed-text-v1",
	"on-demand|Amazon Titan Text Embeddings V2":         "amazon.titan-embed-text-v2:0",
	"on-demand|Amazon Titan Text Express":               "amazon.titan-text-express-v1",
	"on-demand|Amazon Titan Text Lite":                  "amazon.titan-text-lite-v1",
	"on-demand|Amazon Titan Text Premier":               "amazon.titan-text-premier-v1:0",
	"on-demand|Anthropic Claude 3 Haiku":                "anthropic.claude-3-haiku-20240307-v1:0",
	"on-demand|Anthropic Claude 3 Opus":                 "anthropic.claude-3-opus-20240229-v1:0",
	"on-demand|Anthropic Claude 3 Sonnet":               "anthropic.claude-3-sonnet-20240229-v1:0", // not the provisioned :28k
	"on-demand|Anthropic Claude 3.5 Haiku":              "anthropic.claude-3-5-haiku-20241022-v1:0",
	"on-demand|Anthropic Claude 3.5 Sonnet":             "anthropic.claude-3-5-sonnet-20240620-v1:0",
	"on-demand|Anthropic Claude 3.5 Sonnet V2":          "anthropic.claude-3-5-sonnet-20241022-v2:0",
	"on-demand|Anthropic Claude Instant":                "anthropic.claude-instant-v1",
	"on-demand|Anthropic Claude Opus 4 V1":              "not-on-demand anthropic.claude-opus-4-20250514-v1:0",
	"on-demand|Anthropic Claude Sonnet 4 V1":            "not-on-demand anthropic.claude-sonnet-4-20250514-v1:0",
	"on-demand|Anthropic Claude V2":                     "ambiguous", // claude-v2 and claude-v2:1 are both "Claude" v2
	"on-demand|Cohere Command":                          "cohere.command-text-v14",
	"on-demand|Cohere Command Light":                    "cohere.command-light-text-v14",
	"on-demand|Cohere Command R":                        "cohere.command-r-v1:0",
	"on-demand|Cohere Command R Plus":                   "cohere.command-r-plus-v1:0",
	"on-demand|Cohere Embed English":                    "cohere.embed-english-v3",
	"on-demand|Cohere Embed Multilingual":               "cohere.embed-multilingual-v3",
	"on-demand|Cohere Rerank 3.5":                       "cohere.rerank-v3-5:0",
	"on-demand|Luma Ray V2":                             "luma.ray-v2:0",
	"on-demand|Meta Llama 2 13B":                        "not-on-demand meta.llama2-13b-v1", // never the Chat model
	"on-demand|Meta Llama 2 70B":                        "not-on-demand meta.llama2-70b-v1",
	"on-demand|Meta Llama 2 Chat 13B":                   "meta.llama2-13b-chat-v1",
	"on-demand|Meta Llama 2 Chat 70B":                   "meta.llama2-70b-chat-v1",
	"on-demand|Meta Llama 3 70B Instruct":               "meta.llama3-70b-instruct-v1:0",
	"on-demand|Meta Llama 3 8B Instruct":                "meta.llama3-8b-instruct-v1:0",
	"on-demand|Meta Llama 3.1 405B Instruct":            "meta.llama3-1-405b-instruct-v1:0",
	"on-demand|Meta Llama 3.1 70B Instruct":             "meta.llama3-1-70b-instruct-v1:0",
	"on-demand|Meta Llama 3.1 8B Instruct":              "meta.llama3-1-8b-instruct-v1:0",
	"on-demand|Meta Llama 3.2 11B Instruct":             "not-on-demand meta.llama3-2-11b-instruct-v1:0",
	"on-demand|Meta Llama 3.2 1B Instruct":              "not-on-demand meta.llama3-2-1b-instruct-v1:0",
	"on-demand|Meta Llama 3.2 3B Instruct":              "not-on-demand meta.llama3-2-3b-instruct-v1:0",
	"on-demand|Meta Llama 3.2 90B Instruct":             "not-on-demand meta.llama3-2-90b-instruct-v1:0",
	"on-demand|Meta Llama 3.3 70B Instruct":             "not-on-demand meta.llama3-3-70b-instruct-v1:0",
	"on-demand|Mistral 7B Instruct":                     "mistral.mistral-7b-instruct-v0:2",
	"on-demand|Mistral AI Mistral 7B Instruct":          "mistral.mistral-7b-instruct-v0:2",
	"on-demand|Mistral AI Mistral Large":                "ambiguous", // 24.02 or 24.07: the name does not say
	"on-demand|Mistral AI Mistral Small":                "mistral.mistral-small-2402-v1:0",
	"on-demand|Mistral AI Mixtral 8X7BB Instruct":       "mistral.mixtral-8x7b-instruct-v0:1",
	"on-demand|Mistral Large":                           "ambiguous",
	"on-demand|Mistral Large 2407":                      "mistral.mistral-large-2407-v1:0",
	"on-demand|Mistral Mixtral 8x7b Instruct":           "mistral.mixtral-8x7b-instruct-v0:1",
	"on-demand|Stability.ai Stable Diffusion 3 Large":   "stability.sd3-large-v1:0",
	"on-demand|Stability.ai Stable Diffusion 3 Medium":  "no-candidate", // not in the catalogue
	"on-demand|Stability.ai Stable Diffusion 3.5 Large": "stability.sd3-5-large-v1:0",
	"on-demand|Stability.ai Stable Diffusion XL 0.8":    "no-candidate", // retired; only XL v1 remains
	"on-demand|Stability.ai Stable Diffusion XL 1.0":    "stability.stable-diffusion-xl-v1",
	"on-demand|Stability.ai Stable Image Core":          "stability.stable-image-core-v1:1",
	"on-demand|Stability.ai Stable Image Ultra":         "stability.stable-image-ultra-v1:1",
}

func outcome(m MatchResult) string {
	switch m.Failure {
	case NoFailure:
		return m.ModelID
	case NotOnDemand, NoProfile:
		return m.Failure.String() + " " + m.ModelID
	}
	return m.Failure.String()
}

// TestMatchRealData matches every runtime row of the real quota table
// against the modern catalogue, checks each against the hand-checked list,
// and reports the match rate and every miss with its reason.
func TestMatchRealData(t *testing.T) {
	t.Parallel()
	cat := loadCatalogue(t, "testdata/catalogue-modern.json")
	var rows, identified, callable int
	seen := map[string]bool{}
	for _, r := range loadRows(t) {
		c := Classify(r.Name)
		if !c.Runtime {
			continue
		}
		rows++
		m := Match(c, cat)
		if m.ModelID != "" {
			identified++
		}
		if len(m.IDs) > 0 {
			callable++
		}
		if m.Failure != NoFailure && m.Reason == "" {
			t.Errorf("%q: %s without a reason", r.Name, m.Failure)
		}
		key := c.Scope.String() + "|" + c.Provider + " " + c.Model
		want, ok := modernExpect[key]
		switch {
		case !ok:
			t.Errorf("%q: no hand-checked expectation for %q (got %s)", r.Name, key, outcome(m))
		case outcome(m) != want:
			t.Errorf("%q: got %s, want %s (%s)", r.Name, outcome(m), want, m.Reason)
		}
		if m.Failure != NoFailure && !seen[key] {
			t.Logf("unmatched %-55s %s: %s", key, m.Failure, m.Reason)
		}
		seen[key] = true
	}
	t.Logf("modern catalogue: %d runtime rows, model identified %d (%.1f%%), callable ids %d (%.1f%%)",
		rows, identified, 100*float64(identified)/float64(rows), callable, 100*float64(callable)/float64(rows))
	for k := range modernExpect {
		if !seen[k] {
			t.Errorf("expectation %q matches no runtime row", k)
		}
	}
}

// TestMatch2023 runs the real 2023 catalogue (no profiles, Claude v1/v2
// era): old models match, everything newer is reported, nothing is guessed.
func TestMatch2023(t *testing.T) {
	t.Parallel()
	cat := loadCatalogue(t, "testdata/list-foundation-models-example.json")
	want := map[string]string{
		"On-demand InvokeModel tokens per minute for Anthropic Claude V2":                    "anthropic.claude-v2",
		"On-demand InvokeModel tokens per minute for Anthropic Claude Instant":               "anthropic.claude-instant-v1",
		"On-demand InvokeModel tokens per minute for Cohere Command":                         "cohere.command-text-v14",
		"On-demand InvokeModel tokens per minute for Amazon Titan Text Express":              "amazon.titan-text-express-v1",
		"On-demand InvokeModel tokens per minute for Amazon Titan Text Embeddings V2":        "amazon.titan-embed-g1-text-02",
		"On-demand InvokeModel tokens per minute for Amazon Titan Text Embeddings":           "ambiguous", // e1t-medium and embed-text-v1
		"On-demand InvokeModel tokens per minute for AI21 Labs Jurassic-2 Mid":               "ambiguous", // j2-mid and j2-mid-v1
		"On-demand InvokeModel tokens per minute for Anthropic Claude 3 Haiku":               "no-candidate",
		"On-demand InvokeModel tokens per minute for Meta Llama 2 13B":                       "unknown-provider",
		"Cross-region model inference tokens per minute for Anthropic Claude 3 Opus":         "no-candidate",
		"On-demand InvokeModel requests per minute for Stability.ai Stable Diffusion XL 1.0": "no-candidate",
	}
	var rows, identified int
	for _, r := range loadRows(t) {
		c := Classify(r.Name)
		if !c.Runtime {
			continue
		}
		rows++
		if m := Match(c, cat); m.ModelID != "" {
			identified++
		}
	}
	t.Logf("2023 catalogue: %d runtime rows, model identified %d", rows, identified)
	for name, w := range want {
		m := Match(Classify(name), cat)
		if got := outcome(m); got != w {
			t.Errorf("%q: got %s, want %s (%s)", name, got, w, m.Reason)
		}
	}
}

func TestMatch(t *testing.T) {
	t.Parallel()
	cat := loadCatalogue(t, "testdata/catalogue-modern.json")
	const sonnet45 = "anthropic.claude-sonnet-4-5-20250929-v1:0"
	tests := []struct {
		name    string
		failure Failure
		model   string
		ids     []string
		context string
		why     string // a fragment the reason must contain
	}{
		{name: "Cross-region model inference tokens per minute for Anthropic Claude Sonnet 4.5 V1",
			model: sonnet45, ids: []string{"au." + sonnet45, "eu." + sonnet45, "jp." + sonnet45, "us." + sonnet45}},
		{name: "Cross-region model inference tokens per minute for Anthropic Claude Sonnet 4.5 V1 1M Context Length",
			model: sonnet45, ids: []string{"au." + sonnet45, "eu." + sonnet45, "jp." + sonnet45, "us." + sonnet45}, context: "1M"},
		{name: "Global cross-region model inference tokens per minute for Anthropic Claude Sonnet 4.5 V1",
			model: sonnet45, ids: []string{"global." + sonnet45}},
		{name: "Global cross-region model inference tokens per minute for Anthropic Claude Haiku 4.5",
			model: "anthropic.claude-haiku-4-5-20251001-v1:0", ids: []string{"global.anthropic.claude-haiku-4-5-20251001-v1:0"}},
		{name: "On-demand model inference tokens per minute for Amazon Nova Pro",
			model: "amazon.nova-pro-v1:0", ids: []string{"amazon.nova-pro-v1:0"}}, // the APPLICATION profile is ignored
		{name: "cross-region MODEL inference tokens per minute for amazon   nova PRO",
			model: "amazon.nova-pro-v1:0", ids: []string{"apac.amazon.nova-pro-v1:0", "eu.amazon.nova-pro-v1:0", "us.amazon.nova-pro-v1:0"}},
		{name: "On-demand model inference tokens per minute for Anthropic Claude Opus 4.1",
			failure: NotOnDemand, model: "anthropic.claude-opus-4-1-20250805-v1:0", why: "ON_DEMAND"},
		{name: "Global cross-region model inference tokens per minute for Amazon Nova Pro",
			failure: NoProfile, model: "amazon.nova-pro-v1:0", why: "global"},
		{name: "Cross-region model inference tokens per minute for Anthropic Claude Opus 7 V1",
			failure: NoCandidate, why: "Claude Opus 7"},
		{name: "Global cross-region model inference tokens per day for Zeta Labs Hyperion 2",
			failure: UnknownProvider, why: "Zeta Labs"},
		{name: "On-demand InvokeModel tokens per minute for Anthropic Claude V2",
			failure: Ambiguous, why: "anthropic.claude-v2, anthropic.claude-v2:1"},
		{name: "Records per batch inference job for Claude 3 Haiku",
			failure: NotRuntime, why: "batch"},
		// The provider written differently from providerName, or missing.
		{name: "On-demand model inference tokens per minute for Mistral Mistral Small",
			model: "mistral.mistral-small-2402-v1:0", ids: []string{"mistral.mistral-small-2402-v1:0"}},
		{name: "On-demand model inference tokens per minute for Claude 3 Opus",
			model: "anthropic.claude-3-opus-20240229-v1:0", ids: []string{"anthropic.claude-3-opus-20240229-v1:0"}},
		{name: "On-demand model inference tokens per minute for OpenAI GPT OSS 120B",
			model: "openai.gpt-oss-120b-1:0", ids: []string{"openai.gpt-oss-120b-1:0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := Match(Classify(tt.name), cat)
			if m.Failure != tt.failure || m.ModelID != tt.model || !slices.Equal(m.IDs, tt.ids) {
				t.Errorf("got %s %q %v, want %s %q %v (%s)", m.Failure, m.ModelID, m.IDs, tt.failure, tt.model, tt.ids, m.Reason)
			}
			if m.Class.Context != tt.context {
				t.Errorf("context %q, want %q", m.Class.Context, tt.context)
			}
			if !strings.Contains(m.Reason, tt.why) {
				t.Errorf("reason %q lacks %q", m.Reason, tt.why)
			}
		})
	}
}

func TestTokens(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want string
	}{
		{"Claude 3.7 Sonnet", "claude 37 sonnet"},
		{"claude-3-7-sonnet-20250219", "claude 37 sonnet"},
		{"llama3-1-405b-instruct", "llama 31 405b instruct"},
		{"Llama 3.1 405B Instruct", "llama 31 405b instruct"},
		{"Mistral Large (24.07)", "mistral large 2407"},
		{"Nova Reel1.0", "nova reel 10"},
		{"Mixtral 8X7BB Instruct", "mixtral 8x7bb instruct"},
		{"Command R+", "command r plus"},
		{"palmyra-x4", "palmyra x4"},
		{"claude-sonnet-4-5-20250929", "claude sonnet 45"},
		{"Mistral Large 2 (24.07)", "mistral large 2 2407"},
	}
	for _, tt := range tests {
		if got := strings.Join(tokens(tt.in), " "); got != tt.want {
			t.Errorf("tokens(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
