package bolt

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/bedrockqb/quotabroker/broker"
	"go.etcd.io/bbolt"
)

// groupCall is one Commit waiting in the commit loop's queue.
type groupCall struct {
	fn   func(*bbolt.Tx) error
	done chan error // buffered: the loop never blocks on it
}

// Commit applies c in one transaction, shared with concurrent Commits, and
// returns once it is on disk. If ctx ends before c's group transaction has
// started, Commit returns ctx's error and c is never applied; once it has
// started, Commit waits for the outcome whatever ctx does.
func (s *Store) Commit(ctx context.Context, c broker.Change) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("commit to store %s: %w", s.path, err)
	}
	w, err := prepare(&c)
	if err != nil {
		return fmt.Errorf("commit to store %s: %w", s.path, err)
	}
	if w.empty() {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return fmt.Errorf("commit to store %s: %w", s.path, errClosed)
	}

	// state moves from pending to claimed when a transaction first runs w,
	// or to abandoned when ctx ends first. Once claimed, w may run again
	// (the loop re-runs each member of a failed group alone), always in a
	// fresh transaction, since a failed one is rolled back; an abandoned w
	// never runs.
	const (
		pending int32 = iota
		claimed
		abandoned
	)
	var state atomic.Int32
	fn := func(tx *bbolt.Tx) error {
		if state.CompareAndSwap(pending, claimed) || state.Load() == claimed {
			return w.apply(tx)
		}
		return nil
	}
	// The commit loop holds the call; no goroutine is needed to wait for
	// it while watching ctx. An abandoned call stays queued and runs as a
	// no-op; Close drains the queue before closing the file.
	call := &groupCall{fn: s.guard(fn), done: make(chan error, 1)}
	s.queue <- call
	select {
	case err := <-call.done:
		return s.wrap(err)
	case <-ctx.Done(): // nil, never ready, for a context that cannot end
		if state.CompareAndSwap(pending, abandoned) {
			return fmt.Errorf("commit to store %s: %w", s.path, ctx.Err())
		}
		return s.wrap(<-call.done)
	}
}

// commitLoop is group commit without a timer: it takes the first queued
// Commit, adds every other Commit already waiting (they queued while the
// previous transaction was being written and synced), and applies them all
// in one transaction and one fsync. A lone Commit pays one transaction; under
// load the group grows to whatever arrived during the last fsync, so
// throughput rises with concurrency instead of being capped by a fixed
// batching delay. It runs until Close closes the queue.
func (s *Store) commitLoop() {
	defer close(s.loopDone)
	group := make([]*groupCall, 0, s.maxGroup)
	for first := range s.queue {
		group = append(group[:0], first)
	fill:
		for len(group) < s.maxGroup {
			select {
			case c, ok := <-s.queue:
				if !ok {
					break fill
				}
				group = append(group, c)
			default:
				break fill
			}
		}
		s.commitGroup(group)
	}
}

// commitGroup applies group in one transaction. If that fails, each member
// runs alone, so one bad Commit cannot fail the others; re-running is safe
// because a failed transaction is rolled back whole.
func (s *Store) commitGroup(group []*groupCall) {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		for _, c := range group {
			if err := c.fn(tx); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil || len(group) == 1 {
		for _, c := range group {
			c.done <- err
		}
		return
	}
	for _, c := range group {
		c.done <- s.db.Update(c.fn)
	}
}

func (s *Store) wrap(err error) error {
	var ce *corruptError
	if err == nil || errors.As(err, &ce) {
		return err
	}
	if noSpace(err) {
		return fmt.Errorf("commit to store %s: %s: %w", s.path, noSpaceHelp, err)
	}
	return fmt.Errorf("commit to store %s: %w", s.path, err)
}
