package alert

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// Source is what the Alerter needs of the broker: its report of every
// budget, as of the returned time (the broker's clock, which the Alerter
// uses as its own).
type Source interface {
	Report(f broker.ReportFilter) ([]broker.BudgetReport, time.Time)
}

// Sink receives events. Notify is called from the Alerter's goroutine and
// must not block on I/O: a slow sink would delay every later evaluation.
type Sink interface {
	Notify(Event)
}

// Rule names a condition.
type Rule string

const (
	RuleUtilisation  Rule = "utilisation"
	RuleThrottleRate Rule = "throttle_rate"
	RuleRefusalRate  Rule = "refusal_rate"
)

// Status is an event's kind.
type Status string

const (
	StatusFiring   Status = "firing"
	StatusResolved Status = "resolved"
)

// Budget identifies the budget an event is about.
type Budget struct {
	Region string `json:"region"`
	Scope  string `json:"scope"`
	Model  string `json:"model"`
}

func budgetOf(k broker.Key) Budget {
	return Budget{Region: k.Region, Scope: k.Scope.String(), Model: k.Model}
}

func (b Budget) String() string { return b.Region + " " + b.Scope + " " + b.Model }

// Event is one firing or resolved alert. Its JSON form is the webhook's
// body (Text is a Slack-compatible copy of Summary).
type Event struct {
	Status Status `json:"status"`
	Rule   Rule   `json:"rule"`
	Budget Budget `json:"budget"`
	// Client and Cap name what a tenant rule's event is about: the client
	// ("(account)" for the account) and the cap's model ("" for all
	// models, "money" for a money budget's refusals).
	Client    string  `json:"client,omitempty"`
	Cap       string  `json:"cap,omitempty"`
	Value     float64 `json:"value"`     // the rule's measure at At
	Threshold float64 `json:"threshold"` // the rule's threshold
	// Since is when the alert started: for utilisation the first sample
	// of the run at or above the threshold, for a rate the evaluation
	// that first found it above. A resolved event carries its firing's.
	Since   time.Time `json:"since"`
	At      time.Time `json:"at"` // when this event was decided
	Repeat  bool      `json:"repeat,omitempty"`
	Summary string    `json:"summary"`
	Text    string    `json:"text"`
}

// Off disables a rule whose zero value means its default.
const Off = -1

// Config tunes the Alerter. The zero value works: the default rules are
// utilisation >= 0.8 for 5m and throttle rate > 1% over 5m with at least 20
// calls, evaluated every 15s, no repeat.
type Config struct {
	// Utilisation is the threshold of the utilisation rule, in (0, 1];
	// 0 means 0.8, Off disables the rule.
	Utilisation float64
	// UtilisationFor is how long utilisation must hold; 0 means 5m.
	UtilisationFor time.Duration
	// ThrottleRate is the throttle_rate threshold, in (0, 1); 0 means 0.01,
	// Off disables the rule.
	ThrottleRate float64
	// RefusalRate is the refusal_rate threshold, in (0, 1); 0 (or Off)
	// leaves the rule off.
	RefusalRate float64
	// MoneyShare is the money_budget threshold: the share of a money
	// budget spent, in (0, 1]; 0 means 0.8, Off disables the rule.
	MoneyShare float64
	// Window is the span of the rate rules; 0 means 5m.
	Window time.Duration
	// MinCalls is the fewest calls (decisions, for refusal_rate) in the
	// window for a rate rule to fire; 0 means 20.
	MinCalls int64
	// Interval is how often Run evaluates; 0 means 15s.
	Interval time.Duration
	// Repeat re-emits a still-firing alert this often; 0 means never.
	Repeat time.Duration
}

func (c *Config) setDefaults() error {
	for _, f := range []struct {
		name     string
		v        *float64
		def, max float64
		optional bool
	}{
		{"utilisation", &c.Utilisation, 0.8, 1, false},
		{"throttle_rate", &c.ThrottleRate, 0.01, 1, false},
		{"refusal_rate", &c.RefusalRate, 0, 1, true},
		{"money_share", &c.MoneyShare, 0.8, 1, false},
	} {
		switch v := *f.v; {
		case math.IsNaN(v) || (v < 0 && v != Off) || v > f.max:
			return fmt.Errorf("alert: %s %v is outside (0, %g]", f.name, v, f.max)
		case v == 0 && !f.optional:
			*f.v = f.def
		case v == Off:
			*f.v = 0 // 0 is "off" from here on
		}
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{{"utilisation_for", &c.UtilisationFor, 5 * time.Minute}, {"window", &c.Window, 5 * time.Minute},
		{"interval", &c.Interval, 15 * time.Second}, {"repeat", &c.Repeat, 0}} {
		if *d.v < 0 {
			return fmt.Errorf("alert: %s %v is negative", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.MinCalls < 0 {
		return fmt.Errorf("alert: min_calls %d is negative", c.MinCalls)
	}
	if c.MinCalls == 0 {
		c.MinCalls = 20
	}
	return nil
}

// Alerter evaluates the rules on the Source's reports.
type Alerter struct {
	src   Source
	sinks []Sink
	cfg   Config

	mu      sync.Mutex // guards budgets, tenants and alerts (Observe vs. Firing)
	budget  map[broker.Key]*series
	tenants map[tenantKey]*tenantSeries
	alerts  map[alertKey]*firing
	rules   []Rule // enabled rules, in a fixed order
}

type alertKey struct {
	rule Rule
	key  broker.Key
	// tenant and tenantOn name the client (or the account) and the cap a
	// tenant rule is about (tenant.go); empty for budget rules.
	tenant, tenantOn string
}

// firing is the state of an alert that fired and has not resolved.
type firing struct {
	since, lastSent time.Time
}

// series is what the Alerter remembers of one budget.
type series struct {
	// samples in time order: those in the last Window, and the newest
	// older one as the baseline of the rates.
	samples []sample
	// aboveSince is the first sample of the current run at or above the
	// utilisation threshold; zero when the newest sample is below.
	aboveSince time.Time
}

type sample struct {
	at                  time.Time
	throttles, calls    int64
	refusals, decisions int64
	utilisation         float64
}

func sampleOf(r broker.BudgetReport, at time.Time) sample {
	c := r.Counters
	return sample{
		at:          at,
		throttles:   c.Throttled + c.ReportedThrottles,
		calls:       c.Completed + c.ReportedThrottles,
		refusals:    c.Refused,
		decisions:   c.Granted + c.Refused,
		utilisation: r.Utilisation,
	}
}

// New returns an Alerter of src that sends events to sinks.
func New(src Source, sinks []Sink, cfg Config) (*Alerter, error) {
	if src == nil {
		return nil, fmt.Errorf("alert: source is nil")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	a := &Alerter{src: src, sinks: sinks, cfg: cfg, budget: map[broker.Key]*series{}, alerts: map[alertKey]*firing{},
		tenants: map[tenantKey]*tenantSeries{}}
	if cfg.Utilisation > 0 {
		a.rules = append(a.rules, RuleUtilisation)
	}
	if cfg.ThrottleRate > 0 {
		a.rules = append(a.rules, RuleThrottleRate)
	}
	if cfg.RefusalRate > 0 {
		a.rules = append(a.rules, RuleRefusalRate)
	}
	return a, nil
}

// Run evaluates at once and then every Interval until ctx ends.
func (a *Alerter) Run(ctx context.Context) {
	t := time.NewTicker(a.cfg.Interval)
	defer t.Stop()
	for {
		a.Evaluate()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Evaluate samples the source once and sends the resulting events to the
// sinks. Run calls it; tests may call it directly.
func (a *Alerter) Evaluate() []Event {
	reports, now := a.src.Report(broker.ReportFilter{})
	events := a.Observe(reports, now)
	if ss, ok := a.src.(SpendSource); ok {
		events = append(events, a.ObserveSpend(ss.Spend(), now)...)
	}
	for _, e := range events {
		for _, s := range a.sinks {
			s.Notify(e)
		}
	}
	return events
}

// Observe records one sample of every budget, taken at now, and returns the
// events it causes, in the order of the reports (rule order within a
// budget), then the resolutions of budgets no longer reported. It does not
// notify the sinks. Samples must come in time order; one not after the
// previous is ignored.
func (a *Alerter) Observe(reports []broker.BudgetReport, now time.Time) []Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	var events []Event
	seen := make(map[broker.Key]bool, len(reports))
	for _, r := range reports {
		k := r.Spec.Key
		seen[k] = true
		s := a.budget[k]
		if s == nil {
			s = &series{}
			a.budget[k] = s
		}
		cur := sampleOf(r, now)
		if n := len(s.samples); n > 0 {
			last := s.samples[n-1]
			if !now.After(last.at) {
				continue
			}
			if cur.calls < last.calls || cur.decisions < last.decisions {
				// Counters went back: a new broker behind the same
				// source. Start the budget over.
				*s = series{}
			}
		}
		s.samples = append(s.samples, cur)
		s.prune(now.Add(-a.cfg.Window))
		if r.Utilisation >= a.cfg.Utilisation && a.cfg.Utilisation > 0 {
			if s.aboveSince.IsZero() {
				s.aboveSince = now
			}
		} else {
			s.aboveSince = time.Time{}
		}
		for _, rule := range a.rules {
			c := a.check(rule, s, cur)
			if e, ok := a.transition(alertKey{rule: rule, key: k}, c, now); ok {
				events = append(events, e)
			}
		}
	}
	// A budget gone from the report (which the broker does not do today)
	// resolves its alerts rather than leaving them firing for ever.
	var gone []alertKey
	for ak := range a.alerts {
		if ak.tenant == "" && !seen[ak.key] {
			gone = append(gone, ak)
		}
	}
	slices.SortFunc(gone, func(x, y alertKey) int {
		if c := compareKeys(x.key, y.key); c != 0 {
			return c
		}
		return slices.Index(a.rules, x.rule) - slices.Index(a.rules, y.rule)
	})
	for _, ak := range gone {
		c := condition{resolve: true, summary: "the budget is no longer reported"}
		if e, ok := a.transition(ak, c, now); ok {
			events = append(events, e)
		}
	}
	for k := range a.budget {
		if !seen[k] {
			delete(a.budget, k)
		}
	}
	return events
}

// compareKeys orders budgets as the broker's report does.
func compareKeys(x, y broker.Key) int {
	return cmp.Or(cmp.Compare(x.Region, y.Region), cmp.Compare(x.Model, y.Model), cmp.Compare(x.Scope, y.Scope))
}

// prune drops the samples before from, but keeps the newest of them as the
// baseline of the window.
func (s *series) prune(from time.Time) {
	i := 0
	for i+1 < len(s.samples) && !s.samples[i+1].at.After(from) {
		i++
	}
	s.samples = s.samples[i:]
}

// condition is a rule's verdict on a budget now.
type condition struct {
	fire, resolve    bool // both false: keep the current state
	value, threshold float64
	since            time.Time // for fire: when the condition began
	summary          string
}

func (a *Alerter) check(rule Rule, s *series, cur sample) condition {
	switch rule {
	case RuleUtilisation:
		u, d := a.cfg.Utilisation, a.cfg.UtilisationFor
		c := condition{value: cur.utilisation, threshold: u, since: s.aboveSince}
		if s.aboveSince.IsZero() {
			c.resolve = true
			c.summary = fmt.Sprintf("utilisation %s is below %s", pct(cur.utilisation), pct(u))
			return c
		}
		c.fire = cur.at.Sub(s.aboveSince) >= d
		c.summary = fmt.Sprintf("utilisation %s, at or above %s for %v", pct(cur.utilisation), pct(u), roundSpan(cur.at.Sub(s.aboveSince)))
		return c
	case RuleThrottleRate:
		base := s.samples[0]
		return a.rate(cur.throttles-base.throttles, cur.calls-base.calls, cur.at.Sub(base.at), a.cfg.ThrottleRate, cur.at, "throttle rate", "throttles", "calls")
	case RuleRefusalRate:
		base := s.samples[0]
		return a.rate(cur.refusals-base.refusals, cur.decisions-base.decisions, cur.at.Sub(base.at), a.cfg.RefusalRate, cur.at, "refusal rate", "refusals", "lease requests")
	}
	return condition{}
}

func (a *Alerter) rate(events, calls int64, span time.Duration, threshold float64, now time.Time, what, evName, callName string) condition {
	r := 0.0
	if calls > 0 {
		r = float64(events) / float64(calls)
	}
	c := condition{value: r, threshold: threshold, since: now,
		fire:    calls >= a.cfg.MinCalls && r > threshold,
		resolve: r <= threshold,
		summary: fmt.Sprintf("%s %s (%d %s in %d %s over the last %v)", what, pct(r), events, evName, calls, callName, roundSpan(span)),
	}
	switch {
	case c.fire:
		c.summary += ", above " + pct(threshold)
	case c.resolve:
		c.summary += ", at or below " + pct(threshold)
	default:
		c.summary += fmt.Sprintf(", above %s but fewer than %d %s", pct(threshold), a.cfg.MinCalls, callName)
	}
	return c
}

// transition applies c to the alert ak and returns the event it causes.
func (a *Alerter) transition(ak alertKey, c condition, now time.Time) (Event, bool) {
	f := a.alerts[ak]
	e := Event{Rule: ak.rule, Budget: budgetOf(ak.key), Value: c.value, Threshold: c.threshold, At: now}
	subject := e.Budget.String()
	if ak.tenant != "" {
		e.Budget = Budget{}
		e.Client, e.Cap = ak.tenant, ak.tenantOn
		subject = "client " + ak.tenant
		if ak.tenant == accountLabel {
			subject = "the account"
		}
	}
	switch {
	case f == nil && c.fire:
		a.alerts[ak] = &firing{since: c.since, lastSent: now}
		e.Status, e.Since = StatusFiring, c.since
	case f != nil && c.resolve:
		delete(a.alerts, ak)
		e.Status, e.Since = StatusResolved, f.since
		c.summary += fmt.Sprintf("; resolved after %v", now.Sub(f.since).Round(time.Second))
	case f != nil && a.cfg.Repeat > 0 && now.Sub(f.lastSent) >= a.cfg.Repeat:
		f.lastSent = now
		e.Status, e.Since, e.Repeat = StatusFiring, f.since, true
		c.summary += fmt.Sprintf("; firing since %s", f.since.UTC().Format(time.RFC3339))
	default:
		return Event{}, false
	}
	e.Summary = subject + ": " + c.summary
	e.Text = "[" + map[Status]string{StatusFiring: "FIRING", StatusResolved: "RESOLVED"}[e.Status] + "] quota-broker " + string(e.Rule) + " " + e.Summary
	return e, true
}

// roundSpan keeps a span readable: whole seconds, tenths below 10s.
func roundSpan(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}

func pct(v float64) string { return fmt.Sprintf("%.1f%%", v*100) }

// Alert is a (rule, budget) the Alerter evaluates, and whether it is firing.
type Alert struct {
	Rule   Rule
	Budget Budget
	Firing bool
	Since  time.Time // when firing
}

// Alerts lists every (rule, budget) evaluated, firing or not.
func (a *Alerter) Alerts() []Alert {
	a.mu.Lock()
	defer a.mu.Unlock()
	keys := make([]broker.Key, 0, len(a.budget))
	for k := range a.budget {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKeys)
	var out []Alert
	for _, k := range keys {
		for _, rule := range a.rules {
			al := Alert{Rule: rule, Budget: budgetOf(k)}
			if f := a.alerts[alertKey{rule: rule, key: k}]; f != nil {
				al.Firing, al.Since = true, f.since
			}
			out = append(out, al)
		}
	}
	return out
}

// LogSink writes events to a logger: warn when firing, info when resolved.
type LogSink struct{ Logger *slog.Logger }

func (s LogSink) Notify(e Event) {
	level, msg := slog.LevelWarn, "alert firing"
	if e.Status == StatusResolved {
		level, msg = slog.LevelInfo, "alert resolved"
	}
	s.Logger.Log(context.Background(), level, msg, "rule", string(e.Rule), "region", e.Budget.Region, "scope", e.Budget.Scope,
		"model", e.Budget.Model, "value", e.Value, "threshold", e.Threshold, "since", e.Since, "repeat", e.Repeat, "summary", e.Summary)
}
