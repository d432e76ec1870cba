package broker

import (
	"fmt"
	"math"
	"time"
)

// Adaptive ceilings: Bedrock's real capacity can be below the published
// quota (and moves), and the broker learns it only from throttles that
// clients report. Each budget keeps one ceiling on tokens per minute and one
// on requests per minute; the effective limit is the lower of the ceiling
// and quota x margin (or the override). An engaged ceiling is enforced by
// pacing grants at its rate (budget.go), not on the sliding minute: cutting
// a window ceiling below the minute's use would stop every grant until the
// minute slid by (measured with bench/adapt: 30 s waves, a 14.6 s p99 wait for
// interactive callers, 134 s to settle after a capacity drop; paced: 0.14 s
// and 12 s).
//
// The rule is multiplicative decrease with a concave return and a slow,
// accelerating probe (CUBIC's shape, per budget and on the broker's view of
// the budget's use rather than one client's send rate), tuned with
// bench/adapt against the simulator:
//
//   - on a throttle, Wmax becomes the use of the minute window at that
//     moment (what Bedrock had just accepted, reservations included, since
//     Bedrock charges reservations too), never above the ceiling in force,
//     and the ceiling drops to Beta x Wmax; its pace restarts owing the
//     throttled call's reservation (Bedrock's bucket just proved short of
//     it), so the next grant waits for the new rate to refill that much;
//   - a throttle that comes while the ceiling is still climbing back
//     (within Recovery of the last decrease) means the cut was not deep
//     enough, as after a drop of the real capacity: the cut deepens to
//     Beta^2, Beta^3, ... (never below MaxCut) until a throttle comes after
//     a full recovery;
//   - afterwards the ceiling climbs back to Wmax over Recovery, fast at
//     first and flattening near Wmax: W(t) = Wmax - (Wmax - cut) (1 - t/K)^3;
//   - then it probes above Wmax, slowly at first and faster the longer no
//     throttle comes: W(t) = Wmax (1 + Probe ((t - K) / 1 min)^3), so a
//     learned capacity is held for about a minute and a raised one is found
//     within a few;
//   - once W reaches quota x margin the ceiling disengages.
//
// Why not the SDKs' CUBIC (Beta 0.7, back at Wmax after one window, probing
// as fast as it returned): against a sliding minute window, lowering the
// ceiling below the window's use stops all grants until enough of the window
// has slid out, (1 - Beta) of a minute; at 0.7 that is an 18 s stall for
// every caller, interactive ones included, at each probe. A shallow cut
// that deepens only when throttles persist keeps the stall to 6 s and still
// finds a 40% drop in three cuts (0.9 x 0.81 x 0.73 = 0.53).
//
// Throttles of leases granted before (or at) the last decrease do not decrease
// again: they reflect the old rate, which was already cut (as TCP reacts
// once per window). A throttle reported without a lease (ReportThrottle)
// decreases at most once per MinInterval.
//
// A throttle is acted on only with evidence, and one client's influence is
// bounded (see throttled): the reporter must hold a lease on the budget, or
// have held one within the last minute (a throttled settlement's lease is
// its own evidence if it was active or ended within that minute), and the
// throttles of one client cause at most three decreases a minute. Throttles
// without evidence or beyond the bound are counted (counters, history) and
// change no ceiling. Real throttles come from calls the broker granted, so
// they carry evidence; a client alone lowers a ceiling at most three times a
// minute, each cut to no less than Beta^depth (at least MaxCut) of the use
// of the minute, never below the Floor.
type adaptive struct {
	tokens, requests ceiling
	lastDecrease     time.Time // zero: never throttled
	throttles        int64     // decreases so far
	// depth counts the decreases in a row that each came before the
	// ceiling had recovered: the last cut was Beta^depth (not persisted:
	// after a restart the next decrease starts again at Beta).
	depth         int
	lastWmaxShare float64 // Wmax of the last decrease / static limit, for the report
}

// ceiling is one dimension's state. Zero Wmax: not engaged.
type ceiling struct {
	Wmax float64
	// cut is the share of Wmax the ceiling dropped to at the last
	// decrease; 0 (a restored state) means Beta.
	cut float64
}

// AdaptiveConfig tunes the adaptive ceilings. The zero value works.
type AdaptiveConfig struct {
	// Beta is the multiplicative decrease on a throttle. Default 0.9.
	Beta float64
	// MaxCut bounds the deepened cut: Beta^depth never goes below it.
	// Default 0.5.
	MaxCut float64
	// Recovery is how long after a decrease the ceiling is back at the
	// level that was throttled. Default 30 s.
	Recovery time.Duration
	// Probe is how far above Wmax the ceiling is one minute after it got
	// back there, as a share of Wmax (it grows with the cube of the time).
	// Default 0.05.
	Probe float64
	// Floor is the lowest ceiling, as a share of quota x margin. Default
	// 0.02.
	Floor float64
	// MinInterval is the least time between two decreases (throttles in
	// between are counted, not acted on). Default 2 s.
	MinInterval time.Duration
	// Disabled turns adaptation off: throttles are only counted.
	Disabled bool
}

func (c *AdaptiveConfig) setDefaults() error {
	if c.Beta == 0 {
		c.Beta = 0.9
	}
	if c.MaxCut == 0 {
		c.MaxCut = 0.5
	}
	if c.Recovery == 0 {
		c.Recovery = 30 * time.Second
	}
	if c.Probe == 0 {
		c.Probe = 0.05
	}
	if c.Floor == 0 {
		c.Floor = 0.02
	}
	if c.MinInterval == 0 {
		c.MinInterval = 2 * time.Second
	}
	switch {
	case !(c.Beta > 0 && c.Beta < 1):
		return fmt.Errorf("config Adaptive.Beta: %v is outside (0, 1)", c.Beta)
	case !(c.MaxCut > 0 && c.MaxCut <= c.Beta):
		return fmt.Errorf("config Adaptive.MaxCut: %v is outside (0, Beta]", c.MaxCut)
	case c.Recovery < time.Second:
		return fmt.Errorf("config Adaptive.Recovery: %v is below 1s", c.Recovery)
	case !(c.Probe > 0):
		return fmt.Errorf("config Adaptive.Probe: %v is not positive", c.Probe)
	case !(c.Floor > 0 && c.Floor < 1):
		return fmt.Errorf("config Adaptive.Floor: %v is outside (0, 1)", c.Floor)
	case c.MinInterval < 0:
		return fmt.Errorf("config Adaptive.MinInterval: %v is negative", c.MinInterval)
	}
	return nil
}

// cutAt is the share of Wmax a decrease at depth cuts to.
func (cfg *AdaptiveConfig) cutAt(depth int) float64 {
	return math.Max(cfg.MaxCut, math.Pow(cfg.Beta, float64(max(depth, 1))))
}

// at returns the ceiling at now, and false when it is not engaged (it has
// climbed past static, or there never was a throttle); since is the last
// decrease. The ceiling never goes below Floor x floorBase.
func (c ceiling) at(cfg *AdaptiveConfig, since, now time.Time, static, floorBase float64) (float64, bool) {
	if c.Wmax <= 0 {
		return 0, false
	}
	cut := c.cut
	if cut == 0 {
		cut = cfg.Beta
	}
	k := cfg.Recovery.Seconds()
	t := now.Sub(since).Seconds()
	var w float64
	if t < k {
		u := 1 - t/k
		w = c.Wmax - c.Wmax*(1-cut)*u*u*u
	} else {
		m := (t - k) / 60
		w = c.Wmax * (1 + cfg.Probe*m*m*m)
	}
	if static > 0 && w >= static {
		return 0, false
	}
	return math.Max(w, cfg.Floor*floorBase), true
}

// evidenceWindow is how recently a client must have held a lease on a
// budget for its throttle reports to count, and the span over which its
// decreases are bounded by maxClientCuts.
const evidenceWindow = time.Minute

// maxClientCuts is how many decreases the throttles of one client may cause
// on a budget within evidenceWindow: enough for the deepening cuts of a real
// capacity drop (three cuts take the ceiling to 0.53 of its use), too few
// for one client to drive it to the floor in a burst of reports.
const maxClientCuts = 3

// throttled lowers the ceilings of bg after a throttle at now reported by
// client; grantedAt is the throttled lease's grant time (zero for a
// throttle reported without one, ReportThrottle), held whether that lease
// is itself evidence (it was active, or ended within evidenceWindow), and
// tokens and requests its reservation (zero without a lease). It reports
// whether it lowered them.
func (b *Core) throttled(bg *budget, now, grantedAt time.Time, client string, held bool, tokens, requests int64) bool {
	cfg := &b.cfg.Adaptive
	if cfg.Disabled {
		return false
	}
	// Evidence: Bedrock throttles only calls that were made, so a
	// throttle counts from a client that holds a lease on this budget, or
	// held one within evidenceWindow (its grant came before the cut this
	// would cause). Anyone else's report is counted and not acted on: a
	// client name, self-declared or not, is not evidence.
	m := bg.clients[client]
	if !held && (m == nil || (m.active == 0 && now.Sub(m.lastGrant) > evidenceWindow)) {
		return false
	}
	// Influence: one client causes at most maxClientCuts decreases per
	// evidenceWindow, whatever leases it takes out to report with.
	if m != nil && m.cuts >= maxClientCuts && now.Sub(m.cutsSince) <= evidenceWindow {
		return false
	}
	a := &bg.adaptive
	if !a.lastDecrease.IsZero() {
		if !grantedAt.IsZero() && !grantedAt.After(a.lastDecrease) {
			return false
		}
		// One decrease per MinInterval, whatever the throttles' leases:
		// right after a cut Bedrock's bucket is still empty, so the first
		// leases paced after it throttle too, and cutting again for each
		// would compound the cuts to nothing within a second.
		if now.Sub(a.lastDecrease) < cfg.MinInterval {
			return false
		}
	}
	// A throttle while the ceiling is still climbing back: the last cut
	// was too shallow.
	if !a.lastDecrease.IsZero() && now.Sub(a.lastDecrease) < cfg.Recovery {
		a.depth = max(a.depth, 1) + 1
	} else {
		a.depth = 1
	}
	static := bg.static()
	cut := cfg.cutAt(a.depth)
	used := func(c ceiling, w *window, staticLimit, floorBase int64) ceiling {
		cur, engaged := c.at(cfg, a.lastDecrease, now, float64(staticLimit), float64(floorBase))
		u := float64(w.used(now))
		if engaged {
			u = math.Min(u, cur) // never raise Wmax above the ceiling in force
		}
		if u <= 0 {
			return c
		}
		return ceiling{Wmax: u, cut: cut}
	}
	// Tokens are Bedrock's currency: their ceiling always moves. Requests
	// get a ceiling only where the budget has an RPM limit (AWS no longer
	// enforces RPM on bedrock-runtime; cutting tokens already cuts the flow).
	floor := bg.floorBase()
	a.tokens = used(a.tokens, bg.tokens, static.TPM, floor.TPM)
	if static.RPM > 0 {
		a.requests = used(a.requests, bg.requests, static.RPM, floor.RPM)
	}
	a.lastDecrease = now
	a.throttles++
	if m != nil {
		if now.Sub(m.cutsSince) > evidenceWindow {
			m.cuts, m.cutsSince = 0, now
		}
		m.cuts++
	}
	// The paces restart owing the throttled call: Bedrock has just shown
	// that its bucket held less than that call's reservation, so a grant
	// at once would go into the same empty bucket (measured with
	// bench/route: every decrease was followed by a second throttle, the
	// call the emptied pace let through within milliseconds). The next
	// grant waits until the new ceiling has refilled that much.
	bg.tokenPace.restart(now, float64(tokens))
	bg.requestPace.restart(now, float64(requests))
	if static.TPM > 0 {
		a.lastWmaxShare = a.tokens.Wmax / float64(static.TPM)
	} else if static.RPM > 0 {
		a.lastWmaxShare = a.requests.Wmax / float64(static.RPM)
	}
	b.log.Info("throttle lowered the budget's ceiling", "budget", bg.spec.Key.String(),
		"tokens_per_minute", int64(a.tokens.Wmax*cut), "requests_per_minute", int64(a.requests.Wmax*cut), "depth", a.depth)
	return true
}

// AdaptiveState is a budget's learned ceiling, for reports and the store.
type AdaptiveState struct {
	// Ceiling is the ceiling in force at the report's time (0: none).
	Ceiling Limits
	// TokensWmax and RequestsWmax are the per-minute use at the last
	// decrease; LastDecrease its time (zero: never).
	TokensWmax, RequestsWmax float64
	LastDecrease             time.Time
	Throttles                int64
	// Reason explains the ceiling for people.
	Reason string
}

func (b *Core) adaptiveState(bg *budget, now time.Time) AdaptiveState {
	a := &bg.adaptive
	st := AdaptiveState{TokensWmax: a.tokens.Wmax, RequestsWmax: a.requests.Wmax, LastDecrease: a.lastDecrease, Throttles: a.throttles}
	static, floor := bg.static(), bg.floorBase()
	if v, ok := a.tokens.at(&b.cfg.Adaptive, a.lastDecrease, now, float64(static.TPM), float64(floor.TPM)); ok {
		st.Ceiling.TPM = int64(v)
	}
	if v, ok := a.requests.at(&b.cfg.Adaptive, a.lastDecrease, now, float64(static.RPM), float64(floor.RPM)); ok {
		st.Ceiling.RPM = max(1, int64(v))
	}
	switch {
	case a.lastDecrease.IsZero():
		st.Reason = "no throttles seen"
	case st.Ceiling == (Limits{}):
		st.Reason = fmt.Sprintf("recovered: %d throttles, the last at %s", a.throttles, a.lastDecrease.UTC().Format(time.RFC3339))
	default:
		st.Reason = fmt.Sprintf("throttled at %s with %.0f tokens and %.0f requests in the minute; ceiling recovering to that level by %s",
			a.lastDecrease.UTC().Format(time.RFC3339), a.tokens.Wmax, a.requests.Wmax,
			a.lastDecrease.Add(b.cfg.Adaptive.Recovery).UTC().Format(time.RFC3339))
		if a.throttles >= 3 && a.lastWmaxShare > 0 && a.lastWmaxShare < 0.9 {
			st.Reason += fmt.Sprintf("; Bedrock throttles at about %.0f%% of quota x margin: the real capacity looks lower than the published quota",
				100*a.lastWmaxShare)
		}
	}
	return st
}

func (bg *budget) adaptiveRecord() AdaptiveRecord {
	a := &bg.adaptive
	return AdaptiveRecord{Key: bg.spec.Key, TokensWmax: a.tokens.Wmax, RequestsWmax: a.requests.Wmax,
		LastDecrease: a.lastDecrease, Throttles: a.throttles,
		Depth: int64(a.depth), TokensCut: a.tokens.cut, RequestsCut: a.requests.cut}
}

// restoreAdaptive continues a stored ceiling where it was.
func (bg *budget) restoreAdaptive(r AdaptiveRecord) {
	a := adaptive{tokens: ceiling{Wmax: r.TokensWmax, cut: r.TokensCut}, requests: ceiling{Wmax: r.RequestsWmax, cut: r.RequestsCut},
		lastDecrease: r.LastDecrease, throttles: r.Throttles, depth: int(r.Depth)}
	static := bg.static()
	if static.TPM > 0 {
		a.lastWmaxShare = a.tokens.Wmax / float64(static.TPM)
	} else if static.RPM > 0 {
		a.lastWmaxShare = a.requests.Wmax / float64(static.RPM)
	}
	bg.adaptive = a
}

// resetAdaptive forgets the ceiling of the budget key, already cleared in
// the store (see Operator.ResetAdaptive).
func (b *Core) resetAdaptive(key Key) BudgetInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	bg := b.budgets[key]
	bg.adaptive = adaptive{}
	now := b.clock.Now()
	bg.tokenPace.restart(now, 0)
	bg.requestPace.restart(now, 0)
	b.log.Info("adaptive ceiling reset by an operator", "budget", key.String())
	b.dispatch(bg, now)
	return b.info(bg)
}
