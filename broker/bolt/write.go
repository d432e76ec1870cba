package bolt

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"go.etcd.io/bbolt"
)

// write is a Change encoded before its transaction, so that the work done
// while holding bbolt's writer lock, which every group waits for, is only
// lookups and puts.
type write struct {
	specs, overrides  []kv // overrides: nil v deletes
	adaptive          []kv
	leases            []leaseWrite
	deleteLeases      [][]byte
	usage             []usageDelta
	deleteUsageBefore int64
	stats             []statsDelta
	deleteStatsBefore int64
	deleteClientStats int64
	chunks            []kv
	deleteChunks      [][]byte
	// The tenants' (spend.go).
	spend, clientUsage                         []spendDelta
	deleteSpendBefore, deleteClientUsageBefore int64
}

// statsDelta is added to the client's record (k) and the budget's (total).
type statsDelta struct {
	k, total []byte
	s        *broker.Stats
}

type kv struct{ k, v []byte }

type leaseWrite struct {
	id      []byte
	version uint64
	v       []byte
}

type usageDelta struct {
	k                []byte
	tokens, requests int64
}

func (w *write) empty() bool {
	return len(w.specs)+len(w.overrides)+len(w.leases)+len(w.deleteLeases)+len(w.usage)+len(w.adaptive)+len(w.stats)+
		len(w.chunks)+len(w.deleteChunks)+len(w.spend)+len(w.clientUsage) == 0 &&
		w.deleteUsageBefore == 0 && w.deleteStatsBefore == 0 && w.deleteClientStats == 0 &&
		w.deleteSpendBefore == 0 && w.deleteClientUsageBefore == 0
}

// checkKey fails an empty or oversized key; like checkTime, the caller
// names it only on failure.
func checkKey(k []byte) error {
	if len(k) == 0 {
		return errors.New("empty key")
	}
	if len(k) > bbolt.MaxKeySize {
		return fmt.Errorf("key is %d bytes; at most %d", len(k), bbolt.MaxKeySize)
	}
	return nil
}

func prepare(c *broker.Change) (*write, error) {
	w := &write{deleteUsageBefore: c.DeleteUsageBefore, deleteStatsBefore: c.DeleteStatsBefore, deleteClientStats: c.DeleteClientStatsBefore}
	for i := range c.Stats {
		r := &c.Stats[i]
		k := statsKey(r.Minute, r.Key, r.Client)
		if err := checkKey(k); err != nil {
			return nil, fmt.Errorf("stats %s: %w", r.Key, err)
		}
		w.stats = append(w.stats, statsDelta{k, statsKey(r.Minute, r.Key, ""), &r.Stats})
	}
	for i := range c.Specs {
		s := &c.Specs[i]
		k := appendKey(nil, s.Key)
		if err := checkKey(k); err != nil {
			return nil, fmt.Errorf("spec %s: %w", s.Key, err)
		}
		if err := checkTime(s.SourceTime); err != nil {
			return nil, fmt.Errorf("spec %s source time %w", s.Key, err)
		}
		w.specs = append(w.specs, kv{k, encodeSpec(k, s)})
	}
	for i := range c.Adaptive {
		a := &c.Adaptive[i]
		k := appendKey(nil, a.Key)
		if err := checkKey(k); err != nil {
			return nil, fmt.Errorf("adaptive %s: %w", a.Key, err)
		}
		if err := checkTime(a.LastDecrease); err != nil {
			return nil, fmt.Errorf("adaptive %s last decrease %w", a.Key, err)
		}
		w.adaptive = append(w.adaptive, kv{k, encodeAdaptive(k, a)})
	}
	for _, o := range c.Overrides {
		k := appendKey(nil, o.Key)
		if err := checkKey(k); err != nil {
			return nil, fmt.Errorf("override %s: %w", o.Key, err)
		}
		var v []byte
		if o.Override != nil {
			if err := checkTime(o.Override.SetAt); err != nil {
				return nil, fmt.Errorf("override %s set at %w", o.Key, err)
			}
			v = encodeOverride(k, o.Override)
		}
		w.overrides = append(w.overrides, kv{k, v})
	}
	for i := range c.Leases {
		r := &c.Leases[i]
		k := []byte(r.ID)
		if err := checkKey(k); err != nil {
			return nil, fmt.Errorf("lease %q: %w", r.ID, err)
		}
		for _, t := range []struct {
			name string
			t    time.Time
		}{{"granted at", r.GrantedAt}, {"expires at", r.ExpiresAt}, {"ended at", r.EndedAt}} {
			if err := checkTime(t.t); err != nil {
				return nil, fmt.Errorf("lease %q %s %w", r.ID, t.name, err)
			}
		}
		w.leases = append(w.leases, leaseWrite{k, r.Version, encodeLease(r)})
	}
	for _, id := range c.DeleteLeases {
		if id != "" {
			w.deleteLeases = append(w.deleteLeases, []byte(id))
		}
	}
	for i := range c.Chunks {
		r := &c.Chunks[i]
		for _, t := range []time.Time{r.Start, r.End, r.LeasesEnd} {
			if err := checkTime(t); err != nil {
				return nil, fmt.Errorf("chunk %s time %w", r.Key, err)
			}
		}
		k := chunkKey(r.ID)
		w.chunks = append(w.chunks, kv{k, encodeChunk(k, r)})
	}
	for _, id := range c.DeleteChunks {
		w.deleteChunks = append(w.deleteChunks, chunkKey(id))
	}
	for _, u := range c.Usage {
		k := usageKey(u.Minute, u.Key)
		if err := checkKey(k); err != nil {
			return nil, fmt.Errorf("usage %s: %w", u.Key, err)
		}
		w.usage = append(w.usage, usageDelta{k, u.Tokens, u.Requests})
	}
	if err := prepareTenants(c, w); err != nil {
		return nil, err
	}
	return w, nil
}

// apply writes w in tx. It changes nothing outside tx, so running it again
// in a new transaction after a rolled-back one applies w exactly once: the
// usage deltas are added to the totals tx reads, which a rollback restored.
func (w *write) apply(tx *bbolt.Tx) error {
	specs, overrides := tx.Bucket(bucketSpecs), tx.Bucket(bucketOverrides)
	leases, usage := tx.Bucket(bucketLeases), tx.Bucket(bucketUsage)
	for _, s := range w.specs {
		if err := specs.Put(s.k, s.v); err != nil {
			return fmt.Errorf("put spec %s: %w", describeKey(bucketSpecs, s.k), err)
		}
	}
	if len(w.adaptive) > 0 {
		adaptive, err := bucket(tx, bucketAdaptive)
		if err != nil {
			return err
		}
		for _, a := range w.adaptive {
			if err := adaptive.Put(a.k, a.v); err != nil {
				return fmt.Errorf("put adaptive %s: %w", describeKey(bucketAdaptive, a.k), err)
			}
		}
	}
	for _, o := range w.overrides {
		var err error
		if o.v == nil {
			err = overrides.Delete(o.k)
		} else {
			err = overrides.Put(o.k, o.v)
		}
		if err != nil {
			return fmt.Errorf("put override %s: %w", describeKey(bucketOverrides, o.k), err)
		}
	}
	for _, l := range w.leases {
		if old := leases.Get(l.id); old != nil {
			v, err := leaseVersion(l.id, old)
			if err != nil {
				return fmt.Errorf("bucket %s, key %q: stored lease: %w", bucketLeases, l.id, err)
			}
			// A racing commit already stored a later state of this lease.
			if v > l.version {
				continue
			}
		}
		if err := leases.Put(l.id, l.v); err != nil {
			return fmt.Errorf("put lease %q: %w", l.id, err)
		}
	}
	for _, u := range w.usage {
		var tokens, requests int64
		if old := usage.Get(u.k); old != nil {
			var err error
			if tokens, requests, err = decodeUsageTotals(u.k, old); err != nil {
				return fmt.Errorf("bucket %s, key %s: stored usage: %w", bucketUsage, describeKey(bucketUsage, u.k), err)
			}
		}
		t, ok1 := add(tokens, u.tokens)
		r, ok2 := add(requests, u.requests)
		if !ok1 || !ok2 {
			return fmt.Errorf("usage %s: total overflows", describeKey(bucketUsage, u.k))
		}
		if err := usage.Put(u.k, encodeUsage(u.k, t, r)); err != nil {
			return fmt.Errorf("put usage %s: %w", describeKey(bucketUsage, u.k), err)
		}
	}
	if len(w.stats) > 0 {
		stats, err := bucket(tx, bucketStats)
		if err != nil {
			return err
		}
		totals, err := bucket(tx, bucketStatsTotal)
		if err != nil {
			return err
		}
		for _, d := range w.stats {
			if err := addStats(stats, bucketStats, d.k, d.s); err != nil {
				return err
			}
			if err := addStats(totals, bucketStatsTotal, d.total, d.s); err != nil {
				return err
			}
		}
	}
	if len(w.chunks)+len(w.deleteChunks) > 0 {
		chunks, err := bucket(tx, bucketChunks)
		if err != nil {
			return err
		}
		for _, c := range w.chunks {
			if err := chunks.Put(c.k, c.v); err != nil {
				return fmt.Errorf("put chunk %s: %w", describeKey(bucketChunks, c.k), err)
			}
		}
		// After the upserts, as the deletions below: a chunk closed and
		// forgotten in one Change is gone.
		for _, k := range w.deleteChunks {
			if err := chunks.Delete(k); err != nil {
				return fmt.Errorf("delete chunk %s: %w", describeKey(bucketChunks, k), err)
			}
		}
	}
	if err := w.applyTenants(tx); err != nil {
		return err
	}
	// Deletions come last: a lease both upserted and deleted in one Change
	// is gone, and no usage before the cut-off survives the Change.
	for _, id := range w.deleteLeases {
		if err := leases.Delete(id); err != nil {
			return fmt.Errorf("delete lease %q: %w", id, err)
		}
	}
	if err := deleteBefore(usage, bucketUsage, w.deleteUsageBefore); err != nil {
		return err
	}
	if err := deleteBefore(tx.Bucket(bucketStatsTotal), bucketStatsTotal, w.deleteStatsBefore); err != nil {
		return err
	}
	if err := deleteBefore(tx.Bucket(bucketStats), bucketStats, w.deleteClientStats); err != nil {
		return err
	}
	return nil
}

// addStats adds delta to the record at k of bucket b (named name).
func addStats(b *bbolt.Bucket, name, k []byte, delta *broker.Stats) error {
	var total broker.Stats
	if old := b.Get(k); old != nil {
		r, err := decodeStats(k, old)
		if err != nil {
			// A damaged history record is replaced by the delta: losing
			// one minute of statistics beats failing the sweep's commit,
			// which carries lease expiries.
			r = broker.StatsRecord{}
		}
		total = r.Stats
	}
	prev := total
	total.Add(delta)
	// Gauges replace: the latest write knows the limits in force.
	total.LimitTPM, total.LimitRPM = cmp.Or(delta.LimitTPM, prev.LimitTPM), cmp.Or(delta.LimitRPM, prev.LimitRPM)
	if err := b.Put(k, encodeStats(k, &total)); err != nil {
		return fmt.Errorf("put %s %s: %w", name, describeKey(name, k), err)
	}
	return nil
}

// deleteBefore deletes the keys of a minute-first bucket before minute. A
// minute of 0 is a Change's "no cut-off"; a nil b is an added bucket that
// the file does not have yet: nothing to delete either way.
func deleteBefore(b *bbolt.Bucket, name []byte, minute int64) error {
	if minute == 0 || b == nil {
		return nil
	}
	// Collect, then delete: deleting under a bbolt cursor can make Next
	// skip a key.
	var dead [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if m, _ := usageMinute(k); m >= minute {
			break
		}
		dead = append(dead, bytes.Clone(k))
	}
	for _, k := range dead {
		if err := b.Delete(k); err != nil {
			return fmt.Errorf("delete %s %s: %w", name, describeKey(name, k), err)
		}
	}
	return nil
}

func add(a, b int64) (int64, bool) {
	s := a + b
	return s, !((b > 0 && s < a) || (b < 0 && s > a))
}
