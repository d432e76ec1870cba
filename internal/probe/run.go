package probe

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"github.com/aws/smithy-go"

	"github.com/bedrockqb/quotabroker/clients/quotaclient"
)

// Converser makes the probe's calls; a *bedrockruntime.Client built with
// quotaclient.WithLeases (batch priority, no throttle retries) is the one
// meant.
type Converser interface {
	Converse(ctx context.Context, in *bedrockruntime.ConverseInput, optFns ...func(*bedrockruntime.Options)) (*bedrockruntime.ConverseOutput, error)
}

// outcome of one call.
type outcome int

const (
	outOK outcome = iota
	outThrottled
	outRefused
	outError
	outCancelled // the probe was interrupted during it
	outSkipped   // not started: every slot was busy
)

// callRec is one call: when it was started (clock time) and how it ended.
type callRec struct {
	at       time.Time
	outcome  outcome
	in, out  int64
	errText  string
	fatalErr error // a failure that every later call would repeat
}

// Run carries out plan: step by step until a stop condition, then asks the
// broker for its adaptive ceiling. It returns the result so far with an
// error when it could not go on (broker unreachable or refusing the probe's
// identity, Bedrock rejecting the request itself, ctx ended).
func Run(ctx context.Context, plan Plan, bedrock Converser, broker Reporter) (*Result, error) {
	cfg := plan.cfg
	if cfg.Clock == nil {
		return nil, errors.New("probe: plan not made by NewPlan")
	}
	burndown := 1.0
	if plan.Budget != nil {
		burndown = plan.Budget.OutputBurndown
	}
	res := &Result{Model: cfg.Model, Region: cfg.Region, StartedAt: cfg.Clock.Now(), Threshold: cfg.Threshold,
		Config: resultConfig{StartRPM: cfg.StartRPM, Step: cfg.Step, StepDuration: cfg.StepDuration.String(), MaxSteps: cfg.MaxSteps,
			MaxTokens: cfg.MaxTokens, Concurrency: cfg.Concurrency, Prompt: cfg.Prompt},
		BudgetBefore: plan.Budget}
	in := &bedrockruntime.ConverseInput{
		ModelId: aws.String(cfg.Model),
		Messages: []rttypes.Message{{Role: rttypes.ConversationRoleUser,
			Content: []rttypes.ContentBlock{&rttypes.ContentBlockMemberText{Value: cfg.Prompt}}}},
		InferenceConfig: &rttypes.InferenceConfiguration{MaxTokens: aws.Int32(cfg.MaxTokens)},
	}
	var runErr error
	for i, ps := range plan.Steps {
		calls, end := runStep(ctx, cfg, bedrock, in, ps.TargetRPM)
		st := summarise(i+1, ps.TargetRPM, cfg, calls, burndown)
		res.Steps = append(res.Steps, st)
		fmt.Fprintln(cfg.Progress, st.line(len(plan.Steps)))
		if err := firstFatal(calls); err != nil {
			res.Stop = Stop{Reason: StopFailed, Step: st.Step, Detail: err.Error()}
			runErr = err
			break
		}
		if ctx.Err() != nil {
			res.Stop = Stop{Reason: StopInterrupted, Step: st.Step, Detail: ctx.Err().Error()}
			runErr = ctx.Err()
			break
		}
		if stop, ok := stopAfter(cfg, st, i == len(plan.Steps)-1); ok {
			res.Stop = stop
			if stop.Reason == StopThrottled || st.Throttles > 0 {
				res.AfterFirstThrottle = afterFirstThrottle(calls, end, cfg.StepDuration, burndown)
			}
			break
		}
	}
	res.FinishedAt = cfg.Clock.Now()
	res.estimate()
	// The broker's ceiling, learned from the throttles the probe's leases
	// reported (a fresh context: an interrupted probe still reports it).
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	res.finish(FetchBudget(rctx, broker, cfg.Model, cfg.Region))
	return res, runErr
}

// runStep holds rpm for one step duration (open loop), then waits for the
// step's calls to end, and returns them with the step's end.
func runStep(ctx context.Context, cfg Config, bedrock Converser, in *bedrockruntime.ConverseInput, rpm float64) ([]callRec, time.Time) {
	clock := cfg.Clock
	start := clock.Now()
	end := start.Add(cfg.StepDuration)
	var (
		mu    sync.Mutex // guards calls
		calls []callRec
		wg    sync.WaitGroup
	)
	slots := make(chan struct{}, cfg.Concurrency)
	// The step makes the plan's number of calls, the n-th at start +
	// n x duration/count: no drift from the time a loop turn takes.
	count := stepCalls(rpm, cfg.StepDuration)
	for n := range count {
		at := start.Add(time.Duration(float64(cfg.StepDuration) * float64(n) / float64(count)))
		if clock.Sleep(ctx, at.Sub(clock.Now())) != nil {
			break
		}
		select {
		case slots <- struct{}{}:
		default:
			mu.Lock()
			calls = append(calls, callRec{at: at, outcome: outSkipped})
			mu.Unlock()
			continue
		}
		wg.Go(func() {
			defer func() { <-slots }()
			cctx, cancel := context.WithTimeout(context.WithValue(ctx, scheduledKey{}, at), cfg.CallTimeout)
			defer cancel()
			out, err := bedrock.Converse(cctx, in)
			rec := classify(ctx, out, err)
			rec.at = at
			mu.Lock()
			calls = append(calls, rec)
			mu.Unlock()
		})
	}
	// The last call starts one interval before the end: hold until the
	// end, so that the step lasts its duration and its rate is right.
	clock.Sleep(ctx, end.Sub(clock.Now()))
	wg.Wait()
	return calls, end
}

type scheduledKey struct{}

// ScheduledAt returns the time (on the probe's clock) a call was scheduled
// to start, from the ctx the probe passes to Converse: the call's place in
// the load, whenever its goroutine actually ran.
func ScheduledAt(ctx context.Context) (time.Time, bool) {
	t, ok := ctx.Value(scheduledKey{}).(time.Time)
	return t, ok
}

// classify reads one call's end; ctx is the probe's.
func classify(ctx context.Context, out *bedrockruntime.ConverseOutput, err error) callRec {
	var te *rttypes.ThrottlingException
	var api smithy.APIError
	switch {
	case err == nil:
		r := callRec{outcome: outOK}
		if u := out.Usage; u != nil {
			r.in, r.out = i32(u.InputTokens), i32(u.OutputTokens)
		}
		return r
	case ctx.Err() != nil:
		return callRec{outcome: outCancelled}
	case errors.Is(err, quotaclient.ErrRefused):
		return callRec{outcome: outRefused}
	case errors.As(err, &te):
		return callRec{outcome: outThrottled}
	case errors.Is(err, quotaclient.ErrUnavailable), errors.Is(err, quotaclient.ErrUnauthenticated),
		errors.Is(err, quotaclient.ErrPermission), errors.Is(err, quotaclient.ErrInvalid), errors.Is(err, quotaclient.ErrNotFound):
		return callRec{outcome: outError, errText: err.Error(), fatalErr: fmt.Errorf("broker: %w", err)}
	case errors.As(err, &api) && api.ErrorFault() == smithy.FaultClient && !transientClientError[api.ErrorCode()]:
		// The request itself is wrong (unknown model, no access, bad
		// max_tokens): every call would fail the same way.
		return callRec{outcome: outError, errText: err.Error(), fatalErr: fmt.Errorf("bedrock rejected the request: %w", err)}
	}
	return callRec{outcome: outError, errText: err.Error()}
}

// transientClientError are 4xx answers that say nothing against the
// request: counted as errors, not fatal.
var transientClientError = map[string]bool{
	"ModelNotReadyException": true, "ModelTimeoutException": true, "ServiceQuotaExceededException": true,
	"ModelErrorException": true, "RequestTimeout": true,
}

// stepCalls is how many calls a step of d at rpm makes.
func stepCalls(rpm float64, d time.Duration) int64 { return int64(math.Round(rpm * d.Minutes())) }

func i32(p *int32) int64 {
	if p == nil {
		return 0
	}
	return int64(*p)
}

func firstFatal(calls []callRec) error {
	for _, c := range calls {
		if c.fatalErr != nil {
			return c.fatalErr
		}
	}
	return nil
}

// summarise turns a step's calls into its result.
func summarise(n int, rpm float64, cfg Config, calls []callRec, burndown float64) StepResult {
	st := StepResult{Step: n, TargetRPM: math.Round(rpm*100) / 100, DurationSeconds: cfg.StepDuration.Seconds()}
	for _, c := range calls {
		switch c.outcome {
		case outSkipped:
			st.Skipped++
			continue
		case outOK:
			st.OK++
			st.InputTokens += c.in
			st.OutputTokens += c.out
		case outThrottled:
			st.Throttles++
		case outRefused:
			st.Refused++
		case outError:
			st.Errors++
			if st.FirstError == "" {
				st.FirstError = c.errText
			}
		case outCancelled:
			st.Cancelled++
		}
		st.Calls++
	}
	if answered := st.OK + st.Throttles + st.Errors; answered > 0 {
		st.ThrottleRate = float64(st.Throttles) / float64(answered)
	}
	mins := cfg.StepDuration.Minutes()
	st.AchievedRPM = round1(float64(st.OK) / mins)
	st.AchievedTPM = math.Round(charged(st.InputTokens, st.OutputTokens, burndown) / mins)
	return st
}

func charged(in, out int64, burndown float64) float64 { return float64(in) + float64(out)*burndown }

func round1(v float64) float64 { return math.Round(v*10) / 10 }

// stopAfter decides whether the probe ends after step st.
func stopAfter(cfg Config, st StepResult, last bool) (Stop, bool) {
	share := func(n int64) float64 {
		if st.Calls+st.Skipped == 0 {
			return 0
		}
		return float64(n) / float64(st.Calls+st.Skipped)
	}
	switch {
	case st.ThrottleRate > cfg.Threshold:
		return Stop{Reason: StopThrottled, Step: st.Step,
			Detail: fmt.Sprintf("Bedrock throttled %.1f%% of the calls it answered (threshold %.4g%%)", 100*st.ThrottleRate, 100*cfg.Threshold)}, true
	case share(st.Refused) > cfg.RefusedStop:
		return Stop{Reason: StopBroker, Step: st.Step,
			Detail: fmt.Sprintf("the broker refused %.1f%% of the calls: its budget (quota x margin, or an override) or its adaptive ceiling is the limit now, not Bedrock", 100*share(st.Refused))}, true
	case share(st.Errors) > cfg.ErrorStop:
		return Stop{Reason: StopErrors, Step: st.Step, Detail: fmt.Sprintf("%.1f%% of the calls failed; first: %s", 100*share(st.Errors), st.FirstError)}, true
	case share(st.Skipped) > cfg.SkippedStop:
		return Stop{Reason: StopConcurrency, Step: st.Step,
			Detail: fmt.Sprintf("%.1f%% of the calls could not start: all %d slots were busy (raise --concurrency)", 100*share(st.Skipped), cfg.Concurrency)}, true
	case last:
		return Stop{Reason: StopTopStep, Step: st.Step, Detail: "the last step ran under the threshold"}, true
	}
	return Stop{}, false
}

// afterFirstThrottle measures the successful rate of a step's calls started
// from its first throttled call to the step's end: once Bedrock throttles,
// its burst reserve is spent and what it still admits is its sustained
// rate. It returns nil when that window is under a tenth of the step (too
// few calls to say anything).
func afterFirstThrottle(calls []callRec, end time.Time, stepDur time.Duration, burndown float64) *Rate {
	var first time.Time
	for _, c := range calls {
		if c.outcome == outThrottled && (first.IsZero() || c.at.Before(first)) {
			first = c.at
		}
	}
	window := end.Sub(first)
	if first.IsZero() || window < stepDur/10 {
		return nil
	}
	var ok, in, out int64
	for _, c := range calls {
		if c.outcome == outOK && !c.at.Before(first) {
			ok++
			in += c.in
			out += c.out
		}
	}
	mins := window.Minutes()
	return &Rate{RequestsPerMinute: round1(float64(ok) / mins), TokensPerMinute: math.Round(charged(in, out, burndown) / mins), Seconds: round1(window.Seconds())}
}
