package broker

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"time"
)

// Capacity escrow (see the package doc's Durability for the invariant).
// A busy budget commits a chunk of capacity ahead of use and grants from it
// in memory; the escrow loop (runEscrow, started by Run) writes the next
// chunk while the current one is still being drawn from, so a grant waits
// for no write. A budget too quiet or too small for a useful chunk commits
// each grant, as before escrow.
const (
	// escrowFactor sizes a chunk to this many times the demand of the last
	// second, so that it lasts its span while demand grows.
	escrowFactor = 2
	// escrowShare caps a chunk at 1/escrowShare of each per-minute limit:
	// the most a crash can cost (see the package doc) stays a small share
	// of the minute.
	escrowShare = 32
	// minChunkRequests: a smaller chunk is not worth a write of its own;
	// the budget's grants are committed one by one.
	minChunkRequests = 4
	// maxChunkRequests is what the lease id's index can number.
	maxChunkRequests = 1 << 24
)

// chunk is a committed chunk in memory. Its fields are guarded by Core.mu.
type chunk struct {
	ChunkRecord
	b   *budget
	mac hash.Hash // HMAC-SHA256 keyed by Secret: the tags of its lease ids
	// idBuf is leaseID's buffer: through mac's interface a local array
	// would escape, two allocations per grant.
	idBuf [chunkIDLen + sha256.Size]byte

	usedReq, usedTok int64    // drawn in this life
	leases           []*lease // drawn in this life, for the record at close
	// closed: its closing record (what was granted) is written, or it came
	// from a previous life, where it counts in full.
	closed bool
	// unknown counts leases it may have granted in a previous life that no
	// lease record names (Requests - known); they may run until LeasesEnd.
	unknown int64
	// spendBound is what its grants can cost at most, recorded as spend
	// with the chunk under the account's money budget and taken back at
	// its close (caps.go: escrowSpend).
	spendBound int64
}

// escrow is a budget's escrow state, guarded by Core.mu.
type escrow struct {
	live    []*chunk // durable chunks of this life open to draws, oldest first
	asking  bool     // a chunk is wanted: queued for or being written by the loop
	askedAt time.Time
	// grantReq and grantTok count grants and their reservations in the
	// last second (never adjusted by settlements): the demand a chunk is
	// sized to.
	grantReq, grantTok *window
	// restored are chunks of a previous life with unknown leases, which
	// count against the concurrency limit until their LeasesEnd, and
	// phantomCap bounds how many of those can be running: at the crash,
	// active leases were within the limit, and the known ones are counted
	// as themselves.
	restored   []*chunk
	phantomCap int64
}

func newEscrow() escrow {
	return escrow{grantReq: newWindow(time.Second, minuteRes), grantTok: newWindow(time.Second, minuteRes)}
}

// phantom is how many leases of a previous life no record names may still
// be running at now.
func (e *escrow) phantom(now time.Time) int64 {
	if len(e.restored) == 0 {
		return 0
	}
	var n int64
	for _, c := range e.restored {
		if c.LeasesEnd.After(now) {
			n += c.unknown
		}
	}
	return min(n, e.phantomCap)
}

// draw takes a request and tokens from the oldest live chunk of bg that is
// open at now and has room, or returns nil: the grant is then committed
// on its own. Caller holds b.mu.
func (b *Core) draw(bg *budget, now time.Time, tokens int64) *chunk {
	e := &bg.esc
	for len(e.live) > 0 && now.After(e.live[0].End) {
		e.live = e.live[1:] // ended: the sweep closes it
	}
	for _, c := range e.live {
		if now.Before(c.Start) || c.usedReq >= c.Requests || c.usedTok+tokens > c.Tokens {
			continue
		}
		c.usedReq++
		c.usedTok += tokens
		return c
	}
	return nil
}

// noteDemand counts a grant for chunk sizing and asks the escrow loop for
// the next chunk when the newest is half used or half way through its
// span, or when there is none. Caller holds b.mu.
func (b *Core) noteDemand(bg *budget, now time.Time, tokens int64) {
	span := b.cfg.EscrowSpan
	if span <= 0 {
		return
	}
	e := &bg.esc
	e.grantReq.add(now, now, 1)
	e.grantTok.add(now, now, tokens)
	if e.asking {
		return
	}
	if n := len(e.live); n > 0 {
		c := e.live[n-1]
		if 2*c.usedReq < c.Requests && 2*c.usedTok < c.Tokens && 2*now.Sub(c.Start) < span {
			return
		}
	} else if !e.askedAt.IsZero() && now.Sub(e.askedAt) < span/4 {
		// The last ask found demand too small for a chunk; do not wake the
		// loop for every grant of a quiet budget.
		return
	}
	e.asking, e.askedAt = true, now
	b.wanted = append(b.wanted, bg)
	select {
	case b.kick <- struct{}{}:
	default: // the loop is already due to run
	}
}

// sizeChunk sizes bg's next chunk at now: escrowFactor times the last
// second's demand over the span, within 1/escrowShare of each per-minute
// limit and the room left in every window. ok is false when that is less
// than a useful chunk. Caller holds b.mu.
func (b *Core) sizeChunk(bg *budget, now time.Time) (r ChunkRecord, ok bool) {
	span := b.cfg.EscrowSpan
	e := &bg.esc
	req, tok := e.grantReq.used(now), e.grantTok.used(now)
	if req == 0 {
		return r, false
	}
	scale := escrowFactor * span.Seconds()
	n, t := int64(float64(req)*scale)+1, int64(float64(tok)*scale)+1
	lim := bg.staticLim
	if lim.RPM > 0 {
		n = min(n, lim.RPM/escrowShare, lim.RPM-bg.requests.used(now))
	}
	if lim.TPM > 0 {
		t = min(t, lim.TPM/escrowShare, lim.TPM-bg.tokens.used(now))
	}
	if lim.TPD > 0 {
		t = min(t, lim.TPD-bg.dayTokens.used(now))
	}
	// Enough tokens for n grants of the recent average size, no more
	// grants than that.
	if avg := max(1, tok/req); t/avg < n {
		n = t / avg
	}
	n = min(n, maxChunkRequests)
	if n < minChunkRequests {
		return r, false
	}
	secret := make([]byte, 16)
	rand.Read(secret) // never fails (crypto/rand since Go 1.24)
	id := max(b.nextChunk, uint64(now.UnixMicro()))
	b.nextChunk = id + 1
	return ChunkRecord{ID: id, Key: bg.spec.Key, Start: now, End: now.Add(span), Requests: n, Tokens: t,
		LeasesEnd: now.Add(span + b.cfg.LeaseTTL), Secret: secret}, true
}

// runEscrow writes the chunks noteDemand asks for until ctx ends. Run owns
// it.
func (b *Core) runEscrow(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.kick:
		}
		b.commitChunks(ctx)
	}
}

// commitChunks writes one chunk for every budget that wants one, all in
// one Change, and opens them to draws once durable.
func (b *Core) commitChunks(ctx context.Context) {
	b.mu.Lock()
	now := b.clock.Now()
	wanted := b.wanted
	b.wanted = nil
	var c Change
	var bgs []*budget
	var bounds []int64
	for _, bg := range wanted {
		if r, ok := b.sizeChunk(bg, now); ok && !b.closed {
			c.Chunks = append(c.Chunks, r)
			bgs = append(bgs, bg)
			bounds = append(bounds, b.escrowSpend(bg, r, &c))
		} else {
			bg.esc.asking = false
		}
	}
	b.mu.Unlock()
	if len(bgs) == 0 {
		return
	}
	err := b.store.Commit(ctx, c)
	if err != nil {
		b.log.Error("escrow commit failed; grants are committed one by one meanwhile", "err", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, bg := range bgs {
		bg.esc.asking = false
		if err != nil {
			continue
		}
		ch := newChunk(c.Chunks[i], bg)
		ch.spendBound = bounds[i]
		b.chunks[ch.ID] = ch // the sweep closes it, even if the broker closed meanwhile
		if !b.closed {
			bg.esc.live = append(bg.esc.live, ch)
		}
	}
}

func newChunk(r ChunkRecord, bg *budget) *chunk {
	return &chunk{ChunkRecord: r, b: bg, mac: hmac.New(sha256.New, r.Secret)}
}

// A chunk's lease id is its ID (8 bytes, so ids ascend with time like the
// others'), the lease's index in the chunk (3 bytes) and a tag of 10 bytes,
// HMAC-SHA256(Secret, ID | index): unguessable as the random part of other
// ids is, and checkable after a restart from the chunk's record alone, so a
// lease whose record was not yet written is still known as one the chunk
// granted.
const (
	chunkIDLen    = 8 + 3 + 10
	chunkIDPrefix = 8 + 3
)

// leaseID returns the id of the lease with index i. Caller holds b.mu.
func (c *chunk) leaseID(i int64) string {
	p, sum := c.idBuf[:chunkIDLen], c.idBuf[chunkIDLen:]
	binary.BigEndian.PutUint64(p[:8], c.ID)
	p[8], p[9], p[10] = byte(i>>16), byte(i>>8), byte(i)
	c.mac.Reset()
	c.mac.Write(p[:chunkIDPrefix])
	copy(p[chunkIDPrefix:], c.mac.Sum(sum[:0]))
	return encodeLeaseID(p)
}

// parseChunkLeaseID returns the chunk and index an id names, if it is a
// chunk's lease id at all (the tag is not checked).
func parseChunkLeaseID(id string) (chunkID uint64, index int64, ok bool) {
	if leaseIDEncoding.EncodedLen(chunkIDLen) != len(id) {
		return 0, 0, false
	}
	p, err := leaseIDEncoding.DecodeString(id)
	if err != nil || len(p) != chunkIDLen {
		return 0, 0, false
	}
	return binary.BigEndian.Uint64(p[:8]), int64(p[8])<<16 | int64(p[9])<<8 | int64(p[10]), true
}

// recoverLease returns a lease for id if it is one a chunk of a previous
// life granted that no record names: its caller may still hold it, so it
// can be settled or renewed. Its charge is the chunk's, counted in full at
// restore: settling it records its usage and changes no window (fixed). It
// stops counting as a phantom and counts as a known active lease until
// settled, or is expired if the chunk's LeasesEnd has passed. Caller holds
// b.mu.
func (b *Core) recoverLease(id string, now time.Time) *lease {
	cid, i, ok := parseChunkLeaseID(id)
	if !ok {
		return nil
	}
	c := b.chunks[cid]
	if c == nil || c.unknown <= 0 || i >= c.Requests || c.leaseID(i) != id {
		return nil
	}
	bg := c.b
	l := &lease{b: bg, fixed: true, LeaseRecord: LeaseRecord{ID: id, Version: 1, Key: c.Key, State: LeaseActive,
		Burndown: bg.burndown, MaxOutput: bg.maxOutput, GrantedAt: c.Start, ExpiresAt: c.LeasesEnd}}
	c.unknown--
	b.leases[id] = l
	if !c.LeasesEnd.After(now) {
		l.State, l.EndedAt = LeaseExpired, c.LeasesEnd
		b.ended = append(b.ended, endedRef{id: id, at: now})
		return l
	}
	bg.esc.phantomCap = max(0, bg.esc.phantomCap-1)
	bg.concurrent++
	b.active[l.Client]++
	b.expiry.push(expiryRef{id: id, at: l.ExpiresAt})
	return l
}

// closeChunk ends draws from c and adds its closing record and the
// per-minute usage of its leases to ch, and its active leases to
// records, whose records the sweep writes after it (see checkpoint).
// Caller holds b.mu.
func (b *Core) closeChunk(c *chunk, now time.Time, ch *Change, records *[]*lease) {
	c.closed = true
	r := c.ChunkRecord
	r.Requests, r.Tokens, r.Closed = c.usedReq, c.usedTok, true
	if r.End.After(now) { // closed early, at shutdown: nothing is granted after now
		r.End = now
	}
	c.ChunkRecord = r
	// This loop runs under the lock over a chunk's every grant (tens of
	// thousands a second on a busy budget): no map operation per lease.
	// A chunk spans a second, so its grants fall in one or two minutes,
	// and come from few clients (spend is kept per client, budget and day;
	// the store adds the records up, so one per client and day is the
	// same as one per lease, and far fewer to build and write).
	var usage []UsageRecord
	spend := len(ch.Spend)
	for _, l := range c.leases {
		if l.undone {
			continue // the caller never had it
		}
		if l.State == LeaseActive {
			// An ended lease's record was committed when it ended (by
			// Complete, or by the sweep that expired it, or is in their
			// retry): only the active ones have none yet.
			*records = append(*records, l)
		}
		// Its spend goes in the Change that takes the chunk's spend bound
		// back (below), so the store never holds less than was granted.
		addSpend(ch, spend, l.grantSpend())
		m := minuteOf(l.GrantedAt)
		i := len(usage) - 1
		for i >= 0 && usage[i].Minute != m {
			i--
		}
		if i < 0 {
			usage = append(usage, UsageRecord{Key: c.Key, Minute: m})
			i = len(usage) - 1
		}
		usage[i].Tokens += l.Reserved
		usage[i].Requests++
	}
	ch.Usage = append(ch.Usage, usage...)
	c.leases = nil
	if c.spendBound > 0 {
		// Its leases' spend is in this Change: the bound goes.
		ch.Spend = append(ch.Spend, SpendRecord{Client: escrowClient, Key: c.Key, Day: dayOf(c.Start), NanoUSD: -c.spendBound})
	}
	ch.Chunks = append(ch.Chunks, r)
	e := &c.b.esc
	for i, x := range e.live {
		if x == c {
			e.live = append(e.live[:i:i], e.live[i+1:]...)
			break
		}
	}
}

// sweepChunks closes the chunks whose span has ended (all of them once the
// broker is closed; their active leases go to records) and forgets closed
// ones past the minute window and their leases' lifetime. It returns the budgets whose phantom leases ran
// out, to dispatch. Caller holds b.mu.
func (b *Core) sweepChunks(now time.Time, ch *Change, records *[]*lease) (freed []*budget) {
	for id, c := range b.chunks {
		if !c.closed && (now.After(c.End) || b.closed) {
			b.closeChunk(c, now, ch, records)
		}
		if c.closed && now.After(c.End.Add(minuteSpan+minuteRes)) && now.After(c.LeasesEnd) {
			delete(b.chunks, id)
			ch.DeleteChunks = append(ch.DeleteChunks, id)
		}
	}
	for _, bg := range b.budgets {
		e := &bg.esc
		if len(e.restored) == 0 {
			continue
		}
		n := len(e.restored)
		e.restored = deleteFunc(e.restored, func(c *chunk) bool { return !c.LeasesEnd.After(now) || c.unknown <= 0 })
		if len(e.restored) < n {
			freed = append(freed, bg)
		}
	}
	return freed
}

// addSpend adds r to the record of its client, budget and day among the
// last few of c.Spend[from:], or appends it: leases come in runs of a
// client or a few interleaved, and a chunk's many clients must not cost a
// scan of them all per lease.
func addSpend(c *Change, from int, r SpendRecord) {
	for i := len(c.Spend) - 1; i >= max(from, len(c.Spend)-4); i-- {
		if s := &c.Spend[i]; s.Client == r.Client && s.Day == r.Day && s.Key == r.Key {
			s.NanoUSD += r.NanoUSD
			s.Calls += r.Calls
			s.Unpriced += r.Unpriced
			return
		}
	}
	c.Spend = append(c.Spend, r)
}

func deleteFunc[T any](s []T, del func(T) bool) []T {
	out := s[:0]
	for _, x := range s {
		if !del(x) {
			out = append(out, x)
		}
	}
	clear(s[len(out):])
	return out
}

// restoreChunks charges the chunks of snap: each in full (its committed
// amount, or what it granted if closed) at its End, or now if that is
// later than now, since every grant from it came before the crash. A chunk
// not closed is also added to the day's usage in full and closed in the
// store by the first commit (into c). Caller holds b.mu.
func (b *Core) restoreChunks(snap *Snapshot, now time.Time, c *Change) {
	for _, r := range snap.Chunks {
		b.nextChunk = max(b.nextChunk, r.ID+1)
		bg := b.budgets[r.Key]
		if bg == nil {
			c.DeleteChunks = append(c.DeleteChunks, r.ID)
			continue
		}
		ch := newChunk(r, bg)
		ch.closed = true
		ch.unknown = r.Requests
		b.chunks[r.ID] = ch
		at := r.End
		if at.After(now) {
			at = now
		}
		bg.requests.add(now, at, r.Requests)
		bg.tokens.add(now, at, r.Tokens)
		if !r.Closed {
			bg.dayTokens.add(now, at, r.Tokens)
			ch.Closed = true
			c.Chunks = append(c.Chunks, ch.ChunkRecord)
			c.Usage = append(c.Usage, UsageRecord{Key: r.Key, Minute: minuteOf(at), Tokens: r.Tokens, Requests: r.Requests})
		}
	}
}

// restoredChunk returns the chunk of a previous life that granted the
// lease id, if its record is still there: the lease is then fixed (its
// charge is the chunk's) and known (not a phantom). Caller holds b.mu.
func (b *Core) restoredChunk(id string) *chunk {
	cid, _, ok := parseChunkLeaseID(id)
	if !ok {
		return nil
	}
	c := b.chunks[cid]
	if c != nil {
		c.unknown = max(0, c.unknown-1)
	}
	return c
}

// restorePhantoms lists, per budget, the chunks with leases no record
// names that may still run, and bounds how many can. Caller holds b.mu.
func (b *Core) restorePhantoms(now time.Time) {
	for _, c := range b.chunks {
		if c.unknown > 0 && c.LeasesEnd.After(now) {
			c.b.esc.restored = append(c.b.esc.restored, c)
		}
	}
	for _, bg := range b.budgets {
		if lim := bg.staticLim.Concurrency; lim > 0 {
			bg.esc.phantomCap = max(0, lim-bg.concurrent)
		} else {
			bg.esc.phantomCap = 0 // no limit to hold them against
		}
	}
}
