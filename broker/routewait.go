package broker

import (
	"context"
	"maps"
	"slices"
	"time"
)

// routeWait is one Acquire on a route: a waiter per target, each in its
// target's queue under the caller's client, weight and priority, so the
// caller keeps its place and fair share on every target at once. All
// members share one ready channel. The first member granted wins, and the
// others leave their queues in the same critical section (routeGranted):
// no second grant can happen, and no ghost waiter stays behind to hold up
// a queue it no longer wants. Guarded by Core.mu.
type routeWait struct {
	rt      *route
	req     AcquireRequest // what each member asks of its target
	since   time.Time      // when the caller arrived
	members []*waiter
	won     *waiter // the member granted, if any
	ready   chan struct{}
	woken   bool // ready is closed
	// err answers the caller when no member is left: its route was taken
	// out of service, or changed to targets it can never fit (follow).
	err error
	// preferred is the target tried first: the affinity key's if it has
	// one (affinity), else the route's first.
	preferred int
	affinity  bool
	key       [16]byte // the affinity key's hash, if hasKey
	hasKey    bool
	trying    bool // in Acquire's first pass: a grant now did not wait
	// held: the members other than the affinity target's are out of their
	// queues for the affinity grace (see acquireRoute).
	held bool
	// keyRoom: the affinity target had room at the request, but was tried
	// after the others as recovering from a throttle.
	keyRoom bool
}

// wake closes w's ready channel once w is decided. A route member shares
// its channel with its siblings: it is closed once, when one of them is
// granted or none is left in any queue (each failed: limits lowered under
// it, or the broker closing). Caller holds Core.mu.
func (w *waiter) wake() {
	if w.group == nil {
		if w.ready != nil { // nil: it never waited (see waiter)
			close(w.ready)
		}
		return
	}
	w.group.wake()
}

// wake closes g's ready channel if g is decided: a member granted, or
// none left in any queue. Caller holds Core.mu.
func (g *routeWait) wake() {
	if g.woken {
		return
	}
	if g.won == nil {
		for _, m := range g.members {
			if m.queued {
				return // still waiting elsewhere
			}
		}
	}
	g.woken = true
	close(g.ready)
}

// routeGranted takes w's siblings out of their queues, counts the grant
// and remembers the affinity key's target. The siblings' queues are
// dispatched after the current dispatch (see dispatch): a waiter leaving
// the head may let others through. Caller holds Core.mu.
func (b *Core) routeGranted(w *waiter, now time.Time) {
	g := w.group
	g.won = w
	for _, m := range g.members {
		if m != w && m.queued {
			bg := g.rt.budgets[m.target]
			bg.queue.remove(m)
			b.dispatch(bg, now)
		}
	}
	c := &g.rt.counters[w.target]
	switch {
	case w.target == g.preferred && g.affinity:
		c.Affinity++
	case w.target == g.preferred:
		c.Room++
	default:
		c.Spill++
		if g.keyRoom {
			c.SpillRecovering++
		}
	}
	if !g.trying {
		c.Waited++
	}
	if g.hasKey {
		b.routing.affinity.put(g.key, g.rt.Targets[w.target].Key, now)
	}
}

// leaveAll takes the members of g still queued out of their queues and
// dispatches those queues. Caller holds Core.mu.
func (b *Core) leaveAll(g *routeWait, now time.Time) {
	var left []*budget
	for _, m := range g.members {
		if m.queued {
			bg := g.rt.budgets[m.target]
			bg.queue.remove(m)
			left = append(left, bg)
		}
	}
	for _, bg := range left {
		b.dispatch(bg, now)
	}
}

// acquireRoute is Acquire on a route (req.Route set, validated).
func (b *Core) acquireRoute(ctx context.Context, req AcquireRequest) (Decision, error) {
	wait := min(req.Wait, b.cfg.MaxWait)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return Decision{}, &Error{Kind: KindUnavailable, Message: "broker is shutting down"}
	}
	rt := b.routing.byName[req.Route]
	if rt == nil {
		b.mu.Unlock()
		return Decision{}, notFoundf("no route %q", req.Route)
	}
	now := b.clock.Now()
	g := &routeWait{rt: rt, req: req, since: now, ready: make(chan struct{}), trying: true}
	order := make([]int, 0, len(rt.Targets))
	if req.AffinityKey != "" {
		g.key, g.hasKey = affinityHash(rt.Name, req.AffinityKey), true
		if k, ok := b.routing.affinity.get(g.key, now); ok {
			for i, t := range rt.Targets {
				if t.Key == k {
					g.preferred, g.affinity = i, true
					order = append(order, i)
				}
			}
		}
	}
	for i := range rt.Targets {
		if !g.affinity || i != g.preferred {
			order = append(order, i)
		}
	}
	// Feedback: a target whose adaptive ceiling is engaged (a throttle cut
	// it and it has not climbed back) goes after the others, the key's
	// target too, so the route prefers the others until it recovers; its
	// pace would otherwise let the next grant through at once, into the
	// same throttle.
	// Once per target, not per comparison: limits(now) walks the
	// adaptive state.
	recovering := make([]int, len(rt.Targets))
	for i, bg := range rt.budgets {
		st, e := bg.staticLim, bg.limits(now)
		if engaged(e.TPM, st.TPM) || engaged(e.RPM, st.RPM) {
			recovering[i] = 1
		}
	}
	slices.SortStableFunc(order, func(x, y int) int { return recovering[x] - recovering[y] })
	if g.affinity && order[0] != g.preferred {
		// Had the key's target room? A spill would then move the
		// conversation only for the recovery (counted apart).
		kb := rt.budgets[g.preferred]
		limit, _ := kb.fit(now, needOf(kb, &req))
		g.keyRoom = kb.queue.len() == 0 && limit == LimitNone
	}
	// First pass: join the targets' queues in order, each dispatched as it
	// is joined, and stop at the first grant: that is the first target
	// with room now (one whose queue has callers ahead has none). The
	// members already queued stay there: if none grants, the caller waits
	// on all of them.
	pol := b.policy(req.Client)
	var never error
	// grace is the affinity grace (see below).
	grace := min(b.cfg.AffinityWait, wait/2)
	for _, i := range order {
		if err := b.join(g, i, now); err != nil {
			if never == nil {
				never = err
			}
			continue
		}
		if g.won != nil {
			break
		}
		// The key's target is full, but only for a known while: the
		// caller is alone in its queue, held back by the window's slide
		// or the pace. Within the grace it waits for it rather than
		// move the conversation to a target with room now, away from
		// its prompt cache. Held, the members that follow join the
		// route without queueing (join), until the grace ends (release).
		if bg := rt.budgets[i]; g.affinity && i == g.preferred && !g.held && len(g.members) == 1 && grace > 0 && bg.queue.len() == 1 {
			if _, d := bg.fit(now, g.members[0].need); d > 0 && d <= grace {
				g.held = true
			}
		}
	}
	g.trying = false
	// Affinity grace: no target has room now (or the key's target will
	// have room soon: held above), and the key's target is full. Waiting on
	// all targets would grant on whichever frees first, moving the
	// conversation away from its prompt cache whenever the route is busy;
	// so the caller waits on its target alone for a while
	// (Config.AffinityWait, at most half its wait), then on all of them.
	if !g.held && g.won == nil && g.affinity && grace > 0 && len(g.members) > 1 && g.members[0].target == g.preferred && g.members[0].queued {
		g.held = true
		for _, m := range g.members[1:] {
			if m.queued {
				bg := rt.budgets[m.target]
				bg.queue.remove(m)
				b.dispatch(bg, now)
			}
		}
	}
	if len(g.members) == 0 {
		// It fits no target, ever: the error names the first.
		rt.refused++
		b.rec.note(event{kind: eventRefused, key: rt.Targets[order[0]].Key, client: req.Client, at: now})
		b.mu.Unlock()
		return Decision{}, never
	}
	if g.won == nil && wait > 0 {
		if limit := b.waiting.over(req.Client, pol.MaxWaiters, b.cfg.MaxWaiters); limit != LimitNone {
			d, err := b.settleRoute(g, now)
			d.Blocked = limit
			b.mu.Unlock()
			return d, err
		}
	}
	if g.won != nil || wait <= 0 {
		d, err := b.settleRoute(g, now)
		l, rec := g.lease()
		b.mu.Unlock()
		return b.finish(ctx, d, err, l, rec)
	}
	b.waiting.add(req.Client)
	b.mu.Unlock()

	timeout, stop := after(b.clock, wait)
	defer stop()
	var graceC <-chan struct{}
	stopGrace := func() {}
	defer func() { stopGrace() }()
	if g.held {
		graceC, stopGrace = after(b.clock, grace)
	}
	deadline := now.Add(wait)
	for waiting := true; waiting; {
		select {
		case <-graceC:
			graceC = nil
			b.mu.Lock()
			t := b.clock.Now()
			// The key's target may have room now (its own timer and this
			// one can fire at the same instant, in either order); if it
			// serves this caller next, and soon (within half of what is
			// left of its wait), the caller keeps waiting for it rather
			// than move the conversation.
			if g.won == nil && !g.woken && !b.closed {
				b.dispatch(g.rt.budgets[g.preferred], t)
			}
			if d := b.keyFreesIn(g, t); d > 0 && d <= deadline.Sub(t)/2 {
				stopGrace()
				graceC, stopGrace = after(b.clock, d)
			} else {
				b.release(g, t)
			}
			b.mu.Unlock()
		case <-g.ready:
			waiting = false
		case <-timeout:
			waiting = false
		case <-ctx.Done():
			b.mu.Lock()
			defer b.mu.Unlock()
			b.waiting.done(req.Client)
			if g.won != nil {
				b.undoGrant(g.won.lease, b.clock.Now())
			} else {
				b.leaveAll(g, b.clock.Now())
			}
			return Decision{}, ctx.Err()
		}
	}
	b.mu.Lock()
	b.waiting.done(req.Client)
	d, err := b.settleRoute(g, b.clock.Now())
	l, rec := g.lease()
	b.mu.Unlock()
	return b.finish(ctx, d, err, l, rec)
}

// join adds g's member on target i of its route, queued and dispatched at
// once unless the affinity grace holds the others back (then release
// queues it). It fails, adding nothing, when the request can never fit
// there: the target's limits or the client's caps are below it. Caller
// holds Core.mu.
func (b *Core) join(g *routeWait, i int, now time.Time) error {
	bg := g.rt.budgets[i]
	req := &g.req
	n := needOf(bg, req)
	err := bg.neverFits(n)
	if err == nil {
		// The client's caps and money budgets hold on every target,
		// and price the reservation in the target's Region.
		err = b.capNeverFits(req.Client, bg.spec.Key, req, &n)
	}
	if err != nil {
		return err
	}
	w := &waiter{client: req.Client, weight: b.policy(req.Client).Weight, priority: req.Priority, need: n, enqueued: g.since,
		ready: g.ready, group: g, target: i}
	g.members = append(g.members, w)
	if !g.held {
		bg.queue.push(w)
		b.dispatch(bg, now)
	}
	return nil
}

// keyFreesIn is how long until the affinity target serves g's caller,
// if that is known: the caller is next in its queue and only the window's
// slide or the pace holds it back. 0: not known (or not held). Caller
// holds Core.mu.
func (b *Core) keyFreesIn(g *routeWait, now time.Time) time.Duration {
	if !g.held || g.won != nil || g.woken || b.closed || len(g.members) == 0 {
		return 0
	}
	m := g.members[0]
	bg := g.rt.budgets[m.target]
	if m.target != g.preferred || !m.queued || bg.queue.peek(now, func(*waiter) bool { return true }) != m {
		return 0
	}
	_, d := bg.fit(now, m.need)
	return d
}

// release ends the affinity grace: the members held back join their
// queues, as arrivals of now. Caller holds Core.mu.
func (b *Core) release(g *routeWait, now time.Time) {
	if !g.held || g.won != nil || g.woken || b.closed {
		return
	}
	g.held = false
	for _, m := range g.members {
		if !m.queued && m.err == nil {
			bg := g.rt.budgets[m.target]
			bg.queue.push(m)
			b.dispatch(bg, now)
			if g.won != nil {
				return
			}
		}
	}
}

// lease returns the granted lease and its record as of now, or nils.
// Caller holds Core.mu.
func (g *routeWait) lease() (*lease, LeaseRecord) {
	if g.won == nil {
		return nil, LeaseRecord{}
	}
	return g.won.lease, g.won.record()
}

// settleRoute turns a route wait into a Decision once it is over: granted
// on the winner's target; or refused with the earliest retry over all
// targets (counted as a refusal on that target's budget and the route);
// or, if every member failed, the first member's error. Caller holds
// Core.mu.
func (b *Core) settleRoute(g *routeWait, now time.Time) (Decision, error) {
	rt := g.rt
	if w := g.won; w != nil {
		t := rt.Targets[w.target]
		return Decision{Key: t.Key, Granted: true, Lease: w.lease.public(), Waited: now.Sub(w.enqueued),
			Route: RouteGrant{Route: rt.Name, Target: t, Index: w.target, Reason: g.reason(w.target)}}, nil
	}
	b.leaveAll(g, now)
	if b.closed {
		return Decision{}, &Error{Kind: KindUnavailable, Message: "broker is shutting down"}
	}
	best := -1
	var bestLimit Limit
	var bestD time.Duration
	var bestCap string
	var bestM *waiter
	var firstErr error
	for _, m := range g.members {
		if m.err != nil {
			if firstErr == nil {
				firstErr = m.err
			}
			continue
		}
		limit, d, why := b.retryAfter(rt.budgets[m.target], m, now)
		if best < 0 || d < bestD {
			best, bestLimit, bestD, bestCap, bestM = m.target, limit, d, why, m
		}
	}
	if best < 0 {
		if firstErr == nil {
			firstErr = g.err // no member left
		}
		return Decision{}, firstErr
	}
	if bestLimit == LimitClientCap || bestLimit == LimitMoney {
		b.capRefused(rt.budgets[best], bestM, bestLimit, now)
	}
	t := rt.Targets[best]
	rt.refused++
	rt.budgets[best].counters.Refused++
	b.rec.note(event{kind: eventRefused, key: t.Key, client: g.req.Client, at: now})
	return Decision{Key: t.Key, RetryAfter: bestD, Blocked: bestLimit, Cap: bestCap, Waited: now.Sub(g.since),
		Route: RouteGrant{Route: rt.Name, Target: t, Index: best}}, nil
}

// reason is why a grant on target i was made.
func (g *routeWait) reason(i int) RouteReason {
	switch {
	case i == g.preferred && g.affinity:
		return ReasonAffinity
	case i == g.preferred:
		return ReasonRoom
	}
	return ReasonSpill
}

// dispatch grants the waiters of bg that fit (dispatchQueue). A route
// grant inside it takes the winner's siblings out of other queues, which
// must then be dispatched too; they are queued in routing.pending and
// dispatched here, one after the other, rather than recursively, so a chain
// of routes sharing targets cannot grow the stack. Caller holds Core.mu.
func (b *Core) dispatch(bg *budget, now time.Time) {
	r := &b.routing
	if r.dispatching {
		r.pending = append(r.pending, bg)
		return
	}
	r.dispatching = true
	b.dispatchQueue(bg, now)
	for len(r.pending) > 0 {
		next := r.pending[0]
		r.pending = r.pending[1:]
		b.dispatchQueue(next, now)
	}
	r.pending = nil
	r.dispatching = false
}

// needOf is what req takes from bg.
func needOf(bg *budget, req *AcquireRequest) need {
	scope := bg.spec.Key.Scope
	n := need{maxOutput: req.MaxOutputTokens, burndown: bg.burndown, base: req.InputTokens + cacheWriteCharge(scope, req.CacheWriteTokens), priority: req.Priority}
	if n.maxOutput == 0 {
		n.maxOutput, n.unsetMax = bg.maxOutput, true
	}
	n.tokens = reservation(scope, req.InputTokens, req.CacheWriteTokens, n.maxOutput, n.burndown)
	return n
}

// follow moves the callers waiting on routes that SetRoutes replaces or
// takes out of service (every route in service whose entry in next is not
// the same *route) onto next: a caller waits on its route as it is now.
// Caller holds Core.mu.
func (b *Core) follow(next map[string]*route, now time.Time) {
	var groups []*routeWait
	seen := map[*routeWait]bool{}
	for _, name := range slices.Sorted(maps.Keys(b.routing.byName)) {
		rt := b.routing.byName[name]
		if next[name] == rt {
			continue
		}
		// A waiting caller is queued on at least one target (one held
		// by the affinity grace is queued on the key's), and one that
		// is not has been decided and only needs its answer.
		for _, bg := range rt.budgets {
			bg.queue.all(func(w *waiter) {
				if g := w.group; g != nil && g.rt == rt && !seen[g] {
					seen[g] = true
					groups = append(groups, g)
				}
			})
		}
	}
	for _, g := range groups {
		b.move(g, next[g.rt.Name], now)
	}
}

// move puts a waiting caller on nrt, its route's replacement (nil: the
// route is gone). It keeps its place in the queues of the targets nrt
// still has, leaves the others, and joins nrt's new targets as if it had
// arrived then, so that no caller is granted on a target its route no
// longer has (a reload may take a global profile out for residency). Its
// affinity key's target, if nrt lost it, no longer holds the caller back.
// With no target left it is answered with g.err. Caller holds Core.mu.
func (b *Core) move(g *routeWait, nrt *route, now time.Time) {
	old := g.rt
	var left []*budget
	var keep []*waiter
	for _, m := range g.members {
		j := -1
		if nrt != nil {
			j = slices.Index(nrt.Targets, old.Targets[m.target])
		}
		if j >= 0 {
			m.target = j
			keep = append(keep, m)
			continue
		}
		if m.queued {
			bg := old.budgets[m.target]
			bg.queue.remove(m)
			left = append(left, bg)
		}
	}
	g.members = keep
	if nrt == nil {
		g.err = notFoundf("route %s was taken out of service while the call waited (routes reloaded)", old.Name)
	} else {
		g.rt = nrt
		pref := -1
		if g.affinity {
			pref = slices.Index(nrt.Targets, old.Targets[g.preferred])
		}
		if pref < 0 {
			// The route's first target is now the one a grant "had room" on.
			g.preferred, g.affinity = 0, false
		} else {
			g.preferred = pref
		}
		var never error
		for i := range nrt.Targets {
			if g.won != nil {
				break
			}
			if slices.ContainsFunc(keep, func(m *waiter) bool { return m.target == i }) {
				continue
			}
			if err := b.join(g, i, now); err != nil && never == nil {
				never = err
			}
		}
		if len(g.members) == 0 {
			g.err = never
		}
		if !g.affinity {
			b.release(g, now)
		}
	}
	g.wake()
	for _, bg := range left {
		b.dispatch(bg, now)
	}
}
