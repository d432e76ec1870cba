package awsmetrics

import (
	"context"
	"errors"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/smithy-go"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

const (
	sonnet        = "anthropic.claude-sonnet-4-5-20250929-v1:0"
	sonnetProfile = "us." + sonnet
	haiku         = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
	sonnetRPMCode = "L-3423216A" // cross-region requests per minute, default scenario
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func awsConfig() *aws.Config {
	return &aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""),
		Retryer: func() aws.Retryer { return aws.NopRetryer{} }}
}

// sent is what the test saw Bedrock answer, per minute.
type sent struct{ ok, throttled, input, output int64 }

// TestUsageMatchesTraffic sends traffic through the simulator with the real
// bedrockruntime client and reads it back through a Reader with the real
// CloudWatch client: the figures are what the simulator answered, summed
// per step, and calls to another model do not count.
func TestUsageMatchesTraffic(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)}
	sim, err := bedrocksim.New(bedrocksim.Config{Now: clk.Now, DisableLatency: true, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim.Handler())
	defer hs.Close()
	rt := bedrockruntime.NewFromConfig(*awsConfig(), func(o *bedrockruntime.Options) { o.BaseEndpoint = aws.String(hs.URL) })
	ctx := context.Background()
	// At most 2 requests a minute really served, so some calls throttle.
	two := 2.0
	if err := sim.SetCapacity("us-east-1", sonnetRPMCode, bedrocksim.CapacityChange{SetTrue: &two}); err != nil {
		t.Fatal(err)
	}
	call := func(model string, out int, s *sent) {
		t.Helper()
		res, err := rt.Converse(ctx, &bedrockruntime.ConverseInput{
			ModelId: aws.String(model),
			Messages: []rttypes.Message{{Role: rttypes.ConversationRoleUser, Content: []rttypes.ContentBlock{
				&rttypes.ContentBlockMemberText{Value: strings.Repeat("word ", 40) + " sim:output_tokens=" + strconv.Itoa(out)}}}},
			InferenceConfig: &rttypes.InferenceConfiguration{MaxTokens: aws.Int32(500)},
		})
		var ae smithy.APIError
		switch {
		case err == nil:
			s.ok++
			s.input += int64(aws.ToInt32(res.Usage.InputTokens))
			s.output += int64(aws.ToInt32(res.Usage.OutputTokens))
		case errors.As(err, &ae) && ae.ErrorCode() == "ThrottlingException":
			s.throttled++
		default:
			t.Fatalf("converse %s: %v", model, err)
		}
	}
	start := sim.Now().Truncate(time.Minute)
	var want [3]sent
	var other sent
	for m := range want {
		for i := range 2 + m {
			call(sonnetProfile, 10*(i+1), &want[m])
		}
		call(haiku, 7, &other)
		clk.Advance(time.Minute)
	}
	if want[2].throttled == 0 || want[0].ok == 0 || other.ok != 3 {
		t.Fatalf("traffic did not come out as planned: %+v, other %+v", want, other)
	}

	r := New(Config{AWS: awsConfig(), Endpoint: hs.URL, Now: clk.Now})
	key := broker.Key{Region: "us-east-1", Scope: broker.ScopeCrossRegion, Model: sonnet}
	u, err := r.Usage(ctx, key, start, time.Minute, 4)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(u.ModelIDs, sonnetProfile) || len(u.Points) != 4 {
		t.Fatalf("usage %+v", u)
	}
	for m, w := range want {
		p := u.Points[m]
		if p.Invocations != w.ok || p.Throttles != w.throttled || p.InputTokens != w.input || p.OutputTokens != w.output {
			t.Errorf("minute %d: CloudWatch %+v, sent %+v", m, p, w)
		}
		// Sonnet 4.5 burns output down 5x; cache is not used.
		if p.EstimatedTPMQuotaUsage != w.input+5*w.output {
			t.Errorf("minute %d: EstimatedTPMQuotaUsage %d, want %d", m, p.EstimatedTPMQuotaUsage, w.input+5*w.output)
		}
	}
	if u.Points[3] != (Point{}) {
		t.Errorf("minute without traffic: %+v", u.Points[3])
	}

	// Two-minute steps add minutes up.
	u2, err := r.Usage(ctx, key, start, 2*time.Minute, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := u2.Points[0].Invocations; got != want[0].ok+want[1].ok {
		t.Errorf("first two minutes: %d invocations, want %d", got, want[0].ok+want[1].ok)
	}
	if got := u2.Points[1].Invocations; got != want[2].ok {
		t.Errorf("last two minutes: %d invocations, want %d", got, want[2].ok)
	}

	// An on-demand budget of the same model saw none of it.
	od, err := r.Usage(ctx, broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: sonnet}, start, time.Minute, 4)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range od.Points {
		if p != (Point{}) {
			t.Errorf("on-demand minute %d: %+v", i, p)
		}
	}
}

// getterFunc fakes the SDK call.
type getterFunc func(context.Context, *cloudwatch.GetMetricDataInput, ...func(*cloudwatch.Options)) (*cloudwatch.GetMetricDataOutput, error)

func (f getterFunc) GetMetricData(ctx context.Context, in *cloudwatch.GetMetricDataInput, o ...func(*cloudwatch.Options)) (*cloudwatch.GetMetricDataOutput, error) {
	return f(ctx, in, o...)
}

// TestCacheAndErrors: an answer is reused within the TTL and read again
// after it; an AWS error is worded with the IAM action and not cached.
func TestCacheAndErrors(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)}
	calls := 0
	fail := false
	get := getterFunc(func(context.Context, *cloudwatch.GetMetricDataInput, ...func(*cloudwatch.Options)) (*cloudwatch.GetMetricDataOutput, error) {
		calls++
		if fail {
			return nil, &smithy.GenericAPIError{Code: "AccessDenied", Message: "not allowed"}
		}
		return &cloudwatch.GetMetricDataOutput{}, nil
	})
	r := newReader(Config{Now: clk.Now, CacheTTL: 30 * time.Second}, func(context.Context, string) (metricDataGetter, error) { return get, nil })
	key := broker.Key{Region: "us-east-1", Scope: broker.ScopeGlobal, Model: sonnet}
	from := clk.Now()
	for range 2 {
		if _, err := r.Usage(context.Background(), key, from, time.Minute, 5); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 1 {
		t.Fatalf("%d calls for two identical reads within the TTL", calls)
	}
	clk.Advance(31 * time.Second)
	fail = true
	_, err := r.Usage(context.Background(), key, from, time.Minute, 5)
	if err == nil || !strings.Contains(err.Error(), "cloudwatch:GetMetricData") || calls != 2 {
		t.Fatalf("after the TTL with AWS refusing: %v (%d calls)", err, calls)
	}
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "AccessDenied" {
		t.Errorf("error does not unwrap to the SDK's: %v", err)
	}
	if _, err := r.Usage(context.Background(), key, from, 90*time.Second, 5); err == nil {
		t.Error("a step of 90s was accepted")
	}
}
