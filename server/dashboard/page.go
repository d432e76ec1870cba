package dashboard

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"html/template"
	"slices"
	"strings"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// Source is what the dashboard needs of the domain: current limits and
// the time, and the usage history. *broker.Broker implements it.
type Source interface {
	Report(f broker.ReportFilter) ([]broker.BudgetReport, time.Time)
	History(ctx context.Context, q broker.HistoryQuery) ([]broker.Series, error)
}

var _ Source = (*broker.Broker)(nil)

// RouteSource is what the routes table needs; a Source that has it (the
// broker does) gets the table, one without it does not.
type RouteSource interface {
	Routes() []broker.RouteInfo
}

var _ RouteSource = (*broker.Broker)(nil)

// Alerts is what the dashboard needs of the alerting: the alerts firing
// now. cmd/ adapts the alerter (internal/alert) to it; the dashboard sees
// the domain only.
type Alerts interface {
	Firing() []Firing
}

// Firing is an alert firing on a budget, named as the alerter names them:
// region, scope (broker.Scope's String) and model.
type Firing struct {
	Region, Scope, Model string
	Rule                 string
}

// view is what one request shows: the budgets the filter selects, split
// into those charted, those with traffic beyond the chart limit, and the
// idle ones.
type view struct {
	Now     time.Time
	Spans   []Span
	Filter  broker.ReportFilter
	Budgets int // selected by the filter
	Charted []budgetView
	More    []budgetView // traffic, but beyond MaxCharts
	Idle    []budgetView // no history in the longest span
	// Alerting says whether the alerts are known (Config.Alerts set).
	Alerting bool
	// Spend is the spend and caps report, nil when the Source has none.
	Spend  *broker.SpendReport
	Routes []broker.RouteInfo
}

type budgetView struct {
	Key    broker.Key
	Report *broker.BudgetReport // nil: history of a budget no longer configured
	// Total is the history summed over the longest span; Traffic ranks
	// budgets by it.
	Total   broker.Stats
	Traffic int64
	// Recent is the history summed over the shortest span: the summary's
	// rates and the attention order are about it.
	Recent broker.Stats
	Alerts []string // rules firing, in the alerter's order
	Charts []Chart  // one per span of the view
}

// traffic is what ranks budgets: every request the broker saw (granted or
// refused) and every throttle reported outside a lease.
func traffic(s *broker.Stats) int64 { return s.Granted + s.Refused + s.ReportedThrottles }

// collect reads the history of spans (shortest first) for the budgets f
// selects and ranks them by attention (see attention), charting at most
// maxCharts. alerts may be nil.
func collect(ctx context.Context, src Source, alerts Alerts, f broker.ReportFilter, spans []Span, maxCharts int) (*view, error) {
	reports, now := src.Report(f)
	v := &view{Now: now, Spans: spans, Filter: f, Budgets: len(reports), Alerting: alerts != nil}
	if ss, ok := src.(spendSource); ok {
		sp := ss.Spend()
		v.Spend = &sp
	}
	if rs, ok := src.(RouteSource); ok {
		v.Routes = rs.Routes()
	}
	firing := firingAlerts(alerts)
	byKey := map[broker.Key]*budgetView{}
	for i := range reports {
		r := &reports[i]
		byKey[r.Spec.Key] = &budgetView{Key: r.Spec.Key, Report: r}
	}
	for si, span := range spans {
		q := span.query(now, f)
		series, err := src.History(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("usage history for the last %s: %w", span.Name, err)
		}
		for _, s := range series {
			b := byKey[s.Key]
			if b == nil {
				b = &budgetView{Key: s.Key}
				byKey[s.Key] = b
			}
			// A budget first seen in a longer span gets empty charts for
			// the shorter ones it was idle in.
			for len(b.Charts) < si {
				b.Charts = append(b.Charts, b.chart(spans[len(b.Charts)], emptySeries(s.Key, spans[len(b.Charts)].query(now, f)), now))
			}
			b.Charts = append(b.Charts, b.chart(span, s, now))
			b.Total = s.Total
			if si == 0 {
				b.Recent = s.Total
			}
		}
	}
	for _, b := range byKey {
		b.Traffic = traffic(&b.Total)
		b.Alerts = firing[alertBudget(b.Key)]
		if len(b.Charts) == 0 {
			v.Idle = append(v.Idle, *b)
			continue
		}
		for len(b.Charts) < len(spans) {
			span := spans[len(b.Charts)]
			b.Charts = append(b.Charts, b.chart(span, emptySeries(b.Key, span.query(now, f)), now))
		}
		v.Charted = append(v.Charted, *b)
	}
	slices.SortFunc(v.Charted, func(x, y budgetView) int {
		if c := compareAttention(&x, &y); c != 0 {
			return c
		}
		if c := cmp.Compare(y.Traffic, x.Traffic); c != 0 {
			return c
		}
		return compareKeys(x.Key, y.Key)
	})
	slices.SortFunc(v.Idle, func(x, y budgetView) int { return compareKeys(x.Key, y.Key) })
	if len(v.Charted) > maxCharts {
		v.More, v.Charted = v.Charted[maxCharts:], v.Charted[:maxCharts]
	}
	return v, nil
}

func compareKeys(x, y broker.Key) int { return strings.Compare(x.String(), y.String()) }

// firingAlerts maps each budget, as alertBudget names it, to the rules
// firing on it.
func firingAlerts(a Alerts) map[Firing][]string {
	if a == nil {
		return nil
	}
	out := map[Firing][]string{}
	for _, f := range a.Firing() {
		rule := f.Rule
		f.Rule = ""
		out[f] = append(out[f], rule)
	}
	return out
}

// alertBudget names k as the alerter does, without a rule.
func alertBudget(k broker.Key) Firing {
	return Firing{Region: k.Region, Scope: k.Scope.String(), Model: k.Model}
}

// compareAttention orders budgets by what needs an operator first: alerts
// firing (most first); then Bedrock's throttle rate over the shortest span
// (the broker exists to prevent throttles, so any means its limits are
// wrong); then the broker's refusal rate (callers turned away); then
// callers waiting now; then utilisation now. Each is compared only when
// the ones before it tie, so it is an order of urgency, not a score.
func compareAttention(x, y *budgetView) int {
	if c := cmp.Compare(len(y.Alerts), len(x.Alerts)); c != 0 {
		return c
	}
	if c := cmp.Compare(y.Recent.ThrottleRate(), x.Recent.ThrottleRate()); c != 0 {
		return c
	}
	if c := cmp.Compare(refusalRate(&y.Recent), refusalRate(&x.Recent)); c != 0 {
		return c
	}
	var xw, yw int64
	var xu, yu float64
	if r := x.Report; r != nil {
		xw, xu = r.Waiters, r.Utilisation
	}
	if r := y.Report; r != nil {
		yw, yu = r.Waiters, r.Utilisation
	}
	if c := cmp.Compare(yw, xw); c != 0 {
		return c
	}
	return cmp.Compare(yu, xu)
}

// refusalRate is refusals over lease requests (granted or refused).
func refusalRate(s *broker.Stats) float64 {
	if n := s.Granted + s.Refused; n > 0 {
		return float64(s.Refused) / float64(n)
	}
	return 0
}

func (b *budgetView) chart(span Span, s broker.Series, now time.Time) Chart {
	c := Chart{Series: s, To: now, Title: s.Key.String() + " - last " + span.Name}
	if r := b.Report; r != nil {
		c.Static = r.Static
		c.StaticLabel = fmt.Sprintf("quota x %.2g", r.Margin)
		if r.Override != nil {
			c.StaticLabel = "override"
		}
	}
	return c
}

// emptySeries is the series History would return for a budget without
// history in q: every point zero.
func emptySeries(k broker.Key, q broker.HistoryQuery) broker.Series {
	from := q.From.Truncate(time.Minute)
	n := int((q.To.Sub(from) + q.Step - 1) / q.Step)
	return broker.Series{Key: k, From: from, Step: q.Step, Points: make([]broker.Stats, max(n, 1))}
}

// charts returns the charts of span index si of every charted budget.
func (v *view) charts(si int) []Chart {
	out := make([]Chart, 0, len(v.Charted))
	for _, b := range v.Charted {
		out = append(out, b.Charts[si])
	}
	return out
}

// emptyMessage says why span index si has no chart.
func (v *view) emptyMessage(si int) string {
	msg := "no usage history in the last " + v.Spans[si].Name
	if v.Budgets == 0 {
		msg = "no budgets"
	}
	if v.Filter.Model != "" {
		msg += fmt.Sprintf(" for models matching %q", v.Filter.Model)
	}
	return msg
}

// pageData is what the template shows.
type pageData struct {
	Generated, Version string
	Cluster            string // this replica's part in a cluster; "" alone
	Model, Region      string
	Span               string // the ?span= asked for, "" for all
	Spans              []Span
	Budgets            int
	Recent             string // name of the shortest span: the table's rates
	Alerting           bool
	Table              []tableRow
	Rows               []row
	More, Idle         []listed
	Empty              string
	Longest            string // name of the longest span shown
	Spend              []spendRow
	Caps               []capRow
	Routes             []routeRow
}

// routeRow is one target of a route in the routes table: where the
// route's calls went and why, since the routes were loaded.
type routeRow struct {
	Route                 string // on the route's first target only
	Refused               int64
	Index                 int
	Region, ModelID       string
	Room, Affinity, Spill int64
	Waited                int64
	Waiting               int
}

// tableRow is a budget's line in the summary table. Its figures "now" are
// the broker's sliding minute, as it grants; its "busiest minute" is the
// highest step of the charts.
type tableRow struct {
	Key, Anchor  string // Anchor: the id of its charts; "" when not charted
	Model, Where string // the key in two parts: model id, region and scope
	Attention    string // why it ranks where it does, in a word
	Alerts       string
	RPMNow       string
	TPMNow       string
	Busiest      string
	Throttled    string
	Refused      string
	Waiters      int64
	Adaptive     string
	AdaptiveWhy  string
	Configured   bool
}

type row struct {
	Key, Anchor string
	Summary     string
	Charts      []figure
}

type figure struct {
	Span string
	SVG  template.HTML
}

type listed struct {
	Key, Note string
}

// page renders the HTML page of v; span is the ?span= asked for.
func (d *Dashboard) page(v *view, span string) (*bytes.Buffer, error) {
	pd := pageData{
		Generated: v.Now.UTC().Format(time.RFC3339), Version: d.cfg.Version,
		Model: v.Filter.Model, Region: v.Filter.Region, Span: span,
		Spans: v.Spans, Budgets: v.Budgets, Longest: v.Spans[len(v.Spans)-1].Name,
		Recent: v.Spans[0].Name, Alerting: v.Alerting,
	}
	pd.Spend, pd.Caps = spendRows(v.Spend)
	if d.cfg.Cluster != nil {
		pd.Cluster = d.cfg.Cluster()
	}
	for i, b := range v.Charted {
		anchor := fmt.Sprintf("budget-%d", i)
		pd.Table = append(pd.Table, tableRowOf(&b, anchor, v.Alerting))
		rw := row{Key: b.Key.String(), Anchor: anchor, Summary: summary(&b, v.Spans)}
		for si, c := range b.Charts {
			svg, err := inlineSVG([]Chart{c}, "")
			if err != nil {
				return nil, err
			}
			// The SVG is trusted markup: gonum/plot wrote it from numbers,
			// escaping every text it drew (the budget key in the title).
			rw.Charts = append(rw.Charts, figure{Span: v.Spans[si].Name, SVG: template.HTML(svg)})
		}
		pd.Rows = append(pd.Rows, rw)
	}
	for _, b := range v.More {
		pd.Table = append(pd.Table, tableRowOf(&b, "", v.Alerting))
		pd.More = append(pd.More, listed{Key: b.Key.String(), Note: fmt.Sprintf("%d requests", b.Traffic)})
	}
	for _, b := range v.Idle {
		pd.Idle = append(pd.Idle, listed{Key: b.Key.String(), Note: limitsNote(b.Report)})
	}
	for _, r := range v.Routes {
		for i, t := range r.Targets {
			c := r.Counters[i]
			rr := routeRow{Index: i + 1, Region: t.Key.Region, ModelID: t.ModelID, Room: c.Room, Affinity: c.Affinity,
				Spill: c.Spill, Waited: c.Waited, Waiting: r.Queued[i]}
			if i == 0 {
				rr.Route, rr.Refused = r.Name, r.Refused
			}
			pd.Routes = append(pd.Routes, rr)
		}
	}
	if len(v.Charted) == 0 {
		pd.Empty = v.emptyMessage(len(v.Spans)-1) + "."
		if v.Budgets > 0 {
			pd.Empty += " Charts appear once callers acquire leases; the broker records history every second."
		}
	}
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, pd); err != nil {
		return nil, err
	}
	return &buf, nil
}

// tableRowOf is b's line in the summary table.
func tableRowOf(b *budgetView, anchor string, alerting bool) tableRow {
	t := &b.Recent
	tr := tableRow{Key: b.Key.String(), Model: b.Key.Model, Where: b.Key.Region + " " + b.Key.Scope.String(), Anchor: anchor, Attention: attentionWord(b), Alerts: strings.Join(b.Alerts, ", "),
		Throttled: fmt.Sprintf("%d of %d (%.1f%%)", t.Throttled+t.ReportedThrottles, t.Calls(), 100*t.ThrottleRate()),
		Refused:   fmt.Sprintf("%d (%.1f%%)", t.Refused, 100*refusalRate(t)),
		Busiest:   busiest(b), RPMNow: "-", TPMNow: "-", Adaptive: "-"}
	if alerting && tr.Alerts == "" {
		tr.Alerts = "none"
	}
	r := b.Report
	if r == nil {
		return tr
	}
	tr.Configured = true
	tr.Waiters = r.Waiters
	if l := r.Effective.RPM; l > 0 {
		tr.RPMNow = fmt.Sprintf("%.0f%% (%s/%s)", 100*float64(r.Usage.RequestsLastMinute)/float64(l),
			shortNumber(float64(r.Usage.RequestsLastMinute)), shortNumber(float64(l)))
	}
	if l := r.Effective.TPM; l > 0 {
		tr.TPMNow = fmt.Sprintf("%.0f%% (%s/%s)", 100*float64(r.Usage.TokensLastMinute)/float64(l),
			shortNumber(float64(r.Usage.TokensLastMinute)), shortNumber(float64(l)))
	}
	tr.Adaptive = "no ceiling"
	if c := r.Adaptive.Ceiling; c.TPM > 0 || c.RPM > 0 {
		var parts []string
		if c.TPM > 0 {
			parts = append(parts, shortNumber(float64(c.TPM))+" TPM")
		}
		if c.RPM > 0 {
			parts = append(parts, shortNumber(float64(c.RPM))+" RPM")
		}
		tr.Adaptive = "ceiling " + strings.Join(parts, ", ")
		tr.AdaptiveWhy = r.Adaptive.Reason
	}
	return tr
}

// attentionWord names the first reason compareAttention ranks b by.
func attentionWord(b *budgetView) string {
	switch {
	case len(b.Alerts) > 0:
		return "alert"
	case b.Recent.Throttled+b.Recent.ReportedThrottles > 0:
		return "throttled"
	case b.Recent.Refused > 0:
		return "refusing"
	case b.Report != nil && b.Report.Waiters > 0:
		return "waiting"
	case b.Report != nil && b.Report.Utilisation >= hot:
		return "hot"
	}
	return "ok"
}

// hot is the utilisation at which a budget is worth a look: the
// alerter's default threshold.
const hot = 0.8

// busiest is the highest step of b's shortest-span chart against the
// limit recorded in that step, for RPM and TPM: the peak an operator sees
// in the charts, in the same units.
func busiest(b *budgetView) string {
	if len(b.Charts) == 0 {
		return "-"
	}
	ch := &b.Charts[0]
	mins := ch.perMinute()
	var rpm, tpm float64
	for i := range ch.Series.Points {
		p := &ch.Series.Points[i]
		if p.LimitRPM > 0 {
			rpm = max(rpm, float64(p.WindowRequests)/mins[i]/float64(p.LimitRPM))
		}
		if p.LimitTPM > 0 {
			tpm = max(tpm, float64(p.WindowTokens)/mins[i]/float64(p.LimitTPM))
		}
	}
	var parts []string
	if rpm > 0 {
		parts = append(parts, fmt.Sprintf("RPM %.0f%%", 100*rpm))
	}
	if tpm > 0 {
		parts = append(parts, fmt.Sprintf("TPM %.0f%%", 100*tpm))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

// summary is a budget's line above its charts: traffic over the longest
// span, and its state now, naming the limit its utilisation is of.
func summary(b *budgetView, spans []Span) string {
	t := &b.Total
	s := fmt.Sprintf("last %s: %d calls, %d throttled by Bedrock (%.1f%%), %d refused by the broker", spans[len(spans)-1].Name,
		t.Calls(), t.Throttled+t.ReportedThrottles, 100*t.ThrottleRate(), t.Refused)
	if r := b.Report; r != nil {
		if name, u := tightest(r); u > 0 {
			s += fmt.Sprintf("; now %.0f%% of %s (the tightest limit, over the sliding last minute, calls in flight at their reservation), %s",
				100*u, name, limitsNote(r))
		} else {
			s += "; nothing in the sliding last minute, " + limitsNote(r)
		}
	} else {
		s += "; no longer configured"
	}
	return s
}

// tightest names the limit r.Utilisation is of, as the broker computes
// it: the highest ratio of use to effective limit.
func tightest(r *broker.BudgetReport) (string, float64) {
	name, u := "its limits", 0.0
	for _, l := range []struct {
		name        string
		used, limit int64
	}{
		{"RPM", r.Usage.RequestsLastMinute, r.Effective.RPM},
		{"TPM", r.Usage.TokensLastMinute, r.Effective.TPM},
		{"TPD", r.Usage.TokensLastDay, r.Effective.TPD},
		{"concurrency", r.Usage.Concurrent, r.Effective.Concurrency},
	} {
		if l.limit > 0 && float64(l.used)/float64(l.limit) > u {
			name, u = l.name, float64(l.used)/float64(l.limit)
		}
	}
	return name, u
}

func limitsNote(r *broker.BudgetReport) string {
	if r == nil {
		return ""
	}
	var parts []string
	if l := r.Effective.TPM; l > 0 {
		parts = append(parts, fmt.Sprintf("%s TPM", shortNumber(float64(l))))
	}
	if l := r.Effective.RPM; l > 0 {
		parts = append(parts, fmt.Sprintf("%s RPM", shortNumber(float64(l))))
	}
	if len(parts) == 0 {
		return "no limit"
	}
	return "limit " + strings.Join(parts, ", ")
}

var pageTemplate = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="60">
<link rel="icon" href="data:,">
<title>Quota broker dashboard</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 1.5em; color: #222; }
header { display: flex; flex-wrap: wrap; gap: 0.5em 2em; align-items: baseline; border-bottom: 1px solid #ccc; padding-bottom: 0.5em; }
header h1 { font-size: 1.3em; margin: 0; }
header .meta { color: #666; }
form { display: inline; }
section.budget { margin: 1em 0 1.5em; }
section.budget h2 { font-size: 1em; margin: 0; font-family: ui-monospace, monospace; }
.summary { color: #555; margin: 0.2em 0 0.4em; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
figure.chart { margin: 0; }
figure.chart svg { max-width: 100%; height: auto; }
.listed { font-family: ui-monospace, monospace; font-size: 0.9em; color: #444; }
.listed span { white-space: nowrap; margin-right: 1.5em; }
.empty { padding: 2em 0; font-size: 1.1em; color: #555; }
table.summary { border-collapse: collapse; margin: 0.8em 0 0.3em; font-size: 0.86em; }
table.summary th, table.summary td { padding: 0.2em 0.5em; text-align: right; border-bottom: 1px solid #e4e4e4; white-space: nowrap; }
table.summary th { background: #f3f3f3; font-weight: 600; vertical-align: bottom; white-space: normal; }
table.summary td.adaptive { white-space: normal; max-width: 11em; text-align: left; }
table.summary th small { font-weight: normal; color: #666; }
table.summary td.key, table.summary th.key { text-align: left; }
table.summary td.key a { font-family: ui-monospace, monospace; }
table.summary td small { color: #666; }
table.summary td.word { text-align: left; font-weight: 600; }
tr.alert td.word, tr.throttled td.word { color: #b01c1c; }
tr.refusing td.word, tr.waiting td.word, tr.hot td.word { color: #a85a00; }
tr.ok td.word { color: #2c7a2c; }
td.firing { color: #b01c1c; font-weight: 600; }
tr.firing td { color: #b01c1c; }
p.note { color: #555; font-size: 0.88em; margin: 0 0 1em; max-width: 75em; }
</style>
</head>
<body>
<header>
<h1>Quota broker dashboard</h1>
<span class="meta">generated {{.Generated}} &middot; version {{.Version}} &middot; {{.Budgets}} budgets &middot; <a href="/metrics">/metrics</a></span>
{{if .Cluster}}<span class="meta cluster">{{.Cluster}}</span>{{end}}
<span>span:
<a href="?span=hour&amp;model={{.Model}}&amp;region={{.Region}}">hour</a> |
<a href="?span=day&amp;model={{.Model}}&amp;region={{.Region}}">day</a> |
<a href="?model={{.Model}}&amp;region={{.Region}}">both</a></span>
<form method="get" action="/dashboard"><input type="hidden" name="span" value="{{.Span}}">
<input type="hidden" name="region" value="{{.Region}}">
<input name="model" value="{{.Model}}" placeholder="model contains" size="24"> <button>filter</button></form>
</header>
{{if .Empty}}<p class="empty" id="empty">{{.Empty}}</p>{{end}}
{{if .Table}}<table class="summary" id="summary">
<thead><tr><th class="key">budget</th><th class="key">needs</th>{{if .Alerting}}<th>alerts firing</th>{{end}}
<th>RPM now<br><small>sliding minute</small></th><th>TPM now<br><small>sliding minute</small></th>
<th>busiest minute<br><small>last {{.Recent}}, as charted</small></th>
<th>throttled by Bedrock<br><small>last {{.Recent}}</small></th><th>refused by broker<br><small>last {{.Recent}}</small></th>
<th>waiting<br><small>now</small></th><th>adaptive<br><small>now</small></th></tr></thead>
<tbody>{{range .Table}}<tr class="{{.Attention}}" data-key="{{.Key}}">
<td class="key">{{if .Anchor}}<a href="#{{.Anchor}}">{{.Model}}</a>{{else}}{{.Model}}{{end}}<br><small>{{.Where}}{{if not .Configured}}, no longer configured{{end}}</small></td>
<td class="word">{{.Attention}}</td>{{if $.Alerting}}<td{{if ne .Alerts "none"}} class="firing"{{end}}>{{.Alerts}}</td>{{end}}
<td>{{.RPMNow}}</td><td>{{.TPMNow}}</td><td>{{.Busiest}}</td><td>{{.Throttled}}</td><td>{{.Refused}}</td>
<td>{{.Waiters}}</td><td class="adaptive"{{if .AdaptiveWhy}} title="{{.AdaptiveWhy}}"{{end}}>{{.Adaptive}}</td></tr>
{{end}}</tbody></table>
<p class="note">Budgets with traffic, those that need attention first: alerts firing, then Bedrock's throttle rate, the
broker's refusal rate, callers waiting, and utilisation now. <b>Now</b> is the broker's sliding minute as it grants:
calls in flight count at their reservation (input + max_tokens) until they settle. <b>Busiest minute</b> is the highest
step of the charts below: what settled calls were charged, by the minute each was granted, against the limit in force
then. The two differ when callers reserve more than they use, and because a sliding minute spans two chart minutes.
Times are UTC.</p>{{end}}
{{if .Spend}}<table class="summary" id="spend">
<thead><tr><th class="key">spend (USD)</th><th>today<br><small>UTC</small></th><th>forecast<br><small>day at this rate</small></th><th>budget per day</th>
<th>this month</th><th>forecast<br><small>month at this rate</small></th><th>budget per month</th><th>refused<br><small>on money</small></th><th>unpriced calls</th></tr></thead>
<tbody>{{range .Spend}}<tr{{if .Over}} class="firing"{{end}}><td class="key">{{.Client}}</td><td>{{.Today}}</td><td>{{.ForecastToday}}</td><td>{{.BudgetDay}}</td>
<td>{{.Month}}</td><td>{{.ForecastMonth}}</td><td>{{.BudgetMonth}}</td><td>{{.Refused}}</td><td>{{.Unpriced}}</td></tr>
{{end}}</tbody></table>
<p class="summary">Spend counts active leases at their reservation's price. A row in red is at 80% or more of a money budget.</p>{{end}}
{{if .Caps}}<table class="summary" id="caps">
<thead><tr><th class="key">client cap</th><th class="key">on</th><th>RPM<br><small>used/cap</small></th><th>TPM<br><small>used/cap</small></th><th>TPD<br><small>used/cap</small></th><th>refused</th></tr></thead>
<tbody>{{range .Caps}}<tr{{if .Full}} class="firing"{{end}}><td class="key">{{.Client}}</td><td class="key">{{.On}}</td><td>{{.RPM}}</td><td>{{.TPM}}</td><td>{{.TPD}}</td><td>{{.Refused}}</td></tr>
{{end}}</tbody></table>{{end}}
{{if .Routes}}<table class="summary" id="routes">
<thead><tr><th class="key">route</th><th>target</th><th class="key">calls</th><th>room<br><small>first target</small></th>
<th>affinity<br><small>key's last target</small></th><th>spill<br><small>preferred full</small></th>
<th>waited<br><small>of those</small></th><th>waiting<br><small>now</small></th></tr></thead>
<tbody>{{range .Routes}}<tr data-route="{{.Route}}">
<td class="key">{{if .Route}}{{.Route}}<br><small>refused {{.Refused}}</small>{{end}}</td><td>{{.Index}}</td>
<td class="key">{{.ModelID}}<br><small>{{.Region}}</small></td><td>{{.Room}}</td><td>{{.Affinity}}</td><td>{{.Spill}}</td>
<td>{{.Waited}}</td><td>{{.Waiting}}</td></tr>
{{end}}</tbody></table>
<p class="note">Routes: where each route granted its leases since the routes were loaded, by target in the route's order,
and why: its first target with room, the affinity key's last target, or another because the preferred one was full.</p>{{end}}
{{range .Rows}}{{$key := .Key}}<section class="budget" id="{{.Anchor}}">
<h2>{{.Key}}</h2>
<p class="summary">{{.Summary}}</p>
<div class="charts">{{range .Charts}}<figure class="chart" data-budget="{{$key}}" data-span="{{.Span}}">{{.SVG}}</figure>{{end}}</div>
</section>
{{end}}
{{if .More}}<h3>{{len .More}} more budgets with traffic (not charted; narrow with the model filter)</h3>
<p class="listed" id="more">{{range .More}}<span>{{.Key}} ({{.Note}})</span> {{end}}</p>{{end}}
{{if .Idle}}<h3>{{len .Idle}} idle budgets (no history in the last {{.Longest}})</h3>
<p class="listed" id="idle">{{range .Idle}}<span>{{.Key}} ({{.Note}})</span> {{end}}</p>{{end}}
</body>
</html>
`))
