package bedrocksim

import (
	"sort"
	"strconv"
	"strings"
	"time"
)

// The CloudWatch operations, independent of the wire protocol: each takes a
// decoded request and returns a generic answer (maps, []any, scalars,
// time.Time) that a codec encodes. Every operation first evaluates the
// alarms of its Region at the current simulated time (the simulator owns no
// goroutines, so alarms move when CloudWatch is observed).

type cwDim struct{ name, value string }

func (s *Sim) cloudWatchOp(region, op string, m map[string]any) (map[string]any, *cwError) {
	in := cwIn{m: m}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.Now()
	s.advanceLocked(now)
	s.evaluateAlarmsLocked(region, now)
	switch op {
	case "GetMetricStatistics":
		return s.getMetricStatisticsLocked(region, in)
	case "GetMetricData":
		return s.getMetricDataLocked(region, in)
	case "ListMetrics":
		return s.listMetricsLocked(region, in)
	case "PutMetricAlarm":
		return s.putMetricAlarmLocked(region, now, in)
	case "DescribeAlarms":
		return s.describeAlarmsLocked(region, in)
	case "DeleteAlarms":
		return s.deleteAlarmsLocked(region, now, in)
	case "DescribeAlarmHistory":
		return s.describeAlarmHistoryLocked(region, in)
	case "ListTagsForResource":
		return s.listTagsLocked(region, in)
	}
	return nil, cwErrorf("InvalidAction", "The action %s is not valid for this web service (the simulator implements GetMetricStatistics, "+
		"GetMetricData, ListMetrics, PutMetricAlarm, DescribeAlarms, DeleteAlarms, DescribeAlarmHistory and ListTagsForResource).", op)
}

func dims(in cwIn, k string) ([]cwDim, *cwError) {
	var out []cwDim
	for _, d := range in.objs(k) {
		if err := d.required("Name"); err != nil {
			return nil, err
		}
		out = append(out, cwDim{d.str("Name"), d.str("Value")})
	}
	return out, nil
}

// modelDimension returns the ModelId dimension value and whether the
// dimension set is one the simulator publishes (none, or ModelId alone).
func modelDimension(ds []cwDim) (string, bool) {
	switch {
	case len(ds) == 0:
		return "", true
	case len(ds) == 1 && ds[0].name == "ModelId":
		return ds[0].value, true
	}
	return "", false
}

func dimsOut(model string) []any {
	if model == "" {
		return []any{}
	}
	return []any{map[string]any{"Name": "ModelId", "Value": model}}
}

var simpleStats = []string{"SampleCount", "Average", "Sum", "Minimum", "Maximum"}

func checkStat(param, stat string) *cwError {
	for _, s := range simpleStats {
		if s == stat {
			return nil
		}
	}
	return cwErrorf("InvalidParameterValue", "The value %s for parameter %s is not supported by the simulator: it keeps "+
		"SampleCount, Average, Sum, Minimum and Maximum, not percentiles or other extended statistics.", stat, param)
}

func checkPeriod(param string, p int64) *cwError {
	if p <= 0 || p%60 != 0 {
		return cwErrorf("InvalidParameterValue", "The parameter %s must be a multiple of 60 (the simulator keeps one-minute resolution).", param)
	}
	return nil
}

// seriesLocked returns the datapoints of one metric stat, keyed by the start
// of each period. Callers hold mu.
func (s *Sim) seriesLocked(region, ns, name string, ds []cwDim, stat string, period int64, start, end time.Time) map[int64]float64 {
	out := map[int64]float64{}
	model, ok := modelDimension(ds)
	if ns != cwNamespace || !ok {
		return out
	}
	for ts, a := range s.metrics.query(region, model, name, start, end, period) {
		if v, ok := statValue(a, stat); ok {
			out[ts] = v
		}
	}
	return out
}

func (s *Sim) getMetricStatisticsLocked(region string, in cwIn) (map[string]any, *cwError) {
	if err := in.required("Namespace", "MetricName", "StartTime", "EndTime", "Period"); err != nil {
		return nil, err
	}
	period, err := in.int("Period")
	if err != nil {
		return nil, err
	}
	if err := checkPeriod("Period", period); err != nil {
		return nil, err
	}
	start, end, err := in.span("InvalidParameterValue")
	if err != nil {
		return nil, err
	}
	if ext := in.strs("ExtendedStatistics"); len(ext) > 0 {
		return nil, checkStat("ExtendedStatistics.member.1", ext[0])
	}
	stats := in.strs("Statistics")
	if len(stats) == 0 {
		return nil, cwErrorf("MissingParameter", "Must specify either Statistics or ExtendedStatistics.")
	}
	for i, st := range stats {
		if err := checkStat("Statistics.member."+strconv.Itoa(i+1), st); err != nil {
			return nil, err
		}
	}
	ds, err := dims(in, "Dimensions")
	if err != nil {
		return nil, err
	}
	name := in.str("MetricName")
	datapoints := []any{}
	if model, ok := modelDimension(ds); ok && in.str("Namespace") == cwNamespace {
		buckets := s.metrics.query(region, model, name, start, end, period)
		for _, ts := range sortedKeys(buckets, false) {
			dp := map[string]any{"Timestamp": time.Unix(ts, 0).UTC(), "Unit": metricUnit(name)}
			for _, st := range stats {
				v, _ := statValue(buckets[ts], st)
				dp[st] = v
			}
			datapoints = append(datapoints, dp)
		}
	}
	return map[string]any{"Label": name, "Datapoints": datapoints}, nil
}

func (s *Sim) getMetricDataLocked(region string, in cwIn) (map[string]any, *cwError) {
	if err := in.required("MetricDataQueries", "StartTime", "EndTime"); err != nil {
		return nil, err
	}
	start, end, err := in.span("ValidationError")
	if err != nil {
		return nil, err
	}
	scanBy := in.str("ScanBy")
	if scanBy == "" {
		scanBy = "TimestampDescending"
	}
	if scanBy != "TimestampDescending" && scanBy != "TimestampAscending" {
		return nil, cwErrorf("ValidationError", "The value %s for parameter ScanBy is not valid.", scanBy)
	}
	ev, err := s.newMathEval(region, start, end, in.objs("MetricDataQueries"))
	if err != nil {
		return nil, err
	}
	results := []any{}
	for _, q := range ev.queries {
		if !q.returnData {
			continue
		}
		list, err := ev.eval(q.id)
		if err != nil {
			return nil, err
		}
		for _, sr := range list {
			label := q.label
			if label == "" || len(list) > 1 {
				label = sr.label
			}
			ts := make([]int64, 0, len(sr.pts))
			for t := range sr.pts {
				ts = append(ts, t)
			}
			sort.Slice(ts, func(i, j int) bool {
				if scanBy == "TimestampAscending" {
					return ts[i] < ts[j]
				}
				return ts[i] > ts[j]
			})
			times, values := []any{}, []any{}
			for _, t := range ts {
				times = append(times, time.Unix(t, 0).UTC())
				values = append(values, sr.pts[t])
			}
			results = append(results, map[string]any{"Id": q.id, "Label": label, "Timestamps": times, "Values": values, "StatusCode": "Complete"})
		}
	}
	return map[string]any{"MetricDataResults": results, "Messages": []any{}}, nil
}

// publishedMetricsLocked lists every metric the Region has data for: each
// name per ModelId, and each name without dimensions (the sum over models).
func (s *Sim) publishedMetricsLocked(region string) []metricKey {
	seen := map[metricKey]bool{}
	for k := range s.metrics.series {
		if k.region != region {
			continue
		}
		seen[k] = true
		seen[metricKey{region, "", k.name}] = true
	}
	out := make([]metricKey, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].name != out[j].name {
			return out[i].name < out[j].name
		}
		return out[i].model < out[j].model
	})
	return out
}

func (s *Sim) listMetricsLocked(region string, in cwIn) (map[string]any, *cwError) {
	ns, name := in.str("Namespace"), in.str("MetricName")
	filters, err := dims(in, "Dimensions")
	if err != nil {
		return nil, err
	}
	var all []any
	for _, k := range s.publishedMetricsLocked(region) {
		if (ns != "" && ns != cwNamespace) || (name != "" && name != k.name) || !matchDims(k.model, filters) {
			continue
		}
		all = append(all, map[string]any{"Namespace": cwNamespace, "MetricName": k.name, "Dimensions": dimsOut(k.model)})
	}
	page, next, err := paginate(all, in.str("NextToken"), 500)
	if err != nil {
		return nil, err
	}
	out := map[string]any{"Metrics": page}
	if next != "" {
		out["NextToken"] = next
	}
	return out, nil
}

// matchDims applies ListMetrics' dimension filters: each must name a
// dimension the metric has, with that value when one is given.
func matchDims(model string, filters []cwDim) bool {
	for _, f := range filters {
		if f.name != "ModelId" || model == "" || (f.value != "" && f.value != model) {
			return false
		}
	}
	return true
}

// paginate cuts a page from items; tokens are offsets.
func paginate(items []any, token string, size int) ([]any, string, *cwError) {
	from := 0
	if token != "" {
		n, err := strconv.Atoi(token)
		if err != nil || n < 0 || n > len(items) {
			return nil, "", cwErrorf("InvalidNextToken", "The service couldn't process the NextToken.")
		}
		from = n
	}
	end := min(from+size, len(items))
	page := append([]any{}, items[from:end]...)
	if end < len(items) {
		return page, strconv.Itoa(end), nil
	}
	return page, "", nil
}

// cwUnitOK reports whether a unit name is one CloudWatch knows.
func cwUnitOK(u string) bool {
	switch u {
	case "", "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
		"Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second", "Kilobytes/Second",
		"Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second", "Kilobits/Second", "Megabits/Second",
		"Gigabits/Second", "Terabits/Second", "Count/Second", "None":
		return true
	}
	return false
}

func lowerFirst(s string) bool {
	return s != "" && s[0] >= 'a' && s[0] <= 'z' && !strings.ContainsAny(s, " .")
}

// span reads StartTime and EndTime, which must be in that order; AWS names
// the error code differently per operation (GetMetricStatistics says
// InvalidParameterValue, GetMetricData ValidationError).
func (in cwIn) span(code string) (start, end time.Time, err *cwError) {
	if start, err = in.time("StartTime"); err != nil {
		return
	}
	if end, err = in.time("EndTime"); err != nil {
		return
	}
	if !start.Before(end) {
		err = cwErrorf(code, "The parameter StartTime must be less than the parameter EndTime.")
	}
	return
}
