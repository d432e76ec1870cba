package quotaclient_test

import (
	"context"
	"log/slog"
	"net"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
	"github.com/bedrockqb/quotabroker/internal/clocktest"
	"github.com/bedrockqb/quotabroker/server"
)

const (
	haiku3   = "anthropic.claude-3-haiku-20240307-v1:0"
	sonnet45 = "anthropic.claude-sonnet-4-5-20250929-v1:0"
)

func f64(v float64) *float64 { return &v }

// testScenario: Claude 3 Haiku on demand (burndown 1) and Sonnet 4.5
// through the us. profile (burndown 5), with the given per-minute quotas
// enforced exactly (true capacity = applied), no latency, no faults.
func testScenario(haikuRPM, haikuTPM, sonnetTPM float64) *bedrocksim.Scenario {
	us := []string{"us-east-1", "us-west-2"}
	arns := func(id string) []bedrocksim.ProfileModel {
		var out []bedrocksim.ProfileModel
		for _, r := range us {
			out = append(out, bedrocksim.ProfileModel{ModelArn: "arn:aws:bedrock:" + r + "::foundation-model/" + id})
		}
		return out
	}
	rows := []bedrocksim.Quota{
		{Code: "L-HAIKUTPM", Name: "On-demand model inference tokens per minute for Anthropic Claude 3 Haiku", Value: haikuTPM, DefaultValue: haikuTPM,
			Enforces: &bedrocksim.Enforcement{Metric: bedrocksim.MetricTPM, Scopes: []string{bedrocksim.ScopeOnDemand}, Model: haiku3}},
		{Code: "L-HAIKURPM", Name: "On-demand model inference requests per minute for Anthropic Claude 3 Haiku", Value: haikuRPM, DefaultValue: haikuRPM,
			Enforces: &bedrocksim.Enforcement{Metric: bedrocksim.MetricRPM, Scopes: []string{bedrocksim.ScopeOnDemand}, Model: haiku3}},
		{Code: "L-SON45XR", Name: "Cross-region model inference tokens per minute for Anthropic Claude Sonnet 4.5 V1", Value: sonnetTPM, DefaultValue: sonnetTPM,
			Enforces: &bedrocksim.Enforcement{Metric: bedrocksim.MetricTPM, Scopes: []string{bedrocksim.ScopeCrossRegion}, Model: sonnet45}},
	}
	return &bedrocksim.Scenario{
		Name: "quotaclient", AccountID: "111122223333", DefaultRegion: "us-east-1",
		Models: []bedrocksim.Model{
			{ID: haiku3, Provider: "Anthropic", Name: "Claude 3 Haiku", InferenceTypes: []string{"ON_DEMAND", "INFERENCE_PROFILE"}, MaxOutputTokens: 4096, CountTokens: true,
				InputModalities: []string{"TEXT"}, OutputModalities: []string{"TEXT"}},
			{ID: sonnet45, Provider: "Anthropic", Name: "Claude Sonnet 4.5", InferenceTypes: []string{"INFERENCE_PROFILE"}, MaxOutputTokens: 64000, CountTokens: true,
				InputModalities: []string{"TEXT"}, OutputModalities: []string{"TEXT"}},
		},
		InferenceProfiles: []bedrocksim.InferenceProfile{
			{ID: "us." + sonnet45, Name: "US Anthropic Claude Sonnet 4.5", Models: arns(sonnet45), SourceRegions: us},
		},
		Quotas:  map[string][]bedrocksim.Quota{"us-east-1": rows},
		Runtime: bedrocksim.Runtime{TrueCapacityFraction: 1, OutputTokens: bedrocksim.OutputDist{Distribution: "fixed", Fixed: 50}},
	}
}

// startSim serves a simulator on 127.0.0.1.
func startSim(t testing.TB, sc *bedrocksim.Scenario, speed float64) (*bedrocksim.Sim, string) {
	t.Helper()
	sim, err := bedrocksim.New(bedrocksim.Config{Scenario: sc, Speed: speed, Seed: 1, DisableLatency: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sim.Handler())
	t.Cleanup(srv.Close)
	return sim, srv.URL
}

// runtime returns a plain bedrockruntime client for the simulator, with
// the SDK's standard retryer (as a user would have it) unless opts change it.
func runtimeClient(url string, opts ...func(*bedrockruntime.Options)) *bedrockruntime.Client {
	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", "")}
	opts = append([]func(*bedrockruntime.Options){func(o *bedrockruntime.Options) { o.BaseEndpoint = aws.String(url) }}, opts...)
	return bedrockruntime.NewFromConfig(cfg, opts...)
}

func noRetries(o *bedrockruntime.Options) { o.Retryer = aws.NopRetryer{} }

// brokerProc is a real broker: bbolt file, broker.Broker with its Run
// loop, gRPC server on 127.0.0.1.
type brokerProc struct {
	b    *broker.Broker
	srv  *server.Server
	addr string
	stop func()
}

type brokerOpts struct {
	clock  broker.Clock
	path   string // bolt file; "" means a new one
	addr   string // "" means any port
	specs  []broker.Spec
	config broker.Config
	server server.Config
	fsync  bool // the store syncs every commit, as quota-broker serve does; off by default to keep tests fast
}

func startBroker(t testing.TB, o brokerOpts) *brokerProc {
	t.Helper()
	ctx := context.Background()
	if o.path == "" {
		o.path = filepath.Join(t.TempDir(), "state.db")
	}
	if o.addr == "" {
		o.addr = "127.0.0.1:0"
	}
	if o.clock == nil {
		o.clock = clocktest.NewScaled(1)
	}
	store, err := bolt.Open(o.path, bolt.Options{NoSync: !o.fsync})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.Open(ctx, store, o.clock, o.config)
	if err != nil {
		store.Close()
		t.Fatal(err)
	}
	if o.specs != nil {
		if err := b.SetSpecs(ctx, o.specs); err != nil {
			t.Fatal(err)
		}
	}
	srv := server.New(b, o.server)
	lis, err := net.Listen("tcp", o.addr)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { b.Run(runCtx) })
	wg.Go(func() { srv.Serve(lis) })
	var once sync.Once
	p := &brokerProc{b: b, srv: srv, addr: lis.Addr().String()}
	p.stop = func() {
		once.Do(func() {
			srv.GRPC().Stop() // abrupt, like a crash of the process
			cancel()
			wg.Wait()
			b.Close()
			store.Close()
		})
	}
	t.Cleanup(p.stop)
	return p
}

func spec(t testing.TB, modelID string, l broker.Limits) broker.Spec {
	t.Helper()
	key, err := broker.ParseModelID(modelID, "", "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	return broker.Spec{Key: key, Quota: l, Source: "test"}
}

// dial connects to addr with quick reconnects, so a restarted broker is
// found again within tens of milliseconds.
func dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.5, MaxDelay: 50 * time.Millisecond},
			MinConnectTimeout: time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// report returns the broker's report of the budget of modelID.
func report(t testing.TB, conn *grpc.ClientConn, model string) *pb.BudgetReport {
	t.Helper()
	rep, err := pb.NewQuotaBrokerClient(conn).GetQuotaReport(context.Background(), &pb.GetQuotaReportRequest{Model: model})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.GetBudgets()) != 1 {
		t.Fatalf("report for %s has %d budgets", model, len(rep.GetBudgets()))
	}
	return rep.GetBudgets()[0]
}

func converseIn(modelID, text string, maxTokens int32) *bedrockruntime.ConverseInput {
	return &bedrockruntime.ConverseInput{
		ModelId:         aws.String(modelID),
		Messages:        []rttypes.Message{{Role: rttypes.ConversationRoleUser, Content: []rttypes.ContentBlock{&rttypes.ContentBlockMemberText{Value: text}}}},
		InferenceConfig: &rttypes.InferenceConfiguration{MaxTokens: aws.Int32(maxTokens)},
	}
}

func converseStreamIn(modelID, text string, maxTokens int32) *bedrockruntime.ConverseStreamInput {
	return &bedrockruntime.ConverseStreamInput{
		ModelId:         aws.String(modelID),
		Messages:        []rttypes.Message{{Role: rttypes.ConversationRoleUser, Content: []rttypes.ContentBlock{&rttypes.ContentBlockMemberText{Value: text}}}},
		InferenceConfig: &rttypes.InferenceConfiguration{MaxTokens: aws.Int32(maxTokens)},
	}
}

func anthropicBody(text string, maxTokens int) []byte {
	return []byte(`{"anthropic_version":"bedrock-2023-05-31","max_tokens":` + itoa(maxTokens) +
		`,"messages":[{"role":"user","content":"` + text + `"}]}`)
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// settledLog is a slog handler that signals each settlement the client
// logs, so tests can wait for asynchronous settlements without sleeping.
type settledLog struct {
	ch chan string // reason of each settlement
}

func newSettledLog() *settledLog { return &settledLog{ch: make(chan string, 1024)} }

func (h *settledLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *settledLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "lease settled" || r.Message == "settle lease" {
		reason := ""
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "reason" {
				reason = a.Value.String()
			}
			return true
		})
		h.ch <- reason
	}
	return nil
}
func (h *settledLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *settledLog) WithGroup(string) slog.Handler      { return h }

// next waits for the next settlement (bounded, so a bug fails the test
// rather than hanging it).
func (h *settledLog) next(t testing.TB) string {
	t.Helper()
	select {
	case r := <-h.ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no settlement within 10s")
		return ""
	}
}
