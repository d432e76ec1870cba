package quotaclient_test

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	"github.com/bedrockqb/quotabroker/internal/clocktest"
)

// tally is what the workload saw, from the SDK's own outputs.
type tally struct {
	mu                        sync.Mutex
	ok, throttled, refused    int
	otherErrs                 []error
	inputTokens, outputTokens int64
	byOp                      map[string]int
}

func (t *tally) record(op string, in, out int64, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var te *rttypes.ThrottlingException
	switch {
	case err == nil:
		t.ok++
		t.byOp[op]++
		t.inputTokens += in
		t.outputTokens += out
	case errors.As(err, &te):
		t.throttled++
	case errors.Is(err, quotaclient.ErrRefused):
		t.refused++
	default:
		t.otherErrs = append(t.otherErrs, err)
	}
}

// workload runs workers x perWorker calls on haiku3, rotating through
// Converse, ConverseStream, InvokeModel and InvokeModelWithResponseStream,
// and tallies the usage each response reported. Each worker has its own
// client: aws-sdk-go-v2 (bedrockruntime v1.63.13, smithy-go v1.28.9) shares
// one event-stream decoder buffer per client, so concurrent streams on one
// client race inside the SDK (the race detector shows it without
// WithLeases too).
func workload(ctx context.Context, newClient func() *bedrockruntime.Client, workers, perWorker int) *tally {
	t := &tally{byOp: map[string]int{}}
	text := strings.Repeat("word ", 80) // 400 characters: 100 tokens
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rt := newClient()
			for j := range perWorker {
				switch (w + j) % 4 {
				case 0:
					out, err := rt.Converse(ctx, converseIn(haiku3, text, 200))
					if err == nil {
						t.record("Converse", int64(*out.Usage.InputTokens), int64(*out.Usage.OutputTokens), nil)
					} else {
						t.record("Converse", 0, 0, err)
					}
				case 1:
					in, out, err := converseStream(ctx, rt, converseStreamIn(haiku3, text, 200))
					t.record("ConverseStream", in, out, err)
				case 2:
					in, out, err := invokeModel(ctx, rt, haiku3, anthropicBody(text, 200))
					t.record("InvokeModel", in, out, err)
				case 3:
					in, out, err := invokeStream(ctx, rt, haiku3, anthropicBody(text, 200))
					t.record("InvokeModelWithResponseStream", in, out, err)
				}
			}
		})
	}
	wg.Wait()
	return t
}

func converseStream(ctx context.Context, rt *bedrockruntime.Client, in *bedrockruntime.ConverseStreamInput) (int64, int64, error) {
	out, err := rt.ConverseStream(ctx, in)
	if err != nil {
		return 0, 0, err
	}
	st := out.GetStream()
	defer st.Close()
	var usage *rttypes.TokenUsage
	for ev := range st.Events() {
		if m, ok := ev.(*rttypes.ConverseStreamOutputMemberMetadata); ok {
			usage = m.Value.Usage
		}
	}
	if err := st.Err(); err != nil {
		return 0, 0, err
	}
	if usage == nil {
		return 0, 0, errors.New("stream without usage")
	}
	return int64(*usage.InputTokens), int64(*usage.OutputTokens), nil
}

func invokeModel(ctx context.Context, rt *bedrockruntime.Client, model string, body []byte) (int64, int64, error) {
	out, err := rt.InvokeModel(ctx, &bedrockruntime.InvokeModelInput{ModelId: aws.String(model), Body: body, ContentType: aws.String("application/json")})
	if err != nil {
		return 0, 0, err
	}
	resp, _ := awsmiddleware.GetRawResponse(out.ResultMetadata).(*smithyhttp.Response)
	if resp == nil {
		return 0, 0, errors.New("no raw response")
	}
	in, _ := strconv.ParseInt(resp.Header.Get("X-Amzn-Bedrock-Input-Token-Count"), 10, 64)
	o, _ := strconv.ParseInt(resp.Header.Get("X-Amzn-Bedrock-Output-Token-Count"), 10, 64)
	return in, o, nil
}

func invokeStream(ctx context.Context, rt *bedrockruntime.Client, model string, body []byte) (int64, int64, error) {
	out, err := rt.InvokeModelWithResponseStream(ctx, &bedrockruntime.InvokeModelWithResponseStreamInput{ModelId: aws.String(model), Body: body, ContentType: aws.String("application/json")})
	if err != nil {
		return 0, 0, err
	}
	return streamUsage(out.GetStream())
}

// streamUsage reads st to its end, closes it, and returns the tokens its
// invocation metrics report.
func streamUsage(st *bedrockruntime.InvokeModelWithResponseStreamEventStream) (int64, int64, error) {
	defer st.Close()
	var in, o int64
	seen := false
	for ev := range st.Events() {
		if c, ok := ev.(*rttypes.ResponseStreamMemberChunk); ok {
			var m struct {
				Metrics *struct {
					In  int64 `json:"inputTokenCount"`
					Out int64 `json:"outputTokenCount"`
				} `json:"amazon-bedrock-invocationMetrics"`
			}
			if json.Unmarshal(c.Value.Bytes, &m) == nil && m.Metrics != nil {
				in, o, seen = m.Metrics.In, m.Metrics.Out, true
			}
		}
	}
	if err := st.Err(); err != nil {
		return 0, 0, err
	}
	if !seen {
		return 0, 0, errors.New("stream without invocation metrics")
	}
	return in, o, nil
}

// TestWorkloadThroughBroker runs the same concurrent workload against a
// simulator with tight quotas twice: with plain SDK clients, and with the
// same clients plus WithLeases against a real broker. Through the broker
// every lease is settled with exactly the usage the simulator charged, and
// Bedrock throttles (nearly) nothing; without it, most calls are throttled.
func TestWorkloadThroughBroker(t *testing.T) {
	t.Parallel()
	const (
		speed     = 120 // one simulated minute in 0.5 s
		workers   = 16
		perWorker = 12
		rpm, tpm  = 120, 6000
	)
	ctx := context.Background()

	// Uncoordinated: the plain SDK, no retries so each throttle shows once.
	// Its simulator runs in real time: the 192 calls then all fall in one
	// simulated minute however slowly a loaded machine runs them, so the
	// throttles it must see do not depend on the machine's speed (at 120x,
	// a busy machine spread them over several simulated minutes and saw
	// none).
	plainSim, plainURL := startSim(t, testScenario(rpm, tpm, 1e6), 1)
	plain := workload(ctx, func() *bedrockruntime.Client { return runtimeClient(plainURL, noRetries) }, workers, perWorker)
	plainStats := plainSim.Stats()

	// Through the broker, whose clock runs at the simulator's speed.
	sim, url := startSim(t, testScenario(rpm, tpm, 1e6), speed)
	bp := startBroker(t, brokerOpts{
		clock: clocktest.NewScaled(speed),
		specs: []broker.Spec{spec(t, haiku3, broker.Limits{RPM: rpm, TPM: tpm})},
	})
	conn := dial(t, bp.addr)
	qc := quotaclient.New(conn, quotaclient.WithName("load-test"), quotaclient.WithWait(30*time.Minute))
	leased := workload(ctx, func() *bedrockruntime.Client { return runtimeClient(url, quotaclient.WithLeases(qc)) }, workers, perWorker)
	stats := sim.Stats()

	t.Logf("uncoordinated: %d ok, %d throttled (simulator: %d requests, %d throttles)", plain.ok, plain.throttled, plainStats.Requests, plainStats.Throttles)
	t.Logf("through broker: %d ok %v, %d throttled, %d refused (simulator: %d requests, %d throttles)",
		leased.ok, leased.byOp, leased.throttled, leased.refused, stats.Requests, stats.Throttles)
	if len(plain.otherErrs)+len(leased.otherErrs) > 0 {
		t.Fatalf("unexpected errors: %v %v", plain.otherErrs, leased.otherErrs)
	}
	if leased.ok != workers*perWorker {
		t.Errorf("through the broker %d of %d calls succeeded", leased.ok, workers*perWorker)
	}
	if plainStats.Throttles < 40 || stats.Throttles*10 > plainStats.Throttles {
		t.Errorf("throttles: %d through the broker vs %d uncoordinated; want far fewer", stats.Throttles, plainStats.Throttles)
	}

	rep := report(t, conn, haiku3)
	c := rep.GetCounters()
	if rep.GetOutstandingLeases() != 0 || c.GetExpired() != 0 || c.GetCompleted() != c.GetGranted() {
		t.Errorf("leases not all settled: outstanding %d, expired %d, granted %d, completed %d",
			rep.GetOutstandingLeases(), c.GetExpired(), c.GetGranted(), c.GetCompleted())
	}
	// Burndown is 1 for Claude 3 Haiku: the charge is input + output.
	want := leased.inputTokens + leased.outputTokens
	q, _ := sim.Quota("us-east-1", "L-HAIKUTPM")
	if c.GetSettledTokens() != want || int64(q.Settled) != want {
		t.Errorf("settled tokens: broker %d, simulator %.0f, responses %d", c.GetSettledTokens(), q.Settled, want)
	}
}
