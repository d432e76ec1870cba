package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/freeport"
)

// commands are every subcommand; TestHelpEveryCommand fails when one is
// added to run without a synopsis.
var commands = []string{"serve", "demo", "discover", "report", "probe", "token", "increase", "alarms"}

// TestHelpEveryCommand: -h and --help on every command exit 0 and print
// the command's synopsis (a usage line, what it does, its flags with their
// environment fallbacks) on stdout, nothing on stderr.
func TestHelpEveryCommand(t *testing.T) {
	t.Setenv("QUOTA_BROKER_DATA", filepath.Join(t.TempDir(), "never-opened.db"))
	for _, cmd := range commands {
		for _, h := range []string{"-h", "--help"} {
			var out, errOut strings.Builder
			if err := run(context.Background(), []string{cmd, h}, &out, &errOut); err != nil {
				t.Errorf("%s %s: %v", cmd, h, err)
			}
			help := out.String()
			if !strings.HasPrefix(help, "usage: quota-broker "+cmd) || !strings.Contains(help, "\nflags:\n  -") {
				t.Errorf("%s %s: not a synopsis with flags:\n%s", cmd, h, help)
			}
			// A sentence of what it does between the usage line and the flags.
			if what, _, _ := strings.Cut(help, "\nflags:\n"); len(strings.Split(strings.TrimSpace(what), "\n")) < 3 {
				t.Errorf("%s %s: the synopsis does not say what the command does:\n%s", cmd, h, help)
			}
			if cmd != "token" && !strings.Contains(help, "(env ") {
				t.Errorf("%s %s: no environment fallback named:\n%s", cmd, h, help)
			}
			if errOut.Len() > 0 {
				t.Errorf("%s %s: stderr %q", cmd, h, errOut.String())
			}
		}
	}
	// The top level, and help COMMAND.
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		var out strings.Builder
		if err := run(context.Background(), args, &out, &out); err != nil || !strings.Contains(out.String(), "usage: quota-broker <command>") {
			t.Errorf("%v: %v\n%s", args, err, out.String())
		}
		for _, cmd := range commands {
			if !strings.Contains(out.String(), "\n  "+cmd+" ") {
				t.Errorf("%v does not list %s:\n%s", args, cmd, out.String())
			}
		}
	}
	var out strings.Builder
	if err := run(context.Background(), []string{"help", "report"}, &out, &out); err != nil || !strings.HasPrefix(out.String(), "usage: quota-broker report") {
		t.Errorf("help report: %v\n%s", err, out.String())
	}
	// A flag that does not exist is an error that says how to see them.
	err := run(context.Background(), []string{"report", "--no-such-flag"}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "no-such-flag") || !strings.Contains(err.Error(), `"quota-broker report -h" lists its flags`) {
		t.Errorf("report --no-such-flag: %v", err)
	}
}

// TestHelpExitsZero runs the real binary: the exit status a shell sees.
func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"serve", "--help"}, {"demo", "-h"}, {"report", "--help"}} {
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), "QUOTA_BROKER_AS_MAIN=1")
		out, err := cmd.Output()
		if err != nil || !strings.HasPrefix(string(out), "usage: quota-broker") {
			t.Errorf("%v: %v\n%s", args, err, out)
		}
	}
}

// busyAddr returns a loopback address something listens on until the test
// ends.
func busyAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// freeAddr returns a loopback address nothing listens on (one that was
// free a moment ago).
func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// TestPortInUseNamesTheFlag: an address in use names the flag that moves
// it and that another broker may hold it.
func TestPortInUseNamesTheFlag(t *testing.T) {
	busy := busyAddr(t)
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"serve", "--listen", busy}, "--listen"},
		{[]string{"serve", "--listen", "127.0.0.1:0", "--http", busy}, "--http"},
		{[]string{"demo", "--sim-listen", busy, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"}, "--sim-listen"},
		{[]string{"demo", "--sim-listen", "127.0.0.1:0", "--listen", busy, "--http", "127.0.0.1:0", "--traffic=false"}, "--listen"},
	} {
		args := append(tc.args, "--data", filepath.Join(t.TempDir(), "s.db"))
		err := run(context.Background(), args, &strings.Builder{}, &strings.Builder{})
		if err == nil {
			t.Fatalf("%v: no error", tc.args)
		}
		for _, want := range []string{"listen on " + busy + " (" + tc.flag + ")", "in use", "another quota-broker demo or serve", "pass " + tc.flag + " HOST:PORT"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%v: %v\nwant %q", tc.args, err, want)
			}
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("%v: the cause is lost: %v", tc.args, err)
		}
	}
}

// TestNoBrokerNamesTheFix: the commands that call a broker, with none at
// --addr, say how to get one.
func TestNoBrokerNamesTheFix(t *testing.T) {
	addr := freeAddr(t)
	for _, args := range [][]string{
		{"report", "--timeout", "10s"},
		{"report", "--output", "json"},
		{"increase", "--model", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "--timeout", "10s"},
		{"probe", "--model", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "--confirm", "--bedrock-endpoint", "http://" + addr},
	} {
		err := run(context.Background(), append(args, "--addr", addr), &strings.Builder{}, &strings.Builder{})
		want := "no broker at " + addr + ": start one with `quota-broker demo` or `quota-broker serve`, or pass --addr"
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("%v: %v\nwant %q and the cause", args, err, want)
		}
	}
}

// TestReportUnknownModelAndWidth runs report against a real broker with
// the built-in example budgets: an unknown model is an error naming the
// nearest ids, and the default table fits 120 columns with idle budgets
// counted, not listed.
func TestReportUnknownModelAndWidth(t *testing.T) {
	addr, _ := inProcess(t, "serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "s.db"))
	ctx := context.Background()
	c := dial(t, addr)
	// Traffic on one budget, so that one is busy and the others idle.
	l, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: "us.anthropic.claude-sonnet-4-5-20250929-v1:0", InputTokens: 1000, MaxOutputTokens: 500})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: l.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS,
		Usage: &pb.Usage{InputTokens: 1000, OutputTokens: 100}}); err != nil {
		t.Fatal(err)
	}
	all, err := c.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	nBudgets := len(all.GetBudgets())

	for _, tc := range []struct{ model, want string }{
		{"nosuchmodel", `unknown model "nosuchmodel": no budget of the broker at ` + addr + " has a model id containing it, nor one near it"},
		{"claude-sonet-4-5", `unknown model "claude-sonet-4-5"`},
		{"claude-sonet-4-5", "did you mean anthropic.claude-sonnet-4-5-20250929-v1:0"},
	} {
		var out strings.Builder
		err := run(ctx, []string{"report", "--addr", addr, "--model", tc.model}, &out, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("report --model %s: %v\nwant %q", tc.model, err, tc.want)
		}
		if out.Len() > 0 {
			t.Errorf("report --model %s printed a table: %s", tc.model, out.String())
		}
	}
	if err := run(ctx, []string{"report", "--addr", addr, "--region", "mars-north-1"}, &strings.Builder{}, &strings.Builder{}); err == nil ||
		!strings.Contains(err.Error(), `unknown region "mars-north-1"`) || !strings.Contains(err.Error(), "us-east-1") {
		t.Errorf("report --region mars-north-1: %v", err)
	}

	var narrow, wide strings.Builder
	if err := run(ctx, []string{"report", "--addr", addr}, &narrow, &narrow); err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(narrow.String(), "\n") {
		if len(line) > 120 {
			t.Errorf("line %d is %d columns wide: %q", i+1, len(line), line)
		}
	}
	if !strings.Contains(narrow.String(), "\nanthropic.claude-sonnet-4-5-20250929-v1:0  cross-region") ||
		strings.Count(narrow.String(), "amazon.nova-lite-v1:0") != 0 {
		t.Errorf("the narrow table lists other than the busy budget:\n%s", narrow.String())
	}
	idle := nBudgets - 1
	if want := strconv.Itoa(idle) + " idle budgets (no traffic in the last day) not shown: quota-broker report --wide lists every budget"; !strings.Contains(narrow.String(), want) {
		t.Errorf("no summary of the idle budgets (%q):\n%s", want, narrow.String())
	}
	if err := run(ctx, []string{"report", "--addr", addr, "--wide"}, &wide, &wide); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(wide.String(), "amazon.nova-lite-v1:0") || !strings.Contains(wide.String(), "TPD used/limit") || strings.Contains(wide.String(), "idle budgets") {
		t.Errorf("--wide does not list every budget with every counter:\n%s", wide.String())
	}
	// A --model that matches shows its budgets, idle or not.
	var one strings.Builder
	if err := run(ctx, []string{"report", "--addr", addr, "--model", "nova-lite"}, &one, &one); err != nil || !strings.Contains(one.String(), "amazon.nova-lite-v1:0") {
		t.Errorf("report --model nova-lite: %v\n%s", err, one.String())
	}

	// increase names an unknown model as unknown, not as "no usage".
	err = run(ctx, []string{"increase", "--addr", addr, "--model", "foo"}, &strings.Builder{}, &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), `unknown model "foo": the broker at `+addr+" has no budget us-east-1/on-demand/foo") {
		t.Errorf("increase --model foo: %v", err)
	}
	err = run(ctx, []string{"increase", "--addr", addr, "--model", "us.anthropic.claude-sonet-4-5-20250929-v1:0"}, &strings.Builder{}, &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), "the nearest are us-east-1/cross-region/anthropic.claude-sonnet-4-5-20250929-v1:0") {
		t.Errorf("increase with a typo: %v", err)
	}
}

// TestDemoStopsQuietly runs the demo with its traffic, lets the traffic
// take leases, stops it with SIGINT and checks that the shutdown logs no
// WARN: the traffic stops (and settles) before the broker drains.
func TestDemoStopsQuietly(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the demo as a process")
	}
	p := startBroker(t, "demo", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--sim-listen", "127.0.0.1:0",
		"--data", filepath.Join(t.TempDir(), "s.db"), "--log-level", "debug")
	// Leases taken and settled, and Sonnet 4 (whose real capacity is half
	// its quota) throttled, so that there are waiters at the stop.
	if !p.waitFor("lease settled", 10, time.Minute) {
		t.Fatalf("no traffic in a minute:\n%s", p.output())
	}
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("demo exit: %v\n%s", err, p.output())
		}
	case <-time.After(time.Minute):
		t.Fatalf("demo did not stop within a minute of SIGINT:\n%s", p.output())
	}
	out := p.output()
	_, after, ok := strings.Cut(out, "demo traffic stopped; stopping the broker")
	if !ok || !strings.Contains(after, "quota-broker stopped") {
		t.Fatalf("the traffic did not stop before the broker:\n%s", out)
	}
	if n := strings.Count(after, "level=WARN"); n != 0 {
		t.Errorf("shutdown logged %d WARN lines:\n%s", n, after)
	}
}
