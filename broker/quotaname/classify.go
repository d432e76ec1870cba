package quotaname

import (
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Scope is what a quota governs. The first three are runtime budgets: each is
// a separate quota for the same model. The rest are recognised so that they
// can be explained and skipped, not budgeted.
type Scope int

const (
	// OtherScope is anything that is not a model quota the broker can use
	// (agents, guardrails, knowledge bases, customization, ...) or wording
	// that was not recognised. Class.Reason says which.
	OtherScope Scope = iota
	// OnDemand is the bare model id.
	OnDemand
	// CrossRegion is a geographic inference profile (us., eu., apac., ...).
	CrossRegion
	// Global is a global cross-region inference profile (global.).
	Global
	// Provisioned is Provisioned Throughput (model units, token units).
	Provisioned
	// Batch is batch inference (job sizes, record counts, job counts).
	Batch
	// Mantle is the separate bedrock-mantle endpoint, with its own quotas.
	Mantle
)

// String returns the scope in the lower-case hyphenated form used in reports.
func (s Scope) String() string {
	switch s {
	case OnDemand:
		return "on-demand"
	case CrossRegion:
		return "cross-region"
	case Global:
		return "global"
	case Provisioned:
		return "provisioned"
	case Batch:
		return "batch"
	case Mantle:
		return "mantle"
	default:
		return "other"
	}
}

// Runtime reports whether quotas of this scope limit bedrock-runtime calls.
func (s Scope) Runtime() bool { return s == OnDemand || s == CrossRegion || s == Global }

// Metric is what a quota counts.
type Metric int

const (
	// OtherMetric is anything that is not a rate or concurrency limit
	// (sizes, counts of jobs or resources, model units).
	OtherMetric Metric = iota
	// RPM is requests per minute.
	RPM
	// TPM is tokens per minute.
	TPM
	// TPD is tokens per day.
	TPD
	// Concurrency is concurrent requests.
	Concurrency
)

// String returns the metric's short name.
func (m Metric) String() string {
	switch m {
	case RPM:
		return "rpm"
	case TPM:
		return "tpm"
	case TPD:
		return "tpd"
	case Concurrency:
		return "concurrency"
	default:
		return "other"
	}
}

// Class is what a quota name says. Text fields keep the spelling of the
// input (whitespace collapsed); everything else is independent of case and
// spacing.
type Class struct {
	Name   string // the quota name as given
	Scope  Scope
	Metric Metric
	// Runtime is true when the quota is a per-model budget for
	// bedrock-runtime calls: a runtime scope, a known metric and a model.
	Runtime bool

	// LatencyOptimized marks "On-demand latency-optimized ..." quotas, which
	// govern only calls made with latency optimization turned on.
	LatencyOptimized bool
	// Context is the context-length variant as written ("1M" from
	// "... V1 1M Context Length", "24k" from a provisioned row); variants
	// share a model id but have their own quota.
	Context string
	// DoubledCrossRegion marks "(doubled for cross-region calls)": the
	// quota is the model's on-demand tokens per day and, doubled, also its
	// geo profile's.
	DoubledCrossRegion bool
	// Async marks "async concurrent requests" (StartAsyncInvoke jobs).
	Async bool
	// Input and Output mark the bedrock-mantle endpoint's separate
	// input-token and output-token quotas.
	Input, Output bool

	// Provider is the provider as written in the quota ("Mistral AI",
	// "Stability.ai"); empty when the name does not give one.
	Provider string
	// Model is the model as written, without the provider and without the
	// variant suffixes above ("Claude 3.7 Sonnet V1", "Mixtral 8X7BB Instruct").
	// Version words such as "V1" are kept: they are part of how AWS names
	// the model, and the matcher uses them.
	Model string

	// Reason explains a quota that is not a runtime budget, or what part of
	// the wording was not recognised. Empty for runtime quotas.
	Reason string
}

// text is a quota name with whitespace collapsed, held twice: as written and
// case-folded rune by rune, so that a match found in the folded form can be
// cut out of the original by rune position.
type text struct {
	orig []rune
	s    string // folded, single-spaced; regexps run on this
}

func newText(name string) text {
	orig := []rune(strings.Join(strings.Fields(name), " "))
	folded := make([]rune, len(orig))
	for i, r := range orig {
		folded[i] = fold(r)
	}
	return text{orig: orig, s: string(folded)}
}

// fold maps a rune to a case-free form. Lower(Upper(r)) rather than Lower(r)
// because some lower-case letters (dotless ı, long ſ) only meet their ASCII
// relatives through upper case; with it, a name and its strings.ToUpper or
// strings.ToLower form classify the same.
func fold(r rune) rune { return unicode.ToLower(unicode.ToUpper(r)) }

// cut returns the original text between byte offsets i and j of t.s.
func (t text) cut(i, j int) string {
	if i >= j {
		return ""
	}
	a := utf8.RuneCountInString(t.s[:i])
	b := a + utf8.RuneCountInString(t.s[i:j])
	return strings.TrimSpace(string(t.orig[a:b]))
}

var (
	// "[bedrock-mantle endpoint] Input tokens per minute ..."
	reMantle       = regexp.MustCompile(`^\[\s*bedrock[- ]?mantle(?: endpoint)?\s*\]\s*`)
	reMantleMetric = regexp.MustCompile(`^(input|output) tokens per (minute|day)(?: for (.+))?$`)

	// Suffixes that mark a variant of a model's quota. They are removed
	// from the end, in any order, before the rest is parsed.
	reDoubled = regexp.MustCompile(`\s*\(\s*doubled for cross[- ]?region calls?\s*\)$`)
	reContext = regexp.MustCompile(`\s+(\d+(?:\.\d+)?\s?[km])\s*context[- ]length$`)
	reInGB    = regexp.MustCompile(`\s*\(\s*in gb\s*\)$`)

	// The runtime grammar: scope, optional latency optimisation, optional
	// API words, metric, then " for <Provider> <Model>". The API words
	// changed over time ("InvokeModel" became "model inference") without a
	// change of meaning, so they are matched and dropped.
	reRuntime = regexp.MustCompile(`^(on[- ]?demand|cross[- ]?region|global\s?cross[- ]?region|model invocation)` +
		`\s*,?\s*(latency[- ]?optimi[sz]ed\s*,?\s*)?` +
		`((?:invoke\s?model|model inference|inference)\s+)?` +
		`(async\s+)?(?:max\s+)?` +
		`(requests per minute|tokens per minute|tokens per day|concurrent requests)` +
		`(?: for(?: (.+))?)?$`)
	reRuntimeScope = regexp.MustCompile(`^(on[- ]?demand|cross[- ]?region|global\s?cross[- ]?region|model invocation)\b`)
	reRate         = regexp.MustCompile(`\b(requests per minute|tokens per minute|tokens per day|concurrent requests)\b`)

	reFeature     = regexp.MustCompile(`^\(([^)]+)\)`)
	reProvisioned = regexp.MustCompile(`\bmodel units\b|\bprovisioned throughpu?ts?\b|\bprovisioned throughout\b|\btoken units\b`)
	reBatch       = regexp.MustCompile(`\bbatch inference\b`)
	reCustomize   = regexp.MustCompile(`fine[- ]?tuning|continued pre[- ]?training|customi[sz]ation|distillation|\bimport|custom models?\b`)
	reEvaluation  = regexp.MustCompile(`\bevaluation\b`)
	rePerSecond   = regexp.MustCompile(`\bper second\b|\bthrottle rate limit\b`)

	// Provisioned rows give the context variant two ways.
	reVariantFor  = regexp.MustCompile(`\bthe (\S+) context length variant\b`)
	reTrailingCtx = regexp.MustCompile(`\s(\d+(?:\.\d+)?[km])$`)
	// Leading words between "for" and the model in non-runtime rows.
	reSubjectLead = regexp.MustCompile(`^(?:(?:a|the|base|custom)\s+)*(?:model\s+)?`)
)

// Classify reads a Service Quotas quota name. It never fails: a name it does
// not recognise is OtherScope with a Reason.
func Classify(name string) Class {
	c := Class{Name: name}
	t := newText(name)
	s := t.s

	if m := reMantle.FindStringIndex(s); m != nil {
		return classifyMantle(c, t, m[1])
	}

	// Variant suffixes, in either order.
	end := len(s)
	for changed := true; changed; {
		changed = false
		if m := reDoubled.FindStringIndex(s[:end]); m != nil {
			c.DoubledCrossRegion, end, changed = true, m[0], true
		}
		if m := reContext.FindStringSubmatchIndex(s[:end]); m != nil {
			c.Context, end, changed = t.cut(m[2], m[3]), m[0], true
		}
	}

	switch {
	case reFeature.MatchString(s):
		// "(Guardrails) ...", "(Data Automation) ...": other features that
		// share the bedrock service code.
		m := reFeature.FindStringSubmatchIndex(s)
		c.Reason = t.cut(m[2], m[3]) + " quota, not a model-inference budget"
		return c
	case reBatch.MatchString(s):
		c.Scope = Batch
		c.Reason = "batch inference quota (jobs, files, records), not a runtime budget"
		// AWS writes batch rows without the provider ("for Claude 3 Haiku"),
		// so only a known provider name is split off.
		return withSubject(c, t, end, false)
	case reProvisioned.MatchString(s):
		c.Scope = Provisioned
		c.Reason = "Provisioned Throughput quota (model or token units), not an on-demand budget"
		if m := reVariantFor.FindStringSubmatchIndex(s); m != nil {
			c.Context = t.cut(m[2], m[3])
		}
		c = withSubject(c, t, end, false)
		return c
	}

	m := reRuntime.FindStringSubmatchIndex(s[:end])
	if m == nil {
		c.Reason = otherReason(s)
		return c
	}
	switch scope := s[m[2]:m[3]]; {
	case strings.HasPrefix(scope, "global"):
		c.Scope = Global
	case strings.HasPrefix(scope, "cross"):
		c.Scope = CrossRegion
	default:
		// "on-demand ..." and "Model invocation max tokens per day ...";
		// the latter also covers geo profiles when DoubledCrossRegion.
		c.Scope = OnDemand
	}
	c.LatencyOptimized = m[4] >= 0
	c.Async = m[8] >= 0
	switch s[m[10]:m[11]] {
	case "requests per minute":
		c.Metric = RPM
	case "tokens per minute":
		c.Metric = TPM
	case "tokens per day":
		c.Metric = TPD
	case "concurrent requests":
		c.Metric = Concurrency
	}
	if m[12] >= 0 {
		c.Provider, c.Model = splitProvider(t.cut(m[12], end), true)
	}
	switch {
	case c.Provider == "":
		c.Reason = "runtime wording but no model named after \"for\""
	case c.Model == "":
		c.Reason = "runtime wording but only a provider (" + c.Provider + ") named, no model"
	default:
		c.Runtime = true
	}
	return c
}

func classifyMantle(c Class, t text, start int) Class {
	c.Scope = Mantle
	rest := t.s[start:]
	m := reMantleMetric.FindStringSubmatchIndex(rest)
	if m == nil {
		c.Reason = "bedrock-mantle endpoint quota with unrecognised wording"
		return c
	}
	c.Input = rest[m[2]:m[3]] == "input"
	c.Output = !c.Input
	c.Metric = TPM
	if rest[m[4]:m[5]] == "day" {
		c.Metric = TPD
	}
	if m[6] >= 0 {
		c.Provider, c.Model = splitProvider(t.cut(start+m[6], len(t.s)), true)
	}
	c.Reason = "bedrock-mantle endpoint quota (" + rest[m[2]:m[3]] + " tokens), not a bedrock-runtime budget"
	return c
}

// withSubject fills Provider and Model of a non-runtime row from the text after
// its last " for " (their subjects are always last, after wording that itself
// contains "for").
func withSubject(c Class, t text, end int, byPosition bool) Class {
	s := t.s[:end]
	if m := reInGB.FindStringIndex(s); m != nil {
		s = s[:m[0]]
	}
	i := strings.LastIndex(s, " for ")
	if i < 0 {
		return c
	}
	i += len(" for ")
	i += len(reSubjectLead.FindString(s[i:]))
	j := len(s)
	if c.Scope == Provisioned && c.Context == "" {
		// "... Claude 3 Haiku 200K": provisioned model units are sold per
		// context length and AWS appends it bare.
		if m := reTrailingCtx.FindStringSubmatchIndex(s[i:]); m != nil {
			c.Context = t.cut(i+m[2], i+m[3])
			j = i + m[0]
		}
	}
	c.Provider, c.Model = splitProvider(t.cut(i, j), byPosition)
	return c
}

// otherReason says why a name that is not a runtime quota is what it is.
func otherReason(s string) string {
	switch {
	case reRuntimeScope.MatchString(s):
		return "runtime scope wording (" + reRuntimeScope.FindString(s) + ") with an unrecognised metric or API; not budgeted"
	case reRate.MatchString(s):
		return "rate wording (" + reRate.FindString(s) + ") without a recognised scope prefix; not budgeted"
	case reCustomize.MatchString(s):
		return "model customization quota (fine-tuning, distillation, import), not a runtime budget"
	case reEvaluation.MatchString(s):
		return "model evaluation quota, not a runtime budget"
	case rePerSecond.MatchString(s):
		return "API request rate of a control-plane, agent or data-automation operation, not a model budget"
	default:
		return "not a model-inference quota: a resource count, size or feature limit (no runtime prefix)"
	}
}

// knownProviders are provider names as AWS writes them in quota names. The
// list never decides whether a quota is recognised; it only splits
// "<Provider> <Model>" where position alone cannot: names of three words
// ("Black Forest Labs") and rows that leave the provider out ("Records per
// batch inference job for Claude 3 Haiku"). A provider missing from it is
// still split by position in runtime rows (see splitProvider).
var knownProviders = []string{
	"AI21 Labs", "Amazon", "Anthropic", "Black Forest Labs", "Cohere", "DeepSeek",
	"Google", "Luma AI", "Luma", "Meta", "MiniMax", "Mistral AI", "Mistral", "Moonshot AI",
	"NVIDIA", "OpenAI", "Qwen", "Stability AI", "Stability.ai", "TwelveLabs", "Twelve Labs",
	"Writer AI", "Writer",
}

// corporateSuffix words continue a provider name ("Mistral AI", "AI21 Labs").
var corporateSuffix = map[string]bool{
	"ai": true, "labs": true, "lab": true, "inc": true, "technologies": true,
	"research": true, "ltd": true, "corp": true, "corporation": true,
}

// splitProvider splits "<Provider> <Model>". A known provider name at the
// start wins (longest first). Otherwise, when byPosition is set (runtime rows,
// whose wording always leads with the provider), the provider is the first
// word plus a following corporate suffix ("Zeta Labs"); else there is no
// provider and the whole subject is the model.
func splitProvider(subject string, byPosition bool) (provider, model string) {
	words := strings.Fields(subject)
	if len(words) == 0 {
		return "", ""
	}
	best := 0
	for _, p := range knownProviders {
		pw := strings.Fields(p)
		if len(pw) <= best || len(pw) > len(words) {
			continue
		}
		if alnumKey(strings.Join(words[:len(pw)], " ")) == alnumKey(p) {
			best = len(pw)
		}
	}
	if best == 0 && byPosition {
		best = 1
		if len(words) > 1 && corporateSuffix[alnumKey(words[1])] {
			best = 2
		}
	}
	return strings.Join(words[:best], " "), strings.Join(words[best:], " ")
}

// alnumKey folds case and drops everything but letters and digits, so that
// "Stability.ai" and "Stability AI" compare equal.
func alnumKey(s string) string {
	var b strings.Builder
	for _, r := range s {
		r = fold(r)
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			b.WriteRune(r)
		}
	}
	return b.String()
}
