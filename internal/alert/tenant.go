package alert

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// Rules on tenants (the clients' caps and money budgets; see broker's
// Caps and money), evaluated when the Source also reports spend.
const (
	// RuleMoneyBudget fires when the spend of a money budget (a client's or
	// the account's, per day or per month) reaches Config.MoneyShare of it,
	// and resolves when a new period starts below it.
	RuleMoneyBudget Rule = "money_budget"
	// RuleCapRefusing fires when a client's cap, or a money budget, starts
	// refusing grants, and resolves after a Window without refusals.
	RuleCapRefusing Rule = "cap_refusing"
)

// SpendSource is a Source that also reports spend, caps and money budgets
// (*broker.Broker is one); the Alerter evaluates the tenant rules on it.
type SpendSource interface {
	Spend() broker.SpendReport
}

// tenantKey names what a tenant alert is about: a client or the account
// ("(account)"), and the cap's model ("" for all models, or for money; a
// cap on a route is "route NAME", which no model id can be).
type tenantKey struct {
	rule          Rule
	client, model string
}

// tenantSeries remembers a cap's refusals: the count at the last sample
// and when it last grew.
type tenantSeries struct {
	refused       int64
	lastRefusedAt time.Time
}

// tenantVerdict is a tenant rule's condition on one key at one sample.
type tenantVerdict struct {
	k tenantKey
	c condition
}

// observeTenants evaluates the tenant rules on one spend report taken at
// now and returns the events they cause, in a stable order. Caller holds
// a.mu.
func (a *Alerter) observeTenants(sp broker.SpendReport, now time.Time) []Event {
	var vs []tenantVerdict
	seen := map[tenantKey]bool{}
	money := func(client string, s broker.Spending) {
		if s.Money.Zero() {
			return
		}
		share, what := 0.0, ""
		for _, p := range []struct {
			used, budget float64
			name         string
		}{{s.TodayUSD, s.Money.USDPerDay, "day"}, {s.MonthUSD, s.Money.USDPerMonth, "month"}} {
			if p.budget > 0 && p.used/p.budget >= share {
				share = p.used / p.budget
				what = fmt.Sprintf("$%.2f of the $%.2f budget per %s", p.used, p.budget, p.name)
			}
		}
		if a.cfg.MoneyShare > 0 {
			k := tenantKey{RuleMoneyBudget, client, ""}
			seen[k] = true
			if a.tenants[k] == nil {
				// Tracked as a cap's key is, so that a budget taken out
				// of the policy while it fires resolves below.
				a.tenants[k] = &tenantSeries{}
			}
			c := condition{value: share, threshold: a.cfg.MoneyShare, since: now,
				fire: share >= a.cfg.MoneyShare, resolve: share < a.cfg.MoneyShare,
				summary: fmt.Sprintf("money spent %s (%s)", pct(share), what)}
			vs = append(vs, tenantVerdict{k, c})
		}
		vs = append(vs, a.refusing(tenantKey{RuleCapRefusing, client, "money"}, s.Refused, now, seen, "its money budget"))
	}
	money(accountLabel, sp.Account)
	for _, c := range sp.Clients {
		money(c.Client, c.Spending)
	}
	for _, cu := range sp.Caps {
		on, model := "all models", cu.Model
		switch {
		case cu.Route != "":
			on = "route " + cu.Route
			model = on
		case cu.Model != "":
			on = cu.Model
		}
		vs = append(vs, a.refusing(tenantKey{RuleCapRefusing, cu.Client, model}, cu.Refused, now, seen, "its caps on "+on))
	}
	for k := range a.tenants {
		if !seen[k] {
			delete(a.tenants, k)
			vs = append(vs, tenantVerdict{k, condition{resolve: true, summary: "no longer configured"}})
		}
	}
	slices.SortStableFunc(vs, func(x, y tenantVerdict) int {
		return cmp.Or(cmp.Compare(x.k.client, y.k.client), cmp.Compare(x.k.rule, y.k.rule), cmp.Compare(x.k.model, y.k.model))
	})
	var events []Event
	for _, v := range vs {
		if e, ok := a.transition(alertKey{rule: v.k.rule, tenant: v.k.client, tenantOn: v.k.model}, v.c, now); ok {
			events = append(events, e)
		}
	}
	return events
}

// refusing is the cap_refusing verdict on a refusal counter: firing when
// it grew since the last sample, resolved a Window after it last grew.
// Caller holds a.mu.
func (a *Alerter) refusing(k tenantKey, refused int64, now time.Time, seen map[tenantKey]bool, what string) tenantVerdict {
	seen[k] = true
	s := a.tenants[k]
	if s == nil {
		// The first sample is the baseline: refusals before the alerter
		// started are not news.
		s = &tenantSeries{refused: refused}
		a.tenants[k] = s
	}
	grew := refused > s.refused
	if grew {
		s.lastRefusedAt = now
	}
	n := refused - s.refused
	s.refused = refused
	c := condition{value: float64(n), threshold: 0, since: now, fire: grew,
		resolve: !grew && (s.lastRefusedAt.IsZero() || now.Sub(s.lastRefusedAt) >= a.cfg.Window)}
	c.summary = fmt.Sprintf("%s refused %d grants since the last evaluation", what, n)
	if !grew {
		c.summary = fmt.Sprintf("%s refused nothing for %v", what, roundSpan(now.Sub(s.lastRefusedAt)))
	}
	return tenantVerdict{k, c}
}

// accountLabel names the account in tenant alerts, as in /metrics.
const accountLabel = "(account)"

// ObserveSpend evaluates the tenant rules on one spend report taken at
// now and returns the events they cause; it does not notify the sinks.
// Evaluate calls it when the Source is a SpendSource.
func (a *Alerter) ObserveSpend(sp broker.SpendReport, now time.Time) []Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.observeTenants(sp, now)
}

// TenantAlert is a tenant rule's alert firing now.
type TenantAlert struct {
	Rule        Rule
	Client, Cap string // as in Event
	Since       time.Time
}

// TenantFiring lists the tenant alerts firing now, by client, rule and cap.
func (a *Alerter) TenantFiring() []TenantAlert {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []TenantAlert
	for k, f := range a.alerts {
		if k.tenant != "" {
			out = append(out, TenantAlert{Rule: k.rule, Client: k.tenant, Cap: k.tenantOn, Since: f.since})
		}
	}
	slices.SortFunc(out, func(x, y TenantAlert) int {
		return cmp.Or(cmp.Compare(x.Client, y.Client), cmp.Compare(x.Rule, y.Rule), cmp.Compare(x.Cap, y.Cap))
	})
	return out
}
