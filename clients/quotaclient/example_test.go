package quotaclient_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bedrockqb/quotabroker/clients/quotaclient"
)

// Every Converse call of rt takes a lease from the broker first and
// settles it with the usage Bedrock reports; the calling code is unchanged.
func Example() {
	ctx := context.Background()
	conn, err := grpc.NewClient("localhost:50051", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	qc := quotaclient.New(conn, quotaclient.WithName("checkout-svc"), quotaclient.WithPriority(quotaclient.PriorityInteractive))

	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		log.Fatal(err)
	}
	rt := bedrockruntime.NewFromConfig(cfg, quotaclient.WithLeases(qc))

	out, err := rt.Converse(ctx, &bedrockruntime.ConverseInput{
		ModelId:         aws.String("us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
		Messages:        []types.Message{{Role: types.ConversationRoleUser, Content: []types.ContentBlock{&types.ContentBlockMemberText{Value: "Hello"}}}},
		InferenceConfig: &types.InferenceConfiguration{MaxTokens: aws.Int32(512)},
	})
	var refused *quotaclient.RefusedError
	switch {
	case errors.As(err, &refused):
		log.Printf("no quota for now; retry after %s (%s)", refused.RetryAfter, refused.Limit)
	case errors.Is(err, quotaclient.ErrUnavailable):
		log.Printf("broker unreachable and the client fails closed")
	case err != nil:
		log.Fatal(err)
	default:
		log.Printf("used %d output tokens", *out.Usage.OutputTokens)
	}
}

// Without the SDK middleware: acquire, call, complete.
func ExampleClient_Acquire() {
	ctx := context.Background()
	conn, err := grpc.NewClient("localhost:50051", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	qc := quotaclient.New(conn, quotaclient.WithName("batch-job"), quotaclient.WithFailureMode(quotaclient.FailOpen),
		quotaclient.WithFallbackLimits(quotaclient.FallbackLimits{RequestsPerMinute: 10, TokensPerMinute: 20_000}))

	lease, err := qc.Acquire(ctx, quotaclient.Request{
		ModelID: "anthropic.claude-3-haiku-20240307-v1:0", InputTokens: 1200, MaxOutputTokens: 1024,
		Priority: quotaclient.PriorityBatch, Wait: time.Minute,
	})
	if err != nil {
		log.Fatal(err)
	}
	// ... call Bedrock ...
	if err := lease.Complete(ctx, quotaclient.OutcomeSuccess, quotaclient.Usage{InputTokens: 1180, OutputTokens: 312}); err != nil {
		log.Print(err)
	}
}

// Refusals carry when to come back and which limit blocked.
func ExampleRefusedError() {
	var err error = &quotaclient.RefusedError{RetryAfter: 1500 * time.Millisecond, Limit: quotaclient.LimitTPM, Message: "no capacity"}
	var refused *quotaclient.RefusedError
	if errors.As(err, &refused) && errors.Is(err, quotaclient.ErrRefused) {
		fmt.Println("retry after", refused.RetryAfter, "on", refused.Limit)
	}
	// Output: retry after 1.5s on TPM
}

// A cluster of three replicas: calls go to the one that leads (the only one
// whose health reports SERVING), and a call that meets a failover is
// retried on another replica within its wait.
func ExampleNewConn() {
	conn, err := quotaclient.NewConn("broker-1:50051,broker-2:50051,broker-3:50051",
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	qc := quotaclient.New(conn, quotaclient.WithName("checkout-svc"), quotaclient.WithFailover(), quotaclient.WithWait(10*time.Second))

	lease, err := qc.Acquire(context.Background(), quotaclient.Request{ModelID: "anthropic.claude-3-haiku-20240307-v1:0", InputTokens: 1200, MaxOutputTokens: 512})
	if err != nil {
		log.Fatal(err)
	}
	// ... the Bedrock call ...
	err = lease.Complete(context.Background(), quotaclient.OutcomeSuccess, quotaclient.Usage{InputTokens: 1180, OutputTokens: 300})
	if err != nil {
		log.Print(err)
	}
}
