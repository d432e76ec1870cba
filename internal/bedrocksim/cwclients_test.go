package bedrocksim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/smithy-go"
)

// These tests drive CloudWatch with three independent clients, one per
// protocol: aws-sdk-go-v2 (rpc-v2-cbor), the AWS CLI v1 and boto3
// (awsJson1_0), and boto3 with its CloudWatch model switched to the query
// protocol (what older botocore spoke). The tools are skipped when missing,
// unless CI is set.

// tool finds an executable or skips the test (fails it under CI).
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not on PATH, and CI is set: install it", name)
		}
		t.Skipf("%s not on PATH; install it to run this check", name)
	}
	return p
}

// awsEnv is the environment without any of the machine's own AWS setup:
// dummy credentials and no config files.
func awsEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	env = append(env, "AWS_ACCESS_KEY_ID=AKID", "AWS_SECRET_ACCESS_KEY=SECRET", "AWS_DEFAULT_REGION=us-east-1",
		"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_PAGER=")
	return append(env, extra...)
}

// runTool runs a command and returns its stdout, stderr and exit code.
func runTool(t *testing.T, env []string, name string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// llamaTraffic sends five calls in one minute to Llama (2 RPM): two
// succeed, three are throttled.
func llamaTraffic(t *testing.T, h *harness) {
	t.Helper()
	for range 5 {
		_, _ = h.rt.Converse(context.Background(), converseIn(llama31, prompt(10), 100))
	}
}

func TestCloudWatchAWSCLI(t *testing.T) {
	t.Parallel()
	awsBin := tool(t, "aws")
	h := newHarness(t, testScenario())
	llamaTraffic(t, h)
	env := awsEnv()
	cli := func(args ...string) map[string]any {
		t.Helper()
		out, stderr, code := runTool(t, env, awsBin, append(args, "--endpoint-url", h.url, "--output", "json")...)
		if code != 0 {
			t.Fatalf("aws %v: exit %d\n%s", args, code, stderr)
		}
		m := map[string]any{}
		if strings.TrimSpace(out) != "" {
			if err := json.Unmarshal([]byte(out), &m); err != nil {
				t.Fatalf("aws %v printed %q: %v", args, out, err)
			}
		}
		return m
	}
	now := h.sim.Now()
	start, end := now.Add(-10*time.Minute).Format(time.RFC3339), now.Add(time.Minute).Format(time.RFC3339)
	stats := cli("cloudwatch", "get-metric-statistics", "--namespace", "AWS/Bedrock", "--metric-name", "InvocationThrottles",
		"--dimensions", "Name=ModelId,Value="+llama31, "--start-time", start, "--end-time", end, "--period", "60", "--statistics", "Sum")
	dps, _ := stats["Datapoints"].([]any)
	if len(dps) != 1 || dps[0].(map[string]any)["Sum"] != 3.0 {
		t.Fatalf("get-metric-statistics InvocationThrottles = %v, want one datapoint with Sum 3", stats)
	}

	metrics := cli("cloudwatch", "list-metrics", "--namespace", "AWS/Bedrock", "--dimensions", "Name=ModelId,Value="+llama31)
	names := map[string]bool{}
	for _, m := range metrics["Metrics"].([]any) {
		names[m.(map[string]any)["MetricName"].(string)] = true
	}
	if !names["Invocations"] || !names["InvocationThrottles"] || names["InvokeModel"] {
		t.Fatalf("list-metrics names = %v", names)
	}

	cli("cloudwatch", "put-metric-alarm", "--alarm-name", "llama-throttles", "--namespace", "AWS/Bedrock",
		"--metric-name", "InvocationThrottles", "--dimensions", "Name=ModelId,Value="+llama31, "--statistic", "Sum",
		"--period", "60", "--evaluation-periods", "1", "--threshold", "1", "--comparison-operator", "GreaterThanOrEqualToThreshold",
		"--treat-missing-data", "notBreaching", "--tags", "Key=owner,Value=quota-broker")
	describe := func() map[string]any {
		t.Helper()
		alarms := cli("cloudwatch", "describe-alarms", "--alarm-names", "llama-throttles")["MetricAlarms"].([]any)
		if len(alarms) != 1 {
			t.Fatalf("describe-alarms returned %d alarms", len(alarms))
		}
		return alarms[0].(map[string]any)
	}
	if a := describe(); a["StateValue"] != "ALARM" || !strings.Contains(a["StateReason"].(string), "[3.0 (") {
		t.Fatalf("after 3 throttles the alarm is %v: %v", a["StateValue"], a["StateReason"])
	}
	h.clock.Advance(2 * time.Minute)
	a := describe()
	if a["StateValue"] != "OK" {
		t.Fatalf("two quiet minutes later the alarm is %v: %v", a["StateValue"], a["StateReason"])
	}
	tags := cli("cloudwatch", "list-tags-for-resource", "--resource-arn", a["AlarmArn"].(string))["Tags"].([]any)
	if len(tags) != 1 || tags[0].(map[string]any)["Value"] != "quota-broker" {
		t.Fatalf("tags = %v", tags)
	}
	hist := cli("cloudwatch", "describe-alarm-history", "--alarm-name", "llama-throttles", "--history-item-type", "StateUpdate",
		"--scan-by", "TimestampAscending")["AlarmHistoryItems"].([]any)
	var summaries []string
	for _, it := range hist {
		summaries = append(summaries, it.(map[string]any)["HistorySummary"].(string))
	}
	if strings.Join(summaries, "; ") != "Alarm updated from INSUFFICIENT_DATA to ALARM; Alarm updated from ALARM to OK" {
		t.Fatalf("history = %q", summaries)
	}
	cli("cloudwatch", "delete-alarms", "--alarm-names", "llama-throttles")
	if left := cli("cloudwatch", "describe-alarms")["MetricAlarms"].([]any); len(left) != 0 {
		t.Fatalf("after delete-alarms: %v", left)
	}
	_, stderr, code := runTool(t, env, awsBin, "cloudwatch", "delete-alarms", "--alarm-names", "llama-throttles", "--endpoint-url", h.url)
	if code == 0 || !strings.Contains(stderr, "ResourceNotFound") {
		t.Fatalf("deleting a deleted alarm: exit %d, %s", code, stderr)
	}
	_, stderr, code = runTool(t, env, awsBin, "cloudwatch", "get-metric-statistics", "--namespace", "AWS/Bedrock", "--metric-name", "InvocationLatency",
		"--start-time", start, "--end-time", end, "--period", "60", "--extended-statistics", "p99", "--endpoint-url", h.url)
	if code == 0 || !strings.Contains(stderr, "InvalidParameterValue") || !strings.Contains(stderr, "p99") {
		t.Fatalf("p99: exit %d, %s", code, stderr)
	}
}

// boto3Script queries GetMetricData with metric math, SEARCH and an
// unsupported function, and prints what it got as JSON.
const boto3Script = `
import json, sys, datetime, boto3, botocore
url, start, end, model = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
cw = boto3.client("cloudwatch", endpoint_url=url, region_name="us-east-1")
def stat(i, name):
    return {"Id": i, "ReturnData": False, "MetricStat": {"Metric": {"Namespace": "AWS/Bedrock", "MetricName": name,
            "Dimensions": [{"Name": "ModelId", "Value": model}]}, "Period": 60, "Stat": "Sum"}}
t0, t1 = datetime.datetime.fromtimestamp(start, datetime.timezone.utc), datetime.datetime.fromtimestamp(end, datetime.timezone.utc)
r = cw.get_metric_data(StartTime=t0, EndTime=t1, ScanBy="TimestampAscending", MetricDataQueries=[
    stat("inv", "Invocations"), stat("thr", "InvocationThrottles"),
    {"Id": "rate", "Expression": "100 * thr / (inv + thr)", "Label": "throttle %"},
    {"Id": "all", "Expression": "SUM(METRICS())"},
    {"Id": "search", "Expression": "SEARCH('{AWS/Bedrock,ModelId} MetricName=\"Invocations\"', 'Sum', 60)"},
])
out = {"results": [{"id": x["Id"], "label": x["Label"], "values": x["Values"], "status": x["StatusCode"]} for x in r["MetricDataResults"]]}
try:
    cw.get_metric_data(StartTime=t0, EndTime=t1, MetricDataQueries=[stat("inv", "Invocations"), {"Id": "r", "Expression": "RATE(inv)"}])
    out["rate"] = "no error"
except botocore.exceptions.ClientError as e:
    out["rate"] = e.response["Error"]["Code"] + ": " + e.response["Error"]["Message"]
ms = cw.get_paginator("list_metrics").paginate(Namespace="AWS/Bedrock", MetricName="Invocations")
out["metrics"] = sorted(d["Value"] for p in ms for m in p["Metrics"] for d in m["Dimensions"])
cw.put_metric_alarm(AlarmName="llama-throttles", Namespace="AWS/Bedrock", MetricName="InvocationThrottles",
    Dimensions=[{"Name": "ModelId", "Value": model}], Statistic="Sum", Period=60, EvaluationPeriods=1,
    Threshold=1.0, ComparisonOperator="GreaterThanOrEqualToThreshold", ActionsEnabled=False)
a = cw.describe_alarms(AlarmNames=["llama-throttles"])["MetricAlarms"][0]
out["alarm"] = [a["StateValue"], a["Threshold"], a["Period"], a["ActionsEnabled"], a["StateUpdatedTimestamp"].year]
out["history"] = [h["HistorySummary"] for h in cw.describe_alarm_history(AlarmName="llama-throttles", ScanBy="TimestampAscending")["AlarmHistoryItems"]]
cw.delete_alarms(AlarmNames=["llama-throttles"])
haiku = {"Id": "m1", "ReturnData": False, "MetricStat": {"Metric": {"Namespace": "AWS/Bedrock", "MetricName": "InvocationThrottles",
         "Dimensions": [{"Name": "ModelId", "Value": "anthropic.claude-3-haiku-20240307-v1:0"}]}, "Period": 60, "Stat": "Sum"}}
math = [stat("m0", "InvocationThrottles"), haiku, {"Id": "total", "Expression": "SUM([m0, m1])", "Label": "throttles", "ReturnData": True}]
cw.put_metric_alarm(AlarmName="sum-throttles", EvaluationPeriods=1, Threshold=2.0, ComparisonOperator="GreaterThanThreshold", Metrics=math)
a = cw.describe_alarms(AlarmNames=["sum-throttles"])["MetricAlarms"][0]
out["math"] = [a["StateValue"], "MetricName" in a, len(a["Metrics"]), a["Metrics"][0]["MetricStat"]["Period"],
    a["Metrics"][0]["ReturnData"], a["Metrics"][1]["MetricStat"]["Metric"]["Dimensions"][0]["Value"], a["Metrics"][2]["Expression"]]
try:
    cw.put_metric_alarm(AlarmName="both", EvaluationPeriods=1, Threshold=2.0, ComparisonOperator="GreaterThanThreshold", Metrics=math,
        MetricName="InvocationThrottles")
    out["mathErr"] = "no error"
except botocore.exceptions.ClientError as e:
    out["mathErr"] = e.response["Error"]["Code"] + ": " + e.response["Error"]["Message"]
cw.delete_alarms(AlarmNames=["sum-throttles"])
out["left"] = len(cw.describe_alarms()["MetricAlarms"])
print(json.dumps(out))
`

type boto3Out struct {
	Results []struct {
		ID, Label, Status string
		Values            []float64
	}
	Rate    string
	Metrics []string
	Alarm   []any
	History []string
	Left    int
	Math    []any
	MathErr string
}

func runBoto3(t *testing.T, h *harness, env []string) boto3Out {
	t.Helper()
	py := tool(t, "python3")
	if _, stderr, code := runTool(t, env, py, "-c", "import boto3"); code != 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("boto3 is not importable and CI is set: %s", stderr)
		}
		t.Skipf("boto3 is not importable: %s", stderr)
	}
	now := h.sim.Now()
	stdout, stderr, code := runTool(t, env, py, "-c", boto3Script, h.url,
		strconv.FormatInt(now.Add(-10*time.Minute).Unix(), 10), strconv.FormatInt(now.Add(time.Minute).Unix(), 10), llama31)
	if code != 0 {
		t.Fatalf("boto3 script: exit %d\n%s", code, stderr)
	}
	var out boto3Out
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("boto3 printed %q: %v", stdout, err)
	}
	return out
}

func checkBoto3(t *testing.T, out boto3Out) {
	t.Helper()
	got := map[string][]float64{}
	for _, r := range out.Results {
		if r.Status != "Complete" {
			t.Fatalf("result %+v", r)
		}
		got[r.ID+"/"+r.Label] = r.Values
	}
	want := map[string][]float64{
		"rate/throttle %":   {60}, // 3 throttles of 5 calls
		"all/all":           {5},
		"search/" + llama31: {2},
	}
	if len(got) != len(want) {
		t.Fatalf("results %v, want %v", got, want)
	}
	for k, w := range want {
		if g := got[k]; len(g) != len(w) || g[0] != w[0] {
			t.Fatalf("%s = %v, want %v (all: %v)", k, g, w, got)
		}
	}
	if !strings.HasPrefix(out.Rate, "ValidationError: ") || !strings.Contains(out.Rate, "RATE") {
		t.Fatalf("RATE(inv) answered %q, want a ValidationError naming RATE", out.Rate)
	}
	if strings.Join(out.Metrics, ",") != llama31 {
		t.Fatalf("list_metrics dimensions = %v", out.Metrics)
	}
	if fmt.Sprint(out.Alarm) != "[ALARM 1 60 false 2026]" || out.Left != 0 ||
		strings.Join(out.History, "; ") != `Alarm "llama-throttles" created; Alarm updated from INSUFFICIENT_DATA to ALARM` {
		t.Fatalf("alarm %v, history %q, %d left after delete", out.Alarm, out.History, out.Left)
	}
	// The metric-math alarm: Llama's 3 throttles plus Haiku's none, above 2.
	if got := fmt.Sprint(out.Math); got != "[ALARM false 3 60 false "+haiku3+" SUM([m0, m1])]" {
		t.Fatalf("metric-math alarm reads back as %s", got)
	}
	if out.MathErr != "ValidationError: MetricName should not be set if list of Metrics is set." {
		t.Fatalf("MetricName with Metrics answered %q", out.MathErr)
	}
}

func TestCloudWatchBoto3JSON(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario())
	llamaTraffic(t, h)
	checkBoto3(t, runBoto3(t, h, awsEnv()))
}

// TestCloudWatchBoto3Query runs the same script with botocore's CloudWatch
// model switched to the query protocol, found first on AWS_DATA_PATH.
func TestCloudWatchBoto3Query(t *testing.T) {
	t.Parallel()
	py := tool(t, "python3")
	dir := t.TempDir()
	_, stderr, code := runTool(t, awsEnv(), py, "-c", `
import json, os, sys, botocore.loaders
m = botocore.loaders.Loader().load_service_model("cloudwatch", "service-2")
m["metadata"]["protocol"] = "query"
m["metadata"]["protocols"] = ["query"]
d = os.path.join(sys.argv[1], "cloudwatch", m["metadata"]["apiVersion"])
os.makedirs(d)
json.dump(m, open(os.path.join(d, "service-2.json"), "w"))
`, dir)
	if code != 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("cannot write a query-protocol CloudWatch model: %s", stderr)
		}
		t.Skipf("botocore not importable: %s", stderr)
	}
	h := newHarness(t, testScenario())
	llamaTraffic(t, h)
	probe, stderr, code := runTool(t, awsEnv("AWS_DATA_PATH="+filepath.Clean(dir)), py, "-c",
		`import boto3; print(boto3.client("cloudwatch", region_name="us-east-1").meta.service_model.protocol)`)
	if code != 0 || strings.TrimSpace(probe) != "query" {
		t.Fatalf("the patched model is not in use: %q %s", probe, stderr)
	}
	checkBoto3(t, runBoto3(t, h, awsEnv("AWS_DATA_PATH="+filepath.Clean(dir))))
}

// TestCloudWatchAlarmsGoSDK runs the alarm operations over rpc-v2-cbor.
func TestCloudWatchAlarmsGoSDK(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario())
	ctx := context.Background()
	_, err := h.cw.PutMetricAlarm(ctx, &cloudwatch.PutMetricAlarmInput{
		AlarmName: aws.String("tpm-near-quota"), Namespace: aws.String("AWS/Bedrock"), MetricName: aws.String("EstimatedTPMQuotaUsage"),
		Dimensions: []cwtypes.Dimension{{Name: aws.String("ModelId"), Value: aws.String(haiku3)}},
		Statistic:  cwtypes.StatisticSum, Period: aws.Int32(60), EvaluationPeriods: aws.Int32(2), DatapointsToAlarm: aws.Int32(1),
		Threshold: aws.Float64(1000), ComparisonOperator: cwtypes.ComparisonOperatorGreaterThanThreshold,
	})
	if err != nil {
		t.Fatal(err)
	}
	state := func() (cwtypes.StateValue, string) {
		t.Helper()
		out, err := h.cw.DescribeAlarms(ctx, &cloudwatch.DescribeAlarmsInput{AlarmNamePrefix: aws.String("tpm-")})
		if err != nil || len(out.MetricAlarms) != 1 {
			t.Fatalf("DescribeAlarms: %v %+v", err, out)
		}
		return out.MetricAlarms[0].StateValue, aws.ToString(out.MetricAlarms[0].StateReason)
	}
	if s, r := state(); s != cwtypes.StateValueInsufficientData {
		t.Fatalf("no traffic: %s %s", s, r)
	}
	// 10 calls of 10 input + 100 output tokens settle 1,100 tokens.
	for range 10 {
		if _, err := h.rt.Converse(ctx, converseIn(haiku3, prompt(10), 100)); err != nil {
			t.Fatal(err)
		}
	}
	if s, r := state(); s != cwtypes.StateValueAlarm || !strings.Contains(r, "greater than the threshold (1000.0)") {
		t.Fatalf("1,100 tokens: %s %s", s, r)
	}
	h.clock.Advance(time.Minute) // one quiet minute: 1 of the last 2 still breaches
	if s, r := state(); s != cwtypes.StateValueAlarm {
		t.Fatalf("a minute later: %s %s", s, r)
	}
	h.clock.Advance(time.Minute)
	if s, r := state(); s != cwtypes.StateValueInsufficientData {
		t.Fatalf("two quiet minutes (missing data): %s %s", s, r)
	}
	metrics, err := h.cw.ListMetrics(ctx, &cloudwatch.ListMetricsInput{MetricName: aws.String("EstimatedTPMQuotaUsage")})
	if err != nil || len(metrics.Metrics) != 2 { // per ModelId, and the sum without dimensions
		t.Fatalf("ListMetrics: %v %+v", err, metrics)
	}
	// Metric math that retrieves no metric has nothing to watch.
	_, err = h.cw.PutMetricAlarm(ctx, &cloudwatch.PutMetricAlarmInput{AlarmName: aws.String("math"), EvaluationPeriods: aws.Int32(1),
		ComparisonOperator: cwtypes.ComparisonOperatorGreaterThanThreshold, Threshold: aws.Float64(1),
		Metrics: []cwtypes.MetricDataQuery{{Id: aws.String("e"), Expression: aws.String("1")}}})
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode() != "ValidationError" {
		t.Fatalf("metric-math alarm without a metric: %v", err)
	}
	if _, err := h.cw.DeleteAlarms(ctx, &cloudwatch.DeleteAlarmsInput{AlarmNames: []string{"tpm-near-quota"}}); err != nil {
		t.Fatal(err)
	}
	hist, err := h.cw.DescribeAlarmHistory(ctx, &cloudwatch.DescribeAlarmHistoryInput{AlarmName: aws.String("tpm-near-quota")})
	if err != nil || len(hist.AlarmHistoryItems) != 4 || !strings.Contains(aws.ToString(hist.AlarmHistoryItems[0].HistorySummary), "deleted") {
		t.Fatalf("history (newest first): %v %+v", err, hist)
	}
}

// throttleStat is a MetricDataQuery retrieving a model's throttles a minute.
func throttleStat(id, model string, period int32) cwtypes.MetricDataQuery {
	return cwtypes.MetricDataQuery{Id: aws.String(id), ReturnData: aws.Bool(false), MetricStat: &cwtypes.MetricStat{
		Period: aws.Int32(period), Stat: aws.String("Sum"), Metric: &cwtypes.Metric{Namespace: aws.String("AWS/Bedrock"),
			MetricName: aws.String("InvocationThrottles"), Dimensions: []cwtypes.Dimension{{Name: aws.String("ModelId"), Value: aws.String(model)}}}}}
}

// TestCloudWatchMathAlarmGoSDK puts a metric-math alarm summing two
// models' throttles (the form quota-broker alarms uses for a budget with
// several ModelIds) over rpc-v2-cbor, reads it back, drives it to ALARM,
// and checks the validation AWS does on the Metrics form.
func TestCloudWatchMathAlarmGoSDK(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testScenario())
	ctx := context.Background()
	sum := cwtypes.MetricDataQuery{Id: aws.String("total"), Label: aws.String("throttles"), Expression: aws.String("SUM([m0, m1])"), ReturnData: aws.Bool(true)}
	put := func(name string, mutate func(*cloudwatch.PutMetricAlarmInput)) error {
		in := &cloudwatch.PutMetricAlarmInput{AlarmName: aws.String(name), EvaluationPeriods: aws.Int32(2), DatapointsToAlarm: aws.Int32(1),
			ComparisonOperator: cwtypes.ComparisonOperatorGreaterThanThreshold, Threshold: aws.Float64(2), TreatMissingData: aws.String("notBreaching"),
			Metrics: []cwtypes.MetricDataQuery{throttleStat("m0", llama31, 60), throttleStat("m1", haiku3, 60), sum}}
		if mutate != nil {
			mutate(in)
		}
		_, err := h.cw.PutMetricAlarm(ctx, in)
		return err
	}
	if err := put("sum-throttles", nil); err != nil {
		t.Fatal(err)
	}
	describe := func() cwtypes.MetricAlarm {
		t.Helper()
		out, err := h.cw.DescribeAlarms(ctx, &cloudwatch.DescribeAlarmsInput{AlarmNames: []string{"sum-throttles"}})
		if err != nil || len(out.MetricAlarms) != 1 {
			t.Fatalf("DescribeAlarms: %v %+v", err, out)
		}
		return out.MetricAlarms[0]
	}
	a := describe()
	if a.MetricName != nil || a.Period != nil || a.Statistic != "" || len(a.Metrics) != 3 {
		t.Fatalf("a metric-math alarm reads back with MetricName %v, Period %v, Statistic %q and %d metrics",
			aws.ToString(a.MetricName), a.Period, a.Statistic, len(a.Metrics))
	}
	m1, total := a.Metrics[1], a.Metrics[2]
	if aws.ToString(m1.Id) != "m1" || aws.ToBool(m1.ReturnData) || m1.MetricStat == nil || aws.ToInt32(m1.MetricStat.Period) != 60 ||
		aws.ToString(m1.MetricStat.Stat) != "Sum" || aws.ToString(m1.MetricStat.Metric.MetricName) != "InvocationThrottles" ||
		aws.ToString(m1.MetricStat.Metric.Dimensions[0].Value) != haiku3 {
		t.Fatalf("m1 reads back as %+v", m1)
	}
	if aws.ToString(total.Expression) != "SUM([m0, m1])" || !aws.ToBool(total.ReturnData) || aws.ToString(total.Label) != "throttles" || total.MetricStat != nil {
		t.Fatalf("total reads back as %+v", total)
	}
	if a.StateValue != cwtypes.StateValueOk { // no throttles yet, and missing data is not breaching
		t.Fatalf("new alarm: %s %s", a.StateValue, aws.ToString(a.StateReason))
	}
	// Llama (2 RPM) throttles 3 of 5 calls: 3 > 2 in one of 2 minutes.
	llamaTraffic(t, h)
	if a := describe(); a.StateValue != cwtypes.StateValueAlarm || !strings.Contains(aws.ToString(a.StateReason), "[3.0 (") {
		t.Fatalf("after 3 throttles: %s %s", a.StateValue, aws.ToString(a.StateReason))
	}
	h.clock.Advance(2 * time.Minute)
	if a := describe(); a.StateValue != cwtypes.StateValueOk {
		t.Fatalf("two quiet minutes later: %s %s", a.StateValue, aws.ToString(a.StateReason))
	}

	for _, c := range []struct {
		name, code, msg string
		mutate          func(*cloudwatch.PutMetricAlarmInput)
	}{
		{"MetricName and Metrics", "ValidationError", "MetricName should not be set if list of Metrics is set.",
			func(in *cloudwatch.PutMetricAlarmInput) { in.MetricName = aws.String("InvocationThrottles") }},
		{"Statistic and Metrics", "ValidationError", "Statistic should not be set if list of Metrics is set.",
			func(in *cloudwatch.PutMetricAlarmInput) { in.Statistic = cwtypes.StatisticSum }},
		{"neither", "ValidationError", "MetricName must not be null",
			func(in *cloudwatch.PutMetricAlarmInput) { in.Metrics = nil }},
		{"no ReturnData", "ValidationError", "Exactly one element of the metrics list should return data.",
			func(in *cloudwatch.PutMetricAlarmInput) { in.Metrics[2].ReturnData = aws.Bool(false) }},
		{"two ReturnData", "ValidationError", "Exactly one element of the metrics list should return data.",
			func(in *cloudwatch.PutMetricAlarmInput) { in.Metrics[0].ReturnData = aws.Bool(true) }},
		{"period mismatch", "ValidationError", "The Period of every MetricStat in Metrics must be the same",
			func(in *cloudwatch.PutMetricAlarmInput) { in.Metrics[1] = throttleStat("m1", haiku3, 300) }},
		{"unknown id", "ValidationError", "unknown metric or expression id m2",
			func(in *cloudwatch.PutMetricAlarmInput) { in.Metrics[2].Expression = aws.String("m0 + m2") }},
		{"several series", "ValidationError", "single time series",
			func(in *cloudwatch.PutMetricAlarmInput) { in.Metrics[2].Expression = aws.String("METRICS()") }},
		{"SEARCH", "ValidationError", "SEARCH expressions are not supported in alarms",
			func(in *cloudwatch.PutMetricAlarmInput) {
				in.Metrics[2].Expression = aws.String(`SUM(SEARCH('{AWS/Bedrock,ModelId} MetricName="InvocationThrottles"', 'Sum', 60))`)
			}},
		{"MetricStat and Expression", "ValidationError", "exactly one of MetricStat and Expression",
			func(in *cloudwatch.PutMetricAlarmInput) { in.Metrics[0].Expression = aws.String("m1") }},
	} {
		err := put("bad-"+strings.ReplaceAll(c.name, " ", "-"), c.mutate)
		var apiErr smithy.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode() != c.code || !strings.Contains(apiErr.ErrorMessage(), c.msg) {
			t.Errorf("%s: %v, want %s containing %q", c.name, err, c.code, c.msg)
		}
	}
	out, err := h.cw.DescribeAlarms(ctx, &cloudwatch.DescribeAlarmsInput{AlarmNamePrefix: aws.String("bad-")})
	if err != nil || len(out.MetricAlarms) != 0 {
		t.Fatalf("refused alarms were stored: %v %+v", err, out)
	}
}
