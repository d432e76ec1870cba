package broker

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// Routes (issue 14): a lease granted on the best of several budgets.
//
// A Route is an ordered list of Targets, each a budget and the model id the
// caller sends to Bedrock in that budget's Region. Acquire on a route
// (AcquireRequest.Route) grants on the first target with room now, or, with
// an affinity key, on the target the key was last granted on while that one
// has room: prompt caches live where the call ran, so hopping targets on
// every call throws them away. When no target has room the caller waits on
// all of them at once (routewait.go) and is granted on whichever frees
// first; a refusal carries the earliest retry over all targets.

// Bounds on routes and affinity keys, so that a routes file or a caller
// cannot make one Acquire cost unbounded work or memory.
const (
	// MaxRouteTargets: a route waits on every target at once, so each
	// target is a queue entry, and each refusal a fit per target.
	MaxRouteTargets = 16
	// MaxRoutes bounds the routes one broker serves.
	MaxRoutes = 1000
	// MaxAffinityKeyLen bounds an affinity key (a conversation or session
	// id); the cache stores a hash of it, whatever its length.
	MaxAffinityKeyLen = 256
	maxRouteNameLen   = 128
)

// Target is one place a route may grant: a budget, and the model id (a
// model id, an inference profile id, or a provisioned model ARN) to call
// in its Region.
type Target struct {
	Key     Key
	ModelID string
}

func (t Target) String() string { return t.Key.Region + "/" + t.ModelID }

// NewTarget resolves what a caller would call in region to a target.
func NewTarget(modelID, region string) (Target, error) {
	if region == "" {
		return Target{}, invalidf("region", "is empty; a target names its Region")
	}
	k, err := ParseModelID(modelID, region, region)
	if err != nil {
		return Target{}, err
	}
	if k.Scope == ScopeProvisioned {
		// A Provisioned Throughput is called by its ARN, nothing shorter.
		return Target{Key: k, ModelID: k.Model}, nil
	}
	if strings.HasPrefix(strings.TrimSpace(modelID), "arn:") {
		// The caller sends the id, in the target's Region: an ARN of
		// another account or partition would name something else.
		modelID = modelID[strings.LastIndex(modelID, "/")+1:]
	}
	return Target{Key: k, ModelID: strings.TrimSpace(modelID)}, nil
}

// Route is an ordered list of targets under a name.
type Route struct {
	Name    string
	Targets []Target
	// Model, when set, is the base model the route serves: SetRoutes
	// checks every target runs it (a Provisioned Throughput's by its
	// budget's Serves, which its ARN does not tell).
	Model string
}

// Validate checks a route on its own: its name, its size and duplicate
// targets (two targets on one budget would wait twice on one queue and
// count one capacity twice). Whether every target has a budget is checked
// by SetRoutes.
func (r Route) Validate() error {
	switch {
	case r.Name == "":
		return invalidf("route", "name is empty")
	case len(r.Name) > maxRouteNameLen:
		return invalidf("route", "name is %d bytes long; at most %d", len(r.Name), maxRouteNameLen)
	case strings.ContainsAny(r.Name, " \t\r\n"):
		return invalidf("route", "name %q contains white space", r.Name)
	case len(r.Targets) == 0:
		return invalidf("route", "%s has no targets", r.Name)
	case len(r.Targets) > MaxRouteTargets:
		return invalidf("route", "%s has %d targets; at most %d", r.Name, len(r.Targets), MaxRouteTargets)
	}
	seen := make(map[Key]int, len(r.Targets))
	for i, t := range r.Targets {
		if t.ModelID == "" {
			return invalidf("route", "%s target %d has no model id", r.Name, i+1)
		}
		if j, dup := seen[t.Key]; dup {
			return invalidf("route", "%s targets %d and %d are the same budget %s", r.Name, j+1, i+1, t.Key)
		}
		seen[t.Key] = i
	}
	return nil
}

// RouteReason is why a route granted on the target it did.
type RouteReason int

const (
	ReasonNone RouteReason = iota
	// ReasonRoom: the route's first target (no affinity key, or a key not
	// yet seen).
	ReasonRoom
	// ReasonAffinity: the target the affinity key was last granted on.
	ReasonAffinity
	// ReasonSpill: another target, because the preferred one (the first,
	// or the affinity key's) had no room.
	ReasonSpill
)

func (r RouteReason) String() string {
	switch r {
	case ReasonRoom:
		return "room"
	case ReasonAffinity:
		return "affinity"
	case ReasonSpill:
		return "spill"
	}
	return "none"
}

// RouteGrant says where a route's lease was granted, in Decision.
type RouteGrant struct {
	Route  string
	Target Target
	Index  int // of Target in the route
	Reason RouteReason
}

// TargetCounters count a target's grants through its route since the
// routes were set, by reason; Waited counts those that had to wait.
type TargetCounters struct {
	Room, Affinity, Spill, Waited int64
	// SpillRecovering counts the spills (of Spill) of a caller whose
	// key's target had room but was recovering from a throttle, so was
	// tried after the others: the only way a conversation moves while its
	// target has room.
	SpillRecovering int64
}

// RouteInfo is a route as reported: its targets and where its calls went.
type RouteInfo struct {
	Route
	Counters []TargetCounters // one per target
	Refused  int64
	// Queued is how many route waiters each target's queue holds now.
	Queued []int
}

// route is a route in service. Guarded by Core.mu.
type route struct {
	Route
	budgets  []*budget
	counters []TargetCounters
	refused  int64
	// configured is the route as set, and cbudgets its budgets; Route
	// holds those of its targets in service (retire.go): a Provisioned
	// Throughput gone at a discovery leaves the route until it returns.
	configured []Target
	cbudgets   []*budget
}

// routing is the routes in service, the affinity cache, and dispatch's
// work list (routewait.go). Guarded by Core.mu.
type routing struct {
	byName   map[string]*route
	affinity affinityCache
	// dispatching is set while dispatch runs; pending are the budgets a
	// route grant asked it to dispatch next.
	dispatching bool
	pending     []*budget
}

// SetRoutes replaces the routes in service, all or nothing: every route is
// validated and every target must have a budget, and no route in service
// that a client has a cap on may go, or nothing changes. A route whose
// targets are unchanged stays as it is (its counters, its waiting
// callers). A caller waiting on a route that changed waits on the new one
// (see follow); on one that went, it is answered with KindNotFound.
// Affinity keys pointing at a target a route no longer has are ignored.
func (b *Core) SetRoutes(rs []Route) error {
	if len(rs) > MaxRoutes {
		return invalidf("routes", "%d routes; at most %d", len(rs), MaxRoutes)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	next := make(map[string]*route, len(rs))
	for _, r := range rs {
		if err := r.Validate(); err != nil {
			return err
		}
		if next[r.Name] != nil {
			return invalidf("route", "%s is defined twice", r.Name)
		}
		// An unchanged route keeps its object: its waiters, counters and
		// any retirement of a target stay as they are. Compared with what
		// was configured, not with the targets left in service.
		if old := b.routing.byName[r.Name]; old != nil && old.Model == r.Model && slices.Equal(old.configured, r.Targets) {
			next[r.Name] = old
			continue
		}
		rt := &route{Route: Route{Name: r.Name, Targets: append([]Target(nil), r.Targets...), Model: r.Model},
			counters: make([]TargetCounters, len(r.Targets))}
		for i, t := range r.Targets {
			bg := b.budgets[t.Key]
			if bg == nil {
				return notFoundf("route %s target %d (%s): no budget for %s %s in %s",
					r.Name, i+1, t, t.Key.Scope, t.Key.Model, t.Key.Region)
			}
			if bg.retired != "" {
				return notFoundf("route %s target %d (%s): %s", r.Name, i+1, t, bg.retired)
			}
			if base := bg.spec.BaseModel(); r.Model != "" && base != r.Model {
				return invalidf("route", "%s target %d (%s) serves %s, not the route's model %s", r.Name, i+1, t, base, r.Model)
			}
			rt.budgets = append(rt.budgets, bg)
		}
		rt.configured, rt.cbudgets = rt.Targets, rt.budgets
		next[r.Name] = rt
	}
	// A cap on a route taken out of service would hold nothing, silently.
	// (A cap on a route not yet in service is SetCaps's to refuse: at
	// start-up Open's caps come before the routes.)
	for _, client := range slices.Sorted(maps.Keys(b.ten.caps.Clients)) {
		for _, r := range slices.Sorted(maps.Keys(b.ten.caps.Clients[client].Routes)) {
			if next[r] == nil && b.routing.byName[r] != nil {
				return invalidf("routes", "route %s is gone, and client %q has a cap on it; remove the cap first", r, client)
			}
		}
	}
	b.follow(next, b.clock.Now())
	b.routing.byName = next
	return nil
}

// RouteSource is routes as configured (a routes file: broker/routefile),
// resolved against the budgets when it is put in service (UseRoutes) and
// again after every quota refresh, so that routes derived from discovery
// follow what discovery finds.
type RouteSource interface {
	// Routes resolves the routes, all of them or an error. have is every
	// budget the broker serves; live is those of them not gone: a budget
	// discovery found once and no longer reports is gone (the broker
	// keeps it, at its last spec, in case the listing glitched). A derived
	// route takes its targets from live only; a target the configuration
	// names needs a budget in have.
	Routes(have, live []Key) ([]Route, error)
}

// routeSet is the RouteSource in service and the budgets gone from
// discovery. mu serializes resolving and setting routes (UseRoutes, a
// refresh's re-derivation), so that an older resolution never replaces a
// newer one; it guards src and gone, is held while a source resolves
// (CPU only) and is taken before Core.mu, never under it.
type routeSet struct {
	mu   sync.Mutex
	src  RouteSource
	gone map[Key]bool
}

// UseRoutes resolves src against the budgets and puts its routes in
// service (SetRoutes), all or nothing: on any error the routes in service
// stay, and so does the source they came from. On success src is
// resolved again after each quota refresh.
func (b *Core) UseRoutes(src RouteSource) error {
	b.routeSet.mu.Lock()
	defer b.routeSet.mu.Unlock()
	if err := b.resolveRoutes(src); err != nil {
		return err
	}
	b.routeSet.src = src
	return nil
}

// resolveRoutes resolves src and sets its routes. Caller holds
// routeSet.mu.
func (b *Core) resolveRoutes(src RouteSource) error {
	b.mu.Lock()
	have := slices.SortedFunc(maps.Keys(b.budgets), compareKeys)
	b.mu.Unlock()
	live := slices.DeleteFunc(slices.Clone(have), func(k Key) bool { return b.routeSet.gone[k] })
	rs, err := src.Routes(have, live)
	if err != nil {
		return err
	}
	return b.SetRoutes(rs)
}

// discovered is told the specs a quota refresh reported, once they are
// set: a budget that discovery made (its spec names AWS quotas) and that
// is not among them is gone, and the routes are derived again without
// it. If they cannot be (a derived route is left with no target, say),
// the routes in service stay and the error says why. Budgets that an
// operator configured are never gone.
func (b *Core) discovered(specs []Spec) error {
	reported := make(map[Key]bool, len(specs))
	for _, s := range specs {
		reported[s.Key] = true
	}
	b.routeSet.mu.Lock()
	defer b.routeSet.mu.Unlock()
	gone := map[Key]bool{}
	b.mu.Lock()
	for k, bg := range b.budgets {
		if len(bg.spec.Quotas) > 0 && !reported[k] {
			gone[k] = true
		}
	}
	b.mu.Unlock()
	b.routeSet.gone = gone
	if b.routeSet.src == nil {
		return nil
	}
	if err := b.resolveRoutes(b.routeSet.src); err != nil {
		return fmt.Errorf("routes not derived again after the quota refresh; the routes in service stay: %w", err)
	}
	return nil
}

// Routes reports the routes in service, in name order, with their counters.
func (b *Core) Routes() []RouteInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]RouteInfo, 0, len(b.routing.byName))
	for _, rt := range b.routing.byName {
		queued := make([]int, len(rt.Targets))
		for i, bg := range rt.budgets {
			bg.queue.all(func(w *waiter) {
				if w.group != nil && w.group.rt == rt {
					queued[i]++
				}
			})
		}
		out = append(out, RouteInfo{
			Route:    Route{Name: rt.Name, Targets: append([]Target(nil), rt.Targets...), Model: rt.Model},
			Counters: append([]TargetCounters(nil), rt.counters...),
			Refused:  rt.refused,
			Queued:   queued,
		})
	}
	slices.SortFunc(out, func(x, y RouteInfo) int { return strings.Compare(x.Name, y.Name) })
	return out
}

func validateRouteRequest(r *AcquireRequest) error {
	switch {
	case len(r.Route) > maxRouteNameLen:
		return invalidf("route", "is %d bytes long; at most %d", len(r.Route), maxRouteNameLen)
	case len(r.AffinityKey) > MaxAffinityKeyLen:
		return invalidf("affinity_key", "is %d bytes long; at most %d", len(r.AffinityKey), MaxAffinityKeyLen)
	case r.AffinityKey != "" && r.Route == "":
		return invalidf("affinity_key", "is set without a route")
	case r.Route != "" && (r.ModelID != "" || r.Region != ""):
		return invalidf("route", "%q is set with model_id or region; name either a route or a model", r.Route)
	}
	return nil
}

// describe names a target for messages.
func (rt *route) describe(i int) string {
	return fmt.Sprintf("route %s target %d (%s)", rt.Name, i+1, rt.Targets[i])
}

// affinityTTL and affinityKeys default Config.AffinityTTL and
// Config.AffinityKeys.
const (
	// Bedrock's prompt cache lives 5 minutes from its last hit: a key
	// idle longer has nothing left to be faithful to.
	defaultAffinityTTL = 5 * time.Minute
	// 100,000 keys at about 150 bytes each (hash, target key, list links)
	// is 15 MB at most, whatever the keys' lengths.
	defaultAffinityKeys = 100_000
)
