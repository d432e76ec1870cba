package quotaclient_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/routefile"
	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

var routeRegions = []string{"us-east-1", "us-east-2", "us-west-2"}

// routeScenario: Sonnet 4.5's US profile callable from three source
// Regions, each with its own cross-region TPM quota, and its global profile
// from us-east-1 with globalTPM.
func routeScenario(tpm, globalTPM float64) *bedrocksim.Scenario {
	sc := testScenario(1000, 1e6, tpm)
	sc.InferenceProfiles[0].SourceRegions = routeRegions
	var arns []bedrocksim.ProfileModel
	for _, r := range routeRegions {
		arns = append(arns, bedrocksim.ProfileModel{ModelArn: "arn:aws:bedrock:" + r + "::foundation-model/" + sonnet45})
	}
	sc.InferenceProfiles[0].Models = arns
	sc.InferenceProfiles = append(sc.InferenceProfiles, bedrocksim.InferenceProfile{ID: "global." + sonnet45, Name: "Global Claude Sonnet 4.5",
		Models: arns, SourceRegions: routeRegions})
	sc.Quotas = map[string][]bedrocksim.Quota{}
	for _, r := range routeRegions {
		sc.Quotas[r] = []bedrocksim.Quota{{Code: "L-SON45XR", Name: "Cross-region model inference tokens per minute for Anthropic Claude Sonnet 4.5 V1",
			Value: tpm, DefaultValue: tpm,
			Enforces: &bedrocksim.Enforcement{Metric: bedrocksim.MetricTPM, Scopes: []string{bedrocksim.ScopeCrossRegion}, Model: sonnet45}}}
	}
	sc.Quotas["us-east-1"] = append(sc.Quotas["us-east-1"], bedrocksim.Quota{Code: "L-SON45GL",
		Name: "Global cross-region model inference tokens per minute for Anthropic Claude Sonnet 4.5 V1", Value: globalTPM, DefaultValue: globalTPM,
		Enforces: &bedrocksim.Enforcement{Metric: bedrocksim.MetricTPM, Scopes: []string{bedrocksim.ScopeGlobal}, Model: sonnet45}})
	return sc
}

// routeBroker serves budgets matching routeScenario and the routes of
// routesJSON, resolved by routefile against them.
func routeBroker(t *testing.T, tpm, globalTPM int64, routesJSON string) *brokerProc {
	t.Helper()
	var specs []broker.Spec
	var keys []broker.Key
	for _, r := range routeRegions {
		k := broker.Key{Region: r, Scope: broker.ScopeCrossRegion, Model: sonnet45}
		specs = append(specs, broker.Spec{Key: k, Quota: broker.Limits{TPM: tpm}, Source: "test"})
		keys = append(keys, k)
	}
	g := broker.Key{Region: "us-east-1", Scope: broker.ScopeGlobal, Model: sonnet45}
	specs = append(specs, broker.Spec{Key: g, Quota: broker.Limits{TPM: globalTPM}, Source: "test"})
	keys = append(keys, g)
	bp := startBroker(t, brokerOpts{specs: specs})
	f, err := routefile.Parse("routes.json", []byte(routesJSON))
	if err != nil {
		t.Fatal(err)
	}
	routes, err := f.Resolve(keys)
	if err != nil {
		t.Fatal(err)
	}
	if err := bp.b.SetRoutes(routes); err != nil {
		t.Fatal(err)
	}
	return bp
}

const usRoute = `{"routes": [{"name": "sonnet-us", "model": "` + sonnet45 + `", "geography": "us", "regions": ["us-east-1", "us-east-2", "us-west-2"]}]}`

func newRouter(t *testing.T, qc *quotaclient.Client, route, url string) *quotaclient.Router {
	t.Helper()
	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", "")}
	return quotaclient.NewRouter(qc, route, cfg, func(o *bedrockruntime.Options) { o.BaseEndpoint = aws.String(url) }, noRetries)
}

// TestRouterSpillsWithoutThrottles: a full target spills to the next, and
// Bedrock (the simulator) throttles nothing.
func TestRouterSpillsWithoutThrottles(t *testing.T) {
	t.Parallel()
	// 6,000 TPM per Region, 0.9 of it for the broker; a call reserves
	// about 110 + 50 x 5 (Sonnet 4.5's burndown) tokens and is charged
	// about as much (the simulator writes 50 tokens): about 15 calls fill a
	// target for the minute.
	sim, url := startSim(t, routeScenario(6000, 1e6), 1)
	bp := routeBroker(t, 6000, 1_000_000, usRoute)
	qc := quotaclient.New(dial(t, bp.addr), quotaclient.WithWait(-1))
	r := newRouter(t, qc, "sonnet-us", url)
	ctx := context.Background()
	text := strings.Repeat("word ", 80)
	var got []string
	refused := false
	for range 60 {
		out, err := r.Converse(ctx, converseIn("", text, 50))
		if err != nil {
			var re *quotaclient.RefusedError
			if !errors.As(err, &re) {
				t.Fatal(err)
			}
			refused = true // every target full
			break
		}
		l, ok := quotaclient.LeaseOf(out.ResultMetadata)
		if !ok || l.Route != "sonnet-us" || l.CallModelID != "us."+sonnet45 {
			t.Fatalf("lease of the call: %+v", l)
		}
		got = append(got, l.Region+":"+l.RouteReason)
	}
	// In order: the first target while it has room, then the second, then
	// the third, each filled before the next is used.
	var runs []string
	per := map[string]int{}
	for _, g := range got {
		if len(runs) == 0 || runs[len(runs)-1] != g {
			runs = append(runs, g)
		}
		per[g]++
	}
	if want := "us-east-1:room us-east-2:spill us-west-2:spill"; !refused || strings.Join(runs, " ") != want {
		t.Fatalf("calls went %v (refused at the end: %v), want runs of %s", got, refused, want)
	}
	st := sim.Stats()
	if st.Throttles != 0 || st.Admitted != int64(len(got)) {
		t.Fatalf("simulator: %d admitted, %d throttled; want %d and 0", st.Admitted, st.Throttles, len(got))
	}
	for g, n := range per {
		if n < 12 {
			t.Errorf("%s: %d calls; a target holds about 15", g, n)
		}
	}
}

// TestRouterAffinity: a conversation stays on its target while it has
// room, and moves (once) when it has none.
func TestRouterAffinity(t *testing.T) {
	t.Parallel()
	_, url := startSim(t, routeScenario(6000, 1e6), 1)
	bp := routeBroker(t, 6000, 1_000_000, usRoute)
	qc := quotaclient.New(dial(t, bp.addr), quotaclient.WithWait(-1))
	r := newRouter(t, qc, "sonnet-us", url)
	text := strings.Repeat("word ", 80)
	call := func(key string) string {
		t.Helper()
		ctx := context.Background()
		if key != "" {
			ctx = quotaclient.WithAffinityKey(ctx, key)
		}
		out, err := r.Converse(ctx, converseIn("", text, 50))
		if err != nil {
			t.Fatalf("call for %q: %v", key, err)
		}
		l, _ := quotaclient.LeaseOf(out.ResultMetadata)
		return l.Region + ":" + l.RouteReason
	}
	// Conversation a starts on the first target, b on the second (the
	// first filled by other traffic), and each stays where it started.
	if got := call("a"); got != "us-east-1:room" {
		t.Fatalf("a: %s", got)
	}
	for i := 0; call("") != "us-east-2:spill"; i++ {
		if i > 30 {
			t.Fatal("us-east-1 never filled")
		}
	}
	if got := call("b"); got != "us-east-2:spill" {
		t.Fatalf("b: %s", got)
	}
	for range 3 {
		if got := call("b"); got != "us-east-2:affinity" {
			t.Fatalf("b again: %s", got)
		}
	}
	// a's target is full: a moves to the first with room, then stays.
	if got := call("a"); got != "us-east-2:spill" {
		t.Fatalf("a after its target filled: %s", got)
	}
	if got := call("a"); got != "us-east-2:affinity" {
		t.Fatalf("a after moving: %s", got)
	}
}

// TestRouterResidencyExcludesGlobal: with every US target full, a route
// that does not allow global is refused rather than sent to the global
// profile, which has room.
func TestRouterResidencyExcludesGlobal(t *testing.T) {
	t.Parallel()
	sim, url := startSim(t, routeScenario(6000, 1e6), 1)
	bp := routeBroker(t, 6000, 1_000_000, `{"routes": [
  {"name": "us-only", "model": "`+sonnet45+`", "geography": "us"},
  {"name": "us-then-global", "model": "`+sonnet45+`", "geography": "us", "allow_global": true}]}`)
	qc := quotaclient.New(dial(t, bp.addr), quotaclient.WithWait(-1))
	usOnly := newRouter(t, qc, "us-only", url)
	ctx := context.Background()
	text := strings.Repeat("word ", 80)
	var refused error
	for range 80 {
		out, err := usOnly.Converse(ctx, converseIn("", text, 50))
		if err != nil {
			refused = err
			break
		}
		if l, _ := quotaclient.LeaseOf(out.ResultMetadata); strings.HasPrefix(l.CallModelID, "global.") {
			t.Fatalf("us-only route called %s", l.CallModelID)
		}
	}
	var re *quotaclient.RefusedError
	if !errors.As(refused, &re) {
		t.Fatalf("us-only with every US target full: %v", refused)
	}
	out, err := newRouter(t, qc, "us-then-global", url).Converse(ctx, converseIn("", text, 100))
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := quotaclient.LeaseOf(out.ResultMetadata); l.CallModelID != "global."+sonnet45 || l.Region != "us-east-1" {
		t.Fatalf("the route that allows global: %+v", l)
	}
	for _, q := range sim.Stats().Quotas {
		if q.Code == "L-SON45GL" && q.Admitted != 1 {
			t.Fatalf("global profile admitted %d calls, want the one that allows it", q.Admitted)
		}
	}
	if sim.Stats().Throttles != 0 {
		t.Fatalf("%d throttles", sim.Stats().Throttles)
	}
}

// TestRouterWaitersLeaveNoGhosts: callers wait on every full target at
// once; one target frees and serves some of them, the others' waits run
// out; afterwards no queue holds anybody.
func TestRouterWaitersLeaveNoGhosts(t *testing.T) {
	t.Parallel()
	sim, url := startSim(t, routeScenario(6000, 1e6), 1)
	bp := routeBroker(t, 6000, 1_000_000, usRoute)
	conn := dial(t, bp.addr)
	qc := quotaclient.New(conn, quotaclient.WithWait(time.Second))
	ctx := context.Background()
	// Fill every target with leases the test holds, each the size of a
	// call's reservation: 110 estimated input tokens (400 bytes / 4 x 1.1)
	// + 100 x 5.
	var held []*quotaclient.Lease
	for {
		l, err := qc.Acquire(ctx, quotaclient.Request{Route: "sonnet-us", InputTokens: 110, MaxOutputTokens: 100, Wait: -1})
		if err != nil {
			break
		}
		held = append(held, l)
	}
	if len(held) != 24 {
		t.Fatalf("%d leases fill the three targets, want 24", len(held))
	}
	r := newRouter(t, qc, "sonnet-us", url)
	text := strings.Repeat("word ", 80)
	const callers = 30
	var wg sync.WaitGroup
	results := make(chan string, callers)
	for i := range callers {
		wg.Go(func() {
			out, err := r.Converse(quotaclient.WithAffinityKey(ctx, fmt.Sprint("conv-", i)), converseIn("", text, 100))
			if err != nil {
				results <- "refused"
				return
			}
			l, _ := quotaclient.LeaseOf(out.ResultMetadata)
			results <- l.Region
		})
	}
	// Once every caller waits on every target, free three leases' worth on
	// us-west-2.
	pc := pb.NewQuotaBrokerClient(conn)
	pollUntil(t, 5*time.Second, "every caller waiting on every target", func() bool {
		w := routeWaiters(t, pc, "sonnet-us")
		return w["us-east-1"] == callers && w["us-east-2"] == callers && w["us-west-2"] == callers
	})
	freed := 0
	for _, l := range held {
		if l.Region == "us-west-2" && freed < 3 {
			l.Complete(ctx, quotaclient.OutcomeCancelled, quotaclient.Usage{})
			freed++
		}
	}
	wg.Wait()
	close(results)
	count := map[string]int{}
	for r := range results {
		count[r]++
	}
	// The three freed leases' worth serve three callers, and what their
	// calls did not use (they write 50 of 100 tokens) one or two more.
	if count["us-west-2"] < 3 || count["us-west-2"]+count["refused"] != callers {
		t.Fatalf("outcomes %v, want at least 3 on us-west-2, nowhere else, and the rest refused", count)
	}
	// The broker answered every caller before it returned: whoever was
	// granted left the other queues, whoever was refused left them all.
	for region, n := range routeWaiters(t, pc, "sonnet-us") {
		if n != 0 {
			t.Errorf("%d ghost waiters on %s", n, region)
		}
	}
	rep, err := pc.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range rep.GetBudgets() {
		if b.GetWaiters() != 0 {
			t.Errorf("%d waiters on %v", b.GetWaiters(), b.GetBudget().GetKey())
		}
	}
	if sim.Stats().Throttles != 0 {
		t.Fatalf("%d throttles", sim.Stats().Throttles)
	}
}

// routeWaiters is how many of the route's callers wait on each target, by
// Region.
func routeWaiters(t *testing.T, pc pb.QuotaBrokerClient, route string) map[string]int64 {
	t.Helper()
	rep, err := pc.GetQuotaReport(context.Background(), &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, r := range rep.GetRoutes() {
		if r.GetName() == route {
			for _, tg := range r.GetTargets() {
				out[tg.GetBudget().GetRegion()] = tg.GetWaiters()
			}
		}
	}
	return out
}

// pollUntil checks cond until it holds, for at most limit: for a state
// another process reaches (callers queued at the broker) that sends no
// event to wait on.
func pollUntil(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(limit)
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("no %s within %v", what, limit)
		case <-tick.C:
		}
	}
}

// TestRouterFailsClosedWithoutBroker: without the broker there is no
// target to run on, so a route call fails closed even under FailOpen, and
// Bedrock sees nothing.
func TestRouterFailsClosedWithoutBroker(t *testing.T) {
	t.Parallel()
	sim, url := startSim(t, routeScenario(6000, 1e6), 1)
	bp := routeBroker(t, 6000, 1_000_000, usRoute)
	conn := dial(t, bp.addr)
	qc := quotaclient.New(conn, quotaclient.WithFailureMode(quotaclient.FailOpen), quotaclient.WithWait(-1),
		quotaclient.WithProbeInterval(time.Millisecond))
	r := newRouter(t, qc, "sonnet-us", url)
	ctx := context.Background()
	if _, err := r.Converse(ctx, converseIn("", "hello", 50)); err != nil {
		t.Fatal(err)
	}
	bp.stop()
	before := sim.Stats().Requests
	_, err := r.Converse(ctx, converseIn("", "hello", 50))
	if !errors.Is(err, quotaclient.ErrUnavailable) || !strings.Contains(err.Error(), "route calls fail closed even with FailOpen") {
		t.Fatalf("route call with the broker down: %v", err)
	}
	if got := sim.Stats().Requests; got != before {
		t.Fatalf("Bedrock saw %d requests with the broker down", got-before)
	}
}
