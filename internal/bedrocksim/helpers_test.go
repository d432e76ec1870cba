package bedrocksim

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrock"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/servicequotas"
)

// fakeClock is a real-time clock that only moves when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// harness is a simulator behind an httptest server on 127.0.0.1 and the
// real SDK clients pointed at it. SDK retries are off so every refusal is
// visible.
type harness struct {
	sim   *Sim
	clock *fakeClock
	url   string
	sq    *servicequotas.Client
	br    *bedrock.Client
	rt    *bedrockruntime.Client
	cw    *cloudwatch.Client
}

func newHarness(t testing.TB, sc *Scenario, mutate ...func(*Config)) *harness {
	t.Helper()
	clock := newFakeClock()
	cfg := Config{Scenario: sc, Now: clock.Now, DisableLatency: true, Seed: 7}
	for _, m := range mutate {
		m(&cfg)
	}
	sim, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewServer(sim.Handler())
	t.Cleanup(srv.Close)
	return newClients(sim, clock, srv.URL, "us-east-1")
}

func newClients(sim *Sim, clock *fakeClock, url, region string) *harness {
	cfg := awsConfig(region)
	return &harness{
		sim: sim, clock: clock, url: url,
		sq: servicequotas.NewFromConfig(cfg, func(o *servicequotas.Options) { o.BaseEndpoint = aws.String(url) }),
		br: bedrock.NewFromConfig(cfg, func(o *bedrock.Options) { o.BaseEndpoint = aws.String(url) }),
		rt: bedrockruntime.NewFromConfig(cfg, func(o *bedrockruntime.Options) { o.BaseEndpoint = aws.String(url) }),
		cw: cloudwatch.NewFromConfig(cfg, func(o *cloudwatch.Options) { o.BaseEndpoint = aws.String(url) }),
	}
}

func awsConfig(region string) aws.Config {
	return aws.Config{
		Region:      region,
		Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
		Retryer:     func() aws.Retryer { return aws.NopRetryer{} },
		HTTPClient:  closeSafeBodies{awshttp.NewBuildableClient()},
	}
}

// closeSafeBodies hands the SDK's request bodies to net/http without their
// io.WriterTo method. Without it, now and then a response body read failed
// with "use of closed network connection" (about 1 package run in 15 on
// loopback). The race, between smithy-go (v1.28.9) and net/http:
//
//   - net/http's writeLoop writes the body's Content-Length bytes straight
//     to the socket, then reads the body once more to check it is empty.
//   - On loopback the simulator can answer before that check. smithy-go's
//     ClientHandler closes the request body as soon as Do returns.
//   - The check uses the body's WriteTo (io.Copy prefers it), and smithy-go's
//     closed body returns io.EOF from WriteTo instead of (0, nil). net/http
//     takes that for a write error and closes the connection while the
//     response body is still being read.
//
// Through Read, the same closed body reports a clean end (0, io.EOF) and
// nothing is closed. TestClosedSDKRequestBodyDoesNotCloseConnection forces
// that interleaving.
type closeSafeBodies struct{ next aws.HTTPClient }

func (c closeSafeBodies) Do(r *http.Request) (*http.Response, error) {
	if r.Body != nil && r.Body != http.NoBody {
		// The SDK built r for this attempt and closes r.Body after Do; the
		// wrapper passes that Close through.
		r.Body = readCloserOnly{r.Body}
	}
	return c.next.Do(r)
}

// readCloserOnly hides every method of its ReadCloser except Read and Close.
type readCloserOnly struct{ io.ReadCloser }

const (
	sonnet45 = "anthropic.claude-sonnet-4-5-20250929-v1:0"
	haiku3   = "anthropic.claude-3-haiku-20240307-v1:0"
	llama31  = "meta.llama3-1-8b-instruct-v1:0"
)

func f64(v float64) *float64 { return &v }

// testScenario is a small account with round numbers, no latency and no
// faults: each test changes what it needs.
func testScenario() *Scenario {
	us := []string{"us-east-1", "us-west-2"}
	arn := func(id string, regions ...string) []ProfileModel {
		var out []ProfileModel
		for _, r := range regions {
			out = append(out, ProfileModel{ModelArn: "arn:aws:bedrock:" + r + "::foundation-model/" + id})
		}
		return out
	}
	rows := []Quota{
		{Code: "L-SON45XR", Name: "Cross-region model inference tokens per minute for Anthropic Claude Sonnet 4.5 V1", Value: 100000, DefaultValue: 100000, Adjustable: true,
			Enforces: &Enforcement{Metric: MetricTPM, Scopes: []string{ScopeCrossRegion}, Model: sonnet45}, TrueValue: f64(50000)},
		{Code: "L-SON45GL", Name: "Global cross-region model inference tokens per minute for Anthropic Claude Sonnet 4.5 V1", Value: 200000, DefaultValue: 200000, Adjustable: true,
			Enforces: &Enforcement{Metric: MetricTPM, Scopes: []string{ScopeGlobal}, Model: sonnet45}},
		{Code: "L-HAIKUTPM", Name: "On-demand model inference tokens per minute for Anthropic Claude 3 Haiku", Value: 20000, DefaultValue: 20000, Adjustable: true,
			Enforces: &Enforcement{Metric: MetricTPM, Scopes: []string{ScopeOnDemand}, Model: haiku3}},
		{Code: "L-HAIKURPM", Name: "On-demand model inference requests per minute for Anthropic Claude 3 Haiku", Value: 1000, DefaultValue: 1000, Adjustable: true,
			Enforces: &Enforcement{Metric: MetricRPM, Scopes: []string{ScopeOnDemand}, Model: haiku3}},
		{Code: "L-LLAMARPM", Name: "On-demand model inference requests per minute for Meta Llama 3.1 8B Instruct", Value: 2, DefaultValue: 2, Adjustable: false,
			Enforces: &Enforcement{Metric: MetricRPM, Scopes: []string{ScopeOnDemand}, Model: llama31}},
		{Code: "L-HAIKUTPD", Name: "Model invocation max tokens per day for Anthropic Claude 3 Haiku (doubled for cross-region calls)", Value: 1e9, DefaultValue: 1e9,
			Enforces: &Enforcement{Metric: MetricTPD, Scopes: []string{ScopeOnDemand, ScopeCrossRegion}, Model: haiku3}},
		{Code: "L-FE44174A", Name: "Model units no-commitment Provisioned Throughputs across base models", Value: 2, DefaultValue: 2, Adjustable: true},
	}
	return &Scenario{
		Name: "test", AccountID: "111122223333", DefaultRegion: "us-east-1",
		Models: []Model{
			{ID: sonnet45, Provider: "Anthropic", Name: "Claude Sonnet 4.5", InferenceTypes: []string{"INFERENCE_PROFILE"}, MaxOutputTokens: 64000, CountTokens: true,
				InputModalities: []string{"TEXT"}, OutputModalities: []string{"TEXT"}},
			{ID: haiku3, Provider: "Anthropic", Name: "Claude 3 Haiku", InferenceTypes: []string{"ON_DEMAND", "INFERENCE_PROFILE"}, MaxOutputTokens: 4096, CountTokens: true,
				InputModalities: []string{"TEXT"}, OutputModalities: []string{"TEXT"}},
			{ID: llama31, Provider: "Meta", Name: "Llama 3.1 8B Instruct", InferenceTypes: []string{"ON_DEMAND"}, MaxOutputTokens: 2048,
				InputModalities: []string{"TEXT"}, OutputModalities: []string{"TEXT"}},
		},
		InferenceProfiles: []InferenceProfile{
			{ID: "us." + sonnet45, Name: "US Anthropic Claude Sonnet 4.5", Models: arn(sonnet45, us...), SourceRegions: us},
			{ID: "global." + sonnet45, Name: "Global Anthropic Claude Sonnet 4.5", Models: arn(sonnet45, us...)},
			{ID: "us." + haiku3, Name: "US Anthropic Claude 3 Haiku", Models: arn(haiku3, us...), SourceRegions: us},
		},
		Quotas:  map[string][]Quota{"us-east-1": rows},
		Runtime: Runtime{OutputTokens: OutputDist{Distribution: "fixed", Fixed: 100}},
	}
}
