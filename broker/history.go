package broker

import (
	"cmp"
	"context"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Usage history.
//
// Every event on a budget (grant, refusal, settlement, throttle, expiry) is
// counted in a Stats for its (budget, minute, client). The counts gather in
// memory and the sweep writes them to the store once a second as deltas
// (Change.Stats): history is statistics, not grants, so it is not worth a
// disk write on the hot path, and a crash loses at most the last second of
// it. The grant invariant never depends on it: windows are rebuilt from
// leases and UsageRecords, which are committed before a grant is answered.
//
// A store that keeps history implements StatsReader (broker/bolt does);
// History and Activity read it and add what is still in memory, so they are
// exact up to the moment of the call.

// Stats count what happened to a budget in one minute, or summed over many.
// Event counts fall in the minute of the event; WindowTokens and
// WindowRequests are the charges to the per-minute windows, which Bedrock and
// the broker both attribute to the minute the call started (its grant).
type Stats struct {
	Granted, Refused int64
	// Completed counts settlements of every outcome; Throttled, Errors and
	// Cancelled are the settlements with those outcomes.
	Completed, Throttled, Errors, Cancelled int64
	// ReportedThrottles are throttles reported outside any lease (calls the
	// broker did not grant, or retries), so they are calls of their own.
	ReportedThrottles int64
	Expired           int64 // leases that ended unsettled
	// ReservedTokens were reserved at grant; SettledTokens were charged at
	// settlement. Their difference over settled calls is what oversized
	// max_tokens cost in capacity held back.
	ReservedTokens, SettledTokens int64
	// Token usage Bedrock reported for settled calls.
	InputTokens, OutputTokens, CacheReadTokens, CacheWriteTokens int64
	// Truncated counts successful calls whose output reached max_tokens: the
	// model may have had more to say, so their outputs understate the need.
	Truncated  int64
	WaitMillis int64 // summed wait of granted calls
	// Charges to the minute windows (by grant minute).
	WindowTokens, WindowRequests int64
	// OutputHist is the distribution of output tokens of successful calls;
	// nil when there were none. A pointer, so that the many Stats without
	// outputs (and History's points, which never carry one) stay small.
	// Add allocates its own; Stats sharing one are never added into.
	OutputHist *Histogram
	// LimitTPM and LimitRPM are gauges, not counts: the effective limits
	// when the minute was last written (0: none). Adding Stats keeps the
	// lowest non-zero value, the limit that bound in that span.
	LimitTPM, LimitRPM int64
}

// Add adds o to s.
func (s *Stats) Add(o *Stats) {
	s.Granted += o.Granted
	s.Refused += o.Refused
	s.Completed += o.Completed
	s.Throttled += o.Throttled
	s.Errors += o.Errors
	s.Cancelled += o.Cancelled
	s.ReportedThrottles += o.ReportedThrottles
	s.Expired += o.Expired
	s.ReservedTokens += o.ReservedTokens
	s.SettledTokens += o.SettledTokens
	s.InputTokens += o.InputTokens
	s.OutputTokens += o.OutputTokens
	s.CacheReadTokens += o.CacheReadTokens
	s.CacheWriteTokens += o.CacheWriteTokens
	s.Truncated += o.Truncated
	s.WaitMillis += o.WaitMillis
	s.WindowTokens += o.WindowTokens
	s.WindowRequests += o.WindowRequests
	s.addOutputs(o.OutputHist)
	s.LimitTPM = minNonZero(s.LimitTPM, o.LimitTPM)
	s.LimitRPM = minNonZero(s.LimitRPM, o.LimitRPM)
}

// addOutputs adds h to s's histogram, which s owns: a copy is made the
// first time, never shared with the Stats h came from.
func (s *Stats) addOutputs(h *Histogram) {
	if h == nil {
		return
	}
	if s.OutputHist == nil {
		c := *h
		s.OutputHist = &c
		return
	}
	s.OutputHist.Add(h)
}

// ObserveOutput counts one successful call's output tokens.
func (s *Stats) ObserveOutput(v int64) {
	if s.OutputHist == nil {
		s.OutputHist = new(Histogram)
	}
	s.OutputHist.Observe(v)
}

// clone returns a copy of s that shares nothing with it.
// saturate clamps the window charges at zero. A settlement records the
// change to its grant's charge (a return, mostly) in the grant's minute;
// after a crash the grant's own count may be lost with the second of history
// that was not yet written, while the correction, made after the restart,
// is kept. The sum is then negative, which no window ever was: what was
// lost cannot be restored, but a reader is never shown less than nothing.
func (s *Stats) saturate() {
	s.WindowTokens = max(0, s.WindowTokens)
	s.WindowRequests = max(0, s.WindowRequests)
}

func (s *Stats) clone() Stats {
	c := *s
	c.OutputHist = nil
	c.addOutputs(s.OutputHist)
	return c
}

func minNonZero(a, b int64) int64 {
	switch {
	case a == 0:
		return b
	case b == 0:
		return a
	}
	return min(a, b)
}

// Calls is the number of calls made to Bedrock: settled calls (cancelled
// ones excepted, they may never have reached it) and throttles reported
// outside leases.
func (s *Stats) Calls() int64 {
	return s.Completed - s.Cancelled + s.ReportedThrottles
}

// ThrottleRate is the share of Calls that Bedrock throttled; 0 without calls.
func (s *Stats) ThrottleRate() float64 {
	if c := s.Calls(); c > 0 {
		return float64(s.Throttled+s.ReportedThrottles) / float64(c)
	}
	return 0
}

// Successful is the number of settled calls that Bedrock served.
func (s *Stats) Successful() int64 {
	return s.Completed - s.Throttled - s.Errors - s.Cancelled
}

// Histogram counts values in buckets a quarter of an octave wide: bucket i
// holds values v with HistogramBound(i-1) < v <= HistogramBound(i), so a
// quantile read from it is at most 19% above the true value. Values above
// the last bound count in the last bucket.
type Histogram [HistogramBuckets]int64

// HistogramBuckets is the number of buckets: bounds up to 2^20 tokens.
const HistogramBuckets = 81

// HistogramBound is the upper bound of bucket i: ceil(2^(i/4)), with bucket
// 0 holding zero.
func HistogramBound(i int) int64 {
	if i <= 0 {
		return 0
	}
	return int64(math.Ceil(math.Pow(2, float64(i)/4) - 1e-9))
}

func histogramBucket(v int64) int {
	if v <= 0 {
		return 0
	}
	i := int(math.Ceil(4*math.Log2(float64(v)) - 1e-9))
	// Guard the float edge: v must not exceed its bucket's bound.
	for i < HistogramBuckets-1 && HistogramBound(i) < v {
		i++
	}
	return max(min(i, HistogramBuckets-1), 1)
}

// Observe counts v.
func (h *Histogram) Observe(v int64) { h[histogramBucket(v)]++ }

// Add adds o to h; o may be nil.
func (h *Histogram) Add(o *Histogram) {
	if o == nil {
		return
	}
	for i, n := range o {
		h[i] += n
	}
}

// Count is the number of values counted; 0 for a nil Histogram.
func (h *Histogram) Count() int64 {
	if h == nil {
		return 0
	}
	var n int64
	for _, c := range h {
		n += c
	}
	return n
}

// Quantile is the upper bound of the bucket holding the q-quantile (0..1);
// 0 when empty or nil.
func (h *Histogram) Quantile(q float64) int64 {
	n := h.Count()
	if n == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(n)))
	rank = max(rank, 1)
	var seen int64
	for i, c := range h {
		seen += c
		if seen >= rank {
			return HistogramBound(i)
		}
	}
	return HistogramBound(HistogramBuckets - 1)
}

// StatsRecord is one (budget, minute, client) of history. Records are deltas
// in a Change (a store adds them to what it holds; gauges replace when
// non-zero) and totals when read back.
type StatsRecord struct {
	Key    Key
	Minute int64 // unix minutes
	Client string
	Stats
}

// StatsReader is implemented by stores that keep usage history. A store
// keeps each delta twice: per client, and summed over clients per budget
// (Client ""), so that reading a day of a busy broker reads one record per
// budget and minute, not one per client as well.
type StatsReader interface {
	// ReadStats calls fn for every record with from <= Minute < to, in
	// minute order, until fn returns an error: the per-client records when
	// perClient is set, the per-budget ones otherwise.
	ReadStats(ctx context.Context, from, to int64, perClient bool, fn func(*StatsRecord) error) error
}

// pendingCap bounds the records a budget gathers between two flushes; beyond
// it, new clients are counted under OtherClients, so a caller inventing
// client names cannot grow the broker's memory.
const pendingCap = 1024

// OtherClients is the client name under which history counts clients beyond
// those it keeps by name (see ClientsPerMinute).
const OtherClients = "(other)"

// ClientsPerMinute is how many distinct clients a budget's history keeps by
// name in one minute: the first to appear in that minute. Every later one
// is counted under OtherClients. Client names are often self-declared, and
// without this bound a caller inventing names made every refused call a
// record of its own: the file grew by about 80 bytes a call for the 48 h it
// keeps client history, and a report read them all. With it, a budget's
// client history holds at most ClientsPerMinute + 1 records a minute (about
// 95,000 over 48 h), and a report reads at most 60 x that many an hour.
//
// The names kept are remembered for the minutes a settlement can still
// correct (nameMinutes): a settlement's correction to its grant's minute
// goes to the name the grant was counted under. A lease settled later than
// that (renewed past nameMinutes) has its correction counted under
// OtherClients.
const (
	ClientsPerMinute = 32
	nameMinutes      = 10
)

// minuteNames are the clients a budget's history keeps by name, by minute.
type minuteNames struct {
	newest   int64
	byMinute map[int64]map[string]struct{}
}

// named reports whether client is (or now becomes) one of the names kept
// for key in minute m. Caller holds foldMu.
func (r *Recorder) named(key Key, m int64, client string) bool {
	mn := r.names[key]
	if mn == nil {
		mn = &minuteNames{byMinute: make(map[int64]map[string]struct{})}
		r.names[key] = mn
	}
	if m > mn.newest {
		mn.newest = m
		for old := range mn.byMinute {
			if old < m-nameMinutes {
				delete(mn.byMinute, old)
			}
		}
	}
	if m < mn.newest-nameMinutes {
		return false // forgotten: which names that minute kept is unknown
	}
	set := mn.byMinute[m]
	if _, ok := set[client]; ok {
		return true
	}
	if len(set) >= ClientsPerMinute {
		return false
	}
	if set == nil {
		set = make(map[string]struct{}, ClientsPerMinute)
		mn.byMinute[m] = set
	}
	set[client] = struct{}{}
	return true
}

type statsSlot struct {
	minute int64
	client string
}

// Recorder keeps usage history. The core hands it an event for everything
// that happens to a budget (note); the recorder folds events into
// per-minute Stats, hands them to the sweep to write (take), and answers
// History and Activity from the store plus what it still holds.
//
// Events are kept off the grant path: under the core's lock a grant costs
// one append to events under mu, a lock that is only ever held for an
// append or a swap of the slice, never for folding. Folding (a map lookup
// per event, the work the core used to do under its own lock) happens under
// foldMu, outside the core's lock: in the sweep, in readers, and in the
// core's callers once the backlog reaches foldBacklog (tidy), which bounds
// the memory of events not yet folded. The lock order is Core.mu, then mu;
// the recorder never takes the core's lock.
type Recorder struct {
	reader StatsReader // the store's history; nil when it keeps none
	clock  Clock

	mu      sync.Mutex // guards events
	events  []event    // handed over, not yet folded
	backlog atomic.Int64

	foldMu  sync.Mutex // guards pending, inflight, names and spare
	pending map[Key]map[statsSlot]*Stats
	// inflight are the records take handed to the sweep and its commit
	// has not yet ended: readers count them as pending, so that history
	// taken out of memory is not missing until the store has it (a sweep
	// commits them after its chunks' lease records, which can take a
	// while). settle ends them.
	inflight []StatsRecord
	names    map[Key]*minuteNames
	spare    []event // the last folded slice, reused for the next events

	// commitMu makes a reader's store read and its copy of what is in
	// memory one view against settle: held shared by readStats across
	// both, exclusively by the sweep across the commit of the taken
	// records and settle. Without it a reader could find those records in
	// both places (committed, not yet settled), or, before inflight, in
	// neither.
	commitMu sync.RWMutex
}

// foldBacklog is how many events the core's callers let pile up before
// one of them folds them (about 200 KB).
const foldBacklog = 1024

func newRecorder(store Store, clock Clock) *Recorder {
	r := &Recorder{clock: clock, pending: make(map[Key]map[statsSlot]*Stats), names: make(map[Key]*minuteNames)}
	r.reader, _ = store.(StatsReader)
	return r
}

type eventKind uint8

const (
	eventGranted   eventKind = iota + 1
	eventUngranted           // a grant undone: its caller never received it
	eventRefused
	eventSettled
	eventReportedThrottle
	eventExpired
)

// event is one thing that happened to a budget, as the core hands it over.
type event struct {
	kind   eventKind
	key    Key
	client string
	at     time.Time // when it happened; for eventUngranted, the grant's time
	// Grants: the reservation and the window charges, and the wait.
	// Settlements: the change to the window charges (tokens, requests),
	// counted in the grant's minute (grantedAt).
	reserved, tokens, requests int64
	waited                     time.Duration
	grantedAt                  time.Time
	outcome                    Outcome
	usage                      Usage
	charge                     int64 // settled charge
	maxOutput                  int64
}

// note hands e over. Called with the core's lock held: it only appends.
func (r *Recorder) note(e event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.backlog.Add(1)
	r.mu.Unlock()
}

// tidy folds the events once foldBacklog of them wait. The core calls it
// after releasing its lock.
func (r *Recorder) tidy() {
	if r.backlog.Load() >= foldBacklog {
		r.fold()
	}
}

// fold moves every handed-over event into pending.
func (r *Recorder) fold() {
	r.foldMu.Lock()
	defer r.foldMu.Unlock()
	r.mu.Lock()
	evs := r.events
	r.events = r.spare[:0]
	r.backlog.Store(0)
	r.mu.Unlock()
	for i := range evs {
		r.apply(&evs[i])
		evs[i] = event{} // drop the strings it holds
	}
	r.spare = evs[:0]
}

// apply counts e in pending. Caller holds foldMu.
func (r *Recorder) apply(e *event) {
	switch e.kind {
	case eventGranted:
		st := r.stat(e.key, e.client, e.at)
		st.Granted++
		st.ReservedTokens += e.reserved
		st.WindowTokens += e.tokens
		st.WindowRequests += e.requests
		st.WaitMillis += e.waited.Milliseconds()
	case eventUngranted:
		st := r.stat(e.key, e.client, e.at)
		st.Granted--
		st.ReservedTokens -= e.reserved
		st.WindowTokens -= e.tokens
		st.WindowRequests -= e.requests
	case eventRefused:
		r.stat(e.key, e.client, e.at).Refused++
	case eventReportedThrottle:
		r.stat(e.key, e.client, e.at).ReportedThrottles++
	case eventExpired:
		r.stat(e.key, e.client, e.at).Expired++
	case eventSettled:
		// The event in the current minute, the change to the window
		// charge in the grant's.
		st := r.stat(e.key, e.client, e.at)
		st.Completed++
		switch e.outcome {
		case OutcomeThrottled:
			st.Throttled++
		case OutcomeError:
			st.Errors++
		case OutcomeCancelled:
			st.Cancelled++
		case OutcomeSuccess:
			st.ObserveOutput(e.usage.OutputTokens)
			if e.maxOutput > 0 && e.usage.OutputTokens >= e.maxOutput {
				st.Truncated++
			}
		}
		st.SettledTokens += e.charge
		st.InputTokens += e.usage.InputTokens
		st.OutputTokens += e.usage.OutputTokens
		st.CacheReadTokens += e.usage.CacheReadInputTokens
		st.CacheWriteTokens += e.usage.CacheWriteInputTokens
		if e.tokens != 0 || e.requests != 0 {
			g := r.stat(e.key, e.client, e.grantedAt)
			g.WindowTokens += e.tokens
			g.WindowRequests += e.requests
		}
	}
}

// stat returns the pending Stats of key for client in the minute of t.
// Caller holds foldMu.
func (r *Recorder) stat(key Key, client string, t time.Time) *Stats {
	slot := statsSlot{minuteOf(t), client}
	if client != OtherClients && !r.named(key, slot.minute, client) {
		slot.client = OtherClients
	}
	byKey := r.pending[key]
	if s := byKey[slot]; s != nil {
		return s
	}
	if byKey == nil {
		byKey = make(map[statsSlot]*Stats)
		r.pending[key] = byKey
	}
	if len(byKey) >= pendingCap {
		slot.client = OtherClients
		if s := byKey[slot]; s != nil {
			return s
		}
	}
	s := new(Stats)
	byKey[slot] = s
	return s
}

// take folds, then moves every budget's pending history into records,
// stamped with the limits in force (limits, by budget, as the core read
// them).
// They stay visible to readers (inflight) until settle.
func (r *Recorder) take(limits map[Key]Limits) (out []StatsRecord) {
	r.fold()
	r.foldMu.Lock()
	defer r.foldMu.Unlock()
	defer func() { r.inflight = append(r.inflight, out...) }()
	for k, byKey := range r.pending {
		if len(byKey) == 0 {
			continue
		}
		lim := limits[k]
		for slot, s := range byKey {
			rec := StatsRecord{Key: k, Minute: slot.minute, Client: slot.client, Stats: *s} // s leaves pending: no copy needed
			rec.LimitTPM, rec.LimitRPM = lim.TPM, lim.RPM
			out = append(out, rec)
		}
		clear(byKey)
	}
	return out
}

// settle ends the records take handed out: committed, they are the
// store's now; not, they go back to pending for the next sweep's take (the
// store adds records up, so a later commit writes them once). Caller holds
// commitMu exclusively, across the commit.
func (r *Recorder) settle(committed bool) {
	r.foldMu.Lock()
	defer r.foldMu.Unlock()
	if !committed {
		for i := range r.inflight {
			rec := &r.inflight[i]
			byKey := r.pending[rec.Key]
			if byKey == nil {
				byKey = make(map[statsSlot]*Stats)
				r.pending[rec.Key] = byKey
			}
			slot := statsSlot{minute: rec.Minute, client: rec.Client}
			if s := byKey[slot]; s != nil {
				s.Add(&rec.Stats)
			} else {
				st := rec.Stats
				byKey[slot] = &st
			}
		}
	}
	r.inflight = nil
}

// pendingStats folds, then copies what is not yet written, for readers:
// per client, or with Client "" when !perClient.
func (r *Recorder) pendingStats(from, to int64, perClient bool, match func(Key) bool) []StatsRecord {
	r.fold()
	r.foldMu.Lock()
	defer r.foldMu.Unlock()
	var out []StatsRecord
	add := func(k Key, minute int64, client string, s *Stats) {
		if minute < from || minute >= to {
			return
		}
		// A deep copy: the pending Stats go on changing under foldMu
		// while the reader uses this one without it.
		rec := StatsRecord{Key: k, Minute: minute, Client: client, Stats: s.clone()}
		if !perClient {
			rec.Client = ""
		}
		out = append(out, rec)
	}
	for i := range r.inflight {
		if rec := &r.inflight[i]; match(rec.Key) {
			add(rec.Key, rec.Minute, rec.Client, &rec.Stats)
		}
	}
	for k, byKey := range r.pending {
		if !match(k) {
			continue
		}
		for slot, s := range byKey {
			add(k, slot.minute, slot.client, s)
		}
	}
	return out
}

// readStats calls fn for every record from <= Minute < to of the budgets
// match selects: the store's, then those still in memory. Records of one
// (budget, minute, client) may come more than once; callers add them up.
// An error fn returns ends the read and is returned as is.
func (r *Recorder) readStats(ctx context.Context, from, to int64, perClient bool, match func(Key) bool, fn func(*StatsRecord) error) error {
	r.commitMu.RLock()
	defer r.commitMu.RUnlock()
	pending := r.pendingStats(from, to, perClient, match)
	var stop error // fn's, kept apart from the store's failures
	if r.reader != nil {
		err := r.reader.ReadStats(ctx, from, to, perClient, func(rec *StatsRecord) error {
			if match(rec.Key) {
				if stop = fn(rec); stop != nil {
					return stop
				}
			}
			return ctx.Err()
		})
		if stop != nil {
			return stop
		}
		if err != nil {
			return &Error{Kind: KindUnavailable, Message: "usage history could not be read", Err: err}
		}
	}
	for i := range pending {
		if err := fn(&pending[i]); err != nil {
			return err
		}
	}
	return nil
}

func (f ReportFilter) matcher() func(Key) bool {
	model := strings.ToLower(f.Model)
	return func(k Key) bool {
		return (f.Region == "" || k.Region == f.Region) && (model == "" || strings.Contains(strings.ToLower(k.Model), model))
	}
}

// HistoryQuery selects history: the budgets Filter selects, from From
// (rounded down to a minute) to To, in steps of Step (a whole number of
// minutes; default one).
type HistoryQuery struct {
	Filter   ReportFilter
	From, To time.Time
	Step     time.Duration
}

// maxHistoryPoints bounds one series, and maxHistoryCells the points of
// one answer over all its series (budgets x points): the work and memory of
// a call are proportional to it, and without the second bound 400 budgets
// of 10,000 points made one call allocate about 600 MB. A point is a Stats
// without its histogram (168 bytes), so one call holds at most about
// 8.4 MB of points, and about as much again in its answer. The dashboard's
// day (96 points) and hour (60) fit for 520 budgets; a day of minutes
// (1,440 points, the quota-increase evidence) for 34. At 100,000 an
// unrelated AcquireLease's p99 under history load went past 100 ms on the
// 2-core machine (BenchmarkAcquireDuringHistory, BENCHMARKS.md).
const (
	maxHistoryPoints = 10_000
	maxHistoryCells  = 50_000
)

// HistorySteps is the number of steps of step from from to to: the points
// of each series History answers for them (from already rounded down to a
// minute; step positive). It never overflows: a span beyond what a
// time.Duration holds counts as math.MaxInt64 steps, far over the maximum.
func HistorySteps(from, to time.Time, step time.Duration) int64 {
	span := to.Sub(from)
	if !from.Add(span).Equal(to) {
		// Beyond what a Duration holds (about 292 years): Sub saturated,
		// and any count from it would be wrong. No step makes it few.
		return math.MaxInt64
	}
	n := int64(span / step)
	if span%step != 0 {
		n++
	}
	return n
}

// Series is the history of one budget: Points[i] covers the Step starting
// at From + i x Step, summed over clients, without OutputHist; Total
// covers the whole span, with it.
type Series struct {
	Key    Key
	From   time.Time
	Step   time.Duration
	Points []Stats
	Total  Stats
}

// History returns the series of every budget the query selects that has
// any history in the span, sorted by key.
func (r *Recorder) History(ctx context.Context, q HistoryQuery) ([]Series, error) {
	step := q.Step
	if step == 0 {
		step = time.Minute
	}
	if step < time.Minute || step%time.Minute != 0 {
		return nil, invalidf("step", "%v is not a whole number of minutes", step)
	}
	from := q.From.Truncate(time.Minute)
	if !q.To.After(from) {
		return nil, invalidf("to", "%v is not after from %v", q.To, from)
	}
	n64 := HistorySteps(from, q.To, step)
	if n64 > maxHistoryPoints {
		return nil, invalidf("step", "%v from %v to %v makes %d points; at most %d", step, from, q.To, n64, maxHistoryPoints)
	}
	n := int(n64)
	fromM, stepM := minuteOf(from), int64(step/time.Minute)
	toM := fromM + int64(n)*stepM
	byKey := map[Key]*Series{}
	err := r.readStats(ctx, fromM, toM, false, q.Filter.matcher(), func(r *StatsRecord) error {
		s := byKey[r.Key]
		if s == nil {
			// Checked before each series is allocated, so a call never
			// holds more than maxHistoryCells points.
			if (len(byKey)+1)*n > maxHistoryCells {
				return invalidf("step", "more than %d budgets with history at %d points each: over %d points in one answer; narrow the region or model filter, shorten the span or widen the step",
					len(byKey), n, maxHistoryCells)
			}
			s = &Series{Key: r.Key, From: from, Step: step, Points: make([]Stats, n)}
			byKey[r.Key] = s
		}
		// Points leave the output histogram out: a series of a day holds
		// thousands of them, and no chart reads it. Total has it.
		point := r.Stats
		point.OutputHist = nil
		s.Points[(r.Minute-fromM)/stepM].Add(&point)
		s.Total.Add(&r.Stats)
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]Series, 0, len(byKey))
	for _, s := range byKey {
		for i := range s.Points {
			s.Points[i].saturate()
		}
		s.Total.saturate()
		out = append(out, *s)
	}
	slices.SortFunc(out, func(x, y Series) int { return compareKeys(x.Key, y.Key) })
	return out, nil
}

// Activity is a budget's recent history, for reports. The spans are whole
// clock minutes before the current one (so every figure is final): the last
// minute, the last 60 and the last 1,440.
type Activity struct {
	LastMinute, LastHour, LastDay Stats
	// TopClients are the clients that were charged most in the last hour,
	// most first; at most TopClientsMax.
	TopClients []ClientStats
	// RecommendedMaxTokens is a max_tokens that covers 99% of the last
	// day's successful outputs with headroom; 0 when there is no basis for
	// one, and RecommendationNote says why.
	RecommendedMaxTokens int64
	RecommendationNote   string
	OutputP50, OutputP99 int64 // of the last day's successful outputs (bucket bounds)
}

// ClientStats are one client's Stats.
type ClientStats struct {
	Client string
	Stats
}

// TopClientsMax is how many clients Activity ranks.
const TopClientsMax = 5

// Recommendation thresholds: enough successful calls to read a 99th
// percentile, and few enough truncated ones that outputs are not capped by
// the max_tokens in use.
const (
	minRecommendationSamples = 20
	maxTruncatedShare        = 0.01
)

// Activity returns the recent history of the budgets f selects, and the
// time it describes.
func (r *Recorder) Activity(ctx context.Context, f ReportFilter) (map[Key]*Activity, time.Time, error) {
	now := r.clock.Now()
	cur := minuteOf(now)
	match := f.matcher()
	out := map[Key]*Activity{}
	err := r.readStats(ctx, cur-24*60, cur, false, match, func(r *StatsRecord) error {
		a := out[r.Key]
		if a == nil {
			a = &Activity{}
			out[r.Key] = a
		}
		a.LastDay.Add(&r.Stats)
		if r.Minute >= cur-60 {
			a.LastHour.Add(&r.Stats)
		}
		if r.Minute == cur-1 {
			a.LastMinute.Add(&r.Stats)
		}
		return nil
	})
	if err != nil {
		return nil, now, err
	}
	clients := map[Key]map[string]*Stats{}
	err = r.readStats(ctx, cur-60, cur, true, match, func(r *StatsRecord) error {
		byClient := clients[r.Key]
		if byClient == nil {
			byClient = map[string]*Stats{}
			clients[r.Key] = byClient
		}
		c := byClient[r.Client]
		if c == nil {
			c = &Stats{}
			byClient[r.Client] = c
		}
		c.Add(&r.Stats)
		return nil
	})
	if err != nil {
		return nil, now, err
	}
	for k, a := range out {
		a.LastMinute.saturate()
		a.LastHour.saturate()
		a.LastDay.saturate()
		for name, s := range clients[k] {
			s.saturate()
			a.TopClients = append(a.TopClients, ClientStats{Client: name, Stats: *s})
		}
		slices.SortFunc(a.TopClients, func(x, y ClientStats) int {
			if c := cmp.Compare(y.WindowTokens, x.WindowTokens); c != 0 {
				return c
			}
			return cmp.Compare(x.Client, y.Client)
		})
		if len(a.TopClients) > TopClientsMax {
			a.TopClients = a.TopClients[:TopClientsMax]
		}
		a.recommend()
	}
	return out, now, nil
}

func (a *Activity) recommend() {
	d := &a.LastDay
	n := d.OutputHist.Count()
	a.OutputP50, a.OutputP99 = d.OutputHist.Quantile(0.5), d.OutputHist.Quantile(0.99)
	switch {
	case n < minRecommendationSamples:
		a.RecommendationNote = "fewer than 20 successful calls in the last day"
	case float64(d.Truncated) > maxTruncatedShare*float64(n):
		a.RecommendationNote = "more than 1% of calls hit their max_tokens: outputs are capped, so they cannot tell how much is needed"
	default:
		// The 99th percentile's bucket bound has up to 19% headroom; round
		// up to a multiple of 64 to give a readable figure.
		a.RecommendedMaxTokens = (a.OutputP99 + 63) / 64 * 64
		a.RecommendationNote = "covers the 99th percentile of the last day's outputs"
	}
}
