package broker_test

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"

	"github.com/bedrockqb/quotabroker/broker"
)

// memStore is an in-memory broker.Store with the contract's semantics, for
// domain tests. fail, when set, makes Commit fail with nothing applied.
type memStore struct {
	mu        sync.Mutex
	specs     map[broker.Key]broker.Spec
	overrides map[broker.Key]*broker.Override
	leases    map[string]broker.LeaseRecord
	usage     map[usageKey]broker.UsageRecord
	adaptive  map[broker.Key]broker.AdaptiveRecord
	stats     map[statsKey]broker.StatsRecord
	chunks    map[uint64]broker.ChunkRecord
	spend     map[tenantKey]broker.SpendRecord
	cusage    map[tenantKey]broker.ClientUsageRecord
	fail      error
	hook      func(broker.Change) // called at Commit's start, without mu
	commits   int
	maxLeases int // the most lease records one Commit carried
}

type statsKey struct {
	k         broker.Key
	m         int64
	client    string
	perClient bool
}

type usageKey struct {
	k broker.Key
	m int64
}

// tenantKey keys spend (n: a day) and client usage (n: a minute; route:
// the route of the grants, "" for calls naming a model).
type tenantKey struct {
	client string
	k      broker.Key
	n      int64
	route  string
}

func newMemStore() *memStore {
	return &memStore{
		specs:     map[broker.Key]broker.Spec{},
		overrides: map[broker.Key]*broker.Override{},
		leases:    map[string]broker.LeaseRecord{},
		usage:     map[usageKey]broker.UsageRecord{},
		adaptive:  map[broker.Key]broker.AdaptiveRecord{},
		stats:     map[statsKey]broker.StatsRecord{},
		chunks:    map[uint64]broker.ChunkRecord{},
		spend:     map[tenantKey]broker.SpendRecord{},
		cusage:    map[tenantKey]broker.ClientUsageRecord{},
	}
}

func (s *memStore) setFail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = err
}

func (s *memStore) Load(context.Context) (broker.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var snap broker.Snapshot
	for _, v := range s.specs {
		snap.Specs = append(snap.Specs, v)
	}
	for k, v := range s.overrides {
		snap.Overrides = append(snap.Overrides, broker.OverrideRecord{Key: k, Override: v})
	}
	for _, v := range s.leases {
		snap.Leases = append(snap.Leases, v)
	}
	for _, v := range s.usage {
		snap.Usage = append(snap.Usage, v)
	}
	for _, v := range s.adaptive {
		snap.Adaptive = append(snap.Adaptive, v)
	}
	for _, v := range s.chunks {
		snap.Chunks = append(snap.Chunks, v)
	}
	for _, v := range s.spend {
		snap.Spend = append(snap.Spend, v)
	}
	for _, v := range s.cusage {
		snap.ClientUsage = append(snap.ClientUsage, v)
	}
	return snap, nil
}

func (s *memStore) setHook(fn func(broker.Change)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hook = fn
}

func (s *memStore) Commit(_ context.Context, c broker.Change) error {
	s.mu.Lock()
	hook := s.hook
	s.mu.Unlock()
	if hook != nil {
		hook(c)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	s.commits++
	s.maxLeases = max(s.maxLeases, len(c.Leases))
	for _, sp := range c.Specs {
		s.specs[sp.Key] = sp
	}
	for _, o := range c.Overrides {
		if o.Override == nil {
			delete(s.overrides, o.Key)
		} else {
			s.overrides[o.Key] = o.Override
		}
	}
	for _, l := range c.Leases {
		if old, ok := s.leases[l.ID]; ok && old.Version > l.Version {
			continue
		}
		s.leases[l.ID] = l
	}
	for _, a := range c.Adaptive {
		s.adaptive[a.Key] = a
	}
	for _, id := range c.DeleteLeases {
		delete(s.leases, id)
	}
	for _, r := range c.Chunks {
		s.chunks[r.ID] = r
	}
	for _, id := range c.DeleteChunks {
		delete(s.chunks, id)
	}
	for _, u := range c.Usage {
		k := usageKey{u.Key, u.Minute}
		old := s.usage[k]
		old.Key, old.Minute = u.Key, u.Minute
		old.Tokens += u.Tokens
		old.Requests += u.Requests
		s.usage[k] = old
	}
	for _, r := range c.Stats {
		// Per client, and the per-budget sum (client "" with perClient false).
		for _, k := range []statsKey{{r.Key, r.Minute, r.Client, true}, {r.Key, r.Minute, "", false}} {
			old, ok := s.stats[k]
			if !ok {
				old = broker.StatsRecord{Key: r.Key, Minute: r.Minute, Client: k.client}
			}
			tpm, rpm := old.LimitTPM, old.LimitRPM
			old.Add(&r.Stats)
			old.LimitTPM, old.LimitRPM = cmp.Or(r.LimitTPM, tpm), cmp.Or(r.LimitRPM, rpm)
			s.stats[k] = old
		}
	}
	for k := range s.stats {
		if (!k.perClient && k.m < c.DeleteStatsBefore) || (k.perClient && k.m < c.DeleteClientStatsBefore) {
			delete(s.stats, k)
		}
	}
	for _, r := range c.Spend {
		k := tenantKey{r.Client, r.Key, r.Day, ""}
		old := s.spend[k]
		old.Client, old.Key, old.Day = r.Client, r.Key, r.Day
		old.NanoUSD += r.NanoUSD
		old.Calls += r.Calls
		old.Unpriced += r.Unpriced
		s.spend[k] = old
	}
	for _, r := range c.ClientUsage {
		k := tenantKey{r.Client, r.Key, r.Minute, r.Route}
		old := s.cusage[k]
		old.Client, old.Key, old.Minute, old.Route = r.Client, r.Key, r.Minute, r.Route
		old.Tokens += r.Tokens
		old.Requests += r.Requests
		s.cusage[k] = old
	}
	for k := range s.spend {
		if k.n < c.DeleteSpendBefore {
			delete(s.spend, k)
		}
	}
	for k := range s.cusage {
		if k.n < c.DeleteClientUsageBefore {
			delete(s.cusage, k)
		}
	}
	if c.DeleteUsageBefore > 0 {
		for k := range s.usage {
			if k.m < c.DeleteUsageBefore {
				delete(s.usage, k)
			}
		}
	}
	return nil
}

// ReadStats implements broker.StatsReader.
func (s *memStore) ReadStats(_ context.Context, from, to int64, perClient bool, fn func(*broker.StatsRecord) error) error {
	s.mu.Lock()
	var recs []broker.StatsRecord
	for k, r := range s.stats {
		if k.m >= from && k.m < to && k.perClient == perClient {
			recs = append(recs, r)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(recs, func(a, b broker.StatsRecord) int { return cmp.Compare(a.Minute, b.Minute) })
	for i := range recs {
		if err := fn(&recs[i]); err != nil {
			return err
		}
	}
	return nil
}

var errDiskFull = errors.New("disk full")
