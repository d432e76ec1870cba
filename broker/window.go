package broker

import "time"

// window is a sliding window of charges: the sum of everything charged in
// the last span, kept in slots of res. A charge is placed in the slot of the
// time it was made and stays there until that slot leaves the window, so a
// later correction (a settlement returning unused tokens) goes back to the
// slot it came from.
//
// The window holds span/res + 1 slots. A slot [i*res, (i+1)*res) counts while
// any part of it is within span of now, so every interval of length span
// overlaps only slots that were counted when each of its charges was admitted:
// "no more than limit in any span" holds exactly, at the cost of up to one
// slot (res/span, 0.4% for a minute in 250 ms slots) of capacity.
type window struct {
	res   time.Duration
	slots []int64
	head  int64 // absolute index (unix nanos / res) of the newest slot
	sum   int64 // sum of slots
}

func newWindow(span, res time.Duration) *window {
	return &window{res: res, slots: make([]int64, int(span/res)+1)}
}

func (w *window) index(t time.Time) int64 { return t.UnixNano() / int64(w.res) }

func (w *window) slot(i int64) *int64 {
	n := int64(len(w.slots))
	return &w.slots[((i%n)+n)%n]
}

// advance drops the slots that have left the window at now.
func (w *window) advance(now time.Time) {
	cur := w.index(now)
	if cur <= w.head {
		return
	}
	n := int64(len(w.slots))
	if cur-w.head >= n {
		clear(w.slots)
		w.sum = 0
	} else {
		for i := w.head + 1; i <= cur; i++ {
			s := w.slot(i)
			w.sum -= *s
			*s = 0
		}
	}
	w.head = cur
}

// add charges v (negative to return) at time at, as seen at now. A return
// to a slot that has already left the window is dropped: that charge is
// already gone.
func (w *window) add(now, at time.Time, v int64) {
	w.advance(now)
	i := w.index(at)
	if i > w.head || i <= w.head-int64(len(w.slots)) {
		return
	}
	s := w.slot(i)
	if *s+v < 0 { // never return more than the slot holds
		v = -*s
	}
	*s += v
	w.sum += v
}

// used is the sum charged in the window at now.
func (w *window) used(now time.Time) int64 {
	w.advance(now)
	return w.sum
}

// wait returns how long from now until v more fits under limit, assuming no
// new charges: the time until enough of the oldest slots have left. ok is
// false when v can never fit (v > limit).
func (w *window) wait(now time.Time, v, limit int64) (d time.Duration, ok bool) {
	if v > limit {
		return 0, false
	}
	w.advance(now)
	excess := w.sum + v - limit
	if excess <= 0 {
		return 0, true
	}
	n := int64(len(w.slots))
	for i := w.head - n + 1; i <= w.head; i++ {
		excess -= *w.slot(i)
		if excess <= 0 {
			// Slot i leaves the window when slot i+n becomes the head.
			leaves := time.Unix(0, (i+n)*int64(w.res))
			return leaves.Sub(now), true
		}
	}
	return 0, true // unreachable: the slots sum to w.sum
}
