package main

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/aws/smithy-go"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/awsquota"
)

// fakeAlarms is CloudWatch's alarm store for one Region, as the three
// calls see it. DescribeAlarms answers one alarm a page, so pagination is
// always exercised.
type fakeAlarms struct {
	alarms  map[string]cwtypes.MetricAlarm
	puts    []*cloudwatch.PutMetricAlarmInput
	deletes [][]string
	fail    error // returned by every call when set
}

func (f *fakeAlarms) PutMetricAlarm(_ context.Context, in *cloudwatch.PutMetricAlarmInput, _ ...func(*cloudwatch.Options)) (*cloudwatch.PutMetricAlarmOutput, error) {
	if f.fail != nil {
		return nil, f.fail
	}
	f.puts = append(f.puts, in)
	f.alarms[aws.ToString(in.AlarmName)] = cwtypes.MetricAlarm{AlarmName: in.AlarmName, AlarmDescription: in.AlarmDescription,
		ComparisonOperator: in.ComparisonOperator, Threshold: in.Threshold, EvaluationPeriods: in.EvaluationPeriods,
		DatapointsToAlarm: in.DatapointsToAlarm, AlarmActions: in.AlarmActions, OKActions: in.OKActions,
		MetricName: in.MetricName, Dimensions: in.Dimensions, Metrics: in.Metrics, TreatMissingData: in.TreatMissingData}
	return &cloudwatch.PutMetricAlarmOutput{}, nil
}

func (f *fakeAlarms) DescribeAlarms(_ context.Context, in *cloudwatch.DescribeAlarmsInput, _ ...func(*cloudwatch.Options)) (*cloudwatch.DescribeAlarmsOutput, error) {
	if f.fail != nil {
		return nil, f.fail
	}
	var names []string
	for n := range f.alarms {
		if strings.HasPrefix(n, aws.ToString(in.AlarmNamePrefix)) && n > aws.ToString(in.NextToken) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	out := &cloudwatch.DescribeAlarmsOutput{}
	if len(names) > 0 {
		out.MetricAlarms = []cwtypes.MetricAlarm{f.alarms[names[0]]}
		out.NextToken = aws.String(names[0])
	}
	return out, nil
}

func (f *fakeAlarms) DeleteAlarms(_ context.Context, in *cloudwatch.DeleteAlarmsInput, _ ...func(*cloudwatch.Options)) (*cloudwatch.DeleteAlarmsOutput, error) {
	if f.fail != nil {
		return nil, f.fail
	}
	f.deletes = append(f.deletes, in.AlarmNames)
	for _, n := range in.AlarmNames {
		delete(f.alarms, n)
	}
	return &cloudwatch.DeleteAlarmsOutput{}, nil
}

const (
	haikuModel  = "anthropic.claude-3-haiku-20240307-v1:0"
	sonnetModel = "anthropic.claude-sonnet-4-5-20250929-v1:0"
)

// alarmTestBudgets: Claude 3 Haiku on demand (TPM and RPM), Sonnet 4.5
// cross-region (two profile ids) and an RPM-only budget, which gets no
// usage alarm.
func alarmTestBudgets(t *testing.T) []alarmBudget {
	t.Helper()
	res := awsquota.Result{
		Discovery: broker.Discovery{Specs: []broker.Spec{
			{Key: broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: haikuModel}, Quota: broker.Limits{RPM: 1000, TPM: 2_000_000}},
			{Key: broker.Key{Region: "us-east-1", Scope: broker.ScopeCrossRegion, Model: sonnetModel}, Quota: broker.Limits{RPM: 250, TPM: 500_000}},
			{Key: broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: "amazon.nova-micro-v1:0"}, Quota: broker.Limits{RPM: 100}},
		}},
		Quotas: []awsquota.Quota{
			{Region: "us-east-1", Scope: "on-demand", ModelID: haikuModel, ModelIDs: []string{haikuModel}, Runtime: true},
			{Region: "us-east-1", Scope: "cross-region", ModelID: sonnetModel, ModelIDs: []string{"us." + sonnetModel}, Runtime: true},
			{Region: "us-east-1", Scope: "cross-region", ModelID: sonnetModel, ModelIDs: []string{"us." + sonnetModel, "eu." + sonnetModel}, Runtime: true},
			// A quota of two scopes names the ids of both.
			{Region: "us-east-1", Scope: "on-demand", ModelID: haikuModel, ModelIDs: []string{haikuModel, "us." + haikuModel}, Runtime: true},
			// Not brokered: its ids must not join the budget's.
			{Region: "us-east-1", Scope: "global", ModelID: sonnetModel, ModelIDs: []string{"apac." + sonnetModel}, Runtime: false},
		},
	}
	return alarmBudgets(res)
}

func runAlarmsWith(t *testing.T, fake *fakeAlarms, budgets []alarmBudget, args ...string) (string, error) {
	t.Helper()
	f, err := parseAlarmsFlags(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	err = runAlarms(context.Background(), f, budgets, func(_ context.Context, region string) (alarmAPI, error) {
		if region != "us-east-1" {
			t.Fatalf("connect to %s", region)
		}
		return fake, nil
	}, &out)
	return out.String(), err
}

func TestAlarmBudgetsModelIDs(t *testing.T) {
	t.Parallel()
	b := alarmTestBudgets(t)
	want := [][]string{{haikuModel}, {"eu." + sonnetModel, "us." + sonnetModel}}
	for i, w := range want {
		if !slices.Equal(b[i].modelIDs, w) {
			t.Errorf("budget %s: ModelIds %v, want %v", b[i].spec.Key, b[i].modelIDs, w)
		}
	}
	// No quota names ids for the Nova budget: awsmetrics' reading of it.
	if !slices.Equal(b[2].modelIDs, []string{"amazon.nova-micro-v1:0"}) {
		t.Errorf("nova: %v", b[2].modelIDs)
	}
}

func TestAlarmsDryRunChangesNothing(t *testing.T) {
	t.Parallel()
	fake := &fakeAlarms{alarms: map[string]cwtypes.MetricAlarm{
		// Ours, for a budget that is gone.
		"quota-broker/throttles/us-east-1/on-demand/gone-model": {AlarmName: aws.String("quota-broker/throttles/us-east-1/on-demand/gone-model"),
			AlarmDescription: aws.String("x (" + alarmMarker + ")"), MetricName: aws.String("InvocationThrottles")},
		// Someone else's, with our prefix but not our marker.
		"quota-broker/hand-made": {AlarmName: aws.String("quota-broker/hand-made"), AlarmDescription: aws.String("made by hand")},
	}}
	out, err := runAlarmsWith(t, fake, alarmTestBudgets(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(fake.puts)+len(fake.deletes) > 0 {
		t.Fatalf("a dry run changed alarms: %d puts, %v deletes", len(fake.puts), fake.deletes)
	}
	for _, want := range []string{
		"create  quota-broker/throttles/us-east-1/on-demand/" + haikuModel,
		"create  quota-broker/tpm-usage/us-east-1/on-demand/" + haikuModel,
		"EstimatedTPMQuotaUsage{" + haikuModel + "} >= 1600000 a minute, 3 of 5 minutes",
		"InvocationThrottles{eu." + sonnetModel + "} + InvocationThrottles{us." + sonnetModel + "} > 5 a minute",
		"create  quota-broker/throttles/us-east-1/on-demand/amazon.nova-micro-v1:0",
		"delete  quota-broker/throttles/us-east-1/on-demand/gone-model",
		"5 to create, 0 to update, 0 unchanged, 1 to delete. Dry run: nothing changed; --apply makes these changes.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hand-made") || strings.Contains(out, "tpm-usage/us-east-1/on-demand/amazon.nova") {
		t.Errorf("plan touches an alarm it did not make, or a usage alarm for a budget without TPM:\n%s", out)
	}
}

func TestAlarmsApplyThenAgainThenDelete(t *testing.T) {
	t.Parallel()
	fake := &fakeAlarms{alarms: map[string]cwtypes.MetricAlarm{
		"quota-broker/hand-made": {AlarmName: aws.String("quota-broker/hand-made"), AlarmDescription: aws.String("made by hand")},
	}}
	budgets := alarmTestBudgets(t)
	out, err := runAlarmsWith(t, fake, budgets, "--apply", "--sns-topic", "arn:aws:sns:us-east-1:123456789012:ops")
	if err != nil {
		t.Fatal(err)
	}
	if len(fake.puts) != 5 || !strings.Contains(out, "Done: 5 created, 0 updated, 0 unchanged, 0 deleted.") {
		t.Fatalf("%d puts:\n%s", len(fake.puts), out)
	}
	byName := map[string]*cloudwatch.PutMetricAlarmInput{}
	for _, p := range fake.puts {
		byName[aws.ToString(p.AlarmName)] = p
		if !hasTag(p.Tags, "managed-by", "quota-broker") {
			t.Errorf("%s is not tagged managed-by=quota-broker: %v", aws.ToString(p.AlarmName), p.Tags)
		}
		if !slices.Equal(p.AlarmActions, []string{"arn:aws:sns:us-east-1:123456789012:ops"}) || aws.ToString(p.TreatMissingData) != "notBreaching" {
			t.Errorf("%s: actions %v, missing data %q", aws.ToString(p.AlarmName), p.AlarmActions, aws.ToString(p.TreatMissingData))
		}
	}
	// On demand: one metric, AWS/Bedrock, Sum over a minute.
	h := byName["quota-broker/tpm-usage/us-east-1/on-demand/"+haikuModel]
	if h == nil || aws.ToString(h.Namespace) != "AWS/Bedrock" || aws.ToString(h.MetricName) != "EstimatedTPMQuotaUsage" || h.Statistic != cwtypes.StatisticSum ||
		aws.ToInt32(h.Period) != 60 || aws.ToFloat64(h.Threshold) != 1_600_000 || h.ComparisonOperator != cwtypes.ComparisonOperatorGreaterThanOrEqualToThreshold ||
		len(h.Dimensions) != 1 || aws.ToString(h.Dimensions[0].Name) != "ModelId" || aws.ToString(h.Dimensions[0].Value) != haikuModel || !hasTag(h.Tags, "quota-broker:budget", "us-east-1/on-demand/"+haikuModel) {
		t.Errorf("haiku usage alarm: %+v", h)
	}
	// Cross-region: the ids summed by metric math, one query returned.
	s := byName["quota-broker/throttles/us-east-1/cross-region/"+sonnetModel]
	if s == nil || s.MetricName != nil || len(s.Metrics) != 3 || aws.ToString(s.Metrics[2].Expression) != "SUM([m0,m1])" ||
		!aws.ToBool(s.Metrics[2].ReturnData) || aws.ToBool(s.Metrics[0].ReturnData) || aws.ToString(s.Metrics[1].MetricStat.Metric.Dimensions[0].Value) != "us."+sonnetModel ||
		aws.ToFloat64(s.Threshold) != 5 || s.ComparisonOperator != cwtypes.ComparisonOperatorGreaterThanThreshold {
		t.Errorf("sonnet throttles alarm: %+v", s)
	}

	// Again, with nothing changed: nothing to do. With another threshold:
	// the throttle alarms are updated.
	fake.puts = nil
	if out, err = runAlarmsWith(t, fake, budgets, "--apply", "--sns-topic", "arn:aws:sns:us-east-1:123456789012:ops"); err != nil || len(fake.puts) != 0 || !strings.Contains(out, "0 created, 0 updated, 5 unchanged, 0 deleted") {
		t.Fatalf("second run: %v, %d puts:\n%s", err, len(fake.puts), out)
	}
	if out, err = runAlarmsWith(t, fake, budgets, "--apply", "--throttles", "20", "--sns-topic", "arn:aws:sns:us-east-1:123456789012:ops"); err != nil || len(fake.puts) != 3 || !strings.Contains(out, "0 created, 3 updated, 2 unchanged") {
		t.Fatalf("new threshold: %v, %d puts:\n%s", err, len(fake.puts), out)
	}

	// --delete without --apply lists; with it, removes ours only.
	if out, err = runAlarmsWith(t, fake, nil, "--delete"); err != nil || len(fake.deletes) != 0 || !strings.Contains(out, "0 to create, 0 to update, 0 unchanged, 5 to delete. Dry run") {
		t.Fatalf("delete dry run: %v, %v:\n%s", err, fake.deletes, out)
	}
	if out, err = runAlarmsWith(t, fake, nil, "--delete", "--apply"); err != nil || len(fake.deletes) != 1 || len(fake.deletes[0]) != 5 || !strings.Contains(out, "5 deleted") {
		t.Fatalf("delete: %v, %v:\n%s", err, fake.deletes, out)
	}
	if len(fake.alarms) != 1 || fake.alarms["quota-broker/hand-made"].AlarmName == nil {
		t.Fatalf("left after --delete: %v", fake.alarms)
	}
}

func hasTag(tags []cwtypes.Tag, k, v string) bool {
	return slices.ContainsFunc(tags, func(t cwtypes.Tag) bool { return aws.ToString(t.Key) == k && aws.ToString(t.Value) == v })
}

func TestAlarmsAWSErrorNamesThePermission(t *testing.T) {
	t.Parallel()
	fake := &fakeAlarms{alarms: map[string]cwtypes.MetricAlarm{}, fail: &smithy.GenericAPIError{Code: "AccessDenied", Message: "User is not authorized"}}
	_, err := runAlarmsWith(t, fake, alarmTestBudgets(t), "--apply")
	if err == nil || !strings.Contains(err.Error(), "cloudwatch:DescribeAlarms") || !strings.Contains(err.Error(), "us-east-1") {
		t.Fatalf("error: %v", err)
	}
}

func TestAlarmsHelpAndFlags(t *testing.T) {
	t.Parallel()
	var stdout strings.Builder // asked for, the help is the output
	if err := run(context.Background(), []string{"alarms", "--help"}, &stdout, io.Discard); err != nil {
		t.Fatalf("alarms --help: %v", err)
	}
	if !strings.Contains(stdout.String(), "usage: quota-broker alarms") || !strings.Contains(stdout.String(), "-apply") {
		t.Fatalf("alarms --help:\n%s", stdout.String())
	}
	for _, args := range [][]string{{"--usage", "0"}, {"--usage", "1.5"}, {"--datapoints", "6"}, {"--prefix", "a/b"}, {"--regions", ""}, {"extra"}} {
		if _, err := parseAlarmsFlags(args, io.Discard); err == nil {
			t.Errorf("alarms %v: accepted", args)
		}
	}
}
