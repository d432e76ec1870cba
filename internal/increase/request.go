package increase

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/servicequotas"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/awsclient"
	"github.com/bedrockqb/quotabroker/broker/awsquota"
)

// Options say which quota to raise, to what, and whether to file.
type Options struct {
	Key broker.Key
	// Metric is TPM or RPM.
	Metric string
	// Desired is the value to ask for; 0: Evidence.Suggest's.
	Desired float64
	// File makes the request; without it nothing is filed.
	File bool
	// Endpoint is a base URL for the AWS clients (the Bedrock simulator);
	// empty: AWS.
	Endpoint string
}

// RequestedChange is one quota increase request.
type RequestedChange struct {
	ID          string    `json:"id"`
	Status      string    `json:"status"`
	Desired     float64   `json:"desired_value"`
	Created     time.Time `json:"created"`
	LastUpdated time.Time `json:"last_updated,omitzero"`
	CaseID      string    `json:"case_id,omitempty"`
}

// Report is the evidence, the quota, the request and the requests made
// before.
type Report struct {
	Evidence Evidence       `json:"evidence"`
	Quota    awsquota.Quota `json:"quota"`
	Metric   string         `json:"metric"`
	Desired  float64        `json:"desired_value"`
	Rule     string         `json:"rule"`
	// Command is the request as an AWS CLI command line.
	Command string `json:"command"`
	// Filed is the request made (Options.File); nil when none was.
	Filed *RequestedChange `json:"filed"`
	// Problem is why no request can be filed, or why filing failed.
	Problem      string            `json:"problem,omitempty"`
	History      []RequestedChange `json:"history"`
	HistoryError string            `json:"history_error,omitempty"`

	problem error // Problem as an error, with its cause
}

// Err is why no request was filed (Problem), nil when nothing stood in the
// way: the command's exit status.
func (r *Report) Err() error { return r.problem }

// Prepare looks up the quota the evidence is for in Service Quotas, decides
// the value to ask for, files the request when o.File says so, and lists
// the requests made for the quota. The error is a failure that leaves no
// report; why nothing was (or could be) filed is in the report
// (Report.Problem, Report.Err).
func Prepare(ctx context.Context, ev Evidence, o Options) (*Report, error) {
	src, err := awsquota.New(awsquota.Config{Regions: []string{o.Key.Region}, Endpoint: o.Endpoint})
	if err != nil {
		return nil, err
	}
	res, err := src.Inspect(ctx)
	if err != nil {
		return nil, err
	}
	q, err := findQuota(res.Quotas, o.Key, o.Metric)
	if err != nil {
		return nil, err
	}
	rep := &Report{Evidence: ev, Quota: q, Metric: o.Metric}
	rep.Desired, rep.Rule = o.Desired, "--desired"
	if o.Desired == 0 {
		rep.Desired, rep.Rule = ev.Suggest(o.Metric)
	}
	rep.Command = fmt.Sprintf("aws service-quotas request-service-quota-increase --region %s --service-code bedrock --quota-code %s --desired-value %s",
		o.Key.Region, q.QuotaCode, strconv.FormatFloat(rep.Desired, 'f', -1, 64))

	cfg, err := awsclient.LoadConfig(ctx, o.Key.Region, o.Endpoint)
	if err != nil {
		return nil, err
	}
	sq := servicequotas.NewFromConfig(cfg, func(o *servicequotas.Options) { o.HTTPClient = awsclient.SafeBodies(o.HTTPClient) })
	var problem error
	switch {
	case !q.Adjustable:
		problem = fmt.Errorf("quota %s (%s) is not adjustable: AWS does not take increase requests for it", q.QuotaCode, q.QuotaName)
	case rep.Desired <= q.Value:
		problem = fmt.Errorf("asking for %s is not an increase: the quota %s is %s already; pass --desired to ask for more",
			Thousands(rep.Desired), q.QuotaCode, Thousands(q.Value))
	case o.File:
		out, err := sq.RequestServiceQuotaIncrease(ctx, &servicequotas.RequestServiceQuotaIncreaseInput{
			ServiceCode: aws.String("bedrock"), QuotaCode: aws.String(q.QuotaCode), DesiredValue: aws.Float64(rep.Desired),
		})
		if err != nil {
			problem = awsclient.Describe("request a quota increase", "servicequotas:RequestServiceQuotaIncrease", o.Key.Region, err)
		} else if rq := out.RequestedQuota; rq != nil {
			rep.Filed = &RequestedChange{ID: aws.ToString(rq.Id), Status: string(rq.Status), Desired: aws.ToFloat64(rq.DesiredValue),
				Created: aws.ToTime(rq.Created), CaseID: aws.ToString(rq.CaseId)}
		}
	}
	if problem != nil {
		rep.problem, rep.Problem = problem, problem.Error()
	}
	if rep.History, err = changeHistory(ctx, sq, o.Key.Region, q.QuotaCode); err != nil {
		rep.HistoryError = err.Error()
	}
	return rep, nil
}

// findQuota is the Service Quotas row that sets metric on key's budget;
// when two wordings set it, the lower, as the broker enforces.
func findQuota(qs []awsquota.Quota, key broker.Key, metric string) (awsquota.Quota, error) {
	var found []awsquota.Quota
	for _, q := range qs {
		if q.Region == key.Region && strings.EqualFold(q.Metric, metric) && q.Scope == key.Scope.String() && q.ModelID == key.Model {
			found = append(found, q)
		}
	}
	if len(found) == 0 {
		return awsquota.Quota{}, fmt.Errorf("Service Quotas in %s lists no %s quota for %s calls of %s (quota-broker discover lists what it has)",
			key.Region, metric, key.Scope, key.Model)
	}
	slices.SortFunc(found, func(a, b awsquota.Quota) int { return cmp.Compare(a.Value, b.Value) })
	return found[0], nil
}

// changeHistory lists the requests made for a quota, newest first.
func changeHistory(ctx context.Context, sq *servicequotas.Client, region, code string) ([]RequestedChange, error) {
	out := []RequestedChange{}
	var token *string
	for page := 0; page < 100; page++ {
		resp, err := sq.ListRequestedServiceQuotaChangeHistoryByQuota(ctx, &servicequotas.ListRequestedServiceQuotaChangeHistoryByQuotaInput{
			ServiceCode: aws.String("bedrock"), QuotaCode: aws.String(code), NextToken: token,
		})
		if err != nil {
			return out, awsclient.Describe("list quota increase requests", "servicequotas:ListRequestedServiceQuotaChangeHistoryByQuota", region, err)
		}
		for _, c := range resp.RequestedQuotas {
			out = append(out, RequestedChange{ID: aws.ToString(c.Id), Status: string(c.Status), Desired: aws.ToFloat64(c.DesiredValue),
				Created: aws.ToTime(c.Created), LastUpdated: aws.ToTime(c.LastUpdated), CaseID: aws.ToString(c.CaseId)})
		}
		if resp.NextToken == nil || *resp.NextToken == "" || (token != nil && *token == *resp.NextToken) {
			break
		}
		token = resp.NextToken
	}
	return out, nil
}
