package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"github.com/aws/aws-sdk-go-v2/service/servicequotas"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
	"github.com/bedrockqb/quotabroker/internal/increase"
)

const sonnetTPMCode = "L-CCB5CBE9" // cross-region TPM of Sonnet 4.5, default scenario

// TestIncreaseAgainstSimulator runs the broker on the simulator with
// CloudWatch on, sends Bedrock calls through it with the Go client, and
// checks that usage history and CloudWatch agree with what was sent, that
// increase shows evidence matching the traffic and files nothing without
// --yes, and that with --yes the request reaches Service Quotas.
func TestIncreaseAgainstSimulator(t *testing.T) {
	sim, err := bedrocksim.New(bedrocksim.Config{DisableLatency: true, Seed: 11})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim.Handler())
	defer hs.Close()
	addr, _ := inProcess(t, "serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "s.db"),
		"--aws-endpoint", hs.URL, "--cloudwatch", "--refresh", "1h")
	ctx := context.Background()
	c := dial(t, addr)
	// Six requests a minute, so that two more are refused.
	six := int64(6)
	if _, err := c.SetOverride(ctx, &pb.SetOverrideRequest{ModelId: sonnetProfile, Override: &pb.LimitOverride{RequestsPerMinute: &six}}); err != nil {
		t.Fatal(err)
	}

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	qc := quotaclient.New(conn, quotaclient.WithName("increase-test"))
	awsCfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""),
		BaseEndpoint: aws.String(hs.URL)}
	rt := bedrockruntime.NewFromConfig(awsCfg, quotaclient.WithLeases(qc))
	var calls, input, output int64
	for i := range 6 {
		out, err := rt.Converse(ctx, &bedrockruntime.ConverseInput{
			ModelId: aws.String(sonnetProfile),
			Messages: []rttypes.Message{{Role: rttypes.ConversationRoleUser, Content: []rttypes.ContentBlock{
				&rttypes.ContentBlockMemberText{Value: strings.Repeat("evidence ", 50*(i+1)) + "sim:output_tokens=" + strconv.Itoa(40*(i+1))}}}},
			InferenceConfig: &rttypes.InferenceConfiguration{MaxTokens: aws.Int32(400)},
		})
		if err != nil {
			t.Fatalf("call %d through the broker: %v", i, err)
		}
		calls++
		input += int64(aws.ToInt32(out.Usage.InputTokens))
		output += int64(aws.ToInt32(out.Usage.OutputTokens))
	}
	for range 2 {
		_, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnetProfile, InputTokens: 100, MaxOutputTokens: 100})
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("seventh request of the minute: %v", err)
		}
	}

	// Usage history, with CloudWatch's count of the same calls.
	hist, err := c.GetUsageHistory(ctx, &pb.GetUsageHistoryRequest{Model: "claude-sonnet-4-5",
		From: timestamppb.New(time.Now().Add(-10 * time.Minute)), To: timestamppb.New(time.Now().Add(time.Minute))})
	if err != nil {
		t.Fatal(err)
	}
	if hist.GetCloudwatchError() != "" || len(hist.GetSeries()) != 1 {
		t.Fatalf("history: %v", hist)
	}
	total := hist.GetSeries()[0].GetTotal()
	if total.GetSuccessful() != calls || total.GetRefused() != 2 || total.GetInputTokens() != input || total.GetOutputTokens() != output {
		t.Errorf("history total %v; sent %d calls, %d input, %d output tokens, 2 refused", total, calls, input, output)
	}
	if total.GetCloudwatchInvocations() != calls || total.GetCloudwatchInputTokens() != input || total.GetCloudwatchOutputTokens() != output {
		t.Errorf("CloudWatch in history: %d invocations, %d input, %d output; sent %d, %d, %d",
			total.GetCloudwatchInvocations(), total.GetCloudwatchInputTokens(), total.GetCloudwatchOutputTokens(), calls, input, output)
	}

	increaseJSON := func(args ...string) (increase.Report, error) {
		t.Helper()
		var out strings.Builder
		err := run(ctx, append([]string{"increase", "--model", sonnetProfile, "--addr", addr, "--aws-endpoint", hs.URL,
			"--period", "1h", "--output", "json"}, args...), &out, io.Discard)
		var rep increase.Report
		if jerr := json.Unmarshal([]byte(out.String()), &rep); jerr != nil {
			t.Fatalf("increase %v: output is not JSON (%v): %q, error %v", args, jerr, out.String(), err)
		}
		return rep, err
	}
	sq := servicequotas.NewFromConfig(awsCfg)
	simHistory := func() []float64 {
		t.Helper()
		h, err := sq.ListRequestedServiceQuotaChangeHistoryByQuota(ctx, &servicequotas.ListRequestedServiceQuotaChangeHistoryByQuotaInput{
			ServiceCode: aws.String("bedrock"), QuotaCode: aws.String(sonnetTPMCode)})
		if err != nil {
			t.Fatal(err)
		}
		var v []float64
		for _, r := range h.RequestedQuotas {
			v = append(v, aws.ToFloat64(r.DesiredValue))
		}
		return v
	}

	// The default rule: this little traffic does not justify more than
	// the quota, so nothing is asked for, and the evidence is shown.
	rep, err := increaseJSON()
	if err == nil || !strings.Contains(err.Error(), "not an increase") {
		t.Fatalf("default rule on light traffic: %v", err)
	}
	ev := rep.Evidence
	if ev.Calls != calls || ev.Successful != calls || ev.Refused != 2 || ev.Throttles != 0 || ev.Minutes < 1 {
		t.Errorf("evidence counts %+v; sent %d calls, 2 refused", ev, calls)
	}
	if ev.AvgInputTokens != float64(input)/float64(calls) || ev.AvgOutputTokens != float64(output)/float64(calls) {
		t.Errorf("evidence averages %.1f in, %.1f out; sent %.1f, %.1f", ev.AvgInputTokens, ev.AvgOutputTokens,
			float64(input)/float64(calls), float64(output)/float64(calls))
	}
	// Sonnet 4.5 charges output 5x. The calls may straddle a minute.
	if charged := input + 5*output; ev.TPM.Peak > charged || ev.TPM.Peak < charged/2 || ev.TPM.PeakDemand <= ev.TPM.Peak || ev.RPM.PeakDemand < 4 {
		t.Errorf("evidence TPM %+v RPM %+v; charged %d in all", ev.TPM, ev.RPM, charged)
	}
	if q := rep.Quota; q.QuotaCode != sonnetTPMCode || q.Value != 500_000 || !q.Adjustable || q.DefaultValue == nil {
		t.Errorf("quota %+v", q)
	}
	if rep.Filed != nil || len(simHistory()) != 0 {
		t.Fatalf("filed without --yes: %+v", rep.Filed)
	}

	// --desired, without --yes: shown, not filed.
	rep, err = increaseJSON("--desired", "750000")
	if err != nil || rep.Filed != nil || !strings.Contains(rep.Command, "--quota-code "+sonnetTPMCode+" --desired-value 750000") {
		t.Fatalf("--desired without --yes: %v, %+v", err, rep)
	}
	if h := simHistory(); len(h) != 0 {
		t.Fatalf("Service Quotas has requests without --yes: %v", h)
	}
	// With --yes: filed, and listed in the history.
	rep, err = increaseJSON("--desired", "750000", "--yes")
	if err != nil || rep.Filed == nil || rep.Filed.Status != "PENDING" || rep.Filed.Desired != 750_000 {
		t.Fatalf("--yes: %v, filed %+v", err, rep.Filed)
	}
	if h := simHistory(); len(h) != 1 || h[0] != 750_000 {
		t.Fatalf("Service Quotas history after --yes: %v", h)
	}
	if len(rep.History) != 1 || rep.History[0].ID != rep.Filed.ID {
		t.Errorf("history shown: %+v", rep.History)
	}
	// A second one while the first is pending: AWS refuses, worded.
	_, err = increaseJSON("--desired", "800000", "--yes")
	if err == nil || !strings.Contains(err.Error(), "ResourceAlreadyExistsException") || !strings.Contains(err.Error(), "request a quota increase") {
		t.Errorf("second request while pending: %v", err)
	}

	// The table names the evidence and the request.
	// (With --broker, the old name of --addr: it still works, and says it
	// is deprecated.)
	var out, errOut strings.Builder
	if err := run(ctx, []string{"increase", "--model", sonnetProfile, "--broker", addr, "--aws-endpoint", hs.URL, "--period", "1h", "--desired", "900000"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut.String(), "--broker is deprecated; use --addr") {
		t.Errorf("--broker: stderr %q, want a deprecation warning", errOut.String())
	}
	for _, want := range []string{"tokens (TPM)", "refused by the broker 2", sonnetTPMCode, "Not filed (add --yes", "750,000", "PENDING"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}

	// No traffic, no evidence.
	err = run(ctx, []string{"increase", "--model", "us.anthropic.claude-haiku-4-5-20251001-v1:0", "--addr", addr, "--aws-endpoint", hs.URL, "--period", "1h"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "no usage") {
		t.Errorf("increase without history: %v", err)
	}
}

func TestParsePeriod(t *testing.T) {
	for in, want := range map[string]time.Duration{"7d": 7 * 24 * time.Hour, "36h": 36 * time.Hour, "90m": 90 * time.Minute} {
		if got, err := parsePeriod(in); err != nil || got != want {
			t.Errorf("parsePeriod(%q) = %v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "0d", "-1d", "1.5d", "7days", "30s"} {
		if _, err := parsePeriod(bad); err == nil {
			t.Errorf("parsePeriod(%q) accepted", bad)
		}
	}
}
