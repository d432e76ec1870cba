package server

import (
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

func priorityFromPB(p pb.Priority) (broker.Priority, error) {
	switch p {
	case pb.Priority_PRIORITY_UNSPECIFIED, pb.Priority_PRIORITY_STANDARD:
		return broker.PriorityStandard, nil
	case pb.Priority_PRIORITY_INTERACTIVE:
		return broker.PriorityInteractive, nil
	case pb.Priority_PRIORITY_BATCH:
		return broker.PriorityBatch, nil
	}
	return 0, status.Errorf(codes.InvalidArgument, "priority: %d is not a priority", int32(p))
}

func outcomeFromPB(o pb.Outcome) (broker.Outcome, error) {
	switch o {
	case pb.Outcome_OUTCOME_SUCCESS:
		return broker.OutcomeSuccess, nil
	case pb.Outcome_OUTCOME_THROTTLED:
		return broker.OutcomeThrottled, nil
	case pb.Outcome_OUTCOME_ERROR:
		return broker.OutcomeError, nil
	case pb.Outcome_OUTCOME_CANCELLED:
		return broker.OutcomeCancelled, nil
	}
	return 0, status.Error(codes.InvalidArgument, "outcome: must be OUTCOME_SUCCESS, OUTCOME_THROTTLED, OUTCOME_ERROR or OUTCOME_CANCELLED")
}

func scopeToPB(s broker.Scope) pb.Scope {
	switch s {
	case broker.ScopeOnDemand:
		return pb.Scope_SCOPE_ON_DEMAND
	case broker.ScopeCrossRegion:
		return pb.Scope_SCOPE_CROSS_REGION
	case broker.ScopeGlobal:
		return pb.Scope_SCOPE_GLOBAL
	case broker.ScopeProvisioned:
		return pb.Scope_SCOPE_PROVISIONED
	}
	return pb.Scope_SCOPE_UNSPECIFIED
}

func keyToPB(k broker.Key) *pb.BudgetKey {
	return &pb.BudgetKey{Region: k.Region, Scope: scopeToPB(k.Scope), Model: k.Model}
}

func limitsToPB(l broker.Limits) *pb.Limits {
	return &pb.Limits{RequestsPerMinute: l.RPM, TokensPerMinute: l.TPM, TokensPerDay: l.TPD, Concurrency: l.Concurrency}
}

func timestampPB(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func durationPB(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

func leaseToPB(l broker.Lease) *pb.Lease {
	return &pb.Lease{
		LeaseId:         l.ID,
		Budget:          keyToPB(l.Key),
		ReservedTokens:  l.Reserved,
		GrantedAt:       timestampPB(l.GrantedAt),
		ExpiresAt:       timestampPB(l.ExpiresAt),
		OutputBurndown:  l.Burndown,
		MaxOutputTokens: l.MaxOutputTokens,
	}
}

func budgetToPB(b broker.BudgetInfo) *pb.Budget {
	out := &pb.Budget{
		Key:                    keyToPB(b.Spec.Key),
		Quota:                  limitsToPB(b.Spec.Quota),
		Effective:              limitsToPB(b.Effective),
		Source:                 b.Spec.Source,
		SourceTime:             timestampPB(b.Spec.SourceTime),
		OutputBurndown:         b.Burndown,
		DefaultMaxOutputTokens: b.MaxOutputTokens,
		Margin:                 b.Margin,
		Static:                 limitsToPB(b.Static),
		Adaptive: &pb.Adaptive{
			Ceiling:                     limitsToPB(b.Adaptive.Ceiling),
			TokensPerMinuteAtThrottle:   b.Adaptive.TokensWmax,
			RequestsPerMinuteAtThrottle: b.Adaptive.RequestsWmax,
			LastDecrease:                timestampPB(b.Adaptive.LastDecrease),
			Decreases:                   b.Adaptive.Throttles,
			Reason:                      b.Adaptive.Reason,
		},
	}
	for _, q := range b.Spec.Quotas {
		out.Quotas = append(out.Quotas, &pb.QuotaRef{Limit: q.Limit, QuotaCode: q.Code, QuotaName: q.Name,
			AppliedValue: q.Applied, DefaultValue: q.Default, Adjustable: q.Adjustable})
	}
	if o := b.Override; o != nil {
		out.Override = &pb.LimitOverride{
			RequestsPerMinute: o.RPM, TokensPerMinute: o.TPM, TokensPerDay: o.TPD, Concurrency: o.Concurrency,
			Reason: o.Reason, SetAt: timestampPB(o.SetAt),
		}
	}
	return out
}

func reportToPB(r broker.BudgetReport) *pb.BudgetReport {
	c := r.Counters
	return &pb.BudgetReport{
		Budget: budgetToPB(r.BudgetInfo),
		Usage: &pb.WindowUsage{
			RequestsLastMinute: r.Usage.RequestsLastMinute,
			TokensLastMinute:   r.Usage.TokensLastMinute,
			TokensLastDay:      r.Usage.TokensLastDay,
			Concurrent:         r.Usage.Concurrent,
		},
		OutstandingLeases: r.Outstanding,
		Waiters:           r.Waiters,
		Counters: &pb.Counters{
			Granted: c.Granted, Refused: c.Refused, Completed: c.Completed, Throttled: c.Throttled,
			Expired: c.Expired, Errors: c.Errors, Cancelled: c.Cancelled, ReportedThrottles: c.ReportedThrottles,
			ReservedTokens: c.ReservedTokens, SettledTokens: c.SettledTokens, ReturnedTokens: c.ReturnedTokens,
			UnsetMaxTokens: c.UnsetMaxTokens,
		},
		Utilisation: r.Utilisation,
	}
}

func usageStatsToPB(s *broker.Stats) *pb.UsageStats {
	return &pb.UsageStats{
		Granted: s.Granted, Refused: s.Refused, Calls: s.Calls(), Successful: s.Successful(),
		Throttled: s.Throttled + s.ReportedThrottles, ThrottleRate: s.ThrottleRate(), Errors: s.Errors,
		Cancelled: s.Cancelled, Expired: s.Expired, ReservedTokens: s.ReservedTokens, SettledTokens: s.SettledTokens,
		InputTokens: s.InputTokens, OutputTokens: s.OutputTokens, Truncated: s.Truncated,
		WindowTokens: s.WindowTokens, WindowRequests: s.WindowRequests,
	}
}

// activityToPB describes a budget with no history as all zeros, not as
// absent: no traffic is a fact.
func activityToPB(a *broker.Activity) *pb.Activity {
	if a == nil {
		a = &broker.Activity{RecommendationNote: "no history"}
	}
	out := &pb.Activity{
		LastMinute: usageStatsToPB(&a.LastMinute), LastHour: usageStatsToPB(&a.LastHour), LastDay: usageStatsToPB(&a.LastDay),
		RecommendedMaxTokens: a.RecommendedMaxTokens, RecommendationNote: a.RecommendationNote,
		OutputTokensP50: a.OutputP50, OutputTokensP99: a.OutputP99,
	}
	for i := range a.TopClients {
		c := &a.TopClients[i]
		out.TopClients = append(out.TopClients, &pb.ClientUsage{Client: c.Client, Usage: usageStatsToPB(&c.Stats)})
	}
	return out
}

// discoveryToPB is nil for a broker with static budgets.
func discoveryToPB(d broker.DiscoveryStatus, now time.Time) *pb.Discovery {
	if !d.Enabled {
		return nil
	}
	out := &pb.Discovery{
		LastSuccess: timestampPB(d.LastSuccess),
		LastAttempt: timestampPB(d.LastAttempt),
		LastError:   d.LastError,
	}
	if !d.LastSuccess.IsZero() {
		out.QuotaAge = durationPB(now.Sub(d.LastSuccess))
	}
	for _, q := range d.Skipped {
		out.Skipped = append(out.Skipped, &pb.SkippedQuota{Region: q.Region, QuotaCode: q.Code, QuotaName: q.Name, Reason: q.Reason})
	}
	for _, p := range d.Provisioned {
		out.Provisioned = append(out.Provisioned, &pb.ProvisionedThroughput{Region: p.Region, Name: p.Name, Arn: p.ARN,
			Model: p.Model, Status: p.Status, ModelUnits: p.ModelUnits, Commitment: p.Commitment})
	}
	out.Notes = d.Notes
	return out
}

// acquired is an AcquireLease answer's messages in one allocation instead
// of six: the answer to every grant.
type acquired struct {
	resp             pb.AcquireLeaseResponse
	lease            pb.Lease
	budget           pb.BudgetKey
	granted, expires timestamppb.Timestamp
	waited           durationpb.Duration
}

// acquiredToPB says where the caller calls: the route's target, or the
// budget's Region and the model id the request named. The lease is as
// leaseToPB makes it.
func acquiredToPB(d broker.Decision, req *pb.AcquireLeaseRequest) *pb.AcquireLeaseResponse {
	a := &acquired{}
	l := d.Lease
	a.budget.Region, a.budget.Scope, a.budget.Model = l.Key.Region, scopeToPB(l.Key.Scope), l.Key.Model
	a.lease.LeaseId, a.lease.Budget, a.lease.ReservedTokens = l.ID, &a.budget, l.Reserved
	if !l.GrantedAt.IsZero() {
		a.granted.Seconds, a.granted.Nanos = l.GrantedAt.Unix(), int32(l.GrantedAt.Nanosecond())
		a.lease.GrantedAt = &a.granted
	}
	if !l.ExpiresAt.IsZero() {
		a.expires.Seconds, a.expires.Nanos = l.ExpiresAt.Unix(), int32(l.ExpiresAt.Nanosecond())
		a.lease.ExpiresAt = &a.expires
	}
	a.lease.OutputBurndown, a.lease.MaxOutputTokens = l.Burndown, l.MaxOutputTokens
	nanos := d.Waited.Nanoseconds()
	a.waited.Seconds, a.waited.Nanos = nanos/1e9, int32(nanos%1e9)
	out := &a.resp
	out.Lease, out.Waited = &a.lease, &a.waited
	if r := d.Route; r.Route != "" {
		out.Lease.Region, out.Lease.ModelId = r.Target.Key.Region, r.Target.ModelID
		out.Route = &pb.RouteGrant{Route: r.Route, TargetIndex: int32(r.Index), Reason: routeReasonToPB(r.Reason)}
		return out
	}
	out.Lease.Region, out.Lease.ModelId = d.Lease.Key.Region, req.GetModelId()
	return out
}

func routeReasonToPB(r broker.RouteReason) pb.RouteReason {
	switch r {
	case broker.ReasonRoom:
		return pb.RouteReason_ROUTE_REASON_ROOM
	case broker.ReasonAffinity:
		return pb.RouteReason_ROUTE_REASON_AFFINITY
	case broker.ReasonSpill:
		return pb.RouteReason_ROUTE_REASON_SPILL
	}
	return pb.RouteReason_ROUTE_REASON_UNSPECIFIED
}

func routesToPB(rs []broker.RouteInfo) []*pb.RouteReport {
	var out []*pb.RouteReport
	for _, r := range rs {
		pr := &pb.RouteReport{Name: r.Name, Refused: r.Refused}
		for i, t := range r.Targets {
			c := r.Counters[i]
			pr.Targets = append(pr.Targets, &pb.RouteTargetReport{Budget: keyToPB(t.Key), ModelId: t.ModelID,
				Room: c.Room, Affinity: c.Affinity, Spill: c.Spill, Waited: c.Waited, Waiters: int64(r.Queued[i])})
		}
		out = append(out, pr)
	}
	return out
}
