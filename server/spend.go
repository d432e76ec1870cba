package server

import (
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
		pc := &pb.ClientCap{Client: c.Client, Model: c.Model, Rpm: c.Limits.RPM, Tpm: c.Limits.TPM, Tpd: c.Limits.TPD,
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
