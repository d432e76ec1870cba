package broker

import (
	"container/heap"
	"context"
	"crypto/rand"
	"encoding/base32"
	"sync"
	"time"
)

// Run expires leases, forgets old ones, closes and forgets chunks, retries
// failed commits, and runs the escrow loop that commits chunks ahead of
// grants, until ctx ends. It returns ctx's error once both loops are done.
func (b *Core) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { b.runEscrow(ctx) })
	for {
		tick, stop := after(b.clock, b.cfg.SweepInterval)
		select {
		case <-ctx.Done():
			stop()
			return ctx.Err()
		case <-tick:
		}
		b.Sweep(ctx)
	}
}

// Sweep does one round of Run's work. It is exported for tests and tools
// that drive the broker without Run.
func (b *Core) Sweep(ctx context.Context) {
	b.mu.Lock()
	now := b.clock.Now()
	var c Change
	for _, r := range b.retry {
		c.merge(r)
	}
	b.retry = nil
	touched := map[*budget]bool{}
	for {
		ref, ok := b.expiry.popDue(now)
		if !ok {
			break
		}
		l := b.leases[ref.id]
		if l == nil || l.State != LeaseActive || !l.ExpiresAt.Equal(ref.at) {
			continue // ended, or renewed since this entry
		}
		b.expire(l, now)
		touched[l.b] = true
		c.Leases = append(c.Leases, l.LeaseRecord)
	}
	var records []*lease // of the chunks closed, written by checkpoint
	for _, bg := range b.sweepChunks(now, &c, &records) {
		touched[bg] = true
	}
	for bg := range touched {
		b.dispatch(bg, now)
	}
	for len(b.ended) > 0 && now.Sub(b.ended[0].at) > b.cfg.Retention {
		id := b.ended[0].id
		b.ended = b.ended[1:]
		if l := b.leases[id]; l != nil && l.State != LeaseActive {
			delete(b.leases, id)
			c.DeleteLeases = append(c.DeleteLeases, id)
		}
	}
	if now.Sub(b.usageGCAt) >= time.Minute {
		b.usageGCAt = now
		c.DeleteUsageBefore = minuteOf(now.Add(-b.cfg.UsageRetention))
		c.DeleteStatsBefore = minuteOf(now.Add(-b.cfg.HistoryRetention))
		c.DeleteClientStatsBefore = minuteOf(now.Add(-b.cfg.ClientHistoryRetention))
		c.DeleteClientUsageBefore = c.DeleteUsageBefore
		c.DeleteSpendBefore = dayOf(now) - spendRetentionDays
		b.ten.book.prune(dayOf(now))
	}
	limits := make(map[Key]Limits, len(b.budgets)) // to stamp history with
	for k, bg := range b.budgets {
		limits[k] = bg.limits(now)
		bg.forgetClients(now)
	}
	b.routing.affinity.expire(now)
	b.mu.Unlock()
	c.Stats = append(c.Stats, b.rec.take(limits)...) // folded here, off the lock
	if c.empty() && len(records) == 0 {
		return
	}
	b.checkpoint(ctx, c, records) // a failure is logged and kept for retry
}

// checkpointBatch is the most lease records one transaction of the sweep
// writes, and one hold of Core.mu copies. A busy budget closes a second's
// grants at a time, thousands of leases: copied under the lock in one go,
// they held every grant back for tens of milliseconds, and written in one
// transaction, they made grant-path commits (the next chunk, a settlement)
// queue behind it for up to a second on a loaded machine. In batches, a
// grant waits for one batch's copy at most, and such a commit for one
// batch's transaction, grouped with the next.
const checkpointBatch = 1000

// checkpoint commits the sweep's change c after the records of the leases
// in records (active leases of the chunks it closes), in batches of
// checkpointBatch, each copied under Core.mu as it is then (a lease that
// ended meanwhile has its own record). Every order of these writes is
// safe after a crash: a chunk not yet closed is charged in full at
// restore, and of its leases those with a record are known, the others
// counted as phantoms (see restoreChunks); a record the store already has
// in a later version is not overwritten. On a failure, what is not yet
// written is kept for the next sweep to retry.
func (b *Core) checkpoint(ctx context.Context, c Change, records []*lease) {
	ctx = context.WithoutCancel(ctx)
	for len(records) > 0 {
		n := min(len(records), checkpointBatch)
		var batch Change
		b.mu.Lock()
		batch.Leases = activeRecords(make([]LeaseRecord, 0, n), records[:n])
		b.mu.Unlock()
		records = records[n:]
		if len(batch.Leases) == 0 {
			continue
		}
		if err := b.store.Commit(ctx, batch); err != nil {
			// The rest are copied now, so that the retry has them all.
			b.mu.Lock()
			batch.Leases = activeRecords(batch.Leases, records)
			b.mu.Unlock()
			batch.merge(b.unstat(c))
			b.retryLater(batch, err)
			return
		}
	}
	// Expiries, and the records of a retry, in batches as well.
	for len(c.Leases) > checkpointBatch {
		if err := b.store.Commit(ctx, Change{Leases: c.Leases[:checkpointBatch:checkpointBatch]}); err != nil {
			b.retryLater(b.unstat(c), err)
			return
		}
		c.Leases = c.Leases[checkpointBatch:]
	}
	if c.empty() {
		return
	}
	if len(c.Stats) == 0 {
		if err := b.store.Commit(ctx, c); err != nil {
			b.retryLater(c, err)
		}
		return
	}
	// The history taken from the recorder: readers see it in memory until
	// this commit has it in the store, and never in both (commitMu).
	b.rec.commitMu.Lock()
	err := b.store.Commit(ctx, c)
	b.rec.settle(err == nil)
	b.rec.commitMu.Unlock()
	if err != nil {
		c.Stats = nil // back in the recorder, for the next sweep's take
		b.retryLater(c, err)
	}
}

// activeRecords appends to dst the records of the leases in ls still
// active (one that ended has a record of its own). Caller holds Core.mu.
func activeRecords(dst []LeaseRecord, ls []*lease) []LeaseRecord {
	for _, l := range ls {
		if l.State == LeaseActive && !l.undone {
			dst = append(dst, l.LeaseRecord)
		}
	}
	return dst
}

// unstat returns c without its history, which goes back to the recorder
// for the next sweep to take: a commit that failed before c's leaves it
// there rather than in a retry, where readers would not see it.
func (b *Core) unstat(c Change) Change {
	if len(c.Stats) > 0 {
		b.rec.commitMu.Lock()
		b.rec.settle(false)
		b.rec.commitMu.Unlock()
		c.Stats = nil
	}
	return c
}

// retryLater logs err, the failed commit of c, and keeps c for the next
// sweep.
func (b *Core) retryLater(c Change, err error) {
	b.log.Error("sweep commit failed; will retry", "err", err)
	b.mu.Lock()
	b.retry = append(b.retry, c)
	b.mu.Unlock()
}

// expire ends an active lease that outlived its TTL. It stays charged at
// its reservation: the call may have happened. Caller holds b.mu.
func (b *Core) expire(l *lease, now time.Time) {
	l.State = LeaseExpired
	l.EndedAt = now
	l.Version++
	l.b.ended(l.Client)
	b.released(l.Client, now)
	l.b.counters.Expired++
	b.rec.note(event{kind: eventExpired, key: l.Key, client: l.Client, at: now})
	b.ended = append(b.ended, endedRef{id: l.ID, at: now})
	b.log.Warn("lease expired unsettled", "lease_id", l.ID, "client", l.Client, "budget", l.Key.String())
}

func minuteOf(t time.Time) int64 { return t.Unix() / 60 }

// leaseIDEncoding is base32 with an alphabet in ASCII order, so ids sort
// like their bytes.
var leaseIDEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// newLeaseID returns 48 bits of grant time (milliseconds) followed by 80
// random bits. The random part makes an id unguessable, so knowing one is
// enough to settle that lease and no other; the time prefix makes ids
// ascend, so a B+tree store appends new leases at its right edge instead of
// dirtying a random page per grant.
func newLeaseID(now time.Time) string {
	var p [16]byte
	ms := uint64(now.UnixMilli())
	for i := 5; i >= 0; i-- {
		p[i] = byte(ms)
		ms >>= 8
	}
	rand.Read(p[6:]) // never fails (crypto/rand since Go 1.24)
	return encodeLeaseID(p[:])
}

// encodeLeaseID encodes the bytes of an id (at most chunkIDLen) into its
// string with one allocation, the string's (EncodeToString makes a buffer
// as well).
func encodeLeaseID(p []byte) string {
	var buf [(chunkIDLen*8 + 4) / 5]byte
	n := leaseIDEncoding.EncodedLen(len(p))
	leaseIDEncoding.Encode(buf[:n], p)
	return string(buf[:n])
}

type expiryRef struct {
	id string
	at time.Time
}

// expiryQueue orders active leases by ExpiresAt for the sweep (an entry
// of a lease that ended or was renewed since is skipped when it comes up).
// Most leases expire LeaseTTL after their grant, so in the order they were
// granted: those go in a queue of fixed blocks, where a grant appends in
// constant time and nothing is ever copied. (One heap of them all, which
// also keeps the entries of settled leases until their expiry, grew by
// copying what it held under Core.mu: 24 MB at 600,000 entries.) An entry
// out of that order (a renewal, a restore, a clock set back) goes in a
// heap; the sweep takes the earlier of the two heads.
type expiryQueue struct {
	blocks [][]expiryRef // blocks[0][head:] are the earliest in order
	head   int
	lastAt time.Time // of the last entry put in blocks
	heap   expiryHeap
}

// expiryBlock is the number of entries in a block (40 KB).
const expiryBlock = 1024

func (q *expiryQueue) push(r expiryRef) {
	n := len(q.blocks)
	switch {
	case n > 0 && r.at.Before(q.lastAt):
		q.heap.push(r)
		return
	case n == 0 || len(q.blocks[n-1]) == expiryBlock:
		q.blocks = append(q.blocks, make([]expiryRef, 0, expiryBlock))
		n++
	}
	q.blocks[n-1] = append(q.blocks[n-1], r)
	q.lastAt = r.at
}

// popDue removes and returns the earliest entry if it is due at now.
func (q *expiryQueue) popDue(now time.Time) (expiryRef, bool) {
	var first *expiryRef
	if len(q.blocks) > 0 && q.head < len(q.blocks[0]) {
		first = &q.blocks[0][q.head]
	}
	if len(q.heap) > 0 && (first == nil || q.heap[0].at.Before(first.at)) {
		if q.heap[0].at.After(now) {
			return expiryRef{}, false
		}
		return heap.Pop(&q.heap).(expiryRef), true
	}
	if first == nil || first.at.After(now) {
		return expiryRef{}, false
	}
	r := *first
	*first = expiryRef{} // its id is garbage once the block is
	if q.head++; q.head == expiryBlock {
		q.blocks[0] = nil
		q.blocks, q.head = q.blocks[1:], 0
	}
	return r, true
}

type expiryHeap []expiryRef

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryRef)) }

// push adds r as heap.Push would, without boxing r into an interface (an
// allocation on every grant).
func (h *expiryHeap) push(r expiryRef) {
	*h = append(*h, r)
	heap.Fix(h, len(*h)-1)
}
func (h *expiryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
