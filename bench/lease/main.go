// Command lease measures the broker's lease path over real gRPC on loopback
// against a baseline in the same run: an empty unary RPC (the standard
// health Check) on the same server. It prints calls/s and p50/p99 latency of
//
//   - the empty RPC (baseline),
//   - AcquireLease alone,
//   - AcquireLease + CompleteLease pairs,
//
// at the given concurrency and at 1 caller, with persistence on (a real
// bbolt file with fsync) and the metrics interceptor on, as served in
// production, for two brokers side by side: one that commits every grant
// before answering (Config.EscrowSpan < 0, as before escrow) and one that
// draws grants from escrowed chunks (the default). Then it holds many
// outstanding leases, reports the memory each costs, and times a restart
// with them on record: store and broker opened to a first grant.
//
//	go run ./bench/lease -duration 3s -rounds 3 -concurrency 50 -outstanding 100000
//
// Besides rates and latencies, each case's CPU per call (the process's CPU
// time over its calls) and bytes allocated per call, which move far less
// with the machine's other load than the rates do. -only measures chosen
// cases (with each broker's empty RPC), and with -cpuprofile profiles just
// them:
//
//	go run ./bench/lease -outstanding 0 -only "escrow: AcquireLease (50" -cpuprofile /tmp/acquire.cpu
//
// With -attack it measures instead an unrelated client's AcquireLease
// while an attacker, a child process, floods the same server (attack.go):
//
//	go run ./bench/lease -attack flood,halfopen,history -duration 3s -rounds 3
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/gctune"
	"github.com/bedrockqb/quotabroker/internal/sysclock"
	"github.com/bedrockqb/quotabroker/server"
)

const model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "lease bench:", err)
		os.Exit(1)
	}
}

// served is one broker on its own store behind its own gRPC server.
type served struct {
	name   string
	path   string
	addr   string // the server's, on loopback
	store  *bolt.Store
	b      *broker.Broker
	key    broker.Key
	health healthpb.HealthClient
	qb     pb.QuotaBrokerClient
	stop   func() // stops the server, the broker's loops, the broker and the store
}

func serve(ctx context.Context, name, path string, cfg broker.Config, nosync, metrics bool) (*served, error) {
	store, err := bolt.Open(path, bolt.Options{NoSync: nosync})
	if err != nil {
		return nil, err
	}
	// One client holds every outstanding lease of the memory measurement:
	// no per-client cap on leases (the default is 10,000).
	cfg.Margin, cfg.LeaseTTL, cfg.DefaultClient = 1, time.Hour, broker.ClientPolicy{MaxConcurrent: -1}
	b, err := broker.Open(ctx, store, sysclock.Clock{}, cfg)
	if err != nil {
		store.Close()
		return nil, err
	}
	key, _ := broker.ParseModelID(model, "", "us-east-1")
	// Limits far above what the run can use: this measures overhead, not
	// refusals.
	if err := b.SetSpecs(ctx, []broker.Spec{{Key: key, Quota: broker.Limits{RPM: 1 << 40, TPM: 1 << 50}, Source: "bench"}}); err != nil {
		b.Close()
		store.Close()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	var loops sync.WaitGroup
	loops.Go(func() { b.Run(runCtx) })
	scfg := server.Config{}
	if metrics {
		scfg.Metrics = prometheus.NewRegistry()
	}
	srv := server.New(b, scfg)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err == nil {
		go srv.Serve(lis)
	}
	var conn *grpc.ClientConn
	if err == nil {
		conn, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if err != nil {
		srv.Shutdown(ctx)
		b.Close()
		cancel()
		loops.Wait()
		store.Close()
		return nil, err
	}
	s := &served{name: name, path: path, addr: lis.Addr().String(), store: store, b: b, key: key,
		health: healthpb.NewHealthClient(conn), qb: pb.NewQuotaBrokerClient(conn)}
	s.stop = func() {
		conn.Close()
		srv.Shutdown(ctx)
		b.Close()
		cancel()
		loops.Wait()
		b.Sweep(ctx) // closes chunks, writes what is pending, as serve does
		store.Close()
	}
	return s, nil
}

func run(args []string, out io.Writer) error {
	if len(args) > 0 && args[0] == "attacker" { // the child process of an -attack run (attack.go)
		return attacker(args[1:])
	}
	fs := flag.NewFlagSet("lease", flag.ContinueOnError)
	duration := fs.Duration("duration", 5*time.Second, "how long each measurement runs")
	concurrency := fs.Int("concurrency", 50, "concurrent callers (each case also runs at 1 caller)")
	outstanding := fs.Int("outstanding", 100_000, "leases to hold outstanding for the memory and restart measurements (0 skips them)")
	rounds := fs.Int("rounds", 3, "measurement rounds; the median round is reported")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the measurements to this file (with -only, one file per measurement of the chosen cases: this path with .1, .2, ...)")
	memprofile := fs.String("memprofile", "", "write an allocation profile of the measurements to this file (go tool pprof -sample_index=alloc_space)")
	nosync := fs.Bool("nosync", false, "skip fsync in the store (unsafe; shows what durability costs)")
	metrics := fs.Bool("metrics", true, "serve with the metrics interceptor, as production does")
	attack := fs.String("attack", "none", "none, or the attacks (flood, halfopen, history; comma-separated) to measure an unrelated client under (attack.go)")
	floodWait := fs.Duration("flood-wait", 20*time.Second, "with -attack flood: how long each flooding call waits before its refusal")
	refill := fs.Bool("halfopen-refill", true, "with -attack halfopen: the attacker replaces each call the server ends (false: sends its calls once, as bench/halfopen)")
	short := fs.Bool("short", false, "with -attack: one round of 1s measurements")
	only := fs.String("only", "", "measure only the cases whose name and callers (\"escrow: AcquireLease (50 callers)\") contain this (each broker's empty RPC is always measured: the ratios need it); with -cpuprofile, a profile of just those")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "lease-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	if *attack != "none" {
		if *short {
			*duration, *rounds = time.Second, 1
		}
		return runAttacks(ctx, out, dir, attackConfig{kinds: strings.Split(*attack, ","), d: *duration, rounds: *rounds,
			floodWait: *floodWait, refill: *refill, nosync: *nosync, metric: *metrics})
	}
	var brokers []*served
	for i, m := range []struct {
		name string
		span time.Duration
	}{{"per-grant commit", -1}, {"escrow", 0}} {
		s, err := serve(ctx, m.name, filepath.Join(dir, fmt.Sprintf("state-%d.db", i)), broker.Config{EscrowSpan: m.span}, *nosync, *metrics)
		if err != nil {
			return err
		}
		defer func() { s.stop() }() // a no-op once stopped
		brokers = append(brokers, s)
	}

	acquire := &pb.AcquireLeaseRequest{ModelId: model, InputTokens: 1000, MaxOutputTokens: 500}
	type bcase struct {
		name string
		n    int
		base bool // the broker's empty RPC, which the ratios below it are to
		call func() error
	}
	var cases []bcase
	for _, n := range []int{*concurrency, 1} {
		for _, s := range brokers {
			cases = append(cases,
				bcase{fmt.Sprintf("%s: empty RPC (health Check)", s.name), n, true, func() error {
					_, err := s.health.Check(ctx, &healthpb.HealthCheckRequest{})
					return err
				}},
				bcase{fmt.Sprintf("%s: AcquireLease", s.name), n, false, func() error {
					_, err := s.qb.AcquireLease(ctx, acquire)
					return err
				}},
				bcase{fmt.Sprintf("%s: Acquire+Complete", s.name), n, false, func() error {
					r, err := s.qb.AcquireLease(ctx, acquire)
					if err != nil {
						return err
					}
					_, err = s.qb.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: r.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS,
						Usage: &pb.Usage{InputTokens: 1000, OutputTokens: 200}})
					return err
				}})
		}
	}
	chosen := func(c bcase) bool { return strings.Contains(fmt.Sprintf("%s (%d callers)", c.name, c.n), *only) }
	if *only != "" {
		cases = slices.DeleteFunc(cases, func(c bcase) bool { return !c.base && !chosen(c) })
	}
	// profile profiles one measurement: with -only, each of the chosen
	// cases' runs to a file of its own (PATH.1, PATH.2, ...; pprof merges
	// the files it is given), so that the empty RPCs measured for the
	// ratios stay out of it unless chosen; without, the whole run to PATH.
	profiled := 0
	profile := func(c bcase, measure func() error) error {
		if *cpuprofile == "" || (*only != "" && !chosen(c)) {
			return measure()
		}
		path := *cpuprofile
		if *only != "" {
			profiled++
			path = fmt.Sprintf("%s.%d", path, profiled)
		}
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
		return measure()
	}
	if *cpuprofile != "" && *only == "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
		*cpuprofile = "" // one profile, already started
	}
	if *memprofile != "" {
		runtime.MemProfileRate = 4096
		defer func() {
			if f, err := os.Create(*memprofile); err == nil {
				pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	// The collector's target as quota-broker serve runs (internal/gctune).
	gogc := gctune.Apply()
	fmt.Fprintf(out, "lease path over gRPC on loopback, %v per round, median of %d rounds, GOMAXPROCS %d, GOGC %d, bbolt with fsync %v, metrics %v\n",
		*duration, *rounds, runtime.GOMAXPROCS(0), gogc, !*nosync, *metrics)
	results := make([][]result, len(cases))
	for r := 0; r < *rounds; r++ {
		for i, c := range cases { // interleaved, so drift hits all cases alike
			var res result
			err := profile(c, func() (err error) {
				res, err = measure(c.call, c.n, *duration)
				return err
			})
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			results[i] = append(results[i], res)
		}
	}
	var base result
	for i, c := range cases {
		if i == 0 || cases[i-1].n != c.n {
			fmt.Fprintf(out, "\n%-38s %12s %10s %10s %10s %10s %10s %10s %10s %10s\n", fmt.Sprintf("call (%d callers)", c.n), "calls/s", "p50", "p99", "rate", "p50", "p99", "CPU/call", "CPU", "B/call")
		}
		m := median(results[i])
		if c.base {
			base = m // each broker's own empty RPC
		}
		fmt.Fprintf(out, "%-38s %12.0f %10v %10v %9.2fx %9.2fx %9.2fx %10v %9.2fx %10d\n", c.name, m.rate, m.p50.Round(time.Microsecond), m.p99.Round(time.Microsecond),
			m.rate/base.rate, float64(m.p50)/float64(base.p50), float64(m.p99)/float64(base.p99), m.cpu.Round(100*time.Nanosecond), float64(m.cpu)/float64(base.cpu), m.bytes)
	}
	if *outstanding > 0 {
		s := brokers[len(brokers)-1]
		if err := measureOutstanding(ctx, out, s.b, s.key, *outstanding); err != nil {
			return err
		}
		// As in a fresh process: the other brokers' leases would otherwise
		// make every collection during the restore scan them too.
		for _, s := range brokers {
			s.stop()
			s.stop = func() {}
		}
		brokers = nil
		runtime.GC()
		return measureRestart(ctx, out, filepath.Join(dir, "restart.db"), *outstanding, *nosync)
	}
	return nil
}

// measureRestart leaves n leases outstanding on a new broker at path, stops
// it as serve does, then opens the store and a broker on it again and
// grants one lease: the time from a stopped broker to serving.
func measureRestart(ctx context.Context, out io.Writer, path string, n int, nosync bool) error {
	s, err := serve(ctx, "restart", path, broker.Config{}, nosync, false)
	if err != nil {
		return err
	}
	if err := hold(ctx, s.b, n); err != nil {
		s.stop()
		return err
	}
	s.stop()
	runtime.GC() // a fresh process would not carry the stopped broker's heap
	start := time.Now()
	store, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		return err
	}
	defer store.Close()
	storeOpen := time.Since(start)
	b, err := broker.Open(ctx, store, sysclock.Clock{}, broker.Config{Margin: 1, LeaseTTL: time.Hour, DefaultClient: broker.ClientPolicy{MaxConcurrent: -1}})
	if err != nil {
		return err
	}
	defer b.Close()
	opened := time.Since(start)
	d, err := b.Acquire(ctx, broker.AcquireRequest{ModelID: model, InputTokens: 10, MaxOutputTokens: 10})
	if err != nil {
		return err
	}
	if !d.Granted {
		return fmt.Errorf("first grant after the restart refused on %v", d.Blocked)
	}
	reps, _ := b.Report(broker.ReportFilter{})
	fmt.Fprintf(out, "restart with %d outstanding leases on record: store open in %v, broker (load and restore) in %v more, first grant after %v\n",
		reps[0].Outstanding, storeOpen.Round(time.Millisecond), (opened - storeOpen).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	return nil
}

type result struct {
	rate     float64
	p50, p99 time.Duration
	// cpu is the process's CPU time (user and system, every goroutine:
	// client, server, broker loops, collector) over the calls made. Unlike
	// the rate, it hardly moves with what else the machine runs, so it
	// compares two versions measured at different loads.
	cpu time.Duration
	// bytes is what the process allocated per call (client and server).
	bytes int64
}

// median is the round of median rate, with the median CPU per call of all
// rounds.
func median(rs []result) result {
	cpus := make([]time.Duration, len(rs))
	for i, r := range rs {
		cpus[i] = r.cpu
	}
	slices.Sort(cpus)
	m := medianRate(rs)
	m.cpu = cpus[len(cpus)/2]
	return m // bytes: the median round's (they hardly vary)
}

func medianRate(rs []result) result {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b result) int {
		switch {
		case a.rate < b.rate:
			return -1
		case a.rate > b.rate:
			return 1
		}
		return 0
	})
	return s[len(s)/2]
}

// measure runs call from n goroutines for d and returns the rate and
// latency percentiles.
func measure(call func() error, n int, d time.Duration) (result, error) {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		lat      []time.Duration
		firstErr atomic.Value
		stop     atomic.Bool
	)
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	alloc0 := mem.TotalAlloc
	cpu0 := cpuTime()
	start := time.Now()
	for range n {
		wg.Go(func() {
			local := make([]time.Duration, 0, 4096)
			for !stop.Load() {
				t := time.Now()
				if err := call(); err != nil {
					firstErr.CompareAndSwap(nil, err)
					stop.Store(true)
					break
				}
				local = append(local, time.Since(t))
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		})
	}
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	wg.Wait()
	timer.Stop()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	runtime.ReadMemStats(&mem)
	alloc := mem.TotalAlloc - alloc0
	if err, ok := firstErr.Load().(error); ok {
		return result{}, err
	}
	if len(lat) == 0 {
		return result{}, fmt.Errorf("no calls completed")
	}
	slices.Sort(lat)
	return result{
		rate:  float64(len(lat)) / elapsed.Seconds(),
		p50:   lat[len(lat)/2],
		p99:   lat[len(lat)*99/100],
		cpu:   cpu / time.Duration(len(lat)),
		bytes: int64(alloc) / int64(len(lat)),
	}, nil
}

// cpuTime is the CPU time the process has used so far.
func cpuTime() time.Duration {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		return 0
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}

// measureOutstanding grants n leases directly on the broker (no gRPC, but
// with persistence) and reports the heap they hold.
func measureOutstanding(ctx context.Context, out io.Writer, b *broker.Broker, key broker.Key, n int) error {
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	start := time.Now()
	if err := hold(ctx, b, n); err != nil {
		return err
	}
	took := time.Since(start)
	after := heap()
	reps, _ := b.Report(broker.ReportFilter{})
	held := reps[0].Outstanding
	fmt.Fprintf(out, "\n%d outstanding leases granted in %v; heap grew %.1f MiB: %d bytes per lease\n",
		held, took.Round(time.Millisecond), float64(after-before)/(1<<20), int64(after-before)/max(held, 1))
	return nil
}

// hold grants n leases directly on b from 50 goroutines and leaves them
// outstanding.
func hold(ctx context.Context, b *broker.Broker, n int) error {
	var wg sync.WaitGroup
	var failed atomic.Value
	per := n / 50
	for range 50 {
		wg.Go(func() {
			for range per {
				d, err := b.Acquire(ctx, broker.AcquireRequest{ModelID: model, InputTokens: 10, MaxOutputTokens: 10})
				if err == nil && !d.Granted {
					err = fmt.Errorf("refused on %v", d.Blocked)
				}
				if err != nil {
					failed.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		return err
	}
	return nil
}
