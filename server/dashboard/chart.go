package dashboard

import (
	"bytes"
	"fmt"
	"image/color"
	"io"
	"math"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/bedrockqb/quotabroker/broker"
)

// Span is a stretch of time ending now that the dashboard charts.
type Span struct {
	Name   string // "hour" or "day": the query value
	Length time.Duration
	Step   time.Duration // a whole number of minutes
}

// The spans the dashboard offers.
var (
	LastHour = Span{Name: "hour", Length: time.Hour, Step: time.Minute}
	LastDay  = Span{Name: "day", Length: 24 * time.Hour, Step: 15 * time.Minute}
)

// Spans are the spans the dashboard offers, shortest first.
var Spans = []Span{LastHour, LastDay}

// query is the history query for s ending at now: steps aligned to
// multiples of Step (so a day's steps are clock quarter-hours), the last
// one in progress.
func (s Span) query(now time.Time, f broker.ReportFilter) broker.HistoryQuery {
	return broker.HistoryQuery{Filter: f, From: now.Add(-s.Length).Truncate(s.Step), To: now, Step: s.Step}
}

// Chart is what one figure draws: a budget's history over a span, and the
// limits to draw it against.
type Chart struct {
	Series broker.Series
	// To is the end of the span (now); the last point covers the time from
	// its start to To, which may be less than a step.
	To time.Time
	// Static is the budget's static limit (quota x margin, or the
	// override); StaticLabel names it in the legend. Zero: unknown (a
	// budget that is no longer configured).
	Static      broker.Limits
	StaticLabel string
	Title       string
}

// Figure size: one chart is two panels of this width and height each.
const (
	figureWidth = vg.Length(440)
	panelHeight = vg.Length(150)
)

// Colours of the layers. The browser test finds layers by these, so they
// are part of the package's contract with its tests.
var (
	colSuccess   = color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff} // green
	colThrottled = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff} // red
	colErrors    = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff} // orange
	colRefused   = color.RGBA{R: 0x59, G: 0x59, B: 0x59, A: 0xff} // dark grey, below the axis
	colTokens    = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff} // blue outline
	colTokenFill = color.RGBA{R: 0x9e, G: 0xca, B: 0xe1, A: 0xff} // light blue area
	colEffective = color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff} // purple
	colStatic    = color.RGBA{R: 0x22, G: 0x22, B: 0x22, A: 0xff} // near black, dashed
)

// WriteSVG draws charts one under the other in one SVG document. With no
// charts it draws message instead, so the caller always gets a valid image.
func WriteSVG(w io.Writer, charts []Chart, message string) error {
	if len(charts) == 0 {
		return writeMessage(w, message)
	}
	figure := 2 * panelHeight
	c := vgsvg.New(figureWidth, figure*vg.Length(len(charts)))
	dc := draw.New(c)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadTop: 4, PadBottom: 4, PadLeft: 4, PadRight: 8}
	sty := legendStyle()
	for i := range charts {
		panels, err := charts[i].plots()
		if err != nil {
			return fmt.Errorf("chart %s: %w", charts[i].Series.Key, err)
		}
		// Figure i's band, counted from the top.
		band := draw.Crop(dc, 0, 0, figure*vg.Length(len(charts)-1-i), -figure*vg.Length(i))
		canvases := plot.Align([][]*plot.Plot{{panels[0].p}, {panels[1].p}}, tiles, band)
		for j, pn := range panels {
			// Each panel's legend is a strip under it, outside the data,
			// so it never hides a line and can use a readable size.
			tile := canvases[j][0]
			rows, h := layoutLegend(pn.legend, tile.Max.X-tile.Min.X-legendIndent, sty)
			pn.p.Draw(draw.Crop(tile, 0, 0, h, 0))
			drawLegend(draw.Crop(tile, legendIndent, 0, 0, h-(tile.Max.Y-tile.Min.Y)), rows, sty)
		}
	}
	_, err := c.WriteTo(w)
	return err
}

// inlineSVG is WriteSVG without the XML prologue, for inlining in HTML.
func inlineSVG(charts []Chart, message string) ([]byte, error) {
	var b bytes.Buffer
	if err := WriteSVG(&b, charts, message); err != nil {
		return nil, err
	}
	out := b.Bytes()
	if i := bytes.Index(out, []byte("<svg")); i >= 0 {
		out = out[i:]
	}
	return out, nil
}

func writeMessage(w io.Writer, message string) error {
	c := vgsvg.New(figureWidth, vg.Length(40))
	dc := draw.New(c)
	p := plot.New()
	sty := p.Title.TextStyle
	sty.XAlign, sty.YAlign = draw.XCenter, draw.YCenter
	dc.FillText(sty, dc.Center(), message)
	_, err := c.WriteTo(w)
	return err
}

// perMinute returns, for each point, the minutes its rates are over: a
// step, or for the last point the whole minutes elapsed (at least one).
func (ch *Chart) perMinute() []float64 {
	s := &ch.Series
	out := make([]float64, len(s.Points))
	step := s.Step.Minutes()
	for i := range out {
		out[i] = step
	}
	if n := len(out); n > 0 && !ch.To.IsZero() {
		start := s.From.Add(time.Duration(n-1) * s.Step)
		elapsed := math.Ceil(ch.To.Sub(start).Minutes())
		out[n-1] = max(1, min(step, elapsed))
	}
	return out
}

// stepXY makes a stepped line of one value per point: each value holds
// from its point's start to the next's, and the last to the span's end.
func (ch *Chart) stepXY(v func(i int, st *broker.Stats) float64) plotter.XYs {
	s := &ch.Series
	xys := make(plotter.XYs, 0, len(s.Points)+1)
	for i := range s.Points {
		t := s.From.Add(time.Duration(i) * s.Step)
		xys = append(xys, plotter.XY{X: unix(t), Y: v(i, &s.Points[i])})
	}
	if n := len(xys); n > 0 {
		end := s.From.Add(time.Duration(n) * s.Step)
		if !ch.To.IsZero() && ch.To.Before(end) {
			end = ch.To
		}
		xys = append(xys, plotter.XY{X: unix(end), Y: xys[n-1].Y})
	}
	return xys
}

func unix(t time.Time) float64 { return float64(t.UnixMilli()) / 1000 }

// panel is one plot of a chart and the legend drawn under it.
type panel struct {
	p      *plot.Plot
	legend []legendEntry
}

// plots builds the two panels of a chart: calls, then use.
func (ch *Chart) plots() ([2]panel, error) {
	var out [2]panel
	if len(ch.Series.Points) == 0 {
		return out, fmt.Errorf("series has no points")
	}
	mins := ch.perMinute()
	rate := func(f func(st *broker.Stats) int64) func(int, *broker.Stats) float64 {
		return func(i int, st *broker.Stats) float64 { return float64(f(st)) / mins[i] }
	}
	success := rate((*broker.Stats).Successful)
	throttled := rate(func(st *broker.Stats) int64 { return st.Throttled + st.ReportedThrottles })
	errs := rate(func(st *broker.Stats) int64 { return st.Errors })

	calls := newPanel(ch)
	calls.Title.Text = ch.Title
	// The panels share the time axis: its labels are on the lower one.
	calls.X.Tick.Marker = unlabelled{calls.X.Tick.Marker}
	calls.Y.Label.Text = "calls / min"
	// Stacked areas: each layer is drawn as the cumulative sum up to it,
	// the tallest first, so the next one down covers all but its own band.
	layers := []struct {
		name string
		col  color.Color
		v    func(int, *broker.Stats) float64
	}{
		{"other errors", colErrors, func(i int, st *broker.Stats) float64 { return success(i, st) + throttled(i, st) + errs(i, st) }},
		{"throttled by Bedrock", colThrottled, func(i int, st *broker.Stats) float64 { return success(i, st) + throttled(i, st) }},
		{"successful", colSuccess, success},
	}
	var entries []legendEntry
	for _, l := range layers {
		a := &area{xys: ch.stepXY(l.v), fill: l.col}
		calls.Add(a)
		entries = append([]legendEntry{{l.name, a}}, entries...)
	}
	// Refusals hang below the axis: a refused caller never reached
	// Bedrock, so stacking it on the calls would overstate what Bedrock
	// saw, and a line inside the stack was all but invisible.
	refused := rate(func(st *broker.Stats) int64 { return st.Refused })
	r := &area{xys: ch.stepXY(func(i int, st *broker.Stats) float64 { return -refused(i, st) }), fill: colRefused}
	calls.Add(r)
	entries = append(entries, legendEntry{"refused by broker (below 0)", r})
	out[0] = panel{calls, entries}

	use := newPanel(ch)
	use.X.Label.Text = "time (UTC)"
	useEntries, rpmOnCalls, err := ch.addUse(use, mins)
	if err != nil {
		return out, err
	}
	if rpmOnCalls {
		// The use panel is tokens against TPM: the calls panel carries
		// the RPM limits, the other limit Bedrock enforces per minute.
		lim, err := ch.addLimits(calls, "RPM", func(st *broker.Stats) int64 { return st.LimitRPM }, ch.Static.RPM)
		if err != nil {
			return out, err
		}
		out[0].legend = append(out[0].legend, lim...)
	}
	out[1] = panel{use, useEntries}
	for _, pn := range out {
		pn.p.Y.Max *= 1.05 // room above the highest line
		if pn.p.Y.Max == 0 {
			pn.p.Y.Max = 1
		}
	}
	return out, nil
}

type legendEntry struct {
	name string
	th   plot.Thumbnailer
}

// legendIndent is the legend's left margin within its panel's tile.
const legendIndent = vg.Length(4)

// legendStyle is the legend's text: the size of the axis labels.
func legendStyle() text.Style {
	sty := plot.New().Legend.TextStyle
	sty.Font.Variant = "Sans"
	sty.Font.Size = 9
	sty.XAlign, sty.YAlign = draw.XLeft, draw.YCenter
	return sty
}

// placed is a legend entry at its offset from the left of its row.
type placed struct {
	legendEntry
	x vg.Length
}

const (
	legendSwatch = vg.Length(14) // thumbnail width
	legendGap    = vg.Length(4)  // between swatch and text
	legendSep    = vg.Length(12) // between entries
)

// layoutLegend flows entries left to right in rows no wider than width,
// and returns the rows and their height.
func layoutLegend(entries []legendEntry, width vg.Length, sty text.Style) ([][]placed, vg.Length) {
	var rows [][]placed
	x := vg.Length(0)
	for _, e := range entries {
		// The browser may draw the text in a wider sans than the one
		// measured here (DejaVu for Liberation): leave it room.
		w := legendSwatch + legendGap + sty.Width(e.name)*1.2
		if len(rows) == 0 || (x > 0 && x+w > width) {
			rows = append(rows, nil)
			x = 0
		}
		rows[len(rows)-1] = append(rows[len(rows)-1], placed{e, x})
		x += w + legendSep
	}
	return rows, vg.Length(len(rows)) * legendLine(sty)
}

func legendLine(sty text.Style) vg.Length { return sty.Font.Size * 1.4 }

// drawLegend draws rows from the top of c down, each swatch centred on
// its text.
func drawLegend(c draw.Canvas, rows [][]placed, sty text.Style) {
	line := legendLine(sty)
	h := sty.Font.Size * 0.75
	for i, row := range rows {
		mid := c.Max.Y - (vg.Length(i)+0.5)*line
		for _, e := range row {
			x := c.Min.X + e.x
			icon := draw.Canvas{Canvas: c.Canvas, Rectangle: vg.Rectangle{
				Min: vg.Point{X: x, Y: mid - h/2}, Max: vg.Point{X: x + legendSwatch, Y: mid + h/2}}}
			e.th.Thumbnail(&icon)
			c.FillText(sty, vg.Point{X: x + legendSwatch + legendGap, Y: mid}, e.name)
		}
	}
}

func newPanel(ch *Chart) *plot.Plot {
	p := plot.New()
	// Sans at small sizes reads better on screen than plot's default
	// serif; the browser substitutes its own sans if Liberation is absent.
	for _, f := range []struct {
		f    *font.Font
		size vg.Length
	}{
		{&p.Title.TextStyle.Font, 10}, {&p.X.Tick.Label.Font, 8}, {&p.Y.Tick.Label.Font, 8},
		{&p.X.Label.TextStyle.Font, 9}, {&p.Y.Label.TextStyle.Font, 9},
	} {
		f.f.Variant = "Sans"
		f.f.Size = f.size
	}
	p.X.Tick.Marker = clockTicks(ch.Series.Step)
	p.Y.Tick.Marker = plot.TickerFunc(yTicks)
	p.Add(plotter.NewGrid())
	p.Y.Min = 0
	return p
}

// addUse draws the window charges against the limits: tokens per minute
// against TPM, or requests against RPM for a budget limited only by RPM.
// rpmOnCalls says the calls panel should carry the RPM limits.
func (ch *Chart) addUse(p *plot.Plot, mins []float64) (entries []legendEntry, rpmOnCalls bool, err error) {
	tokens := true
	hasLimit := ch.Static.TPM > 0
	hasRPM := ch.Static.RPM > 0
	for _, pt := range ch.Series.Points {
		hasLimit = hasLimit || pt.LimitTPM > 0
		hasRPM = hasRPM || pt.LimitRPM > 0
	}
	if !hasLimit && ch.Static.RPM > 0 {
		tokens = false
	}
	charged := func(i int, st *broker.Stats) float64 { return float64(st.WindowTokens) / mins[i] }
	limit := func(st *broker.Stats) int64 { return st.LimitTPM }
	static, unit := ch.Static.TPM, "TPM"
	p.Y.Label.Text = "tokens / min"
	if !tokens {
		charged = func(i int, st *broker.Stats) float64 { return float64(st.WindowRequests) / mins[i] }
		limit = func(st *broker.Stats) int64 { return st.LimitRPM }
		static, unit = ch.Static.RPM, "RPM"
		p.Y.Label.Text = "requests / min"
	}
	a, err := plotter.NewLine(ch.stepXY(charged))
	if err != nil {
		return nil, false, err
	}
	a.StepStyle = plotter.PostStep
	a.FillColor = colTokenFill
	a.LineStyle = draw.LineStyle{Color: colTokens, Width: vg.Points(0.8)}
	p.Add(a)
	entries = []legendEntry{{"charged to the minute window", a}}
	lim, err := ch.addLimits(p, unit, limit, static)
	if err != nil {
		return nil, false, err
	}
	return append(entries, lim...), tokens && hasRPM, nil
}

// addLimits draws the effective limit recorded with the history and the
// static limit, and returns their legend entries.
func (ch *Chart) addLimits(p *plot.Plot, unit string, limit func(st *broker.Stats) int64, static int64) ([]legendEntry, error) {
	var entries []legendEntry
	// The effective limit is recorded with the history only in steps that
	// saw traffic: carry the last one forward, and draw nothing before
	// the first.
	var eff plotter.XYs
	last := int64(0)
	xys := ch.stepXY(func(i int, st *broker.Stats) float64 {
		if l := limit(st); l > 0 {
			last = l
		}
		return float64(last)
	})
	for _, xy := range xys {
		if xy.Y > 0 {
			eff = append(eff, xy)
		}
	}
	if len(eff) > 0 {
		l, err := plotter.NewLine(eff)
		if err != nil {
			return nil, err
		}
		l.StepStyle = plotter.PostStep
		l.LineStyle = draw.LineStyle{Color: colEffective, Width: vg.Points(1.5)}
		p.Add(l)
		entries = append(entries, legendEntry{"effective " + unit + " limit", l})
	}
	if static > 0 {
		first, end := xys[0].X, xys[len(xys)-1].X
		l, err := plotter.NewLine(plotter.XYs{{X: first, Y: float64(static)}, {X: end, Y: float64(static)}})
		if err != nil {
			return nil, err
		}
		l.LineStyle = draw.LineStyle{Color: colStatic, Width: vg.Points(1), Dashes: []vg.Length{vg.Points(4), vg.Points(3)}}
		name := ch.StaticLabel + " " + unit
		// A static limit far above the traffic and the effective limit
		// (an adaptive ceiling engaged, or a quiet budget) would flatten
		// both into the axis: name it instead of drawing it.
		if top := p.Y.Max; top > 0 && float64(static) > staticScale*top {
			name += " " + shortNumber(float64(static)) + ", off the scale"
		} else {
			p.Add(l)
		}
		entries = append(entries, legendEntry{name, l})
	}
	return entries, nil
}

// staticScale is how far above the rest of a panel a static limit may
// be and still be drawn.
const staticScale = 2.5

// area is a stepped area between zero and its values (below the axis
// where they are negative). plotter.Line fills down to the axis minimum
// instead, which would cover anything drawn below zero.
type area struct {
	xys  plotter.XYs // as stepXY makes them: the last point ends the span
	fill color.Color
}

func (a *area) Plot(c draw.Canvas, p *plot.Plot) {
	if len(a.xys) == 0 {
		return
	}
	trX, trY := p.Transforms(&c)
	zero := trY(0)
	poly := make([]vg.Point, 0, 2*len(a.xys)+2)
	poly = append(poly, vg.Point{X: trX(a.xys[0].X), Y: zero})
	for i, xy := range a.xys {
		x, y := trX(xy.X), trY(xy.Y)
		if i > 0 {
			// Post-step: the previous value holds until this point.
			poly = append(poly, vg.Point{X: x, Y: poly[len(poly)-1].Y})
		}
		poly = append(poly, vg.Point{X: x, Y: y})
	}
	poly = append(poly, vg.Point{X: poly[len(poly)-1].X, Y: zero})
	c.FillPolygon(a.fill, c.ClipPolygonXY(poly))
}

func (a *area) DataRange() (xmin, xmax, ymin, ymax float64) {
	xmin, xmax = math.Inf(1), math.Inf(-1)
	for _, xy := range a.xys {
		xmin, xmax = min(xmin, xy.X), max(xmax, xy.X)
		ymin, ymax = min(ymin, xy.Y), max(ymax, xy.Y)
	}
	return xmin, xmax, ymin, ymax
}

func (a *area) Thumbnail(c *draw.Canvas) {
	c.FillPolygon(a.fill, []vg.Point{c.Min, {X: c.Min.X, Y: c.Max.Y}, c.Max, {X: c.Max.X, Y: c.Min.Y}})
}

// clockTicks labels the time axis at round clock times: every 10 minutes
// for a minute step, every 3 hours for longer steps.
func clockTicks(step time.Duration) plot.Ticker {
	major, minor, format := 10*time.Minute, 5*time.Minute, "15:04"
	if step > time.Minute {
		major, minor = 3*time.Hour, time.Hour
	}
	return plot.TickerFunc(func(lo, hi float64) []plot.Tick {
		var ticks []plot.Tick
		start := time.UnixMilli(int64(lo * 1000)).UTC().Truncate(minor)
		end := time.UnixMilli(int64(hi * 1000))
		for t := start; !t.After(end) && len(ticks) < 200; t = t.Add(minor) {
			v := unix(t)
			if v < lo {
				continue
			}
			tk := plot.Tick{Value: v}
			if t.Truncate(major).Equal(t) {
				tk.Label = t.Format(format)
			}
			ticks = append(ticks, tk)
		}
		return ticks
	})
}

// unlabelled keeps a ticker's marks and drops their labels.
type unlabelled struct{ plot.Ticker }

func (u unlabelled) Ticks(lo, hi float64) []plot.Tick {
	ticks := u.Ticker.Ticks(lo, hi)
	for i := range ticks {
		ticks[i].Label = ""
	}
	return ticks
}

// yTicks are plot's default ticks with labels as plain, short numbers
// (12k rather than 12000), which keeps the axes of all charts aligned.
// Below zero are refusals: their labels are counts, without the sign, and
// zero is always labelled, so the two sides of the axis read apart.
func yTicks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	if lo < 0 {
		// Default ticks over [lo, hi] need not fall on zero: step from
		// zero by the labelled step of the larger side.
		var labelled []float64
		for _, t := range (plot.DefaultTicks{}).Ticks(0, max(hi, -lo)) {
			if t.Label != "" {
				labelled = append(labelled, t.Value)
			}
		}
		step := max(hi, -lo)
		if len(labelled) > 1 {
			step = labelled[1] - labelled[0]
		}
		ticks = ticks[:0]
		for v := math.Ceil(lo/step) * step; v <= hi+step/1e9; v += step {
			if math.Abs(v) < step/1e9 {
				v = 0
			}
			ticks = append(ticks, plot.Tick{Value: v, Label: "x"})
		}
	}
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = shortNumber(math.Abs(ticks[i].Value))
		}
	}
	return ticks
}

// shortNumber formats v compactly: 950, 1.5k, 12k, 3.2M.
func shortNumber(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e6:
		return trimZero(fmt.Sprintf("%.1f", v/1e6)) + "M"
	case a >= 1e3:
		return trimZero(fmt.Sprintf("%.1f", v/1e3)) + "k"
	case a >= 10 || a == 0:
		return fmt.Sprintf("%.0f", v)
	}
	return trimZero(fmt.Sprintf("%.2f", v))
}

func trimZero(s string) string {
	for len(s) > 1 && s[len(s)-1] == '0' && bytes.IndexByte([]byte(s), '.') >= 0 {
		s = s[:len(s)-1]
	}
	if s[len(s)-1] == '.' {
		s = s[:len(s)-1]
	}
	return s
}
