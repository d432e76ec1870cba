package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

// The workload's clients. Equal clients are identical (Jain's index is
// computed over them); the interactive client sends small requests at
// random times; batch clients flood the budget with large requests in the
// flood phase only.
type kind int

const (
	kindEqual kind = iota
	kindInteractive
	kindBatch
)

func (k kind) String() string {
	return [...]string{"standard", "interactive", "batch"}[k]
}

type clientSpec struct {
	name    string
	kind    kind
	workers int // closed-loop workers; 0 for the open-loop interactive client
}

// jobShape is the size distribution of one kind's requests (tokens).
type jobShape struct {
	inMin, inMax   int
	maxTokens      int
	outMin, outMax int
}

var shapes = map[kind]jobShape{
	kindEqual:       {inMin: 1000, inMax: 3000, maxTokens: 1000, outMin: 150, outMax: 500},
	kindInteractive: {inMin: 300, inMax: 800, maxTokens: 300, outMin: 50, outMax: 200},
	kindBatch:       {inMin: 4000, inMax: 8000, maxTokens: 2000, outMin: 500, outMax: 1500},
}

// interactiveGap is the mean simulated time between interactive requests
// (Poisson arrivals).
const interactiveGap = 2 * time.Second

// job is one Bedrock call a client wants to make.
type job struct {
	input, maxTokens, output int
	text                     string
}

// newJob draws the n-th job of worker w of client c: the same sequence for
// every strategy.
func (p *plan) newJob(c, w, n int) job {
	r := rand.New(rand.NewPCG(p.cfg.seed, uint64(c)<<40|uint64(w)<<24|uint64(n)))
	s := shapes[p.clients[c].kind]
	j := job{input: s.inMin + r.IntN(s.inMax-s.inMin+1), maxTokens: s.maxTokens, output: s.outMin + r.IntN(s.outMax-s.outMin+1)}
	// The simulator counts ceil(characters / 4) input tokens over every
	// string; the directive forces the output length.
	directive := fmt.Sprintf("sim:output_tokens=%d ", j.output)
	j.text = directive + strings.Repeat("tok ", max(0, j.input-len(directive)/4))
	return j
}

// plan is everything the strategies share: scenario, phases, clients.
type plan struct {
	cfg        config
	scenario   []byte // JSON, re-parsed for each strategy's fresh simulator
	region     string
	model      string  // as called: the us. profile
	quotaCode  string  // the TPM quota the scenario hides capacity under
	published  float64 // TPM
	publishedR float64 // RPM, 0 if the scenario has none
	hidden     float64
	burndown   float64
	drop       time.Duration // when the hidden capacity changes
	dropScale  float64       // by how much
	warmup     time.Duration // excluded from goodput, time to grant and fairness
	floodStart time.Duration
	floodEnd   time.Duration
	clients    []clientSpec
}

func newPlan(cfg config) (*plan, error) {
	sc := cfg.scenario
	p := &plan{cfg: cfg, region: sc.DefaultRegion}
	// The TPM row with a hidden capacity, and the one scheduled change of it.
	for _, q := range sc.Quotas[sc.DefaultRegion] {
		if q.Enforces != nil && q.Enforces.Metric == bedrocksim.MetricRPM {
			p.publishedR = q.Value
		}
		if q.Enforces != nil && q.Enforces.Metric == bedrocksim.MetricTPM {
			if p.quotaCode != "" {
				return nil, fmt.Errorf("scenario: more than one TPM quota in %s", sc.DefaultRegion)
			}
			p.quotaCode, p.published = q.Code, q.Value
			p.hidden = q.Value * sc.Runtime.TrueCapacityFraction
			if sc.Runtime.TrueCapacityFraction == 0 {
				p.hidden = q.Value
			}
			if q.TrueValue != nil {
				p.hidden = *q.TrueValue
			}
			p.model = "us." + q.Enforces.Model
			for _, m := range sc.Models {
				if m.ID == q.Enforces.Model {
					p.burndown = m.Burndown
				}
			}
		}
	}
	if p.quotaCode == "" || p.burndown == 0 {
		return nil, fmt.Errorf("scenario: want one TPM quota in %s on a model with an explicit burndown", sc.DefaultRegion)
	}
	if len(sc.Runtime.Changes) != 1 || sc.Runtime.Changes[0].ScaleTrue == nil || sc.Runtime.Changes[0].QuotaCode != p.quotaCode {
		return nil, fmt.Errorf("scenario: want exactly one runtime change, a scaleTrue of %s", p.quotaCode)
	}
	// Phases scale with the run; the scenario's change offset is written
	// for nominalDuration.
	d := cfg.duration
	ch := &sc.Runtime.Changes[0]
	ch.At = bedrocksim.Duration(time.Duration(float64(ch.At) * float64(d) / float64(nominalDuration)))
	p.drop, p.dropScale = time.Duration(ch.At), *ch.ScaleTrue
	p.warmup = d / 10
	p.floodStart, p.floodEnd = d*35/100, p.drop
	if !(p.warmup < p.floodStart && p.floodEnd <= p.drop && p.drop+time.Minute < d) {
		return nil, fmt.Errorf("scenario: the change at %v leaves no room for the phases of a %v run (need the flood before it and a minute after it)", p.drop, d)
	}
	b, err := json.Marshal(sc)
	if err != nil {
		return nil, err
	}
	p.scenario = b
	for i := range cfg.equal {
		p.clients = append(p.clients, clientSpec{name: fmt.Sprintf("standard-%d", i+1), kind: kindEqual, workers: cfg.workers})
	}
	p.clients = append(p.clients, clientSpec{name: "interactive", kind: kindInteractive})
	for i := range cfg.batch {
		p.clients = append(p.clients, clientSpec{name: fmt.Sprintf("batch-%d", i+1), kind: kindBatch, workers: 4})
	}
	return p, nil
}

// capacityAt is the hidden capacity (TPM) at simulated offset t.
func (p *plan) capacityAt(t time.Duration) float64 {
	if t >= p.drop {
		return p.hidden * p.dropScale
	}
	return p.hidden
}

// capacityTokens is the hidden capacity integrated over [from, to).
func (p *plan) capacityTokens(from, to time.Duration) float64 {
	seg := func(a, b time.Duration, c float64) float64 {
		if b <= a {
			return 0
		}
		return c * (b - a).Minutes()
	}
	return seg(from, min(to, p.drop), p.hidden) + seg(max(from, p.drop), to, p.hidden*p.dropScale)
}

func (p *plan) describe(out io.Writer) {
	c := p.cfg
	fmt.Fprintf(out, "Scenario: %s\n", c.scenario.Name)
	fmt.Fprintf(out, "  model %s in %s, quota %s: published %.0f TPM, hidden true capacity %.0f TPM (%.0f%%), x%.2f at %v (-> %.0f TPM)\n",
		p.model, p.region, p.quotaCode, p.published, p.hidden, 100*p.hidden/p.published, p.dropScale, p.drop, p.hidden*p.dropScale)
	fmt.Fprintf(out, "  Bedrock accounting: reserve input + max_tokens x %.0f at admission, settle input + output x %.0f; buckets refill continuously\n", p.burndown, p.burndown)
	fmt.Fprintf(out, "Time: %v simulated per strategy at speed %.0f (%.0fs real each); simulator, broker clock and workload sleeps share that scale.\n",
		c.duration, c.speed, c.duration.Seconds()/c.speed)
	fmt.Fprintf(out, "  The SDK's adaptive rate limiter reads the real clock (aws-sdk-go-v2 internal/sdk.NowTime): it alone runs unscaled; its backoff is scaled.\n")
	fmt.Fprintf(out, "  All durations below are simulated time.\n")
	fmt.Fprintf(out, "Phases: warm-up [0, %v) excluded from goodput, time to grant and fairness; batch flood [%v, %v); capacity drop at %v; end %v\n",
		p.warmup, p.floodStart, p.floodEnd, p.drop, c.duration)
	fmt.Fprintf(out, "Clients (%d), one bedrockruntime client each (Converse, real aws-sdk-go-v2 against the simulator on 127.0.0.1):\n", len(p.clients))
	for _, k := range []kind{kindEqual, kindInteractive, kindBatch} {
		n, w := 0, 0
		for _, cs := range p.clients {
			if cs.kind == k {
				n, w = n+1, cs.workers
			}
		}
		if n == 0 {
			continue
		}
		s := shapes[k]
		load := fmt.Sprintf("%d closed-loop workers each", w)
		switch k {
		case kindInteractive:
			load = fmt.Sprintf("open loop, Poisson arrivals every %v on average", interactiveGap)
		case kindBatch:
			load += ", flood phase only"
		}
		fmt.Fprintf(out, "  %d x %-11s priority %-11s input %d-%d, max_tokens %d, output %d-%d tokens; %s\n",
			n, k, k, s.inMin, s.inMax, s.maxTokens, s.outMin, s.outMax, load)
	}
	fmt.Fprintf(out, "Strategies:\n")
	fmt.Fprintf(out, "  tutorial      per-client token bucket of published TPM / %d clients = %.0f tokens/min (burst one minute), charged input + max_tokens\n",
		len(p.clients), p.published/float64(len(p.clients)))
	fmt.Fprintf(out, "                (what the tutorial counts: no burndown, no refund); ThrottlingException -> full-jitter backoff min(20s, 1s x 2^n), unbounded retries; SDK retries off\n")
	fmt.Fprintf(out, "  sdk-adaptive  retry.NewAdaptiveMode() per client with its defaults (3 attempts, CUBIC attempt-rate limiter); a call that still fails is resubmitted at once\n")
	fmt.Fprintf(out, "  broker        quota broker in-process (bbolt, NoSync; gRPC on 127.0.0.1), spec = the published quota (margin 0.9), quotaclient.WithLeases per client\n")
	fmt.Fprintf(out, "                (name, priority, wait 2m, its throttle retries 3 x full jitter from 250ms); a refusal is retried after its RetryAfter\n")
	fmt.Fprintf(out, "Seed %d; each strategy gets a fresh simulator with the same seed and the same job sequence per worker.\n\n", c.seed)
}
