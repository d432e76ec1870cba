package broker

import (
	"fmt"
	"log/slog"
	"time"
)

// Config holds the broker's tunables. The zero value works.
type Config struct {
	// DefaultRegion is used when a request names no Region. Default us-east-1.
	DefaultRegion string
	// Margin scales quotas into effective limits, leaving headroom for
	// traffic that bypasses the broker. Default 0.9; 1 uses the full quota.
	Margin float64
	// LeaseTTL is how long a lease lives unless renewed. Default 5 minutes:
	// longer than almost any non-streaming Bedrock call.
	LeaseTTL time.Duration
	// MaxLeaseTTL bounds RenewLease. Default 1 hour.
	MaxLeaseTTL time.Duration
	// MaxWait bounds how long AcquireLease waits, whatever the caller asks.
	// Default 5 minutes.
	MaxWait time.Duration
	// Retention is how long an ended lease is remembered, so that a repeated
	// or late completion gets a precise answer. Default 5 minutes; at least
	// 2 minutes, so that restart always sees the leases of the last minute
	// window. Memory and store size grow with grant rate x (LeaseTTL +
	// Retention) at about 300 bytes a lease; the grant rate is itself bounded
	// by the budgets' RPM.
	Retention time.Duration
	// UsageRetention is how long per-minute usage is kept. Default 48 hours;
	// at least a day, which the TPD window needs.
	UsageRetention time.Duration
	// HistoryRetention is how long usage history (Stats) is kept. Default
	// 14 days; at least a day, which Activity reads. A busy budget writes a
	// record of about 60-150 bytes per client per minute.
	HistoryRetention time.Duration
	// ClientHistoryRetention is how long history per client is kept (the
	// report's top clients, for example); the per-budget sums are kept for
	// HistoryRetention. Default 48 hours, at most HistoryRetention.
	ClientHistoryRetention time.Duration
	// SweepInterval is how often Run expires leases and forgets old ones.
	// Default 1 second.
	SweepInterval time.Duration
	// EscrowSpan is how long a chunk of escrowed capacity may be drawn
	// from (see the package doc's Durability): the grant path commits a
	// chunk ahead of use instead of each grant. Default 1 second; negative
	// commits every grant before answering (no escrow).
	EscrowSpan time.Duration
	// Adaptive tunes the ceilings learned from throttles.
	Adaptive AdaptiveConfig
	// Clients sets per-client policies by client name; others get
	// DefaultClient. A field an entry leaves zero takes the built-in
	// default, not DefaultClient's.
	Clients       map[string]ClientPolicy
	DefaultClient ClientPolicy
	// MaxWaiters bounds the callers waiting in Acquire across all clients
	// and budgets, so that a flood under many client names (which are
	// self-declared without Tokens) cannot exhaust memory;
	// ClientPolicy.MaxWaiters bounds each client's share of it. A caller
	// that would wait beyond either bound is refused at once (LimitWaiters,
	// LimitClientWaiters). Default 20,000.
	//
	// Measured (go test -run 'WaiterMemory|FloodOverGRPC' -v ./broker/
	// ./server/): a waiter costs about 1.5 KB of heap in the broker plus
	// the 8 KB stack of the caller's goroutine; a waiting gRPC call about
	// 13.5 KB of heap and 17 KB of stacks, counting the client's side as
	// well as the server's. The default thus bounds waiters to 20,000 x
	// 30 KB = 600 MB at worst, and 20,000 x 10 KB = 200 MB in the broker.
	// More waiters would rarely be served anyway: 20,000 callers fill
	// 4,000 RPM of budgets for the whole of the default MaxWait.
	MaxWaiters int
	// Aging promotes a waiter one priority level per Aging waited, so low
	// priority is delayed, never starved. Default 30 s; negative disables.
	Aging time.Duration
	// DailyReserve keeps a share of each budget's TPD out of reach of a
	// priority, e.g. {PriorityBatch: 0.2}: batch work stops at 80% of the
	// day's tokens, leaving the rest to interactive and standard traffic.
	DailyReserve map[Priority]float64
	// Caps are the tenants' rate caps and money budgets at start-up
	// (Core.SetCaps replaces them); Prices price the calls for spend and
	// money budgets (Core.SetPrices replaces them). See the package doc's
	// Caps and money.
	Caps   Caps
	Prices map[PriceKey]Price
	// AffinityKeys bounds the affinity keys routes remember (route.go);
	// the least recently used is forgotten beyond it. Default 100,000.
	AffinityKeys int
	// AffinityTTL is how long an affinity key is remembered after its
	// last grant. Default 5 minutes, the life of a Bedrock prompt cache.
	AffinityTTL time.Duration
	// AffinityWait is how long a route caller whose key's target is full
	// (and no target has room, or that target will serve it within this
	// time) waits on that target alone before it waits on every target;
	// at most half its wait, longer only while the target serves it next
	// within half of what is left. Default 5 s: short next to a model
	// call, long enough for a busy target to free a place; negative waits
	// on every target at once.
	AffinityWait time.Duration
	// Logger receives the broker's logs; nil discards them.
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.DefaultRegion == "" {
		c.DefaultRegion = "us-east-1"
	}
	if !ValidRegion(c.DefaultRegion) {
		return fmt.Errorf("config DefaultRegion: %q is not an AWS Region name", c.DefaultRegion)
	}
	if c.Margin == 0 {
		c.Margin = 0.9
	}
	if !(c.Margin > 0 && c.Margin <= 1) {
		return fmt.Errorf("config Margin: %v is outside (0, 1]", c.Margin)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.LeaseTTL, 5*time.Minute)
	def(&c.MaxLeaseTTL, time.Hour)
	def(&c.MaxWait, 5*time.Minute)
	def(&c.Retention, 5*time.Minute)
	def(&c.UsageRetention, 48*time.Hour)
	def(&c.HistoryRetention, 14*24*time.Hour)
	def(&c.ClientHistoryRetention, min(48*time.Hour, c.HistoryRetention))
	def(&c.SweepInterval, time.Second)
	def(&c.EscrowSpan, time.Second)
	def(&c.AffinityTTL, defaultAffinityTTL)
	def(&c.AffinityWait, 5*time.Second)
	if c.AffinityKeys == 0 {
		c.AffinityKeys = defaultAffinityKeys
	}
	switch {
	case c.LeaseTTL < time.Second:
		return fmt.Errorf("config LeaseTTL: %v is below 1s", c.LeaseTTL)
	case c.MaxLeaseTTL < c.LeaseTTL:
		return fmt.Errorf("config MaxLeaseTTL: %v is below LeaseTTL %v", c.MaxLeaseTTL, c.LeaseTTL)
	case c.MaxWait < 0:
		return fmt.Errorf("config MaxWait: %v is negative", c.MaxWait)
	case c.Retention < 2*minuteSpan:
		return fmt.Errorf("config Retention: %v is below %v", c.Retention, 2*minuteSpan)
	case c.UsageRetention < daySpan:
		return fmt.Errorf("config UsageRetention: %v is below %v", c.UsageRetention, daySpan)
	case c.HistoryRetention < daySpan:
		return fmt.Errorf("config HistoryRetention: %v is below %v", c.HistoryRetention, daySpan)
	case c.ClientHistoryRetention < time.Hour || c.ClientHistoryRetention > c.HistoryRetention:
		return fmt.Errorf("config ClientHistoryRetention: %v is outside 1h..HistoryRetention (%v)", c.ClientHistoryRetention, c.HistoryRetention)
	case c.SweepInterval <= 0:
		return fmt.Errorf("config SweepInterval: %v is not positive", c.SweepInterval)
	case c.AffinityKeys < 0:
		return fmt.Errorf("config AffinityKeys: %d is negative", c.AffinityKeys)
	case c.AffinityTTL < 0:
		return fmt.Errorf("config AffinityTTL: %v is negative", c.AffinityTTL)
	}
	if err := c.Adaptive.setDefaults(); err != nil {
		return err
	}
	if c.Aging == 0 {
		c.Aging = 30 * time.Second
	}
	for p, r := range c.DailyReserve {
		if p < PriorityInteractive || p > PriorityBatch || !(r >= 0 && r < 1) {
			return fmt.Errorf("config DailyReserve[%v]: %v must be a priority and a share in [0, 1)", p, r)
		}
	}
	if c.MaxWaiters == 0 {
		c.MaxWaiters = DefaultMaxWaiters
	}
	if c.MaxWaiters < 0 {
		return fmt.Errorf("config MaxWaiters: %d is negative", c.MaxWaiters)
	}
	if err := c.DefaultClient.validate("DefaultClient"); err != nil {
		return err
	}
	clients := make(map[string]ClientPolicy, len(c.Clients)) // not the caller's map
	for name, cp := range c.Clients {
		if err := cp.validate("Clients[" + name + "]"); err != nil {
			return err
		}
		clients[name] = cp
	}
	c.Clients = clients
	// Per-model and per-route caps are checked against the budgets and
	// routes by SetCaps, once there are both; here only their values.
	if err := c.Caps.Validate(nil, nil); err != nil {
		return fmt.Errorf("config Caps: %w", err)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// ClientPolicy is how the broker treats one client.
type ClientPolicy struct {
	// Weight is the client's share of a budget relative to other clients of
	// the same priority waiting on it. Default 1.
	Weight float64
	// MaxConcurrent caps the client's active leases across all budgets.
	// A capped client's waiters wait (fairly) while others are served; one
	// whose wait runs out is refused with LimitClientLeases. Default
	// 10,000: far beyond one client's legitimate share of a Bedrock quota
	// (10,000 calls of 60 s at once is 10,000 RPM), low enough that a
	// client leaking leases and renewing them, which the budgets' windows
	// do not bound, holds at most about 3 MB. Negative means no cap.
	MaxConcurrent int64
	// MaxWaiters caps the client's callers waiting in Acquire across all
	// budgets; a caller beyond it is refused at once with
	// LimitClientWaiters. Default 1,000: a flooding client holds at most
	// 1,000 x 30 KB = 30 MB (see Config.MaxWaiters) and 5% of the global
	// bound, so it takes 20 flooding clients to fill it. Negative means no
	// per-client cap (Config.MaxWaiters still applies).
	MaxWaiters int
}

// Defaults of the flood bounds; see Config.MaxWaiters and ClientPolicy.
const (
	DefaultMaxWaiters          = 20_000
	DefaultClientMaxWaiters    = 1_000
	DefaultClientMaxConcurrent = 10_000
)

func (p *ClientPolicy) validate(name string) error {
	if p.Weight == 0 {
		p.Weight = 1
	}
	if !(p.Weight > 0 && p.Weight <= 1000) {
		return fmt.Errorf("config %s.Weight: %v is outside (0, 1000]", name, p.Weight)
	}
	if p.MaxConcurrent == 0 {
		p.MaxConcurrent = DefaultClientMaxConcurrent
	}
	if p.MaxWaiters == 0 {
		p.MaxWaiters = DefaultClientMaxWaiters
	}
	return nil
}

func (b *Core) policy(client string) ClientPolicy {
	if p, ok := b.cfg.Clients[client]; ok {
		return p
	}
	return b.cfg.DefaultClient
}
