package main

import (
	"bytes"
	"strings"
	"testing"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// TestPrintSpend: the default view fits 120 columns with long names and
// large amounts, shows each client's spend against its budgets and its caps
// with their use; the wide view adds spend per model.
func TestPrintSpend(t *testing.T) {
	long := strings.Repeat("very-long-client-name-", 4)
	model := "anthropic.claude-sonnet-4-5-20250929-v1:0-with-a-long-suffix"
	key := &pb.BudgetKey{Region: "us-east-1", Scope: pb.Scope_SCOPE_CROSS_REGION, Model: model}
	sp := &pb.Spend{
		Account: &pb.Spending{TodayUsd: 123456.78, ForecastTodayUsd: 999999.99, MonthUsd: 8_000_000, ForecastMonthUsd: 9_999_999,
			BudgetUsdPerDay: 500000, BudgetUsdPerMonth: 10_000_000},
		Clients: []*pb.ClientSpend{
			{Client: "team-a", Spending: &pb.Spending{TodayUsd: 0.8, ForecastTodayUsd: 1.6, MonthUsd: 12.5, BudgetUsdPerDay: 1, Refused: 3},
				Models: []*pb.ModelSpend{{Key: key, Spending: &pb.Spending{TodayUsd: 0.8, Calls: 40}, Priced: true}}},
			{Client: long, Spending: &pb.Spending{TodayUsd: 999.99, BudgetUsdPerDay: 999.99, MonthUsd: 999.99, BudgetUsdPerMonth: 999.99, UnpricedCalls: 123456}},
		},
		Models: []*pb.ModelSpend{{Key: key, Spending: &pb.Spending{TodayUsd: 0.8, MonthUsd: 12.5, Calls: 40}, Priced: true}},
		Caps: []*pb.ClientCap{
			{Client: "team-a", Tpm: 100, TokensLastMinute: 80, Refused: 1470},
			{Client: long, Model: model, Rpm: 1_000_000_000, RequestsLastMinute: 999_999_999, Tpm: 1_000_000_000, Tpd: 1_000_000_000_000},
			{Client: "team-a", Route: "claude-us", Tpm: 40, TokensLastMinute: 39},
		},
	}
	var out bytes.Buffer
	printSpend(&out, sp, false)
	text := out.String()
	for _, line := range strings.Split(text, "\n") {
		if n := len([]rune(line)); n > 120 {
			t.Errorf("line of %d columns:\n%s", n, line)
		}
	}
	for _, want := range []string{"team-a", "0.80", "1.00 (80%)", "80/100", "1470", "all models", "(account)", "route claude-us", "39/40"} {
		if !strings.Contains(text, want) {
			t.Errorf("default view lacks %q:\n%s", want, text)
		}
	}
	out.Reset()
	printSpend(&out, sp, true)
	if !strings.Contains(out.String(), model) || !strings.Contains(out.String(), "PRICED") {
		t.Errorf("wide view lacks the spend per model:\n%s", out.String())
	}
	out.Reset()
	unpriced := &pb.Spend{Account: &pb.Spending{Calls: 9, UnpricedCalls: 9},
		Clients: []*pb.ClientSpend{{Client: "a", Spending: &pb.Spending{Calls: 9, UnpricedCalls: 9}}}}
	printSpend(&out, unpriced, false)
	if out.Len() != 0 {
		t.Errorf("calls with no price, no money budget and no cap printed:\n%s", out.String())
	}
}
