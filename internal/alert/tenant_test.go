package alert

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bedrockqb/quotabroker/broker"
)

// TestTenantRules: a money budget alerts at the configured share and
// resolves when the next day starts below it; a cap alerts when it starts
// refusing (not for refusals before the alerter started) and resolves a
// Window after its last refusal.
func TestTenantRules(t *testing.T) {
	a := newAlerter(t, Config{MoneyShare: 0.8, Window: time.Minute})
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	team := func(today float64, capRefused int64) broker.SpendReport {
		return broker.SpendReport{
			Clients: []broker.ClientSpend{{Client: "team", Spending: broker.Spending{TodayUSD: today, Money: broker.Money{USDPerDay: 10}}}},
			Caps:    []broker.CapUsage{{Client: "team", Limits: broker.CapLimits{TPM: 100}, Refused: capRefused}},
		}
	}
	step := func(sp broker.SpendReport, want ...string) {
		t.Helper()
		now = now.Add(15 * time.Second)
		var got []string
		for _, e := range a.ObserveSpend(sp, now) {
			got = append(got, string(e.Status)+" "+string(e.Rule)+" "+e.Client+"/"+e.Cap)
			if !strings.HasPrefix(e.Summary, "client team: ") || e.Text == "" {
				t.Errorf("event %+v", e)
			}
		}
		if strings.Join(got, ", ") != strings.Join(want, ", ") {
			t.Fatalf("at %v: events %q, want %q", now, got, want)
		}
	}
	step(team(5, 7))   // refusals before start are the baseline
	step(team(7.9, 7)) // below 80%
	step(team(8, 7), "firing money_budget team/")
	step(team(9, 9), "firing cap_refusing team/")
	if f := a.TenantFiring(); len(f) != 2 || f[0].Rule != RuleCapRefusing || f[1].Rule != RuleMoneyBudget || f[0].Client != "team" {
		t.Fatalf("firing tenant alerts %+v", f)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(a.Collector())
	mfs, err := reg.Gather()
	n := 0
	for _, mf := range mfs {
		if mf.GetName() == "quotabroker_tenant_alert_firing" {
			n = len(mf.GetMetric())
		}
	}
	if err != nil || n != 2 {
		t.Fatalf("quotabroker_tenant_alert_firing: %d series, %v", n, err)
	}
	step(team(9, 9)) // still firing, no repeat
	step(team(9, 9))
	step(team(9, 9))
	step(team(9, 9), "resolved cap_refusing team/")   // a minute without refusals
	step(team(0.5, 9), "resolved money_budget team/") // the next day
	step(broker.SpendReport{})                        // no longer configured: nothing was firing
}

// TestRouteCapAlertIsItsOwn: a client's cap on a route alerts apart from
// its cap over all models (both have no model), under "route NAME".
func TestRouteCapAlertIsItsOwn(t *testing.T) {
	a := newAlerter(t, Config{Window: time.Minute})
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	caps := func(all, route int64) broker.SpendReport {
		return broker.SpendReport{Caps: []broker.CapUsage{
			{Client: "team", Limits: broker.CapLimits{TPM: 100}, Refused: all},
			{Client: "team", Route: "claude-us", Limits: broker.CapLimits{TPM: 50}, Refused: route},
		}}
	}
	var got []string
	for _, sp := range []broker.SpendReport{caps(3, 0), caps(3, 2)} {
		now = now.Add(15 * time.Second)
		for _, e := range a.ObserveSpend(sp, now) {
			got = append(got, string(e.Status)+" "+string(e.Rule)+" "+e.Client+"/"+e.Cap+": "+e.Summary)
		}
	}
	if want := "firing cap_refusing team/route claude-us: client team: its caps on route claude-us refused 2 grants since the last evaluation"; strings.Join(got, "; ") != want {
		t.Fatalf("events %q, want %q", got, want)
	}
}

// TestMoneyAlertResolvesWhenBudgetRemoved: a money budget taken out of the
// policy while its alert fires resolves as no longer configured, as a cap
// does, instead of firing on.
func TestMoneyAlertResolvesWhenBudgetRemoved(t *testing.T) {
	a := newAlerter(t, Config{MoneyShare: 0.8, Window: time.Minute})
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	var got []string
	for _, sp := range []broker.SpendReport{
		{Clients: []broker.ClientSpend{{Client: "team", Spending: broker.Spending{TodayUSD: 9, Money: broker.Money{USDPerDay: 10}}}}},
		{},
	} {
		now = now.Add(15 * time.Second)
		for _, e := range a.ObserveSpend(sp, now) {
			got = append(got, string(e.Status)+" "+string(e.Rule)+" "+e.Client)
		}
	}
	if want := "firing money_budget team, resolved money_budget team"; strings.Join(got, ", ") != want {
		t.Fatalf("events %q, want %q", got, want)
	}
	if f := a.TenantFiring(); len(f) != 0 {
		t.Errorf("still firing: %+v", f)
	}
}
