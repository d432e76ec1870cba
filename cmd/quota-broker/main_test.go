package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// TestMain lets the tests run this binary as a real child process: the test
// executable re-executes itself with QUOTA_BROKER_AS_MAIN=1.
func TestMain(m *testing.M) {
	if os.Getenv("QUOTA_BROKER_AS_MAIN") == "1" {
		limitFileSize() // datadir_test.go: a full disk, for this process only
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// proc is a quota-broker child process.
type proc struct {
	cmd  *exec.Cmd
	addr string
	out  *strings.Builder
	mu   *sync.Mutex
	done chan error
	// wrote has a value after stderr was written to (waitFor reads it).
	wrote chan struct{}
}

func startBroker(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "QUOTA_BROKER_AS_MAIN=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, out: &strings.Builder{}, mu: &sync.Mutex{}, done: make(chan error, 1), wrote: make(chan struct{}, 1)}
	cmd.Stderr = &lockedWriter{p.mu, p.out, p.wrote}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.done
		}
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.out.WriteString(line + "\n")
			p.mu.Unlock()
			if a, ok := strings.CutPrefix(line, "quota-broker listening on "); ok {
				addr <- strings.Fields(a)[0]
			}
		}
		io.Copy(io.Discard, stdout)
		p.done <- cmd.Wait()
	}()
	select {
	case p.addr = <-addr:
	case err := <-p.done:
		t.Fatalf("broker exited before listening: %v\n%s", err, p.output())
	case <-time.After(30 * time.Second):
		t.Fatalf("broker did not start listening in 30s\n%s", p.output())
	}
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitFor waits until the output holds s at least n times, at most d; it
// reports whether it does.
func (p *proc) waitFor(s string, n int, d time.Duration) bool {
	deadline := time.After(d)
	for strings.Count(p.output(), s) < n {
		select {
		case <-p.wrote:
		case <-deadline:
			return false
		}
	}
	return true
}

type lockedWriter struct {
	mu     *sync.Mutex
	w      io.Writer
	notify chan struct{} // nil, or told of every write without blocking
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.w.Write(b)
	select {
	case l.notify <- struct{}{}:
	default:
	}
	return n, err
}

func dial(t *testing.T, addr string) pb.QuotaBrokerClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewQuotaBrokerClient(conn)
}

const crashModel = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

// hammer sends paced AcquireLease calls from 8 goroutines until stop is
// closed or max calls were made, completing every other grant. It counts
// grants in granted, closes reached (if not nil) once reachAt grants were
// seen, and returns the number of refusals.
func hammer(ctx context.Context, c pb.QuotaBrokerClient, stop <-chan struct{}, max int64, granted *atomic.Int64, reachAt int64, reached chan<- struct{}) (refused int64) {
	var wg sync.WaitGroup
	var calls, ref atomic.Int64
	var once sync.Once
	for range 8 {
		wg.Go(func() {
			tick := time.NewTicker(5 * time.Millisecond) // pacing, so a crash lands mid-budget
			defer tick.Stop()
			for calls.Add(1) <= max {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				resp, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: crashModel, InputTokens: 100, MaxOutputTokens: 100})
				switch status.Code(err) {
				case codes.OK:
					n := granted.Add(1)
					if reached != nil && n >= reachAt {
						once.Do(func() { close(reached) })
					}
					if n%2 == 0 {
						c.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: resp.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS,
							Usage: &pb.Usage{InputTokens: 100, OutputTokens: 20}})
					}
				case codes.ResourceExhausted:
					ref.Add(1)
				default:
					return // the broker died under us
				}
			}
		})
	}
	wg.Wait()
	return ref.Load()
}

// TestCrashRestartKeepsGrantInvariant kills a real broker process with
// SIGKILL mid-load, restarts it on the same bbolt file, and checks that the
// grants of both lives together never exceed the RPM limit within the
// minute: the restarted broker counts the leases granted before the crash.
func TestCrashRestartKeepsGrantInvariant(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	dir := t.TempDir()
	const rpm = 300
	budgets := filepath.Join(dir, "budgets.json")
	os.WriteFile(budgets, []byte(fmt.Sprintf(`{"budgets":[{"region":"us-east-1","model":%q,"rpm":%d,"tpm":100000000}]}`, crashModel, rpm)), 0o600)
	args := []string{"serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "state.db"), "--budgets", budgets, "--margin", "1"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()

	// First life: grant about a third of the minute's requests, then die
	// with calls in flight.
	first := startBroker(t, args...)
	var before atomic.Int64
	stop := make(chan struct{})
	reached := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { hammer(ctx, dial(t, first.addr), stop, 1<<30, &before, rpm/3, reached) })
	select {
	case <-reached:
	case <-first.done:
		t.Fatalf("broker exited early\n%s", first.output())
	case <-ctx.Done():
		t.Fatal("first life granted too little")
	}
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	if err := <-first.done; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("first broker did not die of SIGKILL: %v", err)
	}

	// Second life: hammer until clearly past the limit.
	second := startBroker(t, args...)
	var after atomic.Int64
	refused := hammer(ctx, dial(t, second.addr), make(chan struct{}), 2*rpm, &after, 0, nil)
	elapsed := time.Since(start)
	if elapsed > 55*time.Second {
		t.Skipf("the run took %v, longer than the minute window the check relies on", elapsed)
	}
	total := before.Load() + after.Load()
	t.Logf("granted %d before the crash, %d after, %d refused after; limit %d per minute", before.Load(), after.Load(), refused, rpm)
	if total > rpm {
		t.Fatalf("granted %d in under a minute across a crash; limit is %d", total, rpm)
	}
	if refused == 0 {
		t.Fatal("the second life was never refused: the load did not reach the limit, so the check proves nothing")
	}
	// And the restarted broker knows what the first one granted.
	rep, err := dial(t, second.addr).GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.GetBudgets()[0].GetUsage().GetRequestsLastMinute(); got < total {
		t.Fatalf("report counts %d requests in the minute; clients saw %d grants", got, total)
	}
	second.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-second.done; err != nil {
		t.Fatalf("graceful stop: %v\n%s", err, second.output())
	}
	if !strings.Contains(second.output(), "quota-broker stopped") {
		t.Fatalf("no clean stop:\n%s", second.output())
	}
}

func TestServeErrorsAreActionable(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	os.WriteFile(good, []byte(`{"budgets": [{"model": "amazon.nova-pro-v1:0", "region": "us-east-1", "tpm": 1000}]}`), 0o600)
	bad := filepath.Join(dir, "budgets.json")
	os.WriteFile(bad, []byte("{\"budgets\": [\n  {\"model\": \"amazon.nova-pro-v1:0\", \"region\": \"us-east-1\", \"tpm\": -1}\n]}"), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing budgets file", []string{"serve", "--budgets", filepath.Join(dir, "nope.json")}, "nope.json: no such file"},
		{"malformed budgets file", []string{"serve", "--budgets", bad}, "budgets.json:2: budgets[0].tpm: must not be negative"},
		{"bad margin", []string{"serve", "--margin", "1.5"}, "Margin: 1.5 is outside (0, 1]"},
		{"unknown command", []string{"sreve"}, "unknown command \"sreve\""},
		{"bad listen", []string{"serve", "--listen", "256.0.0.1:1"}, "listen on 256.0.0.1:1"},
		{"missing clients file", []string{"serve", "--clients", filepath.Join(dir, "clients.json")}, "clients file: open"},
		{"missing tokens file", []string{"serve", "--tokens", filepath.Join(dir, "tokens.json")}, "tokens file: open"},
		{"open to the network without tokens", []string{"serve", "--listen", "0.0.0.0:0", "--budgets", good}, "not a loopback address and callers are not authenticated"},
		{"token without client", []string{"token"}, "--client is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(tc.args[:len(tc.args):len(tc.args)], "--data", filepath.Join(t.TempDir(), "s.db"))
			if tc.args[0] != "serve" {
				args = tc.args
			}
			err := run(context.Background(), args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
