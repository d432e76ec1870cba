package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bedrockqb/quotabroker/broker/awsclient"
	"github.com/bedrockqb/quotabroker/clients/quotaclient"
)

// demoService is one synthetic service of the demo's traffic. A leased
// service calls Converse through the Go client's lease middleware at a
// steady rate; a bypass service calls InvokeModel with a plain SDK client,
// as code nobody moved onto the broker does.
type demoService struct {
	name      string
	model     string
	priority  quotaclient.Priority
	every     time.Duration // one call started per interval
	inputLen  int           // characters of prompt
	maxTokens int32         // 0: unset (the broker reserves the model's maximum)
	wait      time.Duration // how long a call waits for capacity
	// bypass: no lease; the SDK's own retries, as a user has them.
	bypass bool
	// bursts: zero sends all the time; else only in bursts.
	bursts demoBursts
}

// demoBursts: the service sends from start for on, and again every
// period after that.
type demoBursts struct{ start, on, period time.Duration }

// active reports whether the service sends at elapsed since the traffic
// started.
func (b demoBursts) active(elapsed time.Duration) bool {
	if b == (demoBursts{}) {
		return true
	}
	if elapsed < b.start {
		return false
	}
	return (elapsed-b.start)%b.period < b.on
}

// The demo's story, against the simulator's default account (its quotas,
// and the hidden capacities the broker can only learn from throttles):
//
//   - chat-frontend is an interactive service well inside its quota
//     (Sonnet 4.5 through the us. profile: 60 of 250 RPM, about a third of
//     the TPM), until legacy-summariser, which calls the same profile
//     without the broker, starts a burst at 0:45: Bedrock then throttles
//     everyone on that profile, the calls CloudWatch counts run far above
//     what the broker granted, and chat-frontend's throttle reports pull the
//     budget's adaptive ceiling down; two minutes later the burst ends and
//     the ceiling climbs back (30 s to the level it was throttled at, then
//     past the static limit). The burst comes back every 8 minutes.
//   - nightly-batch pushes Claude Sonnet 4, whose real capacity in
//     us-east-1 is half its published quota (the scenario's trueValue:
//     100,000 of 200,000 TPM, 50 of 100 RPM): Bedrock throttles it within
//     seconds, and the ceiling settles near the real capacity, which the
//     report's CEILING column and the budget's adaptive reason state.
//   - report-writer leaves max_tokens unset, which the report's max_tokens
//     advice is for.
var demoServices = []demoService{
	{name: "chat-frontend", model: "us.anthropic.claude-sonnet-4-5-20250929-v1:0", priority: quotaclient.PriorityInteractive,
		every: time.Second, inputLen: 3000, maxTokens: 1024, wait: 5 * time.Second},
	{name: "nightly-batch", model: "us.anthropic.claude-sonnet-4-20250514-v1:0", priority: quotaclient.PriorityBatch,
		every: 500 * time.Millisecond, inputLen: 8000, maxTokens: 4096, wait: 30 * time.Second},
	{name: "report-writer", model: "anthropic.claude-3-haiku-20240307-v1:0", priority: quotaclient.PriorityStandard,
		every: 2 * time.Second, inputLen: 2000, wait: 10 * time.Second},
	{name: "legacy-summariser", model: "us.anthropic.claude-sonnet-4-5-20250929-v1:0", bypass: true,
		every: 250 * time.Millisecond, inputLen: 20000, maxTokens: 150,
		bursts: demoBursts{start: 45 * time.Second, on: 75 * time.Second, period: 15 * time.Minute}},
}

// maxDemoInFlight bounds each service's calls in flight, so a slow
// simulator cannot make the demo pile up goroutines.
const maxDemoInFlight = 32

// runDemoTraffic drives demoServices against the broker at brokerAddr and
// the simulator at simURL until ctx ends, then waits for its calls. speed
// compresses the services' schedules (intervals, bursts, waits), as the
// simulator's Speed compresses its time: tests run the story at the
// simulator's and the broker's speed.
func runDemoTraffic(ctx context.Context, brokerAddr, simURL, region string, speed float64, log *slog.Logger) error {
	if !(speed > 0) {
		return fmt.Errorf("demo traffic: speed %v is not positive", speed)
	}
	conn, err := grpc.NewClient(brokerAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("demo traffic: broker %s: %w", brokerAddr, err)
	}
	defer conn.Close()
	paced := func(d time.Duration) time.Duration { return time.Duration(float64(d) / speed) }
	opts := bedrockruntime.Options{
		Region:       region,
		BaseEndpoint: aws.String(simURL),
		Credentials:  credentials.NewStaticCredentialsProvider("demo", "demo", ""),
	}
	start := time.Now()
	elapsed := func() time.Duration { return time.Duration(float64(time.Since(start)) * speed) }
	var wg sync.WaitGroup
	for _, s := range demoServices {
		var call func(context.Context) error
		if s.bypass {
			rt := bedrockruntime.New(opts, func(o *bedrockruntime.Options) {
				o.HTTPClient = awsclient.SafeBodies(o.HTTPClient)
				// The SDK's standard retries, their backoff at the
				// traffic's pace.
				o.Retryer = retry.AddWithMaxBackoffDelay(retry.NewStandard(), paced(20*time.Second))
			})
			call = s.invoke(rt)
		} else {
			qc := quotaclient.New(conn, quotaclient.WithName(s.name), quotaclient.WithPriority(s.priority),
				quotaclient.WithWait(paced(s.wait)), quotaclient.WithRegion(region), quotaclient.WithLogger(log),
				quotaclient.WithThrottleRetries(3, paced(250*time.Millisecond)))
			call = s.converse(bedrockruntime.New(opts, quotaclient.WithLeases(qc)))
		}
		wg.Go(func() { s.run(ctx, paced(s.every), elapsed, call, log) })
	}
	wg.Wait()
	return nil
}

// prompt is the service's prompt text, inputLen characters.
func (s demoService) prompt() string {
	return strings.Repeat("Summarise the quarterly figures. ", s.inputLen/33+1)[:s.inputLen]
}

// converse returns one Converse call of the service.
func (s demoService) converse(rt *bedrockruntime.Client) func(context.Context) error {
	in := &bedrockruntime.ConverseInput{
		ModelId: aws.String(s.model),
		Messages: []types.Message{{Role: types.ConversationRoleUser,
			Content: []types.ContentBlock{&types.ContentBlockMemberText{Value: s.prompt()}}}},
	}
	if s.maxTokens > 0 {
		in.InferenceConfig = &types.InferenceConfiguration{MaxTokens: aws.Int32(s.maxTokens)}
	}
	return func(ctx context.Context) error {
		_, err := rt.Converse(ctx, in)
		return err
	}
}

// invoke returns one InvokeModel call of the service, with the body the
// Anthropic family requires (anthropic_version, max_tokens, messages).
func (s demoService) invoke(rt *bedrockruntime.Client) func(context.Context) error {
	body, err := json.Marshal(map[string]any{
		"anthropic_version": "bedrock-2023-05-31",
		"max_tokens":        s.maxTokens,
		"messages": []map[string]any{{"role": "user",
			"content": []map[string]string{{"type": "text", "text": s.prompt()}}}},
	})
	if err != nil {
		panic(err) // a map of strings and numbers always encodes
	}
	return func(ctx context.Context) error {
		_, err := rt.InvokeModel(ctx, &bedrockruntime.InvokeModelInput{ModelId: aws.String(s.model),
			ContentType: aws.String("application/json"), Accept: aws.String("application/json"), Body: body})
		return err
	}
}

// run starts call every interval (real time) while the service's bursts
// say so, until ctx ends; then it waits for its calls.
func (s demoService) run(ctx context.Context, every time.Duration, elapsed func() time.Duration, call func(context.Context) error, log *slog.Logger) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	slots := make(chan struct{}, maxDemoInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !s.bursts.active(elapsed()) {
			continue
		}
		select {
		case slots <- struct{}{}:
		default:
			continue // at the bound: skip this tick
		}
		wg.Go(func() {
			defer func() { <-slots }()
			err := call(ctx)
			var refused *quotaclient.RefusedError
			switch {
			case err == nil, ctx.Err() != nil:
			case errors.As(err, &refused):
				log.Debug("demo call refused by the broker", "service", s.name, "limit", refused.Limit, "retry_after", refused.RetryAfter)
			default:
				log.Debug("demo call failed", "service", s.name, "bypass", s.bypass, "err", err)
			}
		})
	}
}
