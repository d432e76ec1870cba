package broker

import "time"

// waiter is one AcquireLease call waiting for capacity. All fields are
// guarded by Broker.mu; ready is closed once the waiter is decided (granted,
// or failed with err).
type waiter struct {
	client   string
	priority Priority
	need     need
	enqueued time.Time
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
}

// queue orders the waiters of one budget: strictly by priority, and within a
// priority round-robin between clients, FIFO within a client. A flood of
// waiters from one client therefore delays another client's next waiter by
// at most one grant per flooding client.
//
// The head (peek) stays the head until it is served or leaves: the broker
// does not let smaller requests overtake a large one that does not fit yet,
// so large requests cannot starve.
type queue struct {
	levels [PriorityBatch + 1]level
	n      int
}

type level struct {
	clients map[string]*clientQueue
	ring    []*clientQueue
	next    int // index in ring of the client served next
}

type clientQueue struct {
	name string
	ws   []*waiter
}

func (q *queue) len() int { return q.n }

func (q *queue) push(w *waiter) {
	lv := &q.levels[w.priority]
	if lv.clients == nil {
		lv.clients = make(map[string]*clientQueue)
	}
	cq := lv.clients[w.client]
	if cq == nil {
		cq = &clientQueue{name: w.client}
		lv.clients[w.client] = cq
		// A new client joins just before the one served next, i.e. at the
		// end of the current round.
		lv.ring = append(lv.ring, nil)
		copy(lv.ring[lv.next+1:], lv.ring[lv.next:])
		lv.ring[lv.next] = cq
		lv.next = (lv.next + 1) % len(lv.ring)
	}
	cq.ws = append(cq.ws, w)
	w.queued = true
	q.n++
}

func (q *queue) headLevel() *level {
	for p := PriorityInteractive; p <= PriorityBatch; p++ {
		if len(q.levels[p].ring) > 0 {
			return &q.levels[p]
		}
	}
	return nil
}

// peek returns the waiter served next, or nil.
func (q *queue) peek() *waiter {
	lv := q.headLevel()
	if lv == nil {
		return nil
	}
	return lv.ring[lv.next].ws[0]
}

// pop removes the head and moves the round on to the next client.
func (q *queue) pop() *waiter {
	lv := q.headLevel()
	if lv == nil {
		return nil
	}
	cq := lv.ring[lv.next]
	w := cq.ws[0]
	cq.ws[0] = nil
	cq.ws = cq.ws[1:]
	w.queued = false
	q.n--
	if len(cq.ws) == 0 {
		lv.removeClient(lv.next)
	} else {
		lv.next = (lv.next + 1) % len(lv.ring)
	}
	return w
}

// remove takes w out of the queue (its caller gave up).
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
	q.n--
	if len(cq.ws) == 0 {
		for i, x := range lv.ring {
			if x == cq {
				lv.removeClient(i)
				break
			}
		}
	}
}

func (lv *level) removeClient(i int) {
	delete(lv.clients, lv.ring[i].name)
	lv.ring = append(lv.ring[:i], lv.ring[i+1:]...)
	if i < lv.next {
		lv.next--
	}
	if len(lv.ring) == 0 || lv.next >= len(lv.ring) {
		lv.next = 0
	}
}

// all calls f for every waiter, in no particular order.
func (q *queue) all(f func(*waiter)) {
	for p := range q.levels {
		for _, cq := range q.levels[p].ring {
			for _, w := range cq.ws {
				f(w)
			}
		}
	}
}
