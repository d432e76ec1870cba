package broker

import (
	"math"
	"time"
)

// waiter is one AcquireLease call waiting for capacity. All fields are
// guarded by Broker.mu; ready is closed once the waiter is decided (granted,
// or failed with err).
type waiter struct {
	client   string
	weight   float64
	priority Priority
	need     need
	enqueued time.Time
	seq      uint64 // arrival order, for ties
	ready    chan struct{}
	lease    *lease // set when granted
	err      error  // set when it can never be granted
	queued   bool
}

// need is what one lease takes from a budget.
type need struct {
	tokens    int64 // the whole reservation
	base      int64 // input + cache_write: what no max_output_tokens can lower
	maxOutput int64
	burndown  float64
	unsetMax  bool // the request left max_output_tokens unset
	priority  Priority
}

// queue orders the waiters of one budget.
//
// Between priorities: strictly by priority, except that a waiter ages one
// priority level per aging interval it has waited (equal ranks: the earlier
// arrival first), so batch work under a steady interactive load is delayed
// by two aging intervals at most, never starved.
//
// Within a priority: start-time fair queuing by tokens. Each client has a
// virtual finish time that grows by tokens/weight with every grant; the
// client whose next request would finish first is served next (ties: the
// earlier arrival). Equal clients therefore get equal token shares whatever
// their request sizes, a client of weight 2 twice the share, and a flood
// from one client delays another's next request by at most about one
// request of each flooding client. A client that was idle starts at the
// level's virtual time: idleness earns no credit, and costs nothing.
//
// The waiter peek returns stays the one served next until it is served or
// leaves (the broker does not let smaller requests overtake it when it does
// not fit yet), so large requests cannot starve.
type queue struct {
	levels [PriorityBatch + 1]level
	n      int
	seq    uint64
	aging  time.Duration // 0: no aging
}

type level struct {
	clients map[string]*clientQueue
	vtime   float64 // virtual time: the start tag of the last waiter served
	n       int
}

type clientQueue struct {
	// vfinish is the finish tag of the client's last served waiter, which
	// is the start tag of its next one.
	vfinish float64
	ws      []*waiter
}

func (q *queue) len() int { return q.n }

func (q *queue) push(w *waiter) {
	lv := &q.levels[w.priority]
	if lv.clients == nil {
		lv.clients = make(map[string]*clientQueue)
	}
	cq := lv.clients[w.client]
	if cq == nil {
		cq = &clientQueue{}
		lv.clients[w.client] = cq
	}
	if len(cq.ws) == 0 {
		// The client becomes backlogged: its start tag is the virtual time
		// of its arrival (or its own debt, if it is ahead). Taking the
		// virtual time at selection instead would push every waiting
		// client back behind whoever is being served.
		cq.vfinish = max(cq.vfinish, lv.vtime)
	}
	q.seq++
	w.seq = q.seq
	cq.ws = append(cq.ws, w)
	w.queued = true
	lv.n++
	q.n++
}

// size is what a waiter costs its client's share, in tokens per weight.
func (w *waiter) size() float64 {
	return float64(max(w.need.tokens, 1)) / w.weight
}

// candidate returns the level's next waiter under fair queuing, skipping
// clients for which eligible is false (those at their cap).
func (lv *level) candidate(eligible func(string) bool) *waiter {
	var best *waiter
	bestFinish := math.Inf(1)
	for name, cq := range lv.clients {
		if len(cq.ws) == 0 || (eligible != nil && !eligible(name)) {
			continue
		}
		w := cq.ws[0]
		finish := cq.vfinish + w.size()
		if finish < bestFinish || (finish == bestFinish && w.seq < best.seq) {
			best, bestFinish = w, finish
		}
	}
	return best
}

// peek returns the waiter served next at now, or nil.
func (q *queue) peek(now time.Time, eligible func(string) bool) *waiter {
	var best *waiter
	bestRank := 0
	for p := PriorityInteractive; p <= PriorityBatch; p++ {
		if q.levels[p].n == 0 {
			continue
		}
		w := q.levels[p].candidate(eligible)
		if w == nil {
			continue
		}
		rank := int(p)
		if q.aging > 0 {
			rank -= int(now.Sub(w.enqueued) / q.aging)
		}
		// Ties go to the earlier arrival: a batch waiter that has aged to
		// interactive rank has waited longer than the interactive one.
		if best == nil || rank < bestRank || (rank == bestRank && w.seq < best.seq) {
			best, bestRank = w, rank
		}
	}
	return best
}

// take removes w, which peek returned, and charges its client's share.
func (q *queue) take(w *waiter) {
	lv := &q.levels[w.priority]
	cq := lv.clients[w.client]
	start := cq.vfinish
	cq.vfinish = start + w.size()
	lv.vtime = max(lv.vtime, start)
	q.remove(w)
}

// remove takes w out of the queue without charging its client (its caller
// gave up, or it was taken).
func (q *queue) remove(w *waiter) {
	if !w.queued {
		return
	}
	lv := &q.levels[w.priority]
	cq := lv.clients[w.client]
	for i, x := range cq.ws {
		if x == w {
			cq.ws = append(cq.ws[:i], cq.ws[i+1:]...)
			break
		}
	}
	w.queued = false
	lv.n--
	q.n--
	// Forget an idle client that owes nothing: it would restart at the
	// level's virtual time anyway. One that is ahead keeps its debt.
	if len(cq.ws) == 0 && cq.vfinish <= lv.vtime {
		delete(lv.clients, w.client)
	}
}

// all calls f for every waiter, in no particular order.
func (q *queue) all(f func(*waiter)) {
	for p := range q.levels {
		for _, cq := range q.levels[p].clients {
			for _, w := range cq.ws {
				f(w)
			}
		}
	}
}

// waiting counts the callers waiting in Acquire, per client and in all,
// for the flood bounds (Config.MaxWaiters, ClientPolicy.MaxWaiters). A
// caller counts from when it starts to wait until its Acquire settles,
// whichever budget it waits on. Guarded by Broker.mu.
type waiting struct {
	total    int
	byClient map[string]int
}

// over names the bound a new waiter of client would exceed, or LimitNone.
// perClient <= 0 means no per-client bound. The client's own bound is
// checked first: a flooder is told that it is the one flooding.
func (c *waiting) over(client string, perClient, total int) Limit {
	switch {
	case perClient > 0 && c.byClient[client] >= perClient:
		return LimitClientWaiters
	case c.total >= total:
		return LimitWaiters
	}
	return LimitNone
}

func (c *waiting) add(client string) {
	c.total++
	c.byClient[client]++
}

func (c *waiting) done(client string) {
	c.total--
	if c.byClient[client]--; c.byClient[client] <= 0 {
		delete(c.byClient, client)
	}
}
