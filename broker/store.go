package broker

import (
	"context"
	"time"
)

// Store keeps the broker's state across restarts. The broker calls Commit
// before it answers any call that changed state, so whatever a client was
// told is on disk; Load rebuilds the state at start-up.
//
// A Store must apply each Change atomically, and must not drop a Change it
// has accepted when ctx is cancelled: Commit either fails with nothing
// applied, or returns after the whole Change is durable. (A store that
// must split a Change to fit its backend's limits, as broker/etcd does, may
// fail with part of it applied, in an order where every part applied only
// over-charges; the broker's retry then adds usage twice, which is safe.)
type Store interface {
	Load(ctx context.Context) (Snapshot, error)
	Commit(ctx context.Context, c Change) error
}

// Snapshot is everything a Store holds.
type Snapshot struct {
	Specs     []Spec
	Overrides []OverrideRecord
	Leases    []LeaseRecord
	Usage     []UsageRecord
	Adaptive  []AdaptiveRecord
	Chunks    []ChunkRecord
	// Spend and ClientUsage are the tenants' (spend.go): totals per
	// client, budget and day or minute.
	Spend       []SpendRecord
	ClientUsage []ClientUsageRecord
}

// Change is one atomic update.
type Change struct {
	Specs     []Spec           // upserted by Key
	Overrides []OverrideRecord // upserted by Key; a nil Override deletes
	Leases    []LeaseRecord    // upserted by ID unless the stored Version is newer
	// DeleteLeases are forgotten: completed or expired leases whose window
	// and retention have passed.
	DeleteLeases []string
	Usage        []UsageRecord // added to the stored record of (Key, Minute)
	// DeleteUsageBefore drops usage records older than this minute (0: none).
	DeleteUsageBefore int64
	Adaptive          []AdaptiveRecord // upserted by Key
	// Stats are history deltas (see StatsRecord), for stores that keep it.
	Stats []StatsRecord
	// DeleteStatsBefore drops per-budget history older than this minute,
	// DeleteClientStatsBefore per-client history (0: none).
	DeleteStatsBefore, DeleteClientStatsBefore int64
	// Chunks are upserted by ID: one record when a chunk is committed, one
	// when it is closed (never one per grant).
	Chunks []ChunkRecord
	// DeleteChunks are forgotten: closed chunks past their window and the
	// leases they could have granted.
	DeleteChunks []uint64
	// Spend is added to the stored record of (Client, Key, Day), and
	// ClientUsage to that of (Client, Key, Minute).
	Spend       []SpendRecord
	ClientUsage []ClientUsageRecord
	// DeleteSpendBefore drops spend before this unix day,
	// DeleteClientUsageBefore client usage before this minute (0: none).
	DeleteSpendBefore, DeleteClientUsageBefore int64
}

// empty and merge are the broker's code that must know every field of
// Change, and a Store's Commit the other: a field one of them misses is
// silently never written, or dropped from a retry. TestChangeFields, and
// bolt's TestCommitEveryField for its store, fail when a field is added to
// Change without being handled.
func (c *Change) empty() bool {
	return len(c.Specs) == 0 && len(c.Overrides) == 0 && len(c.Leases) == 0 &&
		len(c.DeleteLeases) == 0 && len(c.Usage) == 0 && c.DeleteUsageBefore == 0 && len(c.Adaptive) == 0 &&
		len(c.Stats) == 0 && c.DeleteStatsBefore == 0 && c.DeleteClientStatsBefore == 0 &&
		len(c.Chunks) == 0 && len(c.DeleteChunks) == 0 && len(c.Spend) == 0 && len(c.ClientUsage) == 0 &&
		c.DeleteSpendBefore == 0 && c.DeleteClientUsageBefore == 0
}

// merge adds o to c, o's upserts after c's, so that a failed commit is
// retried within a later one. Of two cut-offs the later is kept: deleting
// up to it covers both.
func (c *Change) merge(o Change) {
	c.Specs = append(c.Specs, o.Specs...)
	c.Overrides = append(c.Overrides, o.Overrides...)
	c.Leases = append(c.Leases, o.Leases...)
	c.DeleteLeases = append(c.DeleteLeases, o.DeleteLeases...)
	c.Usage = append(c.Usage, o.Usage...)
	c.DeleteUsageBefore = max(c.DeleteUsageBefore, o.DeleteUsageBefore)
	c.Adaptive = append(c.Adaptive, o.Adaptive...)
	c.Stats = append(c.Stats, o.Stats...)
	c.DeleteStatsBefore = max(c.DeleteStatsBefore, o.DeleteStatsBefore)
	c.DeleteClientStatsBefore = max(c.DeleteClientStatsBefore, o.DeleteClientStatsBefore)
	c.Chunks = append(c.Chunks, o.Chunks...)
	c.DeleteChunks = append(c.DeleteChunks, o.DeleteChunks...)
	c.Spend = append(c.Spend, o.Spend...)
	c.ClientUsage = append(c.ClientUsage, o.ClientUsage...)
	c.DeleteSpendBefore = max(c.DeleteSpendBefore, o.DeleteSpendBefore)
	c.DeleteClientUsageBefore = max(c.DeleteClientUsageBefore, o.DeleteClientUsageBefore)
}

// OverrideRecord is the override of one budget; Override nil means none.
type OverrideRecord struct {
	Key      Key
	Override *Override
}

// LeaseState is where a lease is in its life.
type LeaseState int

const (
	LeaseActive LeaseState = iota + 1
	LeaseCompleted
	LeaseExpired
)

func (s LeaseState) String() string {
	switch s {
	case LeaseActive:
		return "active"
	case LeaseCompleted:
		return "completed"
	case LeaseExpired:
		return "expired"
	}
	return "unknown"
}

// LeaseRecord is a lease as stored. Version grows with every change, so a
// store can refuse to overwrite a newer record with an older one when two
// commits race.
type LeaseRecord struct {
	ID        string
	Version   uint64
	Key       Key
	Client    string
	Priority  Priority
	State     LeaseState
	Outcome   Outcome
	Reserved  int64 // tokens reserved at grant
	Charged   int64 // tokens charged now: Reserved until settled
	Requests  int64 // requests charged now: 1, or 0 once a throttled or cancelled call gave it back
	MaxOutput int64
	Burndown  float64
	Usage     Usage
	GrantedAt time.Time
	ExpiresAt time.Time
	EndedAt   time.Time // completion or expiry
	// Cost is the price charged now in nano-dollars: the reservation's
	// until settled (0 for a model with no price, and in records written
	// before spend was kept).
	Cost int64
	// Route is the route the lease was granted through ("": the call named
	// a model), so a restart counts it against the client's route cap.
	Route string
}

// UsageRecord is what a budget was charged in one minute, by grant time.
// Records are deltas in a Change and totals in a Snapshot.
type UsageRecord struct {
	Key      Key
	Minute   int64 // unix minutes
	Tokens   int64
	Requests int64
}

// AdaptiveRecord is a budget's learned ceiling state (see AdaptiveConfig):
// enough to continue the CUBIC curve after a restart instead of relearning.
type AdaptiveRecord struct {
	Key                      Key
	TokensWmax, RequestsWmax float64
	LastDecrease             time.Time
	Throttles                int64
	// Depth is how many decreases in a row came before the ceiling had
	// recovered, and TokensCut and RequestsCut the share of Wmax each
	// ceiling was cut to: without them a restart would resume a deepened
	// cut (0.81, 0.73, ...) as a first one (0.9), raising the ceiling.
	// Zero in records written before they were kept: a first cut.
	Depth                  int64
	TokensCut, RequestsCut float64
}

// ChunkRecord is a commitment of capacity (escrow.go): from Start to End,
// at most Requests requests and Tokens tokens of budget Key may be granted
// from it, as leases whose ids derive from ID and Secret. It is durable
// before the first of them is answered. Closed records are rewritten with
// what was granted (Requests, Tokens), after (or with) the records of the
// chunk's leases.
type ChunkRecord struct {
	ID       uint64 // unique in the store, ascending with time
	Key      Key
	Start    time.Time
	End      time.Time
	Requests int64
	Tokens   int64
	// LeasesEnd bounds the expiry of every lease drawn from the chunk that
	// no lease record names: granted by End, with the lease TTL in force,
	// and never renewed (a renewal is committed before it is answered).
	LeasesEnd time.Time
	Secret    []byte // keys the lease ids of the chunk (see escrow.go)
	Closed    bool
}
