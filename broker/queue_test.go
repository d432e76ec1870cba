package broker

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// The queue is checked against a reference model: the documented rules
// (queue's comment) written as plainly as possible, with linear scans and
// nothing forgotten. Random operations (arrivals, grants of what peek
// returns, cancellations, clients reaching and leaving their cap, time
// passing so that aging matters) are applied to both; after every step
// they must agree on the next waiter, the count and the set of waiters, and
// at the end on the whole order in which the rest is served.

// refQueue is the reference model of queue.
type refQueue struct {
	aging   time.Duration
	ws      []*waiter                             // queued, in arrival order
	vfinish [PriorityBatch + 1]map[string]float64 // a client's next start tag, per priority
	vtime   [PriorityBatch + 1]float64            // the start tag of the last waiter served
}

func newRefQueue(aging time.Duration) *refQueue {
	r := &refQueue{aging: aging}
	for p := range r.vfinish {
		r.vfinish[p] = map[string]float64{}
	}
	return r
}

func (r *refQueue) push(w *waiter) {
	backlogged := slices.ContainsFunc(r.ws, func(x *waiter) bool { return x.client == w.client && x.priority == w.priority })
	if !backlogged {
		// Idleness earns no credit: a client starts at the virtual time,
		// or later if it is still ahead.
		r.vfinish[w.priority][w.client] = max(r.vfinish[w.priority][w.client], r.vtime[w.priority])
	}
	r.ws = append(r.ws, w)
}

// peek: per priority, each eligible client's first waiter finishes at the
// client's start tag plus the waiter's tokens/weight; the least finish wins
// (then the earlier arrival). Across priorities the least rank wins, a rank
// being the priority less one per aging interval waited (then the earlier
// arrival).
func (r *refQueue) peek(now time.Time, eligible func(string) bool) *waiter {
	var best *waiter
	bestRank, bestAt := 0, 0
	for p := PriorityInteractive; p <= PriorityBatch; p++ {
		var cand *waiter
		candFinish, candAt := 0.0, 0
		seen := map[string]bool{}
		for at, w := range r.ws { // arrival order: a client's first is its FIFO head
			if w.priority != p || seen[w.client] {
				continue
			}
			seen[w.client] = true
			if !eligible(w.client) {
				continue
			}
			finish := r.vfinish[p][w.client] + float64(max(w.need.tokens, 1))/w.weight
			if cand == nil || finish < candFinish {
				cand, candFinish, candAt = w, finish, at
			}
		}
		if cand == nil {
			continue
		}
		rank := int(p)
		if r.aging > 0 {
			rank -= int(now.Sub(cand.enqueued) / r.aging)
		}
		if best == nil || rank < bestRank || (rank == bestRank && candAt < bestAt) {
			best, bestRank, bestAt = cand, rank, candAt
		}
	}
	return best
}

func (r *refQueue) take(w *waiter) {
	start := r.vfinish[w.priority][w.client]
	r.vfinish[w.priority][w.client] = start + float64(max(w.need.tokens, 1))/w.weight
	r.vtime[w.priority] = max(r.vtime[w.priority], start)
	r.remove(w)
}

func (r *refQueue) remove(w *waiter) {
	r.ws = slices.DeleteFunc(r.ws, func(x *waiter) bool { return x == w })
}

// checkQueue decodes ops into a run of queue operations and fails t at the
// first disagreement between the queue and the reference.
func checkQueue(t *testing.T, ops []byte) {
	t.Helper()
	clients := []string{"a", "b", "c", "d", "e", "f", "g"}
	weights := map[string]float64{"a": 1, "b": 2, "c": 0.5, "d": 1, "e": 3, "f": 1, "g": 0.25}
	sizes := []int64{1, 10, 100, 1000, 1000, 3000, 4096, 1 << 20}
	next := func() byte {
		if len(ops) == 0 {
			return 0
		}
		b := ops[0]
		ops = ops[1:]
		return b
	}
	aging := time.Duration(next()%3) * 10 * time.Second // 0: no aging
	q := &queue{aging: aging}
	ref := newRefQueue(aging)
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	capped := map[string]bool{}
	eligible := func(c string) bool { return !capped[c] }
	eligibleW := func(w *waiter) bool { return eligible(w.client) }
	var queued []*waiter
	agree := func(step int, op string) {
		t.Helper()
		got, want := q.peek(now, eligibleW), ref.peek(now, eligible)
		if got != want {
			t.Fatalf("step %d (%s): queue serves %s next, the reference %s", step, op, describe(got), describe(want))
		}
		if q.len() != len(ref.ws) {
			t.Fatalf("step %d (%s): queue holds %d, the reference %d", step, op, q.len(), len(ref.ws))
		}
		var all []*waiter
		q.all(func(w *waiter) { all = append(all, w) })
		slices.SortFunc(all, func(x, y *waiter) int { return int(x.seq) - int(y.seq) })
		if !slices.Equal(all, ref.ws) {
			t.Fatalf("step %d (%s): queue holds %d waiters that differ from the reference's %d", step, op, len(all), len(ref.ws))
		}
	}
	for step := 0; len(ops) > 0; step++ {
		var op string
		switch b := next(); b % 6 {
		case 0, 1, 2: // an arrival
			c := clients[next()%byte(len(clients))]
			w := &waiter{client: c, weight: weights[c], priority: Priority(1 + next()%3), enqueued: now,
				need: need{tokens: sizes[next()%byte(len(sizes))]}}
			q.push(w)
			ref.push(w)
			queued = append(queued, w)
			op = "push " + describe(w)
		case 3: // a grant of the head
			w := q.peek(now, eligibleW)
			if w == nil {
				op = "grant of nothing"
				break
			}
			q.take(w)
			ref.take(w)
			queued = slices.DeleteFunc(queued, func(x *waiter) bool { return x == w })
			op = "take " + describe(w)
		case 4: // a cancellation, anywhere in the queue
			if len(queued) == 0 {
				op = "cancel of nothing"
				break
			}
			i := int(next()) % len(queued)
			w := queued[i]
			q.remove(w)
			ref.remove(w)
			queued = slices.Delete(queued, i, i+1)
			op = "remove " + describe(w)
		case 5: // a client reaches or leaves its cap; time passes
			c := clients[next()%byte(len(clients))]
			capped[c] = !capped[c]
			now = now.Add(time.Duration(next()%16) * time.Second)
			op = "toggle cap of " + c
		}
		agree(step, op)
	}
	// Serve the rest with nobody capped: the whole order must agree.
	clear(capped)
	for step := 0; q.len() > 0 || len(ref.ws) > 0; step++ {
		agree(step, "drain")
		w := q.peek(now, eligibleW)
		q.take(w)
		ref.take(w)
	}
	agree(-1, "drained")
	// What is left are idle clients still ahead of the virtual time.
	for p := range q.levels {
		lv := &q.levels[p]
		if len(lv.ready) != 0 || len(lv.clients) != len(lv.idle) {
			t.Fatalf("level %d: %d ready, %d idle, %d known clients after draining", p, len(lv.ready), len(lv.idle), len(lv.clients))
		}
		for _, cq := range lv.idle {
			if cq.vfinish <= lv.vtime {
				t.Fatalf("level %d: idle client %s kept at %v, virtual time %v", p, cq.name, cq.vfinish, lv.vtime)
			}
		}
	}
}

func describe(w *waiter) string {
	if w == nil {
		return "nobody"
	}
	return w.client + "/" + w.priority.String() + "/#" + itoa(w.seq)
}

func itoa(n uint64) string { return string(appendUint(nil, n)) }

func appendUint(b []byte, n uint64) []byte {
	if n >= 10 {
		b = appendUint(b, n/10)
	}
	return append(b, byte('0'+n%10))
}

func TestQueueMatchesReference(t *testing.T) {
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 16))
		ops := make([]byte, 1+r.IntN(3000))
		for i := range ops {
			ops[i] = byte(r.Uint32())
		}
		checkQueue(t, ops)
	}
}

func FuzzQueueMatchesReference(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 3, 0, 1, 0, 0, 0, 1, 1, 0, 0, 3})
	f.Add([]byte{2, 0, 0, 2, 3, 0, 1, 0, 2, 0, 5, 0, 15, 3, 4, 0, 5, 0, 15, 3})
	f.Fuzz(checkQueue)
}
