package server

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

// callMetrics are the standard gRPC server metrics, with the names, labels
// and buckets of go-grpc-middleware's Prometheus provider that dashboards
// know (grpc_server_started_total, _handled_total, _msg_received_total,
// _msg_sent_total, _handling_seconds). The provider looked up five series
// by their label values on every call (hashing the labels and allocating a
// reporter), on every lease's path. Here each method's series are
// bound once, on its first call, and a call only increments them.
type callMetrics struct {
	clock                            Clock
	started, handled, received, sent *prometheus.CounterVec
	seconds                          *prometheus.HistogramVec

	mu      sync.RWMutex              // guards methods
	methods map[string]*methodMetrics // by full method name (a method has one type)
}

// methodMetrics are one method's bound series, every code's included (as
// the provider's InitializeMetrics did, so that each shows up at 0).
type methodMetrics struct {
	labels                  []string // type, service, method
	started, received, sent prometheus.Counter
	seconds                 prometheus.Observer
	handled                 [codes.Unauthenticated + 1]prometheus.Counter
}

func newCallMetrics(clock Clock) *callMetrics {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	counter := func(name, help string, extra ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, append(slices.Clone(labels), extra...))
	}
	return &callMetrics{
		clock:    clock,
		methods:  map[string]*methodMetrics{},
		started:  counter("grpc_server_started_total", "Total number of RPCs started on the server."),
		handled:  counter("grpc_server_handled_total", "Total number of RPCs completed on the server, regardless of success or failure.", "grpc_code"),
		received: counter("grpc_server_msg_received_total", "Total number of RPC stream messages received on the server."),
		sent:     counter("grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server."),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "grpc_server_handling_seconds",
			Help:    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
			Buckets: prometheus.DefBuckets}, labels),
	}
}

func (m *callMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range []prometheus.Collector{m.started, m.handled, m.received, m.sent, m.seconds} {
		c.Describe(ch)
	}
}

func (m *callMetrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range []prometheus.Collector{m.started, m.handled, m.received, m.sent, m.seconds} {
		c.Collect(ch)
	}
}

// method returns the bound series of fullMethod called as typ.
func (m *callMetrics) method(typ, fullMethod string) *methodMetrics {
	m.mu.RLock()
	mm := m.methods[fullMethod]
	m.mu.RUnlock()
	if mm != nil {
		return mm
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if mm := m.methods[fullMethod]; mm != nil {
		return mm
	}
	service, method, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	lv := []string{typ, service, method}
	mm = &methodMetrics{labels: lv, started: m.started.WithLabelValues(lv...), received: m.received.WithLabelValues(lv...),
		sent: m.sent.WithLabelValues(lv...), seconds: m.seconds.WithLabelValues(lv...)}
	for c := range mm.handled {
		mm.handled[c] = m.handled.WithLabelValues(typ, service, method, codes.Code(c).String())
	}
	// Only gRPC's registered methods reach an interceptor: the map is
	// bounded by the services served.
	m.methods[fullMethod] = mm
	return mm
}

// done counts a finished call with err's code and its duration since start.
func (m *callMetrics) done(mm *methodMetrics, err error, start time.Time) {
	code := status.Code(err)
	if err != nil && code == codes.Unknown {
		// As the provider and the gRPC server do: a context error is its
		// code.
		code = status.FromContextError(err).Code()
	}
	if int(code) < len(mm.handled) {
		mm.handled[code].Inc()
	} else {
		m.handled.WithLabelValues(append(slices.Clone(mm.labels), code.String())...).Inc()
	}
	mm.seconds.Observe(m.clock.Now().Sub(start).Seconds())
}

// initialize binds the series of every method srv serves.
func (m *callMetrics) initialize(srv *grpc.Server) {
	for service, info := range srv.GetServiceInfo() {
		for _, mi := range info.Methods {
			m.method(streamType(mi.IsClientStream, mi.IsServerStream), "/"+service+"/"+mi.Name)
		}
	}
}

func streamType(client, server bool) string {
	switch {
	case client && server:
		return "bidi_stream"
	case client:
		return "client_stream"
	case server:
		return "server_stream"
	}
	return "unary"
}

func (m *callMetrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := m.clock.Now()
	mm := m.method("unary", info.FullMethod)
	mm.started.Inc()
	mm.received.Inc()
	resp, err := handler(ctx, req)
	if err == nil {
		mm.sent.Inc()
	}
	m.done(mm, err, start)
	return resp, err
}

func (m *callMetrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := m.clock.Now()
	mm := m.method(streamType(info.IsClientStream, info.IsServerStream), info.FullMethod)
	mm.started.Inc()
	err := handler(srv, &countedStream{ServerStream: ss, mm: mm})
	m.done(mm, err, start)
	return err
}

// countedStream counts the messages a stream sends and receives.
type countedStream struct {
	grpc.ServerStream
	mm *methodMetrics
}

func (s *countedStream) SendMsg(msg any) error {
	err := s.ServerStream.SendMsg(msg)
	if err == nil {
		s.mm.sent.Inc()
	}
	return err
}

func (s *countedStream) RecvMsg(msg any) error {
	err := s.ServerStream.RecvMsg(msg)
	if err == nil {
		s.mm.received.Inc()
	}
	return err
}
