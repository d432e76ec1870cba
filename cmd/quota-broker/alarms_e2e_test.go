package main

import (
	"context"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	rttypes "github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"

	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

// TestAlarmsAgainstSimulator runs "quota-broker alarms" against the
// simulator's CloudWatch through the real SDK: the dry run plans and
// creates nothing; --apply creates every alarm, named and tagged as the
// README says; a second --apply changes nothing; throttled traffic on both
// ids of a cross-region budget drives its metric-math throttles alarm to
// ALARM on their sum; --delete --apply removes the command's alarms and no
// other.
func TestAlarmsAgainstSimulator(t *testing.T) {
	t.Parallel()
	// The EU geo profile of Sonnet 4.5 made callable from us-east-1, so
	// that its cross-region budget there has two ModelIds and its alarms
	// use metric math.
	sc := bedrocksim.DefaultScenario()
	for i, p := range sc.InferenceProfiles {
		if p.ID == "eu."+sonnetModel {
			sc.InferenceProfiles[i].SourceRegions = append(p.SourceRegions, "us-east-1")
		}
	}
	sim, err := bedrocksim.New(bedrocksim.Config{DisableLatency: true, Scenario: sc})
	if err != nil {
		t.Fatal(err)
	}
	// Bedrock's real capacity for cross-region Sonnet 4.5 (L-CCB5CBE9, 500,000
	// TPM published): about 4 calls of ~500 tokens.
	hidden := 2_000.0
	if err := sim.SetCapacity("us-east-1", "L-CCB5CBE9", bedrocksim.CapacityChange{SetTrue: &hidden}); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim.Handler())
	defer hs.Close()
	ctx := context.Background()
	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""), Retryer: func() aws.Retryer { return aws.NopRetryer{} }}
	cw := cloudwatch.NewFromConfig(cfg, func(o *cloudwatch.Options) { o.BaseEndpoint = aws.String(hs.URL) })

	// Somebody else's alarms: one under the command's prefix without its
	// marker, one elsewhere.
	for _, name := range []string{"quota-broker/hand-made", "team-a/latency"} {
		if _, err := cw.PutMetricAlarm(ctx, &cloudwatch.PutMetricAlarmInput{AlarmName: aws.String(name), AlarmDescription: aws.String("made by hand"),
			Namespace: aws.String("AWS/Bedrock"), MetricName: aws.String("Invocations"), Statistic: cwtypes.StatisticSum, Period: aws.Int32(60),
			EvaluationPeriods: aws.Int32(1), Threshold: aws.Float64(1e6), ComparisonOperator: cwtypes.ComparisonOperatorGreaterThanThreshold}); err != nil {
			t.Fatal(err)
		}
	}
	alarmNames := func() []string {
		t.Helper()
		var names []string
		p := cloudwatch.NewDescribeAlarmsPaginator(cw, &cloudwatch.DescribeAlarmsInput{})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range page.MetricAlarms {
				names = append(names, aws.ToString(a.AlarmName))
			}
		}
		return names
	}
	// Any minute with a throttle breaches, 1 of 2 minutes fires.
	alarmsCmd := func(extra ...string) string {
		t.Helper()
		var stdout, stderr strings.Builder
		args := append([]string{"alarms", "--aws-endpoint", hs.URL, "--regions", "us-east-1", "--throttles", "1", "--periods", "2", "--datapoints", "1"}, extra...)
		if err := run(ctx, args, &stdout, &stderr); err != nil {
			t.Fatalf("%v: %v\n%s%s", args, err, stdout.String(), stderr.String())
		}
		return stdout.String()
	}

	// The dry run: a plan, nothing made.
	out := alarmsCmd()
	m := regexp.MustCompile(`(\d+) to create, 0 to update, 0 unchanged, 0 to delete\. Dry run: nothing changed`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("dry run:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	throttles := "quota-broker/throttles/us-east-1/cross-region/" + sonnetModel
	usage := "quota-broker/tpm-usage/us-east-1/cross-region/" + sonnetModel
	for _, want := range [][2]string{
		{throttles, "InvocationThrottles{eu." + sonnetModel + "} + InvocationThrottles{us." + sonnetModel + "} > 1 a minute, 1 of 2 minutes"},
		{usage, "EstimatedTPMQuotaUsage{eu." + sonnetModel + "} + EstimatedTPMQuotaUsage{us." + sonnetModel + "} >= "},
		{"quota-broker/throttles/us-east-1/global/" + sonnetModel, "InvocationThrottles{global." + sonnetModel + "} > 1 a minute"},
	} {
		if !regexp.MustCompile(`(?m)^create +` + regexp.QuoteMeta(want[0]) + ` +` + regexp.QuoteMeta(want[1])).MatchString(out) {
			t.Errorf("dry run lacks create %s %s", want[0], want[1])
		}
	}
	if got := alarmNames(); len(got) != 2 {
		t.Fatalf("after the dry run the alarms are %v", got)
	}

	// --apply makes them.
	if out = alarmsCmd("--apply"); !strings.Contains(out, "Done: "+m[1]+" created, 0 updated, 0 unchanged, 0 deleted.") {
		t.Fatalf("--apply:\n%s", out)
	}
	if got := alarmNames(); len(got) != n+2 || !slices.Contains(got, throttles) || !slices.Contains(got, usage) {
		t.Fatalf("after --apply: %d alarms, want %d: %v", len(got), n+2, got)
	}
	res, err := cw.DescribeAlarms(ctx, &cloudwatch.DescribeAlarmsInput{AlarmNames: []string{throttles, "quota-broker/throttles/us-east-1/global/" + sonnetModel}})
	if err != nil || len(res.MetricAlarms) != 2 {
		t.Fatalf("DescribeAlarms: %v %+v", err, res)
	}
	// Sorted by name: cross-region, then global.
	math, single := res.MetricAlarms[0], res.MetricAlarms[1]
	if math.MetricName != nil || len(math.Metrics) != 3 || aws.ToString(math.Metrics[2].Expression) != "SUM([m0,m1])" ||
		!strings.Contains(aws.ToString(math.AlarmDescription), alarmMarker) || aws.ToString(math.TreatMissingData) != "notBreaching" {
		t.Fatalf("cross-region throttles alarm (metric math) reads back as %+v", math)
	}
	if aws.ToString(single.MetricName) != "InvocationThrottles" || len(single.Metrics) != 0 || aws.ToString(single.Dimensions[0].Value) != "global."+sonnetModel {
		t.Fatalf("global throttles alarm (one metric) reads back as %+v", single)
	}
	tags, err := cw.ListTagsForResource(ctx, &cloudwatch.ListTagsForResourceInput{ResourceARN: math.AlarmArn})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, tag := range tags.Tags {
		got[aws.ToString(tag.Key)] = aws.ToString(tag.Value)
	}
	if got["managed-by"] != "quota-broker" || got["quota-broker:rule"] != "throttles" || got["quota-broker:budget"] != "us-east-1/cross-region/"+sonnetModel {
		t.Fatalf("tags %v", got)
	}

	// Again: every alarm is already as wanted.
	if out = alarmsCmd("--apply"); !strings.Contains(out, "Done: 0 created, 0 updated, "+m[1]+" unchanged, 0 deleted.") {
		t.Fatalf("second --apply:\n%s", out)
	}
	hist, err := cw.DescribeAlarmHistory(ctx, &cloudwatch.DescribeAlarmHistoryInput{AlarmName: aws.String(throttles), HistoryItemType: cwtypes.HistoryItemTypeConfigurationUpdate})
	if err != nil || len(hist.AlarmHistoryItems) != 1 {
		t.Fatalf("configuration history of %s after two runs: %v %+v", throttles, err, hist)
	}

	// Traffic around the broker on both profile ids: Bedrock throttles most
	// of it, and the alarm sees the sum.
	rt := bedrockruntime.NewFromConfig(cfg, func(o *bedrockruntime.Options) { o.BaseEndpoint = aws.String(hs.URL) })
	throttled := map[string]int{}
	for i := range 24 {
		id := []string{"us.", "eu."}[i%2] + sonnetModel
		_, err := rt.Converse(ctx, &bedrockruntime.ConverseInput{ModelId: aws.String(id),
			Messages: []rttypes.Message{{Role: rttypes.ConversationRoleUser,
				Content: []rttypes.ContentBlock{&rttypes.ContentBlockMemberText{Value: "Say hello. sim:output_tokens=100"}}}},
			InferenceConfig: &rttypes.InferenceConfiguration{MaxTokens: aws.Int32(100)}})
		switch {
		case err == nil:
		case strings.Contains(err.Error(), "ThrottlingException"):
			throttled[id]++
		default:
			t.Fatalf("Converse %s: %v", id, err)
		}
	}
	if throttled["us."+sonnetModel] == 0 || throttled["eu."+sonnetModel] == 0 {
		t.Fatalf("throttles by id: %v; want some on both", throttled)
	}
	res, err = cw.DescribeAlarms(ctx, &cloudwatch.DescribeAlarmsInput{StateValue: cwtypes.StateValueAlarm})
	if err != nil || len(res.MetricAlarms) != 1 || aws.ToString(res.MetricAlarms[0].AlarmName) != throttles {
		t.Fatalf("alarms in ALARM after %v throttles: %v %+v", throttled, err, res)
	}
	// The datapoints in the reason ("[7.0 (03/12/26 10:52:00), ...]", the
	// last two minutes) add up to every throttle of both ids.
	reason := aws.ToString(res.MetricAlarms[0].StateReason)
	sum := 0.0
	for _, v := range regexp.MustCompile(`([0-9.]+) \(\d\d/`).FindAllStringSubmatch(reason, -1) {
		f, _ := strconv.ParseFloat(v[1], 64)
		sum += f
	}
	if want := throttled["us."+sonnetModel] + throttled["eu."+sonnetModel]; sum != float64(want) {
		t.Fatalf("the alarm's datapoints add up to %v, want the %d throttles %v: %s", sum, want, throttled, reason)
	}
	t.Logf("%s: %s", throttles, reason)

	// --delete: a plan first, then only the command's own alarms go.
	if out = alarmsCmd("--delete"); !strings.Contains(out, "0 to create, 0 to update, 0 unchanged, "+m[1]+" to delete. Dry run") || len(alarmNames()) != n+2 {
		t.Fatalf("--delete without --apply:\n%s", out)
	}
	if out = alarmsCmd("--delete", "--apply"); !strings.Contains(out, "Done: 0 created, 0 updated, 0 unchanged, "+m[1]+" deleted.") {
		t.Fatalf("--delete --apply:\n%s", out)
	}
	if got := alarmNames(); !slices.Equal(got, []string{"quota-broker/hand-made", "team-a/latency"}) {
		t.Fatalf("after --delete --apply: %v", got)
	}
}
