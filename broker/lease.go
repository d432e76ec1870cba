package broker

import (
	"context"
	"fmt"
	"time"
)

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
// against its client. Only the first late completion does so; later ones
// change and count nothing, and fail the same way.
func (b *Core) Complete(ctx context.Context, leaseID string, outcome Outcome, u Usage) (Settlement, error) {
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
		l = b.recoverLease(leaseID, b.clock.Now())
	}
	if l == nil {
		b.mu.Unlock()
		return Settlement{}, notFoundf("lease %q not found: unknown, or forgotten %v after it ended", leaseID, b.cfg.Retention)
	}
	switch {
	case l.State == LeaseCompleted:
		s := Settlement{AlreadyCompleted: true, Charged: l.Charged, Returned: returned(l.Reserved, l.Charged)}
		b.mu.Unlock()
		return s, nil
	case l.State == LeaseExpired && l.Outcome != OutcomeUnknown:
		// Already settled late: the outcome on record is that settlement.
		// Settling again would count another completion (and another
		// throttle, feeding alerts and the adaptive ceiling) for one call.
		s := Settlement{AlreadyCompleted: true, Charged: l.Charged, Returned: returned(l.Reserved, l.Charged)}
		at := l.ExpiresAt
		b.mu.Unlock()
		return s, &Error{Kind: KindPrecondition, Message: fmt.Sprintf("lease %q expired at %s before it was completed; its usage was already recorded", leaseID, at.UTC().Format(time.RFC3339))}
	}
	now := b.clock.Now()
	bg := l.b
	charge, requests := settlement(bg.spec.Key.Scope, u, l.Burndown), int64(1)
	if outcome == OutcomeThrottled || outcome == OutcomeCancelled {
		charge, requests = 0, 0
	}
	dTokens, dRequests := charge-l.Charged, requests-l.Requests
	if l.fixed {
		// Its charge is its chunk's, in full, until the window slides.
		dTokens, dRequests = 0, 0
	} else {
		bg.adjust(now, l.GrantedAt, dTokens, dRequests, outcome == OutcomeThrottled)
	}
	wasExpired := l.State == LeaseExpired
	// Until the settlement is durable, the lease still holds its place
	// against the concurrency limit (settling): a lease granted into that
	// place from a chunk has no record, and the restore's bound on such
	// leases (see restorePhantoms) counts this one as active if a crash
	// loses the settlement.
	pinned := !wasExpired && bg.limits(now).Concurrency > 0
	if pinned {
		bg.settling++
	}
	if !wasExpired {
		bg.ended(l.Client)
		b.released(l.Client, now)
		l.State = LeaseCompleted
		l.EndedAt = now
		b.ended = append(b.ended, endedRef{id: l.ID, at: now})
	}
	var c Change
	b.capAdjust(l, now, dTokens, dRequests, b.settleCost(l, outcome, u), &c)
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
	bg.counters.ReturnedTokens += max(0, -dTokens)
	b.rec.note(event{kind: eventSettled, key: l.Key, client: l.Client, at: now, grantedAt: l.GrantedAt,
		outcome: outcome, usage: u, charge: charge, tokens: dTokens, requests: dRequests, maxOutput: l.MaxOutput})
	if !l.fixed {
		c.Usage = []UsageRecord{{Key: l.Key, Minute: minuteOf(l.GrantedAt), Tokens: dTokens, Requests: dRequests}}
	}
	// The lease is the evidence: held until now, or expired within the
	// window.
	held := !wasExpired || now.Sub(l.EndedAt) <= evidenceWindow
	if outcome == OutcomeThrottled && b.throttled(bg, now, l.GrantedAt, l.Client, held, l.Reserved, 1) {
		c.Adaptive = []AdaptiveRecord{bg.adaptiveRecord()}
	}
	b.dispatch(bg, now)
	b.capsReleased(l, now)
	rec := l.LeaseRecord
	c.Leases = []LeaseRecord{rec}
	b.mu.Unlock()
	b.rec.tidy()

	if b.commitOrRetry(ctx, c) && pinned {
		b.mu.Lock()
		bg.settling--
		b.dispatch(bg, b.clock.Now())
		b.mu.Unlock()
	}
	s := Settlement{Charged: charge, Returned: returned(rec.Reserved, charge)}
	if wasExpired {
		return s, &Error{Kind: KindPrecondition, Message: fmt.Sprintf("lease %q expired at %s before it was completed; its usage is recorded", leaseID, rec.ExpiresAt.UTC().Format(time.RFC3339))}
	}
	return s, nil
}

// returned is what a settlement gives back of a reservation: nothing, not
// a negative amount, when the call used more than it reserved (the usage is
// the caller's figure; the extra is charged to the window all the same).
func returned(reserved, charged int64) int64 { return max(0, reserved-charged) }

// commitOrRetry persists a change the caller has already been promised. If
// the store fails, the change is kept and retried by Run: the in-memory
// state is already ahead of the store, which errs on the side of charging.
// It reports whether c is durable now.
func (b *Core) commitOrRetry(ctx context.Context, c Change) bool {
	if err := b.store.Commit(context.WithoutCancel(ctx), c); err != nil {
		b.log.Error("commit failed; will retry", "err", err)
		b.mu.Lock()
		b.retry = append(b.retry, c)
		b.mu.Unlock()
		return false
	}
	return true
}

// Renew extends an active lease to now + extend (Config.LeaseTTL when
// extend is 0; at most Config.MaxLeaseTTL). A lease is never shortened.
func (b *Core) Renew(ctx context.Context, leaseID string, extend time.Duration) (time.Time, error) {
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
	if l == nil {
		l = b.recoverLease(leaseID, b.clock.Now())
	}
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
		b.expiry.push(expiryRef{id: l.ID, at: at})
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
// client is who reports it ("" is "anonymous", as in Acquire): it lowers the
// ceiling only if client holds, or held within the last minute, a lease on
// the budget (see the adaptive rules in adaptive.go and the package doc).
func (b *Core) ReportThrottle(ctx context.Context, modelID, region, client string) (Key, error) {
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
	if client == "" {
		client = "anonymous" // as Acquire names it, so its leases are its evidence
	}
	bg.counters.ReportedThrottles++
	b.rec.note(event{kind: eventReportedThrottle, key: key, client: client, at: b.clock.Now()})
	var c Change
	if b.throttled(bg, b.clock.Now(), time.Time{}, client, false, 0, 0) {
		c.Adaptive = []AdaptiveRecord{bg.adaptiveRecord()}
	}
	b.mu.Unlock()
	b.rec.tidy()
	if !c.empty() {
		b.commitOrRetry(ctx, c)
	}
	return key, nil
}

// LeaseClient returns the client a lease was granted to ("" if unknown).
func (b *Core) LeaseClient(id string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if l := b.leases[id]; l != nil {
		return l.Client
	}
	return ""
}
