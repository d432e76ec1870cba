package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/awsclient"
	"github.com/bedrockqb/quotabroker/broker/awsmetrics"
	"github.com/bedrockqb/quotabroker/broker/awsquota"
)

// alarmAPI is the CloudWatch the alarms command needs; *cloudwatch.Client
// has it, tests fake it.
type alarmAPI interface {
	PutMetricAlarm(context.Context, *cloudwatch.PutMetricAlarmInput, ...func(*cloudwatch.Options)) (*cloudwatch.PutMetricAlarmOutput, error)
	DescribeAlarms(context.Context, *cloudwatch.DescribeAlarmsInput, ...func(*cloudwatch.Options)) (*cloudwatch.DescribeAlarmsOutput, error)
	DeleteAlarms(context.Context, *cloudwatch.DeleteAlarmsInput, ...func(*cloudwatch.Options)) (*cloudwatch.DeleteAlarmsOutput, error)
}

// alarmMarker is in the description of every alarm this command makes.
// With the name prefix it is how the command finds its own alarms (tags
// would need one more call per alarm, ListTagsForResource); the tags are
// for people, IAM conditions and the console.
const alarmMarker = "managed by quota-broker alarms"

type alarmsFlags struct {
	regions                 []string
	endpoint, prefix, topic string
	apply, delete           bool
	throttles, usage        float64
	periods, datapoints     int
	timeout                 time.Duration
}

// parseAlarmsFlags reads alarms' flags; -h prints the help on out.
func parseAlarmsFlags(args []string, out io.Writer) (alarmsFlags, error) {
	var f alarmsFlags
	fs := flag.NewFlagSet("alarms", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: quota-broker alarms [--apply] [--delete] [flags]

Creates CloudWatch alarms for every budget discovery finds (the budgets
"quota-broker discover" lists), on AWS's own Bedrock metrics:
  throttles  AWS/Bedrock InvocationThrottles: more than --throttles a minute
  tpm-usage  AWS/Bedrock EstimatedTPMQuotaUsage: at or above --usage of the
             budget's TPM quota in a minute (budgets with a TPM quota)
each for --datapoints of --periods one-minute periods, summed over every
ModelId that draws on the budget. Alarms are named PREFIX/RULE/REGION/SCOPE/MODEL,
tagged managed-by=quota-broker, and found again by name and description:
a second run updates them and removes those of budgets that are gone.
Without --apply it prints what it would do and changes nothing.
With --delete it removes every alarm it made (again, only with --apply).

flags:
`)
		fs.PrintDefaults()
	}
	regions := fs.String("regions", envOr("QUOTA_BROKER_REGIONS", "us-east-1"), "comma-separated AWS Regions (env QUOTA_BROKER_REGIONS)")
	fs.StringVar(&f.endpoint, "aws-endpoint", envOr("QUOTA_BROKER_AWS_ENDPOINT", ""), "base URL for every AWS client, e.g. the simulator's http://127.0.0.1:8566 (env QUOTA_BROKER_AWS_ENDPOINT)")
	fs.StringVar(&f.prefix, "prefix", envOr("QUOTA_BROKER_ALARM_PREFIX", "quota-broker"), "first part of every alarm name; alarms are found again by it (env QUOTA_BROKER_ALARM_PREFIX)")
	fs.StringVar(&f.topic, "sns-topic", envOr("QUOTA_BROKER_ALARM_TOPIC", ""), "SNS topic ARN notified when an alarm fires and when it is OK again; empty: no actions (env QUOTA_BROKER_ALARM_TOPIC)")
	fs.BoolVar(&f.apply, "apply", false, "make the changes; without it, only print them")
	fs.BoolVar(&f.delete, "delete", false, "remove every alarm this command made, instead of creating them")
	fs.Float64Var(&f.throttles, "throttles", 5, "throttles a minute above which the throttles alarm counts a minute as breaching")
	fs.Float64Var(&f.usage, "usage", 0.8, "share of the TPM quota at which the tpm-usage alarm counts a minute as breaching, (0, 1]")
	fs.IntVar(&f.periods, "periods", 5, "one-minute periods an alarm looks at")
	fs.IntVar(&f.datapoints, "datapoints", 3, "breaching minutes among --periods that fire an alarm")
	fs.DurationVar(&f.timeout, "timeout", time.Minute, "give up on AWS after this long")
	if err := parseFlags(fs, args, out); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("alarms: unexpected argument %q", fs.Arg(0))
	}
	f.regions = list(*regions)
	switch {
	case len(f.regions) == 0:
		return f, errors.New("alarms: --regions names no Region")
	case f.prefix == "" || strings.Contains(f.prefix, "/"):
		return f, fmt.Errorf("alarms: --prefix %q: want a non-empty name without /", f.prefix)
	case !(f.throttles >= 0):
		return f, fmt.Errorf("alarms: --throttles %v: want 0 or more", f.throttles)
	case !(f.usage > 0 && f.usage <= 1):
		return f, fmt.Errorf("alarms: --usage %v: want a share in (0, 1]", f.usage)
	case f.periods < 1 || f.datapoints < 1 || f.datapoints > f.periods:
		return f, fmt.Errorf("alarms: --datapoints %d of --periods %d: want 1 <= datapoints <= periods", f.datapoints, f.periods)
	case f.timeout <= 0:
		return f, errors.New("alarms: --timeout must be positive")
	}
	return f, nil
}

// alarms is the "alarms" command.
func alarms(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := parseAlarmsFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	var budgets []alarmBudget
	if !f.delete {
		src, err := awsquota.New(awsquota.Config{Regions: f.regions, Endpoint: f.endpoint, Timeout: f.timeout})
		if err != nil {
			return fmt.Errorf("alarms: %w", err)
		}
		res, err := src.Inspect(ctx)
		switch {
		case errors.Is(err, awsquota.ErrNoCredentials):
			return fmt.Errorf("alarms: %w\n(set AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; or --aws-endpoint to use the Bedrock simulator)", err)
		case err != nil:
			return fmt.Errorf("alarms: discover budgets: %w", err)
		}
		budgets = alarmBudgets(res)
	}
	configFor := awsclient.RegionConfigs(nil, f.endpoint)
	connect := func(ctx context.Context, region string) (alarmAPI, error) {
		c, err := configFor(ctx, region)
		if err != nil {
			return nil, err
		}
		return cloudwatch.NewFromConfig(c, func(o *cloudwatch.Options) { o.HTTPClient = awsclient.SafeBodies(o.HTTPClient) }), nil
	}
	return runAlarms(ctx, f, budgets, connect, stdout)
}

// alarmBudget is a budget with the CloudWatch ModelId values that draw on
// it.
type alarmBudget struct {
	spec     broker.Spec
	modelIDs []string
}

// alarmBudgets pairs each discovered budget with the ids its quotas were
// matched to (the ids callers name, which are CloudWatch's ModelId
// dimension) that have the budget's scope: a quota shared by two scopes
// (a TPD quota "doubled for cross-region calls") names the ids of both.
// Without any, the budget gets every id awsmetrics reads for it.
func alarmBudgets(res awsquota.Result) []alarmBudget {
	out := make([]alarmBudget, 0, len(res.Specs))
	for _, s := range res.Specs {
		scoped := awsmetrics.ModelIDs(s.Key)
		var ids []string
		for _, q := range res.Quotas {
			if q.Runtime && q.Region == s.Key.Region && q.ModelID == s.Key.Model {
				for _, id := range q.ModelIDs {
					if slices.Contains(scoped, id) {
						ids = append(ids, id)
					}
				}
			}
		}
		if len(ids) == 0 {
			ids = scoped
		}
		slices.Sort(ids)
		out = append(out, alarmBudget{spec: s, modelIDs: slices.Compact(ids)})
	}
	return out
}

// alarmAction is one step of the plan.
type alarmAction struct {
	verb   string // create, update, unchanged, delete
	region string
	name   string
	what   string                          // metric and threshold, for people
	put    *cloudwatch.PutMetricAlarmInput // nil for delete
}

// runAlarms plans, prints and (with --apply) makes the changes, Region by
// Region.
func runAlarms(ctx context.Context, f alarmsFlags, budgets []alarmBudget, connect func(context.Context, string) (alarmAPI, error), stdout io.Writer) error {
	var plan []alarmAction
	apis := map[string]alarmAPI{}
	for _, region := range f.regions {
		api, err := connect(ctx, region)
		if err != nil {
			return fmt.Errorf("alarms: CloudWatch in %s: %w", region, err)
		}
		apis[region] = api
		existing, err := ownAlarms(ctx, api, f.prefix, region)
		if err != nil {
			return err
		}
		want := map[string]bool{}
		if !f.delete {
			for _, b := range budgets {
				if b.spec.Key.Region != region {
					continue
				}
				for _, in := range budgetAlarms(f, b) {
					name := aws.ToString(in.AlarmName)
					want[name] = true
					verb := "create"
					if old, ok := existing[name]; ok {
						verb = "update"
						if sameAlarm(putOf(old), in) {
							verb = "unchanged"
						}
					}
					plan = append(plan, alarmAction{verb: verb, region: region, name: name, what: describeAlarm(in), put: in})
				}
			}
		}
		var stale []string
		for name := range existing {
			if !want[name] {
				stale = append(stale, name)
			}
		}
		slices.Sort(stale)
		for _, name := range stale {
			plan = append(plan, alarmAction{verb: "delete", region: region, name: name, what: describeAlarm(putOf(existing[name]))})
		}
	}

	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ACTION\tALARM\tWHEN")
	counts := map[string]int{}
	for _, a := range plan {
		counts[a.verb]++
		fmt.Fprintf(tw, "%s\t%s\t%s\n", a.verb, a.name, a.what)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	summary := fmt.Sprintf("%d to create, %d to update, %d unchanged, %d to delete", counts["create"], counts["update"], counts["unchanged"], counts["delete"])
	if !f.apply {
		_, err := fmt.Fprintf(stdout, "\n%s. Dry run: nothing changed; --apply makes these changes.\n", summary)
		return err
	}
	for _, a := range plan {
		api := apis[a.region]
		switch a.verb {
		case "create", "update":
			if _, err := api.PutMetricAlarm(ctx, a.put); err != nil {
				return fmt.Errorf("alarms: %w", awsclient.Describe("put alarm "+a.name, "cloudwatch:PutMetricAlarm (and cloudwatch:TagResource)", a.region, err))
			}
		}
	}
	// Deletes go in batches of 100, DeleteAlarms' limit.
	for _, region := range f.regions {
		var names []string
		for _, a := range plan {
			if a.verb == "delete" && a.region == region {
				names = append(names, a.name)
			}
		}
		for batch := range slices.Chunk(names, 100) {
			if _, err := apis[region].DeleteAlarms(ctx, &cloudwatch.DeleteAlarmsInput{AlarmNames: batch}); err != nil {
				return fmt.Errorf("alarms: %w", awsclient.Describe("delete alarms", "cloudwatch:DeleteAlarms", region, err))
			}
		}
	}
	_, err := fmt.Fprintf(stdout, "\nDone: %s.\n", strings.NewReplacer("to create", "created", "to update", "updated", "to delete", "deleted").Replace(summary))
	return err
}

// maxAlarmPages bounds a DescribeAlarms pagination that does not end.
const maxAlarmPages = 1000

// ownAlarms lists the metric alarms this command made in region: named
// with the prefix and carrying the marker.
func ownAlarms(ctx context.Context, api alarmAPI, prefix, region string) (map[string]cwtypes.MetricAlarm, error) {
	out := map[string]cwtypes.MetricAlarm{}
	in := &cloudwatch.DescribeAlarmsInput{AlarmNamePrefix: aws.String(prefix + "/"), AlarmTypes: []cwtypes.AlarmType{cwtypes.AlarmTypeMetricAlarm}}
	for page := 0; ; page++ {
		if page == maxAlarmPages {
			return nil, fmt.Errorf("alarms: DescribeAlarms in %s returned more than %d pages", region, maxAlarmPages)
		}
		res, err := api.DescribeAlarms(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("alarms: %w", awsclient.Describe("list alarms", "cloudwatch:DescribeAlarms", region, err))
		}
		for _, a := range res.MetricAlarms {
			if strings.Contains(aws.ToString(a.AlarmDescription), alarmMarker) {
				out[aws.ToString(a.AlarmName)] = a
			}
		}
		if aws.ToString(res.NextToken) == "" {
			return out, nil
		}
		in.NextToken = res.NextToken
	}
}

// budgetAlarms are the alarms one budget gets.
func budgetAlarms(f alarmsFlags, b alarmBudget) []*cloudwatch.PutMetricAlarmInput {
	k := b.spec.Key
	budget := k.Region + " " + k.Scope.String() + " " + k.Model
	mk := func(rule, metric string, op cwtypes.ComparisonOperator, threshold float64, about string) *cloudwatch.PutMetricAlarmInput {
		in := &cloudwatch.PutMetricAlarmInput{
			AlarmName:          aws.String(f.prefix + "/" + rule + "/" + k.Region + "/" + k.Scope.String() + "/" + k.Model),
			AlarmDescription:   aws.String(about + " on " + budget + " (" + alarmMarker + "; quota-broker alarms --delete --apply removes it)"),
			ComparisonOperator: op,
			Threshold:          aws.Float64(threshold),
			EvaluationPeriods:  aws.Int32(int32(f.periods)),
			DatapointsToAlarm:  aws.Int32(int32(f.datapoints)),
			// No calls in a minute is not a problem.
			TreatMissingData: aws.String("notBreaching"),
			Tags: []cwtypes.Tag{
				{Key: aws.String("managed-by"), Value: aws.String("quota-broker")},
				{Key: aws.String("quota-broker:rule"), Value: aws.String(rule)},
				{Key: aws.String("quota-broker:budget"), Value: aws.String(k.String())},
			},
		}
		if f.topic != "" {
			in.AlarmActions, in.OKActions = []string{f.topic}, []string{f.topic}
		}
		stat := func(id string) *cwtypes.MetricStat {
			return &cwtypes.MetricStat{Period: aws.Int32(60), Stat: aws.String(string(cwtypes.StatisticSum)), Metric: &cwtypes.Metric{
				Namespace: aws.String("AWS/Bedrock"), MetricName: aws.String(metric),
				Dimensions: []cwtypes.Dimension{{Name: aws.String("ModelId"), Value: aws.String(id)}}}}
		}
		if len(b.modelIDs) == 1 {
			s := stat(b.modelIDs[0])
			in.Namespace, in.MetricName, in.Dimensions = s.Metric.Namespace, s.Metric.MetricName, s.Metric.Dimensions
			in.Period, in.Statistic = s.Period, cwtypes.StatisticSum
			return in
		}
		// Several ids draw on the budget (a geo profile from several
		// geographies' names): metric math adds them up.
		var ids []string
		for i, id := range b.modelIDs {
			q := cwtypes.MetricDataQuery{Id: aws.String(fmt.Sprintf("m%d", i)), MetricStat: stat(id), ReturnData: aws.Bool(false)}
			in.Metrics = append(in.Metrics, q)
			ids = append(ids, aws.ToString(q.Id))
		}
		in.Metrics = append(in.Metrics, cwtypes.MetricDataQuery{Id: aws.String("total"), Label: aws.String(metric),
			Expression: aws.String("SUM([" + strings.Join(ids, ",") + "])"), ReturnData: aws.Bool(true)})
		return in
	}
	out := []*cloudwatch.PutMetricAlarmInput{mk("throttles", "InvocationThrottles", cwtypes.ComparisonOperatorGreaterThanThreshold, f.throttles,
		fmt.Sprintf("Bedrock throttled more than %g calls a minute", f.throttles))}
	if tpm := b.spec.Quota.TPM; tpm > 0 {
		out = append(out, mk("tpm-usage", "EstimatedTPMQuotaUsage", cwtypes.ComparisonOperatorGreaterThanOrEqualToThreshold, float64(tpm)*f.usage,
			fmt.Sprintf("tokens charged to the TPM quota reached %g%% of its %d", 100*f.usage, tpm)))
	}
	return out
}

// putOf is the request that would make alarm a, for comparing and
// describing alarms one way.
func putOf(a cwtypes.MetricAlarm) *cloudwatch.PutMetricAlarmInput {
	return &cloudwatch.PutMetricAlarmInput{AlarmName: a.AlarmName, AlarmDescription: a.AlarmDescription,
		ComparisonOperator: a.ComparisonOperator, Threshold: a.Threshold, EvaluationPeriods: a.EvaluationPeriods,
		DatapointsToAlarm: a.DatapointsToAlarm, AlarmActions: a.AlarmActions, OKActions: a.OKActions,
		MetricName: a.MetricName, Dimensions: a.Dimensions, Metrics: a.Metrics, TreatMissingData: a.TreatMissingData}
}

// sameAlarm reports whether an existing alarm already says what in would.
func sameAlarm(old, in *cloudwatch.PutMetricAlarmInput) bool {
	return aws.ToString(old.AlarmDescription) == aws.ToString(in.AlarmDescription) &&
		old.ComparisonOperator == in.ComparisonOperator &&
		aws.ToFloat64(old.Threshold) == aws.ToFloat64(in.Threshold) &&
		aws.ToInt32(old.EvaluationPeriods) == aws.ToInt32(in.EvaluationPeriods) &&
		aws.ToInt32(old.DatapointsToAlarm) == aws.ToInt32(in.DatapointsToAlarm) &&
		aws.ToString(old.TreatMissingData) == aws.ToString(in.TreatMissingData) &&
		slices.Equal(old.AlarmActions, in.AlarmActions) && slices.Equal(old.OKActions, in.OKActions) &&
		slices.Equal(watched(old), watched(in))
}

// watched lists the metrics an alarm adds up, as "Metric{ModelId}", sorted.
func watched(in *cloudwatch.PutMetricAlarmInput) []string {
	var out []string
	for _, d := range in.Dimensions {
		out = append(out, aws.ToString(in.MetricName)+"{"+aws.ToString(d.Value)+"}")
	}
	for _, q := range in.Metrics {
		if s := q.MetricStat; s != nil && s.Metric != nil {
			for _, d := range s.Metric.Dimensions {
				out = append(out, aws.ToString(s.Metric.MetricName)+"{"+aws.ToString(d.Value)+"}")
			}
		}
	}
	slices.Sort(out)
	return out
}

// describeAlarm says in a line what an alarm watches and when it fires.
func describeAlarm(in *cloudwatch.PutMetricAlarmInput) string {
	sign := map[cwtypes.ComparisonOperator]string{cwtypes.ComparisonOperatorGreaterThanThreshold: ">",
		cwtypes.ComparisonOperatorGreaterThanOrEqualToThreshold: ">="}[in.ComparisonOperator]
	return fmt.Sprintf("%s %s %s a minute, %d of %d minutes", strings.Join(watched(in), " + "), cmp.Or(sign, string(in.ComparisonOperator)),
		strconv.FormatFloat(aws.ToFloat64(in.Threshold), 'f', -1, 64), aws.ToInt32(in.DatapointsToAlarm), aws.ToInt32(in.EvaluationPeriods))
}
