package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

// A data directory the broker cannot use must stop it at start with the
// path and the cause, and a disk that fills up while it runs must fail
// grants, not the process. These tests use real processes: permissions are
// real only for an unprivileged user (root ignores them), and a full disk
// is a file size limit (RLIMIT_FSIZE) on the child, under which writes fail
// with EFBIG as they fail with ENOSPC on a full disk. The limit also raises
// SIGXFSZ, whose default action kills; the Go runtime catches it and, with
// no signal.Notify for it, ignores it (runtime/sigtab_linux_generic.go), so
// the broker sees only the error. The tests check that it survives.

// fsizeEnv, when set in the child's environment, is the file size limit in
// bytes that the child sets on itself before main.
const fsizeEnv = "QUOTA_BROKER_TEST_FSIZE"

// limitFileSize applies fsizeEnv to this process, as `ulimit -f` would. Only
// the soft limit is lowered, so the test can raise it again from outside
// (prlimit), as an operator frees space.
func limitFileSize() {
	v := os.Getenv(fsizeEnv)
	if v == "" {
		return
	}
	n, err := strconv.ParseUint(v, 10, 64)
	var lim syscall.Rlimit
	if err == nil {
		err = syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim)
	}
	if err == nil {
		lim.Cur = n
		err = syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s=%s: %v\n", fsizeEnv, v, err)
		os.Exit(3)
	}
}

// unprivileged returns how to run this test binary as a user to whom file
// permissions apply: as root, a copy that user can execute, run as
// nobody (65534); otherwise the binary itself, as the current user.
func unprivileged(t *testing.T) (string, *syscall.SysProcAttr) {
	t.Helper()
	if os.Geteuid() != 0 {
		return os.Args[0], nil
	}
	dir := t.TempDir()
	// t.TempDir's directories are 0700; nobody must reach the copy and the
	// test's data directories, which share the parent.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "quota-broker")
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin, &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
}

// runToFailure runs the broker and returns what it printed; it must exit
// with status 2, the broker's failure.
func runToFailure(t *testing.T, bin string, attr *syscall.SysProcAttr, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(append(os.Environ(), "QUOTA_BROKER_AS_MAIN=1"), env...)
	cmd.SysProcAttr = attr
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("broker: %v, want exit status 2\n%s", err, out)
	}
	if s := string(out); strings.Contains(s, "panic") || strings.Contains(s, "goroutine ") {
		t.Fatalf("broker crashed instead of explaining:\n%s", s)
	}
	return string(out)
}

func TestUnusableDataDirectoryFailsAtStart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	bin, nobody := unprivileged(t)
	ro := t.TempDir()
	roFile := filepath.Join(t.TempDir(), "state.db")
	if err := os.WriteFile(roFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{ro, roFile} {
		if err := os.Chmod(p, map[bool]os.FileMode{true: 0o555, false: 0o444}[p == ro]); err != nil {
			t.Fatal(err)
		}
	}
	full := filepath.Join(t.TempDir(), "state.db")
	empty := filepath.Join(t.TempDir(), "state.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data string
		attr *syscall.SysProcAttr
		env  []string
		want []string
	}{
		{"read-only directory", filepath.Join(ro, "state.db"), nobody, nil,
			[]string{"state file (--data): open store " + filepath.Join(ro, "state.db"), "directory " + ro + " is not writable", "permission denied"}},
		{"read-only file", roFile, nobody, nil,
			[]string{"open store " + roFile + ": the file is not writable", "permission denied"}},
		{"no space for a new file", full, nil, []string{fsizeEnv + "=20000"},
			[]string{"open store " + full + ": out of space", "file too large"}},
		{"a directory", ro, nil, nil,
			[]string{"open store " + ro + ": this is a directory", filepath.Join(ro, "quota-broker.db")}},
		{"an empty file", empty, nil, nil,
			[]string{"state file (--data): store " + empty + " is corrupt: empty (0 bytes)", "backup", "move it aside"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := runToFailure(t, bin, tc.attr, tc.env, "serve", "--listen", "127.0.0.1:0", "--data", tc.data)
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
	// The half-written new file is gone, so the next start is not told
	// its store is corrupt.
	if _, err := os.Stat(full); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the partial store file is left behind: %v", err)
	}
	// The empty file is refused, not made a new store.
	if st, err := os.Stat(empty); err != nil || st.Size() != 0 {
		t.Fatalf("the empty store file was changed: %v", err)
	}
}

// TestOutOfSpaceMidRun fills the disk (the child's file size limit) under a
// running broker: grants fail with UNAVAILABLE "lease could not be
// recorded", reads and settlements go on, and grants resume once space
// returns. A restart then finds the file intact, with every lease it
// granted.
func TestOutOfSpaceMidRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	dir := t.TempDir()
	budgets := filepath.Join(dir, "budgets.json")
	os.WriteFile(budgets, []byte(fmt.Sprintf(`{"budgets":[{"region":"us-east-1","model":%q,"rpm":1000000,"tpm":1000000000}]}`, crashModel)), 0o600)
	data := filepath.Join(dir, "state.db")
	args := []string{"serve", "--listen", "127.0.0.1:0", "--data", data, "--budgets", budgets, "--margin", "1"}
	// Room for the new store and a few hundred leases; the file grows by
	// doubling, so the limit is met at a grant, not at start.
	t.Setenv(fsizeEnv, strconv.Itoa(64<<10))
	p := startBroker(t, args...)
	t.Setenv(fsizeEnv, "")
	c := dial(t, p.addr)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a guard against a hang
	defer cancel()
	// Grants are spread over clients of 5,000 leases each: with capacity
	// escrow a grant drawn from a committed chunk writes nothing, so the
	// file fills only when the chunks and the sweep's checkpoints of
	// leases do, after more grants than one client may hold (10,000).
	client := func(i int) context.Context {
		return metadata.AppendToOutgoingContext(ctx, server.ClientHeader, fmt.Sprintf("fill-%d", i/5_000))
	}
	const last = 1 << 20 // the client of every grant after the fill
	acquire := func() (*pb.AcquireLeaseResponse, error) {
		return c.AcquireLease(client(last), &pb.AcquireLeaseRequest{ModelId: crashModel, InputTokens: 100, MaxOutputTokens: 100})
	}

	var leases []string
	var refusal error
	for i := range 200_000 {
		resp, err := c.AcquireLease(client(i), &pb.AcquireLeaseRequest{ModelId: crashModel, InputTokens: 100, MaxOutputTokens: 100})
		if err != nil {
			refusal = err
			break
		}
		leases = append(leases, resp.GetLease().GetLeaseId())
	}
	if refusal == nil {
		t.Fatalf("%d grants fitted in the file size limit; the test needs a smaller one", len(leases))
	}
	if st := status.Convert(refusal); st.Code() != codes.Unavailable || st.Message() != "lease could not be recorded" {
		t.Fatalf("after %d grants: %v, want UNAVAILABLE \"lease could not be recorded\"", len(leases), refusal)
	}
	t.Logf("the disk filled after %d grants", len(leases))
	if _, err := acquire(); status.Code(err) != codes.Unavailable {
		t.Fatalf("a grant while the disk is full: %v, want UNAVAILABLE", err)
	}

	// Reads are served from memory; a settlement is answered and retried.
	rep, err := c.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatalf("report while the disk is full: %v", err)
	}
	if got := rep.GetBudgets()[0].GetOutstandingLeases(); got != int64(len(leases)) {
		t.Fatalf("report counts %d outstanding leases; %d were granted (failed grants must be undone)", got, len(leases))
	}
	if _, err := c.CompleteLease(client(0), &pb.CompleteLeaseRequest{LeaseId: leases[0], Outcome: pb.Outcome_OUTCOME_SUCCESS,
		Usage: &pb.Usage{InputTokens: 100, OutputTokens: 10}}); err != nil {
		t.Fatalf("completion while the disk is full: %v", err)
	}

	// Space returns: the next grant is recorded.
	inf := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
	if err := unix.Prlimit(p.cmd.Process.Pid, unix.RLIMIT_FSIZE, &inf, nil); err != nil {
		t.Fatal(err)
	}
	resp, err := acquire()
	if err != nil {
		t.Fatalf("a grant once space returned: %v", err)
	}
	leases = append(leases, resp.GetLease().GetLeaseId())
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-p.done; err != nil {
		t.Fatalf("graceful stop: %v\n%s", err, p.output())
	}
	if out := p.output(); !strings.Contains(out, "out of space") || !strings.Contains(out, "quota-broker stopped") {
		t.Fatalf("the log should name the cause, and the broker stop cleanly:\n%s", out)
	}

	// The file survived the failed writes: the restarted broker loads it and
	// holds every granted lease but the completed one.
	again := startBroker(t, args...)
	rep, err = dial(t, again.addr).GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.GetBudgets()[0].GetOutstandingLeases(); got != int64(len(leases)-1) {
		t.Fatalf("after restart %d outstanding leases, want %d", got, len(leases)-1)
	}
	again.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-again.done; err != nil {
		t.Fatalf("graceful stop: %v\n%s", err, again.output())
	}
}
