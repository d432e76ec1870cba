package dashboard_test

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	"github.com/bedrockqb/quotabroker/internal/alert"
	"github.com/bedrockqb/quotabroker/internal/clocktest"
	"github.com/bedrockqb/quotabroker/server"
	"github.com/bedrockqb/quotabroker/server/dashboard"
)

// The fixture's budgets. Traffic ranks them sonnet, haiku, nova-pro;
// nova-lite and llama are idle.
const (
	sonnet   = "us.anthropic.claude-sonnet-4-5-20250929-v1:0" // heavy, throttled by Bedrock
	novaPro  = "us.amazon.nova-pro-v1:0"                      // steady, never throttled
	haiku    = "anthropic.claude-3-haiku-20240307-v1:0"       // small RPM: the broker refuses some
	novaLite = "amazon.nova-lite-v1:0"
	llama    = "us.meta.llama3-3-70b-instruct-v1:0"
)

var models = []struct {
	id     string
	limits broker.Limits
}{
	{sonnet, broker.Limits{RPM: 200, TPM: 400_000}},
	{novaPro, broker.Limits{RPM: 100, TPM: 200_000}},
	{haiku, broker.Limits{RPM: 10, TPM: 100_000}},
	{novaLite, broker.Limits{RPM: 1000, TPM: 4_000_000}},
	{llama, broker.Limits{RPM: 400, TPM: 600_000}},
}

// fixture is a broker on a real bbolt file with a fake clock, its alerter
// with the default rules, and the dashboard and /metrics on one mux behind
// a real HTTP server on loopback.
type fixture struct {
	b      *broker.Broker
	clock  *clocktest.Clock
	alerts *alert.Alerter
	url    string
	keys   map[string]broker.Key
	tally  map[string]*tally // by model id
}

// firing adapts the alerter to the dashboard, as cmd/quota-broker does.
type firing struct{ a *alert.Alerter }

func (f firing) Firing() []dashboard.Firing {
	var out []dashboard.Firing
	for _, al := range f.a.Alerts() {
		if al.Firing {
			out = append(out, dashboard.Firing{Region: al.Budget.Region, Scope: al.Budget.Scope, Model: al.Budget.Model, Rule: string(al.Rule)})
		}
	}
	return out
}

// tally counts what the fixture's callers saw of a model.
type tally struct {
	calls, throttled, refused int64
}

func start(t testing.TB, cfg dashboard.Config) *fixture {
	t.Helper()
	ctx := context.Background()
	// A real bbolt file; durability is not under test here, so no fsync
	// per lease (minutes of traffic would otherwise take seconds).
	store, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	clock := clocktest.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
	b, err := broker.Open(ctx, store, clock, broker.Config{Margin: 0.9})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	al, err := alert.New(b, nil, alert.Config{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{b: b, clock: clock, alerts: al, keys: map[string]broker.Key{}, tally: map[string]*tally{}}
	var specs []broker.Spec
	for _, m := range models {
		k, err := broker.ParseModelID(m.id, "", "us-east-1")
		if err != nil {
			t.Fatal(err)
		}
		f.keys[m.id] = k
		specs = append(specs, broker.Spec{Key: k, Quota: m.limits, Source: "test"})
	}
	if err := b.SetSpecs(ctx, specs); err != nil {
		t.Fatal(err)
	}
	// The same mux as serve builds: /metrics and the dashboard.
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", server.MetricsHandler(server.NewRegistry(b)))
	if cfg.Alerts == nil {
		cfg.Alerts = firing{al}
	}
	dashboard.New(b, cfg).Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

// drive runs minutes of traffic, a minute at a time, flushing history to
// the store after each as the sweep does, and evaluating the alerts. Load
// rises and falls; sonnet's calls are partly throttled by Bedrock (its
// throttle_rate alert fires), haiku's RPM makes the broker refuse some.
func (f *fixture) drive(t testing.TB, minutes int) {
	t.Helper()
	ctx := context.Background()
	for m := range minutes {
		wave := 1 + math.Sin(float64(m)/5) // 0..2
		f.calls(t, sonnet, 10+int(6*wave), func(i int) broker.Outcome {
			if i%5 == 4 {
				return broker.OutcomeThrottled
			}
			return broker.OutcomeSuccess
		})
		f.calls(t, novaPro, 6+int(2*wave), func(int) broker.Outcome { return broker.OutcomeSuccess })
		f.calls(t, haiku, 11, func(int) broker.Outcome { return broker.OutcomeSuccess })
		// A second over the minute, so the sliding minute window has
		// let the last minute's calls go.
		f.clock.Advance(time.Minute + time.Second)
		f.b.Sweep(ctx)
		f.alerts.Evaluate()
	}
}

// calls acquires n leases for model without waiting and completes the
// granted ones with outcome(i).
func (f *fixture) calls(t testing.TB, model string, n int, outcome func(i int) broker.Outcome) {
	t.Helper()
	ctx := context.Background()
	tl := f.tally[model]
	if tl == nil {
		tl = &tally{}
		f.tally[model] = tl
	}
	for i := range n {
		d, err := f.b.Acquire(ctx, broker.AcquireRequest{ModelID: model, Client: "svc-a", InputTokens: 2000, MaxOutputTokens: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if !d.Granted {
			tl.refused++
			continue
		}
		u := broker.Usage{InputTokens: 2000, OutputTokens: 300}
		o := outcome(i)
		tl.calls++
		if o == broker.OutcomeThrottled {
			u = broker.Usage{}
			tl.throttled++
		}
		if _, err := f.b.Complete(ctx, d.Lease.ID, o, u); err != nil {
			t.Fatal(err)
		}
	}
}
