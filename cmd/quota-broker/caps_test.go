package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

// TestCapsSurviveKillAndReload runs a broker with a clients file that caps
// client "team" at 1,000 TPM: 50 concurrent callers get exactly five
// leases of 200 tokens; after SIGKILL and a restart on the same file the
// client is still at its cap and another client is not; a clients file
// broken on SIGHUP (an unknown model, a currency other than USD) keeps the
// cap in force, a valid one raises it at once; and a broker started with
// an unknown model in its clients file refuses to start, naming the file.
func TestCapsSurviveKillAndReload(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	dir := t.TempDir()
	budgets := writeBudget(t, dir, `"rpm":100000,"tpm":100000000`)
	clients := filepath.Join(dir, "clients.json")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(clients, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"clients": {"team": {"caps": {"tpm": 1000}}}}`)
	args := []string{"serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "state.db"), "--budgets", budgets,
		"--clients", clients, "--margin", "1", "--drain", "100ms"}
	as := func(client string) context.Context {
		return metadata.AppendToOutgoingContext(context.Background(), server.ClientHeader, client)
	}
	// 100 input + 20 output x burndown 5 = 200 tokens.
	req := &pb.AcquireLeaseRequest{ModelId: crashModel, InputTokens: 100, MaxOutputTokens: 20}

	first := startBroker(t, args...)
	c1 := dial(t, first.addr)
	var mu sync.Mutex
	granted := 0
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			_, err := c1.AcquireLease(as("team"), req)
			mu.Lock()
			defer mu.Unlock()
			switch status.Code(err) {
			case codes.OK:
				granted++
			case codes.ResourceExhausted:
			default:
				t.Errorf("acquire: %v", err)
			}
		})
	}
	wg.Wait()
	if granted != 5 {
		t.Fatalf("50 concurrent callers of a 1,000-TPM client got %d leases of 200 tokens, want 5", granted)
	}
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-first.done

	second := startBroker(t, args...)
	c2 := dial(t, second.addr)
	refusedOnCap := func(when string) {
		t.Helper()
		_, err := c2.AcquireLease(as("team"), req)
		if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), `TPM cap 1000 of client "team"`) {
			t.Fatalf("%s: the capped client got %v, want a refusal on its cap", when, err)
		}
	}
	refusedOnCap("after SIGKILL and a restart")
	if _, err := c2.AcquireLease(as("other"), req); err != nil {
		t.Fatalf("another client after the restart: %v", err)
	}
	for i, broken := range []string{
		`{"clients": {"team": {"caps": {"tpm": 2000, "models": {"anthropic.claude-nonesuch": {"rpm": 1}}}}}}`,
		`{"clients": {"team": {"caps": {"tpm": 2000}, "money": {"currency": "EUR", "per_day": 5}}}}`,
	} {
		write(broken)
		if err := second.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if !second.waitFor(`msg="clients file reload failed; the previous caps and money budgets stay in force"`, i+1, 30*time.Second) {
			t.Fatalf("no reload failure logged for %s\n%s", broken, second.output())
		}
		refusedOnCap("after a broken reload")
	}
	if out := second.output(); !strings.Contains(out, "anthropic.claude-nonesuch") || !strings.Contains(out, `EUR`) {
		t.Errorf("the reload failures do not say what is wrong:\n%s", out)
	}
	write(`{"clients": {"team": {"caps": {"tpm": 2000}}}}`)
	if err := second.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !second.waitFor(`msg="caps and money budgets reloaded`, 1, 30*time.Second) {
		t.Fatalf("no reload logged\n%s", second.output())
	}
	if _, err := c2.AcquireLease(as("team"), req); err != nil {
		t.Fatalf("after raising the cap to 2,000: %v", err)
	}
	second.cmd.Process.Signal(syscall.SIGTERM)
	<-second.done

	write(`{"clients": {"team": {"caps": {"models": {"anthropic.claude-nonesuch": {"rpm": 1}}}}}}`)
	if out := startBrokerExpectingFailure(t, args...); !strings.Contains(out, "clients file "+clients) || !strings.Contains(out, "no budget has model \"anthropic.claude-nonesuch\"") {
		t.Errorf("start-up with an unknown model:\n%s", out)
	}
}

// startBrokerExpectingFailure runs the broker with args and returns its
// output once it has exited with an error; it fails the test if it starts.
func startBrokerExpectingFailure(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), "QUOTA_BROKER_AS_MAIN=1")
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("the broker did not fail to start (%v):\n%s", err, out)
	}
	return string(out)
}
