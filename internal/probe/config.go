package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// DefaultPrompt is the fixed request: short, and asking for a short answer,
// so that a call costs a few dozen tokens.
const DefaultPrompt = "Reply with the single word OK."

// Clock is the probe's time: pacing, step lengths and rates.
type Clock interface {
	Now() time.Time
	// Sleep waits d of this clock's time, or until ctx ends (its error).
	Sleep(ctx context.Context, d time.Duration) error
}

// Wall is the real clock.
var Wall Clock = wall{}

type wall struct{}

func (wall) Now() time.Time { return time.Now() }

func (wall) Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Step is how the target rate grows from one step to the next: times
// Factor, or plus Increment requests per minute (exactly one is set).
type Step struct {
	Factor    float64
	Increment float64
}

// ParseStep reads "1.25x" (multiply by 1.25) or "+50" (add 50 RPM).
func ParseStep(s string) (Step, error) {
	s = strings.TrimSpace(s)
	if v, ok := strings.CutPrefix(s, "+"); ok {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil || !(n > 0) || math.IsInf(n, 0) {
			return Step{}, fmt.Errorf("step %q: want a positive increment such as +50 (RPM)", s)
		}
		return Step{Increment: n}, nil
	}
	if v, ok := strings.CutSuffix(s, "x"); ok {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil || !(n > 1) || n > 10 {
			return Step{}, fmt.Errorf("step %q: want a factor in (1, 10] such as 1.25x", s)
		}
		return Step{Factor: n}, nil
	}
	return Step{}, fmt.Errorf("step %q: write a factor as 1.25x or an increment as +50 (RPM)", s)
}

func (s Step) String() string {
	if s.Increment > 0 {
		return "+" + strconv.FormatFloat(s.Increment, 'g', -1, 64)
	}
	return strconv.FormatFloat(s.Factor, 'g', -1, 64) + "x"
}

// MarshalText writes the step as ParseStep reads it.
func (s Step) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (s *Step) UnmarshalText(b []byte) error {
	v, err := ParseStep(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

func (s Step) next(rpm float64) float64 {
	if s.Increment > 0 {
		return rpm + s.Increment
	}
	return rpm * s.Factor
}

// Config is one probe. Model, StartRPM, Step, StepDuration and MaxSteps
// are required; the zero value of the rest works.
type Config struct {
	// Model is the id the calls use (a model id or an inference profile
	// id), Region the Region they go to (for the broker's budget lookup;
	// the SDK client has its own).
	Model, Region string
	StartRPM      float64
	Step          Step
	StepDuration  time.Duration
	MaxSteps      int
	// MaxTokens is each call's max_tokens. Default 16.
	MaxTokens int32
	// Threshold is the share of Bedrock's answers that may be throttles
	// before the probe stops. Default 0.01.
	Threshold float64
	// Prompt is the fixed user message. Default DefaultPrompt.
	Prompt string
	// Concurrency bounds the calls in flight. Default 64.
	Concurrency int
	// CallTimeout bounds each call, broker wait included. Default 2 min.
	CallTimeout time.Duration
	// RefusedStop, ErrorStop and SkippedStop are the shares of a step's
	// calls that stop the probe when refused by the broker, failed
	// otherwise, or skipped for lack of a free slot. Defaults 0.05, 0.1,
	// 0.05.
	RefusedStop, ErrorStop, SkippedStop float64
	// Clock defaults to Wall.
	Clock Clock
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
}

// withDefaults validates cfg, naming the bad field, and fills defaults.
func (cfg Config) withDefaults() (Config, error) {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if cfg.Model == "" {
		bad("Model: required")
	}
	if !(cfg.StartRPM > 0) || math.IsInf(cfg.StartRPM, 0) {
		bad("StartRPM: %v must be positive", cfg.StartRPM)
	}
	if cfg.Step.Factor == 0 && cfg.Step.Increment == 0 {
		bad("Step: required (a factor or an increment)")
	} else if (cfg.Step.Factor != 0 && cfg.Step.Factor <= 1) || cfg.Step.Increment < 0 || (cfg.Step.Factor != 0 && cfg.Step.Increment != 0) {
		bad("Step: %+v: want one of a factor above 1 or a positive increment", cfg.Step)
	}
	if cfg.StepDuration < time.Second {
		bad("StepDuration: %v is under 1s", cfg.StepDuration)
	}
	if cfg.StartRPM > 0 && cfg.StepDuration >= time.Second && stepCalls(cfg.StartRPM, cfg.StepDuration) < 1 {
		bad("StartRPM: %v RPM for %v makes no call; start higher or step longer", cfg.StartRPM, cfg.StepDuration)
	}
	if cfg.MaxSteps < 1 || cfg.MaxSteps > 100 {
		bad("MaxSteps: %d is outside [1, 100]", cfg.MaxSteps)
	}
	if cfg.MaxTokens < 0 {
		bad("MaxTokens: %d is negative", cfg.MaxTokens)
	}
	if cfg.Threshold < 0 || cfg.Threshold >= 1 {
		bad("Threshold: %v is outside [0, 1)", cfg.Threshold)
	}
	if cfg.Concurrency < 0 {
		bad("Concurrency: %d is negative", cfg.Concurrency)
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, err
	}
	if cfg.MaxTokens == 0 {
		cfg.MaxTokens = 16
	}
	if cfg.Threshold == 0 {
		cfg.Threshold = 0.01
	}
	if cfg.Prompt == "" {
		cfg.Prompt = DefaultPrompt
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 64
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 2 * time.Minute
	}
	if cfg.RefusedStop <= 0 {
		cfg.RefusedStop = 0.05
	}
	if cfg.ErrorStop <= 0 {
		cfg.ErrorStop = 0.1
	}
	if cfg.SkippedStop <= 0 {
		cfg.SkippedStop = 0.05
	}
	if cfg.Clock == nil {
		cfg.Clock = Wall
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	return cfg, nil
}
