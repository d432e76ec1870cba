package bedrocksim

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Provisioned Throughput (bedrock-facts.md sections 1 and 3): governed by
// model units, not by the TPM quotas; a call names the throughput's ARN and
// draws on its capacity alone, charged input + 1.25 x cache_write + 0.1 x
// cache_read + output with no burndown. Its capacity is modelled as every
// quota is, a bucket of one minute's tokens.

// statusDeleted is the status SetProvisionedStatus takes for a throughput
// deleted: it is no longer listed and calls to it fail.
const statusDeleted = "Deleted"

// provisionedARN is the ARN of pt in region.
func (s *Sim) provisionedARN(region string, pt *ProvisionedThroughput) string {
	return fmt.Sprintf("arn:aws:bedrock:%s:%s:provisioned-model/%s", region, s.sc.AccountID, pt.Name)
}

// provisionedStatusLocked is pt's status now. Callers hold mu.
func (s *Sim) provisionedStatusLocked(pt *ProvisionedThroughput) string {
	if st, ok := s.ptStatus[pt.Name]; ok {
		return st
	}
	if pt.Status == "" {
		return "InService"
	}
	return pt.Status
}

// provisionedInLocked lists the throughputs of region that exist (any
// status but deleted). Callers hold mu.
func (s *Sim) provisionedInLocked(region string) []*ProvisionedThroughput {
	var out []*ProvisionedThroughput
	for i := range s.sc.ProvisionedModelThroughputs {
		pt := &s.sc.ProvisionedModelThroughputs[i]
		if (pt.Region == "" || pt.Region == region) && s.provisionedStatusLocked(pt) != statusDeleted {
			out = append(out, pt)
		}
	}
	return out
}

// SetProvisionedStatus sets a throughput's status (InService, Creating,
// Updating, Failed), or deletes it ("Deleted"): what a test does to see a
// throughput go away. It is what POST /_sim/provisioned calls.
func (s *Sim) SetProvisionedStatus(name, status string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.sc.ProvisionedModelThroughputs {
		if s.sc.ProvisionedModelThroughputs[i].Name == name {
			switch status {
			case "InService", "Creating", "Updating", "Failed", statusDeleted:
			default:
				return fmt.Errorf("set provisioned throughput %s: status %q: want InService, Creating, Updating, Failed or Deleted", name, status)
			}
			s.ptStatus[name] = status
			return nil
		}
	}
	return fmt.Errorf("set provisioned throughput %s: no such throughput in the scenario", name)
}

// resolveProvisioned resolves a provisioned model ARN called in region.
func (s *Sim) resolveProvisioned(region, arn string) (target, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, pt := range s.provisionedInLocked(region) {
		if s.provisionedARN(region, pt) != arn {
			continue
		}
		if st := s.provisionedStatusLocked(pt); st != "InService" {
			return target{}, fmt.Sprintf("The provisioned model %s is %s, not InService.", arn, st)
		}
		if pt.TokensPerMinutePerUnit <= 0 {
			return target{}, "provisioned throughput " + pt.Name + " has no tokensPerMinutePerUnit in the scenario: not simulated"
		}
		return target{model: s.models[pt.ModelID], scope: ScopeProvisioned, dim: arn, region: region, pt: pt}, ""
	}
	return target{}, msgInvalidModel
}

func isProvisionedARN(id string) bool {
	return strings.HasPrefix(id, "arn:") && strings.Contains(id, ":provisioned-model/")
}

// provisionedQuotaLocked is pt's capacity in rs, made on first use: a
// quota-like state with no row in Service Quotas. Callers hold mu.
func (s *Sim) provisionedQuotaLocked(rs *regionState, pt *ProvisionedThroughput) *quotaState {
	if q, ok := rs.provisioned[pt.Name]; ok {
		return q
	}
	c := float64(pt.ModelUnits) * pt.TokensPerMinutePerUnit
	q := &quotaState{
		row: Quota{Code: "provisioned/" + pt.Name, Name: fmt.Sprintf("Provisioned Throughput %s (%d model units of %s)", pt.Name, pt.ModelUnits, pt.ModelID),
			Value: c, Enforces: &Enforcement{Metric: MetricTPM, Scopes: []string{ScopeProvisioned}, Model: pt.ModelID}},
		applied: c,
		bucket:  bucket{capacity: c, period: time.Minute, level: c, last: s.Now()},
	}
	rs.provisioned[pt.Name] = q
	return q
}

// admitProvisionedLocked admits a call to a throughput if its capacity
// holds tokens, or throttles it having consumed nothing. Callers hold mu.
func (rs *regionState) admitProvisionedLocked(now time.Time, q *quotaState, tokens float64) (*reservation, throttleReason) {
	rs.requests++
	q.requests++
	q.bucket.refill(now)
	if q.bucket.level < tokens {
		rs.throttles++
		q.throttles++
		return nil, reasonTPM
	}
	rs.admitted++
	q.admitted++
	q.bucket.level -= tokens
	q.reserved += tokens
	return &reservation{tokenQuotas: []*quotaState{q}, reserved: tokens}, ""
}

// provisionedCharge is what a call costs a throughput: input + 1.25 x
// cache_write + 0.1 x cache_read + output.
func provisionedCharge(input, cacheWrite, cacheRead, output int) float64 {
	return float64(input) + 1.25*float64(cacheWrite) + 0.1*float64(cacheRead) + float64(output)
}

// provisionedQuotas are rs's throughput capacities in name order.
func (rs *regionState) provisionedQuotas() []*quotaState {
	out := make([]*quotaState, 0, len(rs.provisioned))
	for _, name := range slices.Sorted(maps.Keys(rs.provisioned)) {
		out = append(out, rs.provisioned[name])
	}
	return out
}
