package bedrocksim

import (
	"math"
	"time"
)

// bucket is a token bucket holding one period's worth of capacity and
// refilling continuously at capacity/period. It starts full. This is the
// model for every metric: Bedrock's exact algorithm is not public, and a
// bucket both caps a burst at one minute's (or day's) quota and gives back
// capacity smoothly, which matches how throttles clear in practice.
type bucket struct {
	capacity float64
	period   time.Duration
	level    float64
	last     time.Time
}

func (b *bucket) refill(now time.Time) {
	if dt := now.Sub(b.last); dt > 0 {
		b.level = math.Min(b.capacity, b.level+b.capacity*float64(dt)/float64(b.period))
		b.last = now
	}
}

// setCapacity keeps the level, clamped to the new capacity: a drop takes
// effect at once, a rise fills in at the new rate.
func (b *bucket) setCapacity(now time.Time, c float64) {
	b.refill(now)
	b.capacity = c
	b.level = math.Min(b.level, c)
}

// quotaState is one quota row of one Region with its live values.
type quotaState struct {
	row     Quota
	applied float64 // published value, what Service Quotas reports
	bucket  bucket  // capacity is the hidden true capacity
	changed bool

	requests, admitted, throttles int64
	reserved, settled             float64
}

// apply changes the applied value or the hidden capacity. The hidden
// capacity keeps its ratio to the applied value when the latter moves, so an
// approved increase raises what is enforced too.
func (q *quotaState) apply(now time.Time, c CapacityChange) {
	q.changed = true
	switch {
	case c.SetTrue != nil:
		q.bucket.setCapacity(now, *c.SetTrue)
	case c.ScaleTrue != nil:
		q.bucket.setCapacity(now, q.bucket.capacity**c.ScaleTrue)
	case c.SetApplied != nil:
		old := q.applied
		q.applied = *c.SetApplied
		if old > 0 {
			q.bucket.setCapacity(now, q.bucket.capacity*q.applied/old)
		} else {
			q.bucket.setCapacity(now, q.applied)
		}
	}
}

// enforceKey finds the quotas that gate a request.
type enforceKey struct {
	scope, model, metric string
}

// regionState is the account's state in one Region.
type regionState struct {
	name     string
	quotas   []*quotaState // in Service Quotas listing order
	byCode   map[string]*quotaState
	enforced map[enforceKey][]*quotaState
	changes  []*quotaChange // quota increase requests, oldest first
	// provisioned are the capacities of the Provisioned Throughputs
	// called here, by name (provisioned.go).
	provisioned map[string]*quotaState

	requests, admitted, throttles, faults int64
}

func (s *Sim) newRegion(name string, rows []Quota) *regionState {
	rs := &regionState{name: name, byCode: make(map[string]*quotaState, len(rows)), enforced: make(map[enforceKey][]*quotaState),
		provisioned: make(map[string]*quotaState)}
	frac := s.sc.Runtime.TrueCapacityFraction
	if frac == 0 {
		frac = 1
	}
	for _, row := range rows {
		q := &quotaState{row: row, applied: row.Value}
		trueCap := row.Value * frac
		if row.TrueValue != nil {
			trueCap = *row.TrueValue
		}
		period := time.Minute
		if row.Enforces != nil && row.Enforces.Metric == MetricTPD {
			period = 24 * time.Hour
		}
		q.bucket = bucket{capacity: trueCap, period: period, level: trueCap, last: s.start}
		rs.quotas = append(rs.quotas, q)
		rs.byCode[row.Code] = q
		if e := row.Enforces; e != nil {
			for _, scope := range e.Scopes {
				k := enforceKey{scope, e.Model, e.Metric}
				rs.enforced[k] = append(rs.enforced[k], q)
			}
		}
	}
	return rs
}

// reservation is an admitted request's hold on its token quotas.
type reservation struct {
	tokenQuotas []*quotaState
	reserved    float64
	settled     bool
}

// throttleReason names the quota kind that refused a request; it picks the
// message AWS sends.
type throttleReason string

const (
	reasonRPM throttleReason = "Too many requests, please wait before trying again."
	reasonTPM throttleReason = "Too many tokens, please wait before trying again."
	reasonTPD throttleReason = "Too many tokens per day, please wait before trying again."
)

// admitLocked checks every quota gating (scope, model) and either debits
// them all or none: a throttled request consumes nothing. Callers hold mu.
func (rs *regionState) admitLocked(now time.Time, scope, model string, tokens float64) (*reservation, throttleReason) {
	rs.requests++
	rpm := rs.enforced[enforceKey{scope, model, MetricRPM}]
	tpm := rs.enforced[enforceKey{scope, model, MetricTPM}]
	tpd := rs.enforced[enforceKey{scope, model, MetricTPD}]
	all := make([]*quotaState, 0, len(rpm)+len(tpm)+len(tpd))
	all = append(append(append(all, rpm...), tpm...), tpd...)
	for _, q := range all {
		q.requests++
		q.bucket.refill(now)
	}
	var reason throttleReason
	check := func(qs []*quotaState, need float64, why throttleReason) {
		for _, q := range qs {
			if reason == "" && q.bucket.level < need {
				reason = why
			}
		}
	}
	check(rpm, 1, reasonRPM)
	check(tpm, tokens, reasonTPM)
	check(tpd, tokens, reasonTPD)
	if reason != "" {
		rs.throttles++
		for _, q := range all {
			q.throttles++
		}
		return nil, reason
	}
	rs.admitted++
	for _, q := range rpm {
		q.bucket.level--
		q.admitted++
	}
	res := &reservation{reserved: tokens}
	for _, q := range all[len(rpm):] {
		q.bucket.level -= tokens
		q.admitted++
		q.reserved += tokens
		res.tokenQuotas = append(res.tokenQuotas, q)
	}
	return res, ""
}

// settleLocked replaces the reservation by the real charge, returning the
// difference to the buckets (or taking more, should the charge exceed it).
// Callers hold mu.
func (res *reservation) settleLocked(now time.Time, charge float64) {
	if res == nil || res.settled {
		return
	}
	res.settled = true
	for _, q := range res.tokenQuotas {
		q.bucket.refill(now)
		q.bucket.level = math.Min(q.bucket.capacity, q.bucket.level+res.reserved-charge)
		q.settled += charge
	}
}
