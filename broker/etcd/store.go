package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/bedrockqb/quotabroker/broker"
)

var _ broker.Store = (*Store)(nil)

// Format is the value of the marker key's "format": what a prefix written
// by this build holds. Open refuses any other.
const Format = "quota-broker/1"

// Defaults.
const (
	DefaultPrefix  = "/quota-broker/"
	DefaultCluster = "quota-broker"
)

// etcd's limits (its defaults, which operators rarely raise): a request of
// at most 1.5 MiB and a transaction of at most 128 operations. A Change is
// split into transactions within both, with room for the fence and framing.
const (
	maxTxnOps   = 127 // 128 minus the fence's compare, counted by some versions
	maxTxnBytes = 1 << 20
)

// Clock is the time the Store and the Session compare deadlines with: the
// broker's clock, which is the system's in production.
type Clock interface{ Now() time.Time }

// Options tune a Store. Clock is required.
type Options struct {
	// Prefix is where the cluster's keys live; it always ends with "/".
	// Default DefaultPrefix.
	Prefix string
	// Cluster names the cluster in the prefix's format marker, so that a
	// second cluster pointed at the same prefix is refused rather than
	// merged. Default DefaultCluster.
	Cluster string
	// Clock reads the time the step-down deadline is compared with: the
	// broker's.
	Clock Clock
}

// marker is the value of the format key.
type marker struct {
	Format  string `json:"format"`
	Cluster string `json:"cluster"`
}

// Store is a broker.Store in etcd for the replica that leads (see doc.go).
// Writes are refused until Lead names the leadership they are fenced on.
type Store struct {
	cli    *clientv3.Client
	prefix string
	clock  Clock

	// fence is the leadership every write is conditional on; nil: none.
	fenceMu sync.Mutex
	fence   *Fence

	// commitMu serialises commits (group commit: a Commit that finds the
	// loop busy queues, and the next round takes every queued Change), and
	// guards the caches below, which mirror what etcd holds under the
	// leadership (this Store is its only writer; Load fills them): lease
	// versions and the additive totals (usage, client usage, spend), so
	// that "upsert unless newer" and "add the delta" need no read. A key a
	// failed write left unsure is read again.
	commitMu sync.Mutex
	queueMu  sync.Mutex
	queue    []*call
	versions map[string]uint64
	totals   map[string]tally
	unsure   map[string]bool // keys whose stored value a failed write left unknown
	// lastRev is the revision of this Store's last write or Load (0:
	// none), and epochRev the epoch key's last write (0: never; -1:
	// unknown, read it again): see settle.
	lastRev, epochRev int64
	// fromCopy: the last Load took the follower's copy (follow.go).
	fromCopy bool

	// mirror is the standby's copy of the prefix (follow.go).
	mirror *mirror
}

// tally is the stored value of an additive record: its identity (the
// record with its counts zero: a broker.UsageRecord, ClientUsageRecord or
// SpendRecord) and its counts (tokens and requests; or nano-dollars, calls
// and unpriced calls).
type tally struct {
	id any
	n  [3]int64
}

// record is t as the record stored.
func (t tally) record() any {
	switch r := t.id.(type) {
	case broker.UsageRecord:
		r.Tokens, r.Requests = t.n[0], t.n[1]
		return r
	case broker.ClientUsageRecord:
		r.Tokens, r.Requests = t.n[0], t.n[1]
		return r
	case broker.SpendRecord:
		r.NanoUSD, r.Calls, r.Unpriced = t.n[0], t.n[1], t.n[2]
		return r
	}
	panic(fmt.Sprintf("etcd store: tally of %T", t.id))
}

// decodeTally reads val, a record of additive section sec.
func decodeTally(sec string, val []byte) (tally, error) {
	switch sec {
	case secUsage:
		var v broker.UsageRecord
		err := json.Unmarshal(val, &v)
		n := [3]int64{v.Tokens, v.Requests}
		v.Tokens, v.Requests = 0, 0
		return tally{v, n}, err
	case secClientUsage:
		var v broker.ClientUsageRecord
		err := json.Unmarshal(val, &v)
		n := [3]int64{v.Tokens, v.Requests}
		v.Tokens, v.Requests = 0, 0
		return tally{v, n}, err
	case secSpend:
		var v broker.SpendRecord
		err := json.Unmarshal(val, &v)
		n := [3]int64{v.NanoUSD, v.Calls, v.Unpriced}
		v.NanoUSD, v.Calls, v.Unpriced = 0, 0, 0
		return tally{v, n}, err
	}
	return tally{}, fmt.Errorf("section %q holds no totals", sec)
}

// call is one Commit waiting for its group.
type call struct {
	c    broker.Change
	done chan error
}

// Fence is the leadership writes are conditional on: the election key and
// its create revision, and the deadline on this replica's clock after which
// it no longer counts as the leader (see Session.Deadline).
type Fence struct {
	Key      string
	Rev      int64
	Deadline func() time.Time
}

var (
	// ErrNotLeader: a write without leadership, or after it was lost.
	ErrNotLeader = errors.New("this replica does not lead the cluster")
	// ErrForeignPrefix: the prefix holds keys but no format marker.
	ErrForeignPrefix = errors.New("prefix holds data that is not a quota broker's")
	// ErrOtherCluster: the prefix's marker names another cluster or format.
	ErrOtherCluster = errors.New("prefix belongs to another cluster")
)

// Open checks that prefix is this cluster's (writing the format marker on
// an empty prefix) and returns a Store. It does not load: Load does, once
// this replica leads.
func Open(ctx context.Context, cli *clientv3.Client, opts Options) (*Store, error) {
	if opts.Clock == nil {
		return nil, errors.New("etcd store: Options.Clock is required")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(opts.Prefix, "/") {
		opts.Prefix += "/"
	}
	if opts.Cluster == "" {
		opts.Cluster = DefaultCluster
	}
	s := &Store{cli: cli, prefix: opts.Prefix, clock: opts.Clock,
		versions: map[string]uint64{}, totals: map[string]tally{}, unsure: map[string]bool{}, mirror: newMirror()}
	if err := s.checkMarker(ctx, opts.Cluster); err != nil {
		return nil, fmt.Errorf("etcd prefix %q: %w", opts.Prefix, err)
	}
	return s, nil
}

// Prefix is where the Store's keys live.
func (s *Store) Prefix() string { return s.prefix }

// ElectionPrefix is the prefix replicas campaign under.
func (s *Store) ElectionPrefix() string { return s.prefix + "leader/" }

func (s *Store) checkMarker(ctx context.Context, cluster string) error {
	key := s.prefix + "format"
	want, _ := json.Marshal(marker{Format: Format, Cluster: cluster})
	for range 2 {
		resp, err := s.cli.Get(ctx, key)
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 1 {
			var m marker
			if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil || m.Format == "" {
				return fmt.Errorf("%w: its format key holds %q", ErrForeignPrefix, resp.Kvs[0].Value)
			}
			if m.Format != Format {
				return fmt.Errorf("%w: format %q, this build reads %q", ErrOtherCluster, m.Format, Format)
			}
			if m.Cluster != cluster {
				return fmt.Errorf("%w: it holds cluster %q, this replica is of cluster %q (--etcd-cluster); give each cluster its own --etcd-prefix", ErrOtherCluster, m.Cluster, cluster)
			}
			return nil
		}
		n, err := s.cli.Get(ctx, s.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return err
		}
		if n.Count > 0 {
			return fmt.Errorf("%w: %d keys and no format key; choose another --etcd-prefix", ErrForeignPrefix, n.Count)
		}
		// Empty: claim it, unless another replica is doing so right now
		// (then read its marker on the second round).
		tx, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(key), "=", 0)).
			Then(clientv3.OpPut(key, string(want))).Commit()
		if err != nil {
			return err
		}
		if tx.Succeeded {
			return nil
		}
	}
	return errors.New("format key changed twice while being read")
}

// Lead fences every later write on f, until Lead is called again (nil:
// writes are refused).
func (s *Store) Lead(f *Fence) {
	s.fenceMu.Lock()
	s.fence = f
	s.fenceMu.Unlock()
}

func (s *Store) currentFence() *Fence {
	s.fenceMu.Lock()
	defer s.fenceMu.Unlock()
	return s.fence
}

// Key layout under the prefix (see doc.go).
const (
	secSpecs     = "specs/"
	secOverrides = "overrides/"
	secAdaptive  = "adaptive/"
	secLeases    = "leases/"
	secUsage     = "usage/"
	secChunks    = "chunks/"
	// The tenants' (broker/spend.go): totals per client, budget and day or
	// minute, keyed like usage so that old ones are one range deletion.
	secSpend       = "spend/"
	secClientUsage = "client-usage/"
	// keyEpoch is written after a write whose answer was lost, and every
	// write is conditional on its revision (commit.go: settle).
	keyEpoch = "epoch"
)

// budgetKey is unambiguous: each part is path-escaped, so no "/" is left
// in one.
func budgetKey(k broker.Key) string {
	return url.PathEscape(k.Region) + "/" + url.PathEscape(k.Scope.String()) + "/" + url.PathEscape(k.Model)
}

// usageKey starts with the minute, fixed-width hex of the minute plus an
// offset that keeps it non-negative, so that byte order is time order and
// DeleteUsageBefore is one range.
func (s *Store) usageKey(minute int64, k broker.Key) string {
	return s.usagePrefix(minute) + "/" + budgetKey(k)
}

func (s *Store) usagePrefix(minute int64) string { return s.timePrefix(secUsage, minute) }

// timePrefix is where section sec's records of time t (a minute or a day)
// start: fixed-width hex of t plus an offset that keeps it non-negative.
func (s *Store) timePrefix(sec string, t int64) string {
	return fmt.Sprintf("%s%s%016x", s.prefix, sec, uint64(t)+1<<63)
}

// spendKey and clientUsageKey start with the day or minute, like usageKey,
// then the client (path-escaped, so no "/" is left in it) and the budget.
func (s *Store) spendKey(r broker.SpendRecord) string {
	return s.timePrefix(secSpend, r.Day) + "/" + url.PathEscape(r.Client) + "/" + budgetKey(r.Key)
}

func (s *Store) clientUsageKey(r broker.ClientUsageRecord) string {
	k := s.timePrefix(secClientUsage, r.Minute) + "/" + url.PathEscape(r.Client) + "/" + budgetKey(r.Key)
	if r.Route != "" {
		// A route's usage is a total of its own (the client's caps per
		// route), beside the client's calls that named the model.
		k += "/route=" + url.PathEscape(r.Route)
	}
	return k
}

func (s *Store) chunkKey(id uint64) string { return fmt.Sprintf("%s%s%016x", s.prefix, secChunks, id) }

// Load reads every record at one revision. It fails on a record it cannot
// decode, naming its key: a skipped lease or usage minute could let a
// budget grant past its limit.
//
// While Follow runs (this replica was a standby until now), Load takes the
// records from the follower's copy instead, once that has caught up with
// a revision read after the call began (follow.go); a copy that is broken
// or does not catch up in time is passed over for the full read.
func (s *Store) Load(ctx context.Context) (broker.Snapshot, error) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	l, ok := s.loadMirror(ctx)
	s.fromCopy = ok
	if ok {
		s.loaded(l)
		return l.snap, nil
	}
	l = newLoading()
	rev, err := s.rangeAll(ctx, func(key string, val []byte, mod int64) error {
		rec, err := s.decode(key, val)
		if err != nil {
			return fmt.Errorf("key %s: %w", key, err)
		}
		l.add(s, key, rec, mod)
		return nil
	})
	if err != nil {
		return broker.Snapshot{}, fmt.Errorf("load from etcd: %w", err)
	}
	l.rev = rev
	s.loaded(l)
	return l.snap, nil
}

// loaded makes l what the caches know. Caller holds commitMu.
func (s *Store) loaded(l *loading) {
	s.versions, s.totals, s.unsure = l.versions, l.totals, map[string]bool{}
	s.lastRev, s.epochRev = l.rev, l.epoch
}

// rangeAll reads every key under the prefix at one revision, in key
// order, in pages, and returns that revision.
func (s *Store) rangeAll(ctx context.Context, fn func(key string, val []byte, mod int64) error) (int64, error) {
	const page = 5000
	from, end := s.prefix, clientv3.GetPrefixRangeEnd(s.prefix)
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, from, opts...)
		if err != nil {
			return 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := fn(string(kv.Key), kv.Value, kv.ModRevision); err != nil {
				return 0, err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// decode reads the record stored at key: a broker.Spec, OverrideRecord,
// AdaptiveRecord, LeaseRecord, ChunkRecord or a tally; nil for the keys
// that hold no record (the format marker, the election, the epoch).
func (s *Store) decode(key string, val []byte) (any, error) {
	sec, _, _ := strings.Cut(strings.TrimPrefix(key, s.prefix), "/")
	switch sec + "/" {
	case secSpecs:
		return unmarshal[broker.Spec](val)
	case secOverrides:
		return unmarshal[broker.OverrideRecord](val)
	case secAdaptive:
		return unmarshal[broker.AdaptiveRecord](val)
	case secLeases:
		return unmarshal[broker.LeaseRecord](val)
	case secUsage, secClientUsage, secSpend:
		t, err := decodeTally(sec+"/", val)
		if err != nil {
			return nil, err
		}
		return t, nil
	case secChunks:
		return unmarshal[broker.ChunkRecord](val)
	}
	return nil, nil
}

func unmarshal[T any](val []byte) (any, error) {
	var v T
	if err := json.Unmarshal(val, &v); err != nil {
		return nil, err
	}
	return v, nil
}

// loading is a Load being assembled, in key order: the snapshot, and what
// the caches will know.
type loading struct {
	snap     broker.Snapshot
	versions map[string]uint64
	totals   map[string]tally
	rev      int64 // the revision read at
	epoch    int64 // the epoch key's mod revision; 0: absent
}

func newLoading() *loading {
	return &loading{versions: map[string]uint64{}, totals: map[string]tally{}}
}

// add takes the record rec (decode's) stored at key with mod revision mod.
func (l *loading) add(s *Store, key string, rec any, mod int64) {
	if key == s.prefix+keyEpoch {
		l.epoch = mod
	}
	snap := &l.snap
	switch v := rec.(type) {
	case broker.Spec:
		snap.Specs = append(snap.Specs, v)
	case broker.OverrideRecord:
		snap.Overrides = append(snap.Overrides, v)
	case broker.AdaptiveRecord:
		snap.Adaptive = append(snap.Adaptive, v)
	case broker.LeaseRecord:
		snap.Leases = append(snap.Leases, v)
		l.versions[key] = v.Version
	case tally:
		l.totals[key] = v
		switch r := v.record().(type) {
		case broker.UsageRecord:
			snap.Usage = append(snap.Usage, r)
		case broker.ClientUsageRecord:
			snap.ClientUsage = append(snap.ClientUsage, r)
		case broker.SpendRecord:
			snap.Spend = append(snap.Spend, r)
		}
	case broker.ChunkRecord:
		snap.Chunks = append(snap.Chunks, v)
	}
}
