package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
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
	broker := addDialFlags(fs)
	model := fs.String("model", "", "only budgets whose model id contains this")
	region := fs.String("region", "", "only budgets of this Region")
	output := fs.String("output", "table", "table or json")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this long")
	svg := fs.String("svg", "", "write the usage-history chart of the selected budgets (at most 50, busiest first) to this SVG file instead of printing the report; read from the broker's --http listener")
	httpAddr := fs.String("http-addr", envOr("QUOTA_BROKER_HTTP", "127.0.0.1:9464"), "with --svg: the broker's HTTP address (its --http) (env QUOTA_BROKER_HTTP)")
	span := fs.String("span", "hour", "with --svg: hour (1-minute steps) or day (15-minute steps)")
	if err := fs.Parse(args); err != nil {
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
	rep, err := pb.NewQuotaBrokerClient(conn).GetQuotaReport(ctx, &pb.GetQuotaReportRequest{Model: *model, Region: *region})
	if err != nil {
		return fmt.Errorf("get quota report from %s: %w", broker.addr, err)
	}
	if *output == "json" {
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(rep)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(stdout, string(b))
		return err
	}
	printReport(stdout, rep)
	return nil
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

func printReport(w io.Writer, rep *pb.GetQuotaReportResponse) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REGION\tSCOPE\tMODEL\tRPM used/limit\tTPM used/limit\tTPD used/limit\tUTIL\tLEASES\tWAIT\tGRANTED\tREFUSED\tTHROTTLED\tEXPIRED\tCEILING\t")
	for _, b := range rep.GetBudgets() {
		k, e, u, c := b.GetBudget().GetKey(), b.GetBudget().GetEffective(), b.GetUsage(), b.GetCounters()
		ceiling := "-"
		if a := b.GetBudget().GetAdaptive(); a.GetCeiling().GetTokensPerMinute() > 0 {
			ceiling = fmt.Sprintf("%d TPM", a.GetCeiling().GetTokensPerMinute())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.0f%%\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t\n",
			k.GetRegion(), strings.TrimPrefix(strings.ToLower(k.GetScope().String()), "scope_"), k.GetModel(),
			usedOf(u.GetRequestsLastMinute(), e.GetRequestsPerMinute()),
			usedOf(u.GetTokensLastMinute(), e.GetTokensPerMinute()),
			usedOf(u.GetTokensLastDay(), e.GetTokensPerDay()),
			100*b.GetUtilisation(), b.GetOutstandingLeases(), b.GetWaiters(),
			c.GetGranted(), c.GetRefused(), c.GetThrottled()+c.GetReportedThrottles(), c.GetExpired(), ceiling)
	}
	tw.Flush()
	printActivity(w, rep)
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

// printActivity adds, for budgets with traffic in the last day, what
// happened over the last hour and day, what oversized max_tokens cost, who
// used the budget and the AWS quotas behind it.
func printActivity(w io.Writer, rep *pb.GetQuotaReportResponse) {
	if e := rep.GetHistoryError(); e != "" {
		fmt.Fprintf(w, "\nno activity: %s\n", e)
		return
	}
	var active []*pb.BudgetReport
	for _, b := range rep.GetBudgets() {
		if d := b.GetActivity().GetLastDay(); d.GetGranted()+d.GetRefused()+d.GetCalls() > 0 {
			active = append(active, b)
		}
	}
	if len(active) == 0 {
		fmt.Fprintln(w, "\nno activity in the last day")
		return
	}
	fmt.Fprintln(w, "\nACTIVITY (whole minutes before now)")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MODEL\tSPAN\tCALLS\tOK\tTHROTTLED\tREFUSED\tEXPIRED\tRESERVED->SETTLED TOKENS\tOUTPUT p50/p99\tMAX_TOKENS ADVICE\t")
	for _, b := range active {
		a := b.GetActivity()
		for _, span := range []struct {
			name string
			s    *pb.UsageStats
		}{{"minute", a.GetLastMinute()}, {"hour", a.GetLastHour()}, {"day", a.GetLastDay()}} {
			model, pct, advice := "", "", ""
			if span.name == "minute" {
				model = b.GetBudget().GetKey().GetRegion() + " " + b.GetBudget().GetKey().GetModel()
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
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d (%.1f%%)\t%d\t%d\t%d->%d%s\t%s\t%s\t\n", model, span.name,
				span.s.GetCalls(), span.s.GetSuccessful(), span.s.GetThrottled(), 100*span.s.GetThrottleRate(),
				span.s.GetRefused(), span.s.GetExpired(), span.s.GetReservedTokens(), span.s.GetSettledTokens(), pct, p, advice)
		}
	}
	tw.Flush()
	for _, b := range active {
		k := b.GetBudget().GetKey()
		var top []string
		for _, c := range b.GetActivity().GetTopClients() {
			top = append(top, fmt.Sprintf("%s %d tokens/%d calls", cmp.Or(c.GetClient(), "(unnamed)"), c.GetUsage().GetWindowTokens(), c.GetUsage().GetCalls()))
		}
		if len(top) > 0 {
			fmt.Fprintf(w, "top clients, last hour, %s %s: %s\n", k.GetRegion(), k.GetModel(), strings.Join(top, "; "))
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
			fmt.Fprintf(w, "  %s quota %s %q: applied %d, %s, %s\n", q.GetLimit(), q.GetQuotaCode(), q.GetQuotaName(), q.GetAppliedValue(), def, adj)
		}
	}
}

func usedOf(used, limit int64) string {
	if limit == 0 {
		return fmt.Sprintf("%d/-", used)
	}
	return fmt.Sprintf("%d/%d", used, limit)
}
