package dashboard

import (
	"bytes"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

var t0 = time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)

func key(model string) broker.Key {
	return broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: model}
}

// hourSeries is an hour of 1-minute points; fill sets minute i's stats.
func hourSeries(k broker.Key, fill func(i int, s *broker.Stats)) broker.Series {
	s := broker.Series{Key: k, From: t0, Step: time.Minute, Points: make([]broker.Stats, 60)}
	for i := range s.Points {
		fill(i, &s.Points[i])
		s.Total.Add(&s.Points[i])
	}
	return s
}

// traffic fills a minute with ok successes, thr throttles, and the tokens
// charged for the calls.
func calls(ok, thr int64) func(int, *broker.Stats) {
	return func(i int, s *broker.Stats) {
		if i < 30 {
			return // the first half hour is idle
		}
		s.Granted = ok + thr
		s.Completed = ok + thr
		s.Throttled = thr
		s.WindowTokens = 1000 * ok
		s.WindowRequests = ok + thr
		s.LimitTPM = 90_000
		s.Refused = 1
	}
}

// svgDoc is the part of an SVG document the tests look at.
type svgElem struct {
	XMLName xml.Name
	Attrs   []xml.Attr `xml:",any,attr"`
	Text    string     `xml:",chardata"`
	Kids    []svgElem  `xml:",any"`
}

func (e *svgElem) attr(name string) string {
	for _, a := range e.Attrs {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

func (e *svgElem) walk(fn func(*svgElem)) {
	fn(e)
	for i := range e.Kids {
		e.Kids[i].walk(fn)
	}
}

func parseSVG(t *testing.T, b []byte) *svgElem {
	t.Helper()
	var root svgElem
	if err := xml.Unmarshal(b, &root); err != nil {
		t.Fatalf("SVG does not parse as XML: %v\n%.500s", err, b)
	}
	if root.XMLName.Local != "svg" {
		t.Fatalf("root element is %q, want svg", root.XMLName.Local)
	}
	return &root
}

// paths returns the d of every path whose style sets prop (fill or
// stroke) to colour.
func paths(root *svgElem, prop, colour string) []string {
	var out []string
	root.walk(func(e *svgElem) {
		if e.XMLName.Local == "path" && strings.Contains(e.attr("style"), prop+":"+colour) {
			out = append(out, e.attr("d"))
		}
	})
	return out
}

func texts(root *svgElem) []string {
	var out []string
	root.walk(func(e *svgElem) {
		if e.XMLName.Local == "text" {
			out = append(out, strings.TrimSpace(e.Text))
		}
	})
	return out
}

// saveArtifact keeps a rendered file for a look when DASHBOARD_OUT names a
// directory.
func saveArtifact(t *testing.T, name string, b []byte) {
	if dir := os.Getenv("DASHBOARD_OUT"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWriteSVGDrawsEveryChartAndLayer(t *testing.T) {
	t.Parallel()
	charts := []Chart{
		{Series: hourSeries(key("model-throttled"), calls(10, 5)), To: t0.Add(time.Hour), Title: "throttled",
			Static: broker.Limits{TPM: 100_000}, StaticLabel: "quota x 0.9"},
		{Series: hourSeries(key("model-clean"), calls(10, 0)), To: t0.Add(time.Hour), Title: "clean",
			Static: broker.Limits{TPM: 100_000}, StaticLabel: "quota x 0.9"},
		// A budget limited by RPM only is drawn against RPM.
		{Series: hourSeries(key("model-rpm"), func(i int, s *broker.Stats) { s.Granted, s.Completed, s.WindowRequests = 30, 30, 30 }),
			To: t0.Add(time.Hour), Title: "rpm only", Static: broker.Limits{RPM: 50}, StaticLabel: "override"},
	}
	var b bytes.Buffer
	if err := WriteSVG(&b, charts, "unused"); err != nil {
		t.Fatal(err)
	}
	saveArtifact(t, "three.svg", b.Bytes())
	root := parseSVG(t, b.Bytes())

	// Each layer is one area and one legend swatch per chart.
	for _, c := range []struct {
		name, prop, colour string
	}{
		{"successful", "fill", "#2CA02C"}, {"throttled", "fill", "#D62728"}, {"errors", "fill", "#FF7F0E"},
		{"refused", "fill", "#595959"}, {"charged", "stroke", "#1F77B4"}, {"static limit", "stroke", "#222222"},
	} {
		if got := len(paths(root, c.prop, c.colour)); got != 2*len(charts) {
			t.Errorf("%s: %d paths with %s %s, want %d (area and legend per chart)", c.name, got, c.prop, c.colour, 2*len(charts))
		}
	}
	// The effective limit is only known where history recorded it: the two
	// TPM charts.
	if got := len(paths(root, "stroke", "#9467BD")); got != 2*2 {
		t.Errorf("effective limit: %d paths, want 4", got)
	}

	// The throttled layer sits on top of the successful one: a different
	// outline where there were throttles, the same one where there were
	// none.
	succ, thr := paths(root, "fill", "#2CA02C"), paths(root, "fill", "#D62728")
	// Order: chart 0 area, chart 0 legend, chart 1 area, ...
	if succ[0] == thr[0] {
		t.Error("chart with throttles: throttled layer has the same outline as the successful one")
	}
	if succ[2] != thr[2] {
		t.Error("chart without throttles: throttled layer differs from the successful one")
	}

	txt := strings.Join(texts(root), "\n")
	for _, want := range []string{"throttled", "clean", "rpm only", "tokens / min", "requests / min",
		"effective TPM limit", "quota x 0.9 TPM", "override RPM", "refused by broker", "10:30", "time (UTC)"} {
		if !strings.Contains(txt, want) {
			t.Errorf("SVG text lacks %q", want)
		}
	}
	if strings.Contains(txt, "effective RPM limit") {
		t.Error("an effective RPM limit is drawn although no history recorded one")
	}
}

func TestWriteSVGDrawsRPMLimitsOnTheCallsPanel(t *testing.T) {
	t.Parallel()
	fill := calls(10, 0)
	c := Chart{Series: hourSeries(key("m"), func(i int, s *broker.Stats) { fill(i, s); s.LimitRPM = 90 }), To: t0.Add(time.Hour),
		Title: "both limits", Static: broker.Limits{TPM: 100_000, RPM: 100}, StaticLabel: "quota x 0.9"}
	var b bytes.Buffer
	if err := WriteSVG(&b, []Chart{c}, ""); err != nil {
		t.Fatal(err)
	}
	saveArtifact(t, "rpm.svg", b.Bytes())
	root := parseSVG(t, b.Bytes())
	txt := strings.Join(texts(root), "\n")
	for _, want := range []string{"effective TPM limit", "quota x 0.9 TPM", "effective RPM limit", "quota x 0.9 RPM", "tokens / min"} {
		if !strings.Contains(txt, want) {
			t.Errorf("SVG text lacks %q", want)
		}
	}
	// Effective and static limits, each a line and a legend swatch, on
	// both panels.
	if got := len(paths(root, "stroke", "#9467BD")); got != 4 {
		t.Errorf("effective limits: %d paths, want 4", got)
	}
	if got := len(paths(root, "stroke", "#222222")); got != 4 {
		t.Errorf("static limits: %d paths, want 4", got)
	}
}

func TestStaticLimitFarAboveIsNamedNotDrawn(t *testing.T) {
	t.Parallel()
	// 3 requests a minute against 50: drawn to scale, the traffic would be
	// a line on the axis.
	c := Chart{Series: hourSeries(key("m"), func(i int, s *broker.Stats) { s.Granted, s.Completed, s.WindowRequests = 3, 3, 3 }),
		To: t0.Add(time.Hour), Title: "quiet", Static: broker.Limits{RPM: 50}, StaticLabel: "override"}
	var b bytes.Buffer
	if err := WriteSVG(&b, []Chart{c}, ""); err != nil {
		t.Fatal(err)
	}
	root := parseSVG(t, b.Bytes())
	if txt := strings.Join(texts(root), "\n"); !strings.Contains(txt, "override RPM 50, off the scale") {
		t.Errorf("SVG text lacks the static limit named off the scale:\n%s", txt)
	}
	if got := len(paths(root, "stroke", "#222222")); got != 1 {
		t.Errorf("static limit: %d paths, want the legend's alone", got)
	}
}

func TestRefusalsHangBelowTheAxis(t *testing.T) {
	t.Parallel()
	c := Chart{Series: hourSeries(key("m"), calls(10, 0)), To: t0.Add(time.Hour), Title: "refused"}
	panels, err := c.plots()
	if err != nil {
		t.Fatal(err)
	}
	calls := panels[0].p
	if calls.Y.Min >= 0 {
		t.Errorf("calls panel's axis starts at %v: refusals (1 a minute) are not below it", calls.Y.Min)
	}
	if calls.Y.Min < -1.1 {
		t.Errorf("calls panel's axis reaches %v, below the refusals of 1 a minute", calls.Y.Min)
	}
	zero := false
	for _, tk := range yTicks(calls.Y.Min, calls.Y.Max) {
		if strings.HasPrefix(tk.Label, "-") {
			t.Errorf("tick %v labelled %q: refusals are counts, without a sign", tk.Value, tk.Label)
		}
		zero = zero || (tk.Value == 0 && tk.Label == "0")
	}
	if !zero {
		t.Errorf("no tick labels zero on an axis from %v to %v", calls.Y.Min, calls.Y.Max)
	}
	// An axis from -16 to 6 steps from zero.
	var labels []string
	for _, tk := range yTicks(-16, 6) {
		labels = append(labels, tk.Label)
	}
	if got := strings.Join(labels, " "); got != "15 10 5 0 5" {
		t.Errorf("ticks of -16..6 labelled %q, want 15 10 5 0 5", got)
	}
}

func TestWriteSVGEscapesTitles(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	c := Chart{Series: hourSeries(key("m"), calls(1, 0)), To: t0.Add(time.Hour), Title: `<script>alert("x")</script>`}
	if err := WriteSVG(&b, []Chart{c}, ""); err != nil {
		t.Fatal(err)
	}
	root := parseSVG(t, b.Bytes())
	found := false
	root.walk(func(e *svgElem) {
		if e.XMLName.Local == "script" {
			t.Error("title became a script element")
		}
		found = found || (e.XMLName.Local == "text" && strings.Contains(e.Text, "<script>"))
	})
	if !found {
		t.Error("title text not drawn as text")
	}
}

func TestWriteSVGWithoutChartsSaysWhy(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	if err := WriteSVG(&b, nil, "no usage history in the last hour"); err != nil {
		t.Fatal(err)
	}
	root := parseSVG(t, b.Bytes())
	if got := texts(root); len(got) != 1 || got[0] != "no usage history in the last hour" {
		t.Errorf("texts = %q, want the message alone", got)
	}
}

func TestRatesArePerMinute(t *testing.T) {
	t.Parallel()
	// A day step of 15 minutes holding 30 calls is 2 calls a minute; the
	// last step, 5 minutes into it, holding 10 calls is also 2 a minute.
	s := broker.Series{Key: key("m"), From: t0, Step: 15 * time.Minute, Points: make([]broker.Stats, 2)}
	s.Points[0].Completed, s.Points[1].Completed = 30, 10
	c := Chart{Series: s, To: t0.Add(20 * time.Minute)}
	mins := c.perMinute()
	xy := c.stepXY(func(i int, st *broker.Stats) float64 { return float64(st.Successful()) / mins[i] })
	want := []struct{ x, y float64 }{{unix(t0), 2}, {unix(t0.Add(15 * time.Minute)), 2}, {unix(t0.Add(20 * time.Minute)), 2}}
	if len(xy) != len(want) {
		t.Fatalf("%d points, want %d", len(xy), len(want))
	}
	for i, w := range want {
		if xy[i].X != w.x || xy[i].Y != w.y {
			t.Errorf("point %d = (%v, %v), want (%v, %v)", i, xy[i].X, xy[i].Y, w.x, w.y)
		}
	}
}

func TestShortNumber(t *testing.T) {
	t.Parallel()
	for v, want := range map[float64]string{0: "0", 0.5: "0.5", 7: "7", 950: "950", 1500: "1.5k", 12000: "12k", 3_200_000: "3.2M", 100_000: "100k"} {
		if got := shortNumber(v); got != want {
			t.Errorf("shortNumber(%v) = %q, want %q", v, got, want)
		}
	}
}
