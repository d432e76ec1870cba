package bedrocksim

import (
	"context"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
)

// BenchmarkConverse measures the simulator's own cost per admitted request
// through the real SDK and loopback HTTP (no simulated latency).
func BenchmarkConverse(b *testing.B) {
	sc := testScenario()
	sc.Quotas["us-east-1"][1].Value = 1e15 // global Sonnet 4.5: never throttles
	h := newHarness(b, sc)
	ctx := context.Background()
	in := converseIn("global."+sonnet45, prompt(500), 1000)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := h.rt.Converse(ctx, in); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkConverseStream is the same for the event-stream path (100
// output tokens in 13 deltas, 17 events), read through the SDK's
// ConverseStream. Looped sequentially, this used to fail about once in a
// thousand streams with "use of closed network connection"; closeSafeBodies
// (helpers_test.go) explains why and is what prevents it.
func BenchmarkConverseStream(b *testing.B) {
	sc := testScenario()
	sc.Quotas["us-east-1"][1].Value = 1e15 // global Sonnet 4.5: never throttles
	h := newHarness(b, sc)
	ctx := context.Background()
	in := &bedrockruntime.ConverseStreamInput{
		ModelId: aws.String("global." + sonnet45),
		Messages: []rttypes.Message{{Role: rttypes.ConversationRoleUser,
			Content: []rttypes.ContentBlock{&rttypes.ContentBlockMemberText{Value: prompt(500)}}}},
		InferenceConfig: &rttypes.InferenceConfiguration{MaxTokens: aws.Int32(1000)},
	}
	for b.Loop() {
		out, err := h.rt.ConverseStream(ctx, in)
		if err != nil {
			b.Fatal(err)
		}
		stream := out.GetStream()
		n := 0
		for range stream.Events() {
			n++
		}
		err = stream.Err()
		stream.Close()
		if err != nil {
			b.Fatal(err)
		}
		if n != 17 {
			b.Fatalf("%d events, want 17", n)
		}
	}
}
