package alert

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// receiver is a webhook endpoint on 127.0.0.1 that answers with the codes
// of answers in turn (200 once they run out) and hands every request to
// the test.
type receiver struct {
	srv  *httptest.Server
	got  chan request
	mu   sync.Mutex
	plan []int
}

type request struct {
	header http.Header
	body   []byte
	event  Event
	code   int
}

func newReceiver(t *testing.T, answers ...int) *receiver {
	t.Helper()
	r := &receiver{got: make(chan request, 100), plan: answers}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		code := http.StatusOK
		r.mu.Lock()
		if len(r.plan) > 0 {
			code, r.plan = r.plan[0], r.plan[1:]
		}
		r.mu.Unlock()
		var e Event
		if err := json.Unmarshal(body, &e); err != nil || req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/json" {
			t.Errorf("webhook got %s %s %q: %v", req.Method, req.Header.Get("Content-Type"), body, err)
		}
		w.WriteHeader(code)
		r.got <- request{header: req.Header.Clone(), body: body, event: e, code: code}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) next(t *testing.T) request {
	t.Helper()
	select {
	case q := <-r.got:
		return q
	case <-time.After(30 * time.Second):
		t.Fatal("no webhook request within 30s")
		return request{}
	}
}

// runWebhook starts w.Run and returns a function that stops it and waits.
func runWebhook(t *testing.T, w *Webhook) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	stop = sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	return stop
}

func fastRetries(cfg WebhookConfig) WebhookConfig {
	cfg.Backoff, cfg.MaxBackoff = time.Millisecond, 4*time.Millisecond
	return cfg
}

// TestWebhookFiringThenResolved: an alerter with a webhook sink delivers
// exactly one firing and then one resolved event, however many
// evaluations the condition lasts.
func TestWebhookFiringThenResolved(t *testing.T) {
	rcv := newReceiver(t)
	w, err := NewWebhook(rcv.srv.URL+"/hook", fastRetries(WebhookConfig{Bearer: "s3cret"}))
	if err != nil {
		t.Fatal(err)
	}
	now := t0
	src := &fakeSource{now: func() time.Time { return now }}
	a, err := New(src, []Sink{w}, Config{ThrottleRate: Off, UtilisationFor: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	stop := runWebhook(t, w)
	var emitted int
	for i, u := range []float64{0.9, 0.9, 0.95, 0.99, 0.9, 0.9, 0.5, 0.4, 0.3} {
		now = t0.Add(time.Duration(i) * 30 * time.Second)
		src.set(report(sonnet, u, broker.Counters{}))
		emitted += len(a.Evaluate())
	}
	if emitted != 2 {
		t.Fatalf("the alerter emitted %d events, want 2", emitted)
	}
	f, r := rcv.next(t), rcv.next(t)
	stop()
	if len(rcv.got) != 0 {
		t.Fatalf("more than two requests: %+v", <-rcv.got)
	}
	if f.event.Status != StatusFiring || r.event.Status != StatusResolved || f.event.Rule != RuleUtilisation ||
		f.event.Budget != (Budget{Region: "us-east-1", Scope: "cross-region", Model: sonnet.Model}) ||
		!f.event.Since.Equal(t0) || !f.event.At.Equal(t0.Add(time.Minute)) || f.event.Value != 0.95 ||
		!r.event.Since.Equal(t0) || !r.event.At.Equal(t0.Add(3*time.Minute)) || r.event.Value != 0.5 {
		t.Fatalf("firing %+v\nresolved %+v", f.event, r.event)
	}
	if got := f.header.Get("Authorization"); got != "Bearer s3cret" {
		t.Fatalf("Authorization %q", got)
	}
	// The wire names are the documented ones.
	var raw map[string]any
	json.Unmarshal(f.body, &raw)
	for _, k := range []string{"status", "rule", "budget", "value", "threshold", "since", "at", "summary", "text"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("payload lacks %q: %s", k, f.body)
		}
	}
	if !strings.HasPrefix(raw["text"].(string), "[FIRING] quota-broker utilisation us-east-1 cross-region") {
		t.Errorf("text %q", raw["text"])
	}
}

func TestWebhookRetriesAfterServerError(t *testing.T) {
	rcv := newReceiver(t, http.StatusInternalServerError, http.StatusBadGateway)
	w, err := NewWebhook(rcv.srv.URL, fastRetries(WebhookConfig{}))
	if err != nil {
		t.Fatal(err)
	}
	runWebhook(t, w)
	w.Notify(Event{Status: StatusFiring, Rule: RuleThrottleRate, Summary: "one"})
	a, b, c := rcv.next(t), rcv.next(t), rcv.next(t)
	if a.code != 500 || b.code != 502 || c.code != 200 || !bytes.Equal(a.body, c.body) || c.event.Summary != "one" {
		t.Fatalf("attempts %d %d %d, bodies %s / %s", a.code, b.code, c.code, a.body, c.body)
	}
}

// TestWebhookGivesUp: a 4xx answer is final, and Attempts bounds retries;
// the next event is delivered either way.
func TestWebhookGivesUp(t *testing.T) {
	rcv := newReceiver(t, http.StatusBadRequest, 500, 500, 500)
	w, err := NewWebhook(rcv.srv.URL, fastRetries(WebhookConfig{Attempts: 3}))
	if err != nil {
		t.Fatal(err)
	}
	runWebhook(t, w)
	for _, s := range []string{"rejected", "unlucky", "delivered"} {
		w.Notify(Event{Status: StatusFiring, Summary: s})
	}
	want := []struct {
		code    int
		summary string
	}{{400, "rejected"}, {500, "unlucky"}, {500, "unlucky"}, {500, "unlucky"}, {200, "delivered"}}
	for i, w := range want {
		if q := rcv.next(t); q.code != w.code || q.event.Summary != w.summary {
			t.Fatalf("request %d: %d %q, want %d %q", i, q.code, q.event.Summary, w.code, w.summary)
		}
	}
}

// TestWebhookQueueDropsOldest fills the queue before the worker starts:
// only the newest Queue events are delivered, in order, and the drops are
// counted and logged.
func TestWebhookQueueDropsOldest(t *testing.T) {
	rcv := newReceiver(t)
	var logs bytes.Buffer
	w, err := NewWebhook(rcv.srv.URL, WebhookConfig{Queue: 3, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"1", "2", "3", "4", "5"} {
		w.Notify(Event{Status: StatusFiring, Summary: s})
	}
	if w.Dropped() != 2 || strings.Count(logs.String(), "queue full") != 2 || !strings.Contains(logs.String(), "dropped_total=2") {
		t.Fatalf("dropped %d; log:\n%s", w.Dropped(), logs.String())
	}
	stop := runWebhook(t, w)
	for _, want := range []string{"3", "4", "5"} {
		if q := rcv.next(t); q.event.Summary != want {
			t.Fatalf("delivered %q, want %q", q.event.Summary, want)
		}
	}
	stop()
	if len(rcv.got) != 0 {
		t.Fatalf("extra delivery %+v", <-rcv.got)
	}
}

// TestWebhookLogsNoSecretPath: chat webhooks carry their secret in the
// path; failures are logged with the scheme and host only.
func TestWebhookLogsNoSecretPath(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now: connection refused
	lines := make(chan string, 100)
	h := slog.NewTextHandler(chanWriter(lines), nil)
	w, err := NewWebhook("http://"+addr+"/services/T000/B000/XXXXSECRET", fastRetries(WebhookConfig{Attempts: 2, Logger: slog.New(h)}))
	if err != nil {
		t.Fatal(err)
	}
	w.Notify(Event{Status: StatusFiring})
	runWebhook(t, w)
	var all []string
	for {
		select {
		case l := <-lines:
			all = append(all, l)
			if strings.Contains(l, "SECRET") || !strings.Contains(l, "http://"+addr) {
				t.Fatalf("log line %q", l)
			}
			if strings.Contains(l, "not delivered") {
				return
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no delivery failure logged within 30s: %q", all)
		}
	}
}

// chanWriter sends each write (one log line) on a channel.
type chanWriter chan string

func (c chanWriter) Write(p []byte) (int, error) {
	c <- string(p)
	return len(p), nil
}

func TestNewWebhookRejectsBadURL(t *testing.T) {
	for _, u := range []string{"", "ftp://x/y", "hooks.slack.com/x", "http://"} {
		if _, err := NewWebhook(u, WebhookConfig{}); err == nil || !strings.Contains(err.Error(), "alert webhook") {
			t.Errorf("NewWebhook(%q) = %v", u, err)
		}
	}
}
