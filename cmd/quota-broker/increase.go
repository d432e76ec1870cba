package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/servicequotas"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/awsclient"
	"github.com/bedrockqb/quotabroker/broker/awsquota"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// increase builds the evidence AWS asks for with a Bedrock quota increase
// request (steady and peak use, tokens per call, throttles and refusals),
// from the broker's usage history, next to the quota as Service Quotas
// holds it; it files the request only with --yes, and always shows the
// requests already made for that quota.
//
// The requested value, unless --desired says otherwise, is the peak
// per-minute demand divided by the broker's margin (the broker hands out
// quota x margin, so that is the quota that would have served the peak),
// rounded up to two significant digits. Demand in a minute is what was
// charged to the window plus what was refused: each refusal counts one
// request and, for TPM, the average charge of a granted request. A caller
// that retries after a refusal counts each refusal, so demand is an upper
// estimate when callers retry quickly.
func increase(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("increase", flag.ContinueOnError)
	fs.SetOutput(stderr)
	model := fs.String("model", "", "the model or inference profile id as callers invoke it, e.g. us.anthropic.claude-sonnet-4-5-20250929-v1:0 (required)")
	region := fs.String("region", envOr("QUOTA_BROKER_REGION", "us-east-1"), "AWS Region of the budget (env QUOTA_BROKER_REGION)")
	addr := fs.String("broker", envOr("QUOTA_BROKER_ADDR", "127.0.0.1:50051"), "broker gRPC address to read usage history from (env QUOTA_BROKER_ADDR)")
	periodFlag := fs.String("period", "7d", "how much history to base the evidence on: 7d, 36h, 90m")
	metric := fs.String("metric", "tpm", "the quota to raise: tpm or rpm")
	desired := fs.Float64("desired", 0, "the value to ask for; default: peak demand / margin, rounded up")
	endpoint := fs.String("aws-endpoint", envOr("QUOTA_BROKER_AWS_ENDPOINT", ""), "base URL for the AWS clients, e.g. the Bedrock simulator (env QUOTA_BROKER_AWS_ENDPOINT)")
	yes := fs.Bool("yes", false, "file the request with Service Quotas; without it nothing is filed")
	output := fs.String("output", "table", "table or json")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
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

	// The evidence, from the broker.
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return fmt.Errorf("broker %s: %w", *addr, err)
	}
	defer conn.Close()
	qb := pb.NewQuotaBrokerClient(conn)
	// The current minute is included, though partial: evidence is often
	// wanted right after a burst.
	to := time.Now()
	from := to.Add(-period)
	points, err := readHistory(ctx, qb, key, from, to)
	if err != nil {
		return err
	}
	margin := 1.0
	budgets, err := qb.ListBudgets(ctx, &pb.ListBudgetsRequest{})
	if err != nil {
		return fmt.Errorf("list budgets from %s: %w", *addr, err)
	}
	for _, b := range budgets.GetBudgets() {
		if keyOf(b.GetKey()) == key && b.GetMargin() > 0 {
			margin = b.GetMargin()
		}
	}
	ev := buildEvidence(key, from, to, points, margin)
	if ev.Minutes == 0 {
		return fmt.Errorf("no usage of %s through the broker at %s from %s to %s: the evidence is the broker's history, so traffic must go through it (and history is kept for serve --history-retention)",
			key, *addr, from.Format(time.RFC3339), to.Format(time.RFC3339))
	}

	// The quota, from Service Quotas.
	src, err := awsquota.New(awsquota.Config{Regions: []string{key.Region}, Endpoint: *endpoint})
	if err != nil {
		return err
	}
	res, err := src.Inspect(ctx)
	if err != nil {
		return err
	}
	q, err := findQuota(res.Quotas, key, *metric)
	if err != nil {
		return err
	}
	rep := increaseReport{Evidence: ev, Quota: q, Metric: *metric}
	rep.Desired, rep.Rule = *desired, "--desired"
	if *desired == 0 {
		rep.Desired, rep.Rule = ev.suggest(*metric)
	}
	rep.Command = fmt.Sprintf("aws service-quotas request-service-quota-increase --region %s --service-code bedrock --quota-code %s --desired-value %s",
		key.Region, q.QuotaCode, strconv.FormatFloat(rep.Desired, 'f', -1, 64))

	cfg, err := awsclient.LoadConfig(ctx, key.Region, *endpoint)
	if err != nil {
		return err
	}
	sq := servicequotas.NewFromConfig(cfg, func(o *servicequotas.Options) { o.HTTPClient = awsclient.SafeBodies(o.HTTPClient) })
	var problem error
	switch {
	case !q.Adjustable:
		problem = fmt.Errorf("quota %s (%s) is not adjustable: AWS does not take increase requests for it", q.QuotaCode, q.QuotaName)
	case rep.Desired <= q.Value:
		problem = fmt.Errorf("asking for %s is not an increase: the quota %s is %s already; pass --desired to ask for more",
			fmtNum(rep.Desired), q.QuotaCode, fmtNum(q.Value))
	case *yes:
		out, err := sq.RequestServiceQuotaIncrease(ctx, &servicequotas.RequestServiceQuotaIncreaseInput{
			ServiceCode: aws.String("bedrock"), QuotaCode: aws.String(q.QuotaCode), DesiredValue: aws.Float64(rep.Desired),
		})
		if err != nil {
			problem = awsclient.Describe("request a quota increase", "servicequotas:RequestServiceQuotaIncrease", key.Region, err)
		} else if rq := out.RequestedQuota; rq != nil {
			rep.Filed = &requestedChange{ID: aws.ToString(rq.Id), Status: string(rq.Status), Desired: aws.ToFloat64(rq.DesiredValue),
				Created: aws.ToTime(rq.Created), CaseID: aws.ToString(rq.CaseId)}
		}
	}
	if problem != nil {
		rep.Problem = problem.Error()
	}
	if rep.History, err = changeHistory(ctx, sq, key.Region, q.QuotaCode); err != nil {
		rep.HistoryError = err.Error()
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printIncrease(stdout, &rep, *yes)
	}
	return problem
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

// historyChunk is how much history one GetUsageHistory asks for: a day of
// minutes, well inside the broker's 10,000 points and a small message.
const historyChunk = 24 * time.Hour

// readHistory returns the per-minute points of key's budget in [from, to).
func readHistory(ctx context.Context, qb pb.QuotaBrokerClient, key broker.Key, from, to time.Time) ([]*pb.UsagePoint, error) {
	var points []*pb.UsagePoint
	for start := from; start.Before(to); start = start.Add(historyChunk) {
		end := start.Add(historyChunk)
		if end.After(to) {
			end = to
		}
		resp, err := qb.GetUsageHistory(ctx, &pb.GetUsageHistoryRequest{
			Region: key.Region, Model: key.Model,
			From: timestamppb.New(start), To: timestamppb.New(end), Step: durationpb.New(time.Minute),
		})
		if err != nil {
			return nil, fmt.Errorf("read usage history: %w", err)
		}
		for _, s := range resp.GetSeries() {
			if keyOf(s.GetBudget()) == key {
				points = append(points, s.GetPoints()...)
			}
		}
	}
	return points, nil
}

func keyOf(k *pb.BudgetKey) broker.Key {
	var scope broker.Scope
	switch k.GetScope() {
	case pb.Scope_SCOPE_ON_DEMAND:
		scope = broker.ScopeOnDemand
	case pb.Scope_SCOPE_CROSS_REGION:
		scope = broker.ScopeCrossRegion
	case pb.Scope_SCOPE_GLOBAL:
		scope = broker.ScopeGlobal
	}
	return broker.Key{Region: k.GetRegion(), Scope: scope, Model: k.GetModel()}
}

// figures are a per-minute use over the minutes with traffic.
type figures struct {
	Steady int64 `json:"steady"` // median
	P95    int64 `json:"p95"`
	Peak   int64 `json:"peak"`
	// PeakDemand adds what was refused to what was charged.
	PeakDemand int64 `json:"peak_demand"`
}

type evidence struct {
	Budget     string    `json:"budget"`
	From       time.Time `json:"from"`
	To         time.Time `json:"to"`
	Minutes    int       `json:"minutes_with_traffic"`
	Calls      int64     `json:"calls"`
	Successful int64     `json:"successful"`
	Throttles  int64     `json:"throttles"`
	Refused    int64     `json:"refused"`
	// Per successful call.
	AvgInputTokens  float64 `json:"avg_input_tokens"`
	AvgOutputTokens float64 `json:"avg_output_tokens"`
	TPM             figures `json:"tpm"`
	RPM             figures `json:"rpm"`
	Margin          float64 `json:"margin"`
}

// buildEvidence reads per-minute points. A minute has traffic when the
// budget granted or refused in it (settlements alone, of calls granted the
// minute before, charge nothing to it).
func buildEvidence(key broker.Key, from, to time.Time, points []*pb.UsagePoint, margin float64) evidence {
	ev := evidence{Budget: key.String(), From: from, To: to, Margin: margin}
	var inTok, outTok, winTok, winReq int64
	for _, p := range points {
		ev.Calls += p.GetCalls()
		ev.Successful += p.GetSuccessful()
		ev.Throttles += p.GetThrottled() + p.GetReportedThrottles()
		ev.Refused += p.GetRefused()
		inTok += p.GetInputTokens()
		outTok += p.GetOutputTokens()
		winTok += p.GetWindowTokens()
		winReq += p.GetWindowRequests()
	}
	if ev.Successful > 0 {
		ev.AvgInputTokens = float64(inTok) / float64(ev.Successful)
		ev.AvgOutputTokens = float64(outTok) / float64(ev.Successful)
	}
	var avgCharge float64 // per granted request, to price a refusal
	if winReq > 0 {
		avgCharge = float64(winTok) / float64(winReq)
	}
	var tpm, rpm []int64
	for _, p := range points {
		if p.GetGranted() == 0 && p.GetWindowRequests() == 0 && p.GetRefused() == 0 {
			continue
		}
		ev.Minutes++
		tpm = append(tpm, p.GetWindowTokens())
		rpm = append(rpm, p.GetWindowRequests())
		ev.TPM.PeakDemand = max(ev.TPM.PeakDemand, p.GetWindowTokens()+int64(math.Ceil(float64(p.GetRefused())*avgCharge)))
		ev.RPM.PeakDemand = max(ev.RPM.PeakDemand, p.GetWindowRequests()+p.GetRefused())
	}
	fill := func(f *figures, v []int64) {
		if len(v) == 0 {
			return
		}
		slices.Sort(v)
		f.Steady, f.P95, f.Peak = rank(v, 0.5), rank(v, 0.95), v[len(v)-1]
	}
	fill(&ev.TPM, tpm)
	fill(&ev.RPM, rpm)
	return ev
}

// rank is the nearest-rank q-quantile of sorted v.
func rank(v []int64, q float64) int64 {
	i := int(math.Ceil(q*float64(len(v)))) - 1
	return v[max(i, 0)]
}

// suggest is the value to ask for and the rule that gave it.
func (ev *evidence) suggest(metric string) (float64, string) {
	f := ev.TPM
	if metric == "RPM" {
		f = ev.RPM
	}
	v := roundUp2(float64(f.PeakDemand) / ev.Margin)
	return v, fmt.Sprintf("peak demand %s per minute / margin %g = %s, rounded up to two significant digits",
		fmtNum(float64(f.PeakDemand)), ev.Margin, fmtNum(float64(f.PeakDemand)/ev.Margin))
}

// roundUp2 rounds v up to two significant digits: 1,234,567 -> 1,300,000.
func roundUp2(v float64) float64 {
	if v <= 0 {
		return 0
	}
	unit := math.Pow(10, math.Max(0, math.Floor(math.Log10(v))-1))
	return math.Ceil(v/unit-1e-9) * unit
}

// findQuota is the Service Quotas row that sets metric on key's budget;
// when two wordings set it, the lower, as the broker enforces.
func findQuota(qs []awsquota.Quota, key broker.Key, metric string) (awsquota.Quota, error) {
	var found []awsquota.Quota
	for _, q := range qs {
		if q.Region == key.Region && strings.EqualFold(q.Metric, metric) && q.Scope == key.Scope.String() && q.ModelID == key.Model {
			found = append(found, q)
		}
	}
	if len(found) == 0 {
		return awsquota.Quota{}, fmt.Errorf("Service Quotas in %s lists no %s quota for %s calls of %s (quota-broker discover lists what it has)",
			key.Region, metric, key.Scope, key.Model)
	}
	slices.SortFunc(found, func(a, b awsquota.Quota) int { return cmp.Compare(a.Value, b.Value) })
	return found[0], nil
}

type requestedChange struct {
	ID          string    `json:"id"`
	Status      string    `json:"status"`
	Desired     float64   `json:"desired_value"`
	Created     time.Time `json:"created"`
	LastUpdated time.Time `json:"last_updated,omitzero"`
	CaseID      string    `json:"case_id,omitempty"`
}

type increaseReport struct {
	Evidence evidence       `json:"evidence"`
	Quota    awsquota.Quota `json:"quota"`
	Metric   string         `json:"metric"`
	Desired  float64        `json:"desired_value"`
	Rule     string         `json:"rule"`
	// Command is the request as an AWS CLI command line.
	Command string `json:"command"`
	// Filed is the request made (--yes); nil when none was.
	Filed *requestedChange `json:"filed"`
	// Problem is why no request can be filed.
	Problem      string            `json:"problem,omitempty"`
	History      []requestedChange `json:"history"`
	HistoryError string            `json:"history_error,omitempty"`
}

// changeHistory lists the requests made for a quota, newest first.
func changeHistory(ctx context.Context, sq *servicequotas.Client, region, code string) ([]requestedChange, error) {
	out := []requestedChange{}
	var token *string
	for page := 0; page < 100; page++ {
		resp, err := sq.ListRequestedServiceQuotaChangeHistoryByQuota(ctx, &servicequotas.ListRequestedServiceQuotaChangeHistoryByQuotaInput{
			ServiceCode: aws.String("bedrock"), QuotaCode: aws.String(code), NextToken: token,
		})
		if err != nil {
			return out, awsclient.Describe("list quota increase requests", "servicequotas:ListRequestedServiceQuotaChangeHistoryByQuota", region, err)
		}
		for _, c := range resp.RequestedQuotas {
			out = append(out, requestedChange{ID: aws.ToString(c.Id), Status: string(c.Status), Desired: aws.ToFloat64(c.DesiredValue),
				Created: aws.ToTime(c.Created), LastUpdated: aws.ToTime(c.LastUpdated), CaseID: aws.ToString(c.CaseId)})
		}
		if resp.NextToken == nil || *resp.NextToken == "" || (token != nil && *token == *resp.NextToken) {
			break
		}
		token = resp.NextToken
	}
	return out, nil
}

func printIncrease(w io.Writer, r *increaseReport, yes bool) {
	ev, q := &r.Evidence, &r.Quota
	fmt.Fprintf(w, "Evidence for %s, %s to %s (%d minutes with traffic), from the broker's history:\n",
		ev.Budget, ev.From.UTC().Format("2006-01-02 15:04"), ev.To.UTC().Format("2006-01-02 15:04 MST"), ev.Minutes)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  per minute\tsteady (median)\tp95\tpeak\tpeak demand (with refusals)\t")
	fmt.Fprintf(tw, "  tokens (TPM)\t%s\t%s\t%s\t%s\t\n", fmtNum(float64(ev.TPM.Steady)), fmtNum(float64(ev.TPM.P95)), fmtNum(float64(ev.TPM.Peak)), fmtNum(float64(ev.TPM.PeakDemand)))
	fmt.Fprintf(tw, "  requests (RPM)\t%s\t%s\t%s\t%s\t\n", fmtNum(float64(ev.RPM.Steady)), fmtNum(float64(ev.RPM.P95)), fmtNum(float64(ev.RPM.Peak)), fmtNum(float64(ev.RPM.PeakDemand)))
	tw.Flush()
	fmt.Fprintf(w, "  average tokens per call: %.0f input, %.0f output\n", ev.AvgInputTokens, ev.AvgOutputTokens)
	fmt.Fprintf(w, "  calls %d (successful %d), throttled by Bedrock %d, refused by the broker %d\n\n", ev.Calls, ev.Successful, ev.Throttles, ev.Refused)
	def := "unknown"
	if q.DefaultValue != nil {
		def = fmtNum(*q.DefaultValue)
	}
	fmt.Fprintf(w, "Quota %s %q in %s: applied %s, AWS default %s, adjustable %v\n", q.QuotaCode, q.QuotaName, q.Region, fmtNum(q.Value), def, q.Adjustable)
	fmt.Fprintf(w, "Requested value: %s (%s)\n", fmtNum(r.Desired), r.Rule)
	switch {
	case r.Problem != "":
		fmt.Fprintf(w, "\nNot filed: %s\n", r.Problem)
	case r.Filed != nil:
		fmt.Fprintf(w, "\nFiled: request %s, status %s, desired %s\n", r.Filed.ID, r.Filed.Status, fmtNum(r.Filed.Desired))
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
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t\n", c.Created.UTC().Format("2006-01-02 15:04"), fmtNum(c.Desired), c.Status, c.ID, c.CaseID)
		}
		tw.Flush()
	}
}

// fmtNum prints a quota-sized number with thousands separators.
func fmtNum(v float64) string {
	s := strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
