package etcd

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/bedrockqb/quotabroker/broker"
)

// Commit writes c fenced on the leadership Lead named (see doc.go for the
// order of its transactions when it needs more than one). Commits that
// arrive while one is being written share the next group, as in the bolt
// store: one round trip to etcd for all of them.
func (s *Store) Commit(ctx context.Context, c broker.Change) error {
	f := s.currentFence()
	if f == nil {
		return ErrNotLeader
	}
	dl := f.Deadline()
	if now := s.clock.Now(); !now.Before(dl) {
		return fmt.Errorf("%w: its leadership deadline %s has passed", ErrNotLeader, dl.Format(time.RFC3339Nano))
	}
	for _, ch := range c.Chunks {
		// The bound a paused leader relies on (doc.go): no chunk may
		// outlive the leadership it was committed under.
		if !ch.Closed && ch.End.After(dl) {
			return fmt.Errorf("chunk %d ends at %s, after the leadership deadline %s: not committed",
				ch.ID, ch.End.Format(time.RFC3339Nano), dl.Format(time.RFC3339Nano))
		}
	}
	cl := &call{c: c, done: make(chan error, 1)}
	s.queueMu.Lock()
	s.queue = append(s.queue, cl)
	s.queueMu.Unlock()

	s.commitMu.Lock()
	s.queueMu.Lock()
	group := s.queue
	s.queue = nil
	s.queueMu.Unlock()
	if len(group) > 0 {
		// Not ctx: a Change accepted is written whole or fails; the
		// deadline bounds the wait, since past it etcd refuses anyway.
		wctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), dl)
		err := s.apply(wctx, f, group)
		cancel()
		for _, g := range group {
			g.done <- err
		}
	}
	s.commitMu.Unlock()
	return <-cl.done
}

// op is the last write of one key in a group. rank orders the group's
// transactions (see doc.go): records that grants rest on come before the
// chunk records that close over them, and deletions last.
type op struct {
	key, end string // end: a range deletion [key, end)
	val      []byte
	del      bool
	rank     int
	seq      int

	version uint64              // leases: for the cache
	usage   *broker.UsageRecord // usage: the new total, for the cache
}

const (
	rankState  = iota // specs, overrides, adaptive
	rankLease         // lease records
	rankUsage         // usage totals
	rankChunk         // chunk records (opening and closing)
	rankDelete        // forgotten leases and chunks, old usage
)

// apply writes a group. Caller holds commitMu.
func (s *Store) apply(ctx context.Context, f *Fence, group []*call) error {
	if err := s.fill(ctx, group); err != nil {
		return err
	}
	ops := map[string]*op{}
	seq := 0
	set := func(o *op) {
		seq++
		o.seq = seq
		ops[o.key] = o
	}
	put := func(key string, rank int, v any) *op {
		b, err := json.Marshal(v)
		if err != nil {
			panic(fmt.Sprintf("etcd store: encode %s: %v", key, err)) // records are plain data
		}
		o := &op{key: key, val: b, rank: rank}
		set(o)
		return o
	}
	versions := map[string]uint64{}
	totals := map[string]broker.UsageRecord{}
	var cut int64
	for _, g := range group {
		c := &g.c
		for _, sp := range c.Specs {
			put(s.prefix+secSpecs+budgetKey(sp.Key), rankState, sp)
		}
		for _, o := range c.Overrides {
			key := s.prefix + secOverrides + budgetKey(o.Key)
			if o.Override == nil {
				set(&op{key: key, del: true, rank: rankDelete})
			} else {
				put(key, rankState, o)
			}
		}
		for _, a := range c.Adaptive {
			put(s.prefix+secAdaptive+budgetKey(a.Key), rankState, a)
		}
		for _, l := range c.Leases {
			key := s.prefix + secLeases + l.ID
			v, ok := versions[key]
			if !ok {
				v = s.versions[key]
			}
			if l.Version <= v {
				// Older: it raced a newer one. Equal: already stored
				// (a record's Version grows with every change), as when a
				// chunk's close rewrites the leases settled since.
				continue
			}
			versions[key] = l.Version
			put(key, rankLease, l).version = l.Version
		}
		for _, u := range c.Usage {
			key := s.usageKey(u.Minute, u.Key)
			t, ok := totals[key]
			if !ok {
				t = s.usage[key]
				t.Key, t.Minute = u.Key, u.Minute
			}
			t.Tokens += u.Tokens
			t.Requests += u.Requests
			totals[key] = t
			put(key, rankUsage, t).usage = &t
		}
		for _, ch := range c.Chunks {
			put(s.chunkKey(ch.ID), rankChunk, ch)
		}
		for _, id := range c.DeleteLeases {
			key := s.prefix + secLeases + id
			delete(versions, key)
			set(&op{key: key, del: true, rank: rankDelete})
		}
		for _, id := range c.DeleteChunks {
			set(&op{key: s.chunkKey(id), del: true, rank: rankDelete})
		}
		cut = max(cut, c.DeleteUsageBefore)
	}
	list := make([]*op, 0, len(ops)+1)
	for _, o := range ops {
		// etcd refuses a transaction that writes a key a range deletion
		// of the same transaction covers; the deletion wins anyway.
		if cut != 0 && o.usage != nil && o.usage.Minute < cut {
			continue
		}
		list = append(list, o)
	}
	if cut != 0 {
		list = append(list, &op{key: s.prefix + secUsage, end: s.usagePrefix(cut), del: true, rank: rankDelete, seq: seq + 1})
	}
	slices.SortFunc(list, func(a, b *op) int { return cmp.Or(cmp.Compare(a.rank, b.rank), cmp.Compare(a.seq, b.seq)) })
	for len(list) > 0 {
		n, size := 0, 0
		for n < len(list) && n < maxTxnOps && (n == 0 || size+len(list[n].key)+len(list[n].val)+64 <= maxTxnBytes) {
			size += len(list[n].key) + len(list[n].val) + 64
			n++
		}
		if err := s.txn(ctx, f, list[:n]); err != nil {
			// What etcd holds of the rest is unknown: read it again
			// before the next write that depends on it.
			for _, o := range list {
				if o.end == "" {
					s.unsure[o.key] = true
				}
			}
			return err
		}
		list = list[n:]
	}
	return nil
}

// txn writes ops in one transaction fenced on f and updates the caches.
func (s *Store) txn(ctx context.Context, f *Fence, ops []*op) error {
	if now, dl := s.clock.Now(), f.Deadline(); !now.Before(dl) {
		return fmt.Errorf("%w: its leadership deadline %s has passed", ErrNotLeader, dl.Format(time.RFC3339Nano))
	}
	tops := make([]clientv3.Op, len(ops))
	for i, o := range ops {
		switch {
		case o.end != "":
			tops[i] = clientv3.OpDelete(o.key, clientv3.WithRange(o.end))
		case o.del:
			tops[i] = clientv3.OpDelete(o.key)
		default:
			tops[i] = clientv3.OpPut(o.key, string(o.val))
		}
	}
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(f.Key), "=", f.Rev)).Then(tops...).Commit()
	if err != nil {
		return fmt.Errorf("write to etcd: %w", err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: its election key %s is gone or another's (fenced write refused by etcd)", ErrNotLeader, f.Key)
	}
	for _, o := range ops {
		switch {
		case o.end != "":
			for k := range s.usage {
				if k < o.end {
					delete(s.usage, k)
				}
			}
		case o.del:
			delete(s.versions, o.key)
			delete(s.usage, o.key)
		case o.usage != nil:
			s.usage[o.key] = *o.usage
		case o.rank == rankLease:
			s.versions[o.key] = o.version
		}
	}
	return nil
}

// fill reads the lease versions and usage totals the group needs that the
// caches do not know for sure: after Load they know every key (a key they
// lack is absent from etcd, since this Store is its only writer), except
// those a write with an unknown outcome left unsure. Caller holds commitMu.
func (s *Store) fill(ctx context.Context, group []*call) error {
	if len(s.unsure) == 0 {
		return nil
	}
	var keys []string
	for _, g := range group {
		for _, l := range g.c.Leases {
			if k := s.prefix + secLeases + l.ID; s.unsure[k] {
				keys = append(keys, k)
				delete(s.unsure, k)
			}
		}
		for _, u := range g.c.Usage {
			if k := s.usageKey(u.Minute, u.Key); s.unsure[k] {
				keys = append(keys, k)
				delete(s.unsure, k)
			}
		}
	}
	for len(keys) > 0 {
		n := min(len(keys), maxTxnOps)
		gets := make([]clientv3.Op, n)
		for i, k := range keys[:n] {
			gets[i] = clientv3.OpGet(k)
		}
		resp, err := s.cli.Txn(ctx).Then(gets...).Commit()
		if err != nil {
			for _, k := range keys {
				s.unsure[k] = true
			}
			return fmt.Errorf("read from etcd: %w", err)
		}
		for i, r := range resp.Responses {
			k := keys[i]
			kvs := r.GetResponseRange().Kvs
			lease := strings.HasPrefix(k, s.prefix+secLeases)
			switch {
			case len(kvs) == 0:
				delete(s.versions, k)
				delete(s.usage, k)
			case lease:
				var l broker.LeaseRecord
				if err := json.Unmarshal(kvs[0].Value, &l); err != nil {
					return fmt.Errorf("read from etcd: key %s: %w", k, err)
				}
				s.versions[k] = l.Version
			default:
				var u broker.UsageRecord
				if err := json.Unmarshal(kvs[0].Value, &u); err != nil {
					return fmt.Errorf("read from etcd: key %s: %w", k, err)
				}
				s.usage[k] = u
			}
		}
		keys = keys[n:]
	}
	return nil
}
