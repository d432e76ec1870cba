package broker

import (
	"context"
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
	members []*waiter
	won     *waiter // the member granted, if any
	ready   chan struct{}
	woken   bool // ready is closed
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
}

// wake closes w's ready channel once w is decided. A route member shares
// its channel with its siblings: it is closed once, when one of them is
// granted or none is left in any queue (each failed: limits lowered under
// it, or the broker closing). Caller holds Core.mu.
func (w *waiter) wake() {
	g := w.group
	if g == nil {
		if w.ready != nil { // nil: it never waited (see waiter)
			close(w.ready)
		}
		return
	}
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
	g := &routeWait{rt: rt, ready: make(chan struct{}), trying: true}
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
	// First pass: join the targets' queues in order, each dispatched as it
	// is joined, and stop at the first grant: that is the first target
	// with room now (one whose queue has callers ahead has none). The
	// members already queued stay there: if none grants, the caller waits
	// on all of them.
	pol := b.policy(req.Client)
	var never error
	for _, i := range order {
		bg := rt.budgets[i]
		n := needOf(bg, &req)
		err := bg.neverFits(n)
		if err == nil {
			// The client's caps and money budgets hold on every target,
			// and price the reservation in the target's Region.
			err = b.capNeverFits(req.Client, bg.spec.Key, &req, &n)
		}
		if err != nil {
			if never == nil {
				never = err
			}
			continue
		}
		w := &waiter{client: req.Client, weight: pol.Weight, priority: req.Priority, need: n, enqueued: now,
			ready: g.ready, group: g, target: i}
		g.members = append(g.members, w)
		bg.queue.push(w)
		b.dispatch(bg, now)
		if g.won != nil {
			break
		}
	}
	g.trying = false
	// Affinity grace: no target has room now, and the key's target is
	// full. Waiting on all targets would grant on whichever frees first,
	// moving the conversation away from its prompt cache whenever the
	// route is busy; so the caller waits on its target alone for a while
	// (Config.AffinityWait, at most half its wait), then on all of them.
	grace := min(b.cfg.AffinityWait, wait/2)
	if g.won == nil && g.affinity && grace > 0 && len(g.members) > 1 && g.members[0].target == g.preferred && g.members[0].queued {
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
	if g.held {
		c, stopGrace := after(b.clock, grace)
		defer stopGrace()
		graceC = c
	}
	for waiting := true; waiting; {
		select {
		case <-graceC:
			graceC = nil
			b.mu.Lock()
			b.release(g, b.clock.Now())
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
		return Decision{}, firstErr
	}
	if bestLimit == LimitClientCap || bestLimit == LimitMoney {
		b.capRefused(rt.budgets[best], bestM, bestLimit, now)
	}
	t := rt.Targets[best]
	rt.refused++
	rt.budgets[best].counters.Refused++
	b.rec.note(event{kind: eventRefused, key: t.Key, client: g.members[0].client, at: now})
	return Decision{Key: t.Key, RetryAfter: bestD, Blocked: bestLimit, Cap: bestCap, Waited: now.Sub(g.members[0].enqueued),
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
	n := need{maxOutput: req.MaxOutputTokens, burndown: bg.burndown, base: req.InputTokens + req.CacheWriteTokens, priority: req.Priority}
	if n.maxOutput == 0 {
		n.maxOutput, n.unsetMax = bg.maxOutput, true
	}
	n.tokens = reservation(req.InputTokens, req.CacheWriteTokens, n.maxOutput, n.burndown)
	return n
}
