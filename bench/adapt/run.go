package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"github.com/aws/smithy-go/middleware"
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
	stratTutorial = "tutorial"
	stratSDK      = "sdk-adaptive"
	stratBroker   = "broker"
)

// outcome of one attempt: one HTTP request to Bedrock.
type outcome int

const (
	attemptOK outcome = iota
	attemptThrottled
	attemptFailed    // any other error
	attemptCancelled // the run ended during it
)

type attemptRec struct {
	client  int
	at      time.Duration // simulated offset of its start
	outcome outcome
}

// jobRec is one job: wanted at want, its successful attempt started at
// grant, done at done, settling tokens (input + output x burndown, as
// Bedrock reported them).
type jobRec struct {
	client           int
	want, grant, end time.Duration
	tokens           int64
	reserved         int64 // what Bedrock reserved at admission: input + max_tokens x burndown
	ok               bool
}

// sample is the broker's view of the budget at one moment (broker only).
type sample struct {
	at        time.Duration
	effective int64 // effective TPM
	used      int64 // window use
}

type recorder struct {
	mu       sync.Mutex
	attempts []attemptRec
	jobs     []jobRec
	samples  []sample
}

// callRec travels in a call's ctx to the attempt middleware.
type callRec struct {
	client int
	grant  time.Duration // start of the last attempt that succeeded
	ok     bool
}

type callKey struct{}

// runner is one strategy's run.
type runner struct {
	p     *plan
	name  string
	sim   *bedrocksim.Sim
	t0    time.Time // simulated time zero
	rec   recorder
	speed float64
}

// now is the simulated offset since the run started.
func (r *runner) now() time.Duration { return r.sim.Now().Sub(r.t0) }

// sleep waits a simulated duration.
func (r *runner) sleep(ctx context.Context, d time.Duration) error {
	return clocktest.Scaled{Speed: r.speed}.Sleep(ctx, d)
}

// recordAttempts is a Finalize middleware placed last, after the SDK's
// Retry middleware (and quotaclient's): it runs once per attempt, just
// before signing and sending, and sees the attempt's raw error.
func (r *runner) recordAttempts(st *middleware.Stack) error {
	return st.Finalize.Add(middleware.FinalizeMiddlewareFunc("BenchRecordAttempt",
		func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
			start := r.now()
			out, md, err := next.HandleFinalize(ctx, in)
			cr, _ := ctx.Value(callKey{}).(*callRec)
			if cr == nil {
				return out, md, err
			}
			o := classify(ctx, err)
			if err == nil {
				cr.grant, cr.ok = start, true
			}
			r.rec.mu.Lock()
			r.rec.attempts = append(r.rec.attempts, attemptRec{client: cr.client, at: start, outcome: o})
			r.rec.mu.Unlock()
			return out, md, err
		}), middleware.After)
}

func classify(ctx context.Context, err error) outcome {
	var te *rttypes.ThrottlingException
	switch {
	case err == nil:
		return attemptOK
	case errors.As(err, &te):
		return attemptThrottled
	case ctx.Err() != nil:
		return attemptCancelled
	default:
		return attemptFailed
	}
}

// strategy is what differs between the three: how a call is made and what
// the application does after a failed one.
type strategy interface {
	// client builds client c's bedrockruntime client (and whatever it needs).
	client(c int, opts ...func(*bedrockruntime.Options)) *bedrockruntime.Client
	// before runs before each call (the tutorial's token bucket).
	before(ctx context.Context, c int, j job) error
	// retryAfter is how long the application waits after a failed call
	// before calling again; n counts the job's failures so far.
	retryAfter(err error, n int, rng *rand.Rand) time.Duration
}

func runStrategy(ctx context.Context, p *plan, name string) (*result, error) {
	sc, err := bedrocksim.ParseScenario(p.scenario)
	if err != nil {
		return nil, err
	}
	sim, err := bedrocksim.New(bedrocksim.Config{Scenario: sc, Speed: p.cfg.speed, Seed: p.cfg.seed})
	if err != nil {
		return nil, err
	}
	srv := httptest.NewServer(sim.Handler())
	defer srv.Close()
	r := &runner{p: p, name: name, sim: sim, t0: sim.Now(), speed: p.cfg.speed}
	realStart := time.Now()

	base := func(opts ...func(*bedrockruntime.Options)) *bedrockruntime.Client {
		cfg := aws.Config{Region: p.region, Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", "")}
		all := append([]func(*bedrockruntime.Options){func(o *bedrockruntime.Options) {
			o.BaseEndpoint = aws.String(srv.URL)
			o.APIOptions = append(o.APIOptions, r.recordAttempts)
			// Every strategy gets the smithy-go body-race workaround that
			// WithLeases installs, so a connection closed mid-response
			// cannot count against one strategy only.
			o.HTTPClient = awsclient.SafeBodies(o.HTTPClient)
		}}, opts...)
		return bedrockruntime.NewFromConfig(cfg, all...)
	}
	var st strategy
	var bp *brokerProc
	switch name {
	case stratTutorial:
		st = newTutorial(r, base)
	case stratSDK:
		st = &sdkAdaptive{base: base, speed: p.cfg.speed}
	case stratBroker:
		bp, err = startBroker(ctx, p, clocktest.Scaled{Start: realStart, Speed: p.cfg.speed})
		if err != nil {
			return nil, err
		}
		defer bp.stop()
		st = &viaBroker{p: p, base: base, conn: bp.conn}
	}

	runCtx, cancel := context.WithTimeout(ctx, time.Duration(float64(p.cfg.duration)/p.cfg.speed))
	defer cancel()
	var wg sync.WaitGroup
	for c, cs := range p.clients {
		rt := st.client(c)
		switch cs.kind {
		case kindEqual:
			for w := range cs.workers {
				wg.Go(func() { r.worker(runCtx, st, rt, c, w) })
			}
		case kindBatch:
			for w := range cs.workers {
				wg.Go(func() {
					if r.sleep(runCtx, p.floodStart-r.now()) != nil {
						return
					}
					fctx, fcancel := context.WithTimeout(runCtx, time.Duration(float64(p.floodEnd-r.now())/p.cfg.speed))
					defer fcancel()
					r.worker(fctx, st, rt, c, w)
				})
			}
		case kindInteractive:
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(p.cfg.seed, uint64(c)))
				var jobs sync.WaitGroup
				for n := 0; ; n++ {
					gap := time.Duration(rng.ExpFloat64() * float64(interactiveGap))
					if r.sleep(runCtx, gap) != nil {
						break
					}
					jobs.Go(func() { r.do(runCtx, st, rt, c, p.newJob(c, 0, n), rand.New(rand.NewPCG(p.cfg.seed, uint64(n)))) })
				}
				jobs.Wait()
			})
		}
	}
	if bp != nil {
		wg.Go(func() { r.sampleBroker(runCtx, bp.b) })
	}
	// The simulator's bucket level at the warm-up's end and just after the
	// drop: what Bedrock could accept beyond its refill from then on.
	var availWarm, availDrop float64
	wg.Go(func() {
		if r.sleep(runCtx, p.warmup-r.now()) == nil {
			q, _ := sim.Quota(p.region, p.quotaCode)
			availWarm = q.Available
		}
		if r.sleep(runCtx, p.drop+time.Millisecond-r.now()) == nil {
			q, _ := sim.Quota(p.region, p.quotaCode)
			availDrop = q.Available
		}
	})
	wg.Wait()
	res := r.result()
	res.availWarm, res.availDrop = availWarm, availDrop
	res.sim = sim.Stats()
	res.quota, _ = sim.Quota(p.region, p.quotaCode)
	if bp != nil {
		reps, _ := bp.b.Report(broker.ReportFilter{})
		for _, rep := range reps {
			res.brokerThrottles += rep.Counters.Throttled
			res.brokerEnd = rep.BudgetInfo
		}
	}
	return res, nil
}

// worker runs jobs one after the other until ctx ends.
func (r *runner) worker(ctx context.Context, st strategy, rt *bedrockruntime.Client, c, w int) {
	rng := rand.New(rand.NewPCG(r.p.cfg.seed^0xabcdef, uint64(c)<<32|uint64(w)))
	for n := 0; ctx.Err() == nil; n++ {
		r.do(ctx, st, rt, c, r.p.newJob(c, w, n), rng)
	}
}

// do runs one job to success or to the end of ctx, and records it.
func (r *runner) do(ctx context.Context, st strategy, rt *bedrockruntime.Client, c int, j job, rng *rand.Rand) {
	jr := jobRec{client: c, want: r.now()}
	cr := &callRec{client: c}
	cctx := context.WithValue(ctx, callKey{}, cr)
	in := &bedrockruntime.ConverseInput{
		ModelId:         aws.String(r.p.model),
		Messages:        []rttypes.Message{{Role: rttypes.ConversationRoleUser, Content: []rttypes.ContentBlock{&rttypes.ContentBlockMemberText{Value: j.text}}}},
		InferenceConfig: &rttypes.InferenceConfiguration{MaxTokens: aws.Int32(int32(j.maxTokens))},
	}
	for n := 0; ctx.Err() == nil; n++ {
		if st.before(ctx, c, j) != nil {
			break
		}
		out, err := rt.Converse(cctx, in)
		if err == nil && cr.ok {
			jr.ok, jr.grant, jr.end = true, cr.grant, r.now()
			if u := out.Usage; u != nil {
				in := int64(aws.ToInt32(u.InputTokens)) + int64(aws.ToInt32(u.CacheWriteInputTokens))
				jr.tokens = in + int64(math.Round(float64(aws.ToInt32(u.OutputTokens))*r.p.burndown))
				jr.reserved = in + int64(math.Round(float64(j.maxTokens)*r.p.burndown))
			}
			break
		}
		if err == nil {
			err = errors.New("success without a recorded attempt")
		}
		if ctx.Err() != nil {
			break
		}
		if r.sleep(ctx, st.retryAfter(err, n, rng)) != nil {
			break
		}
	}
	if !jr.ok {
		jr.end = r.now()
	}
	r.rec.mu.Lock()
	r.rec.jobs = append(r.rec.jobs, jr)
	r.rec.mu.Unlock()
}

// sampleBroker records the broker's effective TPM every simulated second.
func (r *runner) sampleBroker(ctx context.Context, b *broker.Broker) {
	for r.sleep(ctx, time.Second) == nil {
		reps, _ := b.Report(broker.ReportFilter{})
		for _, rep := range reps {
			r.rec.mu.Lock()
			r.rec.samples = append(r.rec.samples, sample{at: r.now(), effective: rep.Effective.TPM, used: rep.Usage.TokensLastMinute})
			r.rec.mu.Unlock()
		}
	}
}

// --- strategy 1: the tutorial ------------------------------------------------

type tutorial struct {
	r       *runner
	base    func(...func(*bedrockruntime.Options)) *bedrockruntime.Client
	buckets []*tokenBucket
}

func newTutorial(r *runner, base func(...func(*bedrockruntime.Options)) *bedrockruntime.Client) *tutorial {
	t := &tutorial{r: r, base: base}
	perClient := r.p.published / float64(len(r.p.clients))
	for range r.p.clients {
		t.buckets = append(t.buckets, &tokenBucket{r: r, perMinute: perClient, level: perClient})
	}
	return t
}

func (t *tutorial) client(c int, _ ...func(*bedrockruntime.Options)) *bedrockruntime.Client {
	// The tutorial's loop is the retry policy: the SDK makes one attempt.
	return t.base(func(o *bedrockruntime.Options) { o.Retryer = aws.NopRetryer{} })
}

func (t *tutorial) before(ctx context.Context, c int, j job) error {
	// What tutorials count: the prompt (estimated at 4 characters a token)
	// plus max_tokens.
	return t.buckets[c].take(ctx, float64((len(j.text)+3)/4+j.maxTokens))
}

func (t *tutorial) retryAfter(err error, n int, rng *rand.Rand) time.Duration {
	var te *rttypes.ThrottlingException
	if !errors.As(err, &te) {
		return time.Second
	}
	// Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter").
	ceil := min(20*time.Second, time.Second<<min(n, 10))
	return time.Duration(rng.Float64() * float64(ceil))
}

// tokenBucket holds one minute of tokens and refills continuously, in
// simulated time.
type tokenBucket struct {
	r         *runner
	mu        sync.Mutex
	perMinute float64
	level     float64
	last      time.Duration
}

func (b *tokenBucket) take(ctx context.Context, n float64) error {
	for {
		b.mu.Lock()
		now := b.r.now()
		b.level = math.Min(b.perMinute, b.level+b.perMinute*(now-b.last).Minutes())
		b.last = now
		if b.level >= n {
			b.level -= n
			b.mu.Unlock()
			return nil
		}
		wait := time.Duration((n - b.level) / b.perMinute * float64(time.Minute))
		b.mu.Unlock()
		if err := b.r.sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// --- strategy 2: the SDK's adaptive retry mode --------------------------------

type sdkAdaptive struct {
	base  func(...func(*bedrockruntime.Options)) *bedrockruntime.Client
	speed float64
}

func (s *sdkAdaptive) client(c int, _ ...func(*bedrockruntime.Options)) *bedrockruntime.Client {
	// As documented: one retry.NewAdaptiveMode() per client. Its backoff
	// (exponential with jitter, at most 20 s) is scaled to simulated time;
	// its rate limiter reads the real clock and cannot be scaled.
	backoff := retry.NewExponentialJitterBackoff(retry.DefaultMaxBackoff)
	scaled := retry.BackoffDelayerFunc(func(attempt int, err error) (time.Duration, error) {
		d, e := backoff.BackoffDelay(attempt, err)
		return time.Duration(float64(d) / s.speed), e
	})
	rr := retry.NewAdaptiveMode(func(o *retry.AdaptiveModeOptions) {
		o.StandardOptions = append(o.StandardOptions, func(so *retry.StandardOptions) { so.Backoff = scaled })
	})
	return s.base(func(o *bedrockruntime.Options) { o.Retryer = rr })
}

func (s *sdkAdaptive) before(context.Context, int, job) error { return nil }

func (s *sdkAdaptive) retryAfter(err error, n int, rng *rand.Rand) time.Duration {
	return 0 // the SDK has already backed off and paces attempts itself
}

// --- strategy 3: the broker ---------------------------------------------------

type viaBroker struct {
	p    *plan
	base func(...func(*bedrockruntime.Options)) *bedrockruntime.Client
	conn []*grpc.ClientConn
}

func (v *viaBroker) client(c int, _ ...func(*bedrockruntime.Options)) *bedrockruntime.Client {
	cs := v.p.clients[c]
	prio := map[kind]quotaclient.Priority{kindEqual: quotaclient.PriorityStandard, kindInteractive: quotaclient.PriorityInteractive,
		kindBatch: quotaclient.PriorityBatch}[cs.kind]
	qc := quotaclient.New(v.conn[c%len(v.conn)], quotaclient.WithName(cs.name), quotaclient.WithPriority(prio),
		quotaclient.WithWait(2*time.Minute), quotaclient.WithRegion(v.p.region),
		quotaclient.WithThrottleRetries(3, time.Duration(float64(250*time.Millisecond)/v.p.cfg.speed)))
	return v.base(quotaclient.WithLeases(qc))
}

func (v *viaBroker) before(context.Context, int, job) error { return nil }

func (v *viaBroker) retryAfter(err error, n int, rng *rand.Rand) time.Duration {
	var re *quotaclient.RefusedError
	if errors.As(err, &re) {
		return re.RetryAfter // broker time is simulated time
	}
	var te *rttypes.ThrottlingException
	if errors.As(err, &te) {
		return 0 // the client has already backed off
	}
	return time.Second
}

// brokerProc is the broker in-process: bbolt file in a temp dir, Run loop,
// gRPC server on 127.0.0.1, one connection per four clients.
type brokerProc struct {
	b    *broker.Broker
	conn []*grpc.ClientConn
	stop func()
}

func startBroker(ctx context.Context, p *plan, clock broker.Clock) (*brokerProc, error) {
	dir, err := os.MkdirTemp("", "adapt-bench")
	if err != nil {
		return nil, err
	}
	store, err := bolt.Open(filepath.Join(dir, "state.db"), bolt.Options{NoSync: true})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b, err := broker.Open(ctx, store, clock, broker.Config{Logger: log, Adaptive: adaptiveCfg})
	if err != nil {
		store.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	key, err := broker.ParseModelID(p.model, p.region, p.region)
	if err != nil {
		return nil, err
	}
	// What discovery would find: the published quota, not the hidden one.
	if err := b.SetSpecs(ctx, []broker.Spec{{Key: key, Quota: broker.Limits{TPM: int64(p.published), RPM: int64(p.publishedR)}, Source: "bench: published quota"}}); err != nil {
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
	for range (len(p.clients) + 3) / 4 {
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
