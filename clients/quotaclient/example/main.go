// Command example runs concurrent Bedrock calls through the Quota Broker
// with the plain aws-sdk-go-v2 bedrockruntime client and quotaclient's
// option, then prints what happened and the broker's report of the budget.
//
// Against the simulator and a local broker (three terminals):
//
//	go run ./cmd/bedrock-sim
//	go run ./cmd/quota-broker serve
//	go run ./clients/quotaclient/example -endpoint http://127.0.0.1:8566 -calls 40
//
// Without -endpoint it uses the default AWS configuration (real Bedrock).
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

func run() error {
	brokerAddr := flag.String("broker", cmp.Or(os.Getenv("QUOTA_BROKER_ADDR"), "127.0.0.1:50051"), "quota broker gRPC address (env QUOTA_BROKER_ADDR)")
	endpoint := flag.String("endpoint", "", "Bedrock endpoint URL (e.g. the simulator); empty uses AWS")
	region := flag.String("region", "us-east-1", "AWS Region")
	model := flag.String("model", "us.anthropic.claude-haiku-4-5-20251001-v1:0", "model or inference profile id")
	workers := flag.Int("workers", 8, "concurrent callers")
	calls := flag.Int("calls", 40, "calls in all (half Converse, half ConverseStream)")
	maxTokens := flag.Int("max-tokens", 256, "max_tokens of each call")
	failOpen := flag.Bool("fail-open", false, "use a local limiter while the broker is unreachable")
	verbose := flag.Bool("v", false, "log each settlement")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	conn, err := grpc.NewClient(*brokerAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial broker %s: %w", *brokerAddr, err)
	}
	defer conn.Close()
	opts := []quotaclient.Option{quotaclient.WithName("quotaclient-example"), quotaclient.WithWait(2 * time.Minute)}
	if *failOpen {
		opts = append(opts, quotaclient.WithFailureMode(quotaclient.FailOpen))
	}
	if *verbose {
		opts = append(opts, quotaclient.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	}
	qc := quotaclient.New(conn, opts...)

	var cfg aws.Config
	if *endpoint != "" {
		cfg = aws.Config{Region: *region, Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", "")}
	} else if cfg, err = config.LoadDefaultConfig(ctx, config.WithRegion(*region)); err != nil {
		return fmt.Errorf("aws config: %w", err)
	}
	newClient := func() *bedrockruntime.Client {
		return bedrockruntime.NewFromConfig(cfg, func(o *bedrockruntime.Options) {
			if *endpoint != "" {
				o.BaseEndpoint = aws.String(*endpoint)
			}
		}, quotaclient.WithLeases(qc))
	}

	var (
		mu                     sync.Mutex
		ok, throttled, refused int
		inTokens, outTokens    int64
		failures               []error
	)
	jobs := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range *workers {
		wg.Go(func() {
			rt := newClient() // one client per goroutine: see the package doc on SDK streams
			for i := range jobs {
				in, out, err := call(ctx, rt, *model, i, int32(*maxTokens))
				mu.Lock()
				var te *types.ThrottlingException
				switch {
				case err == nil:
					ok++
					inTokens += in
					outTokens += out
				case errors.As(err, &te):
					throttled++
				case errors.Is(err, quotaclient.ErrRefused):
					refused++
				default:
					failures = append(failures, err)
				}
				mu.Unlock()
			}
		})
	}
	for i := range *calls {
		jobs <- i
	}
	close(jobs)
	wg.Wait()

	fmt.Printf("%d calls in %s: %d ok, %d throttled by Bedrock, %d refused by the broker, %d other errors\n",
		*calls, time.Since(start).Round(time.Millisecond), ok, throttled, refused, len(failures))
	fmt.Printf("usage reported by Bedrock: %d input, %d output tokens\n", inTokens, outTokens)
	for _, err := range failures[:min(len(failures), 3)] {
		fmt.Println("  error:", err)
	}
	// Budgets are keyed by the base model id, also for profile calls.
	base := *model
	if p, rest, ok := strings.Cut(base, "."); ok && len(p) <= 6 && !strings.Contains(rest, "/") && strings.Count(rest, ".") >= 1 {
		base = rest
	}
	rep, err := pb.NewQuotaBrokerClient(conn).GetQuotaReport(ctx, &pb.GetQuotaReportRequest{Model: base})
	if err != nil {
		return fmt.Errorf("quota report: %w", err)
	}
	for _, b := range rep.GetBudgets() {
		c := b.GetCounters()
		fmt.Printf("broker budget %s/%s: granted %d, completed %d, throttled %d, outstanding %d, reserved %d, settled %d, returned %d tokens\n",
			b.GetBudget().GetKey().GetRegion(), b.GetBudget().GetKey().GetModel(), c.GetGranted(), c.GetCompleted(), c.GetThrottled(),
			b.GetOutstandingLeases(), c.GetReservedTokens(), c.GetSettledTokens(), c.GetReturnedTokens())
	}
	return nil
}

// call makes call i: even ones Converse, odd ones ConverseStream read to
// the end.
func call(ctx context.Context, rt *bedrockruntime.Client, model string, i int, maxTokens int32) (int64, int64, error) {
	msgs := []types.Message{{Role: types.ConversationRoleUser, Content: []types.ContentBlock{
		&types.ContentBlockMemberText{Value: fmt.Sprintf("Write a haiku about request number %d.", i)}}}}
	inf := &types.InferenceConfiguration{MaxTokens: aws.Int32(maxTokens)}
	if i%2 == 0 {
		out, err := rt.Converse(ctx, &bedrockruntime.ConverseInput{ModelId: aws.String(model), Messages: msgs, InferenceConfig: inf})
		if err != nil {
			return 0, 0, err
		}
		return int64(aws.ToInt32(out.Usage.InputTokens)), int64(aws.ToInt32(out.Usage.OutputTokens)), nil
	}
	out, err := rt.ConverseStream(ctx, &bedrockruntime.ConverseStreamInput{ModelId: aws.String(model), Messages: msgs, InferenceConfig: inf})
	if err != nil {
		return 0, 0, err
	}
	st := out.GetStream()
	defer st.Close()
	var in, o int64
	for ev := range st.Events() {
		if m, ok := ev.(*types.ConverseStreamOutputMemberMetadata); ok && m.Value.Usage != nil {
			in, o = int64(aws.ToInt32(m.Value.Usage.InputTokens)), int64(aws.ToInt32(m.Value.Usage.OutputTokens))
		}
	}
	return in, o, st.Err()
}
