package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bedrockqb/quotabroker/clients/quotaclient"
)

// demoService is one synthetic service of the demo's traffic: it calls
// Converse through the Go client's lease middleware at a steady rate.
type demoService struct {
	name      string
	model     string
	priority  quotaclient.Priority
	every     time.Duration // one call started per interval
	inputLen  int           // characters of prompt
	maxTokens int32         // 0: unset (the broker reserves the model's maximum)
	wait      time.Duration // how long a call waits for capacity
}

// demoServices are chosen against the simulator's default account so that
// each shows something: a steady interactive service well inside its quota;
// a batch job pushing past a quota whose real capacity is below the
// published value (Claude Sonnet 4: 100 RPM published, about 85 real), so
// the broker queues it, Bedrock throttles now and then and the adaptive
// limit engages; and a service that leaves max_tokens unset, which the
// report's max_tokens advice is for.
var demoServices = []demoService{
	{name: "chat-frontend", model: "us.anthropic.claude-sonnet-4-5-20250929-v1:0", priority: quotaclient.PriorityInteractive,
		every: time.Second, inputLen: 3000, maxTokens: 1024, wait: 5 * time.Second},
	{name: "nightly-batch", model: "us.anthropic.claude-sonnet-4-20250514-v1:0", priority: quotaclient.PriorityBatch,
		every: 500 * time.Millisecond, inputLen: 8000, maxTokens: 2048, wait: 30 * time.Second},
	{name: "report-writer", model: "anthropic.claude-3-haiku-20240307-v1:0", priority: quotaclient.PriorityStandard,
		every: 2 * time.Second, inputLen: 2000, wait: 10 * time.Second},
}

// maxDemoInFlight bounds each service's calls in flight, so a slow
// simulator cannot make the demo pile up goroutines.
const maxDemoInFlight = 32

// runDemoTraffic drives demoServices against the broker at brokerAddr and
// the simulator at simURL until ctx ends, then waits for its calls.
func runDemoTraffic(ctx context.Context, brokerAddr, simURL, region string, log *slog.Logger) error {
	conn, err := grpc.NewClient(brokerAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("demo traffic: broker %s: %w", brokerAddr, err)
	}
	defer conn.Close()
	var wg sync.WaitGroup
	for _, s := range demoServices {
		qc := quotaclient.New(conn, quotaclient.WithName(s.name), quotaclient.WithPriority(s.priority),
			quotaclient.WithWait(s.wait), quotaclient.WithRegion(region), quotaclient.WithLogger(log))
		rt := bedrockruntime.New(bedrockruntime.Options{
			Region:       region,
			BaseEndpoint: aws.String(simURL),
			Credentials:  credentials.NewStaticCredentialsProvider("demo", "demo", ""),
		}, quotaclient.WithLeases(qc))
		wg.Go(func() { s.run(ctx, rt, log) })
	}
	wg.Wait()
	return nil
}

func (s demoService) run(ctx context.Context, rt *bedrockruntime.Client, log *slog.Logger) {
	tick := time.NewTicker(s.every)
	defer tick.Stop()
	slots := make(chan struct{}, maxDemoInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	prompt := strings.Repeat("Summarise the quarterly figures. ", s.inputLen/33+1)[:s.inputLen]
	in := &bedrockruntime.ConverseInput{
		ModelId: aws.String(s.model),
		Messages: []types.Message{{Role: types.ConversationRoleUser,
			Content: []types.ContentBlock{&types.ContentBlockMemberText{Value: prompt}}}},
	}
	if s.maxTokens > 0 {
		in.InferenceConfig = &types.InferenceConfiguration{MaxTokens: aws.Int32(s.maxTokens)}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case slots <- struct{}{}:
		default:
			continue // at the bound: skip this tick
		}
		wg.Go(func() {
			defer func() { <-slots }()
			_, err := rt.Converse(ctx, in)
			var refused *quotaclient.RefusedError
			switch {
			case err == nil, ctx.Err() != nil:
			case errors.As(err, &refused):
				log.Debug("demo call refused by the broker", "service", s.name, "limit", refused.Limit, "retry_after", refused.RetryAfter)
			default:
				log.Debug("demo call failed", "service", s.name, "err", err)
			}
		})
	}
}
