package bedrocksim

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// Config tunes a simulator. Its zero value runs the embedded default
// scenario in real time.
type Config struct {
	// Scenario is the account to simulate; nil means DefaultScenario().
	Scenario *Scenario
	// Now is the real clock; nil means time.Now. Tests pass a fake clock
	// and advance it instead of sleeping.
	Now func() time.Time
	// Speed compresses time: at 10 one simulated minute passes in six real
	// seconds. Buckets refill, scenario changes fire and latencies elapse
	// in simulated time. 0 means 1.
	Speed float64
	// Seed makes output lengths, latencies and faults reproducible.
	Seed uint64
	// DisableLatency skips every simulated wait (time to first token,
	// generation time), for tests that drive time with a fake clock.
	DisableLatency bool
	// Logger receives one line per request at debug level; nil is silent.
	Logger *slog.Logger
}

// Sim is one simulated AWS account. It is safe for concurrent use and owns no
// goroutines: time-driven effects (refills, scenario changes, approvals) are
// applied lazily when a request observes the clock.
type Sim struct {
	sc       *Scenario
	now      func() time.Time
	speed    float64
	noWait   bool
	log      *slog.Logger
	start    time.Time // real time at New; simulated time starts here too
	models   map[string]*Model
	profiles map[string]*InferenceProfile

	mu sync.Mutex
	// Everything below is guarded by mu. No I/O happens while it is held.
	rng        *rand.Rand
	regions    map[string]*regionState
	changeDone []bool
	metrics    *metricStore
	cw         map[string]*cwState  // Region -> alarms and their history
	caches     map[string]time.Time // prompt-cache key -> expiry (simulated)
	ptStatus   map[string]string    // provisioned throughput name -> status set at runtime
	seq        int
	// injectedPrices are raw price documents added by tests, by service
	// code (InjectPriceDocument).
	injectedPrices map[string][]string
}

// New builds a simulator from cfg.
func New(cfg Config) (*Sim, error) {
	sc := cfg.Scenario
	if sc == nil {
		sc = DefaultScenario()
	} else if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("config.Scenario: %w", err)
	}
	if cfg.Speed < 0 {
		return nil, fmt.Errorf("config.Speed %v: must not be negative", cfg.Speed)
	}
	s := &Sim{
		sc:       sc,
		now:      cfg.Now,
		speed:    cfg.Speed,
		noWait:   cfg.DisableLatency,
		log:      cfg.Logger,
		models:   make(map[string]*Model, len(sc.Models)),
		profiles: make(map[string]*InferenceProfile, len(sc.InferenceProfiles)),
		regions:  make(map[string]*regionState),
		metrics:  newMetricStore(),
		cw:       make(map[string]*cwState),
		caches:   make(map[string]time.Time),
		ptStatus: make(map[string]string),
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.speed == 0 {
		s.speed = 1
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = 1
	}
	s.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	s.start = s.now()
	for i := range sc.Models {
		s.models[sc.Models[i].ID] = &sc.Models[i]
	}
	for i := range sc.InferenceProfiles {
		s.profiles[sc.InferenceProfiles[i].ID] = &sc.InferenceProfiles[i]
	}
	s.changeDone = make([]bool, len(sc.Runtime.Changes))
	for region := range sc.Quotas {
		s.regions[region] = s.newRegion(region, sc.Quotas[region])
	}
	return s, nil
}

// Scenario returns the scenario the simulator runs (do not modify it).
func (s *Sim) Scenario() *Scenario { return s.sc }

// Now returns the simulated time: the real start plus the real time elapsed
// since, multiplied by the speed.
func (s *Sim) Now() time.Time {
	elapsed := s.now().Sub(s.start)
	return s.start.Add(time.Duration(float64(elapsed) * s.speed))
}

// Handler serves every simulated API on one mux; see doc.go for routes.
func (s *Sim) Handler() http.Handler {
	return http.HandlerFunc(s.serveHTTP)
}

func (s *Sim) serveHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.EscapedPath()
	switch {
	case strings.HasPrefix(path, "/_sim/"):
		s.serveAdmin(w, r)
	case strings.HasPrefix(r.Header.Get("X-Amz-Target"), cwTargetPrefix):
		s.serveCloudWatch(w, r, jsonCodec{})
	case strings.HasPrefix(r.Header.Get("X-Amz-Target"), pricingTargetPrefix):
		s.servePricing(w, r)
	case r.Header.Get("X-Amz-Target") != "":
		s.serveServiceQuotas(w, r)
	case strings.HasPrefix(path, cwCBORPrefix):
		s.serveCloudWatch(w, r, cborCodec{})
	case isCloudWatchQuery(r):
		s.serveCloudWatch(w, r, queryCodec{})
	case strings.HasPrefix(path, "/model/"):
		s.serveRuntime(w, r)
	case path == "/foundation-models" || strings.HasPrefix(path, "/foundation-models/") ||
		path == "/inference-profiles" || strings.HasPrefix(path, "/inference-profiles/") ||
		path == "/provisioned-model-throughputs" || strings.HasPrefix(path, "/provisioned-model-throughput/"):
		s.serveControl(w, r)
	default:
		writeRestError(w, http.StatusNotFound, "UnknownOperationException", "no simulated API at "+r.Method+" "+path)
	}
}

// credentialRegion reads the Region from a SigV4 Authorization header
// ("Credential=AKID/20250101/us-east-1/bedrock/aws4_request"), which is how
// one simulator serves every Region at once.
var credentialRe = regexp.MustCompile(`Credential=[^/]+/\d{8}/([a-z0-9-]+)/`)

func (s *Sim) requestRegion(r *http.Request) string {
	if m := credentialRe.FindStringSubmatch(r.Header.Get("Authorization")); m != nil {
		return m[1]
	}
	return s.sc.DefaultRegion
}

// region returns the state of a Region, creating it from the default
// Region's rows for a Region the scenario does not list. Callers hold mu.
func (s *Sim) regionLocked(name string) *regionState {
	if rs, ok := s.regions[name]; ok {
		return rs
	}
	rs := s.newRegion(name, s.sc.Quotas[s.sc.DefaultRegion])
	s.regions[name] = rs
	return rs
}

// advanceLocked applies the scenario changes and quota-increase decisions
// that are due at simulated time now. Callers hold mu.
func (s *Sim) advanceLocked(now time.Time) {
	for i, c := range s.sc.Runtime.Changes {
		if s.changeDone[i] || now.Before(s.start.Add(time.Duration(c.At))) {
			continue
		}
		s.changeDone[i] = true
		for name, rs := range s.regions {
			if c.Region != "" && c.Region != name {
				continue
			}
			for _, q := range rs.quotas {
				if (c.QuotaCode != "" && c.QuotaCode != q.row.Code) ||
					(c.Model != "" && (q.row.Enforces == nil || q.row.Enforces.Model != c.Model)) {
					continue
				}
				q.apply(now, CapacityChange{SetTrue: c.SetTrue, ScaleTrue: c.ScaleTrue, SetApplied: c.SetApplied})
			}
		}
	}
	for _, rs := range s.regions {
		s.decideRequestsLocked(rs, now)
	}
}

// CapacityChange alters one quota at runtime. Exactly one field is used:
// SetTrue sets the hidden capacity, ScaleTrue multiplies it, SetApplied sets
// the published value (the hidden capacity keeps its ratio to it).
type CapacityChange struct {
	SetTrue    *float64 `json:"setTrue,omitempty"`
	ScaleTrue  *float64 `json:"scaleTrue,omitempty"`
	SetApplied *float64 `json:"setApplied,omitempty"`
}

// SetCapacity changes a quota of a Region now. It is what POST /_sim/capacity
// calls.
func (s *Sim) SetCapacity(region, quotaCode string, c CapacityChange) error {
	n := 0
	for _, p := range []*float64{c.SetTrue, c.ScaleTrue, c.SetApplied} {
		if p != nil {
			if *p < 0 {
				return fmt.Errorf("set capacity %s: negative value", quotaCode)
			}
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("set capacity %s: set exactly one of setTrue, scaleTrue, setApplied", quotaCode)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.Now()
	s.advanceLocked(now)
	rs := s.regionLocked(region)
	q, ok := rs.byCode[quotaCode]
	if !ok {
		return fmt.Errorf("set capacity: no quota %s in %s", quotaCode, region)
	}
	q.apply(now, c)
	return nil
}

// QuotaStats is the live state and counters of one quota.
type QuotaStats struct {
	Region       string  `json:"region"`
	Code         string  `json:"quotaCode"`
	Name         string  `json:"quotaName"`
	Metric       string  `json:"metric,omitempty"`
	Model        string  `json:"model,omitempty"`
	Applied      float64 `json:"applied"`
	TrueCapacity float64 `json:"trueCapacity"`
	Available    float64 `json:"available"`
	Requests     int64   `json:"requests"`
	Admitted     int64   `json:"admitted"`
	Throttles    int64   `json:"throttles"`
	Reserved     float64 `json:"reservedTokens"`
	Settled      float64 `json:"settledTokens"`
}

// Stats is a snapshot of the simulator.
type Stats struct {
	Now       time.Time    `json:"now"`
	Requests  int64        `json:"requests"`
	Admitted  int64        `json:"admitted"`
	Throttles int64        `json:"throttles"`
	Faults    int64        `json:"faults"`
	Quotas    []QuotaStats `json:"quotas"`
}

// Stats returns the counters of every runtime quota that has seen traffic
// or whose capacity was changed, plus totals.
func (s *Sim) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.Now()
	s.advanceLocked(now)
	st := Stats{Now: now}
	names := make([]string, 0, len(s.regions))
	for n := range s.regions {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		rs := s.regions[n]
		st.Requests += rs.requests
		st.Admitted += rs.admitted
		st.Throttles += rs.throttles
		st.Faults += rs.faults
		for _, q := range append(rs.quotas, rs.provisionedQuotas()...) {
			if q.row.Enforces == nil || (q.requests == 0 && !q.changed) {
				continue
			}
			q.bucket.refill(now)
			st.Quotas = append(st.Quotas, QuotaStats{
				Region: n, Code: q.row.Code, Name: q.row.Name, Metric: q.row.Enforces.Metric, Model: q.row.Enforces.Model,
				Applied: q.applied, TrueCapacity: q.bucket.capacity, Available: q.bucket.level,
				Requests: q.requests, Admitted: q.admitted, Throttles: q.throttles, Reserved: q.reserved, Settled: q.settled,
			})
		}
	}
	return st
}

// Quota returns the live state of one quota of a Region, whether or not it
// has seen traffic.
func (s *Sim) Quota(region, code string) (QuotaStats, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.Now()
	s.advanceLocked(now)
	q, ok := s.regionLocked(region).byCode[code]
	if !ok {
		return QuotaStats{}, false
	}
	q.bucket.refill(now)
	qs := QuotaStats{Region: region, Code: code, Name: q.row.Name, Applied: q.applied, TrueCapacity: q.bucket.capacity,
		Available: q.bucket.level, Requests: q.requests, Admitted: q.admitted, Throttles: q.throttles, Reserved: q.reserved, Settled: q.settled}
	if q.row.Enforces != nil {
		qs.Metric, qs.Model = q.row.Enforces.Metric, q.row.Enforces.Model
	}
	return qs, true
}

// wait blocks for a simulated duration (real time d/speed) or until ctx ends.
func (s *Sim) wait(ctx context.Context, d time.Duration) error {
	if s.noWait || d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(time.Duration(float64(d) / s.speed))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Sim) nextID(prefix string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	return fmt.Sprintf("%s%08x-%04x", prefix, s.rng.Uint32(), s.seq&0xffff)
}
