package broker

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"time"
)

// affinityCache remembers, per (route, affinity key), the budget the key
// was last granted on: a bounded LRU whose entries expire. Keys are
// caller-chosen strings, so it stores a 16-byte hash of them: its memory is
// bounded by its capacity, not by what callers send. A collision (2^-64 per
// pair) would only send a call to another target of the same route.
// Guarded by Core.mu.
type affinityCache struct {
	cap   int
	ttl   time.Duration
	order *list.List // of *affinityEntry, most recently used first
	byKey map[[16]byte]*list.Element
}

type affinityEntry struct {
	key    [16]byte
	target Key
	at     time.Time // last grant
}

func newAffinityCache(capacity int, ttl time.Duration) affinityCache {
	return affinityCache{cap: capacity, ttl: ttl, order: list.New(), byKey: make(map[[16]byte]*list.Element)}
}

func affinityHash(route, key string) [16]byte {
	h := sha256.New()
	// The route's length first, so that no (route, key) pair hashes as
	// another pair's concatenation.
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(route)))
	h.Write(n[:])
	h.Write([]byte(route))
	h.Write([]byte(key))
	var out [16]byte
	copy(out[:], h.Sum(nil))
	return out
}

// get returns the budget key k was last granted on, if within the TTL.
func (c *affinityCache) get(k [16]byte, now time.Time) (Key, bool) {
	e := c.byKey[k]
	if e == nil {
		return Key{}, false
	}
	ent := e.Value.(*affinityEntry)
	if now.Sub(ent.at) > c.ttl {
		c.order.Remove(e)
		delete(c.byKey, k)
		return Key{}, false
	}
	return ent.target, true
}

// put records that k was granted on target at now, evicting the least
// recently used entry beyond the capacity.
func (c *affinityCache) put(k [16]byte, target Key, now time.Time) {
	if e := c.byKey[k]; e != nil {
		ent := e.Value.(*affinityEntry)
		ent.target, ent.at = target, now
		c.order.MoveToFront(e)
		return
	}
	c.byKey[k] = c.order.PushFront(&affinityEntry{key: k, target: target, at: now})
	for c.order.Len() > c.cap {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.byKey, last.Value.(*affinityEntry).key)
	}
}

// expire drops entries past the TTL, oldest first; the sweep calls it so
// that idle keys do not hold memory until evicted.
func (c *affinityCache) expire(now time.Time) {
	for e := c.order.Back(); e != nil; e = c.order.Back() {
		ent := e.Value.(*affinityEntry)
		if now.Sub(ent.at) <= c.ttl {
			return
		}
		c.order.Remove(e)
		delete(c.byKey, ent.key)
	}
}

func (c *affinityCache) len() int { return c.order.Len() }
