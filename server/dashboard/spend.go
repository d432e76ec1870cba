package dashboard

import (
	"fmt"

	"github.com/bedrockqb/quotabroker/broker"
)

// spendSource is a Source that also reports spend and the clients' caps
// (*broker.Broker is one); the page then shows them under the summary.
type spendSource interface {
	Spend() broker.SpendReport
}

var _ spendSource = (*broker.Broker)(nil)

// spendRow is one line of the spend table: a client, or the account.
type spendRow struct {
	Client                            string
	Today, ForecastToday, BudgetDay   string
	Month, ForecastMonth, BudgetMonth string
	Refused, Unpriced                 int64
	Over                              bool // at or above 80% of a budget
}

// capRow is one line of the caps table.
type capRow struct {
	Client, On    string
	RPM, TPM, TPD string
	Refused       int64
	Full          bool // a cap at or above 80% of its window
}

// spendRows turns a spend report into the page's tables; nothing without
// prices, money budgets or caps (calls with no price are no spend to show).
func spendRows(sp *broker.SpendReport) (rows []spendRow, caps []capRow) {
	if sp == nil {
		return nil, nil
	}
	show := len(sp.Caps) > 0 || sp.Account.MonthUSD > 0 || !sp.Account.Money.Zero()
	for _, c := range sp.Clients {
		show = show || !c.Money.Zero()
	}
	if !show {
		return nil, nil
	}
	row := func(name string, s broker.Spending) spendRow {
		r := spendRow{Client: name, Today: usd(s.TodayUSD), ForecastToday: usd(s.ForecastTodayUSD), Month: usd(s.MonthUSD),
			ForecastMonth: usd(s.ForecastMonthUSD), BudgetDay: "-", BudgetMonth: "-", Refused: s.Refused, Unpriced: s.Unpriced}
		if b := s.Money.USDPerDay; b > 0 {
			r.BudgetDay = fmt.Sprintf("%s (%.0f%%)", usd(b), 100*s.TodayUSD/b)
			r.Over = r.Over || s.TodayUSD >= 0.8*b
		}
		if b := s.Money.USDPerMonth; b > 0 {
			r.BudgetMonth = fmt.Sprintf("%s (%.0f%%)", usd(b), 100*s.MonthUSD/b)
			r.Over = r.Over || s.MonthUSD >= 0.8*b
		}
		return r
	}
	rows = append(rows, row("(account)", sp.Account))
	for _, c := range sp.Clients {
		rows = append(rows, row(c.Client, c.Spending))
	}
	for _, c := range sp.Caps {
		cr := capRow{Client: c.Client, On: "all models", Refused: c.Refused, RPM: "-", TPM: "-", TPD: "-"}
		switch {
		case c.Route != "":
			cr.On = "route " + c.Route
		case c.Model != "":
			cr.On = c.Model
		}
		for _, l := range []struct {
			out         *string
			used, limit int64
		}{{&cr.RPM, c.Requests, c.Limits.RPM}, {&cr.TPM, c.Tokens, c.Limits.TPM}, {&cr.TPD, c.DayTokens, c.Limits.TPD}} {
			if l.limit > 0 {
				*l.out = fmt.Sprintf("%s/%s", shortNumber(float64(l.used)), shortNumber(float64(l.limit)))
				cr.Full = cr.Full || float64(l.used) >= 0.8*float64(l.limit)
			}
		}
		caps = append(caps, cr)
	}
	return rows, caps
}

func usd(v float64) string {
	if v >= 1000 {
		return "$" + shortNumber(v)
	}
	return fmt.Sprintf("$%.2f", v)
}
