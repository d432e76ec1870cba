package probe

import (
	"context"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"google.golang.org/grpc"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// Reporter is the broker call the probe makes besides leasing: the budget
// before the plan and the adaptive ceiling after the run.
type Reporter interface {
	GetQuotaReport(ctx context.Context, in *pb.GetQuotaReportRequest, opts ...grpc.CallOption) (*pb.GetQuotaReportResponse, error)
}

// Limits are per-minute limits; 0 is none.
type Limits struct {
	RequestsPerMinute int64 `json:"requests_per_minute,omitempty"`
	TokensPerMinute   int64 `json:"tokens_per_minute,omitempty"`
}

// Budget is the broker's budget the probe's calls draw on.
type Budget struct {
	// Key is region/scope/model as the broker names it.
	Key string `json:"key"`
	// Effective is what the broker hands out now (quota x margin or the
	// override, lowered by an engaged adaptive ceiling).
	Effective Limits `json:"effective"`
	// Static is quota x margin, or the override: what no throttle raises.
	Static         Limits  `json:"static"`
	Quota          Limits  `json:"quota"`
	Override       bool    `json:"override,omitempty"`
	OutputBurndown float64 `json:"output_burndown"`
	// Ceiling is the adaptive ceiling when engaged (zero fields: not).
	Ceiling           Limits `json:"adaptive_ceiling"`
	CeilingEngaged    bool   `json:"adaptive_engaged"`
	AdaptiveReason    string `json:"adaptive_reason,omitempty"`
	AdaptiveDecreases int64  `json:"adaptive_decreases,omitempty"`
}

// geoPrefixes are the inference-profile prefixes in front of a model id
// (as in clients/quotaclient).
var geoPrefixes = map[string]bool{"us": true, "eu": true, "apac": true, "jp": true, "au": true, "ca": true, "in": true, "global": true, "us-gov": true}

// budgetOf splits a model or profile id into the broker's scope and base
// model, as the broker keys budgets.
func budgetOf(id string) (pb.Scope, string) {
	if strings.HasPrefix(id, "arn:") && strings.Contains(id, ":provisioned-model/") {
		// A Provisioned Throughput's budget is keyed by its ARN.
		return pb.Scope_SCOPE_PROVISIONED, id
	}
	if i := strings.LastIndex(id, "/"); i >= 0 { // an ARN
		id = id[i+1:]
	}
	if p, rest, ok := strings.Cut(id, "."); ok && geoPrefixes[p] {
		if p == "global" {
			return pb.Scope_SCOPE_GLOBAL, rest
		}
		return pb.Scope_SCOPE_CROSS_REGION, rest
	}
	return pb.Scope_SCOPE_ON_DEMAND, id
}

// FetchBudget asks the broker for the budget that calls to model in region
// draw on. region may be empty (the broker's default Region is then
// unknown here, so the one budget of that scope and model is taken).
func FetchBudget(ctx context.Context, r Reporter, model, region string) (*Budget, error) {
	scope, base := budgetOf(model)
	rep, err := r.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{Model: base, Region: region})
	if err != nil {
		return nil, fmt.Errorf("get quota report: %w", err)
	}
	for _, br := range rep.GetBudgets() {
		b := br.GetBudget()
		k := b.GetKey()
		if k.GetScope() != scope || k.GetModel() != base {
			continue
		}
		out := &Budget{
			Key:            fmt.Sprintf("%s/%s/%s", k.GetRegion(), scopeName(k.GetScope()), k.GetModel()),
			Effective:      limits(b.GetEffective()),
			Static:         limits(b.GetStatic()),
			Quota:          limits(b.GetQuota()),
			Override:       b.GetOverride() != nil,
			OutputBurndown: b.GetOutputBurndown(),
		}
		if out.OutputBurndown <= 0 {
			out.OutputBurndown = 1
		}
		if a := b.GetAdaptive(); a != nil {
			out.Ceiling = limits(a.GetCeiling())
			out.CeilingEngaged = out.Ceiling.RequestsPerMinute > 0 || out.Ceiling.TokensPerMinute > 0
			out.AdaptiveReason = a.GetReason()
			out.AdaptiveDecreases = a.GetDecreases()
		}
		return out, nil
	}
	return nil, fmt.Errorf("the broker has no budget for %s (scope %s, model %s) in region %q: calls would be refused",
		model, scopeName(scope), base, region)
}

// scopeName is the broker's spelling of a scope: on-demand, cross-region,
// global.
func scopeName(s pb.Scope) string {
	return strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(s.String()), "scope_"), "_", "-")
}

func limits(l *pb.Limits) Limits {
	return Limits{RequestsPerMinute: l.GetRequestsPerMinute(), TokensPerMinute: l.GetTokensPerMinute()}
}

// PlannedStep is one step of a plan.
type PlannedStep struct {
	Step      int     `json:"step"`
	TargetRPM float64 `json:"target_rpm"`
	Calls     int64   `json:"calls"`
	// OverBudget: the broker's static budget cannot grant this rate, so
	// part of the step will be refused.
	OverBudget bool `json:"over_budget,omitempty"`
}

// Plan is what a probe will do, at most: it stops earlier at the
// threshold.
type Plan struct {
	Steps    []PlannedStep `json:"steps"`
	Duration time.Duration `json:"-"`
	Calls    int64         `json:"calls"`
	// Per call: estimated input tokens and the reserved charge (input +
	// max_tokens x burndown), the most one call can count against TPM.
	InputTokensPerCall   int64 `json:"input_tokens_per_call"`
	ChargedTokensPerCall int64 `json:"charged_tokens_per_call"`
	// MaxChargedTokens is the most the whole plan can charge against the
	// quota; Bedrock bills at most Calls x (input + max_tokens) tokens.
	MaxChargedTokens int64 `json:"max_charged_tokens"`
	MaxBilledInput   int64 `json:"max_billed_input_tokens"`
	MaxBilledOutput  int64 `json:"max_billed_output_tokens"`
	// Budget is the broker's view (nil with BudgetErr when unknown).
	Budget    *Budget `json:"budget,omitempty"`
	BudgetErr string  `json:"budget_error,omitempty"`
	cfg       Config
}

// NewPlan lays out cfg's steps against the broker budget b (nil: unknown).
func NewPlan(cfg Config, b *Budget) (Plan, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Plan{}, err
	}
	burndown := 1.0
	if b != nil {
		burndown = b.OutputBurndown
	}
	p := Plan{Budget: b, cfg: cfg, InputTokensPerCall: int64(math.Ceil(float64(len(cfg.Prompt)) / 4))}
	p.ChargedTokensPerCall = p.InputTokensPerCall + int64(math.Ceil(float64(cfg.MaxTokens)*burndown))
	rpm := cfg.StartRPM
	for i := range cfg.MaxSteps {
		calls := stepCalls(rpm, cfg.StepDuration)
		s := PlannedStep{Step: i + 1, TargetRPM: rpm, Calls: calls}
		if b != nil {
			s.OverBudget = (b.Static.RequestsPerMinute > 0 && rpm > float64(b.Static.RequestsPerMinute)) ||
				(b.Static.TokensPerMinute > 0 && rpm*float64(p.ChargedTokensPerCall) > float64(b.Static.TokensPerMinute))
		}
		p.Steps = append(p.Steps, s)
		p.Calls += calls
		p.Duration += cfg.StepDuration
		rpm = cfg.Step.next(rpm)
	}
	p.MaxChargedTokens = p.Calls * p.ChargedTokensPerCall
	p.MaxBilledInput = p.Calls * p.InputTokensPerCall
	p.MaxBilledOutput = p.Calls * int64(cfg.MaxTokens)
	return p, nil
}

// Write prints the plan for people.
func (p Plan) Write(w io.Writer) {
	c := p.cfg
	fmt.Fprintf(w, "probe plan for %s", c.Model)
	if c.Region != "" {
		fmt.Fprintf(w, " in %s", c.Region)
	}
	fmt.Fprintf(w, ": up to %d steps of %v, from %.4g RPM, step %s; stop when more than %.4g%% of calls are throttled\n",
		len(p.Steps), c.StepDuration, c.StartRPM, c.Step, 100*c.Threshold)
	fmt.Fprintf(w, "each call: Converse, a %d-byte prompt (about %d input tokens), max_tokens %d; batch priority through the broker\n",
		len(c.Prompt), p.InputTokensPerCall, c.MaxTokens)
	switch {
	case p.Budget != nil:
		b := p.Budget
		fmt.Fprintf(w, "broker budget %s: %s now (static %s", b.Key, limitString(b.Effective), limitString(b.Static))
		if b.Override {
			fmt.Fprint(w, ", an operator override")
		}
		fmt.Fprintf(w, "; quota %s), output burndown %g\n", limitString(b.Quota), b.OutputBurndown)
	case p.BudgetErr != "":
		fmt.Fprintf(w, "broker budget unknown: %s\n", p.BudgetErr)
	}
	fmt.Fprintln(w, "\nSTEP  TARGET RPM  CALLS  MAX TPM (reserved)")
	for _, s := range p.Steps {
		note := ""
		if s.OverBudget {
			note = "  above the broker's budget: partly refused"
		}
		fmt.Fprintf(w, "%4d  %10.1f  %5d  %18.0f%s\n", s.Step, s.TargetRPM, s.Calls, s.TargetRPM*float64(p.ChargedTokensPerCall), note)
	}
	fmt.Fprintf(w, "\nat most %d calls over %v; at most %d tokens charged against the quota (%d per call: input + max_tokens x burndown), "+
		"at most %d input + %d output tokens billed\n", p.Calls, p.Duration, p.MaxChargedTokens, p.ChargedTokensPerCall, p.MaxBilledInput, p.MaxBilledOutput)
}

func limitString(l Limits) string {
	var parts []string
	if l.RequestsPerMinute > 0 {
		parts = append(parts, fmt.Sprintf("%d RPM", l.RequestsPerMinute))
	}
	if l.TokensPerMinute > 0 {
		parts = append(parts, fmt.Sprintf("%d TPM", l.TokensPerMinute))
	}
	if len(parts) == 0 {
		return "no per-minute limit"
	}
	return strings.Join(parts, ", ")
}
