package policyfile_test

import (
	"strings"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/policyfile"
)

func TestParse(t *testing.T) {
	p, err := policyfile.Parse("c.json", []byte(`{
  "default": {"weight": 1, "max_concurrent": 50, "max_waiters": 100},
  "clients": {"checkout": {"weight": 3, "max_waiters": -1}, "batch-job": {"max_concurrent": 5}, "big": {"max_concurrent": -1}},
  "daily_reserve": {"batch": 0.2},
  "aging": "45s",
  "max_waiters": 20000
}`))
	if err != nil {
		t.Fatal(err)
	}
	if p.Default.MaxConcurrent != 50 || p.Clients["checkout"].Weight != 3 || p.Clients["batch-job"].MaxConcurrent != 5 ||
		p.DailyReserve[broker.PriorityBatch] != 0.2 || p.Aging != 45*time.Second ||
		p.Default.MaxWaiters != 100 || p.Clients["checkout"].MaxWaiters != -1 || p.Clients["big"].MaxConcurrent != -1 ||
		p.MaxWaiters != 20000 {
		t.Fatalf("parsed %+v", p)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ data, want string }{
		{"{\n  \"clients\": {\"a\": {\"weight\": \"x\"}}\n}", "c.json:2: clients.weight: want float64"},
		{`{"clients": {"a": {"weight": 0}}}`, "clients.a.weight: 0 is outside (0, 1000]"},
		{`{"clients": {"a": {"max_concurrent": -2}}}`, "clients.a.max_concurrent: -2 is neither positive nor -1"},
		{`{"clients": {"a": {"max_concurrent": 0}}}`, "clients.a.max_concurrent: 0 is neither positive nor -1"},
		{`{"default": {"max_waiters": 0}}`, "default.max_waiters: 0 is neither positive nor -1"},
		{`{"max_waiters": -1}`, "max_waiters: -1 is not positive"},
		{`{"clients": {"a": {"wieght": 2}}}`, `unknown field "wieght"`},
		{`{"daily_reserve": {"urgent": 0.1}}`, "daily_reserve.urgent: not a priority"},
		{`{"daily_reserve": {"batch": 1}}`, "daily_reserve.batch: 1 is not a share"},
		{`{"aging": "soon"}`, `aging: "soon" is not a positive duration`},
		{"{\n\n,}", "c.json:3: invalid JSON"},
	} {
		if _, err := policyfile.Parse("c.json", []byte(tc.data)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s) = %v, want an error containing %q", tc.data, err, tc.want)
		}
	}
}

func TestParseCaps(t *testing.T) {
	p, err := policyfile.Parse("c.json", []byte(`{
  "clients": {
    "team-a": {"weight": 2, "caps": {"tpm": 100, "tpd": 5000, "models": {"m1": {"rpm": 3}}, "routes": {"claude-us": {"tpm": 40, "tpd": 900}}},
               "money": {"currency": "USD", "per_day": 5.5, "per_month": 100}},
    "team-b": {"money": {"per_month": 10}},
    "plain": {"weight": 1}
  },
  "account": {"money": {"per_day": 50}}
}`))
	if err != nil {
		t.Fatal(err)
	}
	a := p.Caps.Clients["team-a"]
	if a.All != (broker.CapLimits{TPM: 100, TPD: 5000}) || a.Models["m1"] != (broker.CapLimits{RPM: 3}) ||
		len(a.Routes) != 1 || a.Routes["claude-us"] != (broker.CapLimits{TPM: 40, TPD: 900}) ||
		a.Money != (broker.Money{USDPerDay: 5.5, USDPerMonth: 100}) || p.Caps.Clients["team-b"].Money.USDPerMonth != 10 ||
		p.Caps.Account != (broker.Money{USDPerDay: 50}) || p.Clients["team-a"].Weight != 2 {
		t.Fatalf("parsed caps %+v", p.Caps)
	}
	if _, ok := p.Caps.Clients["plain"]; ok {
		t.Error("a client without caps or money has caps")
	}
}

func TestParseCapsErrors(t *testing.T) {
	for _, tc := range []struct{ data, want string }{
		{`{"clients": {"a": {"caps": {"tpm": -1}}}}`, "c.json: clients.a.caps.tpm: -1 is negative"},
		{`{"clients": {"a": {"caps": {"models": {"m": {"rpm": -5}}}}}}`, "c.json: clients.a.caps.models.m.rpm: -5 is negative"},
		{`{"clients": {"a": {"caps": {"routes": {"r": {"tpm": -5}}}}}}`, "c.json: clients.a.caps.routes.r.tpm: -5 is negative"},
		{`{"clients": {"a": {"caps": {"routes": {"r": {"tpd": 2000000000000}}}}}}`, "c.json: clients.a.caps.routes.r.tpd: 2000000000000 is beyond any quota"},
		{`{"clients": {"a": {"caps": {"routes": {"r": {"tokens": 5}}}}}}`, `unknown field "tokens"`},
		{`{"clients": {"a": {"caps": {"tpd": 1e15}}}}`, "clients.caps.tpd: want int64"},
		{`{"clients": {"a": {"caps": {"tpm": 5000000000}}}}`, "clients.a.caps.tpm: 5000000000 is beyond any quota"},
		{`{"clients": {"a": {"caps": {"tpm": 1.5}}}}`, "want int64"},
		{`{"clients": {"a": {"caps": {"tokens": 5}}}}`, `unknown field "tokens"`},
		{`{"clients": {"a": {"money": {"currency": "EUR", "per_day": 5}}}}`, `clients.a.money.currency: "EUR" is not supported`},
		{`{"clients": {"a": {"money": {"per_day": -5}}}}`, "clients.a.money.per_day: -5 is negative"},
		{`{"clients": {"a": {"money": {"per_month": 1e12}}}}`, "is beyond any budget"},
		{`{"clients": {"a": {"money": {}}}}`, "clients.a.money: sets neither per_day nor per_month"},
		{`{"account": {"money": {"currency": "usd", "per_day": 1}}}`, `account.money.currency: "usd" is not supported`},
		{`{"account": {"budget": 5}}`, `unknown field "budget"`},
		{`{"default": {"caps": {"tpm": 5}}}`, "default: caps and money belong to named clients"},
	} {
		if _, err := policyfile.Parse("c.json", []byte(tc.data)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s) = %v, want an error containing %q", tc.data, err, tc.want)
		}
	}
}
