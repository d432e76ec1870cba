package bedrocksim

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
)

func TestCloudWatchMetricsFollowTraffic(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario()) // Llama: 2 RPM
	ctx := context.Background()
	// Minute one: 2 successes, 3 throttles. Minute two: 1 success.
	for range 5 {
		_, _ = h.rt.Converse(ctx, converseIn(llama31, prompt(10), 100))
	}
	h.clock.Advance(time.Minute)
	if _, err := h.rt.Converse(ctx, converseIn(llama31, prompt(10), 100)); err != nil {
		t.Fatal(err)
	}
	now := h.sim.Now()
	query := func(id, metric, stat string) cwtypes.MetricDataQuery {
		return cwtypes.MetricDataQuery{Id: aws.String(id), MetricStat: &cwtypes.MetricStat{
			Metric: &cwtypes.Metric{Namespace: aws.String("AWS/Bedrock"), MetricName: aws.String(metric),
				Dimensions: []cwtypes.Dimension{{Name: aws.String("ModelId"), Value: aws.String(llama31)}}},
			Period: aws.Int32(60), Stat: aws.String(stat),
		}}
	}
	out, err := h.cw.GetMetricData(ctx, &cloudwatch.GetMetricDataInput{
		StartTime: aws.Time(now.Add(-10 * time.Minute)), EndTime: aws.Time(now.Add(time.Minute)),
		MetricDataQueries: []cwtypes.MetricDataQuery{
			query("inv", "Invocations", "Sum"), query("thr", "InvocationThrottles", "Sum"),
			query("out", "OutputTokenCount", "Sum"), query("tpm", "EstimatedTPMQuotaUsage", "Sum"),
		},
		ScanBy: cwtypes.ScanByTimestampAscending,
	})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]float64{}
	for _, r := range out.MetricDataResults {
		if r.StatusCode != cwtypes.StatusCodeComplete || len(r.Timestamps) != len(r.Values) {
			t.Fatalf("result %s: %+v", *r.Id, r)
		}
		got[*r.Id] = r.Values
		for i := 1; i < len(r.Timestamps); i++ {
			if r.Timestamps[i].Sub(r.Timestamps[i-1]) != time.Minute {
				t.Fatalf("%s timestamps %v", *r.Id, r.Timestamps)
			}
		}
	}
	want := map[string][]float64{"inv": {2, 1}, "thr": {3}, "out": {200, 100}, "tpm": {220, 110}}
	for id, w := range want {
		if len(got[id]) != len(w) {
			t.Fatalf("%s = %v, want %v", id, got[id], w)
		}
		for i := range w {
			if got[id][i] != w[i] {
				t.Fatalf("%s = %v, want %v", id, got[id], w)
			}
		}
	}

	stats, err := h.cw.GetMetricStatistics(ctx, &cloudwatch.GetMetricStatisticsInput{
		Namespace: aws.String("AWS/Bedrock"), MetricName: aws.String("Invocations"),
		Dimensions: []cwtypes.Dimension{{Name: aws.String("ModelId"), Value: aws.String(llama31)}},
		StartTime:  aws.Time(now.Add(-time.Hour)), EndTime: aws.Time(now.Add(time.Minute)), Period: aws.Int32(3600),
		Statistics: []cwtypes.Statistic{cwtypes.StatisticSum, cwtypes.StatisticSampleCount},
	})
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, dp := range stats.Datapoints {
		sum += *dp.Sum
	}
	if sum != 3 {
		t.Fatalf("GetMetricStatistics Invocations sum = %v over %d datapoints, want 3", sum, len(stats.Datapoints))
	}
}

func TestAdminEndpoint(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario())
	resp, err := http.Post(h.url+"/_sim/capacity", "application/json",
		strings.NewReader(`{"region":"us-east-1","quotaCode":"L-HAIKUTPM","setTrue":10}`))
	if err != nil {
		t.Fatal(err)
	}
	var qs QuotaStats
	if err := json.NewDecoder(resp.Body).Decode(&qs); err != nil || resp.StatusCode != 200 || qs.TrueCapacity != 10 || qs.Applied != 20000 {
		t.Fatalf("capacity: %d %+v %v", resp.StatusCode, qs, err)
	}
	resp.Body.Close()
	if _, err := h.rt.Converse(context.Background(), converseIn(haiku3, "hi", 100)); err == nil {
		t.Fatal("request admitted above the lowered capacity")
	}
	resp, err = http.Get(h.url + "/_sim/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.Throttles != 1 || len(st.Quotas) == 0 {
		t.Fatalf("stats: %+v %v", st, err)
	}
	bad, err := http.Post(h.url+"/_sim/capacity", "application/json", strings.NewReader(`{"quotaCode":"L-NOPE","setTrue":1}`))
	if err != nil {
		t.Fatal(err)
	}
	bad.Body.Close()
	if bad.StatusCode != 400 {
		t.Fatalf("unknown quota: status %d", bad.StatusCode)
	}
}

// TestAWSCLI checks that the AWS CLI, a second independent client, parses
// what the simulator sends.
func TestAWSCLI(t *testing.T) {
	t.Parallel()
	aws := tool(t, "aws")
	h := newHarness(t, nil)
	// Only dummy credentials and no config files: the CLI must not find
	// anything of the machine's own AWS setup.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	env = append(env, "AWS_ACCESS_KEY_ID=AKID", "AWS_SECRET_ACCESS_KEY=SECRET",
		"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_PAGER=")
	run := func(args ...string) map[string]json.RawMessage {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, aws, append(args, "--endpoint-url", h.url, "--region", "us-east-1", "--output", "json")...)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			var stderr string
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			t.Fatalf("aws %v: %v\n%s", args, err, stderr)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("aws %v printed %q: %v", args, out, err)
		}
		return m
	}
	var quotas []struct{ QuotaCode, QuotaName string }
	if err := json.Unmarshal(run("service-quotas", "list-service-quotas", "--service-code", "bedrock")["Quotas"], &quotas); err != nil {
		t.Fatal(err)
	}
	if want := len(h.sim.Scenario().Quotas["us-east-1"]); len(quotas) != want {
		t.Fatalf("aws CLI listed %d quotas (following NextToken through the empty page), want %d", len(quotas), want)
	}
	var models []struct{ ModelId string }
	if err := json.Unmarshal(run("bedrock", "list-foundation-models")["modelSummaries"], &models); err != nil {
		t.Fatal(err)
	}
	if len(models) != len(h.sim.Scenario().Models) {
		t.Fatalf("aws CLI listed %d models", len(models))
	}
}
