package etcd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Session is this replica's etcd session (concurrency.Session, on a lease
// it grants itself) with a deadline on its own clock: the time before which
// etcd cannot have expired the lease. etcd renews a lease to TTL from when
// it handles the keep-alive, which is after this replica sent it; so the
// lease lives at least until send time + TTL, whatever the answer's delay
// and however long this process is paused afterwards. Deadline keeps a
// margin below that for clock rate drift and for acting on it.
//
// Session runs its own keep-alives (KeepAliveOnce, timed from their send)
// beside the concurrency session's, since those do not say when they were
// sent.
type Session struct {
	cli    *clientv3.Client
	clock  Clock
	ttl    time.Duration
	margin time.Duration
	sess   *concurrency.Session

	// mu guards deadline and err.
	mu       sync.Mutex
	deadline time.Time
	err      error // why the session ended, once done is closed

	done chan struct{} // closed when the deadline passes or the lease is lost
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// SessionConfig tunes a Session.
type SessionConfig struct {
	// TTL of the lease, whole seconds (etcd's unit); etcd may grant more
	// (its minimum is 1.5 election timeouts). Default 3 s.
	TTL time.Duration
	// Margin is kept below the lease's earliest expiry. Default TTL/6,
	// at least 200 ms.
	Margin time.Duration
}

// ErrSessionExpired: the session's deadline passed without a keep-alive,
// or etcd no longer knows its lease.
var ErrSessionExpired = errors.New("etcd session lost")

// NewSession grants a lease and starts keeping it alive until Close.
func NewSession(ctx context.Context, cli *clientv3.Client, clock Clock, cfg SessionConfig) (*Session, error) {
	if cfg.TTL == 0 {
		cfg.TTL = 3 * time.Second
	}
	if cfg.TTL < time.Second {
		return nil, fmt.Errorf("session TTL %v: at least 1s", cfg.TTL)
	}
	if cfg.Margin == 0 {
		cfg.Margin = max(cfg.TTL/6, 200*time.Millisecond)
	}
	sent := clock.Now()
	g, err := cli.Grant(ctx, int64(cfg.TTL/time.Second))
	if err != nil {
		return nil, fmt.Errorf("grant etcd lease: %w", err)
	}
	ttl := time.Duration(g.TTL) * time.Second
	sess, err := concurrency.NewSession(cli, concurrency.WithLease(g.ID))
	if err != nil {
		return nil, fmt.Errorf("etcd session: %w", err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	s := &Session{cli: cli, clock: clock, ttl: ttl, margin: cfg.Margin, sess: sess,
		deadline: sent.Add(ttl - cfg.Margin), done: make(chan struct{}), stop: stop}
	s.wg.Go(func() { s.keepAlive(runCtx, g.ID) })
	return s, nil
}

// TTL is the lease's TTL as etcd granted it.
func (s *Session) TTL() time.Duration { return s.ttl }

// Deadline is when this replica must stop acting on the session.
func (s *Session) Deadline() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deadline
}

// Done is closed once the session is lost (Err says why).
func (s *Session) Done() <-chan struct{} { return s.done }

// Err says why the session ended; nil while it lives.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *Session) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
		close(s.done)
	}
}

// keepAliveRetry is the pause after a keep-alive that failed: etcd electing
// a new leader, or the client moving to another member, takes some hundreds
// of milliseconds, and the deadline is only a few keep-alives away.
const keepAliveRetry = 100 * time.Millisecond

// keepAlive renews the lease every TTL/6 (after a failure, every
// keepAliveRetry) and ends the session when the deadline passes or etcd
// says the lease is gone. An attempt gets at most TTL/6: one stuck on a
// member that lost its leader is abandoned for a fresh one, whose send time
// is later. Renewing often keeps the deadline far from now, so that an
// etcd leader election (about a second) fits in it. Close stops it.
func (s *Session) keepAlive(ctx context.Context, id clientv3.LeaseID) {
	every := s.ttl / 6
	var lastErr error
	for {
		dl := s.Deadline()
		next := every
		if lastErr != nil {
			next = keepAliveRetry
		}
		wait := min(next, dl.Sub(s.clock.Now()))
		if wait <= 0 {
			cause := "no keep-alive answered"
			if lastErr != nil {
				cause = lastErr.Error()
			}
			s.end(fmt.Errorf("%w: deadline %s passed (%s)", ErrSessionExpired, dl.Format(time.RFC3339Nano), cause))
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		sent := s.clock.Now()
		until := sent.Add(every)
		if d := s.Deadline(); d.Before(until) {
			until = d
		}
		kctx, cancel := context.WithDeadline(ctx, until)
		resp, err := s.cli.KeepAliveOnce(kctx, id)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, context.DeadlineExceeded):
			lastErr = fmt.Errorf("etcd did not answer the keep-alive: %w", err)
		case err != nil && isLeaseGone(err):
			s.end(fmt.Errorf("%w: etcd no longer knows lease %x", ErrSessionExpired, int64(id)))
			return
		case err != nil:
			lastErr = err
		case resp.TTL <= 0:
			s.end(fmt.Errorf("%w: etcd expired lease %x", ErrSessionExpired, int64(id)))
			return
		default:
			lastErr = nil
			if d := sent.Add(time.Duration(resp.TTL)*time.Second - s.margin); d.After(s.Deadline()) {
				s.mu.Lock()
				s.deadline = d
				s.mu.Unlock()
			}
		}
	}
}

// Close stops the keep-alives and revokes the lease, which deletes the
// election key if this replica led, so that another takes over at once.
func (s *Session) Close() {
	s.stop()
	s.wg.Wait()
	s.end(errors.New("etcd session closed"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s.sess.Orphan() // its own keep-alive stops; the revoke below ends the lease
	s.cli.Revoke(ctx, s.sess.Lease())
}

// Campaign waits until this replica leads the election under prefix,
// publishing value (its address), and returns the fence its writes must
// carry. It returns early with the session's error if the session ends.
func (s *Session) Campaign(ctx context.Context, prefix, value string) (*Fence, *concurrency.Election, error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { // ends Campaign early if the session ends
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	})
	e := concurrency.NewElection(s.sess, prefix)
	if err := e.Campaign(ctx, value); err != nil {
		if s.Err() != nil {
			return nil, nil, s.Err()
		}
		return nil, nil, err
	}
	return &Fence{Key: e.Key(), Rev: e.Rev(), Deadline: s.Deadline}, e, nil
}

// Observe follows the leader of the election under prefix (its value,
// the leader's address) until ctx ends.
func (s *Session) Observe(ctx context.Context, prefix string) <-chan *clientv3.GetResponse {
	return concurrency.NewElection(s.sess, prefix).Observe(ctx)
}
