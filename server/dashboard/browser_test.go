package dashboard_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/server/dashboard"
)

// The browser test drives Debian's chromium with chromedp (pinned in
// go.mod) rather than `chromium --headless --dump-dom`: a DOM dump shows
// the markup, not whether the browser laid the charts out, and gives no
// console. Over the DevTools protocol the test measures the rendered SVGs
// and their layers, and hears every console message and exception.

// chromium finds the browser, or ends the test: skipped on a developer's
// machine without it, failed in CI (CI set), where the test command
// installs it.
func chromium(t *testing.T) string {
	path, err := exec.LookPath("chromium")
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("chromium is not installed and CI is set: the CI test command must run `apt-get install -y chromium` (%v)", err)
	}
	t.Skipf("chromium is not installed: `apt-get install -y chromium` to run the browser test (with CI set this fails instead)")
	return ""
}

// console gathers the errors the page logs.
type console struct {
	mu     sync.Mutex
	errors []string
}

func (c *console) listen(ev any) {
	var msg string
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
			var args []string
			for _, a := range ev.Args {
				args = append(args, string(a.Value)+a.Description)
			}
			msg = "console." + string(ev.Type) + ": " + strings.Join(args, " ")
		}
	case *runtime.EventExceptionThrown:
		msg = "exception: " + ev.ExceptionDetails.Text
	case *cdplog.EventEntryAdded:
		if ev.Entry.Level == cdplog.EntryLevelError {
			msg = fmt.Sprintf("log (%s): %s %s", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
		}
	}
	if msg != "" {
		c.mu.Lock()
		c.errors = append(c.errors, msg)
		c.mu.Unlock()
	}
}

func (c *console) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.errors
	c.errors = nil
	return out
}

// rendered is what the browser reports of one chart.
type rendered struct {
	Budget, Span           string
	Width, Height          float64 // of the <svg> on the page, CSS pixels
	Paths, Texts           int
	Success, Throttled     float64 // tallest filled area of the layer's colour, SVG units
	Tokens, EffectiveWidth float64
	Refused                float64 // the area below the axis
	Legend                 float64 // height of the legend's "successful" text, CSS pixels
	Title                  string
}

// summaryRow is a row of the summary table, as the browser shows it.
type summaryRow struct {
	Budget string
	Cells  []string
}

// readSummary runs in the page: the header and every row of the table.
const readSummary = `(() => {
  const t = document.getElementById('summary');
  if (!t) return [];
  const head = {Budget: 'header', Cells: [...t.querySelectorAll('thead th')].map(c => c.innerText.replace(/\s+/g, ' '))};
  return [head, ...[...t.querySelectorAll('tbody tr')].map(r => ({
    Budget: r.dataset.key, Cells: [...r.querySelectorAll('td')].map(c => c.innerText),
  }))];
})()`

// measure runs in the page: the layers are found by the colours chart.go
// gives them (getComputedStyle reports them as rgb()); the legend's
// swatches, 14 units wide, are told from the areas, which span the time
// axis, by their width.
const measure = `(() => {
  const tallest = (svg, prop, col) => Math.max(0, ...[...svg.querySelectorAll('path')]
    .filter(p => getComputedStyle(p)[prop] === col && p.getBBox().width > 20).map(p => p.getBBox().height));
  const widest = (svg, prop, col) => Math.max(0, ...[...svg.querySelectorAll('path')]
    .filter(p => getComputedStyle(p)[prop] === col).map(p => p.getBBox().width));
  return [...document.querySelectorAll('figure.chart')].map(f => {
    const svg = f.querySelector('svg');
    const r = svg.getBoundingClientRect();
    return {
      Budget: f.dataset.budget, Span: f.dataset.span, Width: r.width, Height: r.height,
      Paths: svg.querySelectorAll('path').length, Texts: svg.querySelectorAll('text').length,
      Success: tallest(svg, 'fill', 'rgb(44, 160, 44)'),
      Throttled: tallest(svg, 'fill', 'rgb(214, 39, 40)'),
      Tokens: tallest(svg, 'fill', 'rgb(158, 202, 225)'),
      EffectiveWidth: widest(svg, 'stroke', 'rgb(148, 103, 189)'),
      Refused: tallest(svg, 'fill', 'rgb(89, 89, 89)'),
      Legend: Math.max(0, ...[...svg.querySelectorAll('text')].filter(t => t.textContent === 'successful')
        .map(t => t.getBoundingClientRect().height)),
      Title: [...svg.querySelectorAll('text')].map(t => t.textContent).find(s => s.includes(' - last ')) || '',
    };
  });
})()`

func TestDashboardRendersInChromium(t *testing.T) {
	path := chromium(t)
	f := start(t, dashboard.Config{})
	f.drive(t, 30)

	// Chromium's start alone took over 30 s once, under -race with the
	// whole test command on two cores; the bound is for a hung browser.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // root in containers and CI
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	allocCtx, stopAlloc := chromedp.NewExecAllocator(ctx, opts...)
	// Cancelling the allocator stops the browser process it started and
	// waits for it; the profile directory goes with t.TempDir.
	defer stopAlloc()
	var con console
	bctx, stopBrowser := chromedp.NewContext(allocCtx, chromedp.WithListener(con.listen))
	defer stopBrowser()

	enableLog := chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, cdplog.Enable, cdp.Empty{})
		return err
	})
	if err := chromedp.Do(bctx, enableLog, chromedp.Navigate(f.url+"/dashboard")); err != nil {
		t.Fatalf("load /dashboard in chromium: %v", err)
	}
	charts, err := chromedp.Run(bctx, chromedp.Evaluate[[]rendered](measure))
	if err != nil {
		t.Fatalf("measure the charts: %v", err)
	}
	table, err := chromedp.Run(bctx, chromedp.Evaluate[[]summaryRow](readSummary))
	if err != nil {
		t.Fatalf("read the summary table: %v", err)
	}
	idle, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.getElementById('idle').innerText`))
	if err != nil {
		t.Fatalf("read the idle list: %v", err)
	}
	if path := os.Getenv("DASHBOARD_SCREENSHOT"); path != "" {
		png, err := chromedp.Run(bctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The console check must be able to fail: a message the page did not
	// log has to arrive.
	loaded := con.take()
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[any](`console.error("probe")`)); err != nil {
		t.Fatal(err)
	}
	probe := false
	for deadline := time.Now().Add(5 * time.Second); !probe && time.Now().Before(deadline); {
		for _, m := range con.take() {
			probe = probe || strings.Contains(m, "probe")
		}
		if !probe {
			time.Sleep(20 * time.Millisecond) // polling a listener fed by the browser, bounded by the deadline
		}
	}
	if !probe {
		t.Fatal("the console listener did not hear console.error: the no-errors check would be blind")
	}
	if len(loaded) > 0 {
		t.Errorf("the page logged errors:\n%s", strings.Join(loaded, "\n"))
	}

	checkSummary(t, f, table)

	// Three budgets with traffic, those needing attention first (as in the
	// summary), each over the hour and the day.
	var order []string
	for _, c := range charts {
		order = append(order, c.Budget+" "+c.Span)
	}
	var want []string
	for _, m := range []string{sonnet, haiku, novaPro} {
		want = append(want, f.keys[m].String()+" hour", f.keys[m].String()+" day")
	}
	if strings.Join(order, "\n") != strings.Join(want, "\n") {
		t.Fatalf("charts in the page:\n%s\nwant:\n%s", strings.Join(order, "\n"), strings.Join(want, "\n"))
	}
	for _, c := range charts {
		name := c.Budget + " " + c.Span
		if c.Width < 200 || c.Height < 200 {
			t.Errorf("%s: drawn %.0fx%.0f px, want a visible chart", name, c.Width, c.Height)
		}
		if c.Title != c.Budget+" - last "+c.Span {
			t.Errorf("%s: title %q", name, c.Title)
		}
		if c.Success <= 0 || c.Tokens <= 0 || c.EffectiveWidth <= 0 || c.Texts < 10 {
			t.Errorf("%s: successful area %.1f, tokens area %.1f, effective limit width %.1f, %d texts: want all drawn",
				name, c.Success, c.Tokens, c.EffectiveWidth, c.Texts)
		}
		// The throttled layer stacks on the successful one: taller where
		// Bedrock throttled (sonnet), level with it where it did not.
		throttledBudget := c.Budget == f.keys[sonnet].String()
		if got := c.Throttled > c.Success+0.5; got != throttledBudget {
			t.Errorf("%s: throttled layer reaches %.1f, successful %.1f; throttles drawn: %v, want %v",
				name, c.Throttled, c.Success, got, throttledBudget)
		}
		// Refusals are an area of their own below the axis, visible where
		// the broker refused (haiku, and sonnet under its adaptive
		// ceiling) and flat elsewhere.
		refusedBudget := false
		for m, k := range f.keys {
			refusedBudget = refusedBudget || (c.Budget == k.String() && f.tally[m].refused > 0)
		}
		if got := c.Refused > 2; got != refusedBudget {
			t.Errorf("%s: refused area %.1f tall; refusals drawn: %v, want %v", name, c.Refused, got, refusedBudget)
		}
		// The legend is text a person can read at the page's width.
		if c.Legend < 10 {
			t.Errorf("%s: legend text %.1f px tall, want at least 10", name, c.Legend)
		}
	}
	for _, m := range []string{novaLite, llama} {
		if !strings.Contains(idle, f.keys[m].String()) {
			t.Errorf("idle list %q lacks %s", idle, m)
		}
	}
}

// checkSummary checks the summary table against what the fixture's callers
// saw and what the broker and the alerter report.
func checkSummary(t *testing.T, f *fixture, table []summaryRow) {
	t.Helper()
	if len(table) == 0 {
		t.Fatal("the page has no summary table")
	}
	header, rows := table[0].Cells, table[1:]
	col := map[string]int{}
	for i, h := range header {
		col[strings.Fields(h)[0]] = i
	}
	for _, h := range []string{"budget", "needs", "alerts", "RPM", "TPM", "busiest", "throttled", "refused", "waiting", "adaptive"} {
		if _, ok := col[h]; !ok {
			t.Fatalf("summary header %q lacks a %q column", header, h)
		}
	}
	// Every budget with traffic, those needing attention first: sonnet
	// has an alert firing (Bedrock throttles it), haiku is refused by the
	// broker, nova-pro is fine; the idle budgets are not in the table.
	var order []string
	for _, r := range rows {
		order = append(order, r.Budget)
	}
	want := []string{f.keys[sonnet].String(), f.keys[haiku].String(), f.keys[novaPro].String()}
	if strings.Join(order, "\n") != strings.Join(want, "\n") {
		t.Fatalf("summary rows:\n%s\nwant:\n%s", strings.Join(order, "\n"), strings.Join(want, "\n"))
	}
	reports, _ := f.b.Report(broker.ReportFilter{})
	byKey := map[string]broker.BudgetReport{}
	for _, r := range reports {
		byKey[r.Spec.Key.String()] = r
	}
	for i, m := range []string{sonnet, haiku, novaPro} {
		cell := func(name string) string { return rows[i].Cells[col[name]] }
		if k := f.keys[m]; cell("budget") != k.Model+"\n"+k.Region+" "+k.Scope.String() {
			t.Errorf("row %d: budget cell %q, want the model and under it region and scope of %s", i, cell("budget"), k)
		}
		tl := f.tally[m]
		wantNeeds, wantAlerts := map[string]string{sonnet: "alert", haiku: "refusing", novaPro: "ok"}[m], "none"
		if m == sonnet {
			wantAlerts = "throttle_rate"
		}
		rate := 0.0
		if tl.calls > 0 {
			rate = 100 * float64(tl.throttled) / float64(tl.calls)
		}
		refusal := 100 * float64(tl.refused) / float64(tl.calls+tl.refused)
		r := byKey[f.keys[m].String()]
		wantAdaptive := "no ceiling"
		if r.Adaptive.Ceiling.TPM > 0 || r.Adaptive.Ceiling.RPM > 0 {
			wantAdaptive = "ceiling"
		}
		for _, c := range []struct{ name, want string }{
			{"needs", wantNeeds},
			{"alerts", wantAlerts},
			{"throttled", fmt.Sprintf("%d of %d (%.1f%%)", tl.throttled, tl.calls, rate)},
			{"refused", fmt.Sprintf("%d (%.1f%%)", tl.refused, refusal)},
			{"waiting", fmt.Sprint(r.Waiters)},
			{"RPM", fmt.Sprintf("/%d)", r.Effective.RPM)},
			{"TPM", "k)"},
			{"busiest", "TPM"},
			{"adaptive", wantAdaptive},
		} {
			got := cell(c.name)
			if c.name == "RPM" || c.name == "TPM" || c.name == "busiest" || c.name == "adaptive" {
				if !strings.Contains(got, c.want) {
					t.Errorf("%s: %s cell %q lacks %q", m, c.name, got, c.want)
				}
				continue
			}
			if got != c.want {
				t.Errorf("%s: %s cell %q, want %q", m, c.name, got, c.want)
			}
		}
	}
	// haiku's busiest minute is its whole RPM limit: the broker granted
	// 9 of the 11 calls a minute against 10 x 0.9.
	if got := rows[1].Cells[col["busiest"]]; !strings.HasPrefix(got, "RPM 100%") {
		t.Errorf("haiku: busiest minute %q, want RPM 100%% (9 grants a minute against 9 RPM)", got)
	}
}
