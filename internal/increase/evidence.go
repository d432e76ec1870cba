package increase

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// Broker is what the evidence is read from: the broker's usage history and
// its budgets' margins. pb.QuotaBrokerClient satisfies it.
type Broker interface {
	GetUsageHistory(ctx context.Context, in *pb.GetUsageHistoryRequest, opts ...grpc.CallOption) (*pb.GetUsageHistoryResponse, error)
	ListBudgets(ctx context.Context, in *pb.ListBudgetsRequest, opts ...grpc.CallOption) (*pb.ListBudgetsResponse, error)
}

// Figures are a per-minute use over the minutes with traffic.
type Figures struct {
	Steady int64 `json:"steady"` // median
	P95    int64 `json:"p95"`
	Peak   int64 `json:"peak"`
	// PeakDemand adds what was refused to what was charged.
	PeakDemand int64 `json:"peak_demand"`
}

// Evidence is a budget's use over [From, To), as the broker recorded it.
type Evidence struct {
	Budget     string    `json:"budget"`
	From       time.Time `json:"from"`
	To         time.Time `json:"to"`
	Minutes    int       `json:"minutes_with_traffic"`
	Calls      int64     `json:"calls"`
	Successful int64     `json:"successful"`
	Throttles  int64     `json:"throttles"`
	Refused    int64     `json:"refused"`
	// Per successful call.
	AvgInputTokens  float64 `json:"avg_input_tokens"`
	AvgOutputTokens float64 `json:"avg_output_tokens"`
	TPM             Figures `json:"tpm"`
	RPM             Figures `json:"rpm"`
	Margin          float64 `json:"margin"`
}

// Collect reads key's per-minute history in [from, to) and its margin from
// the broker. Evidence.Minutes is 0 when the budget had no traffic.
func Collect(ctx context.Context, qb Broker, key broker.Key, from, to time.Time) (Evidence, error) {
	// The budget first: a model the broker has no budget for has no
	// history either, and "no usage" would send the user looking for
	// traffic rather than at the name.
	budgets, err := qb.ListBudgets(ctx, &pb.ListBudgetsRequest{})
	if err != nil {
		return Evidence{}, fmt.Errorf("list budgets: %w", err)
	}
	margin, found := 1.0, false
	var known []broker.Key
	for _, b := range budgets.GetBudgets() {
		k := keyOf(b.GetKey())
		known = append(known, k)
		if k == key {
			found = true
			if b.GetMargin() > 0 {
				margin = b.GetMargin()
			}
		}
	}
	if !found {
		return Evidence{}, &UnknownBudgetError{Key: key, Known: known}
	}
	points, err := readHistory(ctx, qb, key, from, to)
	if err != nil {
		return Evidence{}, err
	}
	return buildEvidence(key, from, to, points, margin), nil
}

// UnknownBudgetError is Collect's error for a key the broker has no budget
// for; Known are the keys it has, for suggestions.
type UnknownBudgetError struct {
	Key   broker.Key
	Known []broker.Key
}

func (e *UnknownBudgetError) Error() string {
	return fmt.Sprintf("unknown model: the broker has no budget %s", e.Key)
}

// historyChunk is how much history one GetUsageHistory asks for: a day of
// minutes, well inside the broker's 10,000 points and a small message.
const historyChunk = 24 * time.Hour

// readHistory returns the per-minute points of key's budget in [from, to).
func readHistory(ctx context.Context, qb Broker, key broker.Key, from, to time.Time) ([]*pb.UsagePoint, error) {
	var points []*pb.UsagePoint
	for start := from; start.Before(to); start = start.Add(historyChunk) {
		end := start.Add(historyChunk)
		if end.After(to) {
			end = to
		}
		resp, err := qb.GetUsageHistory(ctx, &pb.GetUsageHistoryRequest{
			Region: key.Region, Model: key.Model,
			From: timestamppb.New(start), To: timestamppb.New(end), Step: durationpb.New(time.Minute),
		})
		if err != nil {
			return nil, fmt.Errorf("read usage history: %w", err)
		}
		for _, s := range resp.GetSeries() {
			if keyOf(s.GetBudget()) == key {
				points = append(points, s.GetPoints()...)
			}
		}
	}
	return points, nil
}

func keyOf(k *pb.BudgetKey) broker.Key {
	var scope broker.Scope
	switch k.GetScope() {
	case pb.Scope_SCOPE_ON_DEMAND:
		scope = broker.ScopeOnDemand
	case pb.Scope_SCOPE_CROSS_REGION:
		scope = broker.ScopeCrossRegion
	case pb.Scope_SCOPE_GLOBAL:
		scope = broker.ScopeGlobal
	case pb.Scope_SCOPE_PROVISIONED:
		scope = broker.ScopeProvisioned
	}
	return broker.Key{Region: k.GetRegion(), Scope: scope, Model: k.GetModel()}
}

// buildEvidence reads per-minute points. A minute has traffic when the
// budget granted or refused in it (settlements alone, of calls granted the
// minute before, charge nothing to it).
func buildEvidence(key broker.Key, from, to time.Time, points []*pb.UsagePoint, margin float64) Evidence {
	ev := Evidence{Budget: key.String(), From: from, To: to, Margin: margin}
	var inTok, outTok, winTok, winReq int64
	for _, p := range points {
		ev.Calls += p.GetCalls()
		ev.Successful += p.GetSuccessful()
		ev.Throttles += p.GetThrottled() + p.GetReportedThrottles()
		ev.Refused += p.GetRefused()
		inTok += p.GetInputTokens()
		outTok += p.GetOutputTokens()
		winTok += p.GetWindowTokens()
		winReq += p.GetWindowRequests()
	}
	if ev.Successful > 0 {
		ev.AvgInputTokens = float64(inTok) / float64(ev.Successful)
		ev.AvgOutputTokens = float64(outTok) / float64(ev.Successful)
	}
	var avgCharge float64 // per granted request, to price a refusal
	if winReq > 0 {
		avgCharge = float64(winTok) / float64(winReq)
	}
	var tpm, rpm []int64
	for _, p := range points {
		if p.GetGranted() == 0 && p.GetWindowRequests() == 0 && p.GetRefused() == 0 {
			continue
		}
		ev.Minutes++
		tpm = append(tpm, p.GetWindowTokens())
		rpm = append(rpm, p.GetWindowRequests())
		ev.TPM.PeakDemand = max(ev.TPM.PeakDemand, p.GetWindowTokens()+int64(math.Ceil(float64(p.GetRefused())*avgCharge)))
		ev.RPM.PeakDemand = max(ev.RPM.PeakDemand, p.GetWindowRequests()+p.GetRefused())
	}
	fill := func(f *Figures, v []int64) {
		if len(v) == 0 {
			return
		}
		slices.Sort(v)
		f.Steady, f.P95, f.Peak = rank(v, 0.5), rank(v, 0.95), v[len(v)-1]
	}
	fill(&ev.TPM, tpm)
	fill(&ev.RPM, rpm)
	return ev
}

// rank is the nearest-rank q-quantile of sorted v.
func rank(v []int64, q float64) int64 {
	i := int(math.Ceil(q*float64(len(v)))) - 1
	return v[max(i, 0)]
}

// Suggest is the value to ask for on metric (TPM or RPM) and the rule that
// gave it: peak demand / margin, rounded up to two significant digits.
func (ev *Evidence) Suggest(metric string) (float64, string) {
	f := ev.TPM
	if metric == "RPM" {
		f = ev.RPM
	}
	v := roundUp2(float64(f.PeakDemand) / ev.Margin)
	return v, fmt.Sprintf("peak demand %s per minute / margin %g = %s, rounded up to two significant digits",
		Thousands(float64(f.PeakDemand)), ev.Margin, Thousands(float64(f.PeakDemand)/ev.Margin))
}

// roundUp2 rounds v up to two significant digits: 1,234,567 -> 1,300,000.
func roundUp2(v float64) float64 {
	if v <= 0 {
		return 0
	}
	unit := math.Pow(10, math.Max(0, math.Floor(math.Log10(v))-1))
	return math.Ceil(v/unit-1e-9) * unit
}

// Thousands prints a quota-sized number rounded to a whole one, with
// thousands separators: 1,234,567.
func Thousands(v float64) string {
	s := strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
