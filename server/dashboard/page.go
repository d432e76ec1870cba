package dashboard

import (
	"cmp"
	"context"
	"fmt"
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
}

type budgetView struct {
	Key    broker.Key
	Report *broker.BudgetReport // nil: history of a budget no longer configured
	// Total is the history summed over the longest span; Traffic ranks
	// budgets by it.
	Total   broker.Stats
	Traffic int64
	Charts  []Chart // one per span of the view
}

// traffic is what ranks budgets: every request the broker saw (granted or
// refused) and every throttle reported outside a lease.
func traffic(s *broker.Stats) int64 { return s.Granted + s.Refused + s.ReportedThrottles }

// collect reads the history of spans (shortest first) for the budgets f
// selects and ranks them, charting at most maxCharts.
func collect(ctx context.Context, src Source, f broker.ReportFilter, spans []Span, maxCharts int) (*view, error) {
	reports, now := src.Report(f)
	v := &view{Now: now, Spans: spans, Filter: f, Budgets: len(reports)}
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
		}
	}
	for _, b := range byKey {
		b.Traffic = traffic(&b.Total)
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
