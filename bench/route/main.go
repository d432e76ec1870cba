// Command route compares three ways of spreading one model's calls over the
// quotas of three source Regions (issue 14), against the project's Bedrock
// simulator, with the real aws-sdk-go-v2 bedrockruntime client:
//
//  1. one-target: the broker with one target per client (today): each
//     client calls the us. profile of Claude Sonnet 4.5 in its home Region
//     through quotaclient.WithLeases;
//  2. fallback: a client-side fallback on 429 with a cooldown, the way LLM
//     gateways do it: each client tries its home Region, then the others in
//     order, skipping a Region that throttled it within -cooldown, and backs
//     off when all are cooling down (no broker);
//  3. route: the broker with a route per home Region (home first, then the
//     others), through quotaclient.Router, each worker's conversation
//     carrying an affinity key.
//
// Twelve clients, homes uneven (six in us-east-1, four in us-east-2, two in
// us-west-2), so a single target leaves capacity idle; each Region's hidden
// capacity is 92% of its published quota, and us-east-1's drops by 60% half
// way through. Each strategy runs the same workload against a fresh
// simulator and prints throughput against the combined hidden capacity,
// throttles, and how well conversations stay on one target.
//
//	go run ./bench/route            # 3 x 60 s real (10 simulated minutes at 10x)
//	go run ./bench/route -short     # under 30 s
//
// Time is compressed: the simulator, the broker's clock and the workload's
// sleeps run at -speed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"github.com/aws/smithy-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/awsclient"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
	"github.com/bedrockqb/quotabroker/internal/clocktest"
	"github.com/bedrockqb/quotabroker/server"
)

const (
	model     = "anthropic.claude-sonnet-4-5-20250929-v1:0"
	profile   = "us." + model
	quotaCode = "L-ROUTETPM"

	stratOne      = "one-target"
	stratFallback = "fallback"
	stratRoute    = "route"
)

var regions = []string{"us-east-1", "us-east-2", "us-west-2"}

// homes: clients 0-5 live in us-east-1, 6-9 in us-east-2, 10-11 in us-west-2.
func home(c int) int {
	switch {
	case c < 6:
		return 0
	case c < 10:
		return 1
	}
	return 2
}

type config struct {
	duration, warmup time.Duration // simulated
	speed            float64
	clients, workers int
	convLen          int
	published        float64 // TPM per Region
	hidden           float64 // hidden capacity as a share of published
	drop             float64 // share of us-east-1's hidden capacity lost at half time
	cooldown         time.Duration
	input, output    int
	strategies       []string
	seed             uint64
	affinityWait     time.Duration // broker Config.AffinityWait; 0: the default
	verbose          bool
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "route bench:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("route", flag.ContinueOnError)
	c := config{}
	fs.DurationVar(&c.duration, "duration", 10*time.Minute, "simulated length of each strategy's run")
	fs.Float64Var(&c.speed, "speed", 10, "time compression (simulator, broker clock, workload sleeps)")
	fs.IntVar(&c.workers, "workers", 3, "closed-loop workers per client (3: demand about 1.5x the combined hidden capacity)")
	fs.IntVar(&c.convLen, "conversation", 10, "calls per conversation (one affinity key)")
	fs.DurationVar(&c.affinityWait, "affinity-wait", 0, "route: the broker's Config.AffinityWait (0: its default, 5s; negative: none)")
	fs.DurationVar(&c.cooldown, "cooldown", 10*time.Second, "fallback: how long a Region that throttled is skipped (simulated)")
	strategies := fs.String("strategies", stratOne+","+stratFallback+","+stratRoute, "strategies to run, comma-separated")
	fs.BoolVar(&c.verbose, "v", false, "print every throttle: when, where, the broker's effective TPM there, and the requests there just before")
	short := fs.Bool("short", false, "CI mode: -duration 2m30s -speed 25 (under 30 s in all)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *short {
		c.duration, c.speed = 150*time.Second, 25
	}
	c.clients, c.published, c.hidden, c.drop = 12, 300_000, 0.92, 0.6
	c.input, c.output, c.seed = 1000, 1000, 1
	c.warmup = min(time.Minute, c.duration/4)
	if c.duration < time.Minute || c.speed <= 0 || c.workers < 1 || c.convLen < 1 || c.cooldown < 0 {
		return errors.New("want -duration >= 1m, -speed > 0, -workers >= 1, -conversation >= 1, -cooldown >= 0")
	}
	for _, s := range strings.Split(*strategies, ",") {
		switch s = strings.TrimSpace(s); s {
		case stratOne, stratFallback, stratRoute:
			c.strategies = append(c.strategies, s)
		default:
			return fmt.Errorf("-strategies: unknown %q (want %s, %s, %s)", s, stratOne, stratFallback, stratRoute)
		}
	}
	hiddenTPM := c.published * c.hidden
	fmt.Fprintf(out, "route bench: %s through %s in %s; published %.0f TPM per Region, hidden %.0f (%.0f%%);\n",
		model, profile, strings.Join(regions, ", "), c.published, hiddenTPM, 100*c.hidden)
	fmt.Fprintf(out, "us-east-1's hidden capacity drops %.0f%% at %v; %d clients (homes 6/4/2) x %d workers; calls of %d input + %d output tokens (x5 burndown);\n",
		100*c.drop, c.duration/2, c.clients, c.workers, c.input, c.output)
	fmt.Fprintf(out, "%v simulated per strategy at %gx (%.0f s real); measured after a %v warm-up\n\n",
		c.duration, c.speed, c.duration.Seconds()/c.speed, c.warmup)
	var results []*result
	for _, s := range c.strategies {
		fmt.Fprintf(out, "running %s ... ", s)
		start := time.Now()
		r, err := runStrategy(context.Background(), c, s)
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
		fmt.Fprintf(out, "%.0fs real\n", time.Since(start).Seconds())
		results = append(results, r)
	}
	fmt.Fprintln(out)
	printTable(out, c, results)
	for _, r := range results {
		if r.trace != nil {
			fmt.Fprintln(out)
			r.trace.print(out, r.name)
		}
	}
	return nil
}

// scenario: the us. profile callable from three Regions, each with its own
// cross-region TPM quota, its hidden capacity below it.
func scenario(c config) *bedrocksim.Scenario {
	var arns []bedrocksim.ProfileModel
	for _, r := range regions {
		arns = append(arns, bedrocksim.ProfileModel{ModelArn: "arn:aws:bedrock:" + r + "::foundation-model/" + model})
	}
	trueTPM := c.published * c.hidden
	quotas := map[string][]bedrocksim.Quota{}
	for _, r := range regions {
		quotas[r] = []bedrocksim.Quota{{Code: quotaCode, Name: "Cross-region model inference tokens per minute for Anthropic Claude Sonnet 4.5 V1",
			Value: c.published, DefaultValue: c.published, Adjustable: true, TrueValue: &trueTPM,
			Enforces: &bedrocksim.Enforcement{Metric: bedrocksim.MetricTPM, Scopes: []string{bedrocksim.ScopeCrossRegion}, Model: model}}}
	}
	return &bedrocksim.Scenario{
		Name: "route-bench", AccountID: "111122223333", DefaultRegion: "us-east-1",
		Models: []bedrocksim.Model{{ID: model, Provider: "Anthropic", Name: "Claude Sonnet 4.5", InferenceTypes: []string{"INFERENCE_PROFILE"},
			MaxOutputTokens: 64000, CountTokens: true, InputModalities: []string{"TEXT"}, OutputModalities: []string{"TEXT"}}},
		InferenceProfiles: []bedrocksim.InferenceProfile{{ID: profile, Name: "US Anthropic Claude Sonnet 4.5", Models: arns, SourceRegions: regions}},
		Quotas:            quotas,
		Runtime: bedrocksim.Runtime{TrueCapacityFraction: 1,
			OutputTokens: bedrocksim.OutputDist{Distribution: "fixed", Fixed: c.output},
			Latency: bedrocksim.Latency{TimeToFirstTokenMs: bedrocksim.MsDist{Distribution: "uniform", Min: 300, Max: 700},
				OutputTokensPerSecond: 100}},
	}
}

// call is one Converse as the workload saw it.
type call struct {
	client, worker, conv int
	at                   time.Duration
	region               string // where it ran; "" if it failed
	reason               string // route only: room, affinity, spill
	waited               bool   // route only: the lease waited for capacity
}

type result struct {
	name          string
	calls         []call
	failed        int
	warm, end     bedrocksim.Stats // at the warm-up's end and at the run's end (before the last calls finished)
	before, after bedrocksim.Stats // just before and after the drop
	final         bedrocksim.Stats // after every call finished
	capacity      float64          // combined hidden capacity over [warm-up, end], tokens
	capBefore     float64          // of which before the drop
	brokerReports []broker.BudgetReport
	routes        []broker.RouteInfo
	trace         *trace
}

// strategy makes one call for client c's worker w in conversation key;
// it returns the Region it ran in, or an error, and for a route why there
// and whether the lease waited.
type strategy interface {
	call(ctx context.Context, c int, key string) (region, reason string, waited bool, err error)
}

func runStrategy(ctx context.Context, c config, name string) (*result, error) {
	sim, err := bedrocksim.New(bedrocksim.Config{Scenario: scenario(c), Speed: c.speed, Seed: c.seed})
	if err != nil {
		return nil, err
	}
	srv := httptest.NewServer(sim.Handler())
	defer srv.Close()
	t0 := sim.Now()
	realStart := time.Now()
	clock := clocktest.Scaled{Start: realStart, Speed: c.speed}
	now := func() time.Duration { return sim.Now().Sub(t0) }
	awsCfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", "")}
	res := &result{name: name}
	if c.verbose {
		res.trace = &trace{now: now}
	}
	endpoint := func(o *bedrockruntime.Options) {
		o.BaseEndpoint = aws.String(srv.URL)
		if res.trace != nil {
			o.HTTPClient = res.trace.client(o.HTTPClient)
		}
		o.HTTPClient = awsclient.SafeBodies(o.HTTPClient)
	}
	var st strategy
	var bp *brokerProc
	switch name {
	case stratFallback:
		st = newFallback(c, awsCfg, endpoint, clock, now)
	default:
		if bp, err = startBroker(ctx, c, clock); err != nil {
			return nil, err
		}
		defer bp.stop()
		if res.trace != nil {
			res.trace.b = bp.b
		}
		if name == stratOne {
			st = newOneTarget(c, awsCfg, endpoint, bp.conn)
		} else {
			st = newRouted(c, awsCfg, endpoint, bp.conn)
		}
	}

	end := c.duration
	var wg sync.WaitGroup
	wg.Go(func() {
		// The drop, and the two snapshots, on the simulated clock.
		if clock.Sleep(ctx, c.warmup-now()) == nil {
			res.warm = sim.Stats()
		}
		if clock.Sleep(ctx, c.duration/2-now()) == nil {
			res.before = sim.Stats()
			scale := 1 - c.drop
			if err := sim.SetCapacity(regions[0], quotaCode, bedrocksim.CapacityChange{ScaleTrue: &scale}); err != nil {
				panic(err)
			}
			res.after = sim.Stats()
		}
		if clock.Sleep(ctx, end-now()) == nil {
			res.end = sim.Stats()
		}
	})
	var mu sync.Mutex
	text := strings.Repeat("word ", c.input*4/5) // the simulator counts 4 characters a token
	for cl := range c.clients {
		for w := range c.workers {
			wg.Go(func() {
				for conv := 0; now() < end; conv++ {
					key := fmt.Sprintf("c%02d-w%d-%d", cl, w, conv)
					for k := 0; k < c.convLen && now() < end; k++ {
						at := now()
						region, reason, waited, err := st.call(quotaclient.WithAffinityKey(ctx, key), cl, key+" "+text)
						mu.Lock()
						if err != nil {
							res.failed++
						}
						res.calls = append(res.calls, call{client: cl, worker: w, conv: conv, at: at, region: region, reason: reason, waited: waited})
						mu.Unlock()
						if err != nil {
							var re *quotaclient.RefusedError
							d := time.Second
							if errors.As(err, &re) {
								d = min(re.RetryAfter, 5*time.Second)
							}
							clock.Sleep(ctx, d)
						}
					}
				}
			})
		}
	}
	wg.Wait()
	res.final = sim.Stats()
	hidden := c.published * c.hidden / 60 // tokens per simulated second
	span := (end - c.warmup).Seconds()
	afterDrop := (end - max(c.duration/2, c.warmup)).Seconds()
	res.capacity = 3*hidden*span - c.drop*hidden*afterDrop
	res.capBefore = 3 * hidden * (c.duration/2 - c.warmup).Seconds()
	if bp != nil {
		res.brokerReports, _ = bp.b.Report(broker.ReportFilter{})
		res.routes = bp.b.Routes()
	}
	return res, nil
}

func converseIn(text string, maxTokens int) *bedrockruntime.ConverseInput {
	return &bedrockruntime.ConverseInput{
		ModelId:         aws.String(profile),
		Messages:        []rttypes.Message{{Role: rttypes.ConversationRoleUser, Content: []rttypes.ContentBlock{&rttypes.ContentBlockMemberText{Value: text}}}},
		InferenceConfig: &rttypes.InferenceConfiguration{MaxTokens: aws.Int32(int32(maxTokens))},
	}
}

// oneTarget: each client calls its home Region through WithLeases.
type oneTarget struct {
	c       config
	clients []*bedrockruntime.Client
}

func newOneTarget(c config, cfg aws.Config, endpoint func(*bedrockruntime.Options), conns []*grpc.ClientConn) *oneTarget {
	o := &oneTarget{c: c}
	for cl := range c.clients {
		qc := quotaclient.New(conns[cl%len(conns)], quotaclient.WithName(fmt.Sprintf("c%02d", cl)))
		region := regions[home(cl)]
		o.clients = append(o.clients, bedrockruntime.NewFromConfig(cfg, endpoint, quotaclient.WithLeases(qc),
			func(op *bedrockruntime.Options) { op.Region = region }))
	}
	return o
}

func (o *oneTarget) call(ctx context.Context, c int, text string) (string, string, bool, error) {
	_, err := o.clients[c].Converse(ctx, converseIn(text, o.c.output))
	if err != nil {
		return "", "", false, err
	}
	return regions[home(c)], "", false, nil
}

// routed: each client calls through a Router on the route of its home.
type routed struct {
	c       config
	routers []*quotaclient.Router
}

func newRouted(c config, cfg aws.Config, endpoint func(*bedrockruntime.Options), conns []*grpc.ClientConn) *routed {
	r := &routed{c: c}
	for cl := range c.clients {
		qc := quotaclient.New(conns[cl%len(conns)], quotaclient.WithName(fmt.Sprintf("c%02d", cl)))
		r.routers = append(r.routers, quotaclient.NewRouter(qc, "from-"+regions[home(cl)], cfg, endpoint))
	}
	return r
}

func (r *routed) call(ctx context.Context, c int, text string) (string, string, bool, error) {
	out, err := r.routers[c].Converse(ctx, converseIn(text, r.c.output))
	if err != nil {
		return "", "", false, err
	}
	l, _ := quotaclient.LeaseOf(out.ResultMetadata)
	return l.Region, l.RouteReason, l.Waited > 0, nil
}

// fallback is a gateway's router per client: Regions in order (home
// first), a Region that answered 429 skipped for the cooldown, the next
// tried at once; when all cool down, wait for the first to come back.
type fallback struct {
	c       config
	clock   clocktest.Scaled
	now     func() time.Duration
	clients map[string]*bedrockruntime.Client // one per Region, no SDK retries: the gateway retries
	mu      sync.Mutex                        // guards cool
	cool    [][]time.Duration                 // per client, per Region: skipped until
}

func newFallback(c config, cfg aws.Config, endpoint func(*bedrockruntime.Options), clock clocktest.Scaled, now func() time.Duration) *fallback {
	f := &fallback{c: c, clock: clock, now: now, clients: map[string]*bedrockruntime.Client{}}
	for _, r := range regions {
		f.clients[r] = bedrockruntime.NewFromConfig(cfg, endpoint, func(o *bedrockruntime.Options) {
			o.Region = r
			o.Retryer = aws.NopRetryer{}
		})
	}
	for range c.clients {
		f.cool = append(f.cool, make([]time.Duration, len(regions)))
	}
	return f
}

func (f *fallback) call(ctx context.Context, c int, text string) (string, string, bool, error) {
	order := []int{home(c)}
	for i := range regions {
		if i != home(c) {
			order = append(order, i)
		}
	}
	for {
		t := f.now()
		f.mu.Lock()
		next, wake := -1, time.Duration(-1)
		for _, i := range order {
			if f.cool[c][i] <= t {
				next = i
				break
			}
			if wake < 0 || f.cool[c][i] < wake {
				wake = f.cool[c][i]
			}
		}
		f.mu.Unlock()
		if next < 0 {
			if err := f.clock.Sleep(ctx, wake-t); err != nil {
				return "", "", false, err
			}
			continue
		}
		_, err := f.clients[regions[next]].Converse(ctx, converseIn(text, f.c.output))
		if err == nil {
			return regions[next], "", false, nil
		}
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != "ThrottlingException" {
			return "", "", false, err
		}
		f.mu.Lock()
		f.cool[c][next] = f.now() + f.c.cooldown
		f.mu.Unlock()
	}
}

type brokerProc struct {
	b    *broker.Broker
	conn []*grpc.ClientConn
	stop func()
}

// startBroker runs a broker that knows the published quotas (what
// discovery finds) and a route per home Region: home first, then the
// others in order.
func startBroker(ctx context.Context, c config, clock broker.Clock) (*brokerProc, error) {
	dir, err := os.MkdirTemp("", "route-bench")
	if err != nil {
		return nil, err
	}
	store, err := bolt.Open(filepath.Join(dir, "state.db"), bolt.Options{NoSync: true})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b, err := broker.Open(ctx, store, clock, broker.Config{Logger: log, AffinityWait: c.affinityWait})
	if err != nil {
		store.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	var specs []broker.Spec
	var targets []broker.Target
	for _, r := range regions {
		t, err := broker.NewTarget(profile, r)
		if err != nil {
			return nil, err
		}
		targets = append(targets, t)
		specs = append(specs, broker.Spec{Key: t.Key, Quota: broker.Limits{TPM: int64(c.published)}, Source: "bench: published quota"})
	}
	if err := b.SetSpecs(ctx, specs); err != nil {
		return nil, err
	}
	var routes []broker.Route
	for h, r := range regions {
		rt := broker.Route{Name: "from-" + r, Targets: []broker.Target{targets[h]}}
		for i, t := range targets {
			if i != h {
				rt.Targets = append(rt.Targets, t)
			}
		}
		routes = append(routes, rt)
	}
	if err := b.SetRoutes(routes); err != nil {
		return nil, err
	}
	srv := server.New(b, server.Config{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { b.Run(runCtx) })
	wg.Go(func() { srv.Serve(lis) })
	bp := &brokerProc{b: b}
	for range 3 {
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			cancel()
			return nil, fmt.Errorf("dial broker: %w", err)
		}
		bp.conn = append(bp.conn, conn)
	}
	bp.stop = func() {
		for _, c := range bp.conn {
			c.Close()
		}
		srv.GRPC().GracefulStop()
		cancel()
		wg.Wait()
		b.Close()
		store.Close()
		os.RemoveAll(dir)
	}
	return bp, nil
}

func settled(s bedrocksim.Stats) float64 {
	var n float64
	for _, q := range s.Quotas {
		if q.Code == quotaCode {
			n += q.Settled
		}
	}
	return n
}

// available is what the simulator's buckets hold: capacity Bedrock would
// accept beyond its refill.
func available(s bedrocksim.Stats) float64 {
	var n float64
	for _, q := range s.Quotas {
		if q.Code == quotaCode {
			n += q.Available
		}
	}
	return n
}

// servable is the capacity of the measured span: the hidden capacity's
// refill, plus what the buckets held at its start and no longer hold at
// its end (a bucket starts full: a strategy that drains it serves more than
// the refill, once), leaving out what the drop itself took away.
func (r *result) servable() float64 {
	return r.capacity + available(r.warm) - available(r.before) + available(r.after) - available(r.end)
}

// stickiness is, over the calls of a conversation after its first, the
// share that ran where the conversation's previous call ran, and how many
// such calls there were. (The route's own count of calls kept on the
// key's target or moved is printed from the calls' reasons, after the table.)
func stickiness(calls []call) (stay float64, n int) {
	type convKey struct{ c, w, conv int }
	byConv := map[convKey][]call{}
	for _, cl := range calls {
		if cl.region != "" {
			k := convKey{cl.client, cl.worker, cl.conv}
			byConv[k] = append(byConv[k], cl)
		}
	}
	stayed := 0
	for _, cs := range byConv {
		slices.SortFunc(cs, func(a, b call) int { return int(a.at - b.at) })
		for i := 1; i < len(cs); i++ {
			n++
			if cs[i].region == cs[i-1].region {
				stayed++
			}
		}
	}
	if n == 0 {
		return 0, 0
	}
	return float64(stayed) / float64(n), n
}

// followUp counts a route's follow-up calls (a conversation's calls after
// its first, which carry a key the broker has seen) by where they ran.
type followUp struct {
	n, now, waited  int // on the key's target at once or after waiting for capacity
	moved, movedNow int // elsewhere; of which at once (another target had room)
}

func followUps(calls []call) followUp {
	type convKey struct{ c, w, conv int }
	first := map[convKey]time.Duration{}
	for _, cl := range calls {
		k := convKey{cl.client, cl.worker, cl.conv}
		if at, ok := first[k]; cl.region != "" && (!ok || cl.at < at) {
			first[k] = cl.at
		}
	}
	var f followUp
	for _, cl := range calls {
		if at, ok := first[convKey{cl.client, cl.worker, cl.conv}]; cl.region == "" || !ok || cl.at == at {
			continue
		}
		f.n++
		switch {
		case cl.reason == "affinity" && cl.waited:
			f.waited++
		case cl.reason == "affinity":
			f.now++
		default:
			f.moved++
			if !cl.waited {
				f.movedNow++
			}
		}
	}
	return f
}

func printTable(out io.Writer, c config, results []*result) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "strategy\tserved\tbefore/after drop\tcalls ok\tattempts\tthrottled\tbefore/after drop\tthrottle rate\tcalls on e1/e2/w2\tconversation stays\t")
	var fallbackThrottles int64 = -1
	for _, r := range results {
		if r.name == stratFallback {
			fallbackThrottles = r.final.Throttles
		}
	}
	for _, r := range results {
		served := (settled(r.end) - settled(r.warm)) / r.servable()
		per := map[string]int{}
		for _, cl := range r.calls {
			if cl.region != "" {
				per[cl.region]++
			}
		}
		ok := len(r.calls) - r.failed
		stay, n := stickiness(r.calls)
		before := (settled(r.before) - settled(r.warm)) / (r.capBefore + available(r.warm) - available(r.before))
		after := (settled(r.end) - settled(r.after)) / (r.capacity - r.capBefore + available(r.after) - available(r.end))
		fmt.Fprintf(tw, "%s\t%.1f%%\t%.1f%%/%.1f%%\t%d\t%d\t%d\t%d/%d\t%.2f%%\t%d/%d/%d\t%.1f%% of %d\t\n", r.name, 100*served, 100*before, 100*after, ok,
			r.final.Requests, r.final.Throttles, r.before.Throttles, r.final.Throttles-r.before.Throttles,
			100*float64(r.final.Throttles)/float64(max(r.final.Requests, 1)),
			per[regions[0]], per[regions[1]], per[regions[2]], 100*stay, n)
	}
	tw.Flush()
	fmt.Fprintln(out)
	fmt.Fprintln(out, "served: tokens Bedrock settled from the warm-up's end to the run's end, over the combined hidden capacity of that span")
	fmt.Fprintln(out, "        (its refill, plus what the simulator's buckets held at its start and no longer held at its end)")
	fmt.Fprintln(out, "attempts, throttled: HTTP requests the simulator answered, and its ThrottlingExceptions, over the whole run")
	fmt.Fprintln(out, "conversation stays: of a conversation's calls after its first, the share that ran in the Region of the previous one")
	for _, r := range results {
		if r.name != stratRoute {
			continue
		}
		fmt.Fprintln(out)
		fmt.Fprintln(out, "route grants by target and reason (room: the route's first; affinity: the key's last; spill: another, the preferred full):")
		for _, ri := range r.routes {
			var parts []string
			for i, t := range ri.Targets {
				k := ri.Counters[i]
				parts = append(parts, fmt.Sprintf("%s room %d affinity %d spill %d (waited %d)", t.Key.Region, k.Room, k.Affinity, k.Spill, k.Waited))
			}
			fmt.Fprintf(out, "  %s: %s; refused %d\n", ri.Name, strings.Join(parts, ", "), ri.Refused)
		}
		f := followUps(r.calls)
		var recovering int64
		for _, ri := range r.routes {
			for _, k := range ri.Counters {
				recovering += k.SpillRecovering
			}
		}
		fmt.Fprintf(out, "  follow-up calls of a conversation: %d; on the key's target %d (%d at once, %d after waiting for it), moved %d (%d at once): %.1f%% stayed (raw);\n",
			f.n, f.now+f.waited, f.now, f.waited, f.moved, f.movedNow, 100*float64(f.now+f.waited)/float64(max(f.n, 1)))
		fmt.Fprintf(out, "  made while the key's target had room: %d, of which on it %d, moved %d (it was recovering from a throttle): %.1f%% stayed (conditional)\n",
			f.now+int(recovering), f.now, recovering, 100*float64(f.now)/float64(max(f.now+int(recovering), 1)))
		fmt.Fprintln(out, "  a call moves only when the key's target has no room (at the request, and through the affinity grace when it waits),")
		fmt.Fprintln(out, "  or when it is recovering from a throttle and another target has room")
		for _, res := range results {
			if res.name == stratFallback && r.final.Throttles > 0 {
				fmt.Fprintf(out, "  throttles: fallback / route = %.1fx\n", float64(res.final.Throttles)/float64(r.final.Throttles))
			}
		}
		if fallbackThrottles >= 0 && r.final.Throttles == 0 {
			fmt.Fprintf(out, "  throttles: fallback %d, route 0\n", fallbackThrottles)
		}
	}
}
