// Command example makes one Amazon Bedrock call through the Quota Broker:
// the plain aws-sdk-go-v2 bedrockruntime client with one option, which
// takes a lease before the call and settles it with Bedrock's usage after.
//
// Against the simulator and a local broker (docs/go-client.md, "Try it"):
//
//	go run ./cmd/bedrock-sim
//	go run ./cmd/quota-broker serve
//	go run ./docs/example -endpoint http://127.0.0.1:8566
//
// Without -endpoint it calls AWS with the default credential chain.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bedrockqb/quotabroker/clients/quotaclient"
)

func main() {
	broker := flag.String("broker", cmp.Or(os.Getenv("QUOTA_BROKER_ADDR"), "127.0.0.1:50051"), "the broker's gRPC address")
	endpoint := flag.String("endpoint", "", "Bedrock's URL, e.g. the simulator's http://127.0.0.1:8566; empty: AWS")
	// The model id chooses the budget, as it chooses Bedrock's quota:
	// "us." (or "eu.", "apac.", ...) draws on that geography's cross-region
	// budget, "global." on the global cross-region one, a bare id such as
	// anthropic.claude-3-haiku-20240307-v1:0 on the Region's on-demand one.
	model := flag.String("model", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "model or inference profile id")
	flag.Parse()
	if err := run(*broker, *endpoint, *model); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

func run(broker, endpoint, model string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// One connection to the broker for the whole process. Plaintext is for
	// loopback; see "Authentication" for tokens and TLS.
	conn, err := grpc.NewClient(broker, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("broker %s: %w", broker, err)
	}
	defer conn.Close()
	qc := quotaclient.New(conn, quotaclient.WithName("checkout-svc"), quotaclient.WithWait(10*time.Second))

	// The simulator accepts any credentials; AWS needs real ones, from the
	// default chain (environment, ~/.aws, an instance role).
	var cfg aws.Config
	if endpoint != "" {
		cfg = aws.Config{
			Region:       "us-east-1",
			BaseEndpoint: aws.String(endpoint),
			Credentials:  credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "dummy-secret", ""),
		}
	} else if cfg, err = config.LoadDefaultConfig(ctx, config.WithRegion("us-east-1")); err != nil {
		return fmt.Errorf("aws config: %w", err)
	}
	rt := bedrockruntime.NewFromConfig(cfg, quotaclient.WithLeases(qc))

	out, err := rt.Converse(ctx, &bedrockruntime.ConverseInput{
		ModelId: aws.String(model),
		Messages: []types.Message{{
			Role:    types.ConversationRoleUser,
			Content: []types.ContentBlock{&types.ContentBlockMemberText{Value: "Say hello in five words."}},
		}},
		// max_tokens is what the broker reserves until the call settles:
		// keep it near what answers need.
		InferenceConfig: &types.InferenceConfiguration{MaxTokens: aws.Int32(256)},
	})
	var refused *quotaclient.RefusedError
	switch {
	case errors.As(err, &refused):
		return fmt.Errorf("the broker refused the call (%s limit of %s): retry after %v", refused.Limit, refused.Model, refused.RetryAfter)
	case errors.Is(err, quotaclient.ErrUnavailable):
		return fmt.Errorf("the broker is unavailable and the client fails closed, so Bedrock was not called: %w", err)
	case err != nil:
		return err
	}
	if msg, ok := out.Output.(*types.ConverseOutputMemberMessage); ok {
		for _, c := range msg.Value.Content {
			if t, ok := c.(*types.ContentBlockMemberText); ok {
				fmt.Printf("answer: %s\n", t.Value)
			}
		}
	}
	fmt.Printf("usage: %d input, %d output tokens (the lease is settled with these)\n",
		aws.ToInt32(out.Usage.InputTokens), aws.ToInt32(out.Usage.OutputTokens))
	return nil
}
