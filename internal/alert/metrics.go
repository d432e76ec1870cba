package alert

import "github.com/prometheus/client_golang/prometheus"

// Collector exposes the alert state as quotabroker_alert_firing{rule,
// region, scope, model}: 1 while the alert fires, 0 while it does not, for
// every (rule, budget) evaluated, read at scrape time.
func (a *Alerter) Collector() prometheus.Collector { return collector{a} }

var firingDesc = prometheus.NewDesc("quotabroker_alert_firing",
	"1 while the alert of the rule on the budget is firing, else 0.", []string{"rule", "region", "scope", "model"}, nil)

var tenantFiringDesc = prometheus.NewDesc("quotabroker_tenant_alert_firing",
	"1 while the alert of the rule on a client (\"(account)\" for the account) is firing; absent otherwise. cap: the cap's model, \"\" for all models, \"money\" for refusals on money.",
	[]string{"rule", "client", "cap"}, nil)

type collector struct{ a *Alerter }

func (collector) Describe(ch chan<- *prometheus.Desc) { ch <- firingDesc; ch <- tenantFiringDesc }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, al := range c.a.Alerts() {
		v := 0.0
		if al.Firing {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(firingDesc, prometheus.GaugeValue, v, string(al.Rule), al.Budget.Region, al.Budget.Scope, al.Budget.Model)
	}
	for _, f := range c.a.TenantFiring() {
		ch <- prometheus.MustNewConstMetric(tenantFiringDesc, prometheus.GaugeValue, 1, string(f.Rule), f.Client, f.Cap)
	}
}
