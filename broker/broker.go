package broker

import (
	"container/heap"
	"context"
	"crypto/rand"
	"encoding/base32"
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

// Config holds the broker's tunables. The zero value works.
type Config struct {
	// DefaultRegion is used when a request names no Region. Default us-east-1.
	DefaultRegion string
	// Margin scales quotas into effective limits, leaving headroom for
	// traffic that bypasses the broker. Default 0.9; 1 uses the full quota.
	Margin float64
	// LeaseTTL is how long a lease lives unless renewed. Default 5 minutes:
	// longer than almost any non-streaming Bedrock call.
	LeaseTTL time.Duration
	// MaxLeaseTTL bounds RenewLease. Default 1 hour.
	MaxLeaseTTL time.Duration
	// MaxWait bounds how long AcquireLease waits, whatever the caller asks.
	// Default 5 minutes.
	MaxWait time.Duration
	// Retention is how long an ended lease is remembered, so that a repeated
	// or late completion gets a precise answer. Default 5 minutes; at least
	// 2 minutes, so that restart always sees the leases of the last minute
	// window. Memory and store size grow with grant rate x (LeaseTTL +
	// Retention) at about 300 bytes a lease; the grant rate is itself bounded
	// by the budgets' RPM.
	Retention time.Duration
	// UsageRetention is how long per-minute usage is kept. Default 48 hours;
	// at least a day, which the TPD window needs.
	UsageRetention time.Duration
	// SweepInterval is how often Run expires leases and forgets old ones.
	// Default 1 second.
	SweepInterval time.Duration
	// Adaptive tunes the ceilings learned from throttles.
	Adaptive AdaptiveConfig
	// Clients sets per-client policies by client name; others get
	// DefaultClient.
	Clients       map[string]ClientPolicy
	DefaultClient ClientPolicy
	// Aging promotes a waiter one priority level per Aging waited, so low
	// priority is delayed, never starved. Default 30 s; negative disables.
	Aging time.Duration
	// DailyReserve keeps a share of each budget's TPD out of reach of a
	// priority, e.g. {PriorityBatch: 0.2}: batch work stops at 80% of the
	// day's tokens, leaving the rest to interactive and standard traffic.
	DailyReserve map[Priority]float64
	// Logger receives the broker's logs; nil discards them.
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.DefaultRegion == "" {
		c.DefaultRegion = "us-east-1"
	}
	if !regionRE.MatchString(c.DefaultRegion) {
		return fmt.Errorf("config DefaultRegion: %q is not an AWS Region name", c.DefaultRegion)
	}
	if c.Margin == 0 {
		c.Margin = 0.9
	}
	if !(c.Margin > 0 && c.Margin <= 1) {
		return fmt.Errorf("config Margin: %v is outside (0, 1]", c.Margin)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.LeaseTTL, 5*time.Minute)
	def(&c.MaxLeaseTTL, time.Hour)
	def(&c.MaxWait, 5*time.Minute)
	def(&c.Retention, 5*time.Minute)
	def(&c.UsageRetention, 48*time.Hour)
	def(&c.SweepInterval, time.Second)
	switch {
	case c.LeaseTTL < time.Second:
		return fmt.Errorf("config LeaseTTL: %v is below 1s", c.LeaseTTL)
	case c.MaxLeaseTTL < c.LeaseTTL:
		return fmt.Errorf("config MaxLeaseTTL: %v is below LeaseTTL %v", c.MaxLeaseTTL, c.LeaseTTL)
	case c.MaxWait < 0:
		return fmt.Errorf("config MaxWait: %v is negative", c.MaxWait)
	case c.Retention < 2*minuteSpan:
		return fmt.Errorf("config Retention: %v is below %v", c.Retention, 2*minuteSpan)
	case c.UsageRetention < daySpan:
		return fmt.Errorf("config UsageRetention: %v is below %v", c.UsageRetention, daySpan)
	case c.SweepInterval <= 0:
		return fmt.Errorf("config SweepInterval: %v is not positive", c.SweepInterval)
	}
	if err := c.Adaptive.setDefaults(); err != nil {
		return err
	}
	if c.Aging == 0 {
		c.Aging = 30 * time.Second
	}
	for p, r := range c.DailyReserve {
		if p < PriorityInteractive || p > PriorityBatch || !(r >= 0 && r < 1) {
			return fmt.Errorf("config DailyReserve[%v]: %v must be a priority and a share in [0, 1)", p, r)
		}
	}
	if err := c.DefaultClient.validate("DefaultClient"); err != nil {
		return err
	}
	clients := make(map[string]ClientPolicy, len(c.Clients)) // not the caller's map
	for name, cp := range c.Clients {
		if err := cp.validate("Clients[" + name + "]"); err != nil {
			return err
		}
		clients[name] = cp
	}
	c.Clients = clients
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Broker grants and settles leases against budgets. It is safe for
// concurrent use. Start Run to expire leases; Close it when done.
type Broker struct {
	store Store
	clock Clock
	cfg   Config
	log   *slog.Logger

	// mu guards everything below, and the state of every budget, lease and
	// waiter. It is never held during a Store call.
	mu      sync.Mutex
	budgets map[Key]*budget
	leases  map[string]*lease
	expiry  expiryHeap // active leases by ExpiresAt (stale entries skipped)
	ended   []endedRef // ended leases in EndedAt order, for forgetting
	retry   []Change   // commits that failed after the answer was given
	closed  bool

	usageGCAt time.Time // when Sweep last dropped old usage
	discovery DiscoveryStatus
	source    QuotaSource      // for RefreshNow; nil: static budgets
	active    map[string]int64 // active leases per client, for MaxConcurrent
}

type lease struct {
	LeaseRecord
	b *budget
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
	b := &Broker{
		store:   store,
		clock:   clock,
		cfg:     cfg,
		log:     cfg.Logger,
		budgets: make(map[Key]*budget),
		leases:  make(map[string]*lease),
		active:  make(map[string]int64),
	}
	b.restore(snap)
	return b, nil
}

// restore rebuilds the windows from what was granted before the restart:
// the minute windows from the leases granted in the last minute, the day
// window from per-minute usage. This is what keeps the grant invariant
// across a crash.
func (b *Broker) restore(snap Snapshot) {
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
			bg.adaptive = adaptive{tokens: ceiling{Wmax: a.TokensWmax}, requests: ceiling{Wmax: a.RequestsWmax},
				lastDecrease: a.LastDecrease, throttles: a.Throttles}
		}
	}
	for _, u := range snap.Usage {
		if bg := b.budgets[u.Key]; bg != nil {
			bg.dayTokens.add(now, time.Unix(u.Minute*60, 0), u.Tokens)
		}
	}
	recs := slices.Clone(snap.Leases)
	slices.SortFunc(recs, func(x, y LeaseRecord) int { return x.EndedAt.Compare(y.EndedAt) })
	var expired Change
	for _, r := range recs {
		bg := b.budgets[r.Key]
		if bg == nil {
			// Its budget is gone from the configuration: nothing to enforce.
			expired.DeleteLeases = append(expired.DeleteLeases, r.ID)
			continue
		}
		l := &lease{LeaseRecord: r, b: bg}
		b.leases[r.ID] = l
		bg.requests.add(now, r.GrantedAt, r.Requests)
		bg.tokens.add(now, r.GrantedAt, r.Charged)
		switch {
		case r.State == LeaseActive && r.ExpiresAt.After(now):
			bg.concurrent++
			b.active[r.Client]++
			heap.Push(&b.expiry, expiryRef{id: r.ID, at: r.ExpiresAt})
		case r.State == LeaseActive:
			b.expire(l, now)
			expired.Leases = append(expired.Leases, l.LeaseRecord)
		default:
			b.ended = append(b.ended, endedRef{id: r.ID, at: r.EndedAt})
		}
	}
	if !expired.empty() {
		b.retry = append(b.retry, expired)
	}
	b.log.Info("state restored", "budgets", len(b.budgets), "leases", len(b.leases), "usage_records", len(snap.Usage))
}

// Close stops the broker: waiting callers are answered with KindUnavailable
// and new calls refused. Outstanding leases stay on record.
func (b *Broker) Close() {
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
			close(w.ready)
		}
	}
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
	// blocks it.
	RetryAfter time.Duration
	Blocked    Limit
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
	return nil
}

// Acquire grants a lease for one call, waiting up to req.Wait (clamped to
// Config.MaxWait) for capacity. It returns a refusal Decision when the wait
// runs out, and an error when the request is invalid, can never fit, or the
// broker cannot serve; ctx ending abandons the wait with ctx's error.
func (b *Broker) Acquire(ctx context.Context, req AcquireRequest) (Decision, error) {
	if req.Priority == 0 {
		req.Priority = PriorityStandard
	}
	if req.Client == "" {
		req.Client = "anonymous"
	}
	if err := req.validate(); err != nil {
		return Decision{}, err
	}
	key, err := ParseModelID(req.ModelID, req.Region, b.cfg.DefaultRegion)
	if err != nil {
		return Decision{}, err
	}
	wait := min(req.Wait, b.cfg.MaxWait)

	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return Decision{}, &Error{Kind: KindUnavailable, Message: "broker is shutting down"}
	}
	bg := b.budgets[key]
	if bg == nil {
		b.mu.Unlock()
		return Decision{}, notFoundf("no budget for %s %s in %s", key.Scope, key.Model, key.Region)
	}
	n := need{maxOutput: req.MaxOutputTokens, burndown: bg.spec.burndown(), base: req.InputTokens + req.CacheWriteTokens, priority: req.Priority}
	if n.maxOutput == 0 {
		n.maxOutput, n.unsetMax = bg.spec.maxOutput(), true
	}
	n.tokens = reservation(req.InputTokens, req.CacheWriteTokens, n.maxOutput, n.burndown)
	if err := bg.neverFits(n); err != nil {
		bg.counters.Refused++
		b.mu.Unlock()
		return Decision{}, err
	}
	now := b.clock.Now()
	w := &waiter{client: req.Client, weight: b.policy(req.Client).Weight, priority: req.Priority, need: n, enqueued: now, ready: make(chan struct{})}
	bg.queue.push(w)
	b.dispatch(bg, now)
	if !w.queued || wait <= 0 {
		d, err := b.settleWait(bg, w, now)
		b.mu.Unlock()
		return b.finish(ctx, d, err)
	}
	b.mu.Unlock()

	timeout, stop := after(b.clock, wait)
	defer stop()
	select {
	case <-w.ready:
	case <-timeout:
	case <-ctx.Done():
		b.mu.Lock()
		defer b.mu.Unlock()
		if w.lease != nil {
			b.undoGrant(w.lease, b.clock.Now())
		} else if w.queued {
			bg.queue.remove(w)
			b.dispatch(bg, b.clock.Now())
		}
		return Decision{}, ctx.Err()
	}
	b.mu.Lock()
	d, err := b.settleWait(bg, w, b.clock.Now())
	b.mu.Unlock()
	return b.finish(ctx, d, err)
}

// settleWait turns a waiter into a Decision once its wait is over: granted,
// failed, or refused with the time until it would fit. Caller holds b.mu.
func (b *Broker) settleWait(bg *budget, w *waiter, now time.Time) (Decision, error) {
	switch {
	case w.lease != nil:
		return Decision{Key: bg.spec.Key, Granted: true, Lease: w.lease.public(), Waited: now.Sub(w.enqueued)}, nil
	case w.err != nil:
		return Decision{}, w.err
	}
	bg.queue.remove(w)
	b.dispatch(bg, now) // w may have been the head that held others back
	bg.counters.Refused++
	limit, d := bg.fit(now, w.need)
	if limit == LimitNone {
		// It fits on the windows but waiters ahead of it have the capacity.
		limit, d = LimitConcurrency, 0
		if head := bg.queue.peek(now, b.eligible); head != nil {
			limit, d = bg.fit(now, head.need)
		}
	}
	if d <= 0 {
		// Only a release or settlement can make room; suggest a short,
		// bounded pause rather than a guess at when that happens.
		d = time.Second
	}
	return Decision{Key: bg.spec.Key, RetryAfter: d, Blocked: limit, Waited: now.Sub(w.enqueued)}, nil
}

// finish persists a grant before it is returned. If the store fails, the
// grant is undone: a lease the caller never heard of must not hold capacity,
// and one it did hear of must be on disk.
func (b *Broker) finish(ctx context.Context, d Decision, err error) (Decision, error) {
	if err != nil || !d.Granted {
		return d, err
	}
	b.mu.Lock()
	l := b.leases[d.Lease.ID]
	rec := l.LeaseRecord
	b.mu.Unlock()
	c := Change{
		Leases: []LeaseRecord{rec},
		Usage:  []UsageRecord{{Key: rec.Key, Minute: minuteOf(rec.GrantedAt), Tokens: rec.Charged, Requests: rec.Requests}},
	}
	if err := b.store.Commit(ctx, c); err != nil {
		b.mu.Lock()
		b.undoGrant(l, b.clock.Now())
		b.mu.Unlock()
		return Decision{}, &Error{Kind: KindUnavailable, Message: "lease could not be recorded", Err: err}
	}
	return d, nil
}

// dispatch grants waiters of bg in queue order while they fit, and arms a
// timer for when the head will fit. Caller holds b.mu.
func (b *Broker) dispatch(bg *budget, now time.Time) {
	for w := bg.queue.peek(now, b.eligible); w != nil; w = bg.queue.peek(now, b.eligible) {
		if err := bg.neverFits(w.need); err != nil {
			// The limits were lowered under it.
			bg.queue.remove(w)
			w.err = err
			close(w.ready)
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
		close(w.ready)
	}
}

// eligible reports whether client may be granted another lease under its
// MaxConcurrent cap. Caller holds b.mu.
func (b *Broker) eligible(client string) bool {
	c := b.policy(client).MaxConcurrent
	return c <= 0 || b.active[client] < c
}

// released notes that a lease of client ended; if the client was at its
// cap, its waiters on every budget may now be served. Caller holds b.mu.
func (b *Broker) released(client string, now time.Time) {
	capped := !b.eligible(client)
	if b.active[client]--; b.active[client] <= 0 {
		delete(b.active, client)
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
func (b *Broker) wakeAt(bg *budget, now, at time.Time) {
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

func (b *Broker) grant(bg *budget, w *waiter, now time.Time) *lease {
	l := &lease{b: bg, LeaseRecord: LeaseRecord{
		ID:        newLeaseID(now),
		Version:   1,
		Key:       bg.spec.Key,
		Client:    w.client,
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
	bg.concurrent++
	b.active[l.Client]++
	bg.counters.Granted++
	bg.counters.ReservedTokens += l.Reserved
	if w.need.unsetMax {
		bg.counters.UnsetMaxTokens++
	}
	b.leases[l.ID] = l
	heap.Push(&b.expiry, expiryRef{id: l.ID, at: l.ExpiresAt})
	return l
}

// undoGrant takes back a grant the caller never received. Caller holds b.mu.
func (b *Broker) undoGrant(l *lease, now time.Time) {
	if b.leases[l.ID] != l || l.State != LeaseActive {
		return
	}
	delete(b.leases, l.ID)
	bg := l.b
	bg.adjust(now, l.GrantedAt, -l.Charged, -l.Requests)
	bg.concurrent--
	b.released(l.Client, now)
	bg.counters.Granted--
	bg.counters.ReservedTokens -= l.Reserved
	l.State = LeaseCompleted // so that a stale expiry entry skips it
	b.dispatch(bg, now)
}

func (l *lease) public() Lease {
	return Lease{ID: l.ID, Key: l.Key, Reserved: l.Reserved, GrantedAt: l.GrantedAt,
		ExpiresAt: l.ExpiresAt, Burndown: l.Burndown, MaxOutputTokens: l.MaxOutput}
}

// Settlement is the result of Complete.
type Settlement struct {
	AlreadyCompleted bool
	Charged          int64 // tokens the call is charged
	Returned         int64 // reserved tokens given back
}

func validateLeaseID(id string) error {
	switch {
	case id == "":
		return invalidf("lease_id", "is empty")
	case len(id) > maxLeaseIDLen:
		return invalidf("lease_id", "is %d bytes long; at most %d", len(id), maxLeaseIDLen)
	}
	return nil
}

func validateUsage(u Usage) error {
	for _, f := range []struct {
		name string
		v    int64
	}{{"usage.input_tokens", u.InputTokens}, {"usage.output_tokens", u.OutputTokens},
		{"usage.cache_read_input_tokens", u.CacheReadInputTokens}, {"usage.cache_write_input_tokens", u.CacheWriteInputTokens}} {
		if f.v < 0 {
			return invalidf(f.name, "is negative (%d)", f.v)
		}
		if f.v > maxTokensPerCall {
			return invalidf(f.name, "%d is beyond any model (at most %d)", f.v, maxTokensPerCall)
		}
	}
	return nil
}

// Complete settles a lease with the real usage of its call: the charge
// becomes input + cache_write + output x burndown (nothing for a throttled or
// cancelled call, which also gives its request back) and the rest of the
// reservation returns to the budget. Completing a completed lease changes
// nothing. Completing an expired lease records the usage and corrects the
// charge, but fails with KindPrecondition: the lease still counts as expired
// against its client.
func (b *Broker) Complete(ctx context.Context, leaseID string, outcome Outcome, u Usage) (Settlement, error) {
	if err := validateLeaseID(leaseID); err != nil {
		return Settlement{}, err
	}
	if outcome < OutcomeSuccess || outcome > OutcomeCancelled {
		return Settlement{}, invalidf("outcome", "must be success, throttled, error or cancelled")
	}
	if err := validateUsage(u); err != nil {
		return Settlement{}, err
	}
	b.mu.Lock()
	l := b.leases[leaseID]
	if l == nil {
		b.mu.Unlock()
		return Settlement{}, notFoundf("lease %q not found: unknown, or forgotten %v after it ended", leaseID, b.cfg.Retention)
	}
	if l.State == LeaseCompleted {
		s := Settlement{AlreadyCompleted: true, Charged: l.Charged, Returned: l.Reserved - l.Charged}
		b.mu.Unlock()
		return s, nil
	}
	now := b.clock.Now()
	bg := l.b
	charge, requests := settlement(u, l.Burndown), int64(1)
	if outcome == OutcomeThrottled || outcome == OutcomeCancelled {
		charge, requests = 0, 0
	}
	dTokens, dRequests := charge-l.Charged, requests-l.Requests
	bg.adjust(now, l.GrantedAt, dTokens, dRequests)
	wasExpired := l.State == LeaseExpired
	if !wasExpired {
		bg.concurrent--
		b.released(l.Client, now)
		l.State = LeaseCompleted
		l.EndedAt = now
		b.ended = append(b.ended, endedRef{id: l.ID, at: now})
	}
	l.Outcome, l.Usage, l.Charged, l.Requests = outcome, u, charge, requests
	l.Version++
	bg.counters.Completed++
	switch outcome {
	case OutcomeThrottled:
		bg.counters.Throttled++
	case OutcomeError:
		bg.counters.Errors++
	case OutcomeCancelled:
		bg.counters.Cancelled++
	}
	bg.counters.SettledTokens += charge
	bg.counters.ReturnedTokens -= dTokens
	c := Change{Usage: []UsageRecord{{Key: l.Key, Minute: minuteOf(l.GrantedAt), Tokens: dTokens, Requests: dRequests}}}
	if outcome == OutcomeThrottled && b.throttled(bg, now, l.GrantedAt) {
		c.Adaptive = []AdaptiveRecord{bg.adaptiveRecord()}
	}
	b.dispatch(bg, now)
	rec := l.LeaseRecord
	c.Leases = []LeaseRecord{rec}
	b.mu.Unlock()

	b.commitOrRetry(ctx, c)
	s := Settlement{Charged: charge, Returned: rec.Reserved - charge}
	if wasExpired {
		return s, &Error{Kind: KindPrecondition, Message: fmt.Sprintf("lease %q expired at %s before it was completed; its usage is recorded", leaseID, rec.ExpiresAt.UTC().Format(time.RFC3339))}
	}
	return s, nil
}

// commitOrRetry persists a change the caller has already been promised. If
// the store fails, the change is kept and retried by Run: the in-memory
// state is already ahead of the store, which errs on the side of charging.
func (b *Broker) commitOrRetry(ctx context.Context, c Change) {
	if err := b.store.Commit(context.WithoutCancel(ctx), c); err != nil {
		b.log.Error("commit failed; will retry", "err", err)
		b.mu.Lock()
		b.retry = append(b.retry, c)
		b.mu.Unlock()
	}
}

// Renew extends an active lease to now + extend (Config.LeaseTTL when
// extend is 0; at most Config.MaxLeaseTTL). A lease is never shortened.
func (b *Broker) Renew(ctx context.Context, leaseID string, extend time.Duration) (time.Time, error) {
	if err := validateLeaseID(leaseID); err != nil {
		return time.Time{}, err
	}
	if extend < 0 {
		return time.Time{}, invalidf("extend", "is negative (%v)", extend)
	}
	if extend == 0 {
		extend = b.cfg.LeaseTTL
	}
	extend = min(extend, b.cfg.MaxLeaseTTL)
	b.mu.Lock()
	l := b.leases[leaseID]
	switch {
	case l == nil:
		b.mu.Unlock()
		return time.Time{}, notFoundf("lease %q not found", leaseID)
	case l.State == LeaseExpired:
		b.mu.Unlock()
		return time.Time{}, &Error{Kind: KindPrecondition, Message: fmt.Sprintf("lease %q has expired", leaseID)}
	case l.State == LeaseCompleted:
		b.mu.Unlock()
		return time.Time{}, &Error{Kind: KindPrecondition, Message: fmt.Sprintf("lease %q is already completed", leaseID)}
	}
	if at := b.clock.Now().Add(extend); at.After(l.ExpiresAt) {
		l.ExpiresAt = at
		l.Version++
		heap.Push(&b.expiry, expiryRef{id: l.ID, at: at})
	}
	rec := l.LeaseRecord
	b.mu.Unlock()
	if err := b.store.Commit(ctx, Change{Leases: []LeaseRecord{rec}}); err != nil {
		// The old expiry is on disk; after a restart the lease would expire
		// early, which only ever over-charges. Tell the caller anyway.
		return time.Time{}, &Error{Kind: KindUnavailable, Message: "renewal could not be recorded", Err: err}
	}
	return rec.ExpiresAt, nil
}

// ReportThrottle records a throttle Bedrock returned outside any lease.
func (b *Broker) ReportThrottle(ctx context.Context, modelID, region string) (Key, error) {
	key, err := ParseModelID(modelID, region, b.cfg.DefaultRegion)
	if err != nil {
		return Key{}, err
	}
	b.mu.Lock()
	bg := b.budgets[key]
	if bg == nil {
		b.mu.Unlock()
		return Key{}, notFoundf("no budget for %s %s in %s", key.Scope, key.Model, key.Region)
	}
	bg.counters.ReportedThrottles++
	var c Change
	if b.throttled(bg, b.clock.Now(), time.Time{}) {
		c.Adaptive = []AdaptiveRecord{bg.adaptiveRecord()}
	}
	b.mu.Unlock()
	if !c.empty() {
		b.commitOrRetry(ctx, c)
	}
	return key, nil
}

// Run expires leases, forgets old ones and retries failed commits until ctx
// ends. It returns ctx's error.
func (b *Broker) Run(ctx context.Context) error {
	for {
		tick, stop := after(b.clock, b.cfg.SweepInterval)
		select {
		case <-ctx.Done():
			stop()
			return ctx.Err()
		case <-tick:
		}
		b.Sweep(ctx)
	}
}

// Sweep does one round of Run's work. It is exported for tests and tools
// that drive the broker without Run.
func (b *Broker) Sweep(ctx context.Context) {
	b.mu.Lock()
	now := b.clock.Now()
	var c Change
	for _, r := range b.retry {
		c.Adaptive = append(c.Adaptive, r.Adaptive...)
		c.Leases = append(c.Leases, r.Leases...)
		c.Usage = append(c.Usage, r.Usage...)
		c.DeleteLeases = append(c.DeleteLeases, r.DeleteLeases...)
	}
	b.retry = nil
	touched := map[*budget]bool{}
	for len(b.expiry) > 0 && !b.expiry[0].at.After(now) {
		ref := heap.Pop(&b.expiry).(expiryRef)
		l := b.leases[ref.id]
		if l == nil || l.State != LeaseActive || !l.ExpiresAt.Equal(ref.at) {
			continue // ended, or renewed since this entry
		}
		b.expire(l, now)
		touched[l.b] = true
		c.Leases = append(c.Leases, l.LeaseRecord)
	}
	for bg := range touched {
		b.dispatch(bg, now)
	}
	for len(b.ended) > 0 && now.Sub(b.ended[0].at) > b.cfg.Retention {
		id := b.ended[0].id
		b.ended = b.ended[1:]
		if l := b.leases[id]; l != nil && l.State != LeaseActive {
			delete(b.leases, id)
			c.DeleteLeases = append(c.DeleteLeases, id)
		}
	}
	if now.Sub(b.usageGCAt) >= time.Minute {
		b.usageGCAt = now
		c.DeleteUsageBefore = minuteOf(now.Add(-b.cfg.UsageRetention))
	}
	b.mu.Unlock()
	if c.empty() {
		return
	}
	if err := b.store.Commit(context.WithoutCancel(ctx), c); err != nil {
		b.log.Error("sweep commit failed; will retry", "err", err)
		c.DeleteUsageBefore = 0
		b.mu.Lock()
		b.retry = append(b.retry, c)
		b.mu.Unlock()
	}
}

// expire ends an active lease that outlived its TTL. It stays charged at
// its reservation: the call may have happened. Caller holds b.mu.
func (b *Broker) expire(l *lease, now time.Time) {
	l.State = LeaseExpired
	l.EndedAt = now
	l.Version++
	l.b.concurrent--
	b.released(l.Client, now)
	l.b.counters.Expired++
	b.ended = append(b.ended, endedRef{id: l.ID, at: now})
	b.log.Warn("lease expired unsettled", "lease_id", l.ID, "client", l.Client, "budget", l.Key.String())
}

func minuteOf(t time.Time) int64 { return t.Unix() / 60 }

// leaseIDEncoding is base32 with an alphabet in ASCII order, so ids sort
// like their bytes.
var leaseIDEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// newLeaseID returns 48 bits of grant time (milliseconds) followed by 80
// random bits. The random part makes an id unguessable, so knowing one is
// enough to settle that lease and no other; the time prefix makes ids
// ascend, so a B+tree store appends new leases at its right edge instead of
// dirtying a random page per grant.
func newLeaseID(now time.Time) string {
	var p [16]byte
	ms := uint64(now.UnixMilli())
	for i := 5; i >= 0; i-- {
		p[i] = byte(ms)
		ms >>= 8
	}
	rand.Read(p[6:]) // never fails (crypto/rand since Go 1.24)
	return leaseIDEncoding.EncodeToString(p[:])
}

type expiryRef struct {
	id string
	at time.Time
}

type expiryHeap []expiryRef

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryRef)) }
func (h *expiryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// ClientPolicy is how the broker treats one client.
type ClientPolicy struct {
	// Weight is the client's share of a budget relative to other clients of
	// the same priority waiting on it. Default 1.
	Weight float64
	// MaxConcurrent caps the client's active leases across all budgets;
	// 0 means no cap. A capped client's waiters wait (fairly) while others
	// are served.
	MaxConcurrent int64
}

func (p *ClientPolicy) validate(name string) error {
	if p.Weight == 0 {
		p.Weight = 1
	}
	if !(p.Weight > 0 && p.Weight <= 1000) {
		return fmt.Errorf("config %s.Weight: %v is outside (0, 1000]", name, p.Weight)
	}
	if p.MaxConcurrent < 0 {
		return fmt.Errorf("config %s.MaxConcurrent: %d is negative", name, p.MaxConcurrent)
	}
	return nil
}

func (b *Broker) policy(client string) ClientPolicy {
	if p, ok := b.cfg.Clients[client]; ok {
		return p
	}
	return b.cfg.DefaultClient
}
