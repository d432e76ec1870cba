package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// report prints a running broker's GetQuotaReport as a table, or as JSON
// (the proto's JSON form, zero values included, enums as names). With
// --svg it writes the dashboard's chart of usage history instead.
func report(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setSynopsis(fs, `usage: quota-broker report [--model ID] [--region R] [--wide] [flags]

Prints a running broker's quota report: for each budget with traffic its
limits and use in the sliding minute and day, utilisation, leases, waiters,
refusals, throttles and adaptive ceiling; the budgets without traffic in one
line (--wide lists them, with every counter); then the activity of the last
minute, hour and day, the max_tokens advice, the top clients, the AWS
quotas behind each budget and the state of quota discovery. --model keeps
the budgets whose model id contains it; a model no budget matches is an
error that names the nearest ids. --output json prints the whole report.
--svg writes the dashboard's usage chart instead (from the --http listener).`)
	broker := addDialFlags(fs)
	model := fs.String("model", "", "only budgets whose model id contains this")
	region := fs.String("region", "", "only budgets of this Region")
	output := fs.String("output", "table", "table or json")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this long")
	svg := fs.String("svg", "", "write the usage-history chart of the selected budgets (at most 50, busiest first) to this SVG file instead of printing the report; read from the broker's --http listener")
	httpAddr := fs.String("http-addr", envOr("QUOTA_BROKER_HTTP", "127.0.0.1:9464"), "with --svg: the broker's HTTP address (its --http) (env QUOTA_BROKER_HTTP)")
	span := fs.String("span", "hour", "with --svg: hour (1-minute steps) or day (15-minute steps)")
	wide := fs.Bool("wide", false, "every budget, idle ones too, with every counter and the quotas' names (wider than 200 columns)")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if *svg != "" {
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		return writeChart(ctx, *httpAddr, url.Values{"model": {*model}, "region": {*region}, "span": {*span}}, *svg, stdout)
	}
	if *output != "table" && *output != "json" {
		return fmt.Errorf("--output %q: want table or json", *output)
	}
	conn, err := broker.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	client := pb.NewQuotaBrokerClient(conn)
	rep, err := client.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{Model: *model, Region: *region})
	if err != nil {
		return brokerError(broker.addr, err)
	}
	if len(rep.GetBudgets()) == 0 && (*model != "" || *region != "") {
		return unknownBudget(ctx, client, broker.addr, *model, *region)
	}
	if *output == "json" {
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(rep)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(stdout, string(b))
		return err
	}
	printReport(stdout, rep, *wide || *model != "" || *region != "")
	return nil
}

// unknownBudget is the error for a --model or --region no budget matches:
// an empty table would read as "no traffic", so it says the name is
// unknown and lists the nearest model ids the broker has.
func unknownBudget(ctx context.Context, client pb.QuotaBrokerClient, addr, model, region string) error {
	all, err := client.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
	if err != nil {
		return brokerError(addr, err)
	}
	var models, regions []string
	for _, b := range all.GetBudgets() {
		k := b.GetBudget().GetKey()
		models = append(models, k.GetModel())
		if !slices.Contains(regions, k.GetRegion()) {
			regions = append(regions, k.GetRegion())
		}
	}
	if model == "" {
		return fmt.Errorf("unknown region %q: the broker at %s has budgets in %s", region, addr, strings.Join(regions, ", "))
	}
	what := fmt.Sprintf("unknown model %q: no budget of the broker at %s has a model id containing it", model, addr)
	if region != "" {
		what = fmt.Sprintf("unknown model %q in %s: no budget of the broker at %s in that Region has a model id containing it", model, region, addr)
	}
	near := nearModels(model, models, 5)
	if len(near) == 0 {
		return fmt.Errorf("%s, nor one near it; quota-broker report --wide lists them all", what)
	}
	return fmt.Errorf("%s; did you mean %s? (quota-broker report --wide lists them all)", what, strings.Join(near, ", "))
}

// writeChart saves the chart the broker's dashboard serves. Usage history
// is not in the gRPC API, so the chart comes from the HTTP listener, drawn
// by the same code as the dashboard page.
func writeChart(ctx context.Context, addr string, q url.Values, path string, stdout io.Writer) error {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u := strings.TrimSuffix(base, "/") + "/dashboard/chart.svg?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("--http-addr %q: %w", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("get chart from %s (is the broker serving --http there?): %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxChartBytes+1))
	if err != nil {
		return fmt.Errorf("read chart from %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get chart from %s: %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	if ct := resp.Header.Get("Content-Type"); ct != "image/svg+xml" {
		return fmt.Errorf("get chart from %s: got %q, not an SVG (is %s the broker's --http address?)", u, ct, addr)
	}
	if len(body) > maxChartBytes {
		return fmt.Errorf("get chart from %s: larger than %d bytes", u, maxChartBytes)
	}
	if err := os.WriteFile(path, body, 0o644); err != nil {
		return fmt.Errorf("write chart: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s (%d bytes)\n", path, len(body))
	return nil
}

// maxChartBytes bounds what report --svg reads: 50 charts are about 2 MB.
const maxChartBytes = 32 << 20

// printReport prints the report as a table. The default fits 120 columns:
// budgets without traffic are counted in one line rather than listed (an
// account has about 50 budgets, most of them idle), numbers are short
// (1.8M) and the rarer counters are left to the wide view, which lists
// every budget with every counter (and is what --model and --region show).
func printReport(w io.Writer, rep *pb.GetQuotaReportResponse, wide bool) {
	printCluster(w, rep.GetCluster())
	if wide {
		printBudgetsWide(w, rep)
	} else {
		printBudgets(w, rep)
	}
	printActivity(w, rep, wide)
	printSpend(w, rep.GetSpend(), wide)
	printRoutes(w, rep)
	if d := rep.GetDiscovery(); d != nil {
		age := "never"
		if d.GetQuotaAge() != nil {
			age = d.GetQuotaAge().AsDuration().Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(w, "\nquotas discovered %s; %d quotas skipped", age, len(d.GetSkipped()))
		if d.GetLastError() != "" {
			fmt.Fprintf(w, "; last refresh failed: %s", d.GetLastError())
		}
		fmt.Fprintln(w)
		for _, p := range d.GetProvisioned() {
			fmt.Fprintf(w, "provisioned throughput %s (%s): %s, %d model units, %s %s\n", p.GetName(), p.GetRegion(),
				p.GetModel(), p.GetModelUnits(), p.GetStatus(), cmp.Or(p.GetCommitment(), "no commitment"))
		}
		for _, n := range d.GetNotes() {
			fmt.Fprintf(w, "note: %s\n", n)
		}
	}
}

func printBudgetsWide(w io.Writer, rep *pb.GetQuotaReportResponse) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REGION\tSCOPE\tMODEL\tRPM used/limit\tTPM used/limit\tTPD used/limit\tUTIL\tLEASES\tWAIT\tGRANTED\tREFUSED\tTHROTTLED\tEXPIRED\tCEILING\t")
	for _, b := range rep.GetBudgets() {
		k, e, u, c := b.GetBudget().GetKey(), b.GetBudget().GetEffective(), b.GetUsage(), b.GetCounters()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.0f%%\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t\n",
			k.GetRegion(), scopeName(k.GetScope()), k.GetModel(),
			usedOf(u.GetRequestsLastMinute(), e.GetRequestsPerMinute()),
			usedOf(u.GetTokensLastMinute(), e.GetTokensPerMinute()),
			usedOf(u.GetTokensLastDay(), e.GetTokensPerDay()),
			100*b.GetUtilisation(), b.GetOutstandingLeases(), b.GetWaiters(),
			c.GetGranted(), c.GetRefused(), c.GetThrottled()+c.GetReportedThrottles(), c.GetExpired(), ceilingOf(b, strconv.FormatInt))
	}
	tw.Flush()
}

// printBudgets prints the budgets with traffic, narrowly; the Region
// column only when the budgets span more than one.
func printBudgets(w io.Writer, rep *pb.GetQuotaReportResponse) {
	var busy []*pb.BudgetReport
	regions := map[string]bool{}
	for _, b := range rep.GetBudgets() {
		regions[b.GetBudget().GetKey().GetRegion()] = true
		if !idle(b) {
			busy = append(busy, b)
		}
	}
	if len(busy) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		region := func(k *pb.BudgetKey) string { return "" }
		head := "MODEL\tSCOPE\tRPM\tTPM\tUTIL\tWAIT\tREFUSED\tTHROTTLED\tCEILING"
		if len(regions) > 1 {
			region = func(k *pb.BudgetKey) string { return k.GetRegion() + "\t" }
			head = "REGION\t" + head
		}
		fmt.Fprintln(tw, head)
		for _, b := range busy {
			k, e, u, c := b.GetBudget().GetKey(), b.GetBudget().GetEffective(), b.GetUsage(), b.GetCounters()
			fmt.Fprintf(tw, "%s%s\t%s\t%s\t%s\t%.0f%%\t%d\t%d\t%d\t%s\n",
				region(k), k.GetModel(), scopeName(k.GetScope()),
				shortOf(u.GetRequestsLastMinute(), e.GetRequestsPerMinute()),
				shortOf(u.GetTokensLastMinute(), e.GetTokensPerMinute()),
				100*b.GetUtilisation(), b.GetWaiters(),
				c.GetRefused(), c.GetThrottled()+c.GetReportedThrottles(), ceilingOf(b, short))
		}
		tw.Flush()
	}
	if n := len(rep.GetBudgets()) - len(busy); n > 0 {
		if len(busy) > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%d idle budgets (no traffic in the last day) not shown: quota-broker report --wide lists every budget\n", n)
	}
	if len(busy) > 0 {
		fmt.Fprintln(w, "RPM and TPM: used in the sliding minute / the broker's limit; REFUSED, THROTTLED: since the broker started")
	}
}

// idle reports whether a budget has had no traffic in the last day and has
// none now, and no adaptive ceiling to show.
func idle(b *pb.BudgetReport) bool {
	u, c := b.GetUsage(), b.GetCounters()
	return u.GetRequestsLastMinute() == 0 && u.GetTokensLastDay() == 0 && b.GetOutstandingLeases() == 0 && b.GetWaiters() == 0 &&
		c.GetGranted()+c.GetRefused()+c.GetThrottled()+c.GetReportedThrottles()+c.GetExpired() == 0 &&
		b.GetBudget().GetAdaptive().GetCeiling().GetTokensPerMinute() == 0
}

func scopeName(s pb.Scope) string {
	return strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(s.String()), "scope_"), "_", "-")
}

func ceilingOf(b *pb.BudgetReport, format func(int64, int) string) string {
	if a := b.GetBudget().GetAdaptive(); a.GetCeiling().GetTokensPerMinute() > 0 {
		return format(a.GetCeiling().GetTokensPerMinute(), 10) + " TPM"
	}
	return "-"
}

// short writes n in at most four characters and a unit: 950, 9.5k, 95k,
// 1.8M, 2.6G. (Its second argument is ignored: it has strconv.FormatInt's
// shape so the two are interchangeable.)
func short(n int64, _ int) string {
	f := float64(n)
	for _, u := range []struct {
		div  float64
		unit string
	}{{1e9, "G"}, {1e6, "M"}, {1e3, "k"}} {
		if f >= u.div {
			v := f / u.div
			if v < 10 && math.Round(v*10) < 100 {
				return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64) + u.unit
			}
			return strconv.FormatFloat(math.Round(v), 'f', -1, 64) + u.unit
		}
	}
	return strconv.FormatInt(n, 10)
}

func shortOf(used, limit int64) string {
	if limit == 0 {
		return short(used, 10) + "/-"
	}
	return short(used, 10) + "/" + short(limit, 10)
}

// printActivity adds, for budgets with traffic in the last day, what
// happened over the last hour and day, what oversized max_tokens cost, who
// used the budget and the AWS quotas behind it. Narrow, the output lengths
// and the max_tokens advice go on a line of their own, expiries and the
// quotas' names are left to the wide view.
func printActivity(w io.Writer, rep *pb.GetQuotaReportResponse, wide bool) {
	if e := rep.GetHistoryError(); e != "" {
		fmt.Fprintf(w, "\nno activity: %s\n", e)
		return
	}
	var active []*pb.BudgetReport
	regions := map[string]bool{}
	for _, b := range rep.GetBudgets() {
		if d := b.GetActivity().GetLastDay(); d.GetGranted()+d.GetRefused()+d.GetCalls() > 0 {
			active = append(active, b)
			regions[b.GetBudget().GetKey().GetRegion()] = true
		}
	}
	if len(active) == 0 {
		fmt.Fprintln(w, "\nno activity in the last day")
		return
	}
	fmt.Fprintln(w, "\nACTIVITY (whole minutes before now)")
	num := strconv.FormatInt
	if !wide {
		num = short
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if wide {
		fmt.Fprintln(tw, "MODEL\tSPAN\tCALLS\tOK\tTHROTTLED\tREFUSED\tEXPIRED\tRESERVED->SETTLED TOKENS\tOUTPUT p50/p99\tMAX_TOKENS ADVICE\t")
	} else {
		fmt.Fprintln(tw, "MODEL\tSPAN\tCALLS\tOK\tTHROTTLED\tREFUSED\tRESERVED->SETTLED TOKENS")
	}
	for _, b := range active {
		a := b.GetActivity()
		for _, span := range []struct {
			name string
			s    *pb.UsageStats
		}{{"minute", a.GetLastMinute()}, {"hour", a.GetLastHour()}, {"day", a.GetLastDay()}} {
			model, pct, advice := "", "", ""
			if span.name == "minute" {
				model = b.GetBudget().GetKey().GetModel()
				if wide || len(regions) > 1 {
					model = b.GetBudget().GetKey().GetRegion() + " " + model
				}
			}
			if r := span.s.GetReservedTokens(); r > 0 {
				pct = fmt.Sprintf(" (%.0f%% held back)", 100*float64(r-span.s.GetSettledTokens())/float64(r))
			}
			p := "-"
			if span.name == "day" {
				p = fmt.Sprintf("%d/%d", a.GetOutputTokensP50(), a.GetOutputTokensP99())
				advice = a.GetRecommendationNote()
				if n := a.GetRecommendedMaxTokens(); n > 0 {
					advice = fmt.Sprintf("%d: %s", n, advice)
				}
			}
			if wide {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d (%.1f%%)\t%d\t%d\t%d->%d%s\t%s\t%s\t\n", model, span.name,
					span.s.GetCalls(), span.s.GetSuccessful(), span.s.GetThrottled(), 100*span.s.GetThrottleRate(),
					span.s.GetRefused(), span.s.GetExpired(), span.s.GetReservedTokens(), span.s.GetSettledTokens(), pct, p, advice)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d (%.1f%%)\t%d\t%s->%s%s\n", model, span.name,
				span.s.GetCalls(), span.s.GetSuccessful(), span.s.GetThrottled(), 100*span.s.GetThrottleRate(),
				span.s.GetRefused(), num(span.s.GetReservedTokens(), 10), num(span.s.GetSettledTokens(), 10), pct)
		}
	}
	tw.Flush()
	for _, b := range active {
		k := b.GetBudget().GetKey()
		var top []string
		for _, c := range b.GetActivity().GetTopClients() {
			top = append(top, fmt.Sprintf("%s %s tokens/%d calls", cmp.Or(c.GetClient(), "(unnamed)"), num(c.GetUsage().GetWindowTokens(), 10), c.GetUsage().GetCalls()))
		}
		if len(top) > 0 {
			fmt.Fprintf(w, "top clients, last hour, %s %s: %s\n", k.GetRegion(), k.GetModel(), strings.Join(top, "; "))
		}
		if a := b.GetActivity(); !wide {
			// Narrow, the advice (a sentence) is here rather than in the table.
			advice := a.GetRecommendationNote()
			if n := a.GetRecommendedMaxTokens(); n > 0 {
				advice = fmt.Sprintf("%d: %s", n, advice)
			}
			fmt.Fprintf(w, "  max_tokens advice: %s (output tokens p50/p99 %d/%d)\n", advice, a.GetOutputTokensP50(), a.GetOutputTokensP99())
		}
		for _, q := range b.GetBudget().GetQuotas() {
			def := "default unknown"
			if q.GetDefaultValue() > 0 {
				def = fmt.Sprintf("default %d", q.GetDefaultValue())
			}
			adj := "not adjustable"
			if q.GetAdjustable() {
				adj = "adjustable"
			}
			name := ""
			if wide {
				name = fmt.Sprintf(" %q", q.GetQuotaName())
			}
			fmt.Fprintf(w, "  %s quota %s%s: applied %d, %s, %s\n", q.GetLimit(), q.GetQuotaCode(), name, q.GetAppliedValue(), def, adj)
		}
	}
}

func usedOf(used, limit int64) string {
	if limit == 0 {
		return fmt.Sprintf("%d/-", used)
	}
	return fmt.Sprintf("%d/%d", used, limit)
}

// printRoutes lists each route's targets in order with where its calls
// went and why; nothing when the broker serves no route.
func printRoutes(w io.Writer, rep *pb.GetQuotaReportResponse) {
	if len(rep.GetRoutes()) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROUTE\t#\tREGION\tCALL\tROOM\tAFFINITY\tSPILL\tWAITED\tWAITING\t")
	for _, r := range rep.GetRoutes() {
		for i, t := range r.GetTargets() {
			name := ""
			if i == 0 {
				name = fmt.Sprintf("%s (refused %d)", r.GetName(), r.GetRefused())
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t\n", name, i+1, t.GetBudget().GetRegion(), t.GetModelId(),
				t.GetRoom(), t.GetAffinity(), t.GetSpill(), t.GetWaited(), t.GetWaiters())
		}
	}
	tw.Flush()
}

// printCluster is the report's header for a replica of a cluster: its role,
// the leader, when the leadership last moved, and etcd's state.
func printCluster(w io.Writer, c *pb.Cluster) {
	if c == nil {
		return
	}
	fmt.Fprintln(w, clusterLine(c))
	if c.GetRole() != "leader" {
		fmt.Fprintf(w, "a standby reports no budgets: quota-broker report --addr %s\n", cmp.Or(c.GetLeader(), "LEADER"))
	}
	fmt.Fprintln(w)
}

// clusterLine says in one line what a replica is (report, dashboard).
func clusterLine(c *pb.Cluster) string {
	since := "never seen to move"
	if c.GetLeaderSince() != nil {
		since = "since " + c.GetLeaderSince().AsTime().Local().Format(time.DateTime)
	}
	etcd := "etcd reachable"
	if !c.GetEtcdReachable() {
		etcd = "etcd UNREACHABLE: " + c.GetEtcdError()
	}
	line := fmt.Sprintf("cluster: %s is the %s; leader %s (%s); %s", c.GetSelf(), c.GetRole(), cmp.Or(c.GetLeader(), "none known"), since, etcd)
	if sc := c.GetStandbyCopy(); sc != nil {
		line += "; " + standbyCopyLine(sc)
	}
	return line
}

// standbyCopyLine says how far a standby's copy of the state is: what
// taking over would cost it.
func standbyCopyLine(sc *pb.StandbyCopy) string {
	switch {
	case !sc.GetFollowing():
		return "no copy of the state (would read all of it to take over): " + sc.GetError()
	case sc.GetRevision() >= sc.GetEtcdRevision():
		return fmt.Sprintf("copy of the state in sync (etcd revision %d)", sc.GetRevision())
	}
	return fmt.Sprintf("copy of the state %d revisions behind (at %d of %d)", sc.GetEtcdRevision()-sc.GetRevision(), sc.GetRevision(), sc.GetEtcdRevision())
}
