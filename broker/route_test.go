package broker_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

var routeRegions = []string{"us-east-1", "us-east-2", "us-west-2"}

// geoSpecs are budgets of Sonnet 4.5's US profile in each source Region.
func geoSpecs(l broker.Limits) []broker.Spec {
	var out []broker.Spec
	for _, r := range routeRegions {
		out = append(out, broker.Spec{Key: broker.Key{Region: r, Scope: broker.ScopeCrossRegion, Model: sonnet45}, Quota: l, Source: "test"})
	}
	return out
}

// concurrencyRouteBroker is a broker in t's bubble with geoSpecs of one
// concurrent call each and their route sonnet-us.
func concurrencyRouteBroker(t *testing.T) *broker.Broker {
	t.Helper()
	b := bubbleBroker(t, geoSpecs(broker.Limits{Concurrency: 1})...)
	if err := b.SetRoutes([]broker.Route{geoRoute(t, "sonnet-us")}); err != nil {
		t.Fatal(err)
	}
	return b
}

func geoRoute(t testing.TB, name string) broker.Route {
	t.Helper()
	r := broker.Route{Name: name}
	for _, region := range routeRegions {
		tg, err := broker.NewTarget("us."+sonnet45, region)
		if err != nil {
			t.Fatal(err)
		}
		r.Targets = append(r.Targets, tg)
	}
	return r
}

func routeInfo(t testing.TB, c interface{ Routes() []broker.RouteInfo }, name string) broker.RouteInfo {
	t.Helper()
	for _, r := range c.Routes() {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no route %q", name)
	return broker.RouteInfo{}
}

func waiters(t testing.TB, b *broker.Broker) map[string]int64 {
	t.Helper()
	rep, _ := b.Report(broker.ReportFilter{})
	out := map[string]int64{}
	for _, r := range rep {
		out[r.Spec.Key.Region] += r.Waiters
	}
	return out
}

func TestRouteGrantsOnFirstTargetWithRoom(t *testing.T) {
	e := newEnv(t, geoSpecs(broker.Limits{RPM: 2})...)
	if err := e.b.SetRoutes([]broker.Route{geoRoute(t, "sonnet-us")}); err != nil {
		t.Fatal(err)
	}
	req := broker.AcquireRequest{Route: "sonnet-us", MaxOutputTokens: 100}
	var got []string
	for range 6 {
		d, err := e.b.Acquire(context.Background(), req)
		if err != nil || !d.Granted {
			t.Fatalf("acquire: %+v %v", d, err)
		}
		if d.Lease.Key != d.Route.Target.Key || d.Route.Target.ModelID != "us."+sonnet45 {
			t.Fatalf("lease on %v, route says %+v", d.Lease.Key, d.Route)
		}
		got = append(got, d.Route.Target.Key.Region+":"+d.Route.Reason.String())
	}
	want := "us-east-1:room us-east-1:room us-east-2:spill us-east-2:spill us-west-2:spill us-west-2:spill"
	if strings.Join(got, " ") != want {
		t.Fatalf("grants went %v, want %v", got, want)
	}
	// Every target is full: the refusal is the earliest retry of all, the
	// first target's (its grants are the oldest).
	e.clock.Advance(time.Second)
	d, err := e.b.Acquire(context.Background(), req)
	if err != nil || d.Granted || d.Blocked != broker.LimitRPM || d.Route.Target.Key.Region != "us-east-1" || d.RetryAfter != 59250*time.Millisecond {
		t.Fatalf("refusal %+v %v, want RPM on us-east-1 after 59.25s", d, err)
	}
	ri := routeInfo(t, e.b, "sonnet-us")
	if ri.Counters[0].Room != 2 || ri.Counters[1].Spill != 2 || ri.Counters[2].Spill != 2 || ri.Refused != 1 {
		t.Fatalf("counters %+v refused %d", ri.Counters, ri.Refused)
	}
	for region, n := range waiters(t, e.b) {
		if n != 0 {
			t.Fatalf("%d waiters left on %s", n, region)
		}
	}
}

func TestRouteAffinityHoldsWhileRoomThenMoves(t *testing.T) {
	e := newEnv(t, geoSpecs(broker.Limits{RPM: 3})...)
	if err := e.b.SetRoutes([]broker.Route{geoRoute(t, "sonnet-us")}); err != nil {
		t.Fatal(err)
	}
	acq := func(key string) broker.Decision {
		t.Helper()
		d, err := e.b.Acquire(context.Background(), broker.AcquireRequest{Route: "sonnet-us", AffinityKey: key, MaxOutputTokens: 100})
		if err != nil || !d.Granted {
			t.Fatalf("acquire for %q: %+v %v", key, d, err)
		}
		return d
	}
	where := func(d broker.Decision) string { return d.Route.Target.Key.Region + ":" + d.Route.Reason.String() }
	// Two plain grants fill most of us-east-1; conversation A starts there.
	acq("")
	acq("")
	if got := where(acq("A")); got != "us-east-1:room" {
		t.Fatalf("A's first call: %s", got)
	}
	// us-east-1 is full: B starts on us-east-2, and stays there.
	if got := where(acq("B")); got != "us-east-2:spill" {
		t.Fatalf("B's first call: %s", got)
	}
	if got := where(acq("B")); got != "us-east-2:affinity" {
		t.Fatalf("B's second call: %s", got)
	}
	// A's target has no room: A moves, and its new target is remembered.
	if got := where(acq("A")); got != "us-east-2:spill" {
		t.Fatalf("A's second call: %s", got)
	}
	if got := where(acq("A")); got != "us-west-2:spill" {
		t.Fatalf("A's third call (us-east-2 full): %s", got)
	}
	e.clock.Advance(61 * time.Second) // every window empties
	if got := where(acq("A")); got != "us-west-2:affinity" {
		t.Fatalf("A after the minute: %s", got)
	}
	if got := where(acq("B")); got != "us-east-2:affinity" {
		t.Fatalf("B after the minute: %s", got)
	}
	// An affinity key expires with the prompt cache it stands for.
	e.clock.Advance(6 * time.Minute)
	if got := where(acq("A")); got != "us-east-1:room" {
		t.Fatalf("A after its key expired: %s", got)
	}
}

func TestRouteAffinityMemoryIsBounded(t *testing.T) {
	e := &env{t: t, clock: newEnv(t).clock, store: newMemStore(), cfg: broker.Config{Margin: 1, AffinityKeys: 2}}
	e.open()
	if err := e.b.SetSpecs(context.Background(), geoSpecs(broker.Limits{RPM: 1000})); err != nil {
		t.Fatal(err)
	}
	r := geoRoute(t, "sonnet-us")
	r.Targets[0], r.Targets[1] = r.Targets[1], r.Targets[0]
	if err := e.b.SetRoutes([]broker.Route{r}); err != nil {
		t.Fatal(err)
	}
	acq := func(key string) broker.Decision {
		d, err := e.b.Acquire(context.Background(), broker.AcquireRequest{Route: "sonnet-us", AffinityKey: key, MaxOutputTokens: 10})
		if err != nil || !d.Granted {
			t.Fatalf("acquire for %q: %+v %v", key, d, err)
		}
		return d
	}
	for _, k := range []string{"a", "b", "c"} {
		acq(k)
	}
	// a was the least recently used of three keys with room for two.
	if got := acq("a").Route.Reason; got != broker.ReasonRoom {
		t.Fatalf("a after eviction: %v, want room", got)
	}
	if got := acq("c").Route.Reason; got != broker.ReasonAffinity {
		t.Fatalf("c: %v, want affinity", got)
	}
	_, err := e.b.Acquire(context.Background(), broker.AcquireRequest{Route: "sonnet-us", AffinityKey: strings.Repeat("k", broker.MaxAffinityKeyLen+1)})
	var be *broker.Error
	if !errors.As(err, &be) || be.Kind != broker.KindInvalid || be.Field != "affinity_key" {
		t.Fatalf("an oversized affinity key: %v", err)
	}
}

func TestRouteThrottleMovesTraffic(t *testing.T) {
	e := newEnv(t, geoSpecs(broker.Limits{RPM: 100, TPM: 100_000})...)
	if err := e.b.SetRoutes([]broker.Route{geoRoute(t, "sonnet-us")}); err != nil {
		t.Fatal(err)
	}
	req := broker.AcquireRequest{Route: "sonnet-us", MaxOutputTokens: 100}
	ctx := context.Background()
	var d broker.Decision
	for range 10 {
		var err error
		if d, err = e.b.Acquire(ctx, req); err != nil || d.Route.Target.Key.Region != "us-east-1" {
			t.Fatalf("%+v %v", d, err)
		}
	}
	// Bedrock throttles us-east-1: its ceiling is cut, its pace owes the
	// throttled call, and the route prefers the others until it recovers.
	e.clock.Advance(time.Millisecond)
	if _, err := e.b.Complete(ctx, d.Lease.ID, broker.OutcomeThrottled, broker.Usage{}); err != nil {
		t.Fatal(err)
	}
	var east1 int
	for range 20 {
		d, err := e.b.Acquire(ctx, req)
		if err != nil || !d.Granted {
			t.Fatalf("%+v %v", d, err)
		}
		if d.Route.Target.Key.Region == "us-east-1" {
			east1++
		}
	}
	if east1 != 0 {
		t.Fatalf("%d of 20 grants on the throttled target right after the throttle", east1)
	}
	// Once its ceiling has climbed back to the static limit (back to the
	// use at the throttle within Recovery, then probing beyond it, which
	// from 10 requests and 5,000 tokens a minute to 100 and 100,000 takes
	// about 7 minutes), the route prefers it
	// again.
	e.clock.Advance(10 * time.Minute)
	if d, err := e.b.Acquire(ctx, req); err != nil || d.Route.Target.Key.Region != "us-east-1" {
		t.Fatalf("after recovery: %+v %v", d, err)
	}
}

// A conversation moves while its target has room only when that target is
// recovering from a throttle (tried after the others); the route counts
// those moves apart from the ones its target's lack of room forced.
func TestRouteCountsMovesForRecovery(t *testing.T) {
	e := newEnv(t, geoSpecs(broker.Limits{RPM: 100, TPM: 100_000})...)
	if err := e.b.SetRoutes([]broker.Route{geoRoute(t, "sonnet-us")}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	acq := func(key, want string) broker.Decision {
		t.Helper()
		d, err := e.b.Acquire(ctx, broker.AcquireRequest{Route: "sonnet-us", AffinityKey: key, MaxOutputTokens: 100})
		if got := d.Route.Target.Key.Region + ":" + d.Route.Reason.String(); err != nil || got != want {
			t.Fatalf("%s: %s %v, want %s", key, got, err, want)
		}
		return d
	}
	recovering := func() int64 {
		t.Helper()
		var n int64
		for _, c := range routeInfo(t, e.b, "sonnet-us").Counters {
			n += c.SpillRecovering
		}
		return n
	}
	// Conversations A and B start on us-east-1 and stay there.
	acq("A", "us-east-1:room")
	acq("B", "us-east-1:room")
	var d broker.Decision
	for range 4 {
		acq("A", "us-east-1:affinity")
		d = acq("B", "us-east-1:affinity")
	}
	e.clock.Advance(time.Millisecond)
	if _, err := e.b.Complete(ctx, d.Lease.ID, broker.OutcomeThrottled, broker.Usage{}); err != nil {
		t.Fatal(err)
	}
	// Right after the cut us-east-1's pace owes the throttled call: it
	// has no room, and A's move is forced.
	acq("A", "us-east-2:spill")
	if n := recovering(); n != 0 {
		t.Fatalf("a move forced by no room counted as for recovery (%d)", n)
	}
	// Once the pace has refilled, us-east-1 has room, but is still
	// climbing back to where it throttled: B moves, counted apart.
	e.clock.Advance(10 * time.Second)
	acq("B", "us-east-2:spill")
	if n := recovering(); n != 1 {
		t.Fatalf("%d moves for recovery, want B's", n)
	}
}

func TestRouteWaitsOnEveryTargetAndLeavesNoGhost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := concurrencyRouteBroker(t)
		ctx := context.Background()
		var held []broker.Decision
		for range 3 {
			d, err := b.Acquire(ctx, broker.AcquireRequest{Route: "sonnet-us", MaxOutputTokens: 10})
			if err != nil || !d.Granted {
				t.Fatalf("%+v %v", d, err)
			}
			held = append(held, d)
		}
		ch := goAcquire(b, ctx, broker.AcquireRequest{Route: "sonnet-us", MaxOutputTokens: 10, Wait: time.Minute})
		synctest.Wait()
		if ri := routeInfo(t, b, "sonnet-us"); fmt.Sprint(ri.Queued) != "[1 1 1]" {
			t.Fatalf("the route waiter waits on %v, want every target", ri.Queued)
		}
		time.Sleep(2 * time.Second)
		// The last target frees first: the waiter is granted there, and
		// leaves the other queues.
		if _, err := b.Complete(ctx, held[2].Lease.ID, broker.OutcomeSuccess, broker.Usage{}); err != nil {
			t.Fatal(err)
		}
		r := <-ch
		if r.err != nil || !r.d.Granted || r.d.Route.Target.Key.Region != "us-west-2" || r.d.Route.Reason != broker.ReasonSpill || r.d.Waited != 2*time.Second {
			t.Fatalf("waiter: %+v %v", r.d, r.err)
		}
		for region, n := range waiters(t, b) {
			if n != 0 {
				t.Fatalf("ghost waiter on %s: %d", region, n)
			}
		}
		ri := routeInfo(t, b, "sonnet-us")
		if ri.Counters[2].Waited != 1 {
			t.Fatalf("counters %+v", ri.Counters)
		}
		// A plain waiter on us-east-1 is served as soon as it frees: no
		// ghost of the route waiter stands ahead of it.
		next := goAcquire(b, ctx, broker.AcquireRequest{ModelID: "us." + sonnet45, Region: "us-east-1", MaxOutputTokens: 10, Wait: time.Minute})
		synctest.Wait()
		b.Complete(ctx, held[0].Lease.ID, broker.OutcomeSuccess, broker.Usage{})
		if r := <-next; !r.d.Granted {
			t.Fatalf("plain waiter: %+v %v", r.d, r.err)
		}
	})
}

// TestRouteCancellationsLeaveNoGhosts cancels, times out and grants many
// route waiters in random order and checks after each step that every
// target's queue holds exactly the route waiters still waiting, that no
// caller is granted twice, and that concurrency never exceeds the limit.
func TestRouteCancellationsLeaveNoGhosts(t *testing.T) {
	// With affinity keys, a caller in its affinity grace waits on one
	// target only: each queue then holds at most the callers waiting.
	for _, keys := range []bool{false, true} {
		t.Run(fmt.Sprint("keys=", keys), func(t *testing.T) { routeCancellations(t, keys) })
	}
}

func routeCancellations(t *testing.T, keys bool) {
	synctest.Test(t, func(t *testing.T) {
		const limit = 2
		b := bubbleBroker(t, geoSpecs(broker.Limits{Concurrency: limit})...)
		if err := b.SetRoutes([]broker.Route{geoRoute(t, "sonnet-us")}); err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(1, 2))
		type caller struct {
			cancel context.CancelFunc
			ch     <-chan result
		}
		var waiting []caller
		var held []broker.Lease
		granted := map[string]bool{}
		check := func(step int) {
			synctest.Wait()
			still := waiting[:0]
			for _, c := range waiting {
				select {
				case r := <-c.ch:
					if r.err == nil && r.d.Granted {
						if granted[r.d.Lease.ID] {
							t.Fatalf("step %d: lease %s granted twice", step, r.d.Lease.ID)
						}
						granted[r.d.Lease.ID] = true
						held = append(held, r.d.Lease)
					}
					c.cancel()
				default:
					still = append(still, c)
				}
			}
			waiting = still
			checkPerRegion(t, step, held, limit)
			ri := routeInfo(t, b, "sonnet-us")
			for i, q := range ri.Queued {
				if q > len(waiting) || (!keys && q != len(waiting)) {
					t.Fatalf("step %d: target %d queues %d route waiters, %d callers wait", step, i, q, len(waiting))
				}
			}
			for region, n := range waiters(t, b) {
				if n > int64(len(waiting)) || (!keys && n != int64(len(waiting))) {
					t.Fatalf("step %d: %s queue holds %d, %d callers wait", step, region, n, len(waiting))
				}
			}
		}
		for step := range 600 {
			switch rng.IntN(5) {
			case 0, 1:
				cctx, cancel := context.WithCancel(ctx)
				key := ""
				if keys {
					key = fmt.Sprint("conv-", rng.IntN(8))
				}
				ch := goAcquire(b, cctx, broker.AcquireRequest{Route: "sonnet-us", Client: fmt.Sprint("c", rng.IntN(4)), AffinityKey: key,
					MaxOutputTokens: 10, Wait: time.Duration(1+rng.IntN(20)) * time.Second})
				waiting = append(waiting, caller{cancel, ch})
			case 2:
				if len(waiting) > 0 {
					i := rng.IntN(len(waiting))
					waiting[i].cancel()
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
			}
			check(step)
		}
		for _, c := range waiting {
			c.cancel()
		}
		waiting = waiting[:0]
		check(-1)
		if len(granted) < 50 {
			t.Fatalf("only %d grants: the test did not exercise the queues", len(granted))
		}
	})
}

// TestRouteAffinityGrace: with every target full, a caller with an
// affinity key waits on its key's target alone for Config.AffinityWait,
// then on all of them.
func TestRouteAffinityGrace(t *testing.T) {
	for _, tc := range []struct {
		name      string
		free      int // the held lease completed at 1 s: 0 is the key's target
		want      string
		wantAfter time.Duration
	}{
		{"the key's target frees within the grace", 0, "us-east-1:affinity", time.Second},
		{"another frees: taken after the grace", 2, "us-west-2:spill", 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := concurrencyRouteBroker(t)
				ctx := context.Background()
				var held []broker.Decision
				for range 3 {
					d, err := b.Acquire(ctx, broker.AcquireRequest{Route: "sonnet-us", AffinityKey: "conv", MaxOutputTokens: 10})
					if err != nil || !d.Granted {
						t.Fatalf("%+v %v", d, err)
					}
					held = append(held, d)
				}
				// conv's last grant was on us-west-2; make it us-east-1's.
				b.Complete(ctx, held[0].Lease.ID, broker.OutcomeSuccess, broker.Usage{})
				d, _ := b.Acquire(ctx, broker.AcquireRequest{Route: "sonnet-us", AffinityKey: "conv", MaxOutputTokens: 10})
				if d.Route.Target.Key.Region != "us-east-1" {
					t.Fatalf("%+v", d)
				}
				held[0] = d
				start := time.Now()
				ch := goAcquire(b, ctx, broker.AcquireRequest{Route: "sonnet-us", AffinityKey: "conv", MaxOutputTokens: 10, Wait: time.Minute})
				synctest.Wait()
				if q := routeInfo(t, b, "sonnet-us").Queued; fmt.Sprint(q) != "[1 0 0]" {
					t.Fatalf("during the grace the caller waits on %v, want its key's target only", q)
				}
				time.Sleep(time.Second)
				b.Complete(ctx, held[tc.free].Lease.ID, broker.OutcomeSuccess, broker.Usage{})
				r := <-ch
				got := r.d.Route.Target.Key.Region + ":" + r.d.Route.Reason.String()
				if r.err != nil || got != tc.want || time.Since(start) != tc.wantAfter {
					t.Fatalf("granted %s after %v (%v), want %s after %v", got, time.Since(start), r.err, tc.want, tc.wantAfter)
				}
				for region, n := range waiters(t, b) {
					if n != 0 {
						t.Fatalf("ghost waiter on %s", region)
					}
				}
			})
		})
	}
}

// A conversation's target that is full now but will serve this caller
// within the affinity grace (it is alone in the queue, held back only by
// the window's slide) is waited for even while another target has room:
// the conversation keeps its prompt cache. One that frees later is left at
// once.
func TestRouteAffinityWaitsForATargetThatFreesSoon(t *testing.T) {
	for _, tc := range []struct {
		name      string
		at        time.Duration // when the caller comes; its target frees at 60.25 s (the grants' 250 ms slot)
		want      string
		wantAfter time.Duration
	}{
		{"it frees within the grace", 57 * time.Second, "us-east-1:affinity", 3250 * time.Millisecond},
		{"it frees later", 50 * time.Second, "us-east-2:spill", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := bubbleBroker(t, geoSpecs(broker.Limits{RPM: 2})...)
				if err := b.SetRoutes([]broker.Route{geoRoute(t, "sonnet-us")}); err != nil {
					t.Fatal(err)
				}
				ctx := context.Background()
				req := broker.AcquireRequest{Route: "sonnet-us", AffinityKey: "conv", MaxOutputTokens: 10, Wait: time.Minute}
				where := func(d broker.Decision) string { return d.Route.Target.Key.Region + ":" + d.Route.Reason.String() }
				// conv fills us-east-1's minute.
				for _, want := range []string{"us-east-1:room", "us-east-1:affinity"} {
					if d, err := b.Acquire(ctx, req); err != nil || where(d) != want {
						t.Fatalf("granted %s (%v), want %s", where(d), err, want)
					}
				}
				time.Sleep(tc.at)
				start := time.Now()
				d, err := b.Acquire(ctx, req)
				if err != nil || where(d) != tc.want || time.Since(start) != tc.wantAfter {
					t.Fatalf("granted %s after %v (%v), want %s after %v", where(d), time.Since(start), err, tc.want, tc.wantAfter)
				}
				for region, n := range waiters(t, b) {
					if n != 0 {
						t.Fatalf("ghost waiter on %s", region)
					}
				}
			})
		})
	}
}

// At the end of the affinity grace, a caller that its key's target serves
// next, within half of what is left of its wait, keeps waiting for it
// rather than take another target that freed meanwhile.
func TestRouteAffinityGraceWaitsOnForATargetThatFreesSoon(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := bubbleBroker(t, geoSpecs(broker.Limits{RPM: 2})...)
		if err := b.SetRoutes([]broker.Route{geoRoute(t, "sonnet-us")}); err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		acq := func(key, want string) {
			t.Helper()
			d, err := b.Acquire(ctx, broker.AcquireRequest{Route: "sonnet-us", AffinityKey: key, MaxOutputTokens: 10, Wait: time.Minute})
			if got := d.Route.Target.Key.Region + ":" + d.Route.Reason.String(); err != nil || got != want {
				t.Fatalf("%s granted %s (%v), want %s", key, got, err, want)
			}
		}
		// us-east-1 and us-east-2 fill at 0 s (free at 60.25 s), conv fills
		// us-west-2 at 4 s (free at 64.25 s).
		for _, want := range []string{"us-east-1:room", "us-east-1:room", "us-east-2:spill", "us-east-2:spill"} {
			acq("", want)
		}
		time.Sleep(4 * time.Second)
		acq("conv", "us-west-2:spill")
		acq("conv", "us-west-2:affinity")
		// At 57 s no target has room: conv waits on us-west-2 alone for
		// the grace (5 s), while the others free at 60.25 s; at 62 s
		// us-west-2 serves it next in 2.25 s, within half of the 55 s
		// left of its wait, so it waits on.
		time.Sleep(53 * time.Second)
		start := time.Now()
		acq("conv", "us-west-2:affinity")
		if waited := time.Since(start); waited != 7250*time.Millisecond {
			t.Fatalf("granted after %v, want 7.25 s", waited)
		}
		for region, n := range waiters(t, b) {
			if n != 0 {
				t.Fatalf("ghost waiter on %s", region)
			}
		}
	})
}

func TestRouteWaiterKeepsItsPriority(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := concurrencyRouteBroker(t)
		ctx := context.Background()
		var held []broker.Decision
		for range 3 {
			d, _ := b.Acquire(ctx, broker.AcquireRequest{Route: "sonnet-us", MaxOutputTokens: 10})
			held = append(held, d)
		}
		batch := goAcquire(b, ctx, broker.AcquireRequest{ModelID: "us." + sonnet45, Region: "us-east-2", MaxOutputTokens: 10, Priority: broker.PriorityBatch, Wait: time.Minute})
		synctest.Wait()
		inter := goAcquire(b, ctx, broker.AcquireRequest{Route: "sonnet-us", MaxOutputTokens: 10, Priority: broker.PriorityInteractive, Wait: time.Minute})
		synctest.Wait()
		b.Complete(ctx, held[1].Lease.ID, broker.OutcomeSuccess, broker.Usage{})
		r := <-inter
		if !r.d.Granted || r.d.Route.Target.Key.Region != "us-east-2" {
			t.Fatalf("interactive route waiter: %+v %v", r.d, r.err)
		}
		select {
		case r := <-batch:
			t.Fatalf("the batch waiter went ahead: %+v", r)
		default:
		}
		b.Complete(ctx, r.d.Lease.ID, broker.OutcomeSuccess, broker.Usage{})
		if r := <-batch; !r.d.Granted {
			t.Fatalf("batch waiter: %+v", r)
		}
	})
}

func TestSetRoutesIsAllOrNothing(t *testing.T) {
	e := newEnv(t, geoSpecs(broker.Limits{RPM: 10})...)
	good := geoRoute(t, "sonnet-us")
	if err := e.b.SetRoutes([]broker.Route{good}); err != nil {
		t.Fatal(err)
	}
	eu, err := broker.NewTarget("eu."+sonnet45, "eu-west-1")
	if err != nil {
		t.Fatal(err)
	}
	dup := geoRoute(t, "dup")
	dup.Targets = append(dup.Targets, dup.Targets[0])
	big := broker.Route{Name: "big"}
	for i := range broker.MaxRouteTargets + 1 {
		tg, _ := broker.NewTarget(sonnet45, fmt.Sprintf("us-east-%d", i+1))
		big.Targets = append(big.Targets, tg)
	}
	for _, tc := range []struct {
		name   string
		routes []broker.Route
		want   string
	}{
		{"no budget", []broker.Route{geoRoute(t, "new"), {Name: "eu", Targets: []broker.Target{eu}}}, "route eu target 1 (eu-west-1/eu." + sonnet45 + "): no budget"},
		{"duplicate", []broker.Route{dup}, "dup targets 1 and 4 are the same budget"},
		{"too many", []broker.Route{big}, "17 targets; at most 16"},
		{"twice", []broker.Route{geoRoute(t, "x"), geoRoute(t, "x")}, "x is defined twice"},
		{"empty", []broker.Route{{Name: "e"}}, "e has no targets"},
	} {
		err := e.b.SetRoutes(tc.routes)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		if rs := e.b.Routes(); len(rs) != 1 || rs[0].Name != "sonnet-us" {
			t.Errorf("%s: routes after a failed SetRoutes: %+v", tc.name, rs)
		}
	}
	if _, err := e.b.Acquire(context.Background(), broker.AcquireRequest{Route: "nope"}); broker.KindOf(err) != broker.KindNotFound {
		t.Fatalf("unknown route: %v", err)
	}
	if _, err := e.b.Acquire(context.Background(), broker.AcquireRequest{Route: "sonnet-us", ModelID: sonnet45}); broker.KindOf(err) != broker.KindInvalid {
		t.Fatalf("route and model: %v", err)
	}
}

// checkPerRegion fails the test if held has more than limit leases in one
// region.
func checkPerRegion(t *testing.T, step int, held []broker.Lease, limit int) {
	t.Helper()
	per := map[string]int{}
	for _, l := range held {
		per[l.Key.Region]++
	}
	for region, n := range per {
		if n > limit {
			t.Fatalf("step %d: %d leases on %s, limit %d", step, n, region, limit)
		}
	}
}
