package bedrocksim

import (
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/fxamacker/cbor/v2"
)

// CloudWatch, as aws-sdk-go-v2 calls it, speaks Smithy RPC v2 CBOR: POST
// /service/GraniteServiceVersion20100801/operation/<Op>, CBOR maps with
// PascalCase keys, timestamps as tag 1 epoch seconds, errors as a CBOR map
// with __type. The simulator derives AWS/Bedrock metrics from its own
// traffic at one-minute resolution, stamped with simulated time.

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

type cwDimension struct {
	Name  string `cbor:"Name"`
	Value string `cbor:"Value"`
}

type cwMetric struct {
	Namespace  string        `cbor:"Namespace"`
	MetricName string        `cbor:"MetricName"`
	Dimensions []cwDimension `cbor:"Dimensions"`
}

type cwQuery struct {
	ID         string `cbor:"Id"`
	Label      string `cbor:"Label"`
	Expression string `cbor:"Expression"`
	MetricStat *struct {
		Metric cwMetric `cbor:"Metric"`
		Period int64    `cbor:"Period"`
		Stat   string   `cbor:"Stat"`
	} `cbor:"MetricStat"`
}

type cwRequest struct {
	// GetMetricData
	MetricDataQueries []cwQuery `cbor:"MetricDataQueries"`
	ScanBy            string    `cbor:"ScanBy"`
	// GetMetricStatistics
	Namespace  string        `cbor:"Namespace"`
	MetricName string        `cbor:"MetricName"`
	Dimensions []cwDimension `cbor:"Dimensions"`
	Period     int64         `cbor:"Period"`
	Statistics []string      `cbor:"Statistics"`
	// both
	StartTime time.Time `cbor:"StartTime"`
	EndTime   time.Time `cbor:"EndTime"`
}

var cwEnc = func() cbor.EncMode {
	em, err := cbor.EncOptions{Time: cbor.TimeUnixDynamic, TimeTag: cbor.EncTagRequired}.EncMode()
	if err != nil {
		panic(err) // static options; cannot fail
	}
	return em
}()

func (s *Sim) serveCloudWatch(w http.ResponseWriter, r *http.Request) {
	op := strings.TrimPrefix(r.URL.Path, "/service/GraniteServiceVersion20100801/operation/")
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		writeCBORError(w, "InvalidParameterValue", "cannot read request body")
		return
	}
	var in cwRequest
	if len(body) > 0 {
		if err := cbor.Unmarshal(body, &in); err != nil {
			writeCBORError(w, "InvalidParameterValue", "cannot decode CBOR request: "+err.Error())
			return
		}
	}
	region := s.requestRegion(r)
	switch op {
	case "GetMetricData":
		s.getMetricData(w, region, &in)
	case "GetMetricStatistics":
		s.getMetricStatistics(w, region, &in)
	default:
		writeCBORError(w, "InvalidAction", "operation "+op+" is not simulated")
	}
}

// modelDimension returns the ModelId dimension value and whether the
// dimension set is one the simulator publishes (none, or ModelId alone).
func modelDimension(dims []cwDimension) (string, bool) {
	switch {
	case len(dims) == 0:
		return "", true
	case len(dims) == 1 && dims[0].Name == "ModelId":
		return dims[0].Value, true
	}
	return "", false
}

func (s *Sim) getMetricData(w http.ResponseWriter, region string, in *cwRequest) {
	type result struct {
		ID         string      `cbor:"Id"`
		Label      string      `cbor:"Label"`
		Timestamps []time.Time `cbor:"Timestamps"`
		Values     []float64   `cbor:"Values"`
		StatusCode string      `cbor:"StatusCode"`
	}
	results := make([]result, 0, len(in.MetricDataQueries))
	s.mu.Lock()
	for _, q := range in.MetricDataQueries {
		res := result{ID: q.ID, Label: q.Label, StatusCode: "Complete", Timestamps: []time.Time{}, Values: []float64{}}
		ms := q.MetricStat
		if ms == nil {
			results = append(results, res) // metric math is not simulated
			continue
		}
		if res.Label == "" {
			res.Label = ms.Metric.MetricName
		}
		model, ok := modelDimension(ms.Metric.Dimensions)
		if ms.Metric.Namespace == cwNamespace && ok {
			buckets := s.metrics.query(region, model, ms.Metric.MetricName, in.StartTime, in.EndTime, ms.Period)
			keys := sortedKeys(buckets, in.ScanBy != "TimestampAscending")
			for _, ts := range keys {
				if v, ok := statValue(buckets[ts], ms.Stat); ok {
					res.Timestamps = append(res.Timestamps, time.Unix(ts, 0).UTC())
					res.Values = append(res.Values, v)
				}
			}
		}
		results = append(results, res)
	}
	s.mu.Unlock()
	writeCBOR(w, map[string]any{"MetricDataResults": results, "Messages": []any{}})
}

func (s *Sim) getMetricStatistics(w http.ResponseWriter, region string, in *cwRequest) {
	if in.Period <= 0 || in.Period%60 != 0 {
		writeCBORError(w, "InvalidParameterValue", "The parameter Period must be a multiple of 60.")
		return
	}
	datapoints := []map[string]any{}
	model, ok := modelDimension(in.Dimensions)
	s.mu.Lock()
	if in.Namespace == cwNamespace && ok {
		buckets := s.metrics.query(region, model, in.MetricName, in.StartTime, in.EndTime, in.Period)
		for _, ts := range sortedKeys(buckets, false) {
			dp := map[string]any{"Timestamp": time.Unix(ts, 0).UTC(), "Unit": metricUnit(in.MetricName)}
			for _, st := range in.Statistics {
				if v, ok := statValue(buckets[ts], st); ok {
					dp[st] = v
				}
			}
			datapoints = append(datapoints, dp)
		}
	}
	s.mu.Unlock()
	writeCBOR(w, map[string]any{"Label": in.MetricName, "Datapoints": datapoints})
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

func writeCBOR(w http.ResponseWriter, v any) {
	b, err := cwEnc.Marshal(v)
	if err != nil {
		writeCBORError(w, "InternalServiceError", "simulator could not encode its response")
		return
	}
	w.Header().Set("Content-Type", "application/cbor")
	w.Header().Set("Smithy-Protocol", "rpc-v2-cbor")
	w.Header().Set("X-Amzn-RequestId", requestID())
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// writeCBORError sends an rpc-v2-cbor error. CloudWatch is query-compatible,
// so the query error code also travels in X-Amzn-Query-Error.
func writeCBORError(w http.ResponseWriter, queryCode, msg string) {
	typ := queryCode
	if !strings.HasSuffix(typ, "Exception") && typ != "InvalidAction" {
		typ += "Exception"
	}
	b, _ := cwEnc.Marshal(map[string]string{"__type": "com.amazonaws.cloudwatch#" + typ, "message": msg})
	w.Header().Set("Content-Type", "application/cbor")
	w.Header().Set("Smithy-Protocol", "rpc-v2-cbor")
	w.Header().Set("X-Amzn-Query-Error", queryCode+";Sender")
	w.WriteHeader(http.StatusBadRequest)
	_, _ = w.Write(b)
}
