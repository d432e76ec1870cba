package dashboard_test

import (
	"context"
	"encoding/xml"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/server/dashboard"
)

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

var figureRE = regexp.MustCompile(`<figure class="chart" data-budget="([^"]+)" data-span="(\w+)">`)

// figures lists the charted (budget, span) pairs in page order.
func figures(page string) [][2]string {
	var out [][2]string
	for _, m := range figureRE.FindAllStringSubmatch(page, -1) {
		out = append(out, [2]string{m[1], m[2]})
	}
	return out
}

func TestPageChartsBusiestBudgetsFirstAndListsIdleOnes(t *testing.T) {
	t.Parallel()
	f := start(t, dashboard.Config{})
	f.drive(t, 10)
	resp, page := get(t, f.url+"/dashboard")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /dashboard: %s %s\n%s", resp.Status, resp.Header.Get("Content-Type"), page)
	}
	var want [][2]string
	for _, m := range []string{sonnet, haiku, novaPro} {
		want = append(want, [2]string{f.keys[m].String(), "hour"}, [2]string{f.keys[m].String(), "day"})
	}
	if got := figures(page); !slices.Equal(got, want) {
		t.Errorf("figures = %v\nwant %v", got, want)
	}
	if n := strings.Count(page, "<svg"); n != len(want) {
		t.Errorf("%d inline SVGs, want %d", n, len(want))
	}
	idle := page[strings.Index(page, `id="idle"`):]
	for _, m := range []string{novaLite, llama} {
		if !strings.Contains(idle, f.keys[m].String()) {
			t.Errorf("idle list lacks %s", m)
		}
	}
	if strings.Contains(page, `id="more"`) || strings.Contains(page, `id="empty"`) {
		t.Error("page says budgets were left out, or that there is no history")
	}
	if !strings.Contains(page, `href="/metrics"`) {
		t.Error("no link to /metrics")
	}
}

func TestPageBoundsChartsAndFilters(t *testing.T) {
	t.Parallel()
	f := start(t, dashboard.Config{MaxCharts: 2})
	f.drive(t, 5)

	_, page := get(t, f.url+"/dashboard?span=hour")
	want := [][2]string{{f.keys[sonnet].String(), "hour"}, {f.keys[haiku].String(), "hour"}}
	if got := figures(page); !slices.Equal(got, want) {
		t.Errorf("MaxCharts 2: figures = %v, want %v", got, want)
	}
	if i := strings.Index(page, `id="more"`); i < 0 || !strings.Contains(page[i:], f.keys[novaPro].String()) || !strings.Contains(page, "1 more budgets with traffic") {
		t.Errorf("page does not list nova-pro as one more budget with traffic")
	}

	_, page = get(t, f.url+"/dashboard?model=NOVA&span=day")
	want = [][2]string{{f.keys[novaPro].String(), "day"}}
	if got := figures(page); !slices.Equal(got, want) {
		t.Errorf("?model=NOVA: figures = %v, want %v", got, want)
	}
	if i := strings.Index(page, `id="idle"`); i < 0 || !strings.Contains(page[i:], novaLite) || strings.Contains(page[i:], llama) {
		t.Errorf("?model=NOVA: idle list should hold nova-lite alone")
	}

	_, page = get(t, f.url+"/dashboard?model=no-such-model")
	if !strings.Contains(page, `no budgets for models matching &#34;no-such-model&#34;`) {
		t.Errorf("unknown model: page does not say so:\n%s", page)
	}
}

func TestBadQueryIsRefusedNamingTheField(t *testing.T) {
	t.Parallel()
	f := start(t, dashboard.Config{})
	for _, path := range []string{"/dashboard?span=week", "/dashboard/chart.svg?span=week", "/dashboard?model=" + strings.Repeat("x", 300)} {
		resp, body := get(t, f.url+path)
		if resp.StatusCode != http.StatusBadRequest || !(strings.Contains(body, "span") || strings.Contains(body, "model")) {
			t.Errorf("GET %s: %s %q, want 400 naming the field", path, resp.Status, body)
		}
	}
}

func TestRootRedirectsToDashboard(t *testing.T) {
	t.Parallel()
	f := start(t, dashboard.Config{})
	resp, _ := get(t, f.url+"/")
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/dashboard" {
		t.Errorf("GET /: %s to %q, want 302 to /dashboard", resp.Status, resp.Header.Get("Location"))
	}
	if resp, _ := get(t, f.url+"/nothing"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nothing: %s, want 404", resp.Status)
	}
}

func TestEmptyHistorySaysSo(t *testing.T) {
	t.Parallel()
	f := start(t, dashboard.Config{})
	_, page := get(t, f.url+"/dashboard")
	if !strings.Contains(page, "no usage history in the last day.") || strings.Contains(page, "<svg") {
		t.Errorf("page without history does not say so, or draws charts:\n%s", page)
	}
	if i := strings.Index(page, `id="idle"`); i < 0 || strings.Count(page[i:], "<span>") != len(models) {
		t.Errorf("page without history should list all %d budgets as idle", len(models))
	}
	resp, svg := get(t, f.url+"/dashboard/chart.svg")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "image/svg+xml" {
		t.Fatalf("GET chart.svg: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	if err := xml.Unmarshal([]byte(svg), new(struct{})); err != nil || !strings.Contains(svg, "no usage history in the last hour") {
		t.Errorf("chart.svg without history: err %v, want a valid SVG saying so:\n%s", err, svg)
	}
}

func TestChartSVGHasOneChartPerBudgetWithTraffic(t *testing.T) {
	t.Parallel()
	f := start(t, dashboard.Config{})
	f.drive(t, 5)
	for _, c := range []struct {
		query  string
		titles []string
	}{
		{"", []string{f.keys[sonnet].String() + " - last hour", f.keys[haiku].String() + " - last hour", f.keys[novaPro].String() + " - last hour"}},
		{"?span=day&model=haiku", []string{f.keys[haiku].String() + " - last day"}},
	} {
		resp, svg := get(t, f.url+"/dashboard/chart.svg"+c.query)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "image/svg+xml" {
			t.Fatalf("GET chart.svg%s: %s %s", c.query, resp.Status, resp.Header.Get("Content-Type"))
		}
		var doc struct {
			Texts []string `xml:"g>text"`
		}
		if err := xml.Unmarshal([]byte(svg), &doc); err != nil {
			t.Fatalf("chart.svg%s does not parse: %v", c.query, err)
		}
		var titles []string
		for _, s := range doc.Texts {
			if strings.Contains(s, " - last ") {
				titles = append(titles, strings.TrimSpace(s))
			}
		}
		if !slices.Equal(titles, c.titles) {
			t.Errorf("chart.svg%s titles = %q, want %q", c.query, titles, c.titles)
		}
	}
}

// TestRendersAreCachedForCacheFor checks that a page asked for again
// within CacheFor is the earlier render (new traffic does not show), that
// it is rendered anew after, and that another query is its own entry.
func TestRendersAreCachedForCacheFor(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	f := start(t, dashboard.Config{CacheFor: 10 * time.Second, Now: clock})
	f.drive(t, 5)
	_, first := get(t, f.url+"/dashboard")
	f.drive(t, 5)
	if _, again := get(t, f.url+"/dashboard"); again != first {
		t.Fatal("a page asked for again within CacheFor was rendered anew")
	}
	if _, hour := get(t, f.url+"/dashboard?span=hour"); hour == first {
		t.Fatal("another query was answered from the first one's entry")
	}
	mu.Lock()
	now = now.Add(10 * time.Second)
	mu.Unlock()
	if _, later := get(t, f.url+"/dashboard"); later == first {
		t.Fatal("the page was still served from the cache after CacheFor")
	}
}

// The routes table says, per route and target, where leases went and why;
// a broker without routes shows none.
func TestPageShowsRoutes(t *testing.T) {
	t.Parallel()
	f := start(t, dashboard.Config{})
	if _, page := get(t, f.url+"/dashboard"); strings.Contains(page, `id="routes"`) {
		t.Fatal("a routes table without routes")
	}
	// sonnet's budget in us-east-1, then us-west-2's (added for the route).
	west, err := broker.NewTarget(sonnet, "us-west-2")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := f.b.SetSpecs(ctx, []broker.Spec{{Key: west.Key, Quota: broker.Limits{RPM: 10}, Source: "test"}}); err != nil {
		t.Fatal(err)
	}
	east, _ := broker.NewTarget(sonnet, "us-east-1")
	if err := f.b.SetRoutes([]broker.Route{{Name: "sonnet-us", Targets: []broker.Target{east, west}}}); err != nil {
		t.Fatal(err)
	}
	// 180 RPM (200 x 0.9) on us-east-1, then a spill.
	for range 181 {
		if d, err := f.b.Acquire(ctx, broker.AcquireRequest{Route: "sonnet-us", MaxOutputTokens: 10}); err != nil || !d.Granted {
			t.Fatalf("%+v %v", d, err)
		}
	}
	_, page := get(t, f.url+"/dashboard")
	i := strings.Index(page, `id="routes"`)
	if i < 0 {
		t.Fatalf("no routes table:\n%s", page)
	}
	table := page[i : strings.Index(page[i:], "</table>")+i]
	for _, want := range []string{
		`<td class="key">sonnet-us<br><small>refused 0</small></td><td>1</td>`,
		`<td class="key">` + sonnet + `<br><small>us-east-1</small></td><td>180</td><td>0</td><td>0</td>`,
		`<td>2</td>` + "\n" + `<td class="key">` + sonnet + `<br><small>us-west-2</small></td><td>0</td><td>0</td><td>1</td>`,
	} {
		if !strings.Contains(table, want) {
			t.Errorf("routes table lacks %s\n%s", want, table)
		}
	}
}

// TestPageShowsCluster: a replica of a cluster says what it is in the
// header; a broker alone says nothing of clusters.
func TestPageShowsCluster(t *testing.T) {
	t.Parallel()
	const line = "cluster: 127.0.0.1:50052 is the standby; leader 127.0.0.1:50051"
	f := start(t, dashboard.Config{Cluster: func() string { return line }})
	if _, page := get(t, f.url+"/dashboard"); !strings.Contains(page, `<span class="meta cluster">`+line+`</span>`) {
		t.Errorf("page lacks the cluster line %q", line)
	}
	f = start(t, dashboard.Config{})
	if _, page := get(t, f.url+"/dashboard"); strings.Contains(page, "cluster") {
		t.Error("a broker alone shows a cluster line")
	}
}
