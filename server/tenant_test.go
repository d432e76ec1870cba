package server_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

// TestClientsSeeOnlyThemselvesInReports: with authentication, bob's report
// names bob and sums the others as OtherClients; an admin's names everyone.
// Before, bob saw alice's name and usage.
func TestClientsSeeOnlyThemselvesInReports(t *testing.T) {
	clock := fakeClock()
	b := openBroker(t, clock, broker.Config{}, broker.Limits{TPM: 1_000_000})
	path := filepath.Join(t.TempDir(), "tokens.json")
	alice, aliceSum := server.NewToken()
	bob, bobSum := server.NewToken()
	admin, adminSum := server.NewToken()
	writeTokens(t, path, [3]string{"alice", "client", aliceSum}, [3]string{"bob", "client", bobSum}, [3]string{"ops", "admin", adminSum})
	tokens, err := server.LoadTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	c := pb.NewQuotaBrokerClient(serve(t, b, server.Config{Tokens: tokens}))
	for tok, n := range map[string]int{alice: 3, bob: 1} {
		for range n {
			resp, err := c.AcquireLease(as(tok), &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 100, MaxOutputTokens: 10})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.CompleteLease(as(tok), &pb.CompleteLeaseRequest{LeaseId: resp.GetLease().GetLeaseId(),
				Outcome: pb.Outcome_OUTCOME_SUCCESS, Usage: &pb.Usage{InputTokens: 100, OutputTokens: 5}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	clock.Advance(2 * time.Minute)
	b.Sweep(context.Background())
	top := func(tok string) (names []string, granted map[string]int64) {
		t.Helper()
		rep, err := c.GetQuotaReport(as(tok), &pb.GetQuotaReportRequest{})
		if err != nil || len(rep.GetBudgets()) != 1 {
			t.Fatalf("report: %v %v", rep, err)
		}
		granted = map[string]int64{}
		for _, u := range rep.GetBudgets()[0].GetActivity().GetTopClients() {
			names = append(names, u.GetClient())
			granted[u.GetClient()] = u.GetUsage().GetGranted()
		}
		return names, granted
	}
	names, granted := top(bob)
	if !slices.Equal(names, []string{"bob", server.OtherClients}) || granted["bob"] != 1 || granted[server.OtherClients] != 3 {
		t.Errorf("bob sees %v %v, want himself (1) and the others summed (3)", names, granted)
	}
	names, granted = top(admin)
	if !slices.Equal(names, []string{"alice", "bob"}) || granted["alice"] != 3 {
		t.Errorf("the admin sees %v %v, want alice and bob by name", names, granted)
	}
}
