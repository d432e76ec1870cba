package etcd

import (
	"context"

	"github.com/bedrockqb/quotabroker/broker"
)

// LoadCopy is Load from the follower's copy alone: ok false where Load
// would read everything instead.
func LoadCopy(s *Store, ctx context.Context) (broker.Snapshot, bool) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	l, ok := s.loadMirror(ctx)
	if !ok {
		return broker.Snapshot{}, false
	}
	return l.snap, true
}

// HookFollow sets the follower's test hooks (follow.go), before Follow.
func HookFollow(s *Store, afterRead, beforeApply func()) {
	s.mirror.afterRead, s.mirror.beforeApply = afterRead, beforeApply
}

// WaitFollowing waits until s's copy is whole after at least resyncs
// re-reads, or ctx ends.
func WaitFollowing(s *Store, ctx context.Context, resyncs int) bool {
	m := s.mirror
	for {
		m.mu.Lock()
		ok, moved := m.live && m.resyncs >= resyncs, m.moved
		m.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return false
		}
	}
}
