package bedrocksim

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

//go:embed scenarios/default.json
var defaultScenarioJSON []byte

// Scopes a quota can enforce. A request's scope follows from the id it is
// sent with: a bare model id is on-demand, a geo profile (us., eu., apac.,
// ...) is cross-region, a global. profile is global.
const (
	ScopeOnDemand    = "on-demand"
	ScopeCrossRegion = "cross-region"
	ScopeGlobal      = "global"
	// ScopeProvisioned is a call to a provisioned model ARN: the
	// throughput's own capacity, no quota row.
	ScopeProvisioned = "provisioned"
)

// Metrics a quota can enforce.
const (
	MetricTPM = "TPM" // tokens per minute
	MetricRPM = "RPM" // requests per minute
	MetricTPD = "TPD" // tokens per day
)

// Scenario is a simulated AWS account: its model catalogue, its quotas per
// Region and how the runtime behaves. It is plain data, loaded from JSON.
type Scenario struct {
	Name  string `json:"name"`
	Notes string `json:"notes,omitempty"`
	// AccountID appears in ARNs.
	AccountID string `json:"accountId"`
	// DefaultRegion is used when a request's Region cannot be read from its
	// signature, and is the template for Regions the scenario does not list.
	DefaultRegion     string             `json:"defaultRegion"`
	Models            []Model            `json:"models"`
	InferenceProfiles []InferenceProfile `json:"inferenceProfiles"`
	// Quotas maps a Region to the rows Service Quotas lists there.
	Quotas                      map[string][]Quota      `json:"quotas"`
	ProvisionedModelThroughputs []ProvisionedThroughput `json:"provisionedModelThroughputs,omitempty"`
	ServiceQuotas               ServiceQuotasBehaviour  `json:"serviceQuotas"`
	Pricing                     PricingBehaviour        `json:"pricing,omitempty"`
	Runtime                     Runtime                 `json:"runtime"`
}

// Model is one foundation model of the catalogue.
type Model struct {
	ID       string `json:"modelId"`
	Provider string `json:"providerName"`
	Name     string `json:"modelName"`
	// InferenceTypes holds ON_DEMAND, PROVISIONED and INFERENCE_PROFILE. A
	// model without ON_DEMAND rejects its bare id, as Bedrock does.
	InferenceTypes   []string `json:"inferenceTypes"`
	InputModalities  []string `json:"inputModalities,omitempty"`
	OutputModalities []string `json:"outputModalities,omitempty"`
	// MaxOutputTokens is reserved when a request sets no max_tokens; 0 for
	// embedding models, which generate no output.
	MaxOutputTokens int `json:"maxOutputTokens"`
	// Burndown multiplies output tokens against TPM; 0 means the default
	// from the facts (5 for Claude 3.7 Sonnet and later Claude, else 1).
	Burndown  float64 `json:"burndown,omitempty"`
	Lifecycle string  `json:"lifecycle,omitempty"`
	// QuotaName is how quota names spell this model (documentation only).
	QuotaName string `json:"quotaName,omitempty"`
	// CountTokens says whether the CountTokens API supports the model.
	CountTokens bool `json:"countTokens,omitempty"`
}

// InferenceProfile is a system-defined (geo or global) inference profile.
type InferenceProfile struct {
	ID          string         `json:"inferenceProfileId"`
	Name        string         `json:"inferenceProfileName"`
	Description string         `json:"description,omitempty"`
	Type        string         `json:"type,omitempty"`
	Status      string         `json:"status,omitempty"`
	Models      []ProfileModel `json:"models"`
	// SourceRegions lists the Regions a request may be sent to with this
	// profile; empty means every Region.
	SourceRegions []string `json:"sourceRegions,omitempty"`
}

// ProfileModel is one destination of an inference profile.
type ProfileModel struct {
	ModelArn string `json:"modelArn"`
}

// Quota is one Service Quotas row of one Region.
type Quota struct {
	Code         string  `json:"quotaCode"`
	Name         string  `json:"quotaName"`
	Value        float64 `json:"value"`
	DefaultValue float64 `json:"defaultValue"`
	Adjustable   bool    `json:"adjustable"`
	Description  string  `json:"description,omitempty"`
	// CodeSource records where the code came from (gr-2025-06 or synthetic);
	// it never goes on the wire.
	CodeSource string `json:"codeSource,omitempty"`
	// Enforces is nil for rows that do not gate the runtime (batch,
	// provisioned model units).
	Enforces *Enforcement `json:"enforces,omitempty"`
	// TrueValue is the hidden capacity really enforced; nil means Value x
	// Runtime.TrueCapacityFraction.
	TrueValue *float64 `json:"trueValue,omitempty"`
}

// Enforcement says what a quota limits.
type Enforcement struct {
	Metric string   `json:"metric"`
	Scopes []string `json:"scopes"`
	Model  string   `json:"model"`
}

// ProvisionedThroughput is listed by ListProvisionedModelThroughputs and
// serves calls whose modelId is its ARN
// (arn:aws:bedrock:REGION:ACCOUNT:provisioned-model/NAME) while InService,
// from a capacity of its own, apart from every on-demand and profile quota:
// ModelUnits x TokensPerMinutePerUnit tokens per minute, charged input +
// 1.25 x cache_write + 0.1 x cache_read + output (no burndown), reserving
// max_tokens for the output at admission.
type ProvisionedThroughput struct {
	Name       string `json:"provisionedModelName"`
	ModelID    string `json:"modelId"`
	ModelUnits int    `json:"modelUnits"`
	Status     string `json:"status,omitempty"` // "" is InService
	// Region is where it lives; empty lists it in every Region.
	Region string `json:"region,omitempty"`
	// TokensPerMinutePerUnit is what one model unit buys (AWS tells each
	// account, and publishes no table). 0: calls to it are refused as
	// not simulated.
	TokensPerMinutePerUnit float64 `json:"tokensPerMinutePerUnit,omitempty"`
}

// ServiceQuotasBehaviour tunes the Service Quotas API.
type ServiceQuotasBehaviour struct {
	// PageSize is the page length when the caller sets no MaxResults.
	PageSize int `json:"pageSize,omitempty"`
	// EmptyPage makes the second page of ListServiceQuotas empty but with a
	// NextToken, as AWS sometimes answers.
	EmptyPage bool `json:"emptyPage,omitempty"`
	// AutoApproveAfter, when set, decides pending increase requests after
	// this much simulated time with Outcome (APPROVED by default).
	AutoApproveAfter Duration `json:"autoApproveAfter,omitempty"`
	Outcome          string   `json:"outcome,omitempty"`
}

// PricingBehaviour tunes the Price List Query API.
type PricingBehaviour struct {
	// RegionFactor scales the published (us-east-1) prices in a Region,
	// since AWS prices some Regions higher; a Region not listed is 1.
	RegionFactor map[string]float64 `json:"regionFactor,omitempty"`
}

// Runtime is the behaviour of bedrock-runtime.
type Runtime struct {
	// TrueCapacityFraction is the hidden capacity as a fraction of each
	// applied value, for quotas without TrueValue. 0 means 1.
	TrueCapacityFraction float64 `json:"trueCapacityFraction,omitempty"`
	// ReserveOutputBurndown multiplies max_tokens by the burndown at
	// admission (the safe reading of the facts). nil means true.
	ReserveOutputBurndown *bool `json:"reserveOutputBurndown,omitempty"`
	// InputCharsPerToken estimates input tokens from request text. 0 means 4.
	InputCharsPerToken float64    `json:"inputCharsPerToken,omitempty"`
	OutputTokens       OutputDist `json:"outputTokens"`
	Latency            Latency    `json:"latency"`
	Faults             Faults     `json:"faults"`
	// Changes alter capacities at offsets from the start.
	Changes []Change `json:"changes,omitempty"`
}

// OutputDist is how many output tokens a request generates, always capped
// by its max_tokens. Distribution is "fixed" (Fixed tokens), "uniform"
// (between MinFraction and MaxFraction of max_tokens) or "" (fixed).
// Max, when set, caps the result too (a model rarely writes 64K tokens).
type OutputDist struct {
	Distribution string  `json:"distribution,omitempty"`
	Fixed        int     `json:"fixed,omitempty"`
	MinFraction  float64 `json:"minFraction,omitempty"`
	MaxFraction  float64 `json:"maxFraction,omitempty"`
	Max          int     `json:"max,omitempty"`
}

// Latency is simulated time; it is divided by the speed for real waiting.
type Latency struct {
	TimeToFirstTokenMs    MsDist  `json:"timeToFirstTokenMs"`
	OutputTokensPerSecond float64 `json:"outputTokensPerSecond,omitempty"`
}

// MsDist is a uniform distribution of milliseconds.
type MsDist struct {
	Distribution string  `json:"distribution,omitempty"`
	Min          float64 `json:"min,omitempty"`
	Max          float64 `json:"max,omitempty"`
}

// Faults are injected before admission (so they consume nothing), except
// MidStreamThrottleRate, which breaks an admitted stream after some output.
type Faults struct {
	ServiceUnavailableRate float64 `json:"serviceUnavailableRate,omitempty"`
	ModelNotReadyRate      float64 `json:"modelNotReadyRate,omitempty"`
	ModelTimeoutRate       float64 `json:"modelTimeoutRate,omitempty"`
	MidStreamThrottleRate  float64 `json:"midStreamThrottleRate,omitempty"`
}

// Change alters quotas at simulated offset At. It applies to the quotas
// matching Region (empty: all Regions), QuotaCode (empty: all) and Model
// (empty: all). Exactly one of SetTrue, ScaleTrue, SetApplied is used.
type Change struct {
	At         Duration `json:"at"`
	Region     string   `json:"region,omitempty"`
	QuotaCode  string   `json:"quotaCode,omitempty"`
	Model      string   `json:"model,omitempty"`
	SetTrue    *float64 `json:"setTrue,omitempty"`
	ScaleTrue  *float64 `json:"scaleTrue,omitempty"`
	SetApplied *float64 `json:"setApplied,omitempty"`
}

// Duration is a time.Duration written as "90s" in JSON.
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "90s"-style strings or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err2 := json.Unmarshal(b, &secs); err2 != nil {
			return fmt.Errorf("duration %s: want a string like \"90s\" or seconds", b)
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// DefaultScenario returns a fresh copy of the embedded default scenario.
func DefaultScenario() *Scenario {
	sc, err := ParseScenario(defaultScenarioJSON)
	if err != nil {
		// The embedded file is tested; failing here is a build defect.
		panic(fmt.Sprintf("bedrocksim: embedded default scenario: %v", err))
	}
	return sc
}

// LoadScenario reads and validates a scenario file; an empty path is the
// embedded default, so a flag left empty needs no special case.
func LoadScenario(path string) (*Scenario, error) {
	if path == "" {
		return DefaultScenario(), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read scenario: %w", err)
	}
	sc, err := ParseScenario(b)
	if err != nil {
		return nil, fmt.Errorf("scenario %s: %w", path, err)
	}
	return sc, nil
}

// ParseScenario decodes and validates a scenario. Unknown fields are errors
// so that a misspelt option does not silently do nothing.
func ParseScenario(b []byte) (*Scenario, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var sc Scenario
	if err := dec.Decode(&sc); err != nil {
		return nil, fmt.Errorf("decode scenario: %w", err)
	}
	if err := sc.Validate(); err != nil {
		return nil, err
	}
	return &sc, nil
}

// Validate checks the references inside the scenario and names the bad field.
func (sc *Scenario) Validate() error {
	if sc.DefaultRegion == "" {
		return fmt.Errorf("scenario: defaultRegion is empty")
	}
	if sc.AccountID == "" {
		sc.AccountID = "123456789012"
	}
	models := make(map[string]bool, len(sc.Models))
	for i, m := range sc.Models {
		if m.ID == "" {
			return fmt.Errorf("scenario: models[%d].modelId is empty", i)
		}
		if models[m.ID] {
			return fmt.Errorf("scenario: models[%d]: duplicate modelId %q", i, m.ID)
		}
		if m.MaxOutputTokens < 0 {
			return fmt.Errorf("scenario: models[%d].maxOutputTokens is negative", i)
		}
		models[m.ID] = true
	}
	for r, f := range sc.Pricing.RegionFactor {
		if !(f > 0 && f <= 10) {
			return fmt.Errorf("scenario: pricing.regionFactor[%q] %v: want more than 0 and at most 10", r, f)
		}
	}
	for i, p := range sc.InferenceProfiles {
		if p.ID == "" || len(p.Models) == 0 {
			return fmt.Errorf("scenario: inferenceProfiles[%d]: needs inferenceProfileId and models", i)
		}
		if _, _, ok := strings.Cut(p.ID, "."); !ok {
			return fmt.Errorf("scenario: inferenceProfiles[%d].inferenceProfileId %q has no geo prefix", i, p.ID)
		}
		if id := modelIDFromArn(p.Models[0].ModelArn); !models[id] {
			return fmt.Errorf("scenario: inferenceProfiles[%d].models[0].modelArn: unknown model %q", i, id)
		}
	}
	pts := map[string]bool{}
	for i, p := range sc.ProvisionedModelThroughputs {
		switch {
		case p.Name == "" || strings.ContainsAny(p.Name, "/: "):
			return fmt.Errorf("scenario: provisionedModelThroughputs[%d].provisionedModelName %q: want a name without '/', ':' or spaces", i, p.Name)
		case pts[p.Name]:
			return fmt.Errorf("scenario: provisionedModelThroughputs[%d]: duplicate provisionedModelName %q", i, p.Name)
		case !models[p.ModelID]:
			return fmt.Errorf("scenario: provisionedModelThroughputs[%d].modelId: unknown model %q", i, p.ModelID)
		case p.ModelUnits < 1 || p.TokensPerMinutePerUnit < 0:
			return fmt.Errorf("scenario: provisionedModelThroughputs[%d]: modelUnits must be at least 1 and tokensPerMinutePerUnit not negative", i)
		}
		pts[p.Name] = true
	}
	if _, ok := sc.Quotas[sc.DefaultRegion]; !ok {
		return fmt.Errorf("scenario: quotas has no rows for defaultRegion %q", sc.DefaultRegion)
	}
	for region, rows := range sc.Quotas {
		seen := make(map[string]bool, len(rows))
		for i, q := range rows {
			where := fmt.Sprintf("quotas[%s][%d]", region, i)
			if q.Code == "" || q.Name == "" {
				return fmt.Errorf("scenario: %s: needs quotaCode and quotaName", where)
			}
			if seen[q.Code] {
				return fmt.Errorf("scenario: %s: duplicate quotaCode %s", where, q.Code)
			}
			seen[q.Code] = true
			if q.Value < 0 || (q.TrueValue != nil && *q.TrueValue < 0) {
				return fmt.Errorf("scenario: %s: negative value", where)
			}
			if e := q.Enforces; e != nil {
				switch e.Metric {
				case MetricTPM, MetricRPM, MetricTPD:
				default:
					return fmt.Errorf("scenario: %s.enforces.metric %q: want TPM, RPM or TPD", where, e.Metric)
				}
				if !models[e.Model] {
					return fmt.Errorf("scenario: %s.enforces.model: unknown model %q", where, e.Model)
				}
				if len(e.Scopes) == 0 {
					return fmt.Errorf("scenario: %s.enforces.scopes is empty", where)
				}
				for _, s := range e.Scopes {
					if s != ScopeOnDemand && s != ScopeCrossRegion && s != ScopeGlobal {
						return fmt.Errorf("scenario: %s.enforces.scopes: unknown scope %q", where, s)
					}
				}
			}
		}
	}
	r := sc.Runtime
	if r.TrueCapacityFraction < 0 || r.InputCharsPerToken < 0 || r.Latency.OutputTokensPerSecond < 0 {
		return fmt.Errorf("scenario: runtime: negative trueCapacityFraction, inputCharsPerToken or outputTokensPerSecond")
	}
	switch r.OutputTokens.Distribution {
	case "", "fixed", "uniform":
	default:
		return fmt.Errorf("scenario: runtime.outputTokens.distribution %q: want fixed or uniform", r.OutputTokens.Distribution)
	}
	for name, rate := range map[string]float64{
		"serviceUnavailableRate": r.Faults.ServiceUnavailableRate, "modelNotReadyRate": r.Faults.ModelNotReadyRate,
		"modelTimeoutRate": r.Faults.ModelTimeoutRate, "midStreamThrottleRate": r.Faults.MidStreamThrottleRate,
	} {
		if rate < 0 || rate > 1 {
			return fmt.Errorf("scenario: runtime.faults.%s %v: want 0..1", name, rate)
		}
	}
	for i, c := range r.Changes {
		n := 0
		for _, p := range []*float64{c.SetTrue, c.ScaleTrue, c.SetApplied} {
			if p != nil {
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("scenario: runtime.changes[%d]: set exactly one of setTrue, scaleTrue, setApplied", i)
		}
	}
	switch sc.ServiceQuotas.Outcome {
	case "", "APPROVED", "DENIED", "CASE_CLOSED", "NOT_APPROVED":
	default:
		return fmt.Errorf("scenario: serviceQuotas.outcome %q: want APPROVED or DENIED", sc.ServiceQuotas.Outcome)
	}
	return nil
}

// burndown is the model's output multiplier: the scenario's value, else the
// facts' default (5 for Claude 3.7 Sonnet and later Claude models).
func (m *Model) burndown() float64 {
	if m.Burndown > 0 {
		return m.Burndown
	}
	if !strings.HasPrefix(m.ID, "anthropic.") {
		return 1
	}
	id := strings.TrimPrefix(m.ID, "anthropic.")
	for _, old := range []string{"claude-v", "claude-instant", "claude-3-haiku", "claude-3-sonnet", "claude-3-opus", "claude-3-5-"} {
		if strings.HasPrefix(id, old) {
			return 1
		}
	}
	return 5
}

func (m *Model) has(inferenceType string) bool {
	for _, t := range m.InferenceTypes {
		if t == inferenceType {
			return true
		}
	}
	return false
}

// modelIDFromArn returns the part after the last slash of an ARN (or the
// string itself when it is not an ARN).
func modelIDFromArn(s string) string {
	if !strings.HasPrefix(s, "arn:") {
		return s
	}
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		return s[i+1:]
	}
	return s
}
