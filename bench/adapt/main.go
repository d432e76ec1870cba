// Command adapt compares three ways of sharing one Amazon Bedrock budget whose
// real capacity is hidden below the published quota, against the project's
// Bedrock simulator, with the real aws-sdk-go-v2 bedrockruntime client:
//
//  1. tutorial: the common tutorial's client, a per-process token bucket
//     sized to the published quota divided by the number of clients, plus
//     exponential backoff with full jitter on every ThrottlingException;
//  2. sdk-adaptive: aws-sdk-go-v2's adaptive retry mode
//     (retry.NewAdaptiveMode()), one per client, as documented;
//  3. broker: the Quota Broker in-process (bbolt store, gRPC server on
//     127.0.0.1) with its Go client, quotaclient.WithLeases.
//
// Each strategy runs the same workload (same clients, same jobs, same seed)
// against a fresh simulator, one after the other, and the command prints a
// table of goodput, throttle rate, time to grant, fairness, the interactive
// priority's wait under a batch flood, and recovery after the hidden
// capacity drops by 40%, with each metric's definition.
//
//	go run ./bench/adapt                        # full run, about 3.5 minutes
//	go run ./bench/adapt -short                 # CI: under a minute
//	go run ./bench/adapt -strategies broker -duration 6m
//
// Time is compressed: the simulator, the broker's clock and every sleep of the
// workload run at -speed (10: a simulated minute in six real seconds). The
// SDK's adaptive rate limiter cannot be given a clock (it reads time.Now
// through an internal package), so it alone runs in real time; its backoff
// delays are scaled. The output says so.
package main

import (
	"context"
	_ "embed"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

//go:embed scenario.json
var scenarioJSON []byte

// nominalDuration is the run length the scenario file's change offsets are
// written for; other durations rescale them.
const nominalDuration = 10 * time.Minute

// adaptiveCfg is the broker's adaptive configuration; the zero value is
// the broker's defaults.
var adaptiveCfg broker.AdaptiveConfig

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "adapt bench:", err)
		os.Exit(1)
	}
}

type config struct {
	duration   time.Duration // simulated
	speed      float64
	equal      int // equal standard clients
	workers    int // closed-loop workers per equal client
	batch      int // batch clients in the flood
	seed       uint64
	scenario   *bedrocksim.Scenario
	strategies []string
	verbose    bool
	short      bool // CI mode: targets are information only
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("adapt", flag.ContinueOnError)
	duration := fs.Duration("duration", nominalDuration, "simulated length of each strategy's run")
	speed := fs.Float64("speed", 10, "time compression: simulated seconds per real second (simulator, broker clock and workload sleeps)")
	clients := fs.Int("clients", 8, "equal standard-priority clients (Jain's index is over these); one interactive and -batch batch clients are added")
	workers := fs.Int("workers", 6, "closed-loop workers (concurrent calls) per equal client")
	batch := fs.Int("batch", 3, "batch clients that flood the budget in the flood phase")
	seed := fs.Uint64("seed", 1, "seed of the workload and the simulator")
	scenarioPath := fs.String("scenario", "", "scenario file (default: the embedded bench/adapt/scenario.json)")
	strategies := fs.String("strategies", "tutorial,sdk-adaptive,broker", "strategies to run, comma-separated")
	short := fs.Bool("short", false, "CI mode: -duration 4m -speed 20 (under a minute in all)")
	verbose := fs.Bool("v", false, "print a per-10s timeline of each run")
	fs.Float64Var(&adaptiveCfg.Beta, "beta", 0, "broker Adaptive.Beta (0: the broker's default)")
	fs.Float64Var(&adaptiveCfg.MaxCut, "maxcut", 0, "broker Adaptive.MaxCut (0: default)")
	fs.DurationVar(&adaptiveCfg.Recovery, "recovery", 0, "broker Adaptive.Recovery (0: default)")
	fs.Float64Var(&adaptiveCfg.Probe, "probe", 0, "broker Adaptive.Probe (0: default)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *short {
		*duration, *speed = 4*time.Minute, 20
	}
	if *duration < 2*time.Minute || *speed <= 0 || *clients < 2 || *workers < 1 || *batch < 0 {
		return fmt.Errorf("want -duration >= 2m, -speed > 0, -clients >= 2, -workers >= 1, -batch >= 0")
	}
	var sc *bedrocksim.Scenario
	var err error
	if *scenarioPath != "" {
		sc, err = bedrocksim.LoadScenario(*scenarioPath)
	} else {
		sc, err = bedrocksim.ParseScenario(scenarioJSON)
	}
	if err != nil {
		return err
	}
	cfg := config{duration: *duration, speed: *speed, equal: *clients, workers: *workers, batch: *batch,
		seed: *seed, scenario: sc, verbose: *verbose, short: *short}
	for _, s := range strings.Split(*strategies, ",") {
		s = strings.TrimSpace(s)
		switch s {
		case stratTutorial, stratSDK, stratBroker:
			cfg.strategies = append(cfg.strategies, s)
		default:
			return fmt.Errorf("-strategies: unknown %q (want tutorial, sdk-adaptive, broker)", s)
		}
	}
	plan, err := newPlan(cfg)
	if err != nil {
		return err
	}
	plan.describe(out)
	var results []*result
	for _, s := range cfg.strategies {
		fmt.Fprintf(out, "running %s ... ", s)
		start := time.Now()
		r, err := runStrategy(context.Background(), plan, s)
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
		fmt.Fprintf(out, "%.0fs real\n", time.Since(start).Seconds())
		if cfg.verbose {
			r.timeline(out)
		}
		results = append(results, r)
	}
	fmt.Fprintln(out)
	printTable(out, plan, results)
	return nil
}
