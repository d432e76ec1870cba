package bedrocksim

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Metric alarms on the simulated metrics. An alarm is evaluated whenever a
// CloudWatch call of its Region observes the clock: its statistic over the
// last EvaluationPeriods periods (the current, partial period included, so
// an alarm reacts within the minute the traffic happens), M of N breaching
// datapoints (DatapointsToAlarm, default N) put it in ALARM, otherwise it is
// OK, or INSUFFICIENT_DATA when no period has data and TreatMissingData is
// "missing" (default). "ignore" keeps the state; "breaching" and
// "notBreaching" count a missing period as such. Every state change and
// configuration change goes to the alarm history. Actions are stored and
// echoed, never executed.
//
// A metric-math alarm (Metrics in place of MetricName) is evaluated with
// GetMetricData's evaluator over the same window: its one query with
// ReturnData true must give a single time series, and that series is the
// alarm's datapoints. Its MetricStats share one period, the alarm's.
// Anomaly detection (ThresholdMetricId) is refused with a ValidationError.

type alarm struct {
	name, description, arn             string
	namespace, metric, stat, unit      string
	dims                               []cwDim
	period, evalPeriods, datapoints    int64
	threshold                          float64
	comparison, treatMissing           string
	actionsEnabled                     bool
	alarmActions, okActions, insuffAct []string
	tags                               []any
	// metrics is a metric-math alarm's queries, normalised (typed scalars,
	// absent members left out) so they echo the same in every protocol and
	// feed newMathEval as they are; nil for a single-metric alarm.
	metrics                     []any
	returnID                    string
	state, reason, reasonData   string
	stateUpdated, configUpdated time.Time
}

type alarmHistory struct {
	name, kind, summary, data string
	at                        time.Time
}

// cwState is the alarms of one Region; guarded by Sim.mu.
type cwState struct {
	alarms  map[string]*alarm
	history []alarmHistory
}

func (s *Sim) cwRegionLocked(region string) *cwState {
	st := s.cw[region]
	if st == nil {
		st = &cwState{alarms: map[string]*alarm{}}
		s.cw[region] = st
	}
	return st
}

var comparisons = map[string]string{
	"GreaterThanOrEqualToThreshold": "greater than or equal to",
	"GreaterThanThreshold":          "greater than",
	"LessThanThreshold":             "less than",
	"LessThanOrEqualToThreshold":    "less than or equal to",
}

func (s *Sim) putMetricAlarmLocked(region string, now time.Time, in cwIn) (map[string]any, *cwError) {
	if in.has("ThresholdMetricId") {
		return nil, cwErrorf("ValidationError", "The simulator does not support anomaly-detection alarms (ThresholdMetricId); "+
			"give a Threshold.")
	}
	if err := in.required("AlarmName", "EvaluationPeriods", "ComparisonOperator", "Threshold"); err != nil {
		return nil, err
	}
	isMath := in.has("Metrics")
	if isMath {
		// AWS's words: "Statistic should not be set if list of Metrics is set."
		for _, k := range []string{"Namespace", "MetricName", "Dimensions", "Period", "Unit", "Statistic", "ExtendedStatistic"} {
			if in.has(k) {
				return nil, cwErrorf("ValidationError", "%s should not be set if list of Metrics is set.", k)
			}
		}
	} else {
		if !in.has("MetricName") {
			return nil, cwErrorf("ValidationError", "MetricName must not be null")
		}
		if err := in.required("Namespace", "Period"); err != nil {
			return nil, err
		}
		if in.has("ExtendedStatistic") {
			return nil, checkStat("ExtendedStatistic", in.str("ExtendedStatistic"))
		}
		if err := in.required("Statistic"); err != nil {
			return nil, err
		}
	}
	a := &alarm{name: in.str("AlarmName"), description: in.str("AlarmDescription"), namespace: in.str("Namespace"),
		metric: in.str("MetricName"), stat: in.str("Statistic"), unit: in.str("Unit"),
		comparison: in.str("ComparisonOperator"), treatMissing: in.str("TreatMissingData"),
		alarmActions: in.strs("AlarmActions"), okActions: in.strs("OKActions"), insuffAct: in.strs("InsufficientDataActions"),
		tags: in.list("Tags")}
	if len(a.name) > 255 {
		return nil, cwErrorf("InvalidParameterValue", "The parameter AlarmName must be at most 255 characters.")
	}
	var err *cwError
	if isMath {
		if a.metrics, a.returnID, a.period, err = s.alarmMetricsLocked(region, now, in); err != nil {
			return nil, err
		}
	} else if err := checkStat("Statistic", a.stat); err != nil {
		return nil, err
	}
	if _, ok := comparisons[a.comparison]; !ok {
		return nil, cwErrorf("ValidationError", "The value %s for parameter ComparisonOperator is not supported by the simulator "+
			"(anomaly-detection operators are not simulated).", a.comparison)
	}
	if !cwUnitOK(a.unit) {
		return nil, cwErrorf("InvalidParameterValue", "The value %s for parameter Unit is not valid.", a.unit)
	}
	switch a.treatMissing {
	case "":
		a.treatMissing = "missing"
	case "missing", "ignore", "breaching", "notBreaching":
	default:
		return nil, cwErrorf("ValidationError", "The value %s for parameter TreatMissingData is not valid.", a.treatMissing)
	}
	if !isMath {
		if a.period, err = in.int("Period"); err != nil {
			return nil, err
		}
		if err := checkPeriod("Period", a.period); err != nil {
			return nil, err
		}
	}
	if a.evalPeriods, err = in.int("EvaluationPeriods"); err != nil {
		return nil, err
	}
	if a.evalPeriods < 1 || a.period*a.evalPeriods > 7*86400 {
		return nil, cwErrorf("ValidationError", "EvaluationPeriods must be at least 1 and Period x EvaluationPeriods at most 7 days.")
	}
	a.datapoints = a.evalPeriods
	if in.has("DatapointsToAlarm") {
		if a.datapoints, err = in.int("DatapointsToAlarm"); err != nil {
			return nil, err
		}
		if a.datapoints < 1 || a.datapoints > a.evalPeriods {
			return nil, cwErrorf("ValidationError", "DatapointsToAlarm must be between 1 and EvaluationPeriods.")
		}
	}
	if a.threshold, err = in.float("Threshold"); err != nil {
		return nil, err
	}
	if a.actionsEnabled, err = in.bool("ActionsEnabled", true); err != nil {
		return nil, err
	}
	if a.dims, err = dims(in, "Dimensions"); err != nil {
		return nil, err
	}
	st := s.cwRegionLocked(region)
	a.arn = fmt.Sprintf("arn:aws:cloudwatch:%s:%s:alarm:%s", region, s.sc.AccountID, a.name)
	a.configUpdated = now
	summary := fmt.Sprintf("Alarm %q created", a.name)
	if old := st.alarms[a.name]; old != nil {
		// An update keeps the state; AWS re-evaluates it on the next cycle.
		a.state, a.reason, a.reasonData, a.stateUpdated = old.state, old.reason, old.reasonData, old.stateUpdated
		if len(a.tags) == 0 {
			a.tags = old.tags
		}
		summary = fmt.Sprintf("Alarm %q updated", a.name)
	} else {
		a.state, a.reason, a.stateUpdated = "INSUFFICIENT_DATA", "Unchecked: Initial alarm creation", now
	}
	st.alarms[a.name] = a
	st.history = append(st.history, alarmHistory{name: a.name, kind: "ConfigurationUpdate", summary: summary, at: now,
		data: mustJSON(map[string]any{"version": "1.0", "type": strings.Fields(summary)[2], "createdAlarm": a.describe()})})
	return map[string]any{}, nil
}

// alarmMetricsLocked validates a metric-math alarm's Metrics and returns
// them normalised, the id of the query the alarm watches and the alarm's
// period. Callers hold mu.
func (s *Sim) alarmMetricsLocked(region string, now time.Time, in cwIn) ([]any, string, int64, *cwError) {
	qs := in.objs("Metrics")
	if len(qs) == 0 || len(qs) > 20 {
		return nil, "", 0, cwErrorf("ValidationError", "The Metrics list must hold between 1 and 20 queries.")
	}
	var out []any
	var period int64
	stats, exprs := 0, 0
	for _, q := range qs {
		m := map[string]any{"Id": q.str("Id")}
		for _, k := range []string{"Label", "Expression", "AccountId"} {
			if q.has(k) {
				m[k] = q.str(k)
			}
		}
		rd, err := q.bool("ReturnData", true)
		if err != nil {
			return nil, "", 0, err
		}
		m["ReturnData"] = rd
		if q.has("Period") {
			p, err := q.int("Period")
			if err != nil {
				return nil, "", 0, err
			}
			m["Period"] = p
		}
		if q.has("Expression") {
			exprs++
			if strings.Contains(strings.ToUpper(q.str("Expression")), "SEARCH(") {
				return nil, "", 0, cwErrorf("ValidationError", "SEARCH expressions are not supported in alarms (query %s); "+
					"name the metrics in MetricStat queries.", q.str("Id"))
			}
		}
		if ms, ok := q.obj("MetricStat"); ok {
			stats++
			if err := ms.required("Metric", "Period", "Stat"); err != nil {
				return nil, "", 0, err
			}
			metric, _ := ms.obj("Metric")
			p, err := ms.int("Period")
			if err != nil {
				return nil, "", 0, err
			}
			if err := checkPeriod(ms.name("Period"), p); err != nil {
				return nil, "", 0, err
			}
			if period != 0 && p != period {
				return nil, "", 0, cwErrorf("ValidationError", "The Period of every MetricStat in Metrics must be the same "+
					"(query %s has %d, an earlier one %d).", q.str("Id"), p, period)
			}
			period = p
			ds, err := dims(metric, "Dimensions")
			if err != nil {
				return nil, "", 0, err
			}
			dl := []any{}
			for _, d := range ds {
				dl = append(dl, map[string]any{"Name": d.name, "Value": d.value})
			}
			mm := map[string]any{"MetricName": metric.str("MetricName"), "Dimensions": dl}
			if metric.has("Namespace") {
				mm["Namespace"] = metric.str("Namespace")
			}
			st := map[string]any{"Metric": mm, "Period": p, "Stat": ms.str("Stat")}
			if ms.has("Unit") {
				if u := ms.str("Unit"); !cwUnitOK(u) {
					return nil, "", 0, cwErrorf("InvalidParameterValue", "The value %s for parameter %sUnit is not valid.", u, ms.path)
				} else {
					st["Unit"] = u
				}
			}
			m["MetricStat"] = st
		}
		out = append(out, m)
	}
	if stats > 10 || exprs > 10 {
		return nil, "", 0, cwErrorf("ValidationError", "The Metrics list may hold at most 10 MetricStat and 10 Expression queries.")
	}
	if period == 0 {
		return nil, "", 0, cwErrorf("ValidationError", "The Metrics list must retrieve at least one metric with a MetricStat.")
	}
	// GetMetricData's evaluator checks the rest as it does there (ids,
	// exactly one of MetricStat and Expression, statistics, expressions).
	ev, err := s.newMathEval(region, now.Add(-time.Duration(period)*time.Second), now, alarmQueries(out))
	if err != nil {
		return nil, "", 0, err
	}
	var returning []string
	for _, q := range ev.queries {
		if q.returnData {
			returning = append(returning, q.id)
		}
	}
	if len(returning) != 1 {
		return nil, "", 0, cwErrorf("ValidationError", "Exactly one element of the metrics list should return data.")
	}
	list, err := ev.eval(returning[0])
	if err != nil {
		return nil, "", 0, err
	}
	if len(list) != 1 {
		return nil, "", 0, cwErrorf("ValidationError", "Error in expression %s: an alarm's expression must return a single time series, not %d.",
			returning[0], len(list))
	}
	return out, returning[0], period, nil
}

func alarmQueries(metrics []any) []cwIn {
	out := make([]cwIn, 0, len(metrics))
	for i, m := range metrics {
		out = append(out, cwIn{m: m.(map[string]any), path: fmt.Sprintf("Metrics.member.%d.", i+1)})
	}
	return out
}

func mustJSON(v any) string {
	b, err := json.Marshal(jsonTimes(v))
	if err != nil {
		return "{}"
	}
	return string(b)
}

func (a *alarm) describe() map[string]any {
	ds := []any{}
	for _, d := range a.dims {
		ds = append(ds, map[string]any{"Name": d.name, "Value": d.value})
	}
	strsOut := func(l []string) []any {
		out := []any{}
		for _, s := range l {
			out = append(out, s)
		}
		return out
	}
	m := map[string]any{
		"AlarmName": a.name, "AlarmArn": a.arn, "AlarmDescription": a.description,
		"AlarmConfigurationUpdatedTimestamp": a.configUpdated, "ActionsEnabled": a.actionsEnabled,
		"OKActions": strsOut(a.okActions), "AlarmActions": strsOut(a.alarmActions), "InsufficientDataActions": strsOut(a.insuffAct),
		"StateValue": a.state, "StateReason": a.reason, "StateUpdatedTimestamp": a.stateUpdated,
		"StateTransitionedTimestamp": a.stateUpdated,
		"EvaluationPeriods":          a.evalPeriods, "DatapointsToAlarm": a.datapoints,
		"Threshold": a.threshold, "ComparisonOperator": a.comparison, "TreatMissingData": a.treatMissing,
		"Dimensions": ds, "Metrics": []any{},
	}
	if a.metrics != nil {
		// A metric-math alarm has no metric, statistic or period of its own.
		m["Metrics"] = a.metrics
	} else {
		m["MetricName"], m["Namespace"], m["Statistic"], m["Period"] = a.metric, a.namespace, a.stat, a.period
	}
	if a.reasonData != "" {
		m["StateReasonData"] = a.reasonData
	}
	if a.unit != "" {
		m["Unit"] = a.unit
	}
	return m
}

// evaluateAlarmsLocked brings every alarm of a Region up to simulated time
// now. Callers hold mu.
func (s *Sim) evaluateAlarmsLocked(region string, now time.Time) {
	st := s.cw[region]
	if st == nil {
		return
	}
	names := make([]string, 0, len(st.alarms))
	for n := range st.alarms {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		a := st.alarms[n]
		state, reason, data := s.evaluateLocked(region, a, now)
		if state == "" || state == a.state {
			continue
		}
		old := map[string]any{"stateValue": a.state, "stateReason": a.reason}
		a.state, a.reason, a.reasonData, a.stateUpdated = state, reason, data, now
		st.history = append(st.history, alarmHistory{name: a.name, kind: "StateUpdate", at: now,
			summary: fmt.Sprintf("Alarm updated from %s to %s", old["stateValue"], state),
			data: mustJSON(map[string]any{"version": "1.0", "oldState": old,
				"newState": map[string]any{"stateValue": state, "stateReason": reason, "stateReasonData": json.RawMessage(data)}})})
	}
}

// evaluateLocked returns the state the alarm's data calls for now, or ""
// to keep the current one.
func (s *Sim) evaluateLocked(region string, a *alarm, now time.Time) (state, reason, data string) {
	end := now.Unix() - now.Unix()%a.period + a.period // the end of the current period
	start := end - a.evalPeriods*a.period
	pts := s.alarmSeriesLocked(region, a, time.Unix(start, 0), time.Unix(end, 0))
	breaching, present := 0, 0
	var shown []string
	var recent []float64
	var evaluated []map[string]any
	for t := end - a.period; t >= start; t -= a.period {
		v, ok := pts[t]
		switch {
		case ok:
			present++
			recent = append(recent, v)
			shown = append(shown, fmt.Sprintf("%s (%s)", fmtNum(v), time.Unix(t, 0).UTC().Format("02/01/06 15:04:05")))
			evaluated = append(evaluated, map[string]any{"timestamp": time.Unix(t, 0).UTC().Format("2006-01-02T15:04:05.000+0000"), "value": v})
			if breaches(a.comparison, v, a.threshold) {
				breaching++
			}
		case a.treatMissing == "breaching":
			present++
			breaching++
		case a.treatMissing == "notBreaching":
			present++
		}
	}
	rd := map[string]any{"version": "1.0", "queryDate": now.UTC().Format("2006-01-02T15:04:05.000+0000"),
		"startDate": time.Unix(start, 0).UTC().Format("2006-01-02T15:04:05.000+0000"), "statistic": a.stat,
		"period": a.period, "recentDatapoints": nonNilF(recent), "threshold": a.threshold, "evaluatedDatapoints": evaluated}
	if a.metrics != nil {
		delete(rd, "statistic") // an expression has none
	}
	data = mustJSON(rd)
	switch {
	case present == 0 && a.treatMissing == "ignore":
		return "", "", ""
	case present == 0:
		return "INSUFFICIENT_DATA", fmt.Sprintf("Insufficient Data: %d datapoints were unknown.", a.evalPeriods), data
	case int64(breaching) >= a.datapoints:
		return "ALARM", fmt.Sprintf("Threshold Crossed: %d out of the last %d datapoints [%s] %s %s the threshold (%s) (minimum %d datapoints for OK -> ALARM transition).",
			breaching, a.evalPeriods, strings.Join(shown, ", "), wasWere(breaching), comparisons[a.comparison], fmtNum(a.threshold), a.datapoints), data
	}
	return "OK", fmt.Sprintf("Threshold Crossed: %d out of the last %d datapoints [%s] %s not %s the threshold (%s) (minimum %d datapoints for ALARM -> OK transition).",
		present-breaching, a.evalPeriods, strings.Join(shown, ", "), wasWere(present-breaching), comparisons[a.comparison], fmtNum(a.threshold), a.evalPeriods-a.datapoints+1), data
}

// alarmSeriesLocked returns the datapoints an alarm watches between start
// and end, keyed by period start. Callers hold mu.
func (s *Sim) alarmSeriesLocked(region string, a *alarm, start, end time.Time) map[int64]float64 {
	if a.metrics == nil {
		return s.seriesLocked(region, a.namespace, a.metric, a.dims, a.stat, a.period, start, end)
	}
	// The queries were checked when the alarm was put, on the same data
	// model; an error now would be the simulator's own bug, and an alarm
	// with no data is what CloudWatch shows for a query it cannot run.
	ev, err := s.newMathEval(region, start, end, alarmQueries(a.metrics))
	if err != nil {
		return map[int64]float64{}
	}
	list, err := ev.eval(a.returnID)
	if err != nil || len(list) != 1 {
		return map[int64]float64{}
	}
	return list[0].pts
}

func wasWere(n int) string {
	if n == 1 {
		return "was"
	}
	return "were"
}

func nonNilF(v []float64) []float64 {
	if v == nil {
		return []float64{}
	}
	return v
}

func fmtNum(v float64) string { return fmt.Sprintf("%.1f", v) }

func breaches(cmp string, v, threshold float64) bool {
	switch cmp {
	case "GreaterThanOrEqualToThreshold":
		return v >= threshold
	case "GreaterThanThreshold":
		return v > threshold
	case "LessThanThreshold":
		return v < threshold
	}
	return v <= threshold
}

func (s *Sim) describeAlarmsLocked(region string, in cwIn) (map[string]any, *cwError) {
	st := s.cwRegionLocked(region)
	names := in.strs("AlarmNames")
	prefix, state, action := in.str("AlarmNamePrefix"), in.str("StateValue"), in.str("ActionPrefix")
	if len(names) > 0 && prefix != "" {
		return nil, cwErrorf("InvalidParameterCombination", "AlarmNames and AlarmNamePrefix cannot be given together.")
	}
	if state != "" && state != "OK" && state != "ALARM" && state != "INSUFFICIENT_DATA" {
		return nil, cwErrorf("InvalidParameterValue", "The value %s for parameter StateValue is not valid.", state)
	}
	types := in.strs("AlarmTypes")
	wantMetric := len(types) == 0
	for _, t := range types {
		wantMetric = wantMetric || t == "MetricAlarm"
	}
	all := make([]string, 0, len(st.alarms))
	for n := range st.alarms {
		all = append(all, n)
	}
	sort.Strings(all)
	var out []any
	for _, n := range all {
		a := st.alarms[n]
		if !wantMetric || (len(names) > 0 && !contains(names, n)) || !strings.HasPrefix(n, prefix) ||
			(state != "" && a.state != state) || (action != "" && !anyPrefix(a.alarmActions, action)) {
			continue
		}
		out = append(out, a.describe())
	}
	size := int64(50)
	if in.has("MaxRecords") {
		var err *cwError
		if size, err = in.int("MaxRecords"); err != nil {
			return nil, err
		}
		if size < 1 || size > 100 {
			return nil, cwErrorf("InvalidParameterValue", "The parameter MaxRecords must be between 1 and 100.")
		}
	}
	page, next, err := paginate(out, in.str("NextToken"), int(size))
	if err != nil {
		return nil, err
	}
	res := map[string]any{"MetricAlarms": page, "CompositeAlarms": []any{}}
	if next != "" {
		res["NextToken"] = next
	}
	return res, nil
}

func anyPrefix(l []string, p string) bool {
	for _, s := range l {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func (s *Sim) deleteAlarmsLocked(region string, now time.Time, in cwIn) (map[string]any, *cwError) {
	names := in.strs("AlarmNames")
	if len(names) == 0 {
		return nil, cwErrorf("MissingParameter", "The parameter AlarmNames is required.")
	}
	st := s.cwRegionLocked(region)
	for _, n := range names {
		if st.alarms[n] == nil {
			return nil, cwErrorf("ResourceNotFound", "%s not found", n)
		}
	}
	for _, n := range names {
		delete(st.alarms, n)
		st.history = append(st.history, alarmHistory{name: n, kind: "ConfigurationUpdate", at: now,
			summary: fmt.Sprintf("Alarm %q deleted", n), data: mustJSON(map[string]any{"version": "1.0", "type": "Delete"})})
	}
	return map[string]any{}, nil
}

func (s *Sim) describeAlarmHistoryLocked(region string, in cwIn) (map[string]any, *cwError) {
	st := s.cwRegionLocked(region)
	name, kind := in.str("AlarmName"), in.str("HistoryItemType")
	from, err := in.time("StartDate")
	if err != nil {
		return nil, err
	}
	to, err := in.time("EndDate")
	if err != nil {
		return nil, err
	}
	asc := in.str("ScanBy") == "TimestampAscending"
	var out []any
	for i := range st.history {
		h := st.history[i]
		if !asc {
			h = st.history[len(st.history)-1-i]
		}
		if (name != "" && h.name != name) || (kind != "" && h.kind != kind) ||
			(!from.IsZero() && h.at.Before(from)) || (!to.IsZero() && h.at.After(to)) {
			continue
		}
		out = append(out, map[string]any{"AlarmName": h.name, "AlarmType": "MetricAlarm", "Timestamp": h.at,
			"HistoryItemType": h.kind, "HistorySummary": h.summary, "HistoryData": h.data})
	}
	size := int64(100)
	if in.has("MaxRecords") {
		if size, err = in.int("MaxRecords"); err != nil {
			return nil, err
		}
		if size < 1 || size > 100 {
			return nil, cwErrorf("InvalidParameterValue", "The parameter MaxRecords must be between 1 and 100.")
		}
	}
	page, next, err := paginate(out, in.str("NextToken"), int(size))
	if err != nil {
		return nil, err
	}
	res := map[string]any{"AlarmHistoryItems": page}
	if next != "" {
		res["NextToken"] = next
	}
	return res, nil
}

func (s *Sim) listTagsLocked(region string, in cwIn) (map[string]any, *cwError) {
	if err := in.required("ResourceARN"); err != nil {
		return nil, err
	}
	arn := in.str("ResourceARN")
	for _, a := range s.cwRegionLocked(region).alarms {
		if a.arn == arn {
			tags := a.tags
			if tags == nil {
				tags = []any{}
			}
			return map[string]any{"Tags": tags}, nil
		}
	}
	return nil, cwErrorf("ResourceNotFound", "%s not found", arn)
}
