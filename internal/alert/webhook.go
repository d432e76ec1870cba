package alert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// WebhookConfig tunes a Webhook. The zero value works.
type WebhookConfig struct {
	// Timeout bounds one POST; 0 means 10s.
	Timeout time.Duration
	// Attempts is how many times an event is tried (connection errors, 429
	// and 5xx are retried; other answers are final); 0 means 5.
	Attempts int
	// Backoff is the wait before the first retry, doubled for each next
	// one up to MaxBackoff; 0 means 1s.
	Backoff time.Duration
	// MaxBackoff caps the wait between attempts; 0 means 30s.
	MaxBackoff time.Duration
	// Queue is how many events wait for delivery; when it is full the
	// oldest is dropped. 0 means 256.
	Queue int
	// Bearer, when set, is sent as "Authorization: Bearer <Bearer>".
	Bearer string
	// Client sends the requests; nil means a new http.Client.
	Client *http.Client
	// Logger receives delivery failures and drops; nil is silent.
	Logger *slog.Logger
}

// Webhook POSTs events as JSON to a URL, from its own goroutine (Run).
// Notify never blocks.
type Webhook struct {
	url string
	// name is the URL's scheme and host, for messages: the path of a chat
	// webhook (Slack's, say) is a secret.
	name string
	cfg  WebhookConfig

	mu      sync.Mutex // guards queue and dropped
	queue   []Event    // oldest first, at most cfg.Queue
	dropped int64      // events dropped because the queue was full
	wake    chan struct{}
}

var _ Sink = (*Webhook)(nil)

// NewWebhook returns a webhook sink for rawURL (http or https).
func NewWebhook(rawURL string, cfg WebhookConfig) (*Webhook, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("alert webhook %q: %w", rawURL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("alert webhook %q: want an http:// or https:// URL", rawURL)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{{"timeout", &cfg.Timeout, 10 * time.Second}, {"backoff", &cfg.Backoff, time.Second}, {"max_backoff", &cfg.MaxBackoff, 30 * time.Second}} {
		if *d.v < 0 {
			return nil, fmt.Errorf("alert webhook: %s %v is negative", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if cfg.Attempts < 0 || cfg.Queue < 0 {
		return nil, fmt.Errorf("alert webhook: attempts %d and queue %d must not be negative", cfg.Attempts, cfg.Queue)
	}
	if cfg.Attempts == 0 {
		cfg.Attempts = 5
	}
	if cfg.Queue == 0 {
		cfg.Queue = 256
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Webhook{url: rawURL, name: u.Scheme + "://" + u.Host, cfg: cfg, wake: make(chan struct{}, 1)}, nil
}

// Notify queues e for delivery. When the queue is full the oldest event is
// dropped: a newer event about the same alert supersedes it, and a stuck
// receiver must not grow the broker's memory.
func (w *Webhook) Notify(e Event) {
	w.mu.Lock()
	if len(w.queue) >= w.cfg.Queue {
		old := w.queue[0]
		w.queue = w.queue[1:]
		w.dropped++
		w.cfg.Logger.Warn("alert webhook queue full: dropped the oldest event", "rule", string(old.Rule), "status", string(old.Status),
			"model", old.Budget.Model, "region", old.Budget.Region, "dropped_total", w.dropped, "queue", w.cfg.Queue)
	}
	w.queue = append(w.queue, e)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Dropped is how many events were dropped because the queue was full.
func (w *Webhook) Dropped() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dropped
}

// Run delivers queued events, one at a time in order, until ctx ends.
// Events still queued then are counted in the log and lost.
func (w *Webhook) Run(ctx context.Context) {
	for {
		w.mu.Lock()
		var e Event
		ok := len(w.queue) > 0
		if ok {
			e = w.queue[0]
			w.queue = w.queue[1:]
		}
		w.mu.Unlock()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
				continue
			}
		}
		w.deliver(ctx, e)
		if ctx.Err() != nil {
			w.mu.Lock()
			n := len(w.queue)
			w.mu.Unlock()
			if n > 0 {
				w.cfg.Logger.Warn("alert webhook stopped with events undelivered", "events", n)
			}
			return
		}
	}
}

// deliver tries e up to Attempts times.
func (w *Webhook) deliver(ctx context.Context, e Event) {
	body, err := json.Marshal(e)
	if err != nil { // cannot happen for Event; say so if it does
		w.cfg.Logger.Error("alert webhook: encode event", "err", err)
		return
	}
	wait := w.cfg.Backoff
	for attempt := 1; ; attempt++ {
		err := w.post(ctx, body)
		if err == nil {
			return
		}
		var final finalError
		if errors.As(err, &final) || attempt >= w.cfg.Attempts || ctx.Err() != nil {
			if ctx.Err() == nil {
				w.cfg.Logger.Error("alert webhook: event not delivered", "rule", string(e.Rule), "status", string(e.Status),
					"model", e.Budget.Model, "region", e.Budget.Region, "attempts", attempt, "err", err)
			}
			return
		}
		w.cfg.Logger.Warn("alert webhook: delivery failed; will retry", "attempt", attempt, "retry_in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, w.cfg.MaxBackoff)
	}
}

// finalError is an answer that retrying would not change.
type finalError struct{ error }

func (w *Webhook) post(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return finalError{fmt.Errorf("post %s: %w", w.name, err)}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "quota-broker-alert")
	if w.cfg.Bearer != "" {
		req.Header.Set("Authorization", "Bearer "+w.cfg.Bearer)
	}
	resp, err := w.cfg.Client.Do(req)
	if err != nil {
		var ue *url.Error // carries the whole URL: keep only its cause
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("post %s: %w", w.name, err)
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // let the connection be reused
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("post %s: %s: %s", w.name, resp.Status, bytes.TrimSpace(snippet))
	default:
		return finalError{fmt.Errorf("post %s: %s: %s", w.name, resp.Status, bytes.TrimSpace(snippet))}
	}
}
