package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

// inProcess runs the command in this process and returns the broker's
// address once it listens, and a function that stops it and returns run's
// error.
func inProcess(t *testing.T, args ...string) (addr string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, args, pw, io.Discard)
		pw.CloseWithError(io.EOF)
		done <- err
	}()
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "quota-broker listening on "); ok {
				found <- strings.Fields(a)[0]
			}
			if u, ok := strings.CutPrefix(sc.Text(), "metrics on "); ok {
				metricsURL.Store(t.Name(), u)
			}
		}
	}()
	stop = sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	select {
	case addr = <-found:
	case err := <-done:
		t.Fatalf("%v exited before listening: %v", args, err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatalf("%v did not listen within 60s", args)
	}
	t.Cleanup(func() { stop() })
	return addr, stop
}

const sonnetProfile = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

// metricsURL holds, per test, the /metrics URL a broker printed.
var metricsURL sync.Map

// TestDiscoveryFromSimulator runs serve against the Bedrock simulator:
// budgets come from its Service Quotas through the real SDK, a quota raised
// in the simulator reaches the running broker, and when the simulator is
// gone the broker keeps its quotas (also across a restart) and says how old
// they are.
func TestDiscoveryFromSimulator(t *testing.T) {
	sim, err := bedrocksim.New(bedrocksim.Config{DisableLatency: true})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim.Handler())
	defer hs.Close()
	data := filepath.Join(t.TempDir(), "state.db")
	args := []string{"serve", "--listen", "127.0.0.1:0", "--data", data, "--aws-endpoint", hs.URL, "--refresh", "1h"}
	addr, stop := inProcess(t, args...)
	c := dial(t, addr)
	ctx := context.Background()

	tpm := func() (int64, *pb.GetQuotaReportResponse) {
		t.Helper()
		rep, err := c.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{Model: "claude-sonnet-4-5"})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range rep.GetBudgets() {
			if b.GetBudget().GetKey().GetScope() == pb.Scope_SCOPE_CROSS_REGION {
				return b.GetBudget().GetQuota().GetTokensPerMinute(), rep
			}
		}
		t.Fatalf("no cross-region Sonnet 4.5 budget in %v", rep)
		return 0, nil
	}
	before, rep := tpm()
	if before != 500_000 || !strings.HasPrefix(rep.GetBudgets()[0].GetBudget().GetSource(), "aws:service-quotas:us-east-1") {
		t.Fatalf("discovered TPM %d from %q, want the scenario's 500000", before, rep.GetBudgets()[0].GetBudget().GetSource())
	}
	if d := rep.GetDiscovery(); d == nil || d.GetLastSuccess() == nil || d.GetLastError() != "" || len(d.GetSkipped()) == 0 {
		t.Fatalf("discovery status %v", d)
	}
	if _, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnetProfile, InputTokens: 100, MaxOutputTokens: 100}); err != nil {
		t.Fatalf("lease on a discovered budget: %v", err)
	}

	// AWS approves a raise: the next refresh brings it in, no restart.
	raised := 2_000_000.0
	if err := sim.SetCapacity("us-east-1", "L-CCB5CBE9", bedrocksim.CapacityChange{SetApplied: &raised}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RefreshQuotas(ctx, &pb.RefreshQuotasRequest{}); err != nil {
		t.Fatal(err)
	}
	if after, _ := tpm(); after != 2_000_000 {
		t.Fatalf("after the raise the budget's TPM quota is %d", after)
	}

	// AWS unreachable: the refresh fails plainly, the quotas stay.
	hs.Close()
	_, err = c.RefreshQuotas(ctx, &pb.RefreshQuotasRequest{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "serving the last known quotas") {
		t.Fatalf("refresh with AWS down: %v", err)
	}
	got, rep := tpm()
	if got != 2_000_000 || rep.GetDiscovery().GetLastError() == "" || rep.GetDiscovery().GetQuotaAge() == nil {
		t.Fatalf("with AWS down: TPM %d, discovery %v", got, rep.GetDiscovery())
	}
	if err := stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}

	// A restart with AWS still down serves the stored quotas.
	addr, _ = inProcess(t, args...)
	if got, _ := func() (int64, *pb.GetQuotaReportResponse) { c = dial(t, addr); return tpm() }(); got != 2_000_000 {
		t.Fatalf("after a restart without AWS: TPM %d", got)
	}
}

func TestDemoServesSimulatedAccount(t *testing.T) {
	addr, stop := inProcess(t, "demo", "--listen", "127.0.0.1:0", "--sim-listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "warn")
	c := dial(t, addr)
	ctx := context.Background()
	budgets, err := c.ListBudgets(ctx, &pb.ListBudgetsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(budgets.GetBudgets()); n < 20 {
		t.Fatalf("demo discovered %d budgets from the simulator", n)
	}
	resp, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnetProfile, InputTokens: 1200, MaxOutputTokens: 1024})
	if err != nil || resp.GetLease().GetReservedTokens() != 1200+5*1024 {
		t.Fatalf("demo lease: %v %v", resp, err)
	}
	u, _ := metricsURL.Load(t.Name())
	mr, err := http.Get(u.(string))
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	body, _ := io.ReadAll(mr.Body)
	mr.Body.Close()
	if !strings.Contains(string(body), `quotabroker_budget_events_total{event="granted",model="anthropic.claude-sonnet-4-5-20250929-v1:0",region="us-east-1",scope="cross-region"} 1`) {
		t.Fatalf("demo /metrics does not count the lease:\n%.3000s", body)
	}
	if err := stop(); err != nil {
		t.Fatalf("demo stop: %v", err)
	}
}

func TestReportCommand(t *testing.T) {
	dir := t.TempDir()
	addr, _ := inProcess(t, "serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "s.db"))
	c := dial(t, addr)
	if _, err := c.AcquireLease(context.Background(), &pb.AcquireLeaseRequest{ModelId: sonnetProfile, InputTokens: 1200, MaxOutputTokens: 1024}); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := run(context.Background(), []string{"report", "--addr", addr, "--model", "sonnet-4-5"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "anthropic.claude-sonnet-4-5-20250929-v1:0") || !strings.Contains(out.String(), "6320/1800000") {
		t.Fatalf("table:\n%s", out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"report", "--addr", addr, "--output", "json"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	// protojson's spacing is deliberately unstable: compare values.
	var rep pb.GetQuotaReportResponse
	if err := protojson.Unmarshal([]byte(out.String()), &rep); err != nil {
		t.Fatalf("json output does not parse: %v", err)
	}
	var found bool
	for _, b := range rep.GetBudgets() {
		if b.GetBudget().GetKey().GetScope() == pb.Scope_SCOPE_CROSS_REGION && strings.Contains(b.GetBudget().GetKey().GetModel(), "sonnet-4-5") {
			found = b.GetUsage().GetTokensLastMinute() == 6320
		}
	}
	if !found || !strings.Contains(out.String(), `"SCOPE_CROSS_REGION"`) {
		t.Fatalf("json:\n%.2000s", out.String())
	}
	if err := run(context.Background(), []string{"report", "--addr", "127.0.0.1:1", "--timeout", "2s"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("report against nothing: %v", err)
	}
}
