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
