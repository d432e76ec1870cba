package broker

import (
	"container/heap"
	"time"
)

// waiter is one AcquireLease call waiting for capacity. All fields are
// guarded by Broker.mu; ready is closed once the waiter is decided (granted,
// or failed with err). A waiter that never waits (answered in the critical
// section that queued it) has no ready channel.
type waiter struct {
	client     string
	weight     float64
	priority   Priority
	need       need
	enqueued   time.Time
	seq        uint64 // arrival order, for ties
	ready      chan struct{}
	lease      *lease // set when granted
	spare      *lease // allocated off the lock for grant to fill, or nil
	err        error  // set when it can never be granted
	queued     bool
	prev, next *waiter // its client's FIFO at its priority, while queued
	// group is the route wait this waiter is one target of (routewait.go),
	// nil for a request on one budget; target is its index in the route.
	group  *routeWait
	target int
}

// need is what one lease takes from a budget.
type need struct {
	tokens    int64 // the whole reservation
	base      int64 // input + cache_write: what no max_output_tokens can lower
	maxOutput int64
	burndown  float64
	unsetMax  bool // the request left max_output_tokens unset
	priority  Priority
	// cost is the reservation's price in nano-dollars (caps.go), 0 when
	// the model has no price (priced false).
	cost   int64
	priced bool
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
// level's virtual time: idleness earns no credit, and costs nothing. Within
// a client, first come first served.
//
// The waiter peek returns stays the one served next until it is served or
// leaves (the broker does not let smaller requests overtake it when it does
// not fit yet), so large requests cannot starve.
//
// Cost: client names are self-declared, so a flood can bring tens of
// thousands of clients (issue 16), and every operation runs under the
// broker's lock. Each level therefore keeps its waiting clients in a heap
// by the finish tag of their first waiter, and each client its waiters in
// a linked list: push, take and remove cost O(log c) for c waiting clients
// at that priority, and peek O(1) (plus O(k log k) when the k clients
// ahead of the first eligible one are at their MaxConcurrent cap, which
// takes MaxConcurrent active leases each).
type queue struct {
	levels [PriorityBatch + 1]level
	n      int
	seq    uint64
	aging  time.Duration // 0: no aging
}

// level is one priority's waiters. Every client in clients is in exactly
// one of the two heaps: ready if it has waiters, idle if it has none but is
// ahead of the virtual time (it keeps its debt until vtime catches up;
// then it is forgotten, which is the same as restarting at vtime).
type level struct {
	clients map[string]*clientQueue
	ready   clientHeap // by finish tag of the first waiter, then its arrival
	idle    clientHeap // by vfinish, to forget clients vtime has passed
	vtime   float64    // virtual time: the start tag of the last waiter served
	n       int
}

type clientQueue struct {
	name string
	// vfinish is the finish tag of the client's last served waiter, which
	// is the start tag of its next one.
	vfinish    float64
	head, tail *waiter
	// key and tie order the client in its heap: in ready, the finish tag
	// of its first waiter and that waiter's arrival; in idle, vfinish.
	key   float64
	tie   uint64
	index int // position in its heap
}

func (q *queue) len() int { return q.n }

func (q *queue) push(w *waiter) {
	lv := &q.levels[w.priority]
	if lv.clients == nil {
		lv.clients = make(map[string]*clientQueue)
	}
	cq := lv.clients[w.client]
	if cq == nil {
		cq = &clientQueue{name: w.client, index: -1}
		lv.clients[w.client] = cq
	}
	q.seq++
	w.seq = q.seq
	if cq.head == nil {
		if cq.index >= 0 {
			heap.Remove(&lv.idle, cq.index)
		}
		// The client becomes backlogged: its start tag is the virtual time
		// of its arrival (or its own debt, if it is ahead). Taking the
		// virtual time at selection instead would push every waiting
		// client back behind whoever is being served.
		cq.vfinish = max(cq.vfinish, lv.vtime)
		cq.head, cq.tail = w, w
		cq.key, cq.tie = cq.vfinish+w.size(), w.seq
		heap.Push(&lv.ready, cq)
	} else {
		w.prev, cq.tail.next = cq.tail, w
		cq.tail = w
	}
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
func (lv *level) candidate(eligible func(*waiter) bool) *waiter {
	h := lv.ready
	if len(h) == 0 {
		return nil
	}
	if eligible == nil || eligible(h[0].head) {
		return h[0].head
	}
	// Best first through the heap's tree without changing it: no child is
	// ahead of its parent, so the first eligible client out of the
	// frontier is the first eligible client of all.
	f := frontier{h: h}
	f.add(1)
	f.add(2)
	for f.Len() > 0 {
		i := heap.Pop(&f).(int)
		if eligible(h[i].head) {
			return h[i].head
		}
		f.add(2*i + 1)
		f.add(2*i + 2)
	}
	return nil
}

// peek returns the waiter served next at now, or nil.
func (q *queue) peek(now time.Time, eligible func(*waiter) bool) *waiter {
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
	// Idle clients that vtime has caught up with owe nothing any more.
	for len(lv.idle) > 0 && lv.idle[0].vfinish <= lv.vtime {
		delete(lv.clients, heap.Pop(&lv.idle).(*clientQueue).name)
	}
}

// remove takes w out of the queue without charging its client (its caller
// gave up, or it was taken).
func (q *queue) remove(w *waiter) {
	if !w.queued {
		return
	}
	lv := &q.levels[w.priority]
	cq := lv.clients[w.client]
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		cq.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		cq.tail = w.prev
	}
	w.prev, w.next = nil, nil
	w.queued = false
	lv.n--
	q.n--
	switch {
	case cq.head != nil:
		// Its first waiter or its vfinish (take) may have changed.
		cq.key, cq.tie = cq.vfinish+cq.head.size(), cq.head.seq
		heap.Fix(&lv.ready, cq.index)
	case cq.vfinish <= lv.vtime:
		// Forget an idle client that owes nothing: it would restart at
		// the level's virtual time anyway.
		heap.Remove(&lv.ready, cq.index)
		delete(lv.clients, w.client)
	default:
		// One that is ahead keeps its debt until vtime catches up.
		heap.Remove(&lv.ready, cq.index)
		cq.key, cq.tie = cq.vfinish, 0
		heap.Push(&lv.idle, cq)
	}
}

// all calls f for every waiter, in no particular order.
func (q *queue) all(f func(*waiter)) {
	for p := range q.levels {
		for _, cq := range q.levels[p].ready {
			for w := cq.head; w != nil; w = w.next {
				f(w)
			}
		}
	}
}

// clientHeap is a container/heap of clients by (key, tie); each client
// knows its index, so that a change to it is fixed in O(log n).
type clientHeap []*clientQueue

func (h clientHeap) Len() int { return len(h) }

func (h clientHeap) Less(i, j int) bool {
	return h[i].key < h[j].key || (h[i].key == h[j].key && h[i].tie < h[j].tie)
}

func (h clientHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}

func (h *clientHeap) Push(x any) {
	cq := x.(*clientQueue)
	cq.index = len(*h)
	*h = append(*h, cq)
}

func (h *clientHeap) Pop() any {
	old := *h
	cq := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	cq.index = -1
	return cq
}

// frontier is a container/heap of positions in a clientHeap, ordered as the
// clients there are.
type frontier struct {
	h  clientHeap
	is []int
}

// add puts position i on the frontier if the heap has it.
func (f *frontier) add(i int) {
	if i < len(f.h) {
		heap.Push(f, i)
	}
}

func (f frontier) Len() int           { return len(f.is) }
func (f frontier) Less(a, b int) bool { return f.h.Less(f.is[a], f.is[b]) }
func (f frontier) Swap(a, b int)      { f.is[a], f.is[b] = f.is[b], f.is[a] }
func (f *frontier) Push(x any)        { f.is = append(f.is, x.(int)) }

func (f *frontier) Pop() any {
	i := f.is[len(f.is)-1]
	f.is = f.is[:len(f.is)-1]
	return i
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
