package dashboard

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// Config tunes the dashboard; the zero value works.
type Config struct {
	// MaxCharts bounds the budgets charted per request; 0 or less: 50.
	MaxCharts int
	// MaxRenders bounds requests rendering at once. 0 or less: 2.
	MaxRenders int
	// MaxQueued bounds the requests waiting for a render slot; one more is
	// answered 503 with Retry-After at once. 0 or less: 8.
	MaxQueued int
	// QueueWait bounds how long a request waits for a render slot before
	// it is answered 503 with Retry-After. 0 or less: 30 s.
	QueueWait time.Duration
	// Version is shown in the header; empty: the binary's build info.
	Version string
	// Logger receives failures to read history; nil: silent.
	Logger *slog.Logger
	// CacheFor is how long a render is served again to requests for the
	// same page or chart; 0 or less: every request renders.
	CacheFor time.Duration
	// Now is the cache's clock; nil: time.Now.
	Now func() time.Time
	// Cluster, when set, says in the header what this replica of a
	// cluster is (role, leader, etcd); "" shows nothing.
	Cluster func() string
	// Alerts, when set, lets the summary show the alerts firing and rank
	// budgets with firing alerts first; nil: the page does not show alerts.
	Alerts Alerts
}

// Dashboard serves the page and the SVG charts.
type Dashboard struct {
	src     Source
	cfg     Config
	renders chan struct{} // a token per render in progress
	queued  atomic.Int64  // requests waiting for a token
	cache   renderCache
}

// New returns a dashboard of src.
func New(src Source, cfg Config) *Dashboard {
	if cfg.MaxCharts <= 0 {
		cfg.MaxCharts = 50
	}
	if cfg.MaxRenders <= 0 {
		cfg.MaxRenders = 2
	}
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = 8
	}
	if cfg.QueueWait <= 0 {
		cfg.QueueWait = 30 * time.Second
	}
	if cfg.Version == "" {
		cfg.Version = buildVersion()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Dashboard{src: src, cfg: cfg, renders: make(chan struct{}, cfg.MaxRenders)}
}

// Register adds the dashboard's routes to mux: the page at /dashboard, one
// SVG of the charts at /dashboard/chart.svg, and / redirecting to the page.
func (d *Dashboard) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /dashboard", d.servePage)
	mux.HandleFunc("GET /dashboard/chart.svg", d.serveSVG)
	mux.Handle("GET /{$}", http.RedirectHandler("/dashboard", http.StatusFound))
}

// maxModelFilter bounds the ?model= filter; model ids are far shorter.
const maxModelFilter = 256

// params reads ?model= and ?span=; allowBoth lets an empty span mean every
// span (the page), otherwise it means the last hour (the SVG).
func params(r *http.Request, allowBoth bool) (broker.ReportFilter, []Span, error) {
	q := r.URL.Query()
	f := broker.ReportFilter{Model: strings.TrimSpace(q.Get("model")), Region: strings.TrimSpace(q.Get("region"))}
	if len(f.Model) > maxModelFilter || len(f.Region) > maxModelFilter {
		return f, nil, fmt.Errorf("model or region: longer than %d bytes", maxModelFilter)
	}
	switch name := q.Get("span"); name {
	case "":
		if allowBoth {
			return f, Spans, nil
		}
		return f, []Span{LastHour}, nil
	default:
		for _, s := range Spans {
			if s.Name == name {
				return f, []Span{s}, nil
			}
		}
		return f, nil, fmt.Errorf("span %q: want hour or day", name)
	}
}

// errBusy answers a request that found the render queue full or waited
// QueueWait in it.
var errBusy = errors.New("the dashboard is busy rendering for others; retry in a few seconds")

// acquire waits for a render token, in a queue of at most MaxQueued
// requests, for at most QueueWait; release it with <-d.renders. Without
// the bound, a thousand requests at once were answered one by one over
// minutes, each holding a connection and a goroutine.
func (d *Dashboard) acquire(ctx context.Context) error {
	select {
	case d.renders <- struct{}{}:
		return nil
	default:
	}
	if d.queued.Add(1) > int64(d.cfg.MaxQueued) {
		d.queued.Add(-1)
		return errBusy
	}
	defer d.queued.Add(-1)
	ctx, cancel := context.WithTimeout(ctx, d.cfg.QueueWait)
	defer cancel()
	select {
	case d.renders <- struct{}{}:
		return nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return errBusy
		}
		return ctx.Err() // the client went away
	}
}

// wait is acquire answering a request that gets no token: 503 with
// Retry-After when busy, nothing to a client that left. It reports whether
// the caller holds a token.
func (d *Dashboard) wait(w http.ResponseWriter, r *http.Request) bool {
	err := d.acquire(r.Context())
	if errors.Is(err, errBusy) {
		w.Header().Set("Retry-After", "5")
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	}
	return err == nil
}

func (d *Dashboard) collect(w http.ResponseWriter, r *http.Request, f broker.ReportFilter, spans []Span) (*view, bool) {
	v, err := collect(r.Context(), d.src, d.cfg.Alerts, f, spans, d.cfg.MaxCharts)
	if err != nil {
		if r.Context().Err() == nil {
			d.cfg.Logger.Error("dashboard: read usage history", "err", err)
		}
		// The cause may name files or internals: it goes to the log.
		http.Error(w, "usage history could not be read; the broker's log has the cause", http.StatusServiceUnavailable)
		return nil, false
	}
	return v, true
}

func (d *Dashboard) serveSVG(w http.ResponseWriter, r *http.Request) {
	f, spans, err := params(r, false)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	key := cacheKey(r.URL.Path, f, r.URL.Query().Get("span"))
	if d.serveCached(w, r, key) {
		return
	}
	if !d.wait(w, r) {
		return
	}
	defer func() { <-d.renders }()
	v, ok := d.collect(w, r, f, spans)
	if !ok {
		return
	}
	var b bytes.Buffer
	if err := WriteSVG(&b, v.charts(0), v.emptyMessage(0)); err != nil {
		d.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	d.respond(w, r, key, &b)
}

// send writes b, gzipped when the client takes it: SVG is verbose text
// that shrinks about tenfold.
func send(w http.ResponseWriter, r *http.Request, b *bytes.Buffer) {
	w.Header().Add("Vary", "Accept-Encoding")
	if !acceptsGzip(r) {
		b.WriteTo(w)
		return
	}
	w.Header().Set("Content-Encoding", "gzip")
	zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed) // a valid level: no error
	b.WriteTo(zw)
	zw.Close()
}

func acceptsGzip(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept-Encoding") {
		for _, enc := range strings.Split(v, ",") {
			name, q, _ := strings.Cut(strings.TrimSpace(enc), ";")
			if strings.TrimSpace(name) == "gzip" && strings.ReplaceAll(q, " ", "") != "q=0" {
				return true
			}
		}
	}
	return false
}

func (d *Dashboard) fail(w http.ResponseWriter, err error) {
	d.cfg.Logger.Error("dashboard: render", "err", err)
	http.Error(w, "the charts could not be drawn; the broker's log has the cause", http.StatusInternalServerError)
}

func (d *Dashboard) servePage(w http.ResponseWriter, r *http.Request) {
	f, spans, err := params(r, true)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	key := cacheKey(r.URL.Path, f, r.URL.Query().Get("span"))
	if d.serveCached(w, r, key) {
		return
	}
	if !d.wait(w, r) {
		return
	}
	defer func() { <-d.renders }()
	v, ok := d.collect(w, r, f, spans)
	if !ok {
		return
	}
	buf, err := d.page(v, r.URL.Query().Get("span"))
	if err != nil {
		d.fail(w, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	// The page runs no script and loads nothing: say so to the browser.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	d.respond(w, r, key, buf)
}

// buildVersion is the module version and VCS revision the binary was built
// from, as far as the build recorded them.
func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := info.Main.Version
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
		if s.Key == "vcs.modified" && s.Value == "true" {
			v += "+dirty"
		}
	}
	return v
}
