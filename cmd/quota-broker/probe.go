package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"

	"github.com/bedrockqb/quotabroker/broker/awsclient"
	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/probe"
)

const probeHelp = `usage: quota-broker probe --model ID [flags] [--confirm]

Finds where Bedrock starts throttling a model: calls it with a small fixed
Converse request at a rising rate, one step at a time, through the broker at
batch priority (real traffic goes first; the probe is refused first), and
stops when more than --threshold of the calls are throttled, when the
broker refuses the probe (its budget or adaptive ceiling is then the limit),
or after the last step. One line per step goes to stderr; the JSON result
(every step, the estimated effective limit, the broker's adaptive ceiling)
to --output. Without --confirm it prints the plan (steps, rates, calls,
tokens) and makes no Bedrock call.

Throttles are reported to the broker (settled as throttled), so its adaptive
ceiling drops for every client of the budget, as it would for real
traffic: probe when the budget is quiet.

The broker never lets the probe past its budget (quota x margin): a probe
finds a real limit below it, which is the common case. To probe above the
budget, have an admin raise it for the run with an override, not by going
around the broker, and clear it afterwards:

  grpcurl -plaintext -d '{"model_id": "MODEL", "override": {"tokens_per_minute": N, "requests_per_minute": M, "reason": "probe"}}' \
    BROKER quotabroker.v1.QuotaBroker/SetOverride
  ... quota-broker probe --confirm ...
  grpcurl -plaintext -d '{"model_id": "MODEL", "override": {}}' BROKER quotabroker.v1.QuotaBroker/SetOverride
`

// probeCommand runs "quota-broker probe" on the real clock.
func probeCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runProbe(ctx, args, stdout, stderr, probe.Wall)
}

// runProbe is the command with its clock injected: tests run it in the
// simulator's compressed time.
func runProbe(ctx context.Context, args []string, stdout, stderr io.Writer, clock probe.Clock) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setSynopsis(fs, probeHelp)
	env := func(name, def string) string { return envOr("QUOTA_BROKER_PROBE_"+name, def) }
	brokerFlags := addDialFlags(fs)
	brokerFlags.deprecatedAddr(fs, "broker", stderr)
	name := fs.String("name", env("NAME", "quota-broker-probe"), "client name the broker accounts the probe under (env QUOTA_BROKER_PROBE_NAME)")
	model := fs.String("model", env("MODEL", ""), "model or inference profile id to call, e.g. us.anthropic.claude-haiku-4-5-20251001-v1:0 (env QUOTA_BROKER_PROBE_MODEL)")
	region := fs.String("region", envOr("AWS_REGION", "us-east-1"), "AWS Region of the calls (env AWS_REGION)")
	endpoint := fs.String("bedrock-endpoint", envOr("QUOTA_BROKER_BEDROCK_ENDPOINT", ""), "base URL of bedrock-runtime, e.g. the simulator's http://127.0.0.1:8566; default AWS (env QUOTA_BROKER_BEDROCK_ENDPOINT)")
	stepSpec := fs.String("step", env("STEP", "1.25x"), "how the rate grows per step: a factor (1.25x) or an increment in RPM (+50) (env QUOTA_BROKER_PROBE_STEP)")
	output := fs.String("output", env("OUTPUT", "-"), "file for the JSON result; - is stdout (env QUOTA_BROKER_PROBE_OUTPUT)")
	confirm := fs.Bool("confirm", false, "run the plan (no environment fallback: the decision to send traffic is made on the command line)")
	var (
		startRPM, threshold float64
		stepDur, wait       time.Duration
		maxSteps, conc      int
		maxTokens           int
	)
	var parseErrs []error
	floatFlag := func(p *float64, flagName, envName string, def float64, help string) {
		v := def
		if s := env(envName, ""); s != "" {
			f, err := strconv.ParseFloat(s, 64)
			if err != nil {
				parseErrs = append(parseErrs, fmt.Errorf("QUOTA_BROKER_PROBE_%s: %w", envName, err))
			}
			v = f
		}
		fs.Float64Var(p, flagName, v, help+" (env QUOTA_BROKER_PROBE_"+envName+")")
	}
	intFlag := func(p *int, flagName, envName string, def int, help string) {
		v := def
		if s := env(envName, ""); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil {
				parseErrs = append(parseErrs, fmt.Errorf("QUOTA_BROKER_PROBE_%s: %w", envName, err))
			}
			v = n
		}
		fs.IntVar(p, flagName, v, help+" (env QUOTA_BROKER_PROBE_"+envName+")")
	}
	durFlag := func(p *time.Duration, flagName, envName string, def time.Duration, help string) {
		v := def
		if s := env(envName, ""); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil {
				parseErrs = append(parseErrs, fmt.Errorf("QUOTA_BROKER_PROBE_%s: %w", envName, err))
			}
			v = d
		}
		fs.DurationVar(p, flagName, v, help+" (env QUOTA_BROKER_PROBE_"+envName+")")
	}
	floatFlag(&startRPM, "start-rpm", "START_RPM", 10, "requests per minute of the first step")
	durFlag(&stepDur, "step-duration", "STEP_DURATION", time.Minute, "how long each step holds its rate; a minute or more, so Bedrock's burst allowance is spent")
	intFlag(&maxSteps, "max-steps", "MAX_STEPS", 10, "the most steps")
	intFlag(&maxTokens, "max-tokens", "MAX_TOKENS", 16, "max_tokens of each call")
	floatFlag(&threshold, "threshold", "THRESHOLD", 0.01, "stop when more than this share of Bedrock's answers are throttles")
	intFlag(&conc, "concurrency", "CONCURRENCY", 64, "the most calls in flight")
	durFlag(&wait, "wait", "WAIT", time.Second, "how long a call may queue in the broker before it counts as refused")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if err := errors.Join(parseErrs...); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("probe: unexpected argument %q", fs.Arg(0))
	}
	if *model == "" {
		return errors.New("probe: --model is required (the model or inference profile id to call)")
	}
	step, err := probe.ParseStep(*stepSpec)
	if err != nil {
		return fmt.Errorf("--step: %w", err)
	}
	if maxTokens <= 0 || maxTokens > 1<<20 {
		return fmt.Errorf("--max-tokens %d: want a positive number", maxTokens)
	}
	if threshold <= 0 || threshold >= 1 {
		return fmt.Errorf("--threshold %v: want a share in (0, 1), e.g. 0.01", threshold)
	}
	cfg := probe.Config{Model: *model, Region: *region, StartRPM: startRPM, Step: step, StepDuration: stepDur, MaxSteps: maxSteps,
		MaxTokens: int32(maxTokens), Threshold: threshold, Concurrency: conc, Clock: clock, Progress: stderr}

	conn, err := brokerFlags.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	rep := pb.NewQuotaBrokerClient(conn)

	// The plan shows the broker's budget when the broker answers; without
	// --confirm it is informative only, so a broker that does not answer
	// is noted rather than fatal.
	bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	budget, budgetErr := probe.FetchBudget(bctx, rep, *model, *region)
	cancel()
	plan, err := probe.NewPlan(cfg, budget)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	if budgetErr != nil {
		plan.BudgetErr = brokerError(brokerFlags.addr, budgetErr).Error()
	}
	if !*confirm {
		plan.Write(stdout)
		return errors.New("probe: nothing sent; run again with --confirm to send this traffic to Bedrock")
	}
	if budgetErr != nil {
		return fmt.Errorf("probe: %s", plan.BudgetErr)
	}
	plan.Write(stderr)
	fmt.Fprintln(stderr)

	awsCfg, err := awsclient.LoadConfig(ctx, *region, *endpoint)
	if err != nil {
		return err
	}
	qc := quotaclient.New(conn, quotaclient.WithName(*name), quotaclient.WithPriority(quotaclient.PriorityBatch),
		quotaclient.WithRegion(*region), quotaclient.WithWait(max(wait, 0)),
		// One attempt per call: each throttle is one of Bedrock's answers,
		// counted once (the middleware still reports it to the broker).
		quotaclient.WithThrottleRetries(1, 0))
	rt := bedrockruntime.NewFromConfig(awsCfg, quotaclient.WithLeases(qc))

	res, runErr := probe.Run(ctx, plan, rt, rep)
	if res != nil {
		if err := writeResult(*output, stdout, res); err != nil {
			return errors.Join(runErr, err)
		}
		if e := res.Estimate; e != nil {
			fmt.Fprintf(stderr, "stopped after step %d (%s): %s\nestimated effective limit: %.1f RPM, %.0f TPM (%s)\n",
				res.Stop.Step, res.Stop.Reason, res.Stop.Detail, e.RequestsPerMinute, e.TokensPerMinute, e.Note)
		}
		if c := res.BrokerCeiling; c != nil {
			fmt.Fprintf(stderr, "broker's adaptive ceiling: %d TPM, %d RPM\n", c.TokensPerMinute, c.RequestsPerMinute)
		}
	}
	if runErr != nil {
		return fmt.Errorf("probe: %w", runErr)
	}
	return nil
}

func writeResult(path string, stdout io.Writer, res *probe.Result) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if path == "-" || path == "" {
		_, err = stdout.Write(b)
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	return nil
}
