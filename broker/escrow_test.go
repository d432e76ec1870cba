package broker_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

func (s *memStore) state() (commits int, chunks []broker.ChunkRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.chunks {
		chunks = append(chunks, c)
	}
	return s.commits, chunks
}

// escrowed runs a broker with Run until one chunk is committed and n
// leases are drawn from it, and returns the leases granted one by one
// before the chunk, those drawn from it, and the chunk as committed.
func escrowed(t *testing.T, e *env, n int) (single, drawn []broker.Lease, c broker.ChunkRecord, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.b.Run(ctx) }()
	stop = func() { cancel(); <-done }
	req := broker.AcquireRequest{ModelID: haiku3, InputTokens: 100, MaxOutputTokens: 100}
	// A quiet start is committed grant by grant: the first ask finds too
	// little demand for a chunk.
	for range 10 {
		single = append(single, e.mustGrant(req))
		synctest.Wait()
	}
	e.clock.Advance(300 * time.Millisecond)
	single = append(single, e.mustGrant(req)) // asks again, with demand now
	synctest.Wait()                           // the escrow loop commits a chunk
	commits, chunks := e.store.state()
	if len(chunks) != 1 {
		t.Fatalf("%d chunks committed after a burst of %d grants, want 1", len(chunks), len(single))
	}
	c = chunks[0]
	if c.Requests < 4 || c.Requests > 2*int64(len(single))+1 || c.Closed {
		t.Fatalf("chunk %+v for a demand of %d grants in the last second", c, len(single))
	}
	for range n {
		drawn = append(drawn, e.mustGrant(req))
	}
	if got, _ := e.store.state(); got != commits {
		t.Errorf("%d commits for %d grants drawn from a chunk, want none", got-commits, n)
	}
	for _, l := range drawn {
		if l.GrantedAt.Before(c.Start) || l.GrantedAt.After(c.End) {
			t.Errorf("lease granted at %v from a chunk of %v..%v", l.GrantedAt, c.Start, c.End)
		}
	}
	return single, drawn, c, stop
}

// TestEscrowCrash: after a crash, the restarted broker charges a chunk
// that was never closed in full and counts its unrecorded leases against
// concurrency until they must have expired; such a lease can be settled
// (its usage recorded, its charge left at the chunk's), a forged one
// cannot. A chunk the sweep closed costs nothing beyond what it granted.
func TestEscrowCrash(t *testing.T) {
	const conc = 40
	sp := spec(haiku3, broker.Limits{RPM: 6400, TPM: 1 << 40, Concurrency: conc})
	t.Run("open chunk", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, sp)
			single, drawn, c, stop := escrowed(t, e, 8)
			stop() // killed: no sweep
			e2 := &env{t: t, clock: e.clock, store: e.store, cfg: e.cfg}
			e2.open()
			rep := e2.report(haiku3)
			if want := int64(len(single)) + c.Requests; rep.Usage.RequestsLastMinute != want {
				t.Errorf("after the crash the minute holds %d requests, want %d granted one by one + the chunk's %d in full",
					rep.Usage.RequestsLastMinute, len(single), c.Requests)
			}
			// Known active: the single ones; the chunk's unknown leases
			// count up to the limit's room.
			room := conc - int64(len(single)) - min(c.Requests, conc-int64(len(single)))
			req := broker.AcquireRequest{ModelID: haiku3, InputTokens: 100, MaxOutputTokens: 100}
			for range room {
				e2.mustGrant(req)
			}
			if d, err := e2.acquire(req); err != nil || d.Granted || d.Blocked != broker.LimitConcurrency {
				t.Errorf("grant beyond the concurrency a crash may have left running: %+v, %v", d, err)
			}
			ctx := context.Background()
			u := broker.Usage{InputTokens: 100, OutputTokens: 10}
			s, err := e2.b.Complete(ctx, drawn[0].ID, broker.OutcomeSuccess, u)
			if err != nil || s.AlreadyCompleted {
				t.Fatalf("settling a lease drawn from the chunk before the crash: %+v, %v", s, err)
			}
			if got := e2.report(haiku3).Usage.RequestsLastMinute; got != rep.Usage.RequestsLastMinute+room {
				t.Errorf("the settlement moved the minute to %d requests; the chunk's charge stays until it slides", got)
			}
			if d, err := e2.acquire(req); err != nil || !d.Granted {
				t.Errorf("a settled unrecorded lease did not free its concurrency: %+v, %v", d, err)
			}
			if s, err := e2.b.Complete(ctx, drawn[0].ID, broker.OutcomeSuccess, u); err != nil || !s.AlreadyCompleted {
				t.Errorf("settling it again: %+v, %v", s, err)
			}
			forged := []byte(drawn[1].ID)
			forged[len(forged)-1] ^= 1
			if _, err := e2.b.Complete(ctx, string(forged), broker.OutcomeSuccess, u); broker.KindOf(err) != broker.KindNotFound {
				t.Errorf("a forged id of the chunk: %v, want not found", err)
			}
			// Once every lease of the chunk must have expired, only the
			// known ones count.
			e2.clock.Advance(c.LeasesEnd.Sub(e2.clock.Now()) + time.Second)
			e2.b.Sweep(ctx)
			if got := e2.report(haiku3).Outstanding; got != 0 {
				t.Errorf("%d outstanding after every lease expired", got)
			}
			if d, err := e2.acquire(req); err != nil || !d.Granted {
				t.Errorf("after the chunk's leases expired: %+v, %v", d, err)
			}
		})
	})
	t.Run("closed chunk", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, sp)
			single, drawn, c, stop := escrowed(t, e, 8)
			e.clock.Advance(c.End.Sub(e.clock.Now()) + time.Millisecond)
			e.b.Sweep(context.Background()) // closes it
			stop()
			_, chunks := e.store.state()
			if len(chunks) != 1 || !chunks[0].Closed || chunks[0].Requests != int64(len(drawn)) {
				t.Fatalf("after the sweep the store holds %+v, want the chunk closed with its %d grants", chunks, len(drawn))
			}
			e2 := &env{t: t, clock: e.clock, store: e.store, cfg: e.cfg}
			e2.open()
			if got, want := e2.report(haiku3).Usage.RequestsLastMinute, int64(len(single)+len(drawn)); got != want {
				t.Errorf("after a crash the minute holds %d requests, want the %d granted", got, want)
			}
			for _, l := range drawn {
				if s, err := e2.b.Complete(context.Background(), l.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 1}); err != nil || s.AlreadyCompleted {
					t.Errorf("lease %s of the closed chunk: %+v, %v", l.ID, s, err)
				}
			}
		})
	})
}

// TestEscrowCheckpoint: the sweep that closes a chunk writes the records of
// its active leases in transactions of at most 1,000 (checkpointBatch), so
// that no grant-path commit queues behind a second's worth of them, and
// leaves the records of leases settled meanwhile as their settlement wrote
// them.
func TestEscrowCheckpoint(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, spec(haiku3, broker.Limits{RPM: 1 << 30, TPM: 1 << 40}))
		req := broker.AcquireRequest{ModelID: haiku3, InputTokens: 100, MaxOutputTokens: 100}
		// A burst of 1,500 grants in the escrow's first second sizes a
		// chunk of about 3,000.
		_, drawn, c, stop := escrowed(t, e, 0)
		for range 1500 {
			drawn = append(drawn, e.mustGrant(req))
		}
		synctest.Wait()
		for range 1000 {
			drawn = append(drawn, e.mustGrant(req))
		}
		ctx := context.Background()
		settled := map[string]bool{}
		for _, l := range drawn[:10] {
			if _, err := e.b.Complete(ctx, l.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 50}); err != nil {
				t.Fatal(err)
			}
			settled[l.ID] = true
		}
		e.store.mu.Lock()
		e.store.maxLeases = 0
		e.store.mu.Unlock()
		e.clock.Advance(2 * time.Second) // past every chunk's span
		e.b.Sweep(ctx)
		stop()

		e.store.mu.Lock()
		defer e.store.mu.Unlock()
		if e.store.maxLeases > 1000 {
			t.Errorf("the sweep wrote %d lease records in one commit, want at most 1,000", e.store.maxLeases)
		}
		for _, l := range drawn {
			r, ok := e.store.leases[l.ID]
			switch {
			case !ok:
				t.Fatalf("lease %s has no record after its chunk closed", l.ID)
			case settled[l.ID] && r.State != broker.LeaseCompleted:
				t.Errorf("settled lease %s stored as %v", l.ID, r.State)
			case !settled[l.ID] && r.State != broker.LeaseActive:
				t.Errorf("active lease %s stored as %v", l.ID, r.State)
			}
		}
		var granted int64
		for _, r := range e.store.chunks {
			if !r.Closed {
				t.Errorf("chunk %d not closed after its span: %+v", r.ID, r)
			}
			granted += r.Requests
		}
		// Most came from chunks (a grant finding the newest chunk used up
		// is committed on its own), so the checkpoint had batches to write.
		if granted <= 1000 || granted > int64(len(drawn)) {
			t.Errorf("closed chunks granted %d of the %d grants (the first chunk: %+v)", granted, len(drawn), c)
		}
	})
}
