package server

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bedrockqb/quotabroker/broker"
)

// Reporter is what the metrics need of the domain.
type Reporter interface {
	Report(f broker.ReportFilter) ([]broker.BudgetReport, time.Time)
	DiscoveryStatus() broker.DiscoveryStatus
	Spend() broker.SpendReport
	Routes() []broker.RouteInfo
}

// budgetCollector turns the broker's report into Prometheus metrics at
// scrape time, so nothing is counted twice and the hot path pays nothing.
type budgetCollector struct {
	r Reporter

	limit, quota, ceiling, used, utilisation, outstanding, waiters *prometheus.Desc
	events, tokens                                                 *prometheus.Desc
	quotaAge                                                       *prometheus.Desc
	routeGrants, routeWaited, routeRefused, routeWaiters           *prometheus.Desc
}

var budgetLabels = []string{"region", "scope", "model"}

func newBudgetCollector(r Reporter) *budgetCollector {
	d := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc("quotabroker_budget_"+name, help, append(append([]string{}, budgetLabels...), extra...), nil)
	}
	return &budgetCollector{
		r:           r,
		limit:       d("limit", "Effective limit the broker enforces now (0: absent).", "limit"),
		quota:       d("quota", "Quota as discovered or configured (0: absent).", "limit"),
		ceiling:     d("adaptive_ceiling", "Ceiling learned from throttles; 0 when not engaged.", "limit"),
		used:        d("used", "Use in the limit's sliding window (requests or tokens in the last minute, tokens in the last day, leases now).", "limit"),
		utilisation: d("utilisation_ratio", "Use of the tightest limit in its window, 0..1."),
		outstanding: d("outstanding_leases", "Active leases."),
		waiters:     d("waiters", "Callers waiting for capacity."),
		events:      d("events_total", "Leases by what happened to them, since the broker started.", "event"),
		tokens:      d("tokens_total", "Tokens reserved at grant, settled at completion, and returned (reserved minus settled).", "kind"),
		quotaAge:    prometheus.NewDesc("quotabroker_quota_age_seconds", "Time since quotas were last discovered; absent with static budgets.", nil, nil),
		routeGrants: prometheus.NewDesc("quotabroker_route_grants_total", "Leases a route granted on each target, by reason: room (its first target), affinity (the key's last target), spill (another, the preferred one being full).",
			[]string{"route", "target", "region", "model_id", "reason"}, nil),
		routeWaited: prometheus.NewDesc("quotabroker_route_waited_grants_total", "Of a route's grants on each target, those that waited for capacity.",
			[]string{"route", "target", "region", "model_id"}, nil),
		routeRefused: prometheus.NewDesc("quotabroker_route_refused_total", "Requests on a route refused: every target full until the wait ran out.", []string{"route"}, nil),
		routeWaiters: prometheus.NewDesc("quotabroker_route_waiters", "Callers of a route waiting on each target now (each waits on every target at once).",
			[]string{"route", "target", "region", "model_id"}, nil),
	}
}

func (c *budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.limit, c.quota, c.ceiling, c.used, c.utilisation, c.outstanding, c.waiters, c.events, c.tokens, c.quotaAge, c.routeGrants, c.routeWaited, c.routeRefused, c.routeWaiters} {
		ch <- d
	}
}

func (c *budgetCollector) Collect(ch chan<- prometheus.Metric) {
	reports, now := c.r.Report(broker.ReportFilter{})
	for _, r := range reports {
		k := r.Spec.Key
		lv := []string{k.Region, k.Scope.String(), k.Model}
		gauge := func(d *prometheus.Desc, v float64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append(append([]string{}, lv...), extra...)...)
		}
		counter := func(d *prometheus.Desc, v int64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append(append([]string{}, lv...), extra...)...)
		}
		for _, l := range []struct {
			name                      string
			eff, quota, ceil, usedNow int64
		}{
			{"rpm", r.Effective.RPM, r.Spec.Quota.RPM, r.Adaptive.Ceiling.RPM, r.Usage.RequestsLastMinute},
			{"tpm", r.Effective.TPM, r.Spec.Quota.TPM, r.Adaptive.Ceiling.TPM, r.Usage.TokensLastMinute},
			{"tpd", r.Effective.TPD, r.Spec.Quota.TPD, 0, r.Usage.TokensLastDay},
			{"concurrency", r.Effective.Concurrency, r.Spec.Quota.Concurrency, 0, r.Usage.Concurrent},
		} {
			gauge(c.limit, float64(l.eff), l.name)
			gauge(c.quota, float64(l.quota), l.name)
			gauge(c.used, float64(l.usedNow), l.name)
			if l.name == "rpm" || l.name == "tpm" {
				gauge(c.ceiling, float64(l.ceil), l.name)
			}
		}
		gauge(c.utilisation, r.Utilisation)
		gauge(c.outstanding, float64(r.Outstanding))
		gauge(c.waiters, float64(r.Waiters))
		n := r.Counters
		for _, e := range []struct {
			name string
			v    int64
		}{{"granted", n.Granted}, {"refused", n.Refused}, {"completed", n.Completed}, {"throttled", n.Throttled},
			{"reported_throttle", n.ReportedThrottles}, {"expired", n.Expired}, {"error", n.Errors}, {"cancelled", n.Cancelled},
			{"unset_max_tokens", n.UnsetMaxTokens}} {
			counter(c.events, e.v, e.name)
		}
		counter(c.tokens, n.ReservedTokens, "reserved")
		counter(c.tokens, n.SettledTokens, "settled")
		counter(c.tokens, n.ReturnedTokens, "returned")
	}
	for _, r := range c.r.Routes() {
		ch <- prometheus.MustNewConstMetric(c.routeRefused, prometheus.CounterValue, float64(r.Refused), r.Name)
		for i, t := range r.Targets {
			lv := []string{r.Name, strconv.Itoa(i), t.Key.Region, t.ModelID}
			n := r.Counters[i]
			for _, e := range []struct {
				reason string
				v      int64
			}{{"room", n.Room}, {"affinity", n.Affinity}, {"spill", n.Spill}} {
				ch <- prometheus.MustNewConstMetric(c.routeGrants, prometheus.CounterValue, float64(e.v), append(lv, e.reason)...)
			}
			ch <- prometheus.MustNewConstMetric(c.routeWaited, prometheus.CounterValue, float64(n.Waited), lv...)
			ch <- prometheus.MustNewConstMetric(c.routeWaiters, prometheus.GaugeValue, float64(r.Queued[i]), lv...)
		}
	}
	if d := c.r.DiscoveryStatus(); d.Enabled && !d.LastSuccess.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.quotaAge, prometheus.GaugeValue, now.Sub(d.LastSuccess).Seconds())
	}
}

// MetricsHandler returns the /metrics handler for registry.
func MetricsHandler(registry *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(registry, promhttp.HandlerOpts{Registry: registry})
}

// NewRegistry returns a registry with the Go runtime and process
// collectors, and the broker's budget metrics from r.
func NewRegistry(r Reporter) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), newBudgetCollector(r),
		newSpendCollector(r))
	return reg
}
