package awsquota

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	sqtypes "github.com/aws/aws-sdk-go-v2/service/servicequotas/types"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/quotaname"
)

const serviceCode = "bedrock"

// Where a quota's value came from.
const (
	sourceApplied = "applied" // ListServiceQuotas: the account's value
	sourceDefault = "default" // ListAWSDefaultServiceQuotas only
	sourceFile    = "file"    // a saved list-service-quotas output
)

// Reasons for quotas that are recognised but deliberately not brokered.
const (
	reasonZero      = "value is 0: AWS allows none; not brokered"
	reasonNoCatalog = "no catalogue given"
)

// Quota is one Service Quotas row and what discovery made of it. It is the
// discover command's JSON output, so its field names are a contract.
type Quota struct {
	Region    string  `json:"region"`
	QuotaCode string  `json:"quota_code"`
	QuotaName string  `json:"quota_name"`
	Value     float64 `json:"value"`
	// DefaultValue is AWS's default; nil when it was not listed (offline
	// files carry only the applied value).
	DefaultValue *float64  `json:"default_value"`
	Adjustable   bool      `json:"adjustable"`
	GlobalQuota  bool      `json:"global_quota,omitempty"`
	Source       string    `json:"source"` // applied, default or file
	ReadAt       time.Time `json:"read_at"`
	// ErrorReason is Service Quotas' own note when it could not read the
	// value ("DEPENDENCY_ACCESS_DENIED_ERROR: ...").
	ErrorReason string `json:"error_reason,omitempty"`

	// What the name says (quotaname.Classify).
	Scope    string `json:"scope"`  // on-demand, cross-region, global, provisioned, batch, mantle, other
	Metric   string `json:"metric"` // RPM, TPM, TPD, concurrency, other
	Model    string `json:"model"`  // as written in the quota, without the provider
	Provider string `json:"provider"`

	// What it matched (quotaname.Match): the foundation model, and the ids
	// callers name to draw on the quota (model id or profile ids).
	ModelID  string   `json:"model_id,omitempty"`
	ModelIDs []string `json:"model_ids"`

	// Runtime is true when the quota became (part of) a budget. Reason
	// says why not; for a quota applied to only some of its budgets it
	// says which part was not.
	Runtime bool   `json:"runtime"`
	Reason  string `json:"reason,omitempty"`
}

// Result is one discovery: the budgets and skipped quotas the broker uses,
// plus every quota row with what became of it, in Region then name order.
type Result struct {
	broker.Discovery
	Quotas []Quota
}

func (r *Result) merge(o Result) {
	r.Specs = append(r.Specs, o.Specs...)
	r.Skipped = append(r.Skipped, o.Skipped...)
	r.Quotas = append(r.Quotas, o.Quotas...)
	r.Provisioned = append(r.Provisioned, o.Provisioned...)
	r.ProvisionedRegions = append(r.ProvisionedRegions, o.ProvisionedRegions...)
	r.Notes = append(r.Notes, o.Notes...)
}

// row is one quota as listed, before classification.
type row struct {
	code, name          string
	value               *float64
	def                 *float64
	adjustable, global  bool
	source, errorReason string
	at                  time.Time
}

func rowOf(q sqtypes.ServiceQuota, source string, at time.Time) row {
	r := row{
		code: aws.ToString(q.QuotaCode), name: aws.ToString(q.QuotaName), value: q.Value,
		adjustable: q.Adjustable, global: q.GlobalQuota, source: source, at: at,
	}
	if e := q.ErrorReason; e != nil {
		r.errorReason = strings.TrimSpace(string(e.ErrorCode) + ": " + aws.ToString(e.ErrorMessage))
	}
	return r
}

// mergeRows joins applied and default listings by quota code. The applied
// value wins; a code only in the defaults keeps the default value and says
// so. A row without a code (never seen from AWS, possible in a hand-edited
// file) is keyed by its name so that it is still accounted for.
func mergeRows(applied, defaults []row) []row {
	key := func(r row) string {
		if r.code != "" {
			return r.code
		}
		return "name:" + r.name
	}
	byKey := map[string]int{}
	var out []row
	for _, r := range applied {
		if i, ok := byKey[key(r)]; ok {
			out[i] = r // a code listed twice: the later page is newer
			continue
		}
		byKey[key(r)] = len(out)
		out = append(out, r)
	}
	for _, d := range defaults {
		i, ok := byKey[key(d)]
		if !ok {
			d.def = d.value
			byKey[key(d)] = len(out)
			out = append(out, d)
			continue
		}
		out[i].def = d.value
		if out[i].value == nil { // applied row without a value (ErrorReason)
			out[i].value, out[i].source = d.value, sourceDefault
		}
	}
	return out
}

// contribution is one limit a quota sets on one budget.
type contribution struct {
	row    int
	key    broker.Key
	metric quotaname.Metric
	value  int64
}

// build turns one Region's quota rows into budgets. cat nil means no
// catalogue: quotas are classified but nothing is matched.
func build(region, source string, at time.Time, rows []row, cat *quotaname.Catalogue) Result {
	rows = slices.Clone(rows)
	slices.SortStableFunc(rows, func(a, b row) int {
		return cmp.Or(strings.Compare(a.name, b.name), strings.Compare(a.code, b.code))
	})
	res := Result{Discovery: broker.Discovery{At: at}, Quotas: make([]Quota, len(rows))}
	var contribs []contribution
	partial := map[int]string{} // row -> the part of it that was not applied
	for i, r := range rows {
		c := quotaname.Classify(r.name)
		q := Quota{
			Region: region, QuotaCode: r.code, QuotaName: r.name, DefaultValue: r.def,
			Adjustable: r.adjustable, GlobalQuota: r.global, Source: r.source, ReadAt: r.at,
			ErrorReason: r.errorReason, Scope: c.Scope.String(), Metric: c.Metric.String(),
			Model: c.Model, Provider: c.Provider, ModelIDs: []string{},
		}
		if r.value != nil {
			q.Value = *r.value
		}
		cs, reason, note := interpret(i, region, c, r, cat, &q)
		q.Reason = reason
		if note != "" {
			partial[i] = note
		}
		contribs = append(contribs, cs...)
		res.Quotas[i] = q
	}

	// Two quotas setting the same limit of the same budget (two names
	// matched to one model): the lower value is the one AWS can enforce
	// for certain, so it wins; the other is reported, not dropped.
	type slot struct {
		key    broker.Key
		metric quotaname.Metric
	}
	winner := map[slot]contribution{}
	for _, c := range contribs {
		s := slot{c.key, c.metric}
		if w, ok := winner[s]; !ok || c.value < w.value {
			winner[s] = c
		}
	}
	wins := map[int]bool{}
	specs := map[broker.Key]*broker.Spec{}
	for s, c := range winner {
		wins[c.row] = true
		sp := specs[s.key]
		if sp == nil {
			sp = &broker.Spec{Key: s.key, Source: source, SourceTime: at}
			specs[s.key] = sp
		}
		r := rows[c.row]
		ref := broker.QuotaRef{Code: r.code, Name: r.name, Applied: c.value, Adjustable: r.adjustable}
		if r.value != nil {
			ref.Applied = int64(*r.value) // as AWS states it, before any doubling
		}
		if r.def != nil {
			ref.Default = int64(*r.def)
		}
		switch s.metric {
		case quotaname.RPM:
			ref.Limit = "rpm"
		case quotaname.TPM:
			ref.Limit = "tpm"
		case quotaname.TPD:
			ref.Limit = "tpd"
		case quotaname.Concurrency:
			ref.Limit = "concurrency"
		}
		sp.Quotas = append(sp.Quotas, ref)
		switch s.metric {
		case quotaname.RPM:
			sp.Quota.RPM = c.value
		case quotaname.TPM:
			sp.Quota.TPM = c.value
		case quotaname.TPD:
			sp.Quota.TPD = c.value
		case quotaname.Concurrency:
			sp.Quota.Concurrency = c.value
		}
	}
	var lost = map[int]contribution{}
	for _, c := range contribs {
		if !wins[c.row] {
			lost[c.row] = c
		}
	}
	for i := range res.Quotas {
		q := &res.Quotas[i]
		switch {
		case wins[i]:
			q.Runtime = true
			q.Reason = partial[i]
		case q.Reason == "":
			c, ok := lost[i]
			if !ok { // interpret returns limits or a reason; never neither
				q.Reason = "internal: quota set no limit"
				break
			}
			w := winner[slot{c.key, c.metric}]
			q.Reason = fmt.Sprintf("superseded: %s (%s) sets %s of %s lower (%d); the lower value is used",
				rows[w.row].code, rows[w.row].name, c.metric, c.key, w.value)
		}
		if !q.Runtime {
			res.Skipped = append(res.Skipped, broker.SkippedQuota{Region: region, Code: q.QuotaCode, Name: q.QuotaName, Reason: q.Reason})
		}
	}
	for _, sp := range specs {
		slices.SortFunc(sp.Quotas, func(a, b broker.QuotaRef) int { return strings.Compare(a.Limit, b.Limit) })
		res.Specs = append(res.Specs, *sp)
	}
	slices.SortFunc(res.Specs, func(a, b broker.Spec) int {
		return cmp.Or(strings.Compare(a.Key.Region, b.Key.Region), cmp.Compare(a.Key.Scope, b.Key.Scope), strings.Compare(a.Key.Model, b.Key.Model))
	})
	return res
}

// interpret decides what one quota sets. It returns the limits it sets, or
// a reason why none; note explains a part not applied (a tokens-per-day
// quota usable only for its cross-region half, say). q gets the match.
func interpret(i int, region string, c quotaname.Class, r row, cat *quotaname.Catalogue, q *Quota) (cs []contribution, reason, note string) {
	switch {
	case !c.Runtime:
		// Match words the reason for every kind of non-runtime quota.
		return nil, quotaname.Match(c, quotaname.Catalogue{}).Reason, ""
	case c.LatencyOptimized:
		return nil, "latency-optimized variant: its own quota, drawn only by calls that ask for latency optimization; not brokered", ""
	case c.Context != "":
		return nil, c.Context + " context-length variant: its own quota, drawn only by long-context calls; not brokered", ""
	case c.Async:
		return nil, "async concurrent requests (StartAsyncInvoke jobs), not bedrock-runtime calls; not brokered", ""
	case c.Metric == quotaname.OtherMetric:
		return nil, "runtime quota with a metric the broker does not enforce; not brokered", ""
	case r.value == nil:
		return nil, "no value listed" + suffix(r.errorReason), ""
	case *r.value == 0:
		return nil, reasonZero, ""
	case *r.value < 0 || math.IsNaN(*r.value):
		return nil, fmt.Sprintf("value %v is not a limit; not brokered", *r.value), ""
	case cat == nil:
		return nil, reasonNoCatalog, ""
	}
	v := int64(math.Min(math.Floor(*r.value), math.MaxInt64/2))
	add := func(m quotaname.MatchResult, scope broker.Scope, v int64) {
		cs = append(cs, contribution{row: i, key: broker.Key{Region: region, Scope: scope, Model: m.ModelID}, metric: c.Metric, value: v})
		q.ModelIDs = append(q.ModelIDs, m.IDs...)
	}

	if c.Scope == quotaname.OnDemand && c.Metric == quotaname.TPD && invocationTPD(c) {
		// "Model invocation max tokens per day": the on-demand quota and,
		// doubled when the name says so, the geo profile's. Either half
		// may be uncallable (profile-only models have no on-demand).
		od := quotaname.Match(c, *cat)
		geo := c
		geo.Scope = quotaname.CrossRegion
		gm := quotaname.Match(geo, *cat)
		q.ModelID = cmp.Or(od.ModelID, gm.ModelID)
		if od.Failure == quotaname.NoFailure {
			add(od, broker.ScopeOnDemand, v)
		}
		if gm.Failure == quotaname.NoFailure {
			gv := v
			if c.DoubledCrossRegion {
				gv = 2 * v
			}
			add(gm, broker.ScopeCrossRegion, gv)
		}
		slices.Sort(q.ModelIDs)
		switch {
		case len(cs) == 0:
			return nil, od.Reason + "; cross-region: " + gm.Reason, ""
		case od.Failure != quotaname.NoFailure:
			return cs, "", "on-demand part not applied: " + od.Reason
		case gm.Failure != quotaname.NoFailure:
			return cs, "", "cross-region part not applied: " + gm.Reason
		}
		return cs, "", ""
	}

	m := quotaname.Match(c, *cat)
	q.ModelID = m.ModelID
	if m.Failure != quotaname.NoFailure {
		return nil, m.Reason, ""
	}
	switch c.Scope {
	case quotaname.OnDemand:
		add(m, broker.ScopeOnDemand, v)
	case quotaname.CrossRegion:
		add(m, broker.ScopeCrossRegion, v)
	case quotaname.Global:
		add(m, broker.ScopeGlobal, v)
	}
	return cs, "", ""
}

// invocationTPD tells "Model invocation max tokens per day" apart from a
// plain on-demand tokens-per-day quota, should AWS ever publish one: only
// the former also covers the geo profile.
func invocationTPD(c quotaname.Class) bool {
	return c.DoubledCrossRegion || strings.HasPrefix(strings.ToLower(strings.TrimSpace(c.Name)), "model invocation")
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}
