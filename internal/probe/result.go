package probe

import (
	"fmt"
	"time"
)

// Why a probe stopped.
const (
	StopThrottled   = "throttle_threshold" // Bedrock throttled more than the threshold
	StopBroker      = "broker_refused"     // the broker's budget or ceiling held the probe back
	StopErrors      = "errors"             // too many other failures
	StopConcurrency = "concurrency"        // the probe could not send its target rate
	StopTopStep     = "top_step"           // every step ran
	StopFailed      = "failed"             // a failure every call would repeat
	StopInterrupted = "interrupted"        // the caller's ctx ended
)

// Bases of an estimate.
const (
	BasisLastStep      = "last_step_under_threshold"
	BasisAfterThrottle = "after_first_throttle"
	BasisNoThrottle    = "no_throttling"
)

// Result is a probe's outcome, written as JSON.
type Result struct {
	Model      string       `json:"model"`
	Region     string       `json:"region,omitempty"`
	StartedAt  time.Time    `json:"started_at"`
	FinishedAt time.Time    `json:"finished_at"`
	Threshold  float64      `json:"threshold"`
	Config     resultConfig `json:"config"`
	Steps      []StepResult `json:"steps"`
	Stop       Stop         `json:"stop"`
	// Estimate is the effective limit: the lower of LastUnderThreshold and
	// AfterFirstThrottle (see the package doc); nil when no step had a
	// successful call.
	Estimate *Estimate `json:"estimate"`
	// LastUnderThreshold is the achieved rate of the last step whose
	// throttle rate was within the threshold.
	LastUnderThreshold *StepRate `json:"last_under_threshold,omitempty"`
	// AfterFirstThrottle is the stopping step's successful rate from its
	// first throttle to its end: Bedrock's sustained rate.
	AfterFirstThrottle *Rate `json:"after_first_throttle,omitempty"`
	// BrokerCeiling is the broker's adaptive ceiling after the run, when
	// engaged: what it learned from the throttles the probe reported.
	BrokerCeiling  *Limits `json:"broker_ceiling,omitempty"`
	BudgetBefore   *Budget `json:"budget_before,omitempty"`
	BudgetAfter    *Budget `json:"budget_after,omitempty"`
	BudgetAfterErr string  `json:"budget_after_error,omitempty"`
}

type resultConfig struct {
	StartRPM     float64 `json:"start_rpm"`
	Step         Step    `json:"step"`
	StepDuration string  `json:"step_duration"`
	MaxSteps     int     `json:"max_steps"`
	MaxTokens    int32   `json:"max_tokens"`
	Concurrency  int     `json:"concurrency"`
	Prompt       string  `json:"prompt"`
}

// StepResult is one step. Calls counts the calls started (OK + Throttles
// + Refused + Errors + Cancelled); Skipped the ticks that found no free
// slot. ThrottleRate is Throttles over the calls Bedrock answered.
type StepResult struct {
	Step            int     `json:"step"`
	TargetRPM       float64 `json:"target_rpm"`
	DurationSeconds float64 `json:"duration_seconds"`
	Calls           int64   `json:"calls"`
	OK              int64   `json:"ok"`
	Throttles       int64   `json:"throttles"`
	Refused         int64   `json:"broker_refused"`
	Errors          int64   `json:"errors"`
	Cancelled       int64   `json:"cancelled,omitempty"`
	Skipped         int64   `json:"skipped,omitempty"`
	ThrottleRate    float64 `json:"throttle_rate"`
	// AchievedRPM and AchievedTPM are successful calls and their charge
	// (input + output x burndown) per minute of the step.
	AchievedRPM  float64 `json:"achieved_rpm"`
	AchievedTPM  float64 `json:"achieved_tpm"`
	InputTokens  int64   `json:"input_tokens"`
	OutputTokens int64   `json:"output_tokens"`
	FirstError   string  `json:"first_error,omitempty"`
}

func (s StepResult) line(of int) string {
	return fmt.Sprintf("step %d/%d: target %.1f rpm, achieved %.1f rpm %.0f tpm, %d calls, %d throttled (%.1f%%), %d refused by the broker, %d errors",
		s.Step, of, s.TargetRPM, s.AchievedRPM, s.AchievedTPM, s.Calls, s.Throttles, 100*s.ThrottleRate, s.Refused, s.Errors)
}

// Stop says why and after which step the probe stopped.
type Stop struct {
	Reason string `json:"reason"`
	Step   int    `json:"step"`
	Detail string `json:"detail"`
}

// Rate is a measured rate over a window.
type Rate struct {
	RequestsPerMinute float64 `json:"requests_per_minute"`
	TokensPerMinute   float64 `json:"tokens_per_minute"`
	Seconds           float64 `json:"seconds"`
}

// StepRate is a step's achieved rate.
type StepRate struct {
	Step              int     `json:"step"`
	RequestsPerMinute float64 `json:"requests_per_minute"`
	TokensPerMinute   float64 `json:"tokens_per_minute"`
}

// Estimate is the effective limit the probe found.
type Estimate struct {
	RequestsPerMinute float64 `json:"requests_per_minute"`
	TokensPerMinute   float64 `json:"tokens_per_minute"`
	Basis             string  `json:"basis"`
	// LowerBound: nothing throttled, so the real limit is at least this.
	LowerBound bool   `json:"lower_bound"`
	Note       string `json:"note"`
}

// estimate fills Estimate, LastUnderThreshold and BrokerCeiling from the
// steps.
func (r *Result) estimate() {
	var throttled bool
	for _, s := range r.Steps {
		if s.Throttles > 0 {
			throttled = true
		}
		if s.ThrottleRate <= r.Threshold && s.OK > 0 {
			r.LastUnderThreshold = &StepRate{Step: s.Step, RequestsPerMinute: s.AchievedRPM, TokensPerMinute: s.AchievedTPM}
		}
	}
	last, after := r.LastUnderThreshold, r.AfterFirstThrottle
	switch {
	case last == nil && after == nil:
		return
	case !throttled:
		e := &Estimate{RequestsPerMinute: last.RequestsPerMinute, TokensPerMinute: last.TokensPerMinute, Basis: BasisNoThrottle, LowerBound: true,
			Note: fmt.Sprintf("Bedrock did not throttle up to step %d: its limit is at least this.", last.Step)}
		if r.Stop.Reason == StopBroker {
			e.Note += " The broker's budget stopped the probe; to probe above it, have an admin set a temporary override (SetOverride) and clear it afterwards."
		}
		r.Estimate = e
	case after != nil && (last == nil || after.RequestsPerMinute < last.RequestsPerMinute):
		r.Estimate = &Estimate{RequestsPerMinute: after.RequestsPerMinute, TokensPerMinute: after.TokensPerMinute, Basis: BasisAfterThrottle,
			Note: fmt.Sprintf("What Bedrock still accepted in the %.0f s after its first throttle of step %d.", after.Seconds, r.Stop.Step)}
	default:
		r.Estimate = &Estimate{RequestsPerMinute: last.RequestsPerMinute, TokensPerMinute: last.TokensPerMinute, Basis: BasisLastStep,
			Note: fmt.Sprintf("The achieved rate of step %d, the last within the threshold.", last.Step)}
	}
}

// finish records the broker's view after the run.
func (r *Result) finish(b *Budget, err error) {
	if err != nil {
		r.BudgetAfterErr = err.Error()
		return
	}
	r.BudgetAfter = b
	if b.CeilingEngaged {
		c := b.Ceiling
		r.BrokerCeiling = &c
	}
}
