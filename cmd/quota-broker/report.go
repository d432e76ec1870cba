package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// report prints a running broker's GetQuotaReport as a table, or as JSON
// (the proto's JSON form, zero values included, enums as names).
func report(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	broker := addDialFlags(fs)
	model := fs.String("model", "", "only budgets whose model id contains this")
	region := fs.String("region", "", "only budgets of this Region")
	output := fs.String("output", "table", "table or json")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
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
