package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Priority orders waiters on a budget.
type Priority int

const (
	PriorityInteractive Priority = iota + 1
	PriorityStandard
	PriorityBatch
)

func (p Priority) String() string {
	switch p {
	case PriorityInteractive:
		return "interactive"
	case PriorityStandard:
		return "standard"
	case PriorityBatch:
		return "batch"
	}
	return "unknown"
}

// Outcome is how the Bedrock call behind a lease ended.
type Outcome int

const (
	OutcomeUnknown Outcome = iota
	OutcomeSuccess
	// OutcomeThrottled: Bedrock refused the call; it consumed nothing.
	OutcomeThrottled
	// OutcomeError: the call failed otherwise; its usage (if any) is charged.
	OutcomeError
	// OutcomeCancelled: the call was not made; it consumed nothing.
	OutcomeCancelled
)

func (o Outcome) String() string {
	switch o {
	case OutcomeSuccess:
		return "success"
	case OutcomeThrottled:
		return "throttled"
	case OutcomeError:
		return "error"
	case OutcomeCancelled:
		return "cancelled"
	}
	return "unknown"
}

// Usage is what Bedrock reported for a call.
type Usage struct {
	InputTokens, OutputTokens, CacheReadInputTokens, CacheWriteInputTokens int64
}

// Sanity bounds on token counts: far above any model today, low enough that
// sums cannot overflow.
const (
	maxTokensPerCall = 100_000_000
	maxLeaseIDLen    = 64
)

// Broker is the assembled domain: the lease core and the three parts around
// it, each a type of its own with its own state (see the package doc's
// Structure). It declares no methods: its method set is the union of its
// parts', so a caller that needs all of them (cmd, tests) holds one value,
// and a consumer that needs one job declares an interface that one part
// satisfies. Open builds it; Run (the core's) expires leases and writes
// history; Close it when done.
type Broker struct {
	*Core      // leases: acquire, settle, renew, queue, windows, adaptive ceilings
	*Recorder  // usage history, fed by the core's events
	*Refresher // quota discovery and its refresh loop
	*Operator  // operator actions and reports
}

// Core grants, settles and renews leases against budgets: the hot centre
// every AcquireLease goes through. It is safe for concurrent use.
type Core struct {
	store Store
	clock Clock
	cfg   Config
	log   *slog.Logger
	rec   *Recorder // receives an event for everything that happens to a budget

	// mu guards everything below, and the state of every budget, lease and
	// waiter. It is never held during a Store call, and the only other lock
	// taken under it is the Recorder's hand-over lock (see Recorder).
	mu        sync.Mutex
	budgets   map[Key]*budget
	leases    map[string]*lease
	expiry    expiryQueue // active leases by ExpiresAt (stale entries skipped)
	ended     []endedRef  // ended leases in EndedAt order, for forgetting
	retry     []Change    // commits that failed after the answer was given
	closed    bool
	usageGCAt time.Time         // when Sweep last dropped old usage
	active    map[string]int64  // active leases per client, for MaxConcurrent
	settled   chan struct{}     // closed when no lease is active (see Settled)
	waiting   waiting           // callers waiting in Acquire, for MaxWaiters
	chunks    map[uint64]*chunk // committed chunks not yet forgotten (escrow.go)
	nextChunk uint64            // the next chunk's ID is at least this
	wanted    []*budget         // budgets asking the escrow loop for a chunk
	ten       tenants           // caps and spend (caps.go, spend.go)

	// kick wakes the escrow loop (buffered, 1): a chunk is wanted.
	kick chan struct{}

	routing routing // routes, affinity (route.go); guarded by mu
	// routeSet: where routes come from and which budgets discovery lost
	// (route.go); its own lock, taken before mu.
	routeSet routeSet
}

type lease struct {
	LeaseRecord
	b *budget
	// chunk is the chunk it was drawn from in this life, nil if its grant
	// was committed on its own.
	chunk *chunk
	// fixed: its charge is its chunk's, counted in full at restore, so
	// settling it moves no window (see the package doc's Durability).
	fixed bool
	// spendAs is the client name its spend is kept under (spend.go);
	// grantRecs the records its grant's commit writes.
	spendAs   string
	grantRecs grantRecs
	// undone: its grant was taken back before the caller heard of it.
	undone bool
}

type endedRef struct {
	id string
	at time.Time
}

// Open loads the broker's state from store and returns a broker ready to
// serve. Leases that expired while the broker was down are expired now,
// still charged.
func Open(ctx context.Context, store Store, clock Clock, cfg Config) (*Broker, error) {
	if store == nil || clock == nil {
		return nil, errors.New("broker: Open needs a store and a clock")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	snap, err := store.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	rec := newRecorder(store, clock)
	b := &Core{
		store:   store,
		clock:   clock,
		cfg:     cfg,
		log:     cfg.Logger,
		rec:     rec,
		budgets: make(map[Key]*budget),
		leases:  make(map[string]*lease),
		active:  make(map[string]int64),
		waiting: waiting{byClient: make(map[string]int)},
		chunks:  make(map[uint64]*chunk),
		kick:    make(chan struct{}, 1),
		ten:     newTenants(cfg.Caps, cfg.Prices),
		routing: routing{affinity: newAffinityCache(cfg.AffinityKeys, cfg.AffinityTTL)},
	}
	b.restore(snap)
	return &Broker{
		Core:      b,
		Recorder:  rec,
		Refresher: &Refresher{core: b, clock: clock, log: cfg.Logger},
		Operator:  &Operator{core: b},
	}, nil
}

// restoreGrace is the most a restart gives a lease that expired while no
// broker served, or is about to, to be settled or renewed (restore): more
// than a failover's gap (under 5 s), little enough that the leases of
// holders that died with the broker do not hold concurrency for long.
const restoreGrace = 10 * time.Second

// restore rebuilds the windows from what was granted before the restart:
// the minute windows from the leases granted in the last minute, the day
// window from per-minute usage. This is what keeps the grant invariant
// across a crash.
func (b *Core) restore(snap Snapshot) {
	now := b.clock.Now()
	for _, s := range snap.Specs {
		b.budgets[s.Key] = newBudget(s, &b.cfg)
	}
	for _, o := range snap.Overrides {
		if bg := b.budgets[o.Key]; bg != nil && !o.Override.empty() {
			bg.override = o.Override
			bg.recompute(b.cfg.Margin)
		}
	}
	for _, a := range snap.Adaptive {
		if bg := b.budgets[a.Key]; bg != nil {
			bg.restoreAdaptive(a)
		}
	}
	for _, u := range snap.Usage {
		if bg := b.budgets[u.Key]; bg != nil {
			bg.dayTokens.add(now, time.Unix(u.Minute*60, 0), u.Tokens)
		}
	}
	var expired Change
	b.restoreChunks(&snap, now, &expired)
	recs := slices.Clone(snap.Leases)
	slices.SortFunc(recs, func(x, y LeaseRecord) int { return x.EndedAt.Compare(y.EndedAt) })
	grace := min(b.cfg.LeaseTTL, restoreGrace)
	for _, r := range recs {
		bg := b.budgets[r.Key]
		if bg == nil {
			// Its budget is gone from the configuration: nothing to enforce.
			expired.DeleteLeases = append(expired.DeleteLeases, r.ID)
			continue
		}
		// A lease whose expiry fell within a grace of the restart gets
		// that grace from now: while no broker served, its holder could
		// neither settle nor renew it, and a settlement in flight across
		// a failover arrives seconds after the new leader takes over.
		// Keeping a lease longer only holds capacity longer; a lease that
		// expired well before (a long outage) expires as it would have.
		if r.State == LeaseActive && r.ExpiresAt.After(now.Add(-grace)) && r.ExpiresAt.Before(now.Add(grace)) {
			r.ExpiresAt = now.Add(grace)
		}
		l := &lease{LeaseRecord: r, b: bg}
		b.leases[r.ID] = l
		if c := b.restoredChunk(r.ID); c != nil {
			l.fixed = true // charged with its chunk
		} else {
			bg.requests.add(now, r.GrantedAt, r.Requests)
			bg.tokens.add(now, r.GrantedAt, r.Charged)
		}
		switch {
		case r.State == LeaseActive && r.ExpiresAt.After(now):
			bg.started(r.Client, r.GrantedAt)
			b.active[r.Client]++
			b.expiry.push(expiryRef{id: r.ID, at: r.ExpiresAt})
		case r.State == LeaseActive:
			// Started as it was, so that expire, which ends an active
			// lease, leaves the counts where they were (it used to take
			// concurrency and the client's active count below zero).
			bg.started(r.Client, r.GrantedAt)
			b.active[r.Client]++
			b.expire(l, now)
			expired.Leases = append(expired.Leases, l.LeaseRecord)
		default:
			b.ended = append(b.ended, endedRef{id: r.ID, at: r.EndedAt})
		}
	}
	b.restorePhantoms(now)
	b.restoreCaps(&snap, now)
	if !expired.empty() {
		b.retry = append(b.retry, expired)
	}
	b.log.Info("state restored", "budgets", len(b.budgets), "leases", len(b.leases), "usage_records", len(snap.Usage),
		"chunks", len(snap.Chunks))
}

// Close stops the broker: waiting callers are answered with KindUnavailable
// and new calls refused. Outstanding leases stay on record.
func (b *Core) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.closed = true
	for _, bg := range b.budgets {
		if bg.timer != nil {
			bg.timer.Stop()
			bg.timer = nil
		}
		var ws []*waiter
		bg.queue.all(func(w *waiter) { ws = append(ws, w) })
		for _, w := range ws {
			bg.queue.remove(w)
			w.err = &Error{Kind: KindUnavailable, Message: "broker is shutting down"}
			w.wake()
		}
	}
}

// Settled returns a channel that is closed once no lease is active (at
// once if none is). A shutdown waits on it, bounded, after Close: calls in
// flight then settle their leases instead of leaving them charged at their
// reservation until they expire.
func (b *Core) Settled() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.active) == 0 {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	if b.settled == nil {
		b.settled = make(chan struct{})
	}
	return b.settled
}

// SetSpecs adds or updates budgets. They are stored first, then take effect;
// waiters are re-examined, since a limit may have grown. Budgets not named
// keep their current spec.
func (b *Core) SetSpecs(ctx context.Context, specs []Spec) error {
	for _, s := range specs {
		if err := s.validate(); err != nil {
			return &Error{Kind: KindInvalid, Message: err.Error()}
		}
	}
	if err := b.store.Commit(ctx, Change{Specs: specs}); err != nil {
		return &Error{Kind: KindUnavailable, Message: "budgets could not be recorded", Err: err}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock.Now()
	for _, s := range specs {
		bg := b.budgets[s.Key]
		if bg == nil {
			b.budgets[s.Key] = newBudget(s, &b.cfg)
			continue
		}
		bg.spec = s
		bg.recompute(b.cfg.Margin)
		b.dispatch(bg, now)
	}
	return nil
}

// AcquireRequest asks for one lease.
type AcquireRequest struct {
	ModelID  string
	Region   string
	Client   string // who asks: fairness and accounting are per client
	Priority Priority
	// InputTokens is the caller's estimate of the input.
	InputTokens      int64
	MaxOutputTokens  int64 // 0: the model's maximum
	CacheWriteTokens int64
	// Wait is how long the caller will wait for capacity; 0 answers at once.
	Wait time.Duration
	// Route names a route (route.go) instead of ModelID and Region: the
	// lease is granted on one of its targets, which Decision.Route names.
	Route string
	// AffinityKey (a conversation or session id; with Route) prefers the
	// target the key was last granted on while it has room.
	AffinityKey string
}

// Lease is a granted lease, as the caller sees it.
type Lease struct {
	ID              string
	Key             Key
	Reserved        int64
	GrantedAt       time.Time
	ExpiresAt       time.Time
	Burndown        float64
	MaxOutputTokens int64
}

// Decision is the result of Acquire: a lease, or a refusal with a retry
// delay. A refusal is not an error.
type Decision struct {
	Key     Key // the budget the request resolved to
	Granted bool
	Lease   Lease
	Waited  time.Duration
	// For a refusal: how long until the request would fit, and which limit
	// blocks it; for LimitClientCap and LimitMoney, Cap says which cap.
	RetryAfter time.Duration
	Blocked    Limit
	Cap        string
	// Route is where a route's request was granted (or, refused, the target
	// with the earliest retry); zero for a request that named a model.
	Route RouteGrant
}

func (r *AcquireRequest) validate() error {
	if len(r.Client) > maxClientLen {
		return invalidf("client", "is %d bytes long; at most %d", len(r.Client), maxClientLen)
	}
	if r.Priority < PriorityInteractive || r.Priority > PriorityBatch {
		return invalidf("priority", "%d is not a priority", r.Priority)
	}
	for _, f := range []struct {
		name string
		v    int64
	}{{"input_tokens", r.InputTokens}, {"max_output_tokens", r.MaxOutputTokens}, {"cache_write_tokens", r.CacheWriteTokens}} {
		if f.v < 0 {
			return invalidf(f.name, "is negative (%d)", f.v)
		}
		if f.v > maxTokensPerCall {
			return invalidf(f.name, "%d is beyond any model (at most %d)", f.v, maxTokensPerCall)
		}
	}
	if r.Wait < 0 {
		return invalidf("wait", "is negative (%v)", r.Wait)
	}
	return validateRouteRequest(r)
}

// Acquire grants a lease for one call, waiting up to req.Wait (clamped to
// Config.MaxWait) for capacity. It returns a refusal Decision when the wait
// runs out, and an error when the request is invalid, can never fit, or the
// broker cannot serve; ctx ending abandons the wait with ctx's error.
func (b *Core) Acquire(ctx context.Context, req AcquireRequest) (Decision, error) {
	if req.Priority == 0 {
		req.Priority = PriorityStandard
	}
	if req.Client == "" {
		req.Client = "anonymous"
	}
	if err := req.validate(); err != nil {
		return Decision{}, err
	}
	// Runs after every unlock below: history is folded off the lock.
	defer b.rec.tidy()
	if req.Route != "" {
		return b.acquireRoute(ctx, req)
	}
	key, err := ParseModelID(req.ModelID, req.Region, b.cfg.DefaultRegion)
	if err != nil {
		return Decision{}, err
	}
	wait := min(req.Wait, b.cfg.MaxWait)
	// Made before the lock, so that the lock is not held while they are
	// allocated (an allocation can be made to help the collector mark,
	// with every other caller waiting on the lock meanwhile). The lease is
	// the grant's, if there is one (grant).
	w := &waiter{client: req.Client, priority: req.Priority, spare: new(lease)}

	b.mu.Lock()
	bg, d, err, rec, waits := b.admit(key, &req, w, wait)
	b.mu.Unlock()
	if !waits {
		return b.finish(ctx, d, err, w.lease, rec)
	}

	timeout, stop := after(b.clock, wait)
	defer stop()
	select {
	case <-w.ready:
	case <-timeout:
	case <-ctx.Done():
		b.mu.Lock()
		defer b.mu.Unlock()
		b.waiting.done(req.Client)
		if w.lease != nil {
			b.undoGrant(w.lease, b.clock.Now())
		} else if w.queued {
			bg.queue.remove(w)
			b.dispatch(bg, b.clock.Now())
		}
		return Decision{}, ctx.Err()
	}
	b.mu.Lock()
	b.waiting.done(req.Client)
	d, err = b.settleWait(bg, w, b.clock.Now())
	rec = w.record()
	b.mu.Unlock()
	return b.finish(ctx, d, err, w.lease, rec)
}

// admit is Acquire's first critical section for a request on one
// budget (key): it queues w, dispatches the budget, and answers at once
// unless w is to wait. waits: w is queued with its ready channel and
// counted as waiting. Otherwise the answer is d and err, and rec the
// record finish commits. Caller holds b.mu (BenchmarkGrantHold measures
// how long this holds it for a grant).
func (b *Core) admit(key Key, req *AcquireRequest, w *waiter, wait time.Duration) (bg *budget, d Decision, err error, rec LeaseRecord, waits bool) {
	if b.closed {
		return nil, Decision{}, &Error{Kind: KindUnavailable, Message: "broker is shutting down"}, rec, false
	}
	bg = b.budgets[key]
	if bg == nil {
		return nil, Decision{}, notFoundf("no budget for %s %s in %s", key.Scope, key.Model, key.Region), rec, false
	}
	n := needOf(bg, req)
	err = bg.neverFits(n)
	if err == nil {
		err = b.capNeverFits(req.Client, key, req, &n)
	}
	if err != nil {
		bg.counters.Refused++
		b.rec.note(event{kind: eventRefused, key: key, client: req.Client, at: b.clock.Now()})
		return bg, Decision{}, err, rec, false
	}
	now := b.clock.Now()
	pol := b.policy(req.Client)
	w.weight, w.need, w.enqueued = pol.Weight, n, now
	bg.queue.push(w)
	b.dispatch(bg, now)
	if w.queued && wait > 0 {
		if limit := b.waiting.over(req.Client, pol.MaxWaiters, b.cfg.MaxWaiters); limit != LimitNone {
			// Refused at once, before it holds a place in the queue, a
			// timer and its caller's goroutine for up to MaxWait: the
			// flood bounds are what keep memory bounded.
			d, err = b.settleWait(bg, w, now)
			d.Blocked, d.Cap = limit, ""
			return bg, d, err, rec, false
		}
	}
	if !w.queued || wait <= 0 {
		d, err = b.settleWait(bg, w, now)
		return bg, d, err, w.record(), false
	}
	b.waiting.add(req.Client)
	// Only a waiter that waits needs a channel to be woken on (wake closes
	// none otherwise): it is made before anything can wake it, under the
	// lock.
	w.ready = make(chan struct{})
	return bg, Decision{}, nil, rec, true
}

// record is the granted lease's record as of now, for finish to commit,
// or the zero record: none granted, or drawn from a chunk (durable with
// its chunk; finish commits nothing). Caller holds b.mu.
func (w *waiter) record() LeaseRecord {
	if w.lease == nil || w.lease.chunk != nil {
		return LeaseRecord{}
	}
	return w.lease.LeaseRecord
}

// settleWait turns a waiter into a Decision once its wait is over: granted,
// failed, or refused with the time until it would fit. Caller holds b.mu.
func (b *Core) settleWait(bg *budget, w *waiter, now time.Time) (Decision, error) {
	switch {
	case w.lease != nil:
		return Decision{Key: bg.spec.Key, Granted: true, Lease: w.lease.public(), Waited: now.Sub(w.enqueued)}, nil
	case w.err != nil:
		return Decision{}, w.err
	}
	bg.queue.remove(w)
	b.dispatch(bg, now) // w may have been the head that held others back
	bg.counters.Refused++
	b.rec.note(event{kind: eventRefused, key: bg.spec.Key, client: w.client, at: now})
	limit, d, capWhy := b.retryAfter(bg, w, now)
	if limit == LimitClientCap || limit == LimitMoney {
		b.capRefused(bg, w, limit, now)
	}
	return Decision{Key: bg.spec.Key, RetryAfter: d, Blocked: limit, Cap: capWhy, Waited: now.Sub(w.enqueued)}, nil
}

// retryAfter is the limit that holds w back on bg at now, and the time
// until it would fit. The caller counts a refusal on a cap (capRefused):
// a route's refusal is one, however many targets it looked at. Caller
// holds b.mu.
func (b *Core) retryAfter(bg *budget, w *waiter, now time.Time) (Limit, time.Duration, string) {
	limit, d := bg.fit(now, w.need)
	var capWhy string
	switch capLimit, capWait, why := b.capFit(bg, w, now, true); {
	case capLimit != LimitNone:
		// The client's own cap or a money budget holds it back, whatever
		// the budget's windows say.
		limit, d, capWhy = capLimit, capWait, why
	case !b.eligible(w.client):
		// The client's own cap holds it back, whatever the windows say.
		limit = LimitClientLeases
	case limit == LimitNone:
		// It fits on the windows but waiters ahead of it have the capacity.
		limit, d = LimitConcurrency, 0
		if head := bg.queue.peek(now, func(w *waiter) bool { return b.eligible(w.client) }); head != nil {
			limit, d = bg.fit(now, head.need)
		}
	}
	if d <= 0 {
		// Only a release or settlement can make room; suggest a short,
		// bounded pause rather than a guess at when that happens.
		d = time.Second
	}
	return limit, d, capWhy
}

// finish persists a grant (rec, copied under the lock that granted it, so
// the hot path takes the lock no second time) before it is returned. If the
// store fails, the grant is undone: a lease the caller never heard of must
// not hold capacity, and one it did hear of must be on disk.
func (b *Core) finish(ctx context.Context, d Decision, err error, l *lease, rec LeaseRecord) (Decision, error) {
	if err != nil || !d.Granted {
		return d, err
	}
	if err := ctx.Err(); err != nil {
		// The caller left while its grant was made (a cancelled wait
		// whose waiter was granted before it noticed): it will never hear
		// of the lease, which must not hold capacity until it expires.
		b.mu.Lock()
		b.undoGrant(l, b.clock.Now())
		b.mu.Unlock()
		return Decision{}, err
	}
	if l.chunk != nil {
		return d, nil // durable with its chunk (escrow.go)
	}
	c := Change{
		Leases: []LeaseRecord{rec},
		Usage:  []UsageRecord{{Key: rec.Key, Minute: minuteOf(rec.GrantedAt), Tokens: rec.Charged, Requests: rec.Requests}},
		Spend:  []SpendRecord{l.grantSpend()},
	}
	if u := l.grantRecs.usage; u != nil {
		c.ClientUsage = []ClientUsageRecord{*u}
	}
	if err := b.store.Commit(ctx, c); err != nil {
		b.mu.Lock()
		b.undoGrant(l, b.clock.Now())
		b.mu.Unlock()
		return Decision{}, &Error{Kind: KindUnavailable, Message: "lease could not be recorded", Err: err}
	}
	return d, nil
}

// dispatchQueue grants waiters of bg in queue order while they fit, and
// arms a timer for when the head will fit. Caller holds b.mu; it is called
// through dispatch (routewait.go).
func (b *Core) dispatchQueue(bg *budget, now time.Time) {
	// A waiter whose client is at a cap of its own is skipped, as one at
	// its MaxConcurrent is, so it holds back no other client; the queue
	// looks again when the earliest such cap frees (capWake) or a
	// settlement returns to it.
	var capWake time.Duration
	ok := func(w *waiter) bool {
		if !b.eligible(w.client) {
			return false
		}
		if l, d, _ := b.capFit(bg, w, now, false); l != LimitNone {
			if d > 0 && (capWake == 0 || d < capWake) {
				capWake = d
			}
			return false
		}
		return true
	}
	defer func() {
		if capWake > 0 {
			b.wakeAt(bg, now, now.Add(capWake))
		}
	}()
	for w := bg.queue.peek(now, ok); w != nil; w = bg.queue.peek(now, ok) {
		if err := bg.neverFits(w.need); err != nil {
			// The limits were lowered under it.
			bg.queue.remove(w)
			w.err = err
			w.wake() // a route's caller waits on as long as another target may serve it
			continue
		}
		limit, d := bg.fit(now, w.need)
		if limit != LimitNone {
			if d > 0 {
				b.wakeAt(bg, now, now.Add(d))
			}
			if b.cfg.Aging > 0 && bg.queue.len() > 1 {
				// Aging may put another waiter ahead before capacity
				// returns; look again then.
				b.wakeAt(bg, now, now.Add(b.cfg.Aging))
			}
			return
		}
		bg.queue.take(w)
		w.lease = b.grant(bg, w, now)
		if w.group != nil {
			b.routeGranted(w, now)
		}
		w.wake()
	}
}

// eligible reports whether client may be granted another lease under its
// MaxConcurrent cap. Caller holds b.mu.
func (b *Core) eligible(client string) bool {
	c := b.policy(client).MaxConcurrent
	return c <= 0 || b.active[client] < c
}

// released notes that a lease of client ended; if the client was at its
// cap, its waiters on every budget may now be served. Caller holds b.mu.
func (b *Core) released(client string, now time.Time) {
	capped := !b.eligible(client)
	if b.active[client]--; b.active[client] <= 0 {
		delete(b.active, client)
	}
	if len(b.active) == 0 && b.settled != nil {
		close(b.settled)
		b.settled = nil
	}
	if capped {
		for _, bg := range b.budgets {
			if bg.queue.len() > 0 {
				b.dispatch(bg, now)
			}
		}
	}
}

// wakeAt makes sure dispatch runs on bg at at. Caller holds b.mu.
func (b *Core) wakeAt(bg *budget, now, at time.Time) {
	if bg.timer != nil {
		if !bg.timerAt.After(at) && bg.timerAt.After(now) {
			return // an earlier wake-up is pending; it will re-arm
		}
		bg.timer.Stop()
	}
	bg.timerAt = at
	bg.timerGen++
	gen := bg.timerGen
	bg.timer = b.clock.AfterFunc(at.Sub(now), func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.closed {
			return
		}
		if bg.timerGen == gen { // not replaced by a later wakeAt meanwhile
			bg.timer = nil
		}
		b.dispatch(bg, b.clock.Now())
	})
}

func (b *Core) grant(bg *budget, w *waiter, now time.Time) *lease {
	var id string
	var c *chunk
	if !b.ten.bound(w.client, bg.spec.Key.Model, w.route()) {
		// Grants held to a cap or a money budget are committed one by
		// one with their record, so that a restart knows their client;
		// nor do they count as demand for chunks they cannot draw from.
		c = b.draw(bg, now, w.need.tokens)
		b.noteDemand(bg, now, w.need.tokens)
	}
	if c != nil {
		id = c.leaseID(c.usedReq - 1)
	} else {
		id = newLeaseID(now)
	}
	l := w.spare
	if l == nil {
		l = new(lease)
	}
	w.spare = nil
	*l = lease{b: bg, chunk: c, LeaseRecord: LeaseRecord{
		ID:        id,
		Version:   1,
		Key:       bg.spec.Key,
		Client:    w.client,
		Route:     w.route(),
		Priority:  w.priority,
		State:     LeaseActive,
		Reserved:  w.need.tokens,
		Charged:   w.need.tokens,
		Requests:  1,
		MaxOutput: w.need.maxOutput,
		Burndown:  w.need.burndown,
		GrantedAt: now,
		ExpiresAt: now.Add(b.cfg.LeaseTTL),
	}}
	bg.charge(now, l.Charged, l.Requests)
	b.capCharge(l, w.need, now)
	bg.started(l.Client, now)
	b.active[l.Client]++
	bg.counters.Granted++
	bg.counters.ReservedTokens += l.Reserved
	if w.need.unsetMax {
		bg.counters.UnsetMaxTokens++
	}
	b.rec.note(event{kind: eventGranted, key: l.Key, client: l.Client, at: now,
		reserved: l.Reserved, tokens: l.Charged, requests: l.Requests, waited: now.Sub(w.enqueued)})
	b.leases[l.ID] = l
	b.expiry.push(expiryRef{id: l.ID, at: l.ExpiresAt})
	if c != nil {
		c.leases = append(c.leases, l)
	}
	return l
}

// undoGrant takes back a grant the caller never received. Caller holds b.mu.
func (b *Core) undoGrant(l *lease, now time.Time) {
	if b.leases[l.ID] != l || l.State != LeaseActive {
		return
	}
	delete(b.leases, l.ID)
	l.undone = true
	bg := l.b
	bg.adjust(now, l.GrantedAt, -l.Charged, -l.Requests, false)
	b.undoCaps(l, now)
	bg.ended(l.Client)
	b.released(l.Client, now)
	bg.counters.Granted--
	bg.counters.ReservedTokens -= l.Reserved
	b.rec.note(event{kind: eventUngranted, key: l.Key, client: l.Client, at: l.GrantedAt,
		reserved: l.Reserved, tokens: l.Charged, requests: l.Requests})
	l.State = LeaseCompleted // so that a stale expiry entry skips it
	b.dispatch(bg, now)
}

func (l *lease) public() Lease {
	return Lease{ID: l.ID, Key: l.Key, Reserved: l.Reserved, GrantedAt: l.GrantedAt,
		ExpiresAt: l.ExpiresAt, Burndown: l.Burndown, MaxOutputTokens: l.MaxOutput}
}
