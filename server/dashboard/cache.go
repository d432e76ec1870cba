package dashboard

import (
	"bytes"
	"maps"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// renderCache keeps recent renders for Config.CacheFor. The page reloads
// itself every minute and a render costs hundreds of milliseconds of CPU
// (gonum/plot measures every label), so several people watching the same
// dashboard should cost one render, not one each. Entries are whole
// responses before compression; the cache holds at most cacheMax of them.
type renderCache struct {
	mu      sync.Mutex
	entries map[string]cached
}

type cached struct {
	at     time.Time
	header http.Header
	body   []byte
}

const cacheMax = 32

// cacheKey is the request's path and what changes the answer: the filter
// as params normalised it (the one the render uses, so ?model=%20x is the
// entry of ?model=x rather than a new render) and the span asked for, which
// params has checked.
func cacheKey(path string, f broker.ReportFilter, span string) string {
	v := url.Values{}
	for k, s := range map[string]string{"model": f.Model, "region": f.Region, "span": span} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return path + "?" + v.Encode() // Encode sorts by key
}

// serveCached answers r from the cache if a render for it is younger than
// the cache's lifetime.
func (d *Dashboard) serveCached(w http.ResponseWriter, r *http.Request, key string) bool {
	if d.cfg.CacheFor <= 0 {
		return false
	}
	d.cache.mu.Lock()
	e, ok := d.cache.entries[key]
	d.cache.mu.Unlock()
	if !ok || d.cfg.Now().Sub(e.at) >= d.cfg.CacheFor {
		return false
	}
	maps.Copy(w.Header(), e.header)
	send(w, r, bytes.NewBuffer(e.body))
	return true
}

// respond sends body with the headers already set on w, keeping a copy for
// the cache.
func (d *Dashboard) respond(w http.ResponseWriter, r *http.Request, key string, body *bytes.Buffer) {
	if d.cfg.CacheFor > 0 {
		now := d.cfg.Now()
		e := cached{at: now, header: w.Header().Clone(), body: bytes.Clone(body.Bytes())}
		d.cache.mu.Lock()
		if d.cache.entries == nil {
			d.cache.entries = map[string]cached{}
		}
		for k, old := range d.cache.entries { // drop what has expired
			if now.Sub(old.at) >= d.cfg.CacheFor {
				delete(d.cache.entries, k)
			}
		}
		if len(d.cache.entries) < cacheMax {
			d.cache.entries[key] = e
		}
		d.cache.mu.Unlock()
	}
	send(w, r, body)
}
