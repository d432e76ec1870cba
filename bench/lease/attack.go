package main

// The -attack modes (issue 16, "what it must show"): an unrelated client's
// AcquireLease over gRPC while a hostile client attacks the same server,
// against the same client's calls on the quiet server in the same round,
// with the empty RPC measured alongside both.
//
// The attacker is this program again, started as a child process
// ("lease attacker -kind ..."), so that its memory and goroutines are not
// counted as the broker's: the resident memory reported is this process's,
// which holds the broker, its store, the server and the unrelated client
// (a single connection). The child stops by itself when its stdin closes
// (the parent closes it at the end of the measurement, or dies) or after
// -hold, whichever comes first; the parent then waits for it, and kills
// it by its PID if it has not exited within 10 s.
//
//	flood     20,000 calls under distinct client names wait on a full
//	          budget, over 20 connections of 1,000 streams (the server's
//	          MaxConcurrentStreams is 1,024); each call waits -flood-wait
//	          (the first waits spread evenly up to it), gets its refusal,
//	          and comes straight back. The wait is long enough (20 s) for
//	          this machine to hold all 20,000 over gRPC: at 2 s, the
//	          server's CPU, not the broker, bounded the waiters to ~4,400.
//	halfopen  100 connections keep 1,000 header-only calls each open (as
//	          bench/halfopen, with no credentials needed: the server names
//	          clients by header, so every stream passes the edge as one
//	          with a valid token would). With -halfopen-refill (the
//	          default) a stream the server ends is replaced at once, so
//	          the attack lasts as long as the measurement; without, the
//	          calls are sent once, as bench/halfopen sends them.
//	history   8 callers ask, back to back, for GetUsageHistory over 400
//	          budgets with 125 minutes of history each: 3 in 4 for the
//	          largest answer allowed (400 x 125 = 50,000 points), 1 in 4
//	          for 10,000 points of every budget (refused as too large).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

const (
	// floodModel is the flooded budget's model: a budget of its own,
	// with one slot, held for the whole run.
	floodModel = "anthropic.claude-3-haiku-20240307-v1:0"
	// historyRegion holds the 400 budgets with history, so that a query
	// for the Region names exactly those (the unrelated client's budget
	// is in us-east-1).
	historyRegion   = "us-west-2"
	historyBudgets  = 400
	historyMinutes  = 125 // 400 x 125 = 50,000 points: the largest answer allowed
	historyCallers  = 8
	floodNames      = broker.DefaultMaxWaiters // exactly the broker's bound
	streamsPerConn  = 1_000                    // within the server's 1,024 per connection
	halfopenConns   = 100
	unrelatedClient = "unrelated"
)

// attackTargets is each attack's target for the unrelated client's p99.
var attackTargets = map[string]time.Duration{"flood": 50 * time.Millisecond, "halfopen": 100 * time.Millisecond, "history": 100 * time.Millisecond}

// attackConfig is how the attacks run.
type attackConfig struct {
	kinds          []string
	d              time.Duration // each measurement's
	rounds         int
	floodWait      time.Duration
	refill         bool // halfopen: replace each stream the server ends
	nosync, metric bool
}

// runAttacks measures each attack of cfg.kinds, cfg.rounds times: the
// unrelated client quiet, then under the attack.
func runAttacks(ctx context.Context, out io.Writer, dir string, cfg attackConfig) error {
	kinds, d, rounds, nosync, metrics := cfg.kinds, cfg.d, cfg.rounds, cfg.nosync, cfg.metric
	for _, k := range kinds {
		if _, ok := attackTargets[k]; !ok {
			return fmt.Errorf("-attack %q: want none, flood, halfopen or history (or a comma-separated list of the last three)", k)
		}
	}
	fmt.Fprintf(out, "unrelated client's AcquireLease over gRPC on loopback under attack, %v per measurement, median of %d rounds, GOMAXPROCS %d, bbolt with fsync %v, metrics %v, load average %s\n",
		d, rounds, runtime.GOMAXPROCS(0), !nosync, metrics, loadavg())
	s, err := serve(ctx, "attack", filepath.Join(dir, "attack.db"), broker.Config{}, nosync, metrics)
	if err != nil {
		return err
	}
	defer s.stop()
	if err := prepareAttacks(ctx, s); err != nil {
		return err
	}
	for _, kind := range kinds {
		var rs []attackRound
		for r := range rounds {
			ar, err := attackRound1(ctx, s, kind, cfg)
			if err != nil {
				return fmt.Errorf("%s, round %d: %w", kind, r+1, err)
			}
			rs = append(rs, ar)
		}
		printAttack(out, kind, rs, cfg)
	}
	fmt.Fprintf(out, "\nload average at the end: %s\n", loadavg())
	return nil
}

// prepareAttacks adds the budgets the attacks need beside the unrelated
// client's: the flooded budget, its one slot taken, and 400 budgets with
// 125 minutes of history each, written to the store as the broker's
// sweeps would have.
func prepareAttacks(ctx context.Context, s *served) error {
	full, err := broker.ParseModelID(floodModel, "", "us-east-1")
	if err != nil {
		return err
	}
	specs := []broker.Spec{{Key: full, Quota: broker.Limits{Concurrency: 1}, Source: "bench"}}
	now := time.Now().Unix() / 60
	var keys []broker.Key
	for i := range historyBudgets {
		k := broker.Key{Region: historyRegion, Scope: broker.ScopeOnDemand, Model: fmt.Sprintf("amazon.bench-%03d-v1:0", i)}
		keys = append(keys, k)
		specs = append(specs, broker.Spec{Key: k, Quota: broker.Limits{TPM: 1_000_000_000}, Source: "bench"})
	}
	// Minute by minute, the order of the store's keys: 0.6 s to commit,
	// against 3-6 s budget by budget.
	var recs []broker.StatsRecord
	for m := range int64(historyMinutes) {
		for _, k := range keys {
			recs = append(recs, broker.StatsRecord{Key: k, Minute: now - historyMinutes + m, Client: "svc",
				Stats: broker.Stats{Granted: 1, Completed: 1, WindowTokens: 1000, WindowRequests: 1}})
		}
	}
	if err := s.b.SetSpecs(ctx, specs); err != nil {
		return err
	}
	if err := s.store.Commit(ctx, broker.Change{Stats: recs}); err != nil {
		return err
	}
	d, err := s.b.Acquire(ctx, broker.AcquireRequest{ModelID: floodModel, MaxOutputTokens: 10, Client: "holder"})
	if err == nil && !d.Granted {
		err = fmt.Errorf("refused on %v", d.Blocked)
	}
	if err != nil {
		return fmt.Errorf("the flooded budget's slot: %w", err)
	}
	return nil
}

// figures are one client's calls over one measurement.
type figures struct {
	rate          float64
	p50, p99, max time.Duration
	failed        int // calls that ended in an error (their latency counts)
	firstErr      error
}

// attackRound is one round of one attack.
type attackRound struct {
	quietEmpty, quietAcquire, empty, acquire figures
	rssBefore, rssPeak                       int64    // this process, bytes
	heapBefore, heapPeak                     uint64   // Go heap in use, bytes
	attacker                                 string   // the child's own account of its calls
	waiters                                  [2]int64 // the flooded budget's, at the start and the end
	refusals                                 float64  // the flooded budget's refusals a second while measured
	liveBefore, live                         uint64   // live heap after a collection, quiet and under the attack
	setup, teardown                          time.Duration
}

func attackRound1(ctx context.Context, s *served, kind string, cfg attackConfig) (attackRound, error) {
	d := cfg.d
	var ar attackRound
	began := time.Now()
	ar.quietEmpty, ar.quietAcquire = unrelated(ctx, s, d)
	debug.FreeOSMemory() // what the quiet broker holds, not what it freed
	ar.rssBefore, ar.heapBefore = rss(), heapInuse()
	liveBefore := liveHeap()
	child, err := startAttacker(kind, s.addr, cfg, 4*d+3*time.Minute) // a bound, far beyond the setup and the measurement
	if err != nil {
		return ar, err
	}
	defer child.kill()
	// Setup, not a measurement: the attack is in force once the child has
	// opened all its calls and, for the flood, the broker holds nearly all
	// of them as waiters.
	if err := child.ready(time.Minute); err != nil {
		return ar, err
	}
	if kind == "flood" {
		if ar.waiters[0], err = awaitWaiters(s, func(n int64) bool { return n >= floodNames*95/100 }, time.Minute); err != nil {
			return ar, err
		}
	}
	ar.setup = time.Since(began) - d
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() { // the peak memory while the attack is measured
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			ar.rssPeak = max(ar.rssPeak, rss())
			ar.heapPeak = max(ar.heapPeak, heapInuse())
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	})
	refused0, t0 := refusals(s), time.Now()
	ar.empty, ar.acquire = unrelated(ctx, s, d)
	ar.refusals = float64(refusals(s)-refused0) / time.Since(t0).Seconds()
	close(stop)
	sampler.Wait()
	ar.liveBefore, ar.live = liveBefore, liveHeap() // what the attack holds, its garbage collected
	if kind == "flood" {
		ar.waiters[1] = waiters(s)
	}
	if ar.attacker, err = child.stop(); err != nil {
		return ar, err
	}
	stopped := time.Now()
	// The next measurement starts on a quiet server: no waiter left on the
	// flooded budget, and the server answering again.
	if kind == "flood" {
		if _, err := awaitWaiters(s, func(n int64) bool { return n == 0 }, time.Minute); err != nil {
			return ar, fmt.Errorf("after the flood: %w", err)
		}
	}
	if err := awaitAnswer(ctx, s, time.Minute); err != nil {
		return ar, fmt.Errorf("after the attack: %w", err)
	}
	ar.teardown = time.Since(stopped)
	return ar, nil
}

// unrelated runs the unrelated client for d, one call at a time,
// alternating the empty RPC and AcquireLease so both see the same load.
// Each call has a 10 s deadline; a failed call counts with its latency.
func unrelated(ctx context.Context, s *served, d time.Duration) (empty, acquire figures) {
	uctx := metadata.AppendToOutgoingContext(ctx, server.ClientHeader, unrelatedClient)
	req := &pb.AcquireLeaseRequest{ModelId: model, InputTokens: 1000, MaxOutputTokens: 500}
	var le, la []time.Duration
	var fe, fa int
	var ee, ea error
	timed := func(call func(context.Context) error) (time.Duration, error) {
		cctx, cancel := context.WithTimeout(uctx, 10*time.Second)
		defer cancel()
		t := time.Now()
		err := call(cctx)
		return time.Since(t), err
	}
	start := time.Now()
	for time.Since(start) < d {
		l, err := timed(func(c context.Context) error { _, err := s.health.Check(c, &healthpb.HealthCheckRequest{}); return err })
		le = append(le, l)
		if err != nil {
			fe++
			ee = cmp(ee, err)
		}
		l, err = timed(func(c context.Context) error { _, err := s.qb.AcquireLease(c, req); return err })
		la = append(la, l)
		if err != nil {
			fa++
			ea = cmp(ea, err)
		}
	}
	el := time.Since(start)
	return summarize(le, el, fe, ee), summarize(la, el, fa, ea)
}

func cmp(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

func summarize(lat []time.Duration, el time.Duration, failed int, err error) figures {
	slices.Sort(lat)
	return figures{rate: float64(len(lat)) / el.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100], max: lat[len(lat)-1],
		failed: failed, firstErr: err}
}

func waiters(s *served) int64 {
	reps, _ := s.b.Report(broker.ReportFilter{Model: floodModel})
	if len(reps) == 0 {
		return 0
	}
	return reps[0].Waiters
}

func refusals(s *served) int64 {
	reps, _ := s.b.Report(broker.ReportFilter{Model: floodModel})
	if len(reps) == 0 {
		return 0
	}
	return reps[0].Counters.Refused
}

// awaitWaiters polls the flooded budget's waiters until ok, for at most
// limit; it returns the last count.
func awaitWaiters(s *served, ok func(int64) bool, limit time.Duration) (int64, error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(limit)
	for {
		n := waiters(s)
		if ok(n) {
			return n, nil
		}
		select {
		case <-t.C:
		case <-deadline:
			return n, fmt.Errorf("the flooded budget still has %d waiters after %v", n, limit)
		}
	}
}

// awaitAnswer calls the empty RPC until it succeeds, for at most limit.
func awaitAnswer(ctx context.Context, s *served, limit time.Duration) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(limit)
	for {
		_, err := s.health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			return nil
		}
		select {
		case <-t.C:
		case <-deadline:
			return fmt.Errorf("the empty RPC still fails after %v: %w", limit, err)
		}
	}
}

func printAttack(out io.Writer, kind string, rs []attackRound, cfg attackConfig) {
	fmt.Fprintln(out)
	switch kind {
	case "flood":
		fmt.Fprintf(out, "flood: %d calls under distinct client names wait on a full budget over %d connections x %d streams, each %v, then straight back\n",
			floodNames, (floodNames+streamsPerConn-1)/streamsPerConn, streamsPerConn, cfg.floodWait)
	case "halfopen":
		how := "sent once and held"
		if cfg.refill {
			how = "each replaced as soon as the server ends it"
		}
		fmt.Fprintf(out, "halfopen: %d connections x %d header-only calls, %s\n", halfopenConns, streamsPerConn, how)
	case "history":
		fmt.Fprintf(out, "history: %d callers of GetUsageHistory back to back over %d budgets x %d minutes of history (3 in 4 the largest answer allowed, 1 in 4 too large)\n",
			historyCallers, historyBudgets, historyMinutes)
	}
	fmt.Fprintf(out, "%-34s %10s %10s %10s %10s %7s\n", "unrelated client's call", "calls/s", "p50", "p99", "max", "failed")
	row := func(name string, get func(attackRound) figures) {
		var f []figures
		for _, r := range rs {
			f = append(f, get(r))
		}
		med := func(v func(figures) float64) float64 {
			x := make([]float64, len(f))
			for i := range f {
				x[i] = v(f[i])
			}
			slices.Sort(x)
			return x[len(x)/2]
		}
		dur := func(v float64) time.Duration { return time.Duration(v).Round(10 * time.Microsecond) }
		failed := 0
		for _, x := range f {
			failed += x.failed
		}
		fmt.Fprintf(out, "%-34s %10.0f %10v %10v %10v %7d\n", name, med(func(x figures) float64 { return x.rate }),
			dur(med(func(x figures) float64 { return float64(x.p50) })), dur(med(func(x figures) float64 { return float64(x.p99) })),
			dur(med(func(x figures) float64 { return float64(x.max) })), failed)
		for _, x := range f {
			if x.firstErr != nil {
				fmt.Fprintf(out, "  first failure: %v\n", x.firstErr)
				break
			}
		}
	}
	row("quiet: empty RPC", func(r attackRound) figures { return r.quietEmpty })
	row("quiet: AcquireLease", func(r attackRound) figures { return r.quietAcquire })
	row(kind+": empty RPC", func(r attackRound) figures { return r.empty })
	row(kind+": AcquireLease", func(r attackRound) figures { return r.acquire })
	var p99s []string
	var worst time.Duration
	failed := 0
	for _, r := range rs {
		p99s = append(p99s, r.acquire.p99.Round(10*time.Microsecond).String())
		worst = max(worst, r.acquire.p99)
		failed += r.acquire.failed + r.empty.failed
	}
	verdict := "met"
	switch {
	case failed > 0: // a refused call is fast, and would flatter the p99
		verdict = fmt.Sprintf("NOT met: %d of the unrelated client's calls failed", failed)
	case worst >= attackTargets[kind]:
		verdict = "NOT met"
	}
	fmt.Fprintf(out, "%s: AcquireLease p99 by round %s; target < %v in every round, every call answered: %s\n", kind, strings.Join(p99s, " "), attackTargets[kind], verdict)
	for i, r := range rs {
		fmt.Fprintf(out, "  round %d: RSS %d MiB before, peak %d MiB (%+d); Go heap in use %d MiB before, peak %d MiB; live heap %.1f MiB before, %.1f MiB under the attack (%+.1f)",
			i+1, r.rssBefore>>20, r.rssPeak>>20, (r.rssPeak-r.rssBefore)>>20, r.heapBefore>>20, r.heapPeak>>20,
			float64(r.liveBefore)/(1<<20), float64(r.live)/(1<<20), (float64(r.live)-float64(r.liveBefore))/(1<<20))
		if kind == "flood" {
			fmt.Fprintf(out, "; waiters %d at the start, %d at the end, %.0f refusals/s", r.waiters[0], r.waiters[1], r.refusals)
		}
		fmt.Fprintf(out, "\n    attack in force after %v; the server answered again %v after the attacker was told to stop; attacker: %s\n",
			r.setup.Round(100*time.Millisecond), r.teardown.Round(100*time.Millisecond), r.attacker)
	}
}

// rss is this process's resident memory in bytes (0 if unknown).
func rss() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// liveHeap is the heap that survives a collection.
func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func heapInuse() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// loadavg is the machine's load average (1, 5 and 15 minutes): other work
// on a shared machine moves every figure.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// child is a running attacker process.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  *bufio.Scanner
	waited bool // Wait has returned
}

func startAttacker(kind, addr string, cfg attackConfig, hold time.Duration) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "attacker", "-kind", kind, "-addr", addr, "-flood-wait", cfg.floodWait.String(),
		"-refill="+strconv.FormatBool(cfg.refill), "-hold", hold.String())
	cmd.Stderr = os.Stderr
	c := &child{cmd: cmd}
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c.lines = bufio.NewScanner(stdout)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return c, nil
}

// ready waits for the child's "ready" line.
func (c *child) ready(limit time.Duration) error {
	got := make(chan bool, 1)
	go func() { got <- c.lines.Scan() && c.lines.Text() == "ready" }()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case ok := <-got:
		if !ok {
			return fmt.Errorf("the attacker (pid %d) ended before it was ready", c.cmd.Process.Pid)
		}
		return nil
	case <-t.C:
		return fmt.Errorf("the attacker (pid %d) not ready after %v", c.cmd.Process.Pid, limit)
	}
}

// stop closes the child's stdin, which ends its attack, and returns the
// last line it printed (its account of its calls); a child that has not
// ended 10 s later is killed by its PID.
func (c *child) stop() (string, error) {
	c.stdin.Close()
	read := make(chan string, 1)
	go func() { // ends at the child's exit, when its stdout closes
		var line string
		for c.lines.Scan() {
			line = c.lines.Text()
		}
		read <- line
	}()
	var line string
	var err error
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case line = <-read:
	case <-t.C:
		c.cmd.Process.Kill()
		line = <-read
		err = fmt.Errorf("attacker (pid %d) did not stop within 10 s; killed", c.cmd.Process.Pid)
	}
	werr := c.cmd.Wait()
	c.waited = true
	if err == nil && werr != nil {
		err = fmt.Errorf("attacker (pid %d): %w", c.cmd.Process.Pid, werr)
	}
	return line, err
}

// kill ends the child by its PID unless it has been waited for already.
func (c *child) kill() {
	if !c.waited {
		c.cmd.Process.Kill()
		c.cmd.Wait()
		c.waited = true
	}
}

// attacker is the child process: "lease attacker -kind K -addr A". It
// attacks until its stdin closes or -hold has passed, printing "ready"
// once the attack is in force and one line about its calls at the end.
func attacker(args []string) error {
	fs := flag.NewFlagSet("lease attacker", flag.ContinueOnError)
	kind := fs.String("kind", "", "flood, halfopen or history")
	addr := fs.String("addr", "", "the broker's address")
	floodWait := fs.Duration("flood-wait", 2*time.Second, "how long each flooding call waits")
	hold := fs.Duration("hold", time.Minute, "the longest the attack lasts")
	refill := fs.Bool("refill", true, "halfopen: replace each call the server ends")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *hold)
	defer cancel()
	go func() { // the parent closes stdin to end the attack
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	ready := func() { fmt.Println("ready") }
	var report string
	var err error
	switch *kind {
	case "flood":
		report, err = flood(ctx, *addr, *floodWait, ready)
	case "halfopen":
		report, err = halfopen(ctx, *addr, *refill, ready)
	case "history":
		report, err = history(ctx, *addr, ready)
	default:
		err = fmt.Errorf("-kind %q: want flood, halfopen or history", *kind)
	}
	if err != nil {
		return err
	}
	fmt.Println(report)
	return nil
}

func dial(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// reason is the ErrorInfo reason of a refusal ("" if none).
func reason(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// flood keeps floodNames calls waiting on the full budget, one per name,
// until ctx ends.
func flood(ctx context.Context, addr string, wait time.Duration, ready func()) (string, error) {
	var conns []pb.QuotaBrokerClient
	for range (floodNames + streamsPerConn - 1) / streamsPerConn {
		cc, err := dial(addr)
		if err != nil {
			return "", err
		}
		defer cc.Close()
		conns = append(conns, pb.NewQuotaBrokerClient(cc))
	}
	var refused, atOnce, pending, granted, other atomic.Int64
	var firstOther atomic.Value
	var wg sync.WaitGroup
	req := &pb.AcquireLeaseRequest{ModelId: floodModel, MaxOutputTokens: 10, Wait: durationpb.New(wait)}
	// The calls arrive over about a second, in batches of 1,000: in one
	// burst, 20,000 goroutines would queue on the broker's lock at the
	// same instant, which measures the burst, not the flood.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := range floodNames {
		if i > 0 && i%streamsPerConn == 0 {
			select {
			case <-tick.C:
			case <-ctx.Done():
			}
		}
		c := conns[i/streamsPerConn]
		nctx := metadata.AppendToOutgoingContext(ctx, server.ClientHeader, fmt.Sprintf("flood-%05d", i))
		// The first waits are spread evenly over (0, wait], so that from
		// the start about floodNames/wait calls a second get their
		// refusal and come back: the queue's pushes and removals go on at
		// a steady rate under every measurement, whatever its length.
		first := &pb.AcquireLeaseRequest{ModelId: floodModel, MaxOutputTokens: 10, Wait: durationpb.New(wait * time.Duration(i+1) / floodNames)}
		wg.Go(func() {
			for r := first; ctx.Err() == nil; r = req {
				cctx, cancel := context.WithTimeout(nctx, wait+30*time.Second)
				_, err := c.AcquireLease(cctx, r)
				cancel()
				st := status.Convert(err)
				switch {
				case err == nil:
					granted.Add(1) // the slot is held throughout: not expected
				case ctx.Err() != nil:
				case st.Code() == codes.ResourceExhausted && reason(st) == pb.Limit_LIMIT_CONCURRENCY.String():
					refused.Add(1)
				case st.Code() == codes.ResourceExhausted && reason(st) != "":
					atOnce.Add(1)
				case st.Code() == codes.ResourceExhausted:
					// The edge's bound on calls whose request has not
					// arrived: a burst of arrivals, retried shortly.
					pending.Add(1)
					select {
					case <-time.After(10 * time.Millisecond):
					case <-ctx.Done():
					}
				default:
					other.Add(1)
					firstOther.CompareAndSwap(nil, err.Error())
				}
			}
		})
	}
	ready()
	wg.Wait()
	r := fmt.Sprintf("%d refusals after the wait (LIMIT_CONCURRENCY), %d refused at once on another limit, %d refused at the edge (too many pending), %d granted, %d other",
		refused.Load(), atOnce.Load(), pending.Load(), granted.Load(), other.Load())
	if s, ok := firstOther.Load().(string); ok {
		r += ", first: " + s
	}
	return r, nil
}

// halfopen keeps halfopenConns connections with streamsPerConn
// header-only calls open on each until ctx ends (see bench/halfopen).
func halfopen(ctx context.Context, addr string, refill bool, ready func()) (string, error) {
	var ended, sent atomic.Int64
	var wg sync.WaitGroup
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	var hs []*headerOnly
	for range halfopenConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return "", err
		}
		conns = append(conns, c)
		h := &headerOnly{fr: http2.NewFramer(c, c), open: map[uint32]bool{}, sent: &sent, refill: refill}
		h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		h.enc = hpack.NewEncoder(&h.buf)
		c.Write([]byte(http2.ClientPreface))
		h.fr.WriteSettings()
		for range streamsPerConn {
			if err := h.call(); err != nil {
				return "", err
			}
		}
		hs = append(hs, h)
	}
	// Read (and refill) only once every connection has sent its calls:
	// the refills of the first connections would otherwise hold up the
	// opening of the others for many seconds.
	for _, h := range hs {
		wg.Go(func() { h.read(&ended) })
	}
	ready()
	<-ctx.Done()
	return fmt.Sprintf("%d header-only calls sent, %d ended by the server with a status", sent.Load(), ended.Load()), nil
}

// headerOnly is one connection of the halfopen attack.
type headerOnly struct {
	mu   sync.Mutex // guards the framer's writes, buf, enc, next and open
	fr   *http2.Framer
	buf  bytes.Buffer
	enc  *hpack.Encoder
	next uint32          // the last stream id used
	open map[uint32]bool // streams sent and not ended
	sent *atomic.Int64
	// refill replaces each call the server ends: the attack stays at
	// full strength however the server ends calls.
	refill bool
}

// end reports whether stream id was open, and ends it.
func (h *headerOnly) end(id uint32) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	was := h.open[id]
	delete(h.open, id)
	return was
}

// call sends the headers of one more call and never its request.
func (h *headerOnly) call() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf.Reset()
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/quotabroker.v1.QuotaBroker/ListBudgets"},
		{":authority", "broker"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		h.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if h.next >= 1<<31-3 {
		return errors.New("stream ids used up")
	}
	h.next += 2
	if h.next == 2 {
		h.next = 1
	}
	h.sent.Add(1)
	h.open[h.next] = true
	return h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.next, BlockFragment: h.buf.Bytes(), EndHeaders: true})
}

// read answers the server's settings and pings and counts (and with
// refill replaces) every call the server ends, until the connection closes.
func (h *headerOnly) read(ended *atomic.Int64) {
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			return
		}
		var again bool
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			again = f.StreamEnded() && h.end(f.StreamID)
		case *http2.RSTStreamFrame: // gRPC may reset a stream it has ended
			again = h.end(f.StreamID)
		case *http2.SettingsFrame:
			if !f.IsAck() {
				h.mu.Lock()
				h.fr.WriteSettingsAck()
				h.mu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				h.mu.Lock()
				h.fr.WritePing(true, f.Data)
				h.mu.Unlock()
			}
		}
		if again {
			ended.Add(1)
			if h.refill && h.call() != nil {
				return
			}
		}
	}
}

// history runs historyCallers callers of GetUsageHistory back to back
// until ctx ends.
func history(ctx context.Context, addr string, ready func()) (string, error) {
	cc, err := dial(addr)
	if err != nil {
		return "", err
	}
	defer cc.Close()
	c := pb.NewQuotaBrokerClient(cc)
	to := time.Now().Truncate(time.Minute)
	ask := func(minutes int) *pb.GetUsageHistoryRequest {
		return &pb.GetUsageHistoryRequest{Region: historyRegion, From: timestamppb.New(to.Add(-time.Duration(minutes) * time.Minute)),
			To: timestamppb.New(to), Step: durationpb.New(time.Minute)}
	}
	big, huge := ask(historyMinutes), ask(10_000)
	var answered, busy, edge, tooLarge, other, biggest atomic.Int64
	var firstOther atomic.Value
	var wg, started sync.WaitGroup
	for i := range historyCallers {
		req := big
		if i%4 == 3 {
			req = huge
		}
		started.Add(1)
		wg.Go(func() {
			first := sync.OnceFunc(started.Done)
			defer first() // also when ctx ended before a first call
			for ctx.Err() == nil {
				resp, err := c.GetUsageHistory(ctx, req)
				switch st := status.Convert(err); {
				case err == nil:
					answered.Add(1)
					for sz := int64(proto.Size(resp)); ; {
						b := biggest.Load()
						if sz <= b || biggest.CompareAndSwap(b, sz) {
							break
						}
					}
				case ctx.Err() != nil:
				case st.Code() == codes.ResourceExhausted && len(st.Details()) == 0:
					edge.Add(1) // the bound on calls whose request has not arrived
				case st.Code() == codes.ResourceExhausted:
					busy.Add(1)
				case st.Code() == codes.InvalidArgument:
					tooLarge.Add(1)
				default:
					other.Add(1)
					firstOther.CompareAndSwap(nil, err.Error())
				}
				first()
			}
		})
	}
	started.Wait() // every caller is past its first call: the load is on
	ready()
	wg.Wait()
	r := fmt.Sprintf("%d answers (the largest %.1f MB encoded), %d refused as busy, %d refused as too large, %d refused at the edge (too many pending), %d other",
		answered.Load(), float64(biggest.Load())/1e6, busy.Load(), tooLarge.Load(), edge.Load(), other.Load())
	if s, ok := firstOther.Load().(string); ok {
		r += ", first: " + s
	}
	return r, nil
}
