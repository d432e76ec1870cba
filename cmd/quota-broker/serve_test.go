package main

import (
	"context"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

// A Run that fails half way (the state file open, the budgets file
// missing) leaves nothing behind once closed: the state file is released,
// so another process, or this one, opens it again.
func TestMainCloseAfterFailedRun(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := filepath.Join(dir, "s.db")
	m := NewMain(io.Discard, io.Discard)
	if err := m.ParseFlags([]string{"--listen", "127.0.0.1:0", "--data", data, "--budgets", filepath.Join(dir, "missing.json")}); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Fatalf("Run with a missing budgets file: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close after a failed Run: %v", err)
	}
	s, err := bolt.Open(data, bolt.Options{})
	if err != nil {
		t.Fatalf("state file after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// serve --routes checks the routes file against the budgets at start-up:
// a target without a budget stops the broker before it listens, naming
// the file, the line and the field; a good file puts its routes in service.
func TestServeRoutes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	budgets := filepath.Join(dir, "budgets.json")
	write := func(path, s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(budgets, `{"budgets": [
  {"region": "us-east-1", "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "tpm": 100000},
  {"region": "us-west-2", "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "tpm": 100000}]}`)
	routes := filepath.Join(dir, "routes.json")
	for _, tc := range []struct{ name, routes, wantErr string }{
		{"a target without a budget", `{"routes": [{"name": "r", "model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "targets": [
  {"region": "us-east-1", "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0"},
  {"region": "us-east-2", "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0"}]}]}`,
			routes + ":3: routes[0].targets[1]: no budget for cross-region anthropic.claude-sonnet-4-5-20250929-v1:0 in us-east-2"},
		{"derived", `{"routes": [{"name": "r", "model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "geography": "us"}]}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			write(routes, tc.routes)
			m := NewMain(io.Discard, io.Discard)
			if err := m.ParseFlags([]string{"--listen", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "s.db"), "--budgets", budgets, "--routes", routes}); err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			err := m.Run(context.Background())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Run: %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			rs := m.broker.Routes()
			if len(rs) != 1 || len(rs[0].Targets) != 2 || rs[0].Targets[0].Key.Region != "us-east-1" || rs[0].Targets[1].Key.Region != "us-west-2" {
				t.Fatalf("routes in service: %+v", rs)
			}
		})
	}
}

// serve checks the route caps of the clients file against the routes file
// once both are loaded: a cap on a route the routes file lacks stops the
// broker, naming the clients file and the field; a cap on a known route
// is in force.
func TestServeRouteCaps(t *testing.T) {
	t.Parallel()
	budgets := writeFile(t, "budgets.json", `{"budgets": [
  {"region": "us-east-1", "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "tpm": 100000},
  {"region": "us-west-2", "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "tpm": 100000}]}`)
	routes := writeFile(t, "routes.json", `{"routes": [{"name": "claude-us", "model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "geography": "us"}]}`)
	for _, tc := range []struct{ name, clients, wantErr string }{
		{"unknown route", `{"clients": {"team-a": {"caps": {"routes": {"claude-eu": {"tpm": 1000}}}}}}`,
			`clients.team-a.caps.routes.claude-eu: no route "claude-eu"`},
		{"known route", `{"clients": {"team-a": {"caps": {"routes": {"claude-us": {"tpm": 1000}}}}}}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clients := writeFile(t, "clients.json", tc.clients)
			m := NewMain(io.Discard, io.Discard)
			if err := m.ParseFlags([]string{"--listen", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "s.db"),
				"--budgets", budgets, "--routes", routes, "--clients", clients}); err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			err := m.Run(context.Background())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), "clients file "+clients) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Run: %v, want the clients file and %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			caps := m.broker.Spend().Caps
			if len(caps) != 1 || caps[0].Client != "team-a" || caps[0].Route != "claude-us" || caps[0].Model != "" || caps[0].Limits.TPM != 1000 {
				t.Fatalf("caps in force: %+v", caps)
			}
		})
	}
}

// serve --budgets with provisioned_rates sizes each InService Provisioned
// Throughput discovery lists (model units x the rate) and a route may put
// it first; without discovery there are no model units to size from, and
// serve says so rather than serving without it.
func TestServeProvisionedRates(t *testing.T) {
	t.Parallel()
	const haiku = "anthropic.claude-3-haiku-20240307-v1:0"
	sc, err := bedrocksim.LoadScenario("")
	if err != nil {
		t.Fatal(err)
	}
	sc.ProvisionedModelThroughputs = []bedrocksim.ProvisionedThroughput{
		{Name: "support-bot", ModelID: haiku, ModelUnits: 3, Region: "us-east-1", TokensPerMinutePerUnit: 50000}}
	sim, err := bedrocksim.New(bedrocksim.Config{Scenario: sc, DisableLatency: true})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim.Handler())
	defer hs.Close()
	arn := "arn:aws:bedrock:us-east-1:" + sc.AccountID + ":provisioned-model/support-bot"
	budgets := writeFile(t, "budgets.json", `{"provisioned_rates": {"`+haiku+`": 40000}, "budgets": []}`)
	routes := writeFile(t, "routes.json", `{"routes": [{"name": "haiku", "model": "`+haiku+`", "targets": [
  {"region": "us-east-1", "model": "`+arn+`"}, {"region": "us-east-1", "model": "`+haiku+`"}]}]}`)

	m := NewMain(io.Discard, io.Discard)
	if err := m.ParseFlags([]string{"--listen", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "s.db"), "--budgets", budgets, "--routes", routes}); err != nil {
		t.Fatal(err)
	}
	err = m.Run(context.Background())
	m.Close()
	if err == nil || !strings.Contains(err.Error(), budgets+": provisioned_rates size Provisioned Throughputs from the model units discovery reads") {
		t.Fatalf("Run without discovery: %v", err)
	}

	m = NewMain(io.Discard, io.Discard)
	if err := m.ParseFlags([]string{"--listen", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "s.db"), "--budgets", budgets, "--routes", routes,
		"--aws-endpoint", hs.URL, "--refresh", "1h"}); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	var pt *broker.BudgetInfo
	for _, bi := range m.broker.Budgets() {
		if bi.Spec.Key.Model == arn {
			pt = &bi
		}
	}
	if pt == nil || pt.Spec.Key.Scope != broker.ScopeProvisioned || pt.Spec.Quota.TPM != 3*40000 || pt.Spec.Serves != haiku {
		t.Fatalf("the throughput's budget: %+v, want 3 units x 40,000 TPM serving %s", pt, haiku)
	}
	rs := m.broker.Routes()
	if len(rs) != 1 || len(rs[0].Targets) != 2 || rs[0].Targets[0].ModelID != arn {
		t.Fatalf("routes in service: %+v", rs)
	}
}
