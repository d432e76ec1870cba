package main

import (
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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// report prints a running broker's GetQuotaReport as a table, or as JSON
// (the proto's JSON form, zero values included, enums as names). With
// --svg it writes the dashboard's chart of usage history instead.
func report(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", envOr("QUOTA_BROKER_ADDR", "127.0.0.1:50051"), "broker gRPC address (env QUOTA_BROKER_ADDR)")
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
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("broker %s: %w", *addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	rep, err := pb.NewQuotaBrokerClient(conn).GetQuotaReport(ctx, &pb.GetQuotaReportRequest{Model: *model, Region: *region})
	if err != nil {
		return fmt.Errorf("get quota report from %s: %w", *addr, err)
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
	}
}

func usedOf(used, limit int64) string {
	if limit == 0 {
		return fmt.Sprintf("%d/-", used)
	}
	return fmt.Sprintf("%d/%d", used, limit)
}
