package server

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// CloudWatch reads what AWS itself counted for a budget, so that
// GetUsageHistory can show traffic that bypassed the broker. cmd wires it
// to broker/awsmetrics.
type CloudWatch interface {
	// Usage returns n steps of step from from; Points[i] covers the step
	// starting at from + i x step.
	Usage(ctx context.Context, key broker.Key, from time.Time, step time.Duration, n int) (CloudWatchUsage, error)
}

// CloudWatchUsage is one budget's CloudWatch figures.
type CloudWatchUsage struct {
	ModelIDs []string
	Points   []CloudWatchPoint
}

// CloudWatchPoint is what CloudWatch counted in one step.
type CloudWatchPoint struct {
	Invocations, Throttles, InputTokens, OutputTokens, EstimatedTPMQuotaUsage int64
}

// defaultHistorySpan is the span of a GetUsageHistory that names no from.
const defaultHistorySpan = time.Hour

// historyQueue is how long a GetUsageHistory waits for one of the
// Config.MaxConcurrentHistory slots before it is refused.
const historyQueue = time.Second

// historySlots bounds the GetUsageHistory calls at work at once. A call's
// memory is bounded by the domain (at most 50,000 points, ~8.4 MB of points, and its
// encoded answer); this bounds how many such calls run together, so the
// broker's memory stays within slots x that, and the calls cannot take every
// core from the lease path. A call beyond the slots waits briefly, then is
// refused with RESOURCE_EXHAUSTED and a retry delay.
type historySlots chan struct{}

func (h historySlots) acquire(ctx context.Context) (release func(), err error) {
	select {
	case h <- struct{}{}:
		return func() { <-h }, nil
	default:
	}
	t := time.NewTimer(historyQueue) // system time, like the RPC deadline that also bounds it
	defer t.Stop()
	select {
	case h <- struct{}{}:
		return func() { <-h }, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-t.C:
		return nil, busy(historyQueue)
	}
}

// GetUsageHistory reads the broker's history and, with Config.CloudWatch,
// adds CloudWatch's figures; a CloudWatch failure leaves the broker's
// figures complete and says why in cloudwatch_error.
func (s *Server) GetUsageHistory(ctx context.Context, req *pb.GetUsageHistoryRequest) (*pb.GetUsageHistoryResponse, error) {
	if len(req.GetRegion()) > 64 {
		return nil, status.Errorf(codes.InvalidArgument, "region: is %d bytes long; at most 64", len(req.GetRegion()))
	}
	if len(req.GetModel()) > 2048 {
		return nil, status.Errorf(codes.InvalidArgument, "model: is %d bytes long; at most 2048", len(req.GetModel()))
	}
	to := s.clock.Now()
	if req.GetTo() != nil {
		if err := req.GetTo().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "to: %v", err)
		}
		to = req.GetTo().AsTime()
	}
	from := to.Add(-defaultHistorySpan)
	if req.GetFrom() != nil {
		if err := req.GetFrom().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "from: %v", err)
		}
		from = req.GetFrom().AsTime()
	}
	step := time.Minute
	if req.GetStep() != nil {
		if err := req.GetStep().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "step: %v", err)
		}
		if step = req.GetStep().AsDuration(); step <= 0 {
			return nil, status.Errorf(codes.InvalidArgument, "step: %v is not positive", step)
		}
	}
	release, err := s.history.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	// The domain checks the rest (whole minutes, from before to, at most
	// 10,000 points, at most 50,000 over all budgets) and names the field.
	series, err := s.ops.History(ctx, broker.HistoryQuery{
		Filter: broker.ReportFilter{Region: req.GetRegion(), Model: req.GetModel()},
		From:   from, To: to, Step: step,
	})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	from = from.Truncate(time.Minute)
	out := &pb.GetUsageHistoryResponse{From: timestampPB(from), Step: durationPB(step), Steps: broker.HistorySteps(from, to, step)}
	for _, sr := range series {
		var cw *CloudWatchUsage
		if s.cfg.CloudWatch != nil && out.CloudwatchError == "" {
			u, err := s.cfg.CloudWatch.Usage(ctx, sr.Key, sr.From, sr.Step, len(sr.Points))
			switch {
			case err != nil:
				s.log.WarnContext(ctx, "CloudWatch metrics could not be read", "budget", sr.Key.String(), "err", err)
				out.CloudwatchError = err.Error()
			case len(u.Points) != len(sr.Points):
				out.CloudwatchError = "CloudWatch answered for a different number of steps"
			default:
				cw = &u
			}
		}
		out.Series = append(out.Series, seriesToPB(sr, cw))
	}
	return out, nil
}

func seriesToPB(sr broker.Series, cw *CloudWatchUsage) *pb.UsageSeries {
	out := &pb.UsageSeries{Budget: keyToPB(sr.Key), Total: usagePointToPB(&sr.Total)}
	var total CloudWatchPoint
	for i := range sr.Points {
		p := &sr.Points[i]
		var c *CloudWatchPoint
		if cw != nil {
			c = &cw.Points[i]
			total.add(c)
		}
		if *p == (broker.Stats{}) && (c == nil || *c == (CloudWatchPoint{})) {
			continue
		}
		pp := usagePointToPB(p)
		pp.Start = timestampPB(sr.From.Add(time.Duration(i) * sr.Step))
		c.setPB(pp)
		out.Points = append(out.Points, pp)
	}
	if cw != nil {
		out.CloudwatchModelIds = cw.ModelIDs
		total.setPB(out.Total)
	}
	return out
}

func usagePointToPB(s *broker.Stats) *pb.UsagePoint {
	return &pb.UsagePoint{
		Calls: s.Calls(), Successful: s.Successful(),
		Granted: s.Granted, Refused: s.Refused, Completed: s.Completed,
		Throttled: s.Throttled, Errors: s.Errors, Cancelled: s.Cancelled,
		ReportedThrottles: s.ReportedThrottles, Expired: s.Expired,
		InputTokens: s.InputTokens, OutputTokens: s.OutputTokens,
		CacheReadInputTokens: s.CacheReadTokens, CacheWriteInputTokens: s.CacheWriteTokens,
		ReservedTokens: s.ReservedTokens, SettledTokens: s.SettledTokens, Truncated: s.Truncated,
		WindowTokens: s.WindowTokens, WindowRequests: s.WindowRequests,
		LimitTpm: s.LimitTPM, LimitRpm: s.LimitRPM,
	}
}

func (c *CloudWatchPoint) add(o *CloudWatchPoint) {
	c.Invocations += o.Invocations
	c.Throttles += o.Throttles
	c.InputTokens += o.InputTokens
	c.OutputTokens += o.OutputTokens
	c.EstimatedTPMQuotaUsage += o.EstimatedTPMQuotaUsage
}

// setPB fills p's CloudWatch fields; a nil c leaves them unset.
func (c *CloudWatchPoint) setPB(p *pb.UsagePoint) {
	if c == nil {
		return
	}
	p.CloudwatchInvocations = &c.Invocations
	p.CloudwatchThrottles = &c.Throttles
	p.CloudwatchInputTokens = &c.InputTokens
	p.CloudwatchOutputTokens = &c.OutputTokens
	p.CloudwatchEstimatedTpmQuotaUsage = &c.EstimatedTPMQuotaUsage
}
