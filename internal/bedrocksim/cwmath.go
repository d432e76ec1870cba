package bedrocksim

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// GetMetricData's expressions. The simulator evaluates the forms the AWS
// samples use: arithmetic (+ - * /, parentheses, numbers) over query ids,
// SUM/AVG/MIN/MAX over METRICS(), a [list] or a SEARCH (per timestamp),
// FILL(series, number), METRICS('id-prefix') and
// SEARCH('{AWS/Bedrock,ModelId} MetricName="Invocations"', 'Sum', 60).
// Anything else is a ValidationError naming what is not supported, never a
// "Complete" result with no values.

// maxDatapoints is GetMetricData's limit per call; FILL, the one function
// that makes datapoints, honours it.
const maxDatapoints = 100800

type series struct {
	label  string
	period int64
	pts    map[int64]float64
}

// mathValue is a scalar or a list of series (one for a metric stat, many
// for METRICS() or SEARCH).
type mathValue struct {
	scalar   float64
	isScalar bool
	list     []series
}

type mathQuery struct {
	id, label, expr string
	returnData      bool
	stat            *series // the data of a MetricStat query
}

type mathEval struct {
	s          *Sim
	region     string
	start, end time.Time
	queries    []*mathQuery
	byID       map[string]*mathQuery
	done       map[string][]series
	busy       map[string]bool
}

// newMathEval validates the queries and fetches every MetricStat. Callers hold mu.
func (s *Sim) newMathEval(region string, start, end time.Time, qs []cwIn) (*mathEval, *cwError) {
	ev := &mathEval{s: s, region: region, start: start, end: end, byID: map[string]*mathQuery{},
		done: map[string][]series{}, busy: map[string]bool{}}
	if len(qs) == 0 || len(qs) > 500 {
		return nil, cwErrorf("ValidationError", "MetricDataQueries must hold between 1 and 500 queries.")
	}
	for _, q := range qs {
		if err := q.required("Id"); err != nil {
			return nil, err
		}
		id := q.str("Id")
		if !lowerFirst(id) {
			return nil, cwErrorf("ValidationError", "The value %s for parameter %sId is not valid: an Id starts with a lowercase letter.", id, q.path)
		}
		if ev.byID[id] != nil {
			return nil, cwErrorf("ValidationError", "The value %s for parameter MetricDataQueries.Id is used twice.", id)
		}
		rd, err := q.bool("ReturnData", true)
		if err != nil {
			return nil, err
		}
		mq := &mathQuery{id: id, label: q.str("Label"), expr: q.str("Expression"), returnData: rd}
		ms, hasStat := q.obj("MetricStat")
		if hasStat == (mq.expr != "") {
			return nil, cwErrorf("ValidationError", "Query %s must have exactly one of MetricStat and Expression.", id)
		}
		if hasStat {
			sr, err := ev.metricStat(ms)
			if err != nil {
				return nil, err
			}
			if mq.label != "" {
				sr.label = mq.label
			}
			mq.stat = &sr
		}
		ev.queries = append(ev.queries, mq)
		ev.byID[id] = mq
	}
	return ev, nil
}

func (ev *mathEval) metricStat(ms cwIn) (series, *cwError) {
	if err := ms.required("Metric", "Period", "Stat"); err != nil {
		return series{}, err
	}
	metric, _ := ms.obj("Metric")
	if err := metric.required("MetricName"); err != nil {
		return series{}, err
	}
	period, err := ms.int("Period")
	if err != nil {
		return series{}, err
	}
	if err := checkPeriod(ms.name("Period"), period); err != nil {
		return series{}, err
	}
	stat := ms.str("Stat")
	if err := checkStat(ms.name("Stat"), stat); err != nil {
		return series{}, err
	}
	ds, err := dims(metric, "Dimensions")
	if err != nil {
		return series{}, err
	}
	name := metric.str("MetricName")
	pts := ev.s.seriesLocked(ev.region, metric.str("Namespace"), name, ds, stat, period, ev.start, ev.end)
	return series{label: name, period: period, pts: pts}, nil
}

// eval returns the series of query id, evaluating expressions on demand.
func (ev *mathEval) eval(id string) ([]series, *cwError) {
	if l, ok := ev.done[id]; ok {
		return l, nil
	}
	q := ev.byID[id]
	if q == nil {
		return nil, cwErrorf("ValidationError", "Error in expression: unknown metric or expression id %s.", id)
	}
	if q.stat != nil {
		ev.done[id] = []series{*q.stat}
		return ev.done[id], nil
	}
	if ev.busy[id] {
		return nil, cwErrorf("ValidationError", "Error in expression %s: circular reference.", id)
	}
	ev.busy[id] = true
	p := &mathParser{src: q.expr, ev: ev, self: id}
	v, err := p.parse()
	if err != nil {
		return nil, err
	}
	if v.isScalar {
		return nil, cwErrorf("ValidationError", "Error in expression %s: the expression must return a time series, not a single number.", id)
	}
	for i := range v.list {
		switch {
		case q.label != "" && len(v.list) == 1:
			v.list[i].label = q.label
		case v.list[i].label == "":
			v.list[i].label = id
		}
	}
	ev.done[id] = v.list
	return v.list, nil
}

// mathParser is a recursive-descent parser that evaluates as it parses.
type mathParser struct {
	src  string
	pos  int
	ev   *mathEval
	self string
}

func (p *mathParser) fail(format string, args ...any) *cwError {
	return cwErrorf("ValidationError", "Error in expression %s: %s (in %q at position %d).", p.self, fmt.Sprintf(format, args...), p.src, p.pos)
}

func (p *mathParser) skip() {
	for p.pos < len(p.src) && (p.src[p.pos] == ' ' || p.src[p.pos] == '\t') {
		p.pos++
	}
}

func (p *mathParser) peek() byte {
	p.skip()
	if p.pos < len(p.src) {
		return p.src[p.pos]
	}
	return 0
}

func (p *mathParser) parse() (mathValue, *cwError) {
	v, err := p.sum()
	if err != nil {
		return v, err
	}
	if p.peek() != 0 {
		return v, p.fail("unexpected %q", p.src[p.pos:])
	}
	return v, nil
}

func (p *mathParser) sum() (mathValue, *cwError) {
	l, err := p.product()
	for err == nil && (p.peek() == '+' || p.peek() == '-') {
		op := p.src[p.pos]
		p.pos++
		var r mathValue
		if r, err = p.product(); err == nil {
			l, err = p.binary(op, l, r)
		}
	}
	return l, err
}

func (p *mathParser) product() (mathValue, *cwError) {
	l, err := p.unary()
	for err == nil && (p.peek() == '*' || p.peek() == '/') {
		op := p.src[p.pos]
		p.pos++
		var r mathValue
		if r, err = p.unary(); err == nil {
			l, err = p.binary(op, l, r)
		}
	}
	return l, err
}

func (p *mathParser) unary() (mathValue, *cwError) {
	if p.peek() == '-' {
		p.pos++
		v, err := p.unary()
		if err != nil {
			return v, err
		}
		return p.binary('*', mathValue{scalar: -1, isScalar: true}, v)
	}
	return p.primary()
}

var (
	numberRe = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?`)
	identRe  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*`)
)

func (p *mathParser) primary() (mathValue, *cwError) {
	c := p.peek()
	switch {
	case c == '(':
		p.pos++
		v, err := p.sum()
		if err != nil {
			return v, err
		}
		if p.peek() != ')' {
			return v, p.fail("missing )")
		}
		p.pos++
		return v, nil
	case c == '[':
		p.pos++
		var out mathValue
		for {
			v, err := p.sum()
			if err != nil {
				return v, err
			}
			if v.isScalar {
				return v, p.fail("a [list] holds time series, not numbers")
			}
			out.list = append(out.list, v.list...)
			if p.peek() == ',' {
				p.pos++
				continue
			}
			if p.peek() != ']' {
				return v, p.fail("missing ]")
			}
			p.pos++
			return out, nil
		}
	case numberRe.MatchString(p.src[p.pos:]):
		lit := numberRe.FindString(p.src[p.pos:])
		p.pos += len(lit)
		f, _ := strconv.ParseFloat(lit, 64)
		return mathValue{scalar: f, isScalar: true}, nil
	case identRe.MatchString(p.src[p.pos:]):
		name := identRe.FindString(p.src[p.pos:])
		p.pos += len(name)
		if p.peek() == '(' {
			p.pos++
			return p.call(name)
		}
		l, err := p.ev.eval(name)
		if err != nil {
			return mathValue{}, err
		}
		return mathValue{list: l}, nil
	}
	if c == 0 {
		return mathValue{}, p.fail("unexpected end")
	}
	return mathValue{}, p.fail("unexpected %q", string(c))
}

func (p *mathParser) str() (string, *cwError) {
	q := p.peek()
	if q != '\'' && q != '"' {
		return "", p.fail("expected a quoted string")
	}
	end := strings.IndexByte(p.src[p.pos+1:], q)
	if end < 0 {
		return "", p.fail("unterminated string")
	}
	v := p.src[p.pos+1 : p.pos+1+end]
	p.pos += end + 2
	return v, nil
}

func (p *mathParser) expect(c byte) *cwError {
	if p.peek() != c {
		return p.fail("expected %q", string(c))
	}
	p.pos++
	return nil
}

func (p *mathParser) call(name string) (mathValue, *cwError) {
	switch strings.ToUpper(name) {
	case "METRICS":
		prefix := ""
		if p.peek() != ')' {
			var err *cwError
			if prefix, err = p.str(); err != nil {
				return mathValue{}, err
			}
		}
		if err := p.expect(')'); err != nil {
			return mathValue{}, err
		}
		var out mathValue
		for _, q := range p.ev.queries {
			if q.stat != nil && strings.HasPrefix(q.id, prefix) {
				out.list = append(out.list, *q.stat)
			}
		}
		return out, nil
	case "SEARCH":
		return p.search()
	case "SUM", "AVG", "MIN", "MAX":
		v, err := p.sum()
		if err != nil {
			return v, err
		}
		if err := p.expect(')'); err != nil {
			return v, err
		}
		return aggregate(strings.ToUpper(name), v), nil
	case "FILL":
		v, err := p.sum()
		if err != nil {
			return v, err
		}
		if err := p.expect(','); err != nil {
			return v, err
		}
		fill, err := p.sum()
		if err != nil {
			return v, err
		}
		if !fill.isScalar {
			return v, p.fail("the simulator supports FILL with a number only (not REPEAT, LINEAR or a series)")
		}
		if err := p.expect(')'); err != nil {
			return v, err
		}
		if v.isScalar {
			return v, p.fail("FILL needs a time series")
		}
		for i, sr := range v.list {
			if sr.period < 60 || (p.ev.end.Unix()-p.ev.start.Unix())/sr.period > maxDatapoints {
				return v, p.fail("FILL over this time range would return more than %d datapoints; shorten it or use a longer period", maxDatapoints)
			}
			pts := make(map[int64]float64, len(sr.pts))
			first := p.ev.start.Unix() - p.ev.start.Unix()%sr.period
			for t := first; t < p.ev.end.Unix(); t += sr.period {
				val, ok := sr.pts[t]
				if !ok {
					val = fill.scalar
				}
				pts[t] = val
			}
			v.list[i].pts = pts
		}
		return v, nil
	}
	return mathValue{}, p.fail("the simulator does not support the function %s; it supports SUM, AVG, MIN, MAX, FILL, METRICS and SEARCH", name)
}

func aggregate(fn string, v mathValue) mathValue {
	pick := func(vals []float64) float64 {
		r := vals[0]
		sum := 0.0
		for _, x := range vals {
			sum += x
			switch fn {
			case "MIN":
				r = math.Min(r, x)
			case "MAX":
				r = math.Max(r, x)
			}
		}
		switch fn {
		case "SUM":
			return sum
		case "AVG":
			return sum / float64(len(vals))
		}
		return r
	}
	if v.isScalar {
		return v
	}
	if len(v.list) == 1 { // one series: a scalar over its datapoints
		var vals []float64
		for _, x := range v.list[0].pts {
			vals = append(vals, x)
		}
		if len(vals) == 0 {
			return mathValue{scalar: math.NaN(), isScalar: true}
		}
		return mathValue{scalar: pick(vals), isScalar: true}
	}
	if len(v.list) == 0 { // METRICS() or SEARCH matched nothing
		return v
	}
	byTS := map[int64][]float64{}
	out := series{}
	for _, sr := range v.list {
		out.period = sr.period
		for t, x := range sr.pts {
			byTS[t] = append(byTS[t], x)
		}
	}
	out.pts = make(map[int64]float64, len(byTS))
	for t, vals := range byTS {
		out.pts[t] = pick(vals)
	}
	return mathValue{list: []series{out}}
}

func (p *mathParser) binary(op byte, l, r mathValue) (mathValue, *cwError) {
	apply := func(a, b float64) float64 {
		switch op {
		case '+':
			return a + b
		case '-':
			return a - b
		case '*':
			return a * b
		}
		return a / b
	}
	keep := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	switch {
	case l.isScalar && r.isScalar:
		return mathValue{scalar: apply(l.scalar, r.scalar), isScalar: true}, nil
	case l.isScalar || r.isScalar:
		list := l.list
		if l.isScalar {
			list = r.list
		}
		out := mathValue{}
		for _, sr := range list {
			n := series{period: sr.period, pts: map[int64]float64{}}
			for t, x := range sr.pts {
				var y float64
				if l.isScalar {
					y = apply(l.scalar, x)
				} else {
					y = apply(x, r.scalar)
				}
				if keep(y) {
					n.pts[t] = y
				}
			}
			out.list = append(out.list, n)
		}
		return out, nil
	}
	if len(l.list) != 1 || len(r.list) != 1 {
		return mathValue{}, p.fail("arithmetic between lists of time series is not supported by the simulator; aggregate them with SUM first")
	}
	a, b := l.list[0], r.list[0]
	n := series{period: a.period, pts: map[int64]float64{}}
	for t, x := range a.pts { // a timestamp missing on either side is dropped, as CloudWatch does
		if y, ok := b.pts[t]; ok {
			if z := apply(x, y); keep(z) {
				n.pts[t] = z
			}
		}
	}
	return mathValue{list: []series{n}}, nil
}

var (
	searchSchemaRe = regexp.MustCompile(`^\{\s*([^,}]+?)\s*((?:,\s*[^,}]+?\s*)*)\}`)
	searchTermRe   = regexp.MustCompile(`^(?:(\w+)\s*=\s*(?:"([^"]*)"|(\S+))|"([^"]*)"|(\S+))`)
)

// search evaluates SEARCH('{Namespace,Dim...} terms', 'Stat', period) over
// the Region's published metrics. Terms are Name=value (MetricName or a
// dimension) or bare words matched against the metric name and dimension
// values; boolean operators are not supported.
func (p *mathParser) search() (mathValue, *cwError) {
	q, err := p.str()
	if err != nil {
		return mathValue{}, err
	}
	if err := p.expect(','); err != nil {
		return mathValue{}, err
	}
	stat, err := p.str()
	if err != nil {
		return mathValue{}, err
	}
	if err := checkStat("SEARCH statistic", stat); err != nil {
		return mathValue{}, err
	}
	if err := p.expect(','); err != nil {
		return mathValue{}, err
	}
	pv, err := p.sum()
	if err != nil {
		return mathValue{}, err
	}
	if err := p.expect(')'); err != nil {
		return mathValue{}, err
	}
	period := int64(pv.scalar)
	if !pv.isScalar || checkPeriod("SEARCH period", period) != nil {
		return mathValue{}, p.fail("the SEARCH period must be a multiple of 60 seconds")
	}
	ns, dimNames, hasSchema := "", []string(nil), false
	rest := strings.TrimSpace(q)
	if m := searchSchemaRe.FindStringSubmatch(rest); m != nil {
		hasSchema = true
		ns = strings.Trim(m[1], `"`)
		for _, d := range strings.Split(m[2], ",") {
			if d = strings.Trim(strings.TrimSpace(d), `"`); d != "" {
				dimNames = append(dimNames, d)
			}
		}
		rest = strings.TrimSpace(rest[len(m[0]):])
	}
	type term struct{ key, val string }
	var terms []term
	for rest != "" {
		m := searchTermRe.FindStringSubmatch(rest)
		if m == nil {
			return mathValue{}, p.fail("cannot read the search term %q", rest)
		}
		switch {
		case m[1] != "":
			terms = append(terms, term{m[1], m[2] + m[3]})
		case m[4] != "":
			terms = append(terms, term{"", m[4]})
		default:
			if w := strings.ToUpper(m[5]); w == "AND" || w == "OR" || w == "NOT" || strings.ContainsAny(m[5], "()") {
				return mathValue{}, p.fail("the simulator does not support %s in SEARCH; list terms separated by spaces", m[5])
			}
			terms = append(terms, term{"", m[5]})
		}
		rest = strings.TrimSpace(rest[len(m[0]):])
	}
	var out mathValue
	for _, k := range p.ev.s.publishedMetricsLocked(p.ev.region) {
		if hasSchema {
			// A schema matches metrics with exactly those dimension names.
			if ns != cwNamespace || (len(dimNames) == 0) != (k.model == "") ||
				(len(dimNames) > 0 && (len(dimNames) != 1 || dimNames[0] != "ModelId")) {
				continue
			}
		}
		ok := true
		for _, t := range terms {
			switch t.key {
			case "MetricName":
				ok = ok && k.name == t.val
			case "ModelId":
				ok = ok && k.model == t.val
			case "Namespace":
				ok = ok && t.val == cwNamespace
			case "":
				ok = ok && (strings.Contains(k.name, t.val) || (k.model != "" && strings.Contains(k.model, t.val)) || t.val == cwNamespace)
			default:
				ok = false
			}
		}
		if !ok {
			continue
		}
		ds := []cwDim(nil)
		label := k.name
		if k.model != "" {
			ds = []cwDim{{"ModelId", k.model}}
			label = k.model
		}
		pts := p.ev.s.seriesLocked(p.ev.region, cwNamespace, k.name, ds, stat, period, p.ev.start, p.ev.end)
		out.list = append(out.list, series{label: label, period: period, pts: pts})
	}
	return out, nil
}
