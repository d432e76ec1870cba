package broker

import (
	"context"
	"fmt"
	"time"
)

// QuotaSource discovers the account's quotas and turns them into budget
// specs. The AWS adapter (broker/awsquota) is one; a source must report what
// it could not turn into a budget rather than drop it.
type QuotaSource interface {
	Discover(ctx context.Context) (Discovery, error)
}

// Discovery is one run of a QuotaSource.
type Discovery struct {
	Specs []Spec
	// Skipped lists every quota that did not become (part of) a budget, and
	// why: not a runtime quota, no model matched, a variant not brokered.
	Skipped []SkippedQuota
	// Provisioned lists the account's Provisioned Throughputs. They have
	// capacity of their own (model units), outside the on-demand quotas the
	// broker brokers; the report lists them so operators see all capacity.
	Provisioned []ProvisionedThroughput
	// Notes are problems that did not fail the discovery (e.g. the
	// Provisioned Throughput listing was denied).
	Notes []string
	At    time.Time
}

// ProvisionedThroughput is one Provisioned Throughput of the account.
type ProvisionedThroughput struct {
	Region, Name, ARN, Model, Status string
	ModelUnits                       int64
	Commitment                       string // e.g. ONE_MONTH; empty for no commitment
}

// SkippedQuota is a quota a source could not use.
type SkippedQuota struct {
	Region, Code, Name, Reason string
}

// DiscoveryStatus is what the broker knows of its quota source.
type DiscoveryStatus struct {
	LastSuccess time.Time // zero: never
	LastAttempt time.Time
	LastError   string // of the last attempt; empty when it succeeded
	Skipped     []SkippedQuota
	Provisioned []ProvisionedThroughput
	Notes       []string
	Enabled     bool // a source is configured
}

// Refresh runs src once and applies what it found. Budgets the source no
// longer reports keep their last spec (and its age shows in the report):
// a quota that vanished from one listing is likelier a glitch than a
// revocation.
func (b *Broker) Refresh(ctx context.Context, src QuotaSource) error {
	now := b.clock.Now()
	d, err := src.Discover(ctx)
	b.mu.Lock()
	b.discovery.LastAttempt = now
	if err != nil {
		b.discovery.LastError = err.Error()
		b.mu.Unlock()
		return fmt.Errorf("discover quotas: %w", err)
	}
	b.mu.Unlock()
	if err := b.SetSpecs(ctx, d.Specs); err != nil {
		b.mu.Lock()
		b.discovery.LastError = err.Error()
		b.mu.Unlock()
		return err
	}
	b.mu.Lock()
	b.discovery.LastSuccess, b.discovery.LastError, b.discovery.Skipped = now, "", d.Skipped
	b.discovery.Provisioned, b.discovery.Notes = d.Provisioned, d.Notes
	b.mu.Unlock()
	return nil
}

// RefreshNow runs the source that RunRefresh was started with, at once.
// It fails with KindPrecondition when there is none.
func (b *Broker) RefreshNow(ctx context.Context) error {
	b.mu.Lock()
	src := b.source
	b.mu.Unlock()
	if src == nil {
		return &Error{Kind: KindPrecondition, Message: "no quota source: budgets are static (start the broker with --aws or --aws-endpoint)"}
	}
	if err := b.Refresh(ctx, src); err != nil {
		return &Error{Kind: KindUnavailable, Message: "quota discovery failed; serving the last known quotas", Err: err}
	}
	return nil
}

// UseSource makes src the broker's quota source for RefreshNow without
// starting a loop (RunRefresh does both).
func (b *Broker) UseSource(src QuotaSource) {
	b.mu.Lock()
	b.source = src
	b.mu.Unlock()
}

// RunRefresh refreshes from src every interval until ctx ends, starting at
// once unless a refresh already succeeded. A failed refresh is retried
// sooner, with exponential backoff from 5 s up to the interval; the broker
// keeps serving the last known quotas meanwhile.
func (b *Broker) RunRefresh(ctx context.Context, src QuotaSource, interval time.Duration) error {
	b.UseSource(src)
	backoff := 5 * time.Second
	next := interval
	if b.DiscoveryStatus().LastSuccess.IsZero() {
		next = 0
	}
	for {
		tick, stop := after(b.clock, next)
		select {
		case <-ctx.Done():
			stop()
			return ctx.Err()
		case <-tick:
		}
		if err := b.Refresh(ctx, src); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.log.Warn("quota refresh failed; serving the last known quotas", "err", err, "retry_in", backoff)
			next = backoff
			backoff = min(2*backoff, interval)
			continue
		}
		backoff = 5 * time.Second
		next = interval
	}
}

// DiscoveryStatus reports the last refresh.
func (b *Broker) DiscoveryStatus() DiscoveryStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.discovery
	s.Skipped = append([]SkippedQuota(nil), s.Skipped...)
	s.Enabled = b.source != nil
	return s
}
