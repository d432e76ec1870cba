package etcd

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
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
		s.write(wctx, f, group)
		cancel()
	}
	s.commitMu.Unlock()
	return <-cl.done
}

// op is one write of a group. rank orders the group's transactions (see
// doc.go): records that grants rest on come before the chunk records that
// close over them, deletions after, and totals that shrink last.
type op struct {
	key, end string // end: a range deletion [key, end)
	val      []byte
	del      bool
	rank     int
	seq      int

	version uint64 // leases: for the cache
	tally   *tally // additive totals: the value written, for the cache
}

const (
	rankState  = iota // specs, overrides, adaptive
	rankLease         // lease records
	rankGrow          // usage, client usage and spend totals, up to what grows
	rankChunk         // chunk records (opening and closing)
	rankDelete        // forgotten leases and chunks, old totals
	rankShrink        // totals that shrink: a settlement's corrections, a chunk's spend bound taken back
)

// errSplit: a group's shrinking totals need more than one transaction.
var errSplit = errors.New("the group's shrinking totals need more than one transaction")

// write applies group and answers its calls. A group whose shrinking
// totals would need more than one transaction is written as two groups of
// its calls, in order (doc.go, Limits and order); the calls of the second
// fail with the first when it fails. Caller holds commitMu.
func (s *Store) write(ctx context.Context, f *Fence, group []*call) error {
	err := s.apply(ctx, f, group)
	if errors.Is(err, errSplit) {
		h := len(group) / 2
		if err = s.write(ctx, f, group[:h]); err == nil {
			return s.write(ctx, f, group[h:])
		}
		group = group[h:]
	}
	for _, g := range group {
		g.done <- err
	}
	return err
}

// apply writes a group; errSplit, before writing anything, when the group
// has more than one call and its shrinking totals need more than one
// transaction. Caller holds commitMu.
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
	encode := func(key string, v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			panic(fmt.Sprintf("etcd store: encode %s: %v", key, err)) // records are plain data
		}
		return b
	}
	put := func(key string, rank int, v any) *op {
		o := &op{key: key, val: encode(key, v), rank: rank}
		set(o)
		return o
	}
	versions := map[string]uint64{}
	// totals are the group's new additive totals, and order the keys in
	// the order they were first added to.
	totals := map[string]tally{}
	var order []string
	add := func(key string, id any, d [3]int64) {
		t, ok := totals[key]
		if !ok {
			t = s.totals[key]
			t.id = id
			order = append(order, key)
		}
		for i := range d {
			t.n[i] += d[i]
		}
		totals[key] = t
	}
	var cut, spendCut, clientCut int64
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
			add(s.usageKey(u.Minute, u.Key), broker.UsageRecord{Key: u.Key, Minute: u.Minute}, [3]int64{u.Tokens, u.Requests})
		}
		for _, u := range c.ClientUsage {
			id := broker.ClientUsageRecord{Client: u.Client, Key: u.Key, Route: u.Route, Minute: u.Minute}
			add(s.clientUsageKey(id), id, [3]int64{u.Tokens, u.Requests})
		}
		for _, r := range c.Spend {
			id := broker.SpendRecord{Client: r.Client, Key: r.Key, Day: r.Day}
			add(s.spendKey(id), id, [3]int64{r.NanoUSD, r.Calls, r.Unpriced})
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
		spendCut = max(spendCut, c.DeleteSpendBefore)
		clientCut = max(clientCut, c.DeleteClientUsageBefore)
	}
	var ranges []*op
	for _, r := range []struct {
		sec string
		cut int64
	}{{secUsage, cut}, {secClientUsage, clientCut}, {secSpend, spendCut}} {
		if r.cut != 0 {
			seq++
			ranges = append(ranges, &op{key: s.prefix + r.sec, end: s.timePrefix(r.sec, r.cut), del: true, rank: rankDelete, seq: seq})
		}
	}
	// etcd refuses a transaction that writes a key a range deletion of the
	// same transaction covers; the deletion wins anyway.
	covered := func(key string) bool {
		for _, r := range ranges {
			if r.key <= key && key < r.end {
				return true
			}
		}
		return false
	}
	list := make([]*op, 0, len(ops)+len(order)+len(ranges))
	for _, o := range ops {
		list = append(list, o)
	}
	list = append(list, ranges...)
	// A total is written in up to two steps, so that every prefix of the
	// group's transactions holds at least what etcd held before for each
	// of its counts: first, with the growth (counts at the larger of old
	// and new), before the chunk records that rest on it; then, at the
	// very end, the new total where a count shrinks. So a chunk's closing
	// Change never has its spend bound taken back before its leases' spend
	// is written, and a Change cut short and retried whole adds its growth
	// twice (an over-charge) but has subtracted nothing.
	for _, key := range order {
		t := totals[key]
		if covered(key) {
			continue
		}
		old, grown := s.totals[key].n, t
		for i := range grown.n {
			grown.n[i] = max(grown.n[i], old[i])
		}
		seq++
		if grown.n != old {
			list = append(list, &op{key: key, val: encode(key, grown.record()), rank: rankGrow, seq: seq, tally: &grown})
		}
		if t.n != grown.n {
			list = append(list, &op{key: key, val: encode(key, t.record()), rank: rankShrink, seq: seq, tally: &t})
		}
	}
	slices.SortFunc(list, func(a, b *op) int { return cmp.Or(cmp.Compare(a.rank, b.rank), cmp.Compare(a.seq, b.seq)) })
	// The shrinking totals go in one transaction, so that a Commit that
	// fails has applied all of them or none (the broker's retry subtracts
	// them again): of their own, unless everything left fits with them.
	shrinkN, shrinkSize := 0, 0
	for _, o := range list {
		if o.rank == rankShrink {
			shrinkN++
			shrinkSize += opSize(o)
		}
	}
	if len(group) > 1 && (shrinkN > maxTxnOps || shrinkSize > maxTxnBytes) {
		return errSplit
	}
	for len(list) > 0 {
		// One transaction: as many ops as fit. A total's two steps in the
		// same one are one write of its new value (etcd refuses a key
		// twice in a transaction, and the growth alone is never seen).
		var batch []*op
		at := map[string]int{}
		n, size, shrinks := 0, 0, false
		for ; n < len(list); n++ {
			o := list[n]
			if o.rank == rankShrink && !shrinks && len(batch) > 0 &&
				(len(batch)+len(list)-n > maxTxnOps || size+shrinkSize > maxTxnBytes) {
				break // the shrinking totals start a transaction
			}
			shrinks = shrinks || o.rank == rankShrink
			if i, ok := at[o.key]; ok && o.end == "" && batch[i].end == "" {
				batch[i] = o
				continue
			}
			if len(batch) == maxTxnOps || (len(batch) > 0 && size+opSize(o) > maxTxnBytes) {
				break
			}
			size += opSize(o)
			at[o.key] = len(batch)
			batch = append(batch, o)
		}
		if err := s.txn(ctx, f, batch); err != nil {
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

// opSize is what o counts against a transaction's size, with room for
// framing.
func opSize(o *op) int { return len(o.key) + len(o.val) + 64 }

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
	if err := s.readEpoch(ctx); err != nil {
		return err
	}
	before := s.lastRev
	resp, err := s.cli.Txn(ctx).If(s.fenced(f)...).Then(tops...).Commit()
	if err != nil {
		err = fmt.Errorf("write to etcd: %w", err)
		landed, rerr := s.settle(ctx, f, ops, before)
		if !landed {
			if rerr != nil {
				return fmt.Errorf("%w; and whether it was applied is unknown: %w", err, rerr)
			}
			return err
		}
	} else if !resp.Succeeded {
		return fmt.Errorf("%w: its election key %s is gone or another's (fenced write refused by etcd)", ErrNotLeader, f.Key)
	} else {
		s.lastRev = resp.Header.Revision
	}
	for _, o := range ops {
		switch {
		case o.end != "":
			for k := range s.totals {
				if o.key <= k && k < o.end {
					delete(s.totals, k)
				}
			}
		case o.del:
			delete(s.versions, o.key)
			delete(s.totals, o.key)
		case o.tally != nil:
			s.totals[o.key] = *o.tally
		case o.rank == rankLease:
			s.versions[o.key] = o.version
		}
	}
	return nil
}

// fenced is the condition of every write: f's election key as it was
// won, and the epoch key as this Store last wrote or read it.
func (s *Store) fenced(f *Fence) []clientv3.Cmp {
	return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(f.Key), "=", f.Rev),
		clientv3.Compare(clientv3.ModRevision(s.prefix+keyEpoch), "=", s.epochRev)}
}

// settle finds out whether ops, a transaction whose answer was an error,
// were applied, when that matters: when they hold totals, which a retry
// would add again, subtracting twice what shrinks (doc.go, Limits and
// order). Other writes are the same when repeated. It writes the epoch
// key first, fenced, so that the transaction, if still on its way, can no
// longer be applied after it; then one of the totals written, a key only
// this Store writes, tells: it changed after before (the revision of this
// Store's last write or Load) only if ops were applied. Caller holds
// commitMu.
func (s *Store) settle(ctx context.Context, f *Fence, ops []*op, before int64) (bool, error) {
	var witness *op
	for _, o := range ops {
		if o.tally != nil {
			witness = o
			break
		}
	}
	if witness == nil || before == 0 {
		return false, nil
	}
	if now, dl := s.clock.Now(), f.Deadline(); !now.Before(dl) {
		// A deposed leader's broker retries nothing: it is gone.
		return false, nil
	}
	cond := s.fenced(f)
	s.epochRev = -1 // unknown until the write below answers
	resp, err := s.cli.Txn(ctx).If(cond...).Then(clientv3.OpPut(s.prefix+keyEpoch, "")).Commit()
	if err != nil {
		return false, fmt.Errorf("write the epoch: %w", err)
	}
	if !resp.Succeeded {
		return false, fmt.Errorf("%w: its election key %s is gone or another's (fenced write refused by etcd)", ErrNotLeader, f.Key)
	}
	s.epochRev, s.lastRev = resp.Header.Revision, resp.Header.Revision
	got, err := s.cli.Get(ctx, witness.key)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", witness.key, err)
	}
	return len(got.Kvs) == 1 && got.Kvs[0].ModRevision > before, nil
}

// readEpoch reads the epoch key's revision again after a write of it
// whose answer was lost. Caller holds commitMu.
func (s *Store) readEpoch(ctx context.Context) error {
	if s.epochRev >= 0 {
		return nil
	}
	resp, err := s.cli.Get(ctx, s.prefix+keyEpoch)
	if err != nil {
		return fmt.Errorf("read from etcd: %w", err)
	}
	s.epochRev = 0
	if len(resp.Kvs) == 1 {
		s.epochRev = resp.Kvs[0].ModRevision
	}
	return nil
}

// fill reads the lease versions and totals the group needs that the
// caches do not know for sure: after Load they know every key (a key they
// lack is absent from etcd, since this Store is its only writer), except
// those a write with an unknown outcome left unsure. Caller holds commitMu.
func (s *Store) fill(ctx context.Context, group []*call) error {
	if len(s.unsure) == 0 {
		return nil
	}
	var keys []string
	need := func(k string) {
		if s.unsure[k] {
			keys = append(keys, k)
			delete(s.unsure, k)
		}
	}
	for _, g := range group {
		for _, l := range g.c.Leases {
			need(s.prefix + secLeases + l.ID)
		}
		for _, u := range g.c.Usage {
			need(s.usageKey(u.Minute, u.Key))
		}
		for _, u := range g.c.ClientUsage {
			need(s.clientUsageKey(broker.ClientUsageRecord{Client: u.Client, Key: u.Key, Route: u.Route, Minute: u.Minute}))
		}
		for _, r := range g.c.Spend {
			need(s.spendKey(broker.SpendRecord{Client: r.Client, Key: r.Key, Day: r.Day}))
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
			sec, _, _ := strings.Cut(strings.TrimPrefix(k, s.prefix), "/")
			if len(kvs) == 0 {
				delete(s.versions, k)
				delete(s.totals, k)
				continue
			}
			if sec+"/" == secLeases {
				var l broker.LeaseRecord
				if err := json.Unmarshal(kvs[0].Value, &l); err != nil {
					return fmt.Errorf("read from etcd: key %s: %w", k, err)
				}
				s.versions[k] = l.Version
				continue
			}
			t, err := decodeTally(sec+"/", kvs[0].Value)
			if err != nil {
				return fmt.Errorf("read from etcd: key %s: %w", k, err)
			}
			s.totals[k] = t
		}
		keys = keys[n:]
	}
	return nil
}
