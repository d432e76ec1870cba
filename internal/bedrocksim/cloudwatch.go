package bedrocksim

import (
	"sort"
	"time"
)

// The simulator derives AWS/Bedrock metrics from its own traffic at
// one-minute resolution, stamped with simulated time. cwproto.go speaks
// CloudWatch's three protocols, cwops.go implements the operations,
// cwmath.go GetMetricData's expressions and cwalarm.go the alarms.

const cwNamespace = "AWS/Bedrock"

type metricKey struct{ region, model, name string }

type agg struct{ sum, count, min, max float64 }

func (a *agg) add(v float64) {
	if a.count == 0 || v < a.min {
		a.min = v
	}
	if a.count == 0 || v > a.max {
		a.max = v
	}
	a.sum += v
	a.count++
}

func (a *agg) merge(b agg) {
	if b.count == 0 {
		return
	}
	if a.count == 0 || b.min < a.min {
		a.min = b.min
	}
	if a.count == 0 || b.max > a.max {
		a.max = b.max
	}
	a.sum += b.sum
	a.count += b.count
}

// metricStore holds per-minute aggregates; it is guarded by Sim.mu.
type metricStore struct {
	series map[metricKey]map[int64]*agg // minute (unix seconds / 60) -> aggregate
}

func newMetricStore() *metricStore { return &metricStore{series: make(map[metricKey]map[int64]*agg)} }

func (m *metricStore) add(region, model, name string, t time.Time, v float64) {
	k := metricKey{region, model, name}
	s := m.series[k]
	if s == nil {
		s = make(map[int64]*agg)
		m.series[k] = s
	}
	minute := t.Unix() / 60
	a := s[minute]
	if a == nil {
		a = &agg{}
		s[minute] = a
	}
	a.add(v)
}

// query aggregates the minutes of [start, end) into period-aligned buckets.
// An empty model sums every ModelId.
func (m *metricStore) query(region, model, name string, start, end time.Time, period int64) map[int64]agg {
	if period < 60 {
		period = 60
	}
	out := make(map[int64]agg)
	for k, s := range m.series {
		if k.region != region || k.name != name || (model != "" && k.model != model) {
			continue
		}
		for minute, a := range s {
			ts := minute * 60
			if ts < start.Unix() || ts >= end.Unix() {
				continue
			}
			b := ts - ts%period
			cur := out[b]
			cur.merge(*a)
			out[b] = cur
		}
	}
	return out
}

func statValue(a agg, stat string) (float64, bool) {
	switch stat {
	case "Sum":
		return a.sum, true
	case "SampleCount":
		return a.count, true
	case "Average":
		return a.sum / a.count, true
	case "Minimum":
		return a.min, true
	case "Maximum":
		return a.max, true
	}
	return 0, false
}

func metricUnit(name string) string {
	switch name {
	case "InvocationLatency", "TimeToFirstToken":
		return "Milliseconds"
	case "Invocations", "InvocationThrottles", "InvocationClientErrors", "InvocationServerErrors":
		return "Count"
	}
	return "None"
}

func sortedKeys(m map[int64]agg, desc bool) []int64 {
	keys := make([]int64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if desc {
			return keys[i] > keys[j]
		}
		return keys[i] < keys[j]
	})
	return keys
}
