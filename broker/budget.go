package broker

import (
	"fmt"
	"math"
	"time"
)

// Spec is what a budget is configured or discovered with.
type Spec struct {
	Key        Key
	Quota      Limits    // as published by AWS or typed by an operator
	Source     string    // where Quota came from, e.g. "budgets-file:/etc/qb.json"
	SourceTime time.Time // when Quota was read
	// Burndown is how many quota tokens one output token costs; 0 means
	// DefaultBurndown(Key.Model).
	Burndown float64
	// MaxOutputTokens is reserved when a request leaves max_output_tokens
	// unset; 0 means DefaultMaxOutputTokens(Key.Model).
	MaxOutputTokens int64
	// Quotas name the AWS quotas the limits came from, one per limit that
	// discovery set; empty for budgets typed by an operator.
	Quotas []QuotaRef
	// Serves is the base model id a Provisioned Throughput runs (required
	// for ScopeProvisioned, empty otherwise): what a route checks its
	// targets against, and whose maximum output an unset max_tokens
	// reserves.
	Serves string
}

// QuotaRef is the AWS quota behind one limit of a budget, for reports and
// quota-increase requests.
type QuotaRef struct {
	Limit      string // "rpm", "tpm", "tpd" or "concurrency"
	Code, Name string // Service Quotas' quota code and name
	Applied    int64  // the value in force for the account
	Default    int64  // AWS's default; 0 when unknown
	Adjustable bool
}

func (s Spec) validate() error {
	k := s.Key
	if !ValidRegion(k.Region) {
		return fmt.Errorf("budget %s: region %q is not an AWS Region name", k, k.Region)
	}
	if k.Scope < ScopeOnDemand || k.Scope > ScopeProvisioned {
		return fmt.Errorf("budget %s: unknown scope", k)
	}
	if k.Model == "" {
		return fmt.Errorf("budget %s: model is empty", k)
	}
	if k.Scope == ScopeProvisioned {
		region, err := ParseProvisionedARN(k.Model)
		switch {
		case err != nil:
			return fmt.Errorf("budget %s: %w", k, err)
		case region != k.Region:
			return fmt.Errorf("budget %s: the ARN is in %s, not %s", k, region, k.Region)
		case s.Serves == "":
			return fmt.Errorf("budget %s: a Provisioned Throughput names the base model it serves", k)
		case s.Burndown != 0 && s.Burndown != 1:
			return fmt.Errorf("budget %s: output_burndown %v: a Provisioned Throughput has none (output tokens count once)", k, s.Burndown)
		case s.Quota == Limits{}:
			// Zero limits mean "unlimited"; a Provisioned Throughput
			// never is, and AWS publishes no rate per model unit to
			// derive one from.
			return fmt.Errorf("budget %s: no capacity stated; give its tokens per minute (AWS publishes no per-model-unit rate)", k)
		}
	} else if s.Serves != "" {
		return fmt.Errorf("budget %s: serves %q: only a Provisioned Throughput names a base model", k, s.Serves)
	}
	for _, v := range []struct {
		name string
		v    int64
	}{{"rpm", s.Quota.RPM}, {"tpm", s.Quota.TPM}, {"tpd", s.Quota.TPD}, {"concurrency", s.Quota.Concurrency}, {"max_output_tokens", s.MaxOutputTokens}} {
		if v.v < 0 {
			return fmt.Errorf("budget %s: %s is negative (%d)", k, v.name, v.v)
		}
	}
	if s.Burndown < 0 || s.Burndown > 100 || math.IsNaN(s.Burndown) {
		return fmt.Errorf("budget %s: output_burndown %v is outside 0..100", k, s.Burndown)
	}
	return nil
}

func (s Spec) burndown() float64 {
	if s.Burndown > 0 {
		return s.Burndown
	}
	if s.Key.Scope == ScopeProvisioned {
		return 1
	}
	return DefaultBurndown(s.Key.Model)
}

func (s Spec) maxOutput() int64 {
	if s.MaxOutputTokens > 0 {
		return s.MaxOutputTokens
	}
	return DefaultMaxOutputTokens(s.BaseModel())
}

// BaseModel is the model the budget's calls run: Key.Model, or Serves for
// a Provisioned Throughput.
func (s Spec) BaseModel() string {
	if s.Key.Scope == ScopeProvisioned {
		return s.Serves
	}
	return s.Key.Model
}

// Override is an operator's replacement for the quota x margin term of some
// limits. A nil field leaves that limit alone; a set field is used as is (no
// margin), and may be above the discovered quota: the operator knows
// something discovery does not (a raise not yet visible, say).
type Override struct {
	RPM, TPM, TPD, Concurrency *int64
	Reason                     string
	SetAt                      time.Time
}

func (o *Override) empty() bool {
	return o == nil || (o.RPM == nil && o.TPM == nil && o.TPD == nil && o.Concurrency == nil)
}

// Windows: per-minute limits in 250 ms slots, the daily one in minutes.
const (
	minuteSpan = time.Minute
	minuteRes  = 250 * time.Millisecond
	daySpan    = 24 * time.Hour
	dayRes     = time.Minute
)

// budget is the live state of one budget. All fields are guarded by
// Core.mu.
type budget struct {
	spec      Spec
	override  *Override
	staticLim Limits // override or quota x margin; recomputed when spec or override changes
	marginLim Limits // quota x margin, whatever the override
	// burndown and maxOutput are the spec's (or the model's defaults),
	// derived once per spec: the defaults read the model id with a regexp,
	// too slow for every Acquire.
	burndown  float64
	maxOutput int64
	adaptive  adaptive
	acfg      *AdaptiveConfig
	// tokenPace and requestPace spread grants under an engaged adaptive
	// ceiling (see fit).
	tokenPace, requestPace pace
	reserve                map[Priority]float64 // Config.DailyReserve

	requests   *window // requests in the last minute
	tokens     *window // tokens in the last minute
	dayTokens  *window // tokens in the last day
	concurrent int64   // active leases
	// clients are the clients that hold, or held within the last minute,
	// a lease on this budget, and the decreases each caused: the evidence
	// a throttle report needs, and its bound (adaptive.go). Started and
	// ended with every lease (started, ended); forgotten by the sweep.
	clients map[string]*clientMark
	// settling counts settled leases whose settlement is not yet durable,
	// on budgets with a concurrency limit: they still hold their place
	// against it (see Core.Complete).
	settling int64
	esc      escrow // capacity committed ahead of grants (escrow.go)

	// retired is why a Provisioned Throughput's budget is out of service
	// (its throughput was gone at the last discovery), or empty. A retired
	// budget grants nothing and is in no route; it stays in the map so its
	// leases, chunks and windows wind down as any other's (retire.go).
	retired string

	queue    queue
	timer    Timer     // pending wake-up for the head waiter, or nil
	timerAt  time.Time // when timer fires
	timerGen uint64    // counts armed timers, so a stale one does not clear a newer

	counters Counters
}

// Counters are a budget's totals since the broker started.
type Counters struct {
	Granted, Refused, Completed, Throttled, Expired, Errors, Cancelled int64
	ReportedThrottles                                                  int64
	ReservedTokens, SettledTokens, ReturnedTokens                      int64
	UnsetMaxTokens                                                     int64
}

// clientMark is one client's leases on a budget, for throttle evidence.
type clientMark struct {
	active    int64     // leases active now
	lastGrant time.Time // the latest grant
	cuts      int       // decreases its throttles caused since cutsSince
	cutsSince time.Time
}

// started notes a lease of client granted at. Caller holds Core.mu.
func (b *budget) started(client string, at time.Time) {
	b.concurrent++
	m := b.clients[client]
	if m == nil {
		m = &clientMark{}
		b.clients[client] = m
	}
	m.active++
	if at.After(m.lastGrant) {
		m.lastGrant = at
	}
}

// ended notes that an active lease of client ended. Caller holds Core.mu.
func (b *budget) ended(client string) {
	b.concurrent--
	if m := b.clients[client]; m != nil && m.active > 0 {
		m.active--
	}
}

// forgetClients drops the clients that no longer give evidence nor are
// bounded: no active lease, no grant and no decrease within evidenceWindow.
// Caller holds Core.mu.
func (b *budget) forgetClients(now time.Time) {
	for c, m := range b.clients {
		if m.active == 0 && now.Sub(m.lastGrant) > evidenceWindow && now.Sub(m.cutsSince) > evidenceWindow {
			delete(b.clients, c)
		}
	}
}

func newBudget(spec Spec, cfg *Config) *budget {
	b := &budget{
		clients:   make(map[string]*clientMark),
		spec:      spec,
		acfg:      &cfg.Adaptive,
		reserve:   cfg.DailyReserve,
		queue:     queue{aging: max(cfg.Aging, 0)},
		requests:  newWindow(minuteSpan, minuteRes),
		tokens:    newWindow(minuteSpan, minuteRes),
		dayTokens: newWindow(daySpan, dayRes),
		esc:       newEscrow(),
	}
	b.recompute(cfg.Margin)
	return b
}

// recompute derives the static limits: an override where set, otherwise
// the quota times the safety margin (never rounded down to "absent"). The
// margin applies to rates, not to concurrency, which is a count. The
// effective limits (limits) are these lowered by the adaptive ceilings.
func (b *budget) recompute(margin float64) {
	scale := func(q int64) int64 {
		if q <= 0 {
			return 0
		}
		return max(1, int64(math.Floor(float64(q)*margin)))
	}
	pick := func(o *int64, v int64) int64 {
		if o != nil {
			return *o
		}
		return v
	}
	q := b.spec.Quota
	e := Limits{RPM: scale(q.RPM), TPM: scale(q.TPM), TPD: scale(q.TPD), Concurrency: q.Concurrency}
	b.marginLim = e
	if o := b.override; o != nil {
		e = Limits{RPM: pick(o.RPM, e.RPM), TPM: pick(o.TPM, e.TPM), TPD: pick(o.TPD, e.TPD), Concurrency: pick(o.Concurrency, e.Concurrency)}
	}
	b.staticLim = e
	b.burndown, b.maxOutput = b.spec.burndown(), b.spec.maxOutput()
}

// static is the limit before adaptation: what no throttle can raise.
func (b *budget) static() Limits { return b.staticLim }

// floorBase is what the adaptive Floor is a share of: quota x margin, or
// the static limit where that is lower or there is no quota. Not the
// override alone: an operator's override is a number typed by hand and may
// be anything up to "unlimited" (int64 max), and a floor of 2% of that held
// the ceiling at 1.8e17 after a throttle, no ceiling at all.
func (b *budget) floorBase() Limits {
	pick := func(static, margin int64) int64 {
		if margin > 0 && (static <= 0 || margin < static) {
			return margin
		}
		return static
	}
	s, m := b.staticLim, b.marginLim
	return Limits{RPM: pick(s.RPM, m.RPM), TPM: pick(s.TPM, m.TPM)}
}

// limits are the effective limits at now: static, lowered by the adaptive
// ceilings in force.
func (b *budget) limits(now time.Time) Limits {
	e := b.staticLim
	a := &b.adaptive
	if a.lastDecrease.IsZero() {
		return e
	}
	floor := b.floorBase()
	if v, ok := a.tokens.at(b.acfg, a.lastDecrease, now, float64(e.TPM), float64(floor.TPM)); ok {
		e.TPM = int64(v)
	}
	if v, ok := a.requests.at(b.acfg, a.lastDecrease, now, float64(e.RPM), float64(floor.RPM)); ok {
		e.RPM = max(1, int64(v))
	}
	return e
}

// neverFits explains why n can never be granted under the effective
// limits, or returns nil.
func (b *budget) neverFits(n need) error {
	if b.retired != "" {
		return &Error{Kind: KindNotFound, Message: b.retired}
	}
	e := b.staticLim
	for _, l := range []struct {
		name  string
		limit int64
	}{{"TPM", e.TPM}, {"TPD", e.TPD}} {
		if l.limit <= 0 || n.tokens <= l.limit {
			continue
		}
		if n.base > l.limit {
			return &Error{Kind: KindInvalid, Field: "input_tokens", Message: fmt.Sprintf(
				"input + cache_write tokens (%d) alone exceed the %s limit %d of %s; split the request",
				n.base, l.name, l.limit, b.spec.Key)}
		}
		return &Error{Kind: KindInvalid, Field: "max_output_tokens", Message: fmt.Sprintf(
			"the reservation of %d tokens (input + cache_write + max_output_tokens %d x burndown %g) exceeds the %s limit %d of %s; lower max_output_tokens to at most %d",
			n.tokens, n.maxOutput, n.burndown, l.name, l.limit, b.spec.Key, int64(float64(l.limit-n.base)/n.burndown))}
	}
	return nil
}

// fit checks n against every limit at now. It returns LimitNone when n fits;
// otherwise the limit that blocks longest and how long until it would fit
// (0 when only a release can make room: concurrency).
//
// The static limits are checked on the sliding windows (the hard invariant).
// An engaged adaptive ceiling is not: it paces grants instead (pace), so a
// ceiling cut below the minute's use slows new grants to the ceiling's rate
// rather than stopping every caller until the minute has slid by.
func (b *budget) fit(now time.Time, n need) (Limit, time.Duration) {
	st, e := b.staticLim, b.limits(now)
	blocked, wait := LimitNone, time.Duration(0)
	note := func(l Limit, d time.Duration) {
		if d > 0 && (blocked == LimitNone || d > wait) {
			blocked, wait = l, d
		}
	}
	check := func(l Limit, w *window, v, limit int64) {
		if limit <= 0 {
			return
		}
		d, ok := w.wait(now, v, limit)
		if !ok {
			d = daySpan // cannot fit until the limit changes
		}
		note(l, d)
	}
	check(LimitRPM, b.requests, 1, st.RPM)
	check(LimitTPM, b.tokens, n.tokens, st.TPM)
	tpd := st.TPD
	if r := b.reserve[n.priority]; r > 0 && tpd > 0 {
		tpd = max(1, int64(float64(tpd)*(1-r)))
	}
	check(LimitTPD, b.dayTokens, n.tokens, tpd)
	if engaged(e.TPM, st.TPM) {
		note(LimitTPM, b.tokenPace.wait(now, e.TPM))
	}
	if engaged(e.RPM, st.RPM) {
		note(LimitRPM, b.requestPace.wait(now, e.RPM))
	}
	if e.Concurrency > 0 && b.concurrent+b.settling+b.esc.phantom(now) >= e.Concurrency && blocked == LimitNone {
		blocked = LimitConcurrency
	}
	return blocked, wait
}

// engaged reports whether an adaptive ceiling is below the static limit.
func engaged(effective, static int64) bool {
	return effective > 0 && (static == 0 || effective < static)
}

// paceBurst is how much a pace holds: a minute of the ceiling, so after a
// quiet minute it admits what the window would. What it changes is the
// start: after a decrease it starts empty and admits at the ceiling's rate
// at once, where a window ceiling below the minute's use admits nothing
// until enough of the minute has slid out.
const paceBurst = minuteSpan

// pace is a token bucket that spreads grants at an adaptive ceiling's rate
// (ceiling per minute). It admits while it is not in debt, so a request
// larger than the burst still passes, and the debt it leaves spaces the next
// ones. Bedrock's own buckets refill continuously too.
type pace struct {
	level float64
	at    time.Time
}

func (p *pace) refill(now time.Time, perMinute int64) {
	rate := float64(perMinute) / minuteSpan.Seconds()
	if !p.at.IsZero() && now.After(p.at) {
		p.level = math.Min(rate*paceBurst.Seconds(), p.level+rate*now.Sub(p.at).Seconds())
	}
	p.at = now
}

// wait is how long until the pace admits again (0: now).
func (p *pace) wait(now time.Time, perMinute int64) time.Duration {
	p.refill(now, perMinute)
	if p.level >= 0 {
		return 0
	}
	rate := float64(perMinute) / minuteSpan.Seconds()
	return time.Duration(math.Ceil(-p.level / rate * float64(time.Second)))
}

// take charges v (negative: gives back) to the pace.
func (p *pace) take(now time.Time, perMinute int64, v float64) {
	p.refill(now, perMinute)
	p.level = math.Min(p.level-v, float64(perMinute)/minuteSpan.Seconds()*paceBurst.Seconds())
}

// restart starts the pace over at a decrease (or a reset), owing debt:
// the next grant passes once the new rate has refilled it, the ones after
// it at that rate.
func (p *pace) restart(now time.Time, debt float64) { *p = pace{at: now, level: -debt} }

// charge adds a grant of n at now.
func (b *budget) charge(now time.Time, tokens, requests int64) {
	b.requests.add(now, now, requests)
	b.tokens.add(now, now, tokens)
	b.dayTokens.add(now, now, tokens)
	b.paceCharge(now, tokens, requests)
}

// adjust corrects the charge of a lease granted at grantedAt. A throttled
// call gives its charge back to the windows (Bedrock consumed nothing) but
// not to the pace: a throttle says "slower", and refunding it would let the
// retry through at once.
func (b *budget) adjust(now, grantedAt time.Time, tokens, requests int64, throttled bool) {
	b.requests.add(now, grantedAt, requests)
	b.tokens.add(now, grantedAt, tokens)
	b.dayTokens.add(now, grantedAt, tokens)
	if !throttled {
		b.paceCharge(now, tokens, requests)
	}
}

// paceCharge keeps the paces of engaged ceilings in step with charges and
// returns, as Bedrock's buckets take reservations and give back the unused
// part.
func (b *budget) paceCharge(now time.Time, tokens, requests int64) {
	st, e := b.staticLim, b.limits(now)
	if engaged(e.TPM, st.TPM) {
		b.tokenPace.take(now, e.TPM, float64(tokens))
	}
	if engaged(e.RPM, st.RPM) {
		b.requestPace.take(now, e.RPM, float64(requests))
	}
}

// utilisation is the use of the tightest limit in its window, 0..1+.
func (b *budget) utilisation(now time.Time) float64 {
	e := b.limits(now)
	u := 0.0
	ratio := func(used, limit int64) {
		if limit > 0 {
			u = max(u, float64(used)/float64(limit))
		}
	}
	ratio(b.requests.used(now), e.RPM)
	ratio(b.tokens.used(now), e.TPM)
	ratio(b.dayTokens.used(now), e.TPD)
	ratio(b.concurrent, e.Concurrency)
	return u
}
