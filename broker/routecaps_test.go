package broker_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// routeCapCaps holds client "team" to 5 requests a minute on route
// sonnet-us, and to nothing else.
func routeCapCaps() broker.Caps {
	return capsOf("team", broker.ClientCaps{Routes: map[string]broker.CapLimits{"sonnet-us": {RPM: 5}}})
}

// routeCapSpecs are the three targets of sonnet-us, 3 RPM each, so a
// route's grants spread over them, and a Haiku budget for direct calls
// and a second route.
func routeCapSpecs() []broker.Spec {
	return append(geoSpecs(broker.Limits{RPM: 3}), spec(haiku3, broker.Limits{RPM: 100}))
}

func routeCapRoutes(t testing.TB) []broker.Route {
	t.Helper()
	h, err := broker.NewTarget(haiku3, "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	return []broker.Route{geoRoute(t, "sonnet-us"), {Name: "haiku", Targets: []broker.Target{h}}}
}

// routeCapBroker is a broker in t's bubble with routeCapSpecs, the routes
// of routeCapRoutes and the caps of routeCapCaps.
func routeCapBroker(t *testing.T) *broker.Broker {
	t.Helper()
	b := bubbleBrokerWith(t, broker.Config{Margin: 1}, routeCapSpecs()...)
	if err := b.SetRoutes(routeCapRoutes(t)); err != nil {
		t.Fatal(err)
	}
	if err := b.SetCaps(routeCapCaps()); err != nil {
		t.Fatal(err)
	}
	return b
}

func routeCap(t testing.TB, b *broker.Broker, client, route string) broker.CapUsage {
	t.Helper()
	for _, c := range b.Spend().Caps {
		if c.Client == client && c.Route == route {
			return c
		}
	}
	t.Fatalf("no cap of %q on route %q in %+v", client, route, b.Spend().Caps)
	return broker.CapUsage{}
}

// TestRouteCapHoldsAcrossTargets: a client's cap on a route counts its
// grants on every target of the route; once it is reached the client is
// refused on the route (LIMIT_CLIENT_CAP naming the route's cap, counted
// once however many targets were tried) while targets still have room,
// and its waiter on the route is granted on no target until the cap's
// minute frees. Other clients on the route, the same client's direct
// calls (even on a target's budget) and its calls on another route are
// not held back.
func TestRouteCapHoldsAcrossTargets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := routeCapBroker(t)
		ctx := context.Background()
		start := time.Now()
		req := broker.AcquireRequest{Route: "sonnet-us", Client: "team", MaxOutputTokens: 10}
		var regions []string
		for range 5 {
			d, err := b.Acquire(ctx, req)
			if err != nil || !d.Granted {
				t.Fatalf("grant under the route cap: %+v %v", d, err)
			}
			regions = append(regions, d.Route.Target.Key.Region)
		}
		if want := "us-east-1 us-east-1 us-east-1 us-east-2 us-east-2"; strings.Join(regions, " ") != want {
			t.Fatalf("grants went to %v, want %v", regions, want)
		}
		d, err := b.Acquire(ctx, req)
		if err != nil || d.Granted || d.Blocked != broker.LimitClientCap ||
			!strings.Contains(d.Cap, `the RPM cap 5 of client "team" on route sonnet-us`) || d.RetryAfter < time.Minute || d.RetryAfter > time.Minute+time.Second {
			t.Fatalf("over the route cap with room on two targets: %+v %v", d, err)
		}
		if c := routeCap(t, b, "team", "sonnet-us"); c.Requests != 5 || c.Refused != 1 || c.Model != "" || c.Limits.RPM != 5 {
			t.Fatalf("route cap in the report: %+v", c)
		}
		// Not held back: another client on the route, the client calling
		// the route's last target directly, and the client's other route.
		for _, r := range []broker.AcquireRequest{
			{Route: "sonnet-us", Client: "other", MaxOutputTokens: 10},
			{ModelID: "us." + sonnet45, Region: "us-west-2", Client: "team", MaxOutputTokens: 10},
			{Route: "haiku", Client: "team", MaxOutputTokens: 10},
			{ModelID: haiku3, Client: "team", MaxOutputTokens: 10},
		} {
			if d, err := b.Acquire(ctx, r); err != nil || !d.Granted {
				t.Fatalf("%+v held back by another route's cap: %+v %v", r, d, err)
			}
		}
		// us-west-2 has one place left: the client's route waiter must not
		// take it while the cap is full.
		req.Wait = 2 * time.Minute
		ch := goAcquire(b, ctx, req)
		synctest.Wait()
		select {
		case r := <-ch:
			t.Fatalf("route waiter granted over its cap: %+v %v", r.d, r.err)
		default:
		}
		if ri := routeInfo(t, b, "sonnet-us"); fmt.Sprint(ri.Queued) != "[1 1 1]" {
			t.Fatalf("the capped waiter waits on %v, want every target", ri.Queued)
		}
		r := <-ch
		if w := time.Since(start); r.err != nil || !r.d.Granted || w < time.Minute || w > time.Minute+time.Second {
			t.Fatalf("route waiter: %+v %v after %v, want granted when the cap's minute slid", r.d, r.err, time.Since(start))
		}
		for region, n := range waiters(t, b) {
			if n != 0 {
				t.Fatalf("ghost waiter on %s: %d", region, n)
			}
		}
	})
}

// TestRouteCapUnderLoad: callers of one client, each acquiring on a route
// and settling, never have more grants in any minute than the route cap,
// though the targets together allow more, and the grants spread over the
// targets.
func TestRouteCapUnderLoad(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := routeCapBroker(t)
		ctx := context.Background()
		start := time.Now()
		var mu sync.Mutex
		var grants []time.Duration
		targets := map[string]int{}
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for time.Since(start) < 4*time.Minute {
					d, err := b.Acquire(ctx, broker.AcquireRequest{Route: "sonnet-us", Client: "team", MaxOutputTokens: 10, Wait: time.Minute})
					if err != nil {
						t.Error(err)
						return
					}
					if !d.Granted {
						continue
					}
					mu.Lock()
					grants = append(grants, time.Since(start))
					targets[d.Route.Target.Key.Region]++
					mu.Unlock()
					time.Sleep(time.Second) // the call
					if _, err := b.Complete(ctx, d.Lease.ID, broker.OutcomeSuccess, broker.Usage{OutputTokens: 5}); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		slices.Sort(grants)
		for i, g := range grants {
			n := 0
			for _, h := range grants[i:] {
				if h-g < time.Minute {
					n++
				}
			}
			if n > 5 {
				t.Fatalf("%d grants in the minute from %v, over the route cap of 5: %v", n, g, grants)
			}
		}
		if len(grants) < 15 || len(targets) < 2 {
			t.Fatalf("%d grants on %v: want the cap used each minute, over several targets", len(grants), targets)
		}
	})
}

// TestRouteCapSurvivesRestart: the grants through a route are in the
// route cap's windows after a restart: the minute from the lease records,
// the day from the client usage; a cap on a route not in service is
// refused.
func TestRouteCapSurvivesRestart(t *testing.T) {
	e := newEnv(t)
	e.cfg.Caps = capsOf("team", broker.ClientCaps{Routes: map[string]broker.CapLimits{"sonnet-us": {RPM: 5, TPD: 1_000_000}}})
	e.open()
	if err := e.b.SetSpecs(context.Background(), routeCapSpecs()); err != nil {
		t.Fatal(err)
	}
	if err := e.b.SetRoutes(routeCapRoutes(t)); err != nil {
		t.Fatal(err)
	}
	req := broker.AcquireRequest{Route: "sonnet-us", Client: "team", MaxOutputTokens: 10}
	var charged int64
	for range 4 {
		d, err := e.b.Acquire(context.Background(), req)
		if err != nil || !d.Granted {
			t.Fatal(d, err)
		}
		charged += d.Lease.Reserved
	}
	e.b.Close()
	e.open()
	if err := e.b.SetRoutes(routeCapRoutes(t)); err != nil {
		t.Fatal(err)
	}
	if c := routeCap(t, e.b, "team", "sonnet-us"); c.Requests != 4 || c.Tokens != charged || c.DayTokens != charged {
		t.Fatalf("after the restart the route cap holds %+v, want 4 requests and %d tokens in the minute and the day", c, charged)
	}
	if _, err := e.b.Acquire(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if d, err := e.b.Acquire(context.Background(), req); err != nil || d.Granted || d.Blocked != broker.LimitClientCap {
		t.Fatalf("sixth grant in the minute across a restart: %+v %v", d, err)
	}
	bad := capsOf("team", broker.ClientCaps{Routes: map[string]broker.CapLimits{"sonnet-eu": {RPM: 1}}})
	if err := e.b.SetCaps(bad); broker.KindOf(err) != broker.KindInvalid || !strings.Contains(err.Error(), `clients.team.caps.routes.sonnet-eu: no route "sonnet-eu"`) {
		t.Fatalf("cap on an unknown route: %v", err)
	}
	if err := e.b.SetRoutes(routeCapRoutes(t)[1:]); broker.KindOf(err) != broker.KindInvalid || !strings.Contains(err.Error(), `route sonnet-us is gone, and client "team" has a cap on it`) {
		t.Fatalf("taking a capped route out of service: %v", err)
	}
}

// TestRouteCapNeverFits: a reservation larger than a route cap on its own
// is invalid at once, naming the route's cap.
func TestRouteCapNeverFits(t *testing.T) {
	e := newEnv(t, routeCapSpecs()...)
	if err := e.b.SetRoutes(routeCapRoutes(t)); err != nil {
		t.Fatal(err)
	}
	if err := e.b.SetCaps(capsOf("team", broker.ClientCaps{Routes: map[string]broker.CapLimits{"sonnet-us": {TPM: 1000}}})); err != nil {
		t.Fatal(err)
	}
	_, err := e.b.Acquire(context.Background(), broker.AcquireRequest{Route: "sonnet-us", Client: "team", InputTokens: 2000, MaxOutputTokens: 10})
	if broker.KindOf(err) != broker.KindInvalid || !strings.Contains(err.Error(), `exceeds the TPM cap 1000 of client "team" on route sonnet-us`) {
		t.Fatalf("a reservation over the route cap: %v", err)
	}
	// The same call naming the model is not held to the route's cap.
	if d, err := e.b.Acquire(context.Background(), broker.AcquireRequest{ModelID: "us." + sonnet45, Region: "us-east-1", Client: "team", InputTokens: 2000, MaxOutputTokens: 10}); err != nil || !d.Granted {
		t.Fatalf("direct call: %+v %v", d, err)
	}
}
