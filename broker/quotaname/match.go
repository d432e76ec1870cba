package quotaname

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Model is one foundation model from ListFoundationModels.
type Model struct {
	ID       string // modelId, "anthropic.claude-3-5-haiku-20241022-v1:0"
	Name     string // modelName, "Claude 3.5 Haiku"
	Provider string // providerName, "Anthropic"
	// InferenceTypes is inferenceTypesSupported: ON_DEMAND, PROVISIONED,
	// INFERENCE_PROFILE. Empty means unknown and is not held against a model.
	InferenceTypes []string
}

// Profile is one inference profile from ListInferenceProfiles.
type Profile struct {
	ID string // inferenceProfileId, "us.anthropic.claude-3-5-haiku-20241022-v1:0"
	// Models are the models[].modelArn the profile routes to. Empty means
	// unknown; the model is then read from ID.
	Models []string
	Type   string // SYSTEM_DEFINED or APPLICATION
}

// Catalogue is what the Bedrock control plane says exists in one Region.
type Catalogue struct {
	Models   []Model
	Profiles []Profile
}

// Failure says why Match found nothing to call.
type Failure int

const (
	// NoFailure: IDs holds what to call.
	NoFailure Failure = iota
	// NotRuntime: the class is not a runtime budget; nothing to match.
	NotRuntime
	// UnknownProvider: no catalogue model is from the quota's provider, and
	// no model of another provider matches the whole name either.
	UnknownProvider
	// NoCandidate: models of the provider exist but none covers the
	// quota's model name (or its version).
	NoCandidate
	// Ambiguous: several models match equally well; Candidates lists them.
	Ambiguous
	// NotOnDemand: the model was found (ModelID) but the catalogue says it
	// cannot be called on demand, only through a profile or provisioned.
	NotOnDemand
	// NoProfile: the model was found (ModelID) but no inference profile of
	// the quota's kind (geo or global) routes to it.
	NoProfile
)

// String names the failure.
func (f Failure) String() string {
	switch f {
	case NoFailure:
		return "matched"
	case NotRuntime:
		return "not-runtime"
	case UnknownProvider:
		return "unknown-provider"
	case NoCandidate:
		return "no-candidate"
	case Ambiguous:
		return "ambiguous"
	case NotOnDemand:
		return "not-on-demand"
	case NoProfile:
		return "no-profile"
	}
	return "failure(" + strconv.Itoa(int(f)) + ")"
}

// MatchResult is what Match found for one quota.
type MatchResult struct {
	// Class is the quota matched; its Context and LatencyOptimized keep
	// variants apart that share a model id.
	Class Class
	// ModelID is the foundation model the quota is for, when it was
	// identified (also with NotOnDemand and NoProfile).
	ModelID string
	// IDs are what callers name to draw on this quota: the model id for
	// on-demand, the geo profile ids (one per geography) for cross-region,
	// the global profile id for global. Sorted; empty on failure.
	IDs []string
	// Failure and Reason say why IDs is empty.
	Failure Failure
	Reason  string
	// Candidates are the tied model ids when Ambiguous.
	Candidates []string
}

// Match maps a classified quota to the models or profiles it governs. It
// never guesses: when no model or several models fit equally it says so in
// Failure and Reason.
func Match(c Class, cat Catalogue) MatchResult {
	r := MatchResult{Class: c}
	if !c.Runtime {
		r.Failure = NotRuntime
		r.Reason = "not a runtime quota (" + c.Scope.String() + ")"
		if c.Reason != "" {
			r.Reason += ": " + c.Reason
		}
		return r
	}

	all := candidates(cat)
	q := newQuery(c.Provider, c.Model)
	var mine []*candidate
	for _, cd := range all {
		if cd.from(q.providerKeys) {
			mine = append(mine, cd)
		}
	}
	pool := mine
	if len(mine) == 0 {
		// The provider may be split wrongly or spelled differently from
		// providerName; try the whole subject against every model.
		q = newQuery("", c.Provider+" "+c.Model)
		pool = all
	}

	// Identify the model among all of the provider's models first, then
	// check it can be called the way the quota is used: picking among the
	// callable ones only would let "Llama 2 13B" fall to "Llama 2 Chat 13B"
	// when the base model is provisioned-only.
	best, tied, closest := rank(q, pool)
	if len(tied) > 1 {
		// Equal names, but only one callable this way: the quota can only
		// be that one's.
		var usable []*candidate
		for _, cd := range tied {
			if cd.usable(c.Scope) {
				usable = append(usable, cd)
			}
		}
		if len(usable) == 1 {
			best, tied = usable[0], usable
		}
	}
	switch {
	case len(tied) > 1:
		r.Failure = Ambiguous
		for _, cd := range tied {
			r.Candidates = append(r.Candidates, cd.id)
		}
		r.Reason = fmt.Sprintf("%d models match %q equally well: %s",
			len(tied), c.Provider+" "+c.Model, strings.Join(r.Candidates, ", "))
		return r
	case best == nil && len(mine) == 0:
		r.Failure = UnknownProvider
		r.Reason = fmt.Sprintf("no catalogue model from provider %q (catalogue providers: %s), and no model of another provider matches %q",
			c.Provider, strings.Join(providerNames(all), ", "), c.Provider+" "+c.Model)
		return r
	case best == nil:
		r.Failure = NoCandidate
		r.Reason = fmt.Sprintf("no model of provider %q matches %q", c.Provider, c.Model)
		if closest != "" {
			r.Reason += "; closest: " + closest
		}
		return r
	}

	r.ModelID = best.id
	switch {
	case !best.usable(c.Scope) && c.Scope == OnDemand:
		r.Failure = NotOnDemand
		r.Reason = fmt.Sprintf("model %s does not support ON_DEMAND inference (supports %s)",
			best.id, strings.Join(best.types, ", "))
	case !best.usable(c.Scope):
		r.Failure = NoProfile
		r.Reason = fmt.Sprintf("no %s inference profile in the catalogue routes to model %s", c.Scope, best.id)
	case c.Scope == OnDemand:
		r.IDs = []string{best.id}
	default:
		r.IDs = slices.Clone(best.profiles[c.Scope])
	}
	return r
}

// candidate is a model prepared for matching.
type candidate struct {
	id           string
	types        []string
	providerKeys []string // key(providerName) and the modelId prefix
	name, idToks []string // tokens of modelName and of modelId
	optional     []string // tokens the version allows ("v1", "1", "10")
	ver          version
	profiles     map[Scope][]string // geo and global profile ids routing here
}

type version struct {
	known      bool
	major, rev int
	hasRev     bool
}

func (cd *candidate) from(keys []string) bool {
	for _, k := range keys {
		if k != "" && slices.Contains(cd.providerKeys, k) {
			return true
		}
	}
	return false
}

// usable reports whether the model can be called the way scope says.
func (cd *candidate) usable(s Scope) bool {
	if s == OnDemand {
		return len(cd.types) == 0 || slices.Contains(cd.types, "ON_DEMAND")
	}
	return len(cd.profiles[s]) > 0
}

var (
	// "-v1:0", "-v2", "-v3-5:0" (major, sub), "-1:0" (OpenAI style, only
	// with a revision), and a provisioned context suffix ":28k".
	reIDContext = regexp.MustCompile(`:(\d+[km])$`)
	reIDRev     = regexp.MustCompile(`:(\d+)$`)
	reIDVer     = regexp.MustCompile(`-v(\d+)(?:-(\d+))?$`)
	reIDBareVer = regexp.MustCompile(`-(\d+)$`)
	// "v2", "V1.0" as a word in a name.
	reNameVer = regexp.MustCompile(`(?:^|[^\pL\pN])v(\d+)(?:[.:](\d+))?(?:[^\pL\pN]|$)`)
)

// candidates builds the matching view of a catalogue. Models named only by a
// profile are included with what the profile id tells.
func candidates(cat Catalogue) []*candidate {
	byID := map[string]*candidate{}
	var out []*candidate
	add := func(m Model) *candidate {
		if cd, ok := byID[m.ID]; ok {
			return cd
		}
		cd := newCandidate(m)
		byID[m.ID] = cd
		out = append(out, cd)
		return cd
	}
	for _, m := range cat.Models {
		if m.ID != "" {
			add(m)
		}
	}
	for _, p := range cat.Profiles {
		geo, rest, ok := strings.Cut(p.ID, ".")
		if !ok || !strings.Contains(rest, ".") || (p.Type != "" && p.Type != "SYSTEM_DEFINED") {
			continue // application profiles are ARNs; they hold no quota of their own
		}
		scope := CrossRegion
		if strings.EqualFold(geo, "global") {
			scope = Global
		}
		ids := []string{rest}
		if len(p.Models) > 0 {
			ids = ids[:0]
			for _, arn := range p.Models {
				if _, id, ok := strings.Cut(arn, "foundation-model/"); ok {
					ids = append(ids, id)
				}
			}
		}
		for _, id := range slices.Compact(slices.Sorted(slices.Values(ids))) {
			cd := add(Model{ID: id, InferenceTypes: []string{"INFERENCE_PROFILE"}})
			if cd.profiles == nil {
				cd.profiles = map[Scope][]string{}
			}
			if !slices.Contains(cd.profiles[scope], p.ID) {
				cd.profiles[scope] = append(cd.profiles[scope], p.ID)
				slices.Sort(cd.profiles[scope])
			}
		}
	}
	return out
}

func newCandidate(m Model) *candidate {
	cd := &candidate{id: m.ID, types: m.InferenceTypes}
	prefix, rest, ok := strings.Cut(m.ID, ".")
	if !ok {
		prefix, rest = "", m.ID
	}
	cd.providerKeys = compactKeys(providerKey(m.Provider), alnumKey(prefix))

	var ctx string
	if sm := reIDContext.FindStringSubmatch(rest); sm != nil {
		ctx, rest = sm[1], strings.TrimSuffix(rest, sm[0])
	}
	if sm := reIDRev.FindStringSubmatch(rest); sm != nil {
		cd.ver.rev, cd.ver.hasRev = atoi(sm[1]), true
		rest = strings.TrimSuffix(rest, sm[0])
		if vm := reIDBareVer.FindStringSubmatch(rest); vm != nil && !reIDVer.MatchString(rest) {
			cd.ver.known, cd.ver.major = true, atoi(vm[1])
			rest = strings.TrimSuffix(rest, vm[0])
		}
	}
	if vm := reIDVer.FindStringSubmatch(rest); vm != nil {
		cd.ver.known, cd.ver.major = true, atoi(vm[1])
		if vm[2] != "" {
			// "rerank-v3-5": the sub-version is the model's own "3.5".
			cd.optional = append(cd.optional, vm[1]+vm[2])
		}
		rest = strings.TrimSuffix(rest, vm[0])
	}
	strip := providerWords(m.Provider, prefix)
	cd.idToks = without(tokens(rest), strip)
	name, nv := splitNameVersion(m.Name)
	cd.name = without(tokens(name), strip)
	if !cd.ver.known && nv.known {
		cd.ver = nv
	}
	if ctx != "" {
		// A provisioned-only context variant is a different model for
		// matching purposes; make the difference visible to both views.
		cd.idToks = append(cd.idToks, ctx)
		if len(cd.name) > 0 {
			cd.name = append(cd.name, ctx)
		}
	}
	if cd.ver.known {
		// A version may be written in the quota as "V1", "1" or "1.0"
		// ("Nova Reel1.1" is nova-reel-v1:1).
		M := strconv.Itoa(cd.ver.major)
		cd.optional = append(cd.optional, "v"+M, M, M+strconv.Itoa(cd.ver.rev))
	}
	return cd
}

// query is a quota's provider and model prepared for matching.
type query struct {
	providerKeys []string
	toks         []string
	ver          version
}

func newQuery(provider, model string) query {
	name, v := splitNameVersion(model)
	return query{
		providerKeys: compactKeys(providerKey(provider), alnumKey(provider)),
		toks:         without(tokens(name), providerWords(provider, "")),
		ver:          v,
	}
}

// score orders viable candidates: lower is better, field by field.
type score struct {
	extra    int // number-like candidate tokens the quota does not mention ("2402", "17b")
	version  int // 1 when the version is only assumed to fit
	fuzzy    int // quota tokens matched by edit distance, or generic ones unmatched
	generics int // generic candidate words the quota does not mention
}

// rank returns the single best candidate, or the tied best ones, and a note
// on the closest non-viable candidate for the failure reason.
func rank(q query, pool []*candidate) (best *candidate, tied []*candidate, closest string) {
	type scored struct {
		cd *candidate
		s  score
	}
	var ok []scored
	bestCovered := 0
	for _, cd := range pool {
		s, why, covered := evaluate(q, cd)
		if why == "" {
			ok = append(ok, scored{cd, s})
			continue
		}
		if covered > bestCovered {
			bestCovered = covered
			closest = cd.id + " (" + why + ")"
		}
	}
	if len(ok) == 0 {
		return nil, nil, closest
	}
	slices.SortStableFunc(ok, func(a, b scored) int {
		return cmp.Or(cmp.Compare(a.s.extra, b.s.extra), cmp.Compare(a.s.version, b.s.version),
			cmp.Compare(a.s.fuzzy, b.s.fuzzy), cmp.Compare(a.s.generics, b.s.generics),
			strings.Compare(a.cd.id, b.cd.id))
	})
	for _, x := range ok {
		if x.s == ok[0].s {
			tied = append(tied, x.cd)
		}
	}
	if len(tied) == 1 {
		return tied[0], tied, ""
	}
	return nil, tied, ""
}

// evaluate scores one candidate. A candidate is viable (why == "") when its
// version does not clash, every quota word is covered by its name, id or
// version, and one of its descriptions (name or id) has no word the quota
// lacks beyond generic ones; numbers it adds (release tags, sizes) only
// lower its rank. covered counts the quota words it covers, to name the
// closest miss.
func evaluate(q query, cd *candidate) (s score, why string, covered int) {
	if q.ver.known && cd.ver.known {
		if q.ver.major != cd.ver.major || (q.ver.hasRev && q.ver.rev != cd.ver.rev) {
			return s, fmt.Sprintf("version %d, quota says %d", cd.ver.major, q.ver.major), 0
		}
	}
	switch {
	case q.ver.known && !cd.ver.known:
		s.version = 1
	case !q.ver.known && cd.ver.known && cd.ver.major >= 2:
		// AWS leaves the version out of a quota name for a model's first
		// version ("Claude 3.5 Sonnet" vs "Claude 3.5 Sonnet V2").
		s.version = 1
	}
	all := slices.Concat(cd.name, cd.idToks, cd.optional)
	acroQ, acroC := acronyms(q.toks, all)
	var missing []string
	for i, t := range q.toks {
		if acroQ[i] {
			covered++
			continue
		}
		switch cover(t, all) {
		case exact:
			covered++
		case fuzzy:
			covered++
			s.fuzzy++
		default:
			if generic[t] {
				s.fuzzy++
				continue
			}
			missing = append(missing, t)
		}
	}
	if missing != nil {
		return s, "lacks " + strings.Join(missing, ", "), covered
	}
	// A model's name and id describe it twice ("SDXL 1.0" and
	// "stable-diffusion-xl-v1"); judge extras by the description that
	// fits the quota better.
	type extras struct{ words, numbers, generics int }
	var best *extras
	var extraWords []string
	for _, view := range [][]string{cd.name, cd.idToks} {
		if len(view) == 0 {
			continue
		}
		var e extras
		var w []string
		for _, t := range view {
			switch {
			case acroC[t] || cover(t, q.toks) != none:
			case generic[t]:
				e.generics++
			case isNumberLike(t):
				e.numbers++
			default:
				e.words++
				w = append(w, t)
			}
		}
		if best == nil || cmp.Or(cmp.Compare(e.words, best.words), cmp.Compare(e.numbers, best.numbers),
			cmp.Compare(e.generics, best.generics)) < 0 {
			best, extraWords = &e, w
		}
	}
	if best == nil {
		return s, "", covered
	}
	if best.words > 0 {
		return s, "has " + strings.Join(extraWords, ", ") + " the quota lacks", covered
	}
	s.extra, s.generics = best.numbers, best.generics
	return s, "", covered
}

// isNumberLike reports sizes ("17b", "128k", "8x7b") and release tags of
// four or more digits ("2402"): a model name adds them freely ("Mistral
// Large (24.02)", "Llama 4 Scout 17B Instruct") where the quota leaves them
// out. Short numbers are versions ("3.5" is "35") and must agree.
func isNumberLike(t string) bool {
	return reSize.MatchString(t) || (isDigits(t) && len(t) >= 4)
}

var reSize = regexp.MustCompile(`^\d+(?:x\d+)?[bkm]$`)

// acronyms finds candidate tokens that abbreviate a run of quota words by
// their initials, optionally followed by the run's last word: "sd3" for
// "stable diffusion 3", "sdxl" for "stable diffusion xl". It returns which
// quota words are covered that way and which candidate tokens were used.
func acronyms(q, cands []string) (coveredQ []bool, used map[string]bool) {
	coveredQ = make([]bool, len(q))
	used = map[string]bool{}
	for _, c := range cands {
		if len(c) < 3 {
			continue
		}
		for i := range q {
			acc := ""
			for k := i; k < len(q)-1 && len(acc) < len(c) && isAlpha(q[k]); k++ {
				acc += q[k][:1]
				if len(acc) >= 2 && acc+q[k+1] == c {
					for j := i; j <= k+1; j++ {
						coveredQ[j] = true
					}
					used[c] = true
				}
			}
		}
	}
	return coveredQ, used
}

// generic tokens describe rather than identify a model; quota names and
// model names drop them freely ("Titan Text G1 - Express" is "Titan Text
// Express"; "Llama 4 Maverick" is "Llama 4 Maverick 17B Instruct").
// "chat" is not among them: "Llama 2 13B" and "Llama 2 Chat 13B" are
// different models.
var generic = map[string]bool{"text": true, "g1": true, "instruct": true, "model": true, "base": true}

type coverage int

const (
	none coverage = iota
	fuzzy
	exact
)

// cover reports how well any of toks stands for t: equal, an abbreviation
// ("embed" for "embeddings"), or one edit apart with the same digits
// ("8x7bb" for "8x7b", never "405b" for "406b").
func cover(t string, toks []string) coverage {
	best := none
	for _, u := range toks {
		switch {
		case t == u:
			return exact
		case isAlpha(t) && isAlpha(u) && min(len(t), len(u)) >= 4 &&
			(strings.HasPrefix(t, u) || strings.HasPrefix(u, t)):
			return exact
		case min(len(t), len(u)) >= 4 && digits(t) == digits(u) && hasLetter(t) && hasLetter(u) && editDistance1(t, u):
			best = fuzzy
		}
	}
	return best
}

// tokens splits a model name or id into comparable words:
// lower-case runs of letters and digits, where "llama3"/"reel1" split into
// word and number, version numbers joined across "." and "-" ("3.7" and
// "3-7" are both "37"; "24.07" and "2407" agree), "+" spelled "plus", and
// 8-digit snapshot dates dropped (quota names never carry them).
func tokens(s string) []string {
	type run struct {
		s   string
		sep rune // separator before this run
	}
	var runs []run
	var cur []rune
	// pending is the separator since the last run: '.', '-' or '_' when it
	// was exactly one of those, ' ' for anything else.
	pending := ' '
	for _, r := range s {
		r = fold(r)
		if isASCIIAlnum(r) {
			if len(cur) == 0 {
				runs = append(runs, run{sep: pending})
			}
			cur = append(cur, r)
			continue
		}
		if len(cur) > 0 {
			runs[len(runs)-1].s = string(cur)
			cur, pending = cur[:0], 0
		}
		switch {
		case r == '+':
			runs = append(runs, run{"plus", ' '})
			pending = ' '
		case (r == '.' || r == '-' || r == '_') && pending == 0:
			pending = r
		default:
			pending = ' '
		}
	}
	if len(cur) > 0 {
		runs[len(runs)-1].s = string(cur)
	}

	var out []string
	joinable := false // the last token is a short number that a "." or "-" may continue
	for _, rn := range runs {
		parts := splitWordNumber(rn.s)
		for i, p := range parts {
			joined := i == 0 && joinable && (rn.sep == '.' || rn.sep == '-' || rn.sep == '_') &&
				isDigits(p) && len(p) <= 2
			if joined {
				out[len(out)-1] += p
			} else {
				out = append(out, p)
			}
			joinable = isDigits(out[len(out)-1]) && len(out[len(out)-1]) <= 3
		}
	}
	return slices.DeleteFunc(out, func(t string) bool { return len(t) == 8 && isDigits(t) })
}

// splitWordNumber splits "llama3" into "llama", "3" when the word part has at
// least three letters; short prefixes stay ("x4", "r1", "sd3", "g1"), as do
// sizes ("405b", "8x7b", "128k").
func splitWordNumber(s string) []string {
	i := 0
	for i < len(s) && s[i] >= 'a' && s[i] <= 'z' {
		i++
	}
	if i >= 3 && i < len(s) && isDigits(s[i:]) {
		return []string{s[:i], s[i:]}
	}
	return []string{s}
}

// splitNameVersion takes a version word ("v2", "V1.0") out of a name.
func splitNameVersion(name string) (string, version) {
	var v version
	f := strings.Map(fold, name)
	locs := reNameVer.FindAllStringSubmatchIndex(f, -1)
	if len(locs) == 0 {
		return name, v
	}
	m := locs[len(locs)-1]
	v.known, v.major = true, atoi(f[m[2]:m[3]])
	if m[4] >= 0 {
		v.rev, v.hasRev = atoi(f[m[4]:m[5]]), true
	}
	// Cut the same span from the folded name; the tokens fold anyway.
	return f[:m[0]] + " " + f[m[1]:], v
}

// providerKey is a provider name without corporate suffixes, so that
// "Stability.ai", "Stability AI", "Writer AI" and "Writer" agree.
func providerKey(p string) string {
	var keep []string
	for _, w := range tokens(p) {
		if !corporateSuffix[w] {
			keep = append(keep, w)
		}
	}
	return strings.Join(keep, "")
}

// providerWords are the tokens of a provider's name and id prefix, removed
// from model names before comparing: "Mistral Large (24.07)" from provider
// "Mistral AI" and "Large 2407" from the quota then agree.
func providerWords(provider, idPrefix string) []string {
	w := tokens(provider + " " + idPrefix)
	return slices.DeleteFunc(w, func(t string) bool { return corporateSuffix[t] })
}

func providerNames(all []*candidate) []string {
	var names []string
	for _, cd := range all {
		if len(cd.providerKeys) > 0 {
			names = append(names, cd.providerKeys[0])
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

func compactKeys(keys ...string) []string {
	return slices.DeleteFunc(slices.Compact(keys), func(k string) bool { return k == "" })
}

func without(toks, drop []string) []string {
	return slices.DeleteFunc(toks, func(t string) bool { return slices.Contains(drop, t) })
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1 // only called on \d+ matches; overflow is the one way here
	}
	return n
}

func isASCIIAlnum(r rune) bool { return r >= 'a' && r <= 'z' || r >= '0' && r <= '9' }

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func isAlpha(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 'a' || s[i] > 'z' {
			return false
		}
	}
	return s != ""
}

func hasLetter(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return r >= 'a' && r <= 'z' }) >= 0
}

func digits(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, s)
}

// editDistance1 reports whether a and b differ by exactly one insertion,
// deletion or substitution.
func editDistance1(a, b string) bool {
	if len(a) > len(b) {
		a, b = b, a
	}
	switch len(b) - len(a) {
	case 0:
		diff := 0
		for i := range a {
			if a[i] != b[i] {
				diff++
			}
		}
		return diff == 1
	case 1:
		i := 0
		for i < len(a) && a[i] == b[i] {
			i++
		}
		return a[i:] == b[i+1:]
	}
	return false
}
