package broker_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

const ptARN = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/pt-sonnet"

var ptKey = broker.Key{Region: "us-east-1", Scope: broker.ScopeProvisioned, Model: ptARN}

func ptSpec(tpm int64) broker.Spec {
	return broker.Spec{Key: ptKey, Quota: broker.Limits{TPM: tpm}, Source: "test", Serves: sonnet45}
}

// ptSource is a quota source that lists one Provisioned Throughput in
// us-east-1 with the status the test sets ("" lists none).
type ptSource struct {
	mu     sync.Mutex
	status string
	listed bool // the listing succeeded
}

func (p *ptSource) set(status string, listed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status, p.listed = status, listed
}

func (p *ptSource) Discover(context.Context) (broker.Discovery, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := broker.Discovery{}
	if p.listed {
		d.ProvisionedRegions = []string{"us-east-1"}
	} else {
		d.Notes = []string{"list provisioned throughputs in us-east-1: AccessDeniedException"}
	}
	if p.status != "" {
		d.Provisioned = []broker.ProvisionedThroughput{{Region: "us-east-1", Name: "pt-sonnet", ARN: ptARN,
			Model: "arn:aws:bedrock:us-east-1::foundation-model/" + sonnet45, Status: p.status, ModelUnits: 1}}
	}
	return d, nil
}

// TestProvisionedAccounting: a Provisioned Throughput is charged input +
// 1.25 x cache_write + 0.1 x cache_read + output, with no burndown even for
// a model that has one on demand (bedrock-facts.md section 3).
func TestProvisionedAccounting(t *testing.T) {
	e := newEnv(t, ptSpec(100_000))
	ctx := context.Background()
	d, err := e.b.Acquire(ctx, broker.AcquireRequest{ModelID: ptARN, InputTokens: 100, CacheWriteTokens: 40, MaxOutputTokens: 200})
	if err != nil || !d.Granted {
		t.Fatalf("Acquire by ARN: %+v, %v", d, err)
	}
	if d.Key != ptKey || d.Lease.Burndown != 1 {
		t.Fatalf("key %v burndown %v; want %v and 1", d.Key, d.Lease.Burndown, ptKey)
	}
	if want := int64(100 + 50 + 200); d.Lease.Reserved != want {
		t.Fatalf("reserved %d, want %d (input + 1.25 x cache_write + max_output_tokens)", d.Lease.Reserved, want)
	}
	s, err := e.b.Complete(ctx, d.Lease.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 100, OutputTokens: 50, CacheWriteInputTokens: 40, CacheReadInputTokens: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(100 + 50 + 100 + 50); s.Charged != want {
		t.Fatalf("charged %d, want %d", s.Charged, want)
	}
	// An unset max_output_tokens reserves the served model's maximum, not
	// the 4096 guessed for an unknown id (the ARN).
	d, err = e.b.Acquire(ctx, broker.AcquireRequest{ModelID: ptARN, InputTokens: 10})
	if err != nil || !d.Granted || d.Lease.MaxOutputTokens != broker.DefaultMaxOutputTokens(sonnet45) {
		t.Fatalf("unset max_output_tokens: %+v, %v; want %d reserved", d, err, broker.DefaultMaxOutputTokens(sonnet45))
	}
}

// TestProvisionedSpecChecks: a provisioned budget names the model it
// serves and a capacity, and a route checks its targets run its model.
func TestProvisionedSpecChecks(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, tc := range []struct {
		spec broker.Spec
		want string
	}{
		{broker.Spec{Key: ptKey, Quota: broker.Limits{TPM: 5}}, "names the base model it serves"},
		{broker.Spec{Key: ptKey, Serves: sonnet45}, "no capacity stated"},
		{broker.Spec{Key: ptKey, Serves: sonnet45, Quota: broker.Limits{TPM: 5}, Burndown: 5}, "has none"},
		{broker.Spec{Key: broker.Key{Region: "us-west-2", Scope: broker.ScopeProvisioned, Model: ptARN}, Serves: sonnet45, Quota: broker.Limits{TPM: 5}}, "the ARN is in us-east-1, not us-west-2"},
		{broker.Spec{Key: broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: sonnet45}, Serves: sonnet45, Quota: broker.Limits{TPM: 5}}, "only a Provisioned Throughput"},
	} {
		if err := e.b.SetSpecs(ctx, []broker.Spec{tc.spec}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SetSpecs(%+v) = %v, want an error with %q", tc.spec, err, tc.want)
		}
	}
	if err := e.b.SetSpecs(ctx, []broker.Spec{ptSpec(1000)}); err != nil {
		t.Fatal(err)
	}
	pt, err := broker.NewTarget(ptARN, "us-east-1")
	if err != nil || pt.ModelID != ptARN {
		t.Fatalf("NewTarget(ARN) = %+v, %v; want the ARN to call", pt, err)
	}
	err = e.b.SetRoutes([]broker.Route{{Name: "haiku", Model: haiku3, Targets: []broker.Target{pt}}})
	if err == nil || !strings.Contains(err.Error(), "serves "+sonnet45+", not the route's model "+haiku3) {
		t.Fatalf("route of another model: %v", err)
	}
}

// TestProvisionedGoneAtRefresh: a throughput gone at a discovery retires
// its budget and leaves its routes, in one step, and the refresh says so;
// a waiter on it fails at once; it comes back when listed InService again.
// A Region whose listing failed judges nothing.
func TestProvisionedGoneAtRefresh(t *testing.T) {
	synctest.Test(t, testProvisionedGoneAtRefresh)
}

func testProvisionedGoneAtRefresh(t *testing.T) {
	od := broker.Spec{Key: broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: sonnet45}, Quota: broker.Limits{RPM: 100}, Source: "test"}
	b := bubbleBroker(t, ptSpec(1000), od)
	e := struct{ b *broker.Broker }{b}
	ctx := context.Background()
	pt, _ := broker.NewTarget(ptARN, "us-east-1")
	odt, _ := broker.NewTarget(sonnet45, "us-east-1")
	if err := e.b.SetRoutes([]broker.Route{{Name: "pt-first", Model: sonnet45, Targets: []broker.Target{pt, odt}}}); err != nil {
		t.Fatal(err)
	}
	src := &ptSource{}
	src.set("InService", true)
	if err := e.b.Refresh(ctx, src); err != nil {
		t.Fatal(err)
	}
	if got := len(routeInfo(t, e.b, "pt-first").Targets); got != 2 {
		t.Fatalf("in service: %d targets, want 2", got)
	}
	// A caller waiting on the throughput alone (it is full).
	full, err := e.b.Acquire(ctx, broker.AcquireRequest{ModelID: ptARN, InputTokens: 900, MaxOutputTokens: 100})
	if err != nil || !full.Granted {
		t.Fatalf("fill: %+v, %v", full, err)
	}
	waited := make(chan error, 1)
	go func() {
		_, err := e.b.Acquire(ctx, broker.AcquireRequest{ModelID: ptARN, InputTokens: 10, MaxOutputTokens: 10, Wait: time.Minute})
		waited <- err
	}()
	synctest.Wait()
	if got := waiters(t, e.b)["us-east-1"]; got != 1 {
		t.Fatalf("%d waiters, want 1", got)
	}

	// Listing denied: nothing is judged.
	src.set("", false)
	if err := e.b.Refresh(ctx, src); err != nil {
		t.Fatal(err)
	}
	if got := len(routeInfo(t, e.b, "pt-first").Targets); got != 2 {
		t.Fatalf("listing denied: %d targets, want 2", got)
	}

	src.set("", true) // listed, and gone
	if err := e.b.Refresh(ctx, src); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; broker.KindOf(err) != broker.KindNotFound || !strings.Contains(err.Error(), ptARN+" is gone") {
		t.Fatalf("waiter on the gone throughput: %v; want KindNotFound naming it", err)
	}
	ri := routeInfo(t, e.b, "pt-first")
	if len(ri.Targets) != 1 || ri.Targets[0] != odt {
		t.Fatalf("route after the throughput went: %v, want only %v", ri.Targets, odt)
	}
	notes := strings.Join(e.b.DiscoveryStatus().Notes, "\n")
	for _, want := range []string{"retired budget " + ptKey.String(), "route pt-first: target 1 (us-east-1/" + ptARN + ") out of service, 1 of 2 targets left"} {
		if !strings.Contains(notes, want) {
			t.Errorf("discovery notes:\n%s\nwant %q", notes, want)
		}
	}
	for _, bi := range e.b.Budgets() {
		if bi.Spec.Key == ptKey {
			t.Errorf("the retired budget is still listed")
		}
	}
	// Its lease still runs: the report shows it until it ends.
	reported := func() bool {
		rep, _ := e.b.Report(broker.ReportFilter{})
		for _, r := range rep {
			if r.Spec.Key == ptKey {
				return true
			}
		}
		return false
	}
	if !reported() {
		t.Errorf("the retired budget with a lease running is not in the report")
	}
	if _, err := e.b.Acquire(ctx, broker.AcquireRequest{ModelID: ptARN, MaxOutputTokens: 10}); broker.KindOf(err) != broker.KindNotFound {
		t.Fatalf("Acquire on a retired budget: %v, want KindNotFound", err)
	}
	d, err := e.b.Acquire(ctx, broker.AcquireRequest{Route: "pt-first", MaxOutputTokens: 10})
	if err != nil || !d.Granted || d.Route.Target != odt {
		t.Fatalf("route grant: %+v, %v; want on %v", d.Route, err, odt)
	}
	if err := e.b.SetRoutes([]broker.Route{{Name: "pt-only", Model: sonnet45, Targets: []broker.Target{pt}}}); broker.KindOf(err) != broker.KindNotFound {
		t.Fatalf("a route naming a retired budget: %v, want KindNotFound", err)
	}
	// The same routes set again (a SIGHUP with the file unchanged) are
	// accepted as they are: the route keeps its retired target out of
	// service, and takes it back below like any other.
	if err := e.b.SetRoutes([]broker.Route{{Name: "pt-first", Model: sonnet45, Targets: []broker.Target{pt, odt}}}); err != nil {
		t.Fatalf("the unchanged routes set again while a target is retired: %v", err)
	}
	if ri := routeInfo(t, e.b, "pt-first"); len(ri.Targets) != 1 || ri.Targets[0] != odt {
		t.Fatalf("route after the unchanged routes were set again: %v, want only %v", ri.Targets, odt)
	}
	// The settlement of a lease granted before the retirement still
	// settles.
	if _, err := e.b.Complete(ctx, full.Lease.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 900, OutputTokens: 10}); err != nil {
		t.Fatalf("completing a lease of a retired budget: %v", err)
	}
	synctest.Wait() // the settlement's commit
	if reported() {
		t.Errorf("the retired budget with nothing left is still in the report")
	}

	src.set("InService", true)
	if err := e.b.Refresh(ctx, src); err != nil {
		t.Fatal(err)
	}
	if got := routeInfo(t, e.b, "pt-first").Targets; len(got) != 2 || got[0] != pt {
		t.Fatalf("back in service: targets %v, want the throughput first again", got)
	}
	if d, err := e.b.Acquire(ctx, broker.AcquireRequest{Route: "pt-first", MaxOutputTokens: 10}); err != nil || d.Route.Target != pt {
		t.Fatalf("route grant once back: %+v, %v; want on %v", d.Route, err, pt)
	}
}

// TestProvisionedNoBudgetNoted: a throughput InService without a budget is
// not given a capacity made up here; the refresh says what to state.
func TestProvisionedNoBudgetNoted(t *testing.T) {
	e := newEnv(t)
	src := &ptSource{}
	src.set("InService", true)
	if err := e.b.Refresh(context.Background(), src); err != nil {
		t.Fatal(err)
	}
	notes := strings.Join(e.b.DiscoveryStatus().Notes, "\n")
	if !strings.Contains(notes, ptARN+" (pt-sonnet, 1 model units of "+sonnet45+") is InService but has no budget") ||
		!strings.Contains(notes, "AWS publishes no per-model-unit rate") {
		t.Fatalf("notes:\n%s", notes)
	}
	if len(e.b.Budgets()) != 0 {
		t.Fatalf("budgets %+v: none may be invented", e.b.Budgets())
	}
}

// TestProvisionedUnderMoneyBudget: a call on a Provisioned Throughput costs
// nothing per token (its model units are paid by the hour), so a money
// budget neither refuses it as unpriced nor charges it.
func TestProvisionedUnderMoneyBudget(t *testing.T) {
	e := newEnv(t)
	e.cfg.Caps = broker.Caps{Account: broker.Money{USDPerDay: 1}}
	e.open()
	if err := e.b.SetSpecs(context.Background(), []broker.Spec{ptSpec(100_000)}); err != nil {
		t.Fatal(err)
	}
	d, err := e.b.Acquire(context.Background(), broker.AcquireRequest{ModelID: ptARN, InputTokens: 100, MaxOutputTokens: 100})
	if err != nil || !d.Granted {
		t.Fatalf("Acquire on a throughput under a money budget: %+v, %v", d, err)
	}
}

// fullPTFirst returns a broker with route pt-first over an in-service
// throughput (pt) then on-demand (odt, concurrency 1), both full: fill
// holds the throughput's capacity, held the on-demand slot.
func fullPTFirst(t *testing.T) (b *broker.Broker, src *ptSource, pt, odt broker.Target, fill, held broker.Decision) {
	t.Helper()
	od := broker.Spec{Key: broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: sonnet45}, Quota: broker.Limits{Concurrency: 1}, Source: "test"}
	b = bubbleBroker(t, ptSpec(1000), od)
	ctx := context.Background()
	pt, _ = broker.NewTarget(ptARN, "us-east-1")
	odt, _ = broker.NewTarget(sonnet45, "us-east-1")
	if err := b.SetRoutes([]broker.Route{{Name: "pt-first", Model: sonnet45, Targets: []broker.Target{pt, odt}}}); err != nil {
		t.Fatal(err)
	}
	src = &ptSource{}
	src.set("InService", true)
	if err := b.Refresh(ctx, src); err != nil {
		t.Fatal(err)
	}
	fill, err := b.Acquire(ctx, broker.AcquireRequest{ModelID: ptARN, InputTokens: 900, MaxOutputTokens: 100})
	if err != nil || !fill.Granted {
		t.Fatalf("fill the throughput: %+v, %v", fill, err)
	}
	held, err = b.Acquire(ctx, broker.AcquireRequest{ModelID: sonnet45, MaxOutputTokens: 100})
	if err != nil || !held.Granted {
		t.Fatalf("hold on-demand: %+v, %v", held, err)
	}
	return b, src, pt, odt, fill, held
}

// TestProvisionedRetiredRouteWaiterWaitsOnOthers: a route caller waiting
// on every target when the throughput goes keeps waiting on the others,
// and is granted on the first that frees; nothing is left queued.
func TestProvisionedRetiredRouteWaiterWaitsOnOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, src, _, odt, _, held := fullPTFirst(t)
		ctx := context.Background()
		type result struct {
			d   broker.Decision
			err error
		}
		got := make(chan result, 1)
		go func() {
			d, err := b.Acquire(ctx, broker.AcquireRequest{Route: "pt-first", InputTokens: 10, MaxOutputTokens: 10, Wait: time.Minute})
			got <- result{d, err}
		}()
		synctest.Wait()
		if q := routeInfo(t, b, "pt-first").Queued; len(q) != 2 || q[0] != 1 || q[1] != 1 {
			t.Fatalf("queued %v, want the caller on both targets", q)
		}
		src.set("", true)
		if err := b.Refresh(ctx, src); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		select {
		case r := <-got:
			t.Fatalf("the route caller ended when one target went: %+v, %v", r.d, r.err)
		default:
		}
		if _, err := b.Complete(ctx, held.Lease.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 1, OutputTokens: 1}); err != nil {
			t.Fatal(err)
		}
		r := <-got
		if r.err != nil || !r.d.Granted || r.d.Route.Target != odt {
			t.Fatalf("route caller: %+v, %v; want granted on %v", r.d.Route, r.err, odt)
		}
		if w := waiters(t, b)["us-east-1"]; w != 0 {
			t.Fatalf("%d waiters left", w)
		}
	})
}

// TestProvisionedReturnRejoinsRouteWaiter: a route caller waiting while a
// throughput is retired waits on the route as it is now: it leaves the
// throughput, and joins it again when it is back in service, to be granted
// there while the other target is still full.
func TestProvisionedReturnRejoinsRouteWaiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, src, pt, _, fill, _ := fullPTFirst(t)
		ctx := context.Background()
		type result struct {
			d   broker.Decision
			err error
		}
		got := make(chan result, 1)
		go func() {
			d, err := b.Acquire(ctx, broker.AcquireRequest{Route: "pt-first", InputTokens: 10, MaxOutputTokens: 10, Wait: time.Hour})
			got <- result{d, err}
		}()
		synctest.Wait()
		src.set("", true) // gone
		if err := b.Refresh(ctx, src); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if q := routeInfo(t, b, "pt-first").Queued; len(q) != 1 || q[0] != 1 {
			t.Fatalf("queued %v with the throughput gone, want the caller on the one target left", q)
		}
		// The throughput's lease settles small, so it has room once back.
		if _, err := b.Complete(ctx, fill.Lease.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 1, OutputTokens: 1}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		select {
		case r := <-got:
			t.Fatalf("granted while the throughput was retired: %+v, %v", r.d.Route, r.err)
		default:
		}
		src.set("InService", true)
		if err := b.Refresh(ctx, src); err != nil {
			t.Fatal(err)
		}
		r := <-got
		if r.err != nil || !r.d.Granted || r.d.Route.Target != pt {
			t.Fatalf("route caller once the throughput is back: %+v, %v; want granted on %v", r.d.Route, r.err, pt)
		}
		if w := waiters(t, b)["us-east-1"]; w != 0 {
			t.Fatalf("%d waiters left", w)
		}
	})
}
