package quotaclient_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// cannedBedrock answers every request in-process with a Converse response,
// so a benchmark measures the SDK and the middleware, not a network.
type cannedBedrock struct{}

const converseJSON = `{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"end_turn",` +
	`"usage":{"inputTokens":110,"outputTokens":50,"totalTokens":160},"metrics":{"latencyMs":1}}`

func (cannedBedrock) Do(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	return &http.Response{StatusCode: 200, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Request: r,
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(converseJSON)),
		ContentLength: int64(len(converseJSON))}, nil
}

// fakeBroker is an in-process grpc.ClientConnInterface that grants every
// lease: the middleware's own cost, without a broker round trip.
type fakeBroker struct{ grant *pb.AcquireLeaseResponse }

func newFakeBroker() *fakeBroker {
	now := time.Now()
	return &fakeBroker{grant: &pb.AcquireLeaseResponse{Waited: durationpb.New(0), Lease: &pb.Lease{
		LeaseId: "fake", Budget: &pb.BudgetKey{Region: "us-east-1", Scope: pb.Scope_SCOPE_ON_DEMAND, Model: haiku3},
		ReservedTokens: 310, GrantedAt: timestamppb.New(now), ExpiresAt: timestamppb.New(now.Add(time.Hour)), OutputBurndown: 1, MaxOutputTokens: 200}}}
}

func (f *fakeBroker) Invoke(_ context.Context, method string, _, reply any, _ ...grpc.CallOption) error {
	switch method {
	case pb.QuotaBroker_AcquireLease_FullMethodName:
		proto.Merge(reply.(proto.Message), f.grant)
	case pb.QuotaBroker_CompleteLease_FullMethodName:
	default:
		return errors.New("fake broker: " + method)
	}
	return nil
}

func (f *fakeBroker) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, errors.New("fake broker: no streams")
}

func cannedClient(opts ...func(*bedrockruntime.Options)) *bedrockruntime.Client {
	opts = append([]func(*bedrockruntime.Options){func(o *bedrockruntime.Options) { o.HTTPClient = cannedBedrock{} }}, opts...)
	return runtimeClient("http://127.0.0.1:1", opts...)
}

// BenchmarkMiddlewareOverhead: one Converse call through the SDK against an
// in-process canned response, without the option, with it against an
// in-process fake broker (the middleware's own cost), and with it against a
// real broker over loopback (adds two gRPC round trips and the broker's
// work). broker-rpc is Acquire + Complete alone against that broker.
func BenchmarkMiddlewareOverhead(b *testing.B) {
	in := converseIn(haiku3, strings.Repeat("word ", 80), 200)
	ctx := context.Background()
	run := func(b *testing.B, rt *bedrockruntime.Client) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := rt.Converse(ctx, in); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("plain", func(b *testing.B) { run(b, cannedClient()) })
	b.Run("leases-fake-broker", func(b *testing.B) {
		run(b, cannedClient(quotaclient.WithLeases(quotaclient.New(newFakeBroker()))))
	})
	bp := startBroker(b, brokerOpts{specs: []broker.Spec{spec(b, haiku3, broker.Limits{TPM: 1 << 50})}})
	conn := dial(b, bp.addr)
	qc := quotaclient.New(conn, quotaclient.WithName("bench"))
	b.Run("leases-loopback-broker", func(b *testing.B) { run(b, cannedClient(quotaclient.WithLeases(qc))) })
	b.Run("broker-rpc", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			l, err := qc.Acquire(ctx, quotaclient.Request{ModelID: haiku3, InputTokens: 110, MaxOutputTokens: 200})
			if err != nil {
				b.Fatal(err)
			}
			if err := l.Complete(ctx, quotaclient.OutcomeSuccess, quotaclient.Usage{InputTokens: 110, OutputTokens: 50}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSimulatorOverhead: what the client adds to each leased operation
// in its default configuration (a real broker whose bbolt store syncs every
// grant, as quota-broker serve runs it), against direct calls to the same
// simulator in the same run. The simulator answers without its simulated
// latency, so the difference is the client's and the broker's work. Each
// sub-benchmark reports the median call (p50-ms) next to the mean (ns/op):
// a shared machine's stalls move the mean more than the median.
func BenchmarkSimulatorOverhead(b *testing.B) {
	_, url := startSim(b, testScenario(1<<40, 1<<40, 1<<40), 1)
	bp := startBroker(b, brokerOpts{fsync: true, specs: []broker.Spec{spec(b, haiku3, broker.Limits{RPM: 1 << 40, TPM: 1 << 50})}})
	qc := quotaclient.New(dial(b, bp.addr), quotaclient.WithName("bench"))
	ctx := context.Background()
	text := strings.Repeat("word ", 80)
	ops := []struct {
		name string
		call func(rt *bedrockruntime.Client) error
	}{
		{"converse", func(rt *bedrockruntime.Client) error {
			_, err := rt.Converse(ctx, converseIn(haiku3, text, 200))
			return err
		}},
		{"converse-stream", func(rt *bedrockruntime.Client) error {
			_, _, err := converseStream(ctx, rt, converseStreamIn(haiku3, text, 200))
			return err
		}},
		{"invoke-model", func(rt *bedrockruntime.Client) error {
			_, _, err := invokeModel(ctx, rt, haiku3, anthropicBody(text, 200))
			return err
		}},
	}
	for _, op := range ops {
		for _, mode := range []struct {
			name string
			rt   *bedrockruntime.Client
		}{
			{"direct", runtimeClient(url)},
			{"leases", runtimeClient(url, quotaclient.WithLeases(qc))},
		} {
			b.Run(op.name+"/"+mode.name, func(b *testing.B) {
				var took []time.Duration
				var failed int
				for b.Loop() {
					start := time.Now()
					if err := op.call(mode.rt); err != nil {
						// The SDK's event-stream reader now and then
						// reports "use of closed network connection"
						// after a complete stream from the simulator;
						// count it (the errors metric) rather than end
						// the run.
						if !strings.Contains(err.Error(), "use of closed network connection") {
							b.Fatal(err)
						}
						failed++
						continue
					}
					took = append(took, time.Since(start))
				}
				slices.Sort(took)
				b.ReportMetric(float64(took[len(took)/2])/float64(time.Millisecond), "p50-ms")
				b.ReportMetric(float64(failed), "errors")
			})
		}
	}
}
