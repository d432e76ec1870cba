package broker

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

// Scope is how a model is called. Bedrock keeps separate quotas per scope.
type Scope int

const (
	ScopeUnknown Scope = iota
	// ScopeOnDemand is the bare model id.
	ScopeOnDemand
	// ScopeCrossRegion is a geographic inference profile (us., eu., apac., ...).
	ScopeCrossRegion
	// ScopeGlobal is a global inference profile (global.).
	ScopeGlobal
	// ScopeProvisioned is a Provisioned Throughput, called by its ARN. Its
	// capacity is its own (model units), not the on-demand quotas, so its
	// budget is keyed by the ARN: Key.Model is the provisioned model ARN,
	// and Spec.Serves the base model it runs.
	ScopeProvisioned
)

func (s Scope) String() string {
	switch s {
	case ScopeOnDemand:
		return "on-demand"
	case ScopeCrossRegion:
		return "cross-region"
	case ScopeGlobal:
		return "global"
	case ScopeProvisioned:
		return "provisioned"
	default:
		return "unknown"
	}
}

// ParseScope is the inverse of Scope.String.
func ParseScope(s string) (Scope, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "on-demand", "ondemand", "on_demand":
		return ScopeOnDemand, nil
	case "cross-region", "geo", "cross_region":
		return ScopeCrossRegion, nil
	case "global":
		return ScopeGlobal, nil
	case "provisioned":
		return ScopeProvisioned, nil
	}
	return ScopeUnknown, fmt.Errorf("unknown scope %q (want on-demand, cross-region, global or provisioned)", s)
}

// Key identifies a budget: the quotas of one model, called one way, in one
// Region. Model is the base model id, also for profile scopes; for
// ScopeProvisioned it is the provisioned model ARN, since an account may
// hold several Provisioned Throughputs of one model in one Region, each
// with its own capacity.
type Key struct {
	Region string
	Scope  Scope
	Model  string
}

func (k Key) String() string { return k.Region + "/" + k.Scope.String() + "/" + k.Model }

// Limits of a budget. Zero means the limit is absent (not enforced).
type Limits struct {
	RPM         int64 // requests per minute
	TPM         int64 // tokens per minute
	TPD         int64 // tokens per day
	Concurrency int64 // leases outstanding at once
}

// Limit names one of the limits: a budget's, or one of the bounds that
// protect the broker from a flood (ClientPolicy, Config.MaxWaiters).
type Limit int

const (
	LimitNone Limit = iota
	LimitRPM
	LimitTPM
	LimitTPD
	LimitConcurrency
	// LimitClientWaiters: the client has ClientPolicy.MaxWaiters callers
	// waiting already.
	LimitClientWaiters
	// LimitWaiters: the broker has Config.MaxWaiters callers waiting.
	LimitWaiters
	// LimitClientLeases: the client holds ClientPolicy.MaxConcurrent
	// active leases.
	LimitClientLeases
	// LimitClientCap: one of the client's own RPM, TPM or TPD caps
	// (ClientCaps) has no room for the request.
	LimitClientCap
	// LimitMoney: a money budget (the client's or the account's, per day or
	// per month) has no room for the request's price.
	LimitMoney
)

// Flood reports whether l is one of the bounds against a flood of callers
// rather than a budget's limit.
func (l Limit) Flood() bool {
	return l == LimitClientWaiters || l == LimitWaiters || l == LimitClientLeases
}

func (l Limit) String() string {
	switch l {
	case LimitRPM:
		return "RPM"
	case LimitTPM:
		return "TPM"
	case LimitTPD:
		return "TPD"
	case LimitConcurrency:
		return "concurrency"
	case LimitClientWaiters:
		return "client waiters"
	case LimitWaiters:
		return "waiters"
	case LimitClientLeases:
		return "client leases"
	case LimitClientCap:
		return "client cap"
	case LimitMoney:
		return "money budget"
	default:
		return "none"
	}
}

// geoPrefixes are the inference-profile prefixes AWS uses today. A prefix not
// listed here is still recognised when the id has three dot-separated parts
// (profile.provider.model), so a new geography needs no code change.
var geoPrefixes = map[string]bool{
	"us": true, "eu": true, "apac": true, "jp": true, "au": true, "ca": true,
	"in": true, "us-gov": true, "sa": true, "me": true, "af": true,
}

// ValidRegion reports whether s is shaped like an AWS Region name
// (^[a-z]{2}(-[a-z]+)+-\d{1,2}$: us-east-1, us-gov-west-1). By hand, since
// every Acquire checks its Region: the regexp was a fifth of Acquire's
// CPU. FuzzValidRegion holds it to the regexp. Adapters and file formats
// check Regions with it too.
func ValidRegion(s string) bool {
	lower := func(c byte) bool { return c >= 'a' && c <= 'z' }
	if len(s) < 2 || !lower(s[0]) || !lower(s[1]) {
		return false
	}
	words := 0
	for i := 2; i < len(s); {
		if s[i] != '-' {
			return false
		}
		i++
		j := i
		for j < len(s) && lower(s[j]) {
			j++
		}
		if j > i {
			words++
			i = j
			continue
		}
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		// The number is the last part, after at least one word.
		return words > 0 && j > i && j-i <= 2 && j == len(s)
	}
	return false
}

// Limits on request strings, so that a hostile caller cannot make the broker
// hold or log megabytes.
const (
	maxModelIDLen = 2048
	maxRegionLen  = 32
	maxClientLen  = 256
)

// ParseModelID resolves what a caller names (a model id, an inference
// profile id, the ARN of either, or a provisioned model ARN) to a budget
// key. region is the caller's Region ("" for defaultRegion); an ARN carries
// its own Region, which must agree with region when both are given.
func ParseModelID(modelID, region, defaultRegion string) (Key, error) {
	modelID = strings.TrimSpace(modelID)
	if modelID == "" {
		return Key{}, invalidf("model_id", "is empty")
	}
	if len(modelID) > maxModelIDLen {
		return Key{}, invalidf("model_id", "is %d bytes long; at most %d", len(modelID), maxModelIDLen)
	}
	if len(region) > maxRegionLen {
		return Key{}, invalidf("region", "is %d bytes long; at most %d", len(region), maxRegionLen)
	}
	id := modelID
	if strings.HasPrefix(id, "arn:") {
		// arn:PARTITION:bedrock:REGION:ACCOUNT:TYPE/ID
		parts := strings.SplitN(id, ":", 6)
		if len(parts) != 6 || parts[2] != "bedrock" {
			return Key{}, invalidf("model_id", "%q is not a Bedrock ARN", modelID)
		}
		typ, rest, ok := strings.Cut(parts[5], "/")
		if !ok || rest == "" {
			return Key{}, invalidf("model_id", "ARN %q has no resource id", modelID)
		}
		switch typ {
		case "foundation-model", "inference-profile":
		case "provisioned-model":
			arnRegion, err := ParseProvisionedARN(modelID)
			if err != nil {
				return Key{}, err
			}
			if region != "" && region != arnRegion {
				return Key{}, invalidf("region", "%q disagrees with the Region %q of the provisioned model ARN %s", region, arnRegion, modelID)
			}
			return Key{Region: arnRegion, Scope: ScopeProvisioned, Model: modelID}, nil
		default:
			return Key{}, invalidf("model_id", "ARN resource type %q is not supported (want foundation-model, inference-profile or provisioned-model)", typ)
		}
		if arnRegion := parts[3]; arnRegion != "" {
			if region != "" && region != arnRegion {
				return Key{}, invalidf("region", "%q disagrees with the Region %q of the ARN", region, arnRegion)
			}
			region = arnRegion
		}
		id = rest
	}
	if region == "" {
		region = defaultRegion
	}
	if !ValidRegion(region) {
		return Key{}, invalidf("region", "%q is not an AWS Region name", region)
	}
	scope, model := ScopeOnDemand, id
	if first, rest, ok := strings.Cut(id, "."); ok {
		switch {
		case first == "global":
			scope, model = ScopeGlobal, rest
		case geoPrefixes[first] || strings.Count(id, ".") >= 2:
			scope, model = ScopeCrossRegion, rest
		}
	}
	if model == "" || strings.ContainsAny(model, " \t\r\n/") {
		return Key{}, invalidf("model_id", "%q is not a model or inference profile id", modelID)
	}
	return Key{Region: region, Scope: scope, Model: model}, nil
}

// ParseProvisionedARN checks that arn is a provisioned model ARN,
// arn:PARTITION:bedrock:REGION:ACCOUNT:provisioned-model/ID with a Region
// name, a 12-digit account and an id of letters, digits, '-', '_' or '.',
// and returns its Region. The ARN is what the caller sends to Bedrock, so
// anything else would be a budget no call can use.
func ParseProvisionedARN(arn string) (region string, err error) {
	bad := func(why string) error {
		return invalidf("model_id", "%q is not a provisioned model ARN (want arn:aws:bedrock:REGION:ACCOUNT:provisioned-model/ID): %s", arn, why)
	}
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[2] != "bedrock" {
		return "", bad("not a Bedrock ARN")
	}
	switch parts[1] {
	case "aws", "aws-cn", "aws-us-gov":
	default:
		return "", bad(fmt.Sprintf("unknown partition %q", parts[1]))
	}
	if !ValidRegion(parts[3]) {
		return "", bad(fmt.Sprintf("Region %q is not an AWS Region name", parts[3]))
	}
	if acct := parts[4]; len(acct) != 12 || strings.Trim(acct, "0123456789") != "" {
		return "", bad(fmt.Sprintf("account %q is not 12 digits", acct))
	}
	id, ok := strings.CutPrefix(parts[5], "provisioned-model/")
	if !ok {
		return "", bad("the resource is not provisioned-model/ID")
	}
	if id == "" || len(id) > 128 || strings.Trim(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != "" {
		return "", bad(fmt.Sprintf("id %q is not 1 to 128 letters, digits, '-', '_' or '.'", id))
	}
	return parts[3], nil
}

var claudeVersionRE = regexp.MustCompile(`claude-(?:(?:instant|sonnet|haiku|opus)-)?v?(\d+)(?:-(\d))?(?:[-.:]|$)`)

// claudeVersion extracts the family version of an Anthropic Claude model id:
// anthropic.claude-3-7-sonnet-... is 3.7, anthropic.claude-sonnet-4-5-... is
// 4.5, anthropic.claude-opus-4-20250514 is 4, anthropic.claude-v2 is 2. The
// second group is one digit so that a date (-20250514) is not read as a minor
// version.
func claudeVersion(model string) (float64, bool) {
	if !strings.HasPrefix(model, "anthropic.") {
		return 0, false
	}
	m := claudeVersionRE.FindStringSubmatch(model)
	if m == nil {
		return 0, false
	}
	major, _ := strconv.Atoi(m[1])
	v := float64(major)
	if m[2] != "" {
		minor, _ := strconv.Atoi(m[2])
		v += float64(minor) / 10
	}
	return v, true
}

// DefaultBurndown is how many quota tokens one output token costs for model,
// per bedrock-facts.md section 3: 5 for Claude 3.7 Sonnet and every later
// Claude, 1 for everything else as far as AWS has published. A budget's spec
// overrides it.
func DefaultBurndown(model string) float64 {
	if v, ok := claudeVersion(model); ok && v >= 3.7-1e-9 {
		return 5
	}
	return 1
}

// DefaultMaxOutputTokens is what Bedrock reserves when a request leaves
// max_tokens unset: the model's maximum output. The figures are the published
// maxima of the Claude families (recent ones 64K, Opus 4/4.1 32K); for other
// models 4096 is a conservative guess, which a budget's spec should replace.
func DefaultMaxOutputTokens(model string) int64 {
	v, ok := claudeVersion(model)
	switch {
	case !ok:
		return 4096
	case strings.Contains(model, "opus-4-20") || strings.Contains(model, "opus-4-1"):
		return 32000
	case v >= 3.7:
		return 64000
	case v >= 3.5:
		return 8192
	default:
		return 4096
	}
}

// reservation is Bedrock's admission charge: input + cache_write +
// max_tokens x burndown, rounded up so the broker never reserves less than
// Bedrock. On a Provisioned Throughput cache writes weigh 1.25 (and there
// is no burndown: its spec's is 1).
func reservation(scope Scope, input, cacheWrite, maxOutput int64, burndown float64) int64 {
	return input + cacheWriteCharge(scope, cacheWrite) + int64(math.Ceil(float64(maxOutput)*burndown))
}

// settlement is Bedrock's completion charge: input + cache_write + output x
// burndown, cache reads free, for on-demand and profiles; input + 1.25 x
// cache_write + 0.1 x cache_read + output on a Provisioned Throughput
// (bedrock-facts.md section 3).
func settlement(scope Scope, u Usage, burndown float64) int64 {
	c := u.InputTokens + cacheWriteCharge(scope, u.CacheWriteInputTokens) + int64(math.Ceil(float64(u.OutputTokens)*burndown))
	if scope == ScopeProvisioned {
		c += (u.CacheReadInputTokens + 9) / 10
	}
	return c
}

func cacheWriteCharge(scope Scope, cacheWrite int64) int64 {
	if scope == ScopeProvisioned {
		return cacheWrite + (cacheWrite+3)/4
	}
	return cacheWrite
}
