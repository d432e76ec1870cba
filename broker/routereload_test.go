package broker_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/routefile"
)

// usRoute is a route of Sonnet 4.5's US profile in regions, in order.
func usRoute(t testing.TB, name string, regions ...string) broker.Route {
	t.Helper()
	r := broker.Route{Name: name}
	for _, region := range regions {
		tg, err := broker.NewTarget("us."+sonnet45, region)
		if err != nil {
			t.Fatal(err)
		}
		r.Targets = append(r.Targets, tg)
	}
	return r
}

func holdOn(t *testing.T, b *broker.Broker, region string) broker.Lease {
	t.Helper()
	d, err := b.Acquire(context.Background(), broker.AcquireRequest{ModelID: "us." + sonnet45, Region: region, MaxOutputTokens: 10})
	if err != nil || !d.Granted {
		t.Fatalf("hold %s: %+v %v", region, d, err)
	}
	return d.Lease
}

func pending(ch <-chan result) bool {
	select {
	case r := <-ch:
		panic(fmt.Sprintf("answered: %+v %v", r.d, r.err))
	default:
		return true
	}
}

// TestReloadedRouteMovesItsWaiters: callers waiting on a route that a
// reload changes wait on the new route at once: they leave the target it
// dropped (capacity freed there grants them nothing), keep their place on
// the target it kept (ahead of a caller that came after them), and join
// the one it added; an unchanged route keeps its counters.
func TestReloadedRouteMovesItsWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := bubbleBroker(t, geoSpecs(broker.Limits{Concurrency: 1})...)
		ctx := context.Background()
		other := usRoute(t, "other", "us-west-2")
		if err := b.SetRoutes([]broker.Route{usRoute(t, "r", "us-east-1", "us-east-2"), other}); err != nil {
			t.Fatal(err)
		}
		d, err := b.Acquire(ctx, broker.AcquireRequest{Route: "other", MaxOutputTokens: 10})
		if err != nil || !d.Granted {
			t.Fatalf("%+v %v", d, err)
		}
		held := map[string]broker.Lease{"us-west-2": d.Lease}
		for _, region := range []string{"us-east-1", "us-east-2"} {
			held[region] = holdOn(t, b, region)
		}
		req := broker.AcquireRequest{Route: "r", MaxOutputTokens: 10, Wait: time.Minute}
		w1 := goAcquire(b, ctx, req)
		synctest.Wait()
		w2 := goAcquire(b, ctx, req)
		synctest.Wait()
		// A plain caller on us-east-2, after both route callers.
		pctx, cancelP := context.WithCancel(ctx)
		defer cancelP()
		plain := goAcquire(b, pctx, broker.AcquireRequest{ModelID: "us." + sonnet45, Region: "us-east-2", MaxOutputTokens: 10, Wait: time.Minute})
		synctest.Wait()
		if q := routeInfo(t, b, "r").Queued; fmt.Sprint(q) != "[2 2]" {
			t.Fatalf("before the reload the route's callers wait on %v", q)
		}

		if err := b.SetRoutes([]broker.Route{usRoute(t, "r", "us-west-2", "us-east-2"), other}); err != nil {
			t.Fatal(err)
		}
		if q := routeInfo(t, b, "r").Queued; fmt.Sprint(q) != "[2 2]" {
			t.Fatalf("after the reload the route's callers wait on %v, want both new targets", q)
		}
		if w := waiters(t, b); w["us-east-1"] != 0 || w["us-east-2"] != 3 || w["us-west-2"] != 2 {
			t.Fatalf("queues after the reload: %v", w)
		}
		if c := routeInfo(t, b, "other").Counters[0]; c.Room != 1 {
			t.Fatalf("the unchanged route's counters: %+v", c)
		}
		// us-east-1 is no longer the route's: freeing it grants nobody.
		if _, err := b.Complete(ctx, held["us-east-1"].ID, broker.OutcomeSuccess, broker.Usage{}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		pending(w1)
		pending(w2)
		// The added target serves the first caller...
		if _, err := b.Complete(ctx, held["us-west-2"].ID, broker.OutcomeSuccess, broker.Usage{}); err != nil {
			t.Fatal(err)
		}
		r := <-w1
		if r.err != nil || !r.d.Granted || r.d.Route.Target.Key.Region != "us-west-2" || r.d.Route.Index != 0 || r.d.Route.Reason != broker.ReasonRoom {
			t.Fatalf("first caller: %+v %v", r.d, r.err)
		}
		// ...and the kept one the second, ahead of the plain caller who
		// came after it.
		if _, err := b.Complete(ctx, held["us-east-2"].ID, broker.OutcomeSuccess, broker.Usage{}); err != nil {
			t.Fatal(err)
		}
		r = <-w2
		if r.err != nil || !r.d.Granted || r.d.Route.Target.Key.Region != "us-east-2" || r.d.Route.Index != 1 || r.d.Route.Reason != broker.ReasonSpill {
			t.Fatalf("second caller: %+v %v", r.d, r.err)
		}
		pending(plain)
		ri := routeInfo(t, b, "r")
		if ri.Counters[0].Room != 1 || ri.Counters[0].Waited != 1 || ri.Counters[1].Spill != 1 || fmt.Sprint(ri.Queued) != "[0 0]" {
			t.Fatalf("route after the grants: %+v", ri)
		}
		if w := waiters(t, b); w["us-east-1"] != 0 || w["us-east-2"] != 1 || w["us-west-2"] != 0 {
			t.Fatalf("queues after the grants: %v, want only the plain caller", w)
		}
	})
}

// TestRemovedRouteAnswersItsWaiters: a caller waiting on a route that a
// reload takes out of service is answered at once with NotFound, and
// leaves no waiter behind.
func TestRemovedRouteAnswersItsWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := concurrencyRouteBroker(t)
		ctx := context.Background()
		for _, region := range routeRegions {
			holdOn(t, b, region)
		}
		start := time.Now()
		w := goAcquire(b, ctx, broker.AcquireRequest{Route: "sonnet-us", MaxOutputTokens: 10, Wait: time.Minute})
		synctest.Wait()
		time.Sleep(time.Second)
		if err := b.SetRoutes([]broker.Route{usRoute(t, "new", "us-east-1")}); err != nil {
			t.Fatal(err)
		}
		r := <-w
		if broker.KindOf(r.err) != broker.KindNotFound || !strings.Contains(r.err.Error(), "route sonnet-us was taken out of service while the call waited") {
			t.Fatalf("caller of the removed route: %+v %v", r.d, r.err)
		}
		if time.Since(start) != time.Second {
			t.Fatalf("answered after %v, want at the reload", time.Since(start))
		}
		for region, n := range waiters(t, b) {
			if n != 0 {
				t.Fatalf("%d ghost waiters on %s", n, region)
			}
		}
	})
}

// TestReloadEndsAffinityGraceOfDroppedTarget: a caller held on its
// affinity key's target (the grace) whose target the route drops waits on
// the route's other targets at once, and the key no longer prefers it.
func TestReloadEndsAffinityGraceOfDroppedTarget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := concurrencyRouteBroker(t)
		ctx := context.Background()
		d, err := b.Acquire(ctx, broker.AcquireRequest{Route: "sonnet-us", AffinityKey: "conv", MaxOutputTokens: 10})
		if err != nil || d.Route.Target.Key.Region != "us-east-1" {
			t.Fatalf("%+v %v", d, err)
		}
		held := map[string]broker.Lease{"us-east-1": d.Lease}
		for _, region := range routeRegions[1:] {
			held[region] = holdOn(t, b, region)
		}
		w := goAcquire(b, ctx, broker.AcquireRequest{Route: "sonnet-us", AffinityKey: "conv", MaxOutputTokens: 10, Wait: time.Minute})
		synctest.Wait()
		if q := routeInfo(t, b, "sonnet-us").Queued; fmt.Sprint(q) != "[1 0 0]" {
			t.Fatalf("in the grace the caller waits on %v", q)
		}
		if err := b.SetRoutes([]broker.Route{usRoute(t, "sonnet-us", "us-east-2", "us-west-2")}); err != nil {
			t.Fatal(err)
		}
		if q := routeInfo(t, b, "sonnet-us").Queued; fmt.Sprint(q) != "[1 1]" {
			t.Fatalf("after its target left the route the caller waits on %v, want every target", q)
		}
		start := time.Now()
		b.Complete(ctx, held["us-west-2"].ID, broker.OutcomeSuccess, broker.Usage{})
		r := <-w
		if r.err != nil || r.d.Route.Target.Key.Region != "us-west-2" || r.d.Route.Reason != broker.ReasonSpill || time.Since(start) != 0 {
			t.Fatalf("granted %+v %v after %v", r.d, r.err, time.Since(start))
		}
	})
}

// TestAffinityToTargetLeftRouteIsIgnored: a key last granted on a target
// the reloaded route no longer has is treated as new.
func TestAffinityToTargetLeftRouteIsIgnored(t *testing.T) {
	e := newEnv(t, geoSpecs(broker.Limits{RPM: 100})...)
	if err := e.b.SetRoutes([]broker.Route{geoRoute(t, "sonnet-us")}); err != nil {
		t.Fatal(err)
	}
	acq := func() broker.Decision {
		t.Helper()
		d, err := e.b.Acquire(context.Background(), broker.AcquireRequest{Route: "sonnet-us", AffinityKey: "conv", MaxOutputTokens: 10})
		if err != nil || !d.Granted {
			t.Fatalf("%+v %v", d, err)
		}
		return d
	}
	if d := acq(); d.Route.Target.Key.Region != "us-east-1" {
		t.Fatalf("%+v", d.Route)
	}
	if err := e.b.SetRoutes([]broker.Route{usRoute(t, "sonnet-us", "us-west-2", "us-east-2")}); err != nil {
		t.Fatal(err)
	}
	if d := acq(); d.Route.Target.Key.Region != "us-west-2" || d.Route.Reason != broker.ReasonRoom {
		t.Fatalf("after its target left the route: %+v", d.Route)
	}
	if d := acq(); d.Route.Target.Key.Region != "us-west-2" || d.Route.Reason != broker.ReasonAffinity {
		t.Fatalf("then: %+v", d.Route)
	}
}

// discovering is a quota source that reports the cross-region budgets of
// Sonnet 4.5 in the Regions it is set to, as discovery does (with the AWS
// quota behind each).
type discovering struct{ regions []string }

func (d *discovering) Discover(context.Context) (broker.Discovery, error) {
	var out broker.Discovery
	for _, r := range d.regions {
		out.Specs = append(out.Specs, broker.Spec{Key: broker.Key{Region: r, Scope: broker.ScopeCrossRegion, Model: sonnet45},
			Quota: broker.Limits{TPM: 100_000}, Source: "test-discovery",
			Quotas: []broker.QuotaRef{{Limit: "tpm", Code: "L-TEST", Name: "test TPM", Applied: 100_000}}})
	}
	return out, nil
}

func targetRegions(t testing.TB, b *broker.Broker, route string) string {
	t.Helper()
	var out []string
	for _, tg := range routeInfo(t, b, route).Targets {
		out = append(out, tg.Key.Region)
	}
	return strings.Join(out, " ")
}

// TestRefreshDerivesRoutesAgain: a derived route follows discovery: a
// Region whose budget discovery no longer reports leaves it, and comes
// back when reported again; a budget an operator configured is never
// gone. When a refresh would leave a derived route with no target, every
// route stays as it was (nothing half-applied) and the discovery status
// says why; the refresh itself stands.
func TestRefreshDerivesRoutesAgain(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// us-east-2 is the operator's, from a budgets file: no AWS quota.
	if err := e.b.SetSpecs(ctx, []broker.Spec{{Key: broker.Key{Region: "us-east-2", Scope: broker.ScopeCrossRegion, Model: sonnet45},
		Quota: broker.Limits{TPM: 100_000}, Source: "budgets-file"}}); err != nil {
		t.Fatal(err)
	}
	src := &discovering{regions: []string{"us-east-1", "us-west-2"}}
	if err := e.b.Refresh(ctx, src); err != nil {
		t.Fatal(err)
	}
	f, err := routefile.Parse("routes.json", []byte(`{"routes": [
  {"name": "all", "model": "`+sonnet45+`", "geography": "us"},
  {"name": "pair", "model": "`+sonnet45+`", "geography": "us", "regions": ["us-east-1", "us-west-2"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.b.UseRoutes(f); err != nil {
		t.Fatal(err)
	}
	check := func(step, all, pair string) {
		t.Helper()
		if got := targetRegions(t, e.b, "all"); got != all {
			t.Errorf("%s: route all on %q, want %q", step, got, all)
		}
		if got := targetRegions(t, e.b, "pair"); got != pair {
			t.Errorf("%s: route pair on %q, want %q", step, got, pair)
		}
	}
	check("loaded", "us-east-1 us-east-2 us-west-2", "us-east-1 us-west-2")

	src.regions = []string{"us-east-1"}
	if err := e.b.Refresh(ctx, src); err != nil {
		t.Fatal(err)
	}
	check("us-west-2 gone", "us-east-1 us-east-2", "us-east-1")
	if n := e.b.DiscoveryStatus().Notes; len(n) != 0 {
		t.Fatalf("notes: %q", n)
	}
	// The budget itself stays, at its last spec.
	if len(e.b.Budgets()) != 3 {
		t.Fatalf("%d budgets", len(e.b.Budgets()))
	}

	src.regions = nil
	if err := e.b.Refresh(ctx, src); err != nil {
		t.Fatalf("the refresh fails with its routes: %v", err)
	}
	check("both gone: pair has no target", "us-east-1 us-east-2", "us-east-1")
	st := e.b.DiscoveryStatus()
	if len(st.Notes) != 1 || !strings.Contains(st.Notes[0], "routes not derived again after the quota refresh; the routes in service stay") ||
		!strings.Contains(st.Notes[0], "routes.json:3: routes[1]") || st.LastError != "" {
		t.Fatalf("status after the refresh: %+v", st)
	}
	// A reload of the same file fails the same way, and changes nothing.
	if err := e.b.UseRoutes(f); err == nil || !strings.Contains(err.Error(), "routes.json:3: routes[1]") {
		t.Fatalf("reload with pair empty: %v", err)
	}
	check("reload refused", "us-east-1 us-east-2", "us-east-1")

	src.regions = []string{"us-west-2", "us-east-1"}
	if err := e.b.Refresh(ctx, src); err != nil {
		t.Fatal(err)
	}
	check("both back", "us-east-1 us-east-2 us-west-2", "us-east-1 us-west-2")
	if n := e.b.DiscoveryStatus().Notes; len(n) != 0 {
		t.Fatalf("notes once the routes follow again: %q", n)
	}
}

// TestRouteReloadsLeaveNoGhosts interleaves route waiters, cancellations,
// settlements and the passing of time with reloads that reorder, shrink,
// grow and remove the route, and checks after each step: every grant is
// on a target the route has now, none twice, none beyond a target's
// limit; callers wait on the route's targets now, and on no other budget;
// callers of a removed route are answered NotFound.
func TestRouteReloadsLeaveNoGhosts(t *testing.T) {
	for _, keys := range []bool{false, true} {
		t.Run(fmt.Sprint("keys=", keys), func(t *testing.T) { routeReloads(t, keys) })
	}
}

func routeReloads(t *testing.T, keys bool) {
	synctest.Test(t, func(t *testing.T) {
		const limit = 2
		regions := []string{"us-east-1", "us-east-2", "us-west-1", "us-west-2"}
		var specs []broker.Spec
		for _, r := range regions {
			specs = append(specs, broker.Spec{Key: broker.Key{Region: r, Scope: broker.ScopeCrossRegion, Model: sonnet45},
				Quota: broker.Limits{Concurrency: limit}, Source: "test"})
		}
		b := bubbleBroker(t, specs...)
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(3, 4))
		current := regions[:2] // the route's targets; nil: no route
		set := func() {
			t.Helper()
			var rs []broker.Route
			if current != nil {
				rs = append(rs, usRoute(t, "r", current...))
			}
			if err := b.SetRoutes(rs); err != nil {
				t.Fatal(err)
			}
		}
		set()
		type caller struct {
			cancel context.CancelFunc
			ch     <-chan result
		}
		var waiting []caller
		var held []broker.Lease
		granted := map[string]bool{}
		removed := 0
		check := func(step int) {
			synctest.Wait()
			still := waiting[:0]
			for _, c := range waiting {
				select {
				case r := <-c.ch:
					switch {
					case r.err == nil && r.d.Granted:
						if granted[r.d.Lease.ID] {
							t.Fatalf("step %d: lease %s granted twice", step, r.d.Lease.ID)
						}
						if !slices.Contains(current, r.d.Lease.Key.Region) {
							t.Fatalf("step %d: granted on %s, not in the route %v", step, r.d.Lease.Key.Region, current)
						}
						granted[r.d.Lease.ID] = true
						held = append(held, r.d.Lease)
					case errors.Is(r.err, context.Canceled):
					case r.err != nil:
						if broker.KindOf(r.err) != broker.KindNotFound || current != nil {
							t.Fatalf("step %d: %v with route %v", step, r.err, current)
						}
						removed++
					}
					c.cancel()
				default:
					still = append(still, c)
				}
			}
			waiting = still
			checkPerRegion(t, step, held, limit)
			if current == nil && len(waiting) > 0 {
				t.Fatalf("step %d: %d callers still wait on a removed route", step, len(waiting))
			}
			for region, n := range waiters(t, b) {
				in := slices.Contains(current, region)
				if (!in && n != 0) || n > int64(len(waiting)) || (in && !keys && n != int64(len(waiting))) {
					t.Fatalf("step %d: %s queue holds %d; %d callers wait on %v", step, region, n, len(waiting), current)
				}
			}
		}
		for step := range 800 {
			switch rng.IntN(7) {
			case 0, 1:
				if current == nil {
					continue
				}
				cctx, cancel := context.WithCancel(ctx)
				key := ""
				if keys {
					key = fmt.Sprint("conv-", rng.IntN(8))
				}
				ch := goAcquire(b, cctx, broker.AcquireRequest{Route: "r", Client: fmt.Sprint("c", rng.IntN(4)), AffinityKey: key,
					MaxOutputTokens: 10, Wait: time.Duration(1+rng.IntN(20)) * time.Second})
				waiting = append(waiting, caller{cancel, ch})
			case 2:
				if len(waiting) > 0 {
					waiting[rng.IntN(len(waiting))].cancel()
				}
			case 3:
				if len(held) > 0 {
					i := rng.IntN(len(held))
					if _, err := b.Complete(ctx, held[i].ID, broker.OutcomeSuccess, broker.Usage{}); err != nil {
						t.Fatal(err)
					}
					held = append(held[:i], held[i+1:]...)
				}
			case 4:
				time.Sleep(time.Duration(rng.IntN(3000)) * time.Millisecond)
			case 5, 6:
				if rng.IntN(8) == 0 {
					current = nil
				} else {
					perm := rng.Perm(len(regions))[:1+rng.IntN(len(regions))]
					current = nil
					for _, i := range perm {
						current = append(current, regions[i])
					}
				}
				set()
			}
			check(step)
		}
		for _, c := range waiting {
			c.cancel()
		}
		waiting = waiting[:0]
		check(-1)
		if len(granted) < 50 || removed == 0 {
			t.Fatalf("%d grants, %d callers of a removed route: the test did not exercise the reloads", len(granted), removed)
		}
	})
}
