// Command soak runs a broker under steady load for minutes and checks that
// nothing accumulates and nothing is lost.
//
// One process: the broker on a real bbolt file (fsync on), its gRPC server
// on 127.0.0.1, and -clients concurrent callers, each looping
//
//	AcquireLease -> simulated Bedrock call -> CompleteLease
//
// with some calls longer than the lease TTL (renewed with RenewLease on the
// way), some leases deliberately abandoned (never completed: they expire),
// some calls ending in an error (usage still charged), and a
// ReportThrottle every -throttle-every, so the adaptive ceiling keeps
// cutting and recovering. Every -sample it records the live heap (after a
// GC), goroutines, outstanding leases, waiters, grants/s and the p50/p99
// AcquireLease latency of the interval.
//
// At the end the callers stop (finishing the lease in hand), the abandoned
// leases expire, and it checks:
//
//   - no lost settlement: the broker's counters equal what the callers saw
//     (grants, completions, tokens reserved and settled, expiries), nothing
//     is outstanding, and after closing and reopening the bbolt file the
//     day's tokens equal the settled tokens plus the abandoned leases'
//     reservations (what the store holds is what the callers were told);
//   - stability: over the steady state (after -retention plus 30 s, when
//     ended leases start to be forgotten as fast as they end), the average
//     live heap and goroutine count of its second half are within
//     -heap-tolerance and -goroutine-tolerance of its first half. Judged
//     only when the steady state lasts as long as the warm-up: 5 minutes
//     with the default 2-minute retention.
//
// It prints a table and exits non-zero if a check fails.
//
//	go run ./bench/soak -duration 5m -clients 300
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/sysclock"
	"github.com/bedrockqb/quotabroker/server"
)

const model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

func main() {
	err := run(os.Args[1:], os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

type config struct {
	duration, sample, callTime, leaseTTL, retention, throttleEvery time.Duration
	clients, conns                                                 int
	abandon, long, callErr                                         float64
	heapTol, goroutineTol                                          float64
	leak                                                           int // bytes kept per grant: shows the heap check fails
}

// leaked holds what -leak keeps.
var leaked struct {
	sync.Mutex
	b [][]byte
}

func parse(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.DurationVar(&c.duration, "duration", 5*time.Minute, "how long the load runs")
	fs.IntVar(&c.clients, "clients", 300, "concurrent callers")
	fs.IntVar(&c.conns, "conns", 0, "gRPC connections the callers share; 0: one per 10 callers")
	fs.DurationVar(&c.sample, "sample", 10*time.Second, "sampling interval")
	fs.DurationVar(&c.callTime, "call", 100*time.Millisecond, "mean simulated Bedrock call time (uniform over 0..2x)")
	fs.DurationVar(&c.leaseTTL, "lease-ttl", 3*time.Second, "the broker's lease TTL: abandoned leases expire after it, long calls renew within it")
	fs.DurationVar(&c.retention, "retention", 2*time.Minute, "how long the broker remembers ended leases (its minimum is 2m)")
	fs.DurationVar(&c.throttleEvery, "throttle-every", 20*time.Second, "interval of ReportThrottle calls; 0: none")
	fs.Float64Var(&c.abandon, "abandon", 0.005, "share of leases abandoned (never completed)")
	fs.Float64Var(&c.long, "long", 0.01, "share of calls longer than the lease TTL, renewed on the way")
	fs.Float64Var(&c.callErr, "error", 0.02, "share of calls that end in an error (usage charged)")
	fs.Float64Var(&c.heapTol, "heap-tolerance", 0.20, "allowed growth of the average live heap, second half of the steady state vs the first")
	fs.Float64Var(&c.goroutineTol, "goroutine-tolerance", 0.15, "allowed growth of the average goroutine count, same halves")
	fs.IntVar(&c.leak, "leak", 0, "keep this many bytes per grant, a deliberate leak: the heap check must then fail")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.clients < 1:
		return c, fmt.Errorf("-clients %d: at least 1", c.clients)
	case c.duration < c.sample || c.sample < 100*time.Millisecond:
		return c, fmt.Errorf("-duration %v, -sample %v: want sample >= 100ms and duration >= sample", c.duration, c.sample)
	case c.abandon < 0 || c.long < 0 || c.callErr < 0 || c.abandon+c.long+c.callErr > 1:
		return c, errors.New("-abandon, -long, -error: shares must be >= 0 and sum to at most 1")
	}
	if c.conns <= 0 {
		c.conns = max(1, c.clients/10)
	}
	return c, nil
}

// tally is what the callers saw; the broker's counters must match it.
type tally struct {
	granted, reserved                 atomic.Int64
	completed, settled                atomic.Int64 // CompleteLease answered OK, and its charged_tokens
	abandoned, abandonedReserved      atomic.Int64
	renewed, throttleReports, refused atomic.Int64
	// Calls whose outcome the caller cannot know (an error other than a
	// refusal): the checks allow for them.
	acquireLost, completeLost, renewFailed atomic.Int64
	firstErr                               atomic.Value
}

func (t *tally) fail(err error) { t.firstErr.CompareAndSwap(nil, err) }

// latencies collects AcquireLease latencies of the current interval.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) take() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.d
	l.d = make([]time.Duration, 0, len(d))
	return d
}

type sample struct {
	at                   time.Duration // since the start
	granted              int64         // grants so far
	heap                 uint64        // live heap after a GC
	goroutines           int
	outstanding, waiters int64
	grantsPerSec         float64
	p50, p99             time.Duration
}

func run(args []string, out io.Writer) error {
	cfg, err := parse(args)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "soak")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "state.db")
	store, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		return err
	}
	ctx := context.Background()
	bcfg := broker.Config{Margin: 1, LeaseTTL: cfg.leaseTTL, Retention: cfg.retention}
	b, err := broker.Open(ctx, store, sysclock.Clock{}, bcfg)
	if err != nil {
		store.Close()
		return err
	}
	key, _ := broker.ParseModelID(model, "", "us-east-1")
	// Static limits far above the load: refusals and waits come only from
	// the adaptive ceiling the throttle reports engage.
	if err := b.SetSpecs(ctx, []broker.Spec{{Key: key, Quota: broker.Limits{RPM: 1 << 40, TPM: 1 << 50}, Source: "soak"}}); err != nil {
		b.Close()
		store.Close()
		return err
	}
	srv := server.New(b, server.Config{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Close()
		store.Close()
		return err
	}
	runCtx, stopRun := context.WithCancel(ctx)
	var bg sync.WaitGroup
	bg.Go(func() { srv.Serve(lis) })
	bg.Go(func() { b.Run(runCtx) })
	// stopBroker shuts down in serve's order; safe to call twice.
	stopBroker := sync.OnceValue(func() error {
		srv.Drain()
		b.Close()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		srv.Shutdown(sctx)
		cancel()
		stopRun()
		bg.Wait()
		b.Sweep(ctx)
		return store.Close()
	})
	defer stopBroker()

	conns := make([]*grpc.ClientConn, cfg.conns)
	for i := range conns {
		if conns[i], err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			return err
		}
		defer conns[i].Close()
	}
	qb := func(i int) pb.QuotaBrokerClient { return pb.NewQuotaBrokerClient(conns[i%len(conns)]) }
	report := func() (*pb.BudgetReport, error) {
		rep, err := qb(0).GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
		if err != nil {
			return nil, err
		}
		if len(rep.GetBudgets()) != 1 {
			return nil, fmt.Errorf("report has %d budgets", len(rep.GetBudgets()))
		}
		return rep.GetBudgets()[0], nil
	}

	fmt.Fprintf(out, "soak: %d callers on %d connections for %v, GOMAXPROCS %d, bbolt with fsync, lease TTL %v, retention %v\n",
		cfg.clients, cfg.conns, cfg.duration, runtime.GOMAXPROCS(0), cfg.leaseTTL, cfg.retention)
	fmt.Fprintf(out, "per call: mean %v; %.1f%% abandoned, %.1f%% renewed (longer than the TTL), %.1f%% errors; ReportThrottle every %v\n\n",
		cfg.callTime, 100*cfg.abandon, 100*cfg.long, 100*cfg.callErr, cfg.throttleEvery)

	var t tally
	var lat latencies
	stop := make(chan struct{})
	var callers sync.WaitGroup
	for i := range cfg.clients {
		callers.Go(func() { caller(cfg, i, qb(i), &t, &lat, stop) })
	}
	if cfg.throttleEvery > 0 {
		callers.Go(func() {
			tick := time.NewTicker(cfg.throttleEvery)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if _, err := qb(0).ReportThrottle(ctx, &pb.ReportThrottleRequest{ModelId: model, Message: "soak"}); err != nil {
					t.fail(fmt.Errorf("ReportThrottle: %w", err))
					continue
				}
				t.throttleReports.Add(1)
			}
		})
	}

	// Sampling: the main goroutine, until the duration is over.
	fmt.Fprintf(out, "%8s %10s %10s %11s %8s %9s %9s %9s\n", "t", "live heap", "goroutines", "outstanding", "waiters", "grants/s", "p50", "p99")
	var samples []sample
	start := time.Now()
	lastGranted, lastAt := int64(0), start
	tick := time.NewTicker(cfg.sample)
	for now := range tick.C {
		granted := t.granted.Load()
		d := lat.take()
		slices.Sort(d)
		s := sample{at: now.Sub(start), granted: granted, goroutines: runtime.NumGoroutine(), grantsPerSec: float64(granted-lastGranted) / now.Sub(lastAt).Seconds()}
		lastGranted, lastAt = granted, now
		if len(d) > 0 {
			s.p50, s.p99 = d[len(d)/2], d[len(d)*99/100]
		}
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		s.heap = m.HeapAlloc
		r, err := report()
		if err != nil {
			t.fail(fmt.Errorf("GetQuotaReport: %w", err))
		} else {
			s.outstanding, s.waiters = r.GetOutstandingLeases(), r.GetWaiters()
		}
		samples = append(samples, s)
		fmt.Fprintf(out, "%8v %8.1fMi %10d %11d %8d %9.0f %9v %9v\n", s.at.Round(time.Second), float64(s.heap)/(1<<20), s.goroutines,
			s.outstanding, s.waiters, s.grantsPerSec, s.p50.Round(10*time.Microsecond), s.p99.Round(10*time.Microsecond))
		if now.Sub(start) >= cfg.duration-cfg.sample/2 {
			break
		}
	}
	tick.Stop()
	close(stop)
	callers.Wait()

	// The abandoned leases expire within the TTL and a sweep.
	var final *pb.BudgetReport
	for deadline := time.Now().Add(cfg.leaseTTL + 10*time.Second); ; time.Sleep(200 * time.Millisecond) {
		if final, err = report(); err != nil {
			return err
		}
		if final.GetOutstandingLeases() == 0 || time.Now().After(deadline) {
			break
		}
	}
	if err := stopBroker(); err != nil {
		return fmt.Errorf("close the store: %w", err)
	}
	dayTokens, err := reopenedDayTokens(ctx, path, bcfg, key)
	if err != nil {
		return err
	}
	return verdict(out, cfg, samples, &t, final, dayTokens)
}

// caller is one client's loop until stop is closed: it finishes the lease
// in hand, so that only the abandoned ones are left.
func caller(cfg config, i int, c pb.QuotaBrokerClient, t *tally, lat *latencies, stop <-chan struct{}) {
	ctx := metadata.AppendToOutgoingContext(context.Background(), server.ClientHeader, fmt.Sprintf("soak-%d", i%10))
	rng := rand.New(rand.NewPCG(uint64(i), 7))
	sleep := func(d time.Duration) bool {
		select {
		case <-stop:
			return false
		case <-time.After(d):
			return true
		}
	}
	for {
		select {
		case <-stop:
			return
		default:
		}
		in, maxOut := int64(500+rng.IntN(3000)), int64(200+rng.IntN(800))
		begin := time.Now()
		resp, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: model, InputTokens: in, MaxOutputTokens: maxOut,
			Wait: durationpb.New(10 * time.Second)})
		lat.add(time.Since(begin))
		switch status.Code(err) {
		case codes.OK:
		case codes.ResourceExhausted:
			t.refused.Add(1)
			sleep(100 * time.Millisecond)
			continue
		default:
			t.acquireLost.Add(1)
			t.fail(fmt.Errorf("AcquireLease: %w", err))
			sleep(100 * time.Millisecond)
			continue
		}
		l := resp.GetLease()
		t.granted.Add(1)
		t.reserved.Add(l.GetReservedTokens())
		if cfg.leak > 0 {
			leaked.Lock()
			leaked.b = append(leaked.b, make([]byte, cfg.leak))
			leaked.Unlock()
		}
		p := rng.Float64()
		if p < cfg.abandon {
			t.abandoned.Add(1)
			t.abandonedReserved.Add(l.GetReservedTokens())
			continue
		}
		call := time.Duration(rng.Int64N(int64(2*cfg.callTime) + 1))
		if p < cfg.abandon+cfg.long {
			// Longer than the TTL: renew at half of it, as a long stream would.
			call = cfg.leaseTTL + cfg.leaseTTL/2
			for done := time.Duration(0); done < call; done += cfg.leaseTTL / 2 {
				sleep(cfg.leaseTTL / 2)
				if _, err := c.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: l.GetLeaseId(), Extend: durationpb.New(cfg.leaseTTL)}); err != nil {
					t.renewFailed.Add(1)
					t.fail(fmt.Errorf("RenewLease: %w", err))
				} else {
					t.renewed.Add(1)
				}
			}
		} else {
			sleep(call) // cut short at the end; the lease is still completed
		}
		outcome := pb.Outcome_OUTCOME_SUCCESS
		if p >= 1-cfg.callErr {
			outcome = pb.Outcome_OUTCOME_ERROR
		}
		cr, err := c.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: l.GetLeaseId(), Outcome: outcome,
			Usage: &pb.Usage{InputTokens: in, OutputTokens: rng.Int64N(maxOut + 1)}})
		switch {
		case err != nil:
			t.completeLost.Add(1)
			t.fail(fmt.Errorf("CompleteLease: %w", err))
		case cr.GetAlreadyCompleted():
			t.fail(fmt.Errorf("CompleteLease %s: already completed on the first call", l.GetLeaseId()))
		default:
			t.completed.Add(1)
			t.settled.Add(cr.GetChargedTokens())
		}
	}
}

// reopenedDayTokens opens the closed store again and returns the day's
// tokens of key as the restored broker counts them.
func reopenedDayTokens(ctx context.Context, path string, cfg broker.Config, key broker.Key) (int64, error) {
	store, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		return 0, fmt.Errorf("reopen: %w", err)
	}
	defer store.Close()
	b, err := broker.Open(ctx, store, sysclock.Clock{}, cfg)
	if err != nil {
		return 0, fmt.Errorf("reopen: %w", err)
	}
	defer b.Close()
	reps, _ := b.Report(broker.ReportFilter{})
	for _, r := range reps {
		if r.Spec.Key == key {
			if r.Outstanding != 0 {
				return 0, fmt.Errorf("reopened store has %d outstanding leases, want 0", r.Outstanding)
			}
			return r.Usage.TokensLastDay, nil
		}
	}
	return 0, errors.New("reopened store lacks the budget")
}

func verdict(out io.Writer, cfg config, samples []sample, t *tally, final *pb.BudgetReport, dayTokens int64) error {
	med := func(f func(sample) float64) float64 {
		v := make([]float64, 0, len(samples))
		for _, s := range samples {
			v = append(v, f(s))
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	mean := func(ss []sample, f func(sample) float64) float64 {
		var sum float64
		for _, s := range ss {
			sum += f(s)
		}
		return sum / float64(len(ss))
	}
	heapMiB := func(s sample) float64 { return float64(s.heap) / (1 << 20) }
	gor := func(s sample) float64 { return float64(s.goroutines) }
	ms := func(d float64) string { return time.Duration(d).Round(10 * time.Microsecond).String() }

	fmt.Fprintf(out, "\nsummary over %d samples (medians)\n", len(samples))
	fmt.Fprintf(out, "  grants/s %.0f, AcquireLease p50 %s, p99 %s\n", med(func(s sample) float64 { return s.grantsPerSec }),
		ms(med(func(s sample) float64 { return float64(s.p50) })), ms(med(func(s sample) float64 { return float64(s.p99) })))
	fmt.Fprintf(out, "  callers saw: %d granted, %d completed, %d abandoned, %d renewals, %d refused, %d throttle reports\n",
		t.granted.Load(), t.completed.Load(), t.abandoned.Load(), t.renewed.Load(), t.refused.Load(), t.throttleReports.Load())

	var failed []string
	check := func(ok bool, format string, a ...any) {
		line := fmt.Sprintf(format, a...)
		mark := "ok  "
		if !ok {
			mark = "FAIL"
			failed = append(failed, line)
		}
		fmt.Fprintf(out, "  %s %s\n", mark, line)
	}
	fmt.Fprintln(out, "\nchecks")
	if err, ok := t.firstErr.Load().(error); ok {
		check(false, "calls: first unexpected error: %v (acquire %d, complete %d, renew %d failed)", err, t.acquireLost.Load(), t.completeLost.Load(), t.renewFailed.Load())
	} else {
		check(true, "calls: no unexpected errors")
	}
	c := final.GetCounters()
	// An Acquire or Complete that failed may or may not have taken effect:
	// the counters must fall between what was seen and that plus the
	// failures. Without failures the ranges are exact.
	within := func(got, seen, unknown int64) bool { return got >= seen && got <= seen+unknown }
	check(within(c.GetGranted(), t.granted.Load(), t.acquireLost.Load()), "granted: broker %d, callers %d", c.GetGranted(), t.granted.Load())
	check(within(c.GetCompleted(), t.completed.Load(), t.completeLost.Load()), "completed: broker %d, callers %d", c.GetCompleted(), t.completed.Load())
	check(t.completeLost.Load() > 0 || c.GetSettledTokens() == t.settled.Load(), "settled tokens: broker %d, callers %d", c.GetSettledTokens(), t.settled.Load())
	check(t.acquireLost.Load() > 0 || c.GetReservedTokens() == t.reserved.Load(), "reserved tokens: broker %d, callers %d", c.GetReservedTokens(), t.reserved.Load())
	check(c.GetExpired() == t.abandoned.Load(), "expired: broker %d, abandoned by callers %d", c.GetExpired(), t.abandoned.Load())
	check(final.GetOutstandingLeases() == 0, "outstanding leases at the end: %d", final.GetOutstandingLeases())
	wantDay := t.settled.Load() + t.abandonedReserved.Load()
	check(t.completeLost.Load() > 0 || dayTokens == wantDay, "on disk: day tokens after reopening %d, settled + abandoned reservations %d", dayTokens, wantDay)

	// Stability: the steady state starts once ended leases are forgotten
	// as fast as they end (retention), plus 30 s for the adaptive ceiling's
	// recovery and the sweep to settle.
	//
	// Comparing halves finds growth that goes on; a leak that began at the
	// start shows as the ratio of the halves' midpoints, (W + 3S/4) / (W +
	// S/4) for a warm-up W and a steady state S, so the steady state must
	// last at least as long as the warm-up for the limits to mean anything
	// (then a leak that is the whole heap shows as +40%).
	warmup := cfg.retention + 30*time.Second
	steady := slices.DeleteFunc(slices.Clone(samples), func(s sample) bool { return s.at < warmup })
	if len(steady) < 4 || steady[len(steady)-1].at-warmup < warmup-cfg.sample {
		fmt.Fprintf(out, "  --   stability not judged: the steady state (after the retention %v + 30 s) needs to last as long as that warm-up and hold 4 samples\n", cfg.retention)
	} else {
		first, second := steady[:len(steady)/2], steady[len(steady)/2:]
		h1, h2 := mean(first, heapMiB), mean(second, heapMiB)
		g1, g2 := mean(first, gor), mean(second, gor)
		// Most of the live heap is the ended leases the broker remembers
		// for the retention, which follows the grant rate; the rate moves by
		// tens of percent on a shared machine. So the heap may also grow as
		// much as the leases granted within the retention did (taking all
		// of the heap as proportional to them: generous, never strict).
		remembered := func(s sample) float64 {
			var before int64
			for _, e := range samples {
				if e.at <= s.at-cfg.retention {
					before = e.granted
				}
			}
			return float64(s.granted - before)
		}
		r1, r2 := mean(first, remembered), mean(second, remembered)
		limit := (1 + cfg.heapTol) * max(1, r2/r1)
		check(h2 <= h1*limit, "live heap: %.1f MiB in the second half of the steady state (%v-%v), %.1f MiB in the first: %+.1f%% (limit %+.0f%%: %.0f%% and the %+.1f%% of leases granted within the retention)",
			h2, second[0].at.Round(time.Second), second[len(second)-1].at.Round(time.Second), h1, 100*(h2/h1-1), 100*(limit-1), 100*cfg.heapTol, 100*(r2/r1-1))
		check(g2 <= g1*(1+cfg.goroutineTol), "goroutines: %.0f in the second half, %.0f in the first: %+.1f%% (limit +%.0f%%)",
			g2, g1, 100*(g2/g1-1), 100*cfg.goroutineTol)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d checks failed; first: %s", len(failed), failed[0])
	}
	fmt.Fprintln(out, "\nall checks passed")
	return nil
}
