package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/increase"
)

// increaseCommand shows the evidence AWS asks for with a Bedrock quota
// increase request (steady and peak use, tokens per call, throttles and
// refusals), from the broker's usage history, next to the quota as Service
// Quotas holds it; it files the request only with --yes, and always shows
// the requests already made for that quota. Package increase builds the
// evidence and talks to Service Quotas; this is its flags and printing.
func increaseCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("increase", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setSynopsis(fs, `usage: quota-broker increase --model ID [--region R] [--yes] [flags]

Shows the evidence AWS asks for with a Bedrock quota increase (steady and
peak use per minute, tokens per call, throttles and refusals) from the
broker's usage history over --period, next to the quota as Service Quotas
holds it, and the requests already made for it. Only with --yes does it file
the request (Service Quotas RequestServiceQuotaIncrease). The model must be
one of the broker's budgets and have traffic through it.`)
	model := fs.String("model", "", "the model or inference profile id as callers invoke it, e.g. us.anthropic.claude-sonnet-4-5-20250929-v1:0 (required)")
	region := fs.String("region", envOr("QUOTA_BROKER_REGION", "us-east-1"), "AWS Region of the budget (env QUOTA_BROKER_REGION)")
	brokerFlags := addDialFlags(fs)
	brokerFlags.deprecatedAddr(fs, "broker", stderr)
	periodFlag := fs.String("period", "7d", "how much history to base the evidence on: 7d, 36h, 90m")
	metric := fs.String("metric", "tpm", "the quota to raise: tpm or rpm")
	desired := fs.Float64("desired", 0, "the value to ask for; default: peak demand / margin, rounded up")
	endpoint := fs.String("aws-endpoint", envOr("QUOTA_BROKER_AWS_ENDPOINT", ""), "base URL for the AWS clients, e.g. the Bedrock simulator (env QUOTA_BROKER_AWS_ENDPOINT)")
	yes := fs.Bool("yes", false, "file the request with Service Quotas; without it nothing is filed")
	output := fs.String("output", "table", "table or json")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("increase: unexpected argument %q", fs.Arg(0))
	}
	if *model == "" {
		return errors.New("--model is required: the model or inference profile id callers invoke")
	}
	key, err := broker.ParseModelID(*model, *region, *region)
	if err != nil {
		return fmt.Errorf("--model %q: %w", *model, err)
	}
	period, err := parsePeriod(*periodFlag)
	if err != nil {
		return fmt.Errorf("--period: %w", err)
	}
	*metric = strings.ToUpper(*metric)
	if *metric != "TPM" && *metric != "RPM" {
		return fmt.Errorf("--metric %q: want tpm or rpm", strings.ToLower(*metric))
	}
	if *desired < 0 || math.IsNaN(*desired) || math.IsInf(*desired, 0) {
		return fmt.Errorf("--desired %v: want a positive number", *desired)
	}
	if *output != "table" && *output != "json" {
		return fmt.Errorf("--output %q: want table or json", *output)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	// The evidence, from the broker. A week of history is a large message.
	conn, err := brokerFlags.dial(grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64 << 20)))
	if err != nil {
		return err
	}
	defer conn.Close()
	// The current minute is included, though partial: evidence is often
	// wanted right after a burst.
	to := time.Now()
	from := to.Add(-period)
	ev, err := increase.Collect(ctx, pb.NewQuotaBrokerClient(conn), key, from, to)
	var unknown *increase.UnknownBudgetError
	switch {
	case errors.As(err, &unknown):
		return unknownModel(*model, brokerFlags.addr, unknown)
	case err != nil:
		return brokerError(brokerFlags.addr, err)
	}
	if ev.Minutes == 0 {
		return fmt.Errorf("no usage of %s through the broker at %s from %s to %s: the evidence is the broker's history, so traffic must go through it (and history is kept for serve --history-retention)",
			key, brokerFlags.addr, from.Format(time.RFC3339), to.Format(time.RFC3339))
	}

	// The quota, from Service Quotas, and the request.
	rep, err := increase.Prepare(ctx, ev, increase.Options{Key: key, Metric: *metric, Desired: *desired, File: *yes, Endpoint: *endpoint})
	if err != nil {
		return err
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
		return rep.Err()
	}
	printIncrease(stdout, rep, *yes)
	if rep.Err() != nil {
		// The table said why ("Not filed: ..."); saying it again on stderr
		// printed AWS's error twice.
		return errors.New("increase: nothing filed (the reason is above)")
	}
	return nil
}

// unknownModel is the error for a --model the broker has no budget for,
// with the budgets whose ids come nearest.
func unknownModel(model, addr string, e *increase.UnknownBudgetError) error {
	var ids []string
	byModel := map[string][]string{}
	for _, k := range e.Known {
		if _, ok := byModel[k.Model]; !ok {
			ids = append(ids, k.Model)
		}
		byModel[k.Model] = append(byModel[k.Model], k.String())
	}
	// The id as given may carry a profile prefix (us.) or be an ARN: the
	// budget's model is the part that counts.
	var near []string
	for _, id := range nearModels(e.Key.Model, ids, 2) {
		near = append(near, byModel[id]...)
	}
	what := fmt.Sprintf("unknown model %q: the broker at %s has no budget %s", model, addr, e.Key)
	if len(near) == 0 {
		return fmt.Errorf("%s, nor one near it; quota-broker report --wide lists them all", what)
	}
	return fmt.Errorf("%s; the nearest are %s (call us.MODEL for cross-region, global.MODEL for global; quota-broker report --wide lists them all)", what, strings.Join(near, ", "))
}

// parsePeriod reads a duration that may be given in days ("7d").
func parsePeriod(s string) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("%q: want a whole number of days, e.g. 7d", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%q: want e.g. 7d, 36h or 90m", s)
		}
	}
	if d < time.Minute || d > 400*24*time.Hour {
		return 0, fmt.Errorf("%q: want between 1m and 400d", s)
	}
	return d, nil
}

func printIncrease(w io.Writer, r *increase.Report, yes bool) {
	ev, q := &r.Evidence, &r.Quota
	fmt.Fprintf(w, "Evidence for %s, %s to %s (%d minutes with traffic), from the broker's history:\n",
		ev.Budget, ev.From.UTC().Format("2006-01-02 15:04"), ev.To.UTC().Format("2006-01-02 15:04 MST"), ev.Minutes)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  per minute\tsteady (median)\tp95\tpeak\tpeak demand (with refusals)\t")
	fmt.Fprintf(tw, "  tokens (TPM)\t%s\t%s\t%s\t%s\t\n", increase.Thousands(float64(ev.TPM.Steady)), increase.Thousands(float64(ev.TPM.P95)), increase.Thousands(float64(ev.TPM.Peak)), increase.Thousands(float64(ev.TPM.PeakDemand)))
	fmt.Fprintf(tw, "  requests (RPM)\t%s\t%s\t%s\t%s\t\n", increase.Thousands(float64(ev.RPM.Steady)), increase.Thousands(float64(ev.RPM.P95)), increase.Thousands(float64(ev.RPM.Peak)), increase.Thousands(float64(ev.RPM.PeakDemand)))
	tw.Flush()
	fmt.Fprintf(w, "  average tokens per call: %.0f input, %.0f output\n", ev.AvgInputTokens, ev.AvgOutputTokens)
	fmt.Fprintf(w, "  calls %d (successful %d), throttled by Bedrock %d, refused by the broker %d\n\n", ev.Calls, ev.Successful, ev.Throttles, ev.Refused)
	def := "unknown"
	if q.DefaultValue != nil {
		def = increase.Thousands(*q.DefaultValue)
	}
	fmt.Fprintf(w, "Quota %s %q in %s: applied %s, AWS default %s, adjustable %v\n", q.QuotaCode, q.QuotaName, q.Region, increase.Thousands(q.Value), def, q.Adjustable)
	fmt.Fprintf(w, "Requested value: %s (%s)\n", increase.Thousands(r.Desired), r.Rule)
	switch {
	case r.Problem != "":
		fmt.Fprintf(w, "\nNot filed: %s\n", r.Problem)
	case r.Filed != nil:
		fmt.Fprintf(w, "\nFiled: request %s, status %s, desired %s\n", r.Filed.ID, r.Filed.Status, increase.Thousands(r.Filed.Desired))
	case !yes:
		fmt.Fprintf(w, "\nNot filed (add --yes to file it). The request:\n  %s\n", r.Command)
	}
	fmt.Fprintf(w, "\nIncrease requests for %s:\n", q.QuotaCode)
	switch {
	case r.HistoryError != "":
		fmt.Fprintf(w, "  cannot list them: %s\n", r.HistoryError)
	case len(r.History) == 0:
		fmt.Fprintln(w, "  none")
	default:
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  CREATED\tDESIRED\tSTATUS\tID\tCASE\t")
		for _, c := range r.History {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t\n", c.Created.UTC().Format("2006-01-02 15:04"), increase.Thousands(c.Desired), c.Status, c.ID, c.CaseID)
		}
		tw.Flush()
	}
}
