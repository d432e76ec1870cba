package main

import (
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// printSpend prints spend per client (today, this month, the forecast of
// each at the current rate, against its money budgets) and the clients'
// rate caps with their use; wide adds spend per model and per client and
// model. Nothing without prices, money budgets or caps: calls counted with
// no price to them are no spend to show.
func printSpend(w io.Writer, sp *pb.Spend, wide bool) {
	if !showSpend(sp) {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT\tTODAY $\tFORECAST\tBUDGET/DAY\tMONTH $\tFORECAST\tBUDGET/MONTH\tREFUSED\tUNPRICED")
	row := func(name string, s *pb.Spending) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", clip(name, 24),
			dollars(s.GetTodayUsd()), dollars(s.GetForecastTodayUsd()), budgetOf(s.GetTodayUsd(), s.GetBudgetUsdPerDay()),
			dollars(s.GetMonthUsd()), dollars(s.GetForecastMonthUsd()), budgetOf(s.GetMonthUsd(), s.GetBudgetUsdPerMonth()),
			s.GetRefused(), s.GetUnpricedCalls())
	}
	row("(account)", sp.GetAccount())
	for _, c := range sp.GetClients() {
		row(c.GetClient(), c.GetSpending())
	}
	tw.Flush()
	fmt.Fprintln(w, "$: spent and held by active leases, UTC day and month; FORECAST: at the rate so far; UNPRICED: calls with no price")
	if wide {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CLIENT\tREGION\tSCOPE\tMODEL\tTODAY $\tMONTH $\tFORECAST\tCALLS\tPRICED")
		models := func(client string, ms []*pb.ModelSpend) {
			for _, m := range ms {
				k, s := m.GetKey(), m.GetSpending()
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%t\n", client, k.GetRegion(), scopeName(k.GetScope()), k.GetModel(),
					dollars(s.GetTodayUsd()), dollars(s.GetMonthUsd()), dollars(s.GetForecastMonthUsd()), s.GetCalls(), m.GetPriced())
			}
		}
		models("(all)", sp.GetModels())
		for _, c := range sp.GetClients() {
			models(c.GetClient(), c.GetModels())
		}
		tw.Flush()
	}
	if len(sp.GetCaps()) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT\tCAP ON\tRPM\tTPM\tTPD\tREFUSED")
	for _, c := range sp.GetCaps() {
		on := "all models"
		switch {
		case c.GetRoute() != "":
			on = "route " + c.GetRoute()
		case c.GetModel() != "":
			on = c.GetModel()
		}
		if !wide {
			on = clip(on, 44)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", clip(c.GetClient(), 24), on,
			capOf(c.GetRequestsLastMinute(), c.GetRpm()), capOf(c.GetTokensLastMinute(), c.GetTpm()),
			capOf(c.GetTokensLastDay(), c.GetTpd()), c.GetRefused())
	}
	tw.Flush()
	fmt.Fprintln(w, "caps: used in the sliding minute (TPD: day) / the client's cap; REFUSED: since the broker started")
}

// dollars writes an amount in at most about eight characters.
func dollars(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v < 0.01:
		return "<0.01"
	case v < 1000:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return short(int64(v), 10)
}

func budgetOf(used, budget float64) string {
	if budget <= 0 {
		return "-"
	}
	return fmt.Sprintf("%s (%.0f%%)", dollars(budget), 100*used/budget)
}

func capOf(used, limit int64) string {
	if limit == 0 {
		return "-"
	}
	return short(used, 10) + "/" + short(limit, 10)
}

// clip shortens s to n characters, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

// showSpend reports whether sp has anything to show: priced spend, a money
// budget or a cap.
func showSpend(sp *pb.Spend) bool {
	if len(sp.GetCaps()) > 0 || sp.GetAccount().GetMonthUsd() > 0 {
		return true
	}
	budgeted := func(s *pb.Spending) bool { return s.GetBudgetUsdPerDay()+s.GetBudgetUsdPerMonth() > 0 }
	if budgeted(sp.GetAccount()) {
		return true
	}
	for _, c := range sp.GetClients() {
		if budgeted(c.GetSpending()) {
			return true
		}
	}
	return false
}
