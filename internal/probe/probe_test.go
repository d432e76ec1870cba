package probe

import (
	"bytes"
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"google.golang.org/grpc"

	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

func TestParseStep(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Step
		err  string
	}{
		{"1.25x", Step{Factor: 1.25}, ""},
		{"+50", Step{Increment: 50}, ""},
		{" 2x ", Step{Factor: 2}, ""},
		{"1.25", Step{}, "write a factor as 1.25x"},
		{"1x", Step{}, "factor in (1, 10]"},
		{"11x", Step{}, "factor in (1, 10]"},
		{"+0", Step{}, "positive increment"},
		{"+NaN", Step{}, "positive increment"},
		{"x", Step{}, "factor in (1, 10]"},
	} {
		got, err := ParseStep(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseStep(%q): got %v, want an error containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseStep(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if back, err := ParseStep(got.String()); err != nil || back != got {
			t.Errorf("ParseStep(%q.String()) = %+v, %v", tc.in, back, err)
		}
	}
}

func TestConfigNamesTheBadField(t *testing.T) {
	good := Config{Model: "m", StartRPM: 10, Step: Step{Factor: 1.5}, StepDuration: time.Minute, MaxSteps: 3}
	for _, tc := range []struct {
		change func(*Config)
		want   string
	}{
		{func(c *Config) { c.Model = "" }, "Model"},
		{func(c *Config) { c.StartRPM = 0 }, "StartRPM"},
		{func(c *Config) { c.StartRPM = 0.1 }, "makes no call"},
		{func(c *Config) { c.Step = Step{} }, "Step"},
		{func(c *Config) { c.Step = Step{Factor: 2, Increment: 3} }, "Step"},
		{func(c *Config) { c.StepDuration = time.Millisecond }, "StepDuration"},
		{func(c *Config) { c.MaxSteps = 0 }, "MaxSteps"},
		{func(c *Config) { c.Threshold = 1 }, "Threshold"},
	} {
		c := good
		tc.change(&c)
		if _, err := NewPlan(c, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error naming %s", err, tc.want)
		}
	}
	if _, err := NewPlan(good, nil); err != nil {
		t.Fatal(err)
	}
}

func TestPlanCountsCallsAndTokens(t *testing.T) {
	cfg := Config{Model: "us.anthropic.claude-haiku-4-5-20251001-v1:0", StartRPM: 100, Step: Step{Increment: 50},
		StepDuration: 30 * time.Second, MaxSteps: 3, MaxTokens: 10, Prompt: strings.Repeat("a", 40)}
	b := &Budget{Key: "us-east-1/cross-region/anthropic.claude-haiku-4-5-20251001-v1:0", OutputBurndown: 5,
		Static: Limits{RequestsPerMinute: 180}}
	p, err := NewPlan(cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	// 100, 150, 200 RPM for half a minute: 50 + 75 + 100 calls; each 10
	// input tokens + 10 max_tokens x 5.
	if p.Calls != 225 || p.ChargedTokensPerCall != 60 || p.MaxChargedTokens != 225*60 || p.MaxBilledOutput != 2250 {
		t.Fatalf("plan %+v", p)
	}
	if p.Steps[1].OverBudget || !p.Steps[2].OverBudget {
		t.Fatalf("only the 200 RPM step is above a 180 RPM budget: %+v", p.Steps)
	}
	var w bytes.Buffer
	p.Write(&w)
	for _, want := range []string{"above the broker's budget", "at most 225 calls over 1m30s", "13500 tokens charged"} {
		if !strings.Contains(w.String(), want) {
			t.Errorf("plan text lacks %q:\n%s", want, w.String())
		}
	}
}

// fakeClock is virtual time: Sleep advances it at once.
type fakeClock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if d > 0 {
		c.mu.Lock()
		c.now = c.now.Add(d)
		c.mu.Unlock()
	}
	return ctx.Err()
}

// fakeBedrock admits capacity calls a minute, without burst and whatever
// order the calls' goroutines run in: time (the calls' scheduled times) is
// cut into slots of a minute/capacity, and each slot admits one call.
// failWith, when set, is every call's error.
type fakeBedrock struct {
	capacity    float64    // calls a minute
	mu          sync.Mutex // guards taken
	taken       map[int64]bool
	failWith    error
	inTok, outT int32
}

func (f *fakeBedrock) Converse(ctx context.Context, in *bedrockruntime.ConverseInput, _ ...func(*bedrockruntime.Options)) (*bedrockruntime.ConverseOutput, error) {
	if f.failWith != nil {
		return nil, f.failWith
	}
	at, ok := ScheduledAt(ctx)
	if !ok {
		return nil, errors.New("no scheduled time in ctx")
	}
	slot := int64(math.Floor(float64(at.UnixNano()) / (float64(time.Minute) / f.capacity)))
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.taken == nil {
		f.taken = map[int64]bool{}
	}
	if f.taken[slot] {
		return nil, &rttypes.ThrottlingException{Message: aws.String("Too many tokens")}
	}
	f.taken[slot] = true
	return &bedrockruntime.ConverseOutput{Usage: &rttypes.TokenUsage{InputTokens: aws.Int32(f.inTok), OutputTokens: aws.Int32(f.outT)}}, nil
}

type fakeReporter struct{ ceilingTPM int64 }

func (r fakeReporter) GetQuotaReport(context.Context, *pb.GetQuotaReportRequest, ...grpc.CallOption) (*pb.GetQuotaReportResponse, error) {
	return &pb.GetQuotaReportResponse{Budgets: []*pb.BudgetReport{{Budget: &pb.Budget{
		Key:            &pb.BudgetKey{Region: "us-east-1", Scope: pb.Scope_SCOPE_CROSS_REGION, Model: "amazon.nova-micro-v1:0"},
		Static:         &pb.Limits{TokensPerMinute: 100000},
		Effective:      &pb.Limits{TokensPerMinute: 100000},
		OutputBurndown: 2,
		Adaptive:       &pb.Adaptive{Ceiling: &pb.Limits{TokensPerMinute: r.ceilingTPM}},
	}}}}, nil
}

func runFake(t *testing.T, f *fakeBedrock, rep Reporter, cfg Config) *Result {
	t.Helper()
	cfg.Clock = &fakeClock{now: time.Unix(1e9, 0)}
	b, err := FetchBudget(context.Background(), rep, cfg.Model, "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), p, f, rep)
	if err != nil && f.failWith == nil {
		t.Fatal(err)
	}
	return res
}

func TestRunStopsAtTheThresholdAndEstimatesTheSustainedRate(t *testing.T) {
	f := &fakeBedrock{capacity: 100, inTok: 10, outT: 5}
	var progress bytes.Buffer
	res := runFake(t, f, fakeReporter{ceilingTPM: 1800}, Config{Model: "us.amazon.nova-micro-v1:0", Region: "us-east-1",
		StartRPM: 40, Step: Step{Factor: 1.5}, StepDuration: time.Minute, MaxSteps: 8, Concurrency: 1000, Progress: &progress})
	// 40, 60, 90 RPM run clean; 135 is over the capacity of 100.
	if res.Stop.Reason != StopThrottled || len(res.Steps) != 4 {
		t.Fatalf("stop %+v after %d steps", res.Stop, len(res.Steps))
	}
	for i, s := range res.Steps {
		if s.Calls != s.OK+s.Throttles+s.Refused+s.Errors+s.Cancelled {
			t.Errorf("step %d: calls %d do not add up: %+v", i+1, s.Calls, s)
		}
	}
	if s := res.Steps[3]; s.Calls != 135 || s.OK+s.Throttles != 135 || s.ThrottleRate < 0.2 {
		t.Fatalf("step 4: %+v", s)
	}
	if l := res.LastUnderThreshold; l == nil || l.Step != 3 || l.RequestsPerMinute != 90 || l.TokensPerMinute != 90*(10+5*2) {
		t.Fatalf("last under threshold %+v", l)
	}
	e := res.Estimate
	if e == nil || e.Basis != BasisLastStep || e.RequestsPerMinute != 90 {
		t.Fatalf("estimate %+v: without a burst the last clean step is the lower one", e)
	}
	if a := res.AfterFirstThrottle; a == nil || math.Abs(a.RequestsPerMinute-100) > 2 {
		t.Fatalf("after the first throttle %+v, want about the capacity of 100", a)
	}
	if res.BrokerCeiling == nil || res.BrokerCeiling.TokensPerMinute != 1800 {
		t.Fatalf("broker ceiling %+v", res.BrokerCeiling)
	}
	if n := strings.Count(progress.String(), "\n"); n != 4 {
		t.Fatalf("%d progress lines:\n%s", n, progress.String())
	}
}

func TestRunWithoutThrottlesGivesALowerBound(t *testing.T) {
	f := &fakeBedrock{capacity: 1000, inTok: 10, outT: 5}
	res := runFake(t, f, fakeReporter{}, Config{Model: "us.amazon.nova-micro-v1:0", StartRPM: 10, Step: Step{Increment: 10},
		StepDuration: time.Minute, MaxSteps: 3})
	if res.Stop.Reason != StopTopStep || len(res.Steps) != 3 {
		t.Fatalf("stop %+v", res.Stop)
	}
	if e := res.Estimate; e == nil || !e.LowerBound || e.Basis != BasisNoThrottle || e.RequestsPerMinute != 30 {
		t.Fatalf("estimate %+v", e)
	}
	if res.BrokerCeiling != nil {
		t.Fatalf("ceiling %+v reported while not engaged", res.BrokerCeiling)
	}
}

func TestRunStopsWhenTheBrokerRefuses(t *testing.T) {
	f := &fakeBedrock{failWith: &quotaclient.RefusedError{RetryAfter: time.Second}}
	res := runFake(t, f, fakeReporter{}, Config{Model: "us.amazon.nova-micro-v1:0", StartRPM: 10, Step: Step{Increment: 10},
		StepDuration: time.Minute, MaxSteps: 3})
	if res.Stop.Reason != StopBroker || res.Stop.Step != 1 || res.Steps[0].Refused != 10 {
		t.Fatalf("stop %+v, steps %+v", res.Stop, res.Steps)
	}
}

func TestRunStopsOnAFailureEveryCallWouldRepeat(t *testing.T) {
	f := &fakeBedrock{failWith: errors.Join(errors.New("acquire lease"), quotaclient.ErrUnavailable)}
	cfg := Config{Model: "us.amazon.nova-micro-v1:0", StartRPM: 10, Step: Step{Increment: 10}, StepDuration: time.Minute, MaxSteps: 3, Clock: &fakeClock{now: time.Unix(1e9, 0)}}
	p, err := NewPlan(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), p, f, fakeReporter{})
	if !errors.Is(err, quotaclient.ErrUnavailable) || res.Stop.Reason != StopFailed || len(res.Steps) != 1 {
		t.Fatalf("err %v, stop %+v", err, res.Stop)
	}
}

// TestBudgetOf: what a probe calls names its budget as the broker keys it;
// a Provisioned Throughput's by its whole ARN.
func TestBudgetOf(t *testing.T) {
	const arn = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc"
	for _, tc := range []struct {
		id    string
		scope pb.Scope
		model string
	}{
		{"anthropic.claude-3-haiku-20240307-v1:0", pb.Scope_SCOPE_ON_DEMAND, "anthropic.claude-3-haiku-20240307-v1:0"},
		{"us.anthropic.claude-3-haiku-20240307-v1:0", pb.Scope_SCOPE_CROSS_REGION, "anthropic.claude-3-haiku-20240307-v1:0"},
		{"arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0", pb.Scope_SCOPE_ON_DEMAND, "anthropic.claude-3-haiku-20240307-v1:0"},
		{arn, pb.Scope_SCOPE_PROVISIONED, arn},
	} {
		if scope, model := budgetOf(tc.id); scope != tc.scope || model != tc.model {
			t.Errorf("budgetOf(%q) = %v %q, want %v %q", tc.id, scope, model, tc.scope, tc.model)
		}
	}
}
