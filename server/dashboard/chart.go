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
	colRefused   = color.RGBA{R: 0x59, G: 0x59, B: 0x59, A: 0xff} // grey, dashed
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
	for i := range charts {
		calls, use, err := charts[i].plots()
		if err != nil {
			return fmt.Errorf("chart %s: %w", charts[i].Series.Key, err)
		}
		// Figure i's band, counted from the top.
		band := draw.Crop(dc, 0, 0, figure*vg.Length(len(charts)-1-i), -figure*vg.Length(i))
		canvases := plot.Align([][]*plot.Plot{{calls}, {use}}, tiles, band)
		calls.Draw(canvases[0][0])
		use.Draw(canvases[1][0])
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

// plots builds the two panels of a chart.
func (ch *Chart) plots() (calls, use *plot.Plot, err error) {
	if len(ch.Series.Points) == 0 {
		return nil, nil, fmt.Errorf("series has no points")
	}
	mins := ch.perMinute()
	rate := func(f func(st *broker.Stats) int64) func(int, *broker.Stats) float64 {
		return func(i int, st *broker.Stats) float64 { return float64(f(st)) / mins[i] }
	}
	success := rate((*broker.Stats).Successful)
	throttled := rate(func(st *broker.Stats) int64 { return st.Throttled + st.ReportedThrottles })
	errs := rate(func(st *broker.Stats) int64 { return st.Errors })

	calls = newPanel(ch)
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
		{"errors", colErrors, func(i int, st *broker.Stats) float64 { return success(i, st) + throttled(i, st) + errs(i, st) }},
		{"throttled", colThrottled, func(i int, st *broker.Stats) float64 { return success(i, st) + throttled(i, st) }},
		{"successful", colSuccess, success},
	}
	var entries []legendEntry
	for _, l := range layers {
		line, err := plotter.NewLine(ch.stepXY(l.v))
		if err != nil {
			return nil, nil, err
		}
		line.StepStyle = plotter.PostStep
		line.FillColor = l.col
		line.LineStyle.Width = 0
		calls.Add(line)
		entries = append([]legendEntry{{l.name, line}}, entries...)
	}
	refused, err := plotter.NewLine(ch.stepXY(rate(func(st *broker.Stats) int64 { return st.Refused })))
	if err != nil {
		return nil, nil, err
	}
	refused.StepStyle = plotter.PostStep
	refused.LineStyle = draw.LineStyle{Color: colRefused, Width: vg.Points(1.2), Dashes: []vg.Length{vg.Points(3), vg.Points(2)}}
	calls.Add(refused)
	entries = append(entries, legendEntry{"refused by broker", refused})
	addLegend(calls, entries)

	use = newPanel(ch)
	if err := ch.addUse(use, mins); err != nil {
		return nil, nil, err
	}
	return calls, use, nil
}

type legendEntry struct {
	name string
	th   plot.Thumbnailer
}

func addLegend(p *plot.Plot, entries []legendEntry) {
	for _, e := range entries {
		p.Legend.Add(e.name, e.th)
	}
	// Headroom above the data, so the legend rarely covers it.
	p.Y.Max *= 1.45
	if p.Y.Max == 0 {
		p.Y.Max = 1
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
		{&p.X.Label.TextStyle.Font, 8}, {&p.Y.Label.TextStyle.Font, 8}, {&p.Legend.TextStyle.Font, 7},
	} {
		f.f.Variant = "Sans"
		f.f.Size = f.size
	}
	p.X.Tick.Marker = clockTicks(ch.Series.Step)
	p.Y.Tick.Marker = plot.TickerFunc(yTicks)
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.ThumbnailWidth = vg.Points(12)
	p.Legend.XOffs = vg.Points(4)
	p.Add(plotter.NewGrid())
	p.Y.Min = 0
	return p
}

// addUse draws the window charges against the limits: tokens per minute
// against TPM, or requests against RPM for a budget limited only by RPM.
func (ch *Chart) addUse(p *plot.Plot, mins []float64) error {
	tokens := true
	hasLimit := ch.Static.TPM > 0
	for _, pt := range ch.Series.Points {
		hasLimit = hasLimit || pt.LimitTPM > 0
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
	area, err := plotter.NewLine(ch.stepXY(charged))
	if err != nil {
		return err
	}
	area.StepStyle = plotter.PostStep
	area.FillColor = colTokenFill
	area.LineStyle = draw.LineStyle{Color: colTokens, Width: vg.Points(0.8)}
	p.Add(area)
	entries := []legendEntry{{"charged to the minute window", area}}

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
			return err
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
			return err
		}
		l.LineStyle = draw.LineStyle{Color: colStatic, Width: vg.Points(1), Dashes: []vg.Length{vg.Points(4), vg.Points(3)}}
		p.Add(l)
		entries = append(entries, legendEntry{ch.StaticLabel + " " + unit, l})
	}
	addLegend(p, entries)
	return nil
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
func yTicks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = shortNumber(ticks[i].Value)
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
