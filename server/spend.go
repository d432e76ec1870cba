package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// spendToPB translates the broker's spend report for GetQuotaReport.
func spendToPB(r broker.SpendReport) *pb.Spend {
	out := &pb.Spend{Account: spendingToPB(r.Account)}
	for _, c := range r.Clients {
		pc := &pb.ClientSpend{Client: c.Client, Spending: spendingToPB(c.Spending)}
		for _, m := range c.Models {
			pc.Models = append(pc.Models, modelSpendToPB(m))
		}
		out.Clients = append(out.Clients, pc)
	}
	for _, m := range r.Models {
		out.Models = append(out.Models, modelSpendToPB(m))
	}
	for _, c := range r.Caps {
		pc := &pb.ClientCap{Client: c.Client, Model: c.Model, Route: c.Route, Rpm: c.Limits.RPM, Tpm: c.Limits.TPM, Tpd: c.Limits.TPD,
			RequestsLastMinute: c.Requests, TokensLastMinute: c.Tokens, TokensLastDay: c.DayTokens, Refused: c.Refused}
		if !c.LastRefusedAt.IsZero() {
			pc.LastRefusedAt = timestampPB(c.LastRefusedAt)
		}
		out.Caps = append(out.Caps, pc)
	}
	return out
}

func spendingToPB(s broker.Spending) *pb.Spending {
	return &pb.Spending{TodayUsd: s.TodayUSD, MonthUsd: s.MonthUSD, ForecastTodayUsd: s.ForecastTodayUSD,
		ForecastMonthUsd: s.ForecastMonthUSD, BudgetUsdPerDay: s.Money.USDPerDay, BudgetUsdPerMonth: s.Money.USDPerMonth,
		Calls: s.Calls, UnpricedCalls: s.Unpriced, Refused: s.Refused}
}

func modelSpendToPB(m broker.ModelSpend) *pb.ModelSpend {
	return &pb.ModelSpend{Key: keyToPB(m.Key), Spending: spendingToPB(m.Spending), Priced: m.Priced}
}

// accountLabel is the client label of the account's spend and budgets.
const accountLabel = "(account)"

// spendCollector turns the broker's spend report into metrics at scrape
// time, like budgetCollector.
type spendCollector struct {
	r                                 Reporter
	spend, forecast, budget, refusals *prometheus.Desc
	modelSpend                        *prometheus.Desc
	capLimit, capUsed, capRefusals    *prometheus.Desc
}

func newSpendCollector(r Reporter) *spendCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("quotabroker_"+name, help, labels, nil)
	}
	return &spendCollector{
		r:           r,
		spend:       d("spend_usd", "Spend in USD of a client (or \"(account)\") today or this month (UTC); active leases at their reservation.", "client", "period"),
		forecast:    d("spend_forecast_usd", "Spend in USD forecast for the whole day or month at the rate so far.", "client", "period"),
		budget:      d("money_budget_usd", "Money budget in USD per day or month (absent: none).", "client", "period"),
		refusals:    d("money_refusals_total", "Grants refused on a money budget since start.", "client"),
		modelSpend:  d("model_spend_usd", "Spend in USD on a budget today or this month (UTC).", "region", "scope", "model", "period"),
		capLimit:    d("client_cap", "A client's rate cap (model and route \"\": over all models).", "client", "model", "route", "limit"),
		capUsed:     d("client_cap_used", "A client's use of a rate cap in its window (a minute; a day for tpd).", "client", "model", "route", "limit"),
		capRefusals: d("client_cap_refusals_total", "Grants refused on a client's rate caps since start.", "client", "model", "route"),
	}
}

func (c *spendCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.spend, c.forecast, c.budget, c.refusals, c.modelSpend, c.capLimit, c.capUsed, c.capRefusals} {
		ch <- d
	}
}

func (c *spendCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.r.Spend()
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	spending := func(client string, s broker.Spending) {
		gauge(c.spend, s.TodayUSD, client, "today")
		gauge(c.spend, s.MonthUSD, client, "month")
		gauge(c.forecast, s.ForecastTodayUSD, client, "today")
		gauge(c.forecast, s.ForecastMonthUSD, client, "month")
		if s.Money.USDPerDay > 0 {
			gauge(c.budget, s.Money.USDPerDay, client, "day")
		}
		if s.Money.USDPerMonth > 0 {
			gauge(c.budget, s.Money.USDPerMonth, client, "month")
		}
		if !s.Money.Zero() {
			ch <- prometheus.MustNewConstMetric(c.refusals, prometheus.CounterValue, float64(s.Refused), client)
		}
	}
	spending(accountLabel, r.Account)
	for _, cs := range r.Clients {
		spending(cs.Client, cs.Spending)
	}
	for _, m := range r.Models {
		k := m.Key
		gauge(c.modelSpend, m.TodayUSD, k.Region, k.Scope.String(), k.Model, "today")
		gauge(c.modelSpend, m.MonthUSD, k.Region, k.Scope.String(), k.Model, "month")
	}
	for _, cu := range r.Caps {
		for _, l := range []struct {
			name       string
			limit, use int64
		}{{"rpm", cu.Limits.RPM, cu.Requests}, {"tpm", cu.Limits.TPM, cu.Tokens}, {"tpd", cu.Limits.TPD, cu.DayTokens}} {
			if l.limit > 0 {
				gauge(c.capLimit, float64(l.limit), cu.Client, cu.Model, cu.Route, l.name)
				gauge(c.capUsed, float64(l.use), cu.Client, cu.Model, cu.Route, l.name)
			}
		}
		ch <- prometheus.MustNewConstMetric(c.capRefusals, prometheus.CounterValue, float64(cu.Refused), cu.Client, cu.Model, cu.Route)
	}
}

// ownSpend is sp as a client that does not see every client sees it: the
// account's totals and budget (every budget's totals are shown to all
// callers too), its own spend and caps, and no other client's name; the
// spend per model sums every client, so it goes as well.
func ownSpend(sp broker.SpendReport, client string) broker.SpendReport {
	out := broker.SpendReport{At: sp.At, Account: sp.Account}
	for _, c := range sp.Clients {
		if c.Client == client {
			out.Clients = append(out.Clients, c)
		}
	}
	for _, c := range sp.Caps {
		if c.Client == client {
			out.Caps = append(out.Caps, c)
		}
	}
	return out
}
