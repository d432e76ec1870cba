package broker

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
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
	// capacity of their own (model units), outside the on-demand quotas;
	// the report lists them so operators see all capacity, and one with a
	// budget (keyed by its ARN, capacity stated by the operator) is a
	// target like any other while it is InService.
	Provisioned []ProvisionedThroughput
	// ProvisionedRegions are the Regions whose Provisioned Throughput
	// listing succeeded: the provisioned budgets of these Regions serve
	// only while their throughput is listed InService (retire.go).
	ProvisionedRegions []string
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

// Refresher runs the quota source and hands what it finds to the core
// (SetSpecs, the one method it needs of it). It owns its loop (RunRefresh)
// and its state: mu guards the status and the source, and is never held
// while discovering or while calling the core.
type Refresher struct {
	core  specSetter
	clock Clock
	log   *slog.Logger

	mu     sync.Mutex
	status DiscoveryStatus
	source QuotaSource // for RefreshNow; nil: static budgets
}

// specSetter is what the Refresher needs of the core.
type specSetter interface {
	SetSpecs(ctx context.Context, specs []Spec) error
	// discovered derives the routes again once specs are set (route.go).
	discovered(specs []Spec) error
	SetProvisioned(st ProvisionedState) []string
}

// Refresh runs src once and applies what it found. Budgets the source no
// longer reports keep their last spec (and its age shows in the report):
// a quota that vanished from one listing is likelier a glitch than a
// revocation.
func (r *Refresher) Refresh(ctx context.Context, src QuotaSource) error {
	now := r.clock.Now()
	d, err := src.Discover(ctx)
	r.mu.Lock()
	r.status.LastAttempt = now
	if err != nil {
		r.status.LastError = err.Error()
		r.mu.Unlock()
		return fmt.Errorf("discover quotas: %w", err)
	}
	r.mu.Unlock()
	if err := r.core.SetSpecs(ctx, d.Specs); err != nil {
		r.mu.Lock()
		r.status.LastError = err.Error()
		r.mu.Unlock()
		return err
	}
	// Throughputs gone retire their budgets before the routes are derived
	// again, so that a derived route never takes one back.
	notes := slices.Clip(d.Notes)
	for _, n := range r.core.SetProvisioned(ProvisionedState{Regions: d.ProvisionedRegions, Throughputs: d.Provisioned, At: now}) {
		r.log.Warn("provisioned throughput", "note", n)
		notes = append(notes, n)
	}
	// The refresh stands even if its routes cannot follow: the budgets
	// are right, and the routes in service still have budgets behind
	// every target. The report shows why (a note), and so does the log.
	if err := r.core.discovered(d.Specs); err != nil {
		r.log.Error("quota refresh: routes kept as they were", "err", err)
		notes = append(notes, err.Error())
	}
	r.mu.Lock()
	r.status.LastSuccess, r.status.LastError, r.status.Skipped = now, "", d.Skipped
	r.status.Provisioned, r.status.Notes = d.Provisioned, notes
	r.mu.Unlock()
	return nil
}

// RefreshNow runs the source that RunRefresh was started with, at once.
// It fails with KindPrecondition when there is none.
func (r *Refresher) RefreshNow(ctx context.Context) error {
	r.mu.Lock()
	src := r.source
	r.mu.Unlock()
	if src == nil {
		return &Error{Kind: KindPrecondition, Message: "no quota source: budgets are static (start the broker with --aws or --aws-endpoint)"}
	}
	if err := r.Refresh(ctx, src); err != nil {
		return &Error{Kind: KindUnavailable, Message: "quota discovery failed; serving the last known quotas", Err: err}
	}
	return nil
}

// UseSource makes src the quota source for RefreshNow without starting a
// loop (RunRefresh does both).
func (r *Refresher) UseSource(src QuotaSource) {
	r.mu.Lock()
	r.source = src
	r.mu.Unlock()
}

// RunRefresh refreshes from src every interval until ctx ends, starting at
// once unless a refresh already succeeded. A failed refresh is retried
// sooner, with exponential backoff from 5 s up to the interval; the broker
// keeps serving the last known quotas meanwhile.
func (r *Refresher) RunRefresh(ctx context.Context, src QuotaSource, interval time.Duration) error {
	r.UseSource(src)
	backoff := 5 * time.Second
	next := interval
	if r.DiscoveryStatus().LastSuccess.IsZero() {
		next = 0
	}
	for {
		tick, stop := after(r.clock, next)
		select {
		case <-ctx.Done():
			stop()
			return ctx.Err()
		case <-tick:
		}
		if err := r.Refresh(ctx, src); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.log.Warn("quota refresh failed; serving the last known quotas", "err", err, "retry_in", backoff)
			next = backoff
			backoff = min(2*backoff, interval)
			continue
		}
		backoff = 5 * time.Second
		next = interval
	}
}

// DiscoveryStatus reports the last refresh.
func (r *Refresher) DiscoveryStatus() DiscoveryStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Skipped = append([]SkippedQuota(nil), s.Skipped...)
	s.Enabled = r.source != nil
	return s
}
