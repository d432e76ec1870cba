// Package clocktest is a fake broker.Clock for tests: time stands still until
// the test advances it, and timers fire, in order, as it passes their time.
package clocktest

import (
	"slices"
	"sync"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// Clock is a manual clock. The zero value is not usable; use New.
type Clock struct {
	mu     sync.Mutex // guards now, timers, seq
	now    time.Time
	timers []*timer
	seq    int
}

type timer struct {
	c       *Clock
	at      time.Time
	seq     int
	f       func()
	stopped bool
}

var _ broker.Clock = (*Clock)(nil)

// New returns a clock reading start.
func New(start time.Time) *Clock { return &Clock{now: start} }

func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc schedules f; a non-positive d fires at the next Advance (or
// immediately when called from inside one).
func (c *Clock) AfterFunc(d time.Duration, f func()) broker.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &timer{c: c, at: c.now.Add(d), seq: c.seq, f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *timer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.stopped {
		return false
	}
	t.stopped = true
	return true
}

// Advance moves the clock forward by d, firing due timers one by one in time
// order, each synchronously at its own time (so a timer sees Now() equal to
// its deadline). Timers scheduled by a firing timer fire too if due.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		c.timers = slices.DeleteFunc(c.timers, func(t *timer) bool { return t.stopped })
		var next *timer
		for _, t := range c.timers {
			if !t.at.After(end) && (next == nil || t.at.Before(next.at) || (t.at.Equal(next.at) && t.seq < next.seq)) {
				next = t
			}
		}
		if next == nil {
			c.now = end
			c.mu.Unlock()
			return
		}
		next.stopped = true
		if next.at.After(c.now) {
			c.now = next.at
		}
		c.mu.Unlock()
		next.f()
	}
}
