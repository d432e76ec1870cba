package main

import (
	"context"
	"encoding/xml"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// TestDashboardAndReportSVG runs serve with --http: the dashboard is on the
// same listener as /metrics, / leads to it, and report --svg saves the
// chart of the traffic the broker just saw.
func TestDashboardAndReportSVG(t *testing.T) {
	data := filepath.Join(t.TempDir(), "state.db")
	addr, _ := inProcess(t, "serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", data)
	m, ok := metricsURL.Load(t.Name())
	if !ok {
		t.Fatal("serve printed no metrics URL")
	}
	httpAddr := strings.TrimSuffix(strings.TrimPrefix(m.(string), "http://"), "/metrics")

	c := dial(t, addr)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-quotabroker-client", "svc-a")
	for i := range 6 {
		resp, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnetProfile, InputTokens: 1000, MaxOutputTokens: 500})
		if status.Code(err) == codes.ResourceExhausted {
			continue // the throttle lowered the adaptive ceiling: a refusal is traffic too
		}
		if err != nil {
			t.Fatal(err)
		}
		outcome, usage := pb.Outcome_OUTCOME_SUCCESS, &pb.Usage{InputTokens: 1000, OutputTokens: 200}
		if i%3 == 2 {
			outcome, usage = pb.Outcome_OUTCOME_THROTTLED, nil
		}
		if _, err := c.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: resp.GetLease().GetLeaseId(), Outcome: outcome, Usage: usage}); err != nil {
			t.Fatal(err)
		}
	}
	sonnetKey := "us-east-1/cross-region/anthropic.claude-sonnet-4-5-20250929-v1:0"

	resp, err := http.Get("http://" + httpAddr + "/") // follows the redirect
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/dashboard" {
		t.Fatalf("GET /: %s at %s", resp.Status, resp.Request.URL)
	}
	if n := strings.Count(string(page), `data-budget="`+sonnetKey+`"`); n != 2 {
		t.Errorf("dashboard has %d charts of %s, want 2 (hour and day):\n%s", n, sonnetKey, page)
	}
	// serve hands the dashboard its alerter: the summary has the column.
	if !strings.Contains(string(page), "<th>alerts firing</th>") || !strings.Contains(string(page), `data-key="`+sonnetKey+`"`) {
		t.Errorf("dashboard summary lacks the alerts column or the sonnet row:\n%s", page)
	}

	file := filepath.Join(t.TempDir(), "sonnet.svg")
	var out strings.Builder
	if err := run(context.Background(), []string{"report", "--svg", file, "--http-addr", httpAddr, "--model", "sonnet", "--span", "day"}, &out, io.Discard); err != nil {
		t.Fatalf("report --svg: %v", err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		XMLName xml.Name
		Texts   []string `xml:"g>text"`
	}
	if err := xml.Unmarshal(b, &doc); err != nil || doc.XMLName.Local != "svg" {
		t.Fatalf("report --svg wrote no SVG (%v):\n%.300s", err, b)
	}
	var titles []string
	for _, s := range doc.Texts {
		if strings.Contains(s, " - last ") {
			titles = append(titles, strings.TrimSpace(s))
		}
	}
	// The global Sonnet budget matches the filter too, but has no traffic.
	if len(titles) != 1 || titles[0] != sonnetKey+" - last day" {
		t.Errorf("chart titles %q, want the one budget with traffic", titles)
	}
	if !strings.Contains(out.String(), "wrote "+file) {
		t.Errorf("report --svg said %q", out.String())
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--span", "week"}, "span"},
		{[]string{"--http-addr", addr}, addr}, // the gRPC port is not the dashboard
	} {
		args := append([]string{"report", "--svg", filepath.Join(t.TempDir(), "x.svg"), "--http-addr", httpAddr, "--timeout", "5s"}, c.args...)
		err := run(context.Background(), args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("report %v: error %v, want one naming %q", c.args, err, c.want)
		}
	}
}
