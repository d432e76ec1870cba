package dashboard_test

import (
	"context"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/server"
	"github.com/bedrockqb/quotabroker/server/dashboard"
)

// serveHTTP serves the dashboard of src behind the broker's HTTP server
// (server.NewHTTPServer), on loopback; edit changes the server before it
// starts.
func serveHTTP(t *testing.T, src dashboard.Source, cfg dashboard.Config, edit func(*http.Server)) string {
	t.Helper()
	mux := http.NewServeMux()
	dashboard.New(src, cfg).Register(mux)
	srv := server.NewHTTPServer(mux, nil)
	if srv.ReadHeaderTimeout <= 0 || srv.ReadTimeout <= 0 || srv.WriteTimeout <= 0 || srv.IdleTimeout <= 0 {
		t.Fatalf("HTTP server without every timeout: %+v", srv)
	}
	edit(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return "http://" + lis.Addr().String()
}

// TestUnsentBodyDoesNotHoldARenderSlot sends a request that announces a
// body and never sends it, nor reads its answer. net/http reads such a
// body once the handler starts answering; without a read timeout that read
// never ended and the request held the render slot for good, so the next
// render waited forever.
func TestUnsentBodyDoesNotHoldARenderSlot(t *testing.T) {
	t.Parallel()
	f := start(t, dashboard.Config{})
	f.drive(t, 5) // a page far larger than net/http's buffer
	url := serveHTTP(t, f.b, dashboard.Config{MaxRenders: 1}, func(s *http.Server) {
		s.ReadTimeout = 300 * time.Millisecond
	})
	conn, err := net.Dial("tcp", url[len("http://"):])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /dashboard HTTP/1.1\r\nHost: broker\r\nContent-Length: 100000\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	// A bound on a test that goes wrong, not a timing: the render takes
	// well under a second once the slot is free.
	c := &http.Client{Timeout: 20 * time.Second}
	resp, err := c.Get(url + "/dashboard?span=hour")
	if err != nil {
		t.Fatalf("a render after a request with an unsent body: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// blockingSource holds every History call until release is closed, and
// says on entered when one starts.
type blockingSource struct {
	dashboard.Source
	entered chan struct{}
	release chan struct{}
}

func (s *blockingSource) History(ctx context.Context, q broker.HistoryQuery) ([]broker.Series, error) {
	s.entered <- struct{}{}
	<-s.release
	return s.Source.History(ctx, q)
}

// TestRenderQueueIsBounded holds the one render slot, then sends two more
// requests with room for one in the queue: one is answered 503 with
// Retry-After at once, the other rendered once the slot is free.
func TestRenderQueueIsBounded(t *testing.T) {
	t.Parallel()
	f := start(t, dashboard.Config{})
	f.drive(t, 2)
	src := &blockingSource{Source: f.b, entered: make(chan struct{}, 8), release: make(chan struct{})}
	url := serveHTTP(t, src, dashboard.Config{MaxRenders: 1, MaxQueued: 1}, func(*http.Server) {})
	codes := make(chan *http.Response, 3)
	fetch := func(q string) {
		resp, err := http.Get(url + "/dashboard/chart.svg" + q)
		if err != nil {
			t.Error(err)
			codes <- nil
			return
		}
		resp.Body.Close()
		codes <- resp
	}
	var wg sync.WaitGroup
	wg.Go(func() { fetch("?span=hour") })
	<-src.entered // the slot is held
	wg.Go(func() { fetch("?span=day") })
	wg.Go(func() { fetch("?span=day&model=haiku") })
	busy := <-codes
	if busy == nil || busy.StatusCode != http.StatusServiceUnavailable || busy.Header.Get("Retry-After") == "" {
		t.Fatalf("beyond the queue: %+v, want 503 with Retry-After", busy)
	}
	close(src.release)
	wg.Wait()
	for range 2 {
		if r := <-codes; r == nil || r.StatusCode != http.StatusOK {
			t.Fatalf("held and queued requests: %+v, want 200", r)
		}
	}
}

// TestCacheKeyIsTheNormalisedFilter asks for a page, then for the same
// filter with spaces around it: the second is the first's entry (before,
// the key kept the spaces the render trimmed, so each variant rendered).
func TestCacheKeyIsTheNormalisedFilter(t *testing.T) {
	t.Parallel()
	f := start(t, dashboard.Config{CacheFor: time.Hour, Now: func() time.Time { return time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC) }})
	f.drive(t, 5)
	_, first := get(t, f.url+"/dashboard?model=sonnet")
	f.drive(t, 5)
	if _, again := get(t, f.url+"/dashboard?model=%20sonnet%20&region=+"); again != first {
		t.Fatal("the same filter with spaces was rendered anew")
	}
}
