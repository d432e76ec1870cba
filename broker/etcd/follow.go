package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/bedrockqb/quotabroker/broker"
)

// A standby follows the prefix (Follow) so that, when it wins, Load reads
// memory instead of ranging over every record: one Get at a revision R,
// then a watch from R+1 whose puts and deletions it applies, each record
// decoded as it arrives. The copy is as large as the prefix, which the
// broker already bounds (it is what a full Load holds in memory too).
//
// Load on a win must still be exactly what etcd holds at a revision after
// the win, since the old leader may have written until its key was
// deleted: Load reads the current revision R' (any read after the win
// returns one at or after the deletion of the old leader's key, and every
// write of the old leader is fenced on that key, so all of them are
// before it), then waits until the copy reflects a revision at or after
// R'. The copy reflects revision V when every event up to V has been
// applied: the ModRevision of the last event applied (etcd sends a
// revision's events in one response), or the revision of a progress
// notification, which etcd sends on request once the watch has delivered
// everything up to it. Load asks for one (RequestProgress) while it waits.
// A copy that etcd compacted past, a watch cancelled or closed, or a copy
// not caught up within catchUpWait, is passed over for the full read.
//
// etcd answers a progress request at once only if every watch of the
// stream has caught up; otherwise it defers the answer, and tries again
// only when it next sends the stream something. A watch that catches up
// with no event to send (it started behind because of writes elsewhere)
// leaves the answer waiting for the prefix's next event, and Load then
// reads everything after catchUpWait. The follower's watch has a stream
// of its own (watchCtx) and starts right after its read, so this takes a
// progress request in the first moments of a watch. Writing a marker key
// at the win and waiting for its event would not depend on it.

// catchUpWait bounds how long Load waits for the copy to reach the current
// revision before reading everything instead. A watch that is answering
// catches up in one round trip; longer means it is stuck or far behind.
const catchUpWait = time.Second

// followRetry is the pause before following again after the watch failed.
const followRetry = 500 * time.Millisecond

// progressEvery is how often a follower asks etcd where its watch is, so
// that the lag it reports is measured against a recent revision even
// while the prefix is quiet, and a watch that stopped answering shows.
const progressEvery = 5 * time.Second

// FollowStatus is a standby's copy of the prefix, for reports.
type FollowStatus struct {
	// Following: Follow is running and its copy is whole (read, then
	// kept up by the watch).
	Following bool
	// Rev is the revision the copy reflects; Seen the latest revision
	// etcd has told the follower of. Rev < Seen: the watch has events
	// yet to deliver.
	Rev, Seen int64
	// Err is why there is no copy (Following false): the last failure,
	// or that Follow is not running.
	Err string
	// Resyncs counts the times the copy was dropped (a failed watch, a
	// compaction past it) and read again since Follow started.
	Resyncs int
}

// mirror is the follower's copy of the prefix.
type mirror struct {
	// mu guards every field. Load holds it while it assembles a
	// snapshot, the watch loop while it applies a response.
	mu        sync.Mutex
	kvs       map[string]mirrored
	rev, seen int64
	live      bool // kvs is whole and kept up (see FollowStatus.Following)
	resyncs   int  // times the copy was dropped to be read again
	running   bool // Follow is running
	err       string
	moved     chan struct{} // closed and replaced when rev or live changes

	// Test hooks (export_test.go), nil otherwise, set before Follow
	// runs: afterRead runs between the read of the prefix and the start
	// of the watch, beforeApply before each watch response is applied.
	afterRead, beforeApply func()
}

// mirrored is one key of the copy: its record as decode returns it, or
// the error decoding it (Load then reads everything, and fails on it).
type mirrored struct {
	mod int64
	rec any
	err error
}

func newMirror() *mirror {
	return &mirror{moved: make(chan struct{}), err: "not following"}
}

// signal wakes whoever waits for the copy to move. Caller holds mu.
func (m *mirror) signal() {
	close(m.moved)
	m.moved = make(chan struct{})
}

// FollowStatus says how far this replica's copy of the prefix is.
func (s *Store) FollowStatus() FollowStatus {
	m := s.mirror
	m.mu.Lock()
	defer m.mu.Unlock()
	return FollowStatus{Following: m.live, Rev: m.rev, Seen: m.seen, Err: m.err, Resyncs: m.resyncs}
}

// LoadedFromCopy says whether the last Load took the follower's copy
// rather than reading everything.
func (s *Store) LoadedFromCopy() bool {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	return s.fromCopy
}

// Follow keeps a copy of the prefix until ctx ends, for Load to take over
// from: run it while this replica does not lead, and end it once the
// broker has loaded (a leader's broker holds the state; the copy would
// only cost memory). On a failure it reads the prefix again, after
// followRetry. It drops the copy when it returns.
func (s *Store) Follow(ctx context.Context) {
	m := s.mirror
	m.mu.Lock()
	if m.running {
		m.mu.Unlock()
		panic("etcd store: Follow called while it runs")
	}
	m.running = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.kvs, m.live, m.running, m.rev, m.seen, m.err, m.resyncs = nil, false, false, 0, 0, "not following", 0
		m.signal()
		m.mu.Unlock()
	}()
	for ctx.Err() == nil {
		err := s.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		m.mu.Lock()
		m.kvs, m.live, m.err, m.resyncs = nil, false, err.Error(), m.resyncs+1
		m.signal()
		m.mu.Unlock()
		t := time.NewTimer(followRetry)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// watchCtx is the context of the follower's watch and of its progress
// requests: clientv3 sends a progress request on the stream of the
// watches whose contexts carry the same metadata, and WithRequireLeader
// gives the follower a stream of its own (others' watches, as the
// election's, carry none), which etcd also cancels when its member loses
// the cluster's leader, rather than leaving it silent.
func watchCtx(ctx context.Context) context.Context { return clientv3.WithRequireLeader(ctx) }

// follow reads the prefix, then applies the watch's events until it
// fails or ctx ends.
func (s *Store) follow(ctx context.Context) error {
	kvs := map[string]mirrored{}
	rev, err := s.rangeAll(ctx, func(key string, val []byte, mod int64) error {
		rec, err := s.decode(key, val)
		kvs[key] = mirrored{mod: mod, rec: rec, err: err}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read the prefix: %w", err)
	}
	m := s.mirror
	if m.afterRead != nil {
		m.afterRead()
	}
	m.mu.Lock()
	m.kvs, m.rev, m.seen, m.live, m.err = kvs, rev, rev, true, ""
	m.signal()
	m.mu.Unlock()

	// Not derived from ctx, whose metadata would name another stream
	// (watchCtx).
	wctx, cancel := context.WithCancel(watchCtx(context.Background()))
	defer cancel()
	defer context.AfterFunc(ctx, cancel)()
	wch := s.cli.Watch(wctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			s.cli.RequestProgress(wctx) // its error shows as a watch failure
			continue
		case resp, ok := <-wch:
			if !ok {
				return errors.New("watch closed")
			}
			if resp.CompactRevision != 0 {
				return fmt.Errorf("etcd compacted the revisions to %d, past the copy's", resp.CompactRevision)
			}
			if err := resp.Err(); err != nil {
				return fmt.Errorf("watch: %w", err)
			}
			if resp.Canceled {
				return errors.New("watch cancelled by etcd")
			}
			s.mirrorWatch(&resp)
		}
	}
}

// mirrorWatch brings the copy up to resp.
func (s *Store) mirrorWatch(resp *clientv3.WatchResponse) {
	m := s.mirror
	if m.beforeApply != nil {
		m.beforeApply()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ev := range resp.Events {
		key := string(ev.Kv.Key)
		if ev.Type == clientv3.EventTypeDelete {
			delete(m.kvs, key)
		} else {
			rec, err := s.decode(key, ev.Kv.Value)
			m.kvs[key] = mirrored{mod: ev.Kv.ModRevision, rec: rec, err: err}
		}
		m.rev = max(m.rev, ev.Kv.ModRevision)
	}
	if resp.IsProgressNotify() {
		m.rev = max(m.rev, resp.Header.Revision)
	}
	m.seen = max(m.seen, resp.Header.Revision, m.rev)
	m.signal()
}

// loadMirror is Load from the copy (see the top of this file): ok false
// when there is none, it does not catch up in time, or a record in it
// does not decode (the full read then fails on that record, naming it).
// Caller holds commitMu.
func (s *Store) loadMirror(ctx context.Context) (*loading, bool) {
	m := s.mirror
	m.mu.Lock()
	live := m.live
	m.mu.Unlock()
	if !live {
		return nil, false
	}
	// The revision the copy must reach: any read's, after the win.
	resp, err := s.cli.Get(ctx, s.prefix+"format", clientv3.WithCountOnly())
	if err != nil {
		return nil, false
	}
	want := resp.Header.Revision
	wctx, cancel := context.WithTimeout(watchCtx(context.Background()), catchUpWait)
	defer cancel()
	defer context.AfterFunc(ctx, cancel)()
	ask := time.NewTicker(catchUpWait / 5)
	defer ask.Stop()
	// etcd answers when the watch has delivered everything to the current
	// revision (at or after want); asked again in case a request is lost
	// with its stream.
	s.cli.RequestProgress(wctx)
	for {
		m.mu.Lock()
		if !m.live {
			m.mu.Unlock()
			return nil, false
		}
		if m.rev >= want {
			defer m.mu.Unlock()
			return s.assemble(m)
		}
		moved := m.moved
		m.mu.Unlock()
		select {
		case <-moved:
		case <-ask.C:
			s.cli.RequestProgress(wctx)
		case <-wctx.Done():
			return nil, false
		}
	}
}

// assemble builds a Load from the copy, in key order as the full read
// has it. Caller holds m.mu.
func (s *Store) assemble(m *mirror) (*loading, bool) {
	keys := make([]string, 0, len(m.kvs))
	leases := 0
	for k, e := range m.kvs {
		if e.err != nil {
			return nil, false
		}
		keys = append(keys, k)
		if _, ok := e.rec.(broker.LeaseRecord); ok {
			leases++
		}
	}
	slices.Sort(keys)
	// Sized for the leases, the bulk of a large prefix: growing them
	// record by record was most of this function's time.
	l := newLoading()
	if leases > 0 { // none: nil, as the full read leaves it
		l.snap.Leases = make([]broker.LeaseRecord, 0, leases)
		l.versions = make(map[string]uint64, leases)
	}
	for _, k := range keys {
		e := m.kvs[k]
		l.add(s, k, e.rec, e.mod)
	}
	l.rev = m.rev
	return l, true
}
