package server

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// maxClientLen bounds a client name, from the header, a token entry or a
// certificate.
const maxClientLen = 256

// CheckClient reports why name cannot be a client's identity, or nil. It is
// the one rule for every source of a name: the ClientHeader, the tokens
// file, client certificates and --tls-admins. A name is 1 to 256 bytes of
// ASCII letters, digits, the punctuation URIs use (- . _ ~ : / ? # [ ] @ !
// $ & ' ( ) * + , ; = %) and spaces that neither begin nor end it, so a
// SPIFFE id, a DNS name, a service name or a Common Name such as "Build
// Bot" pass. What it keeps out: bytes that are not UTF-8 (a protobuf
// string cannot carry them, so one such name once broke every report),
// control characters (log and terminal injection), quotes, angle brackets
// and backslashes.
func CheckClient(name string) error {
	switch {
	case name == "":
		return errors.New("is empty")
	case len(name) > maxClientLen:
		return fmt.Errorf("is %d bytes long; at most %d", len(name), maxClientLen)
	case name[0] == ' ' || name[len(name)-1] == ' ':
		return errors.New("begins or ends with a space")
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !clientByte(c) {
			return fmt.Errorf("byte %d (%#02x) is not allowed: use ASCII letters, digits, spaces and - . _ ~ : / ? # [ ] @ ! $ & ' ( ) * + , ; = %%", i, c)
		}
	}
	return nil
}

func clientByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte(" -._~:/?#[]@!$&'()*+,;=%", c) >= 0
}

// edge is what the server checks of a stream when its headers arrive,
// before a goroutine or a buffer is spent on it (grpc.InTapHandle runs in
// the connection's reader). A QuotaBroker call is authenticated there, or
// its self-declared name checked; an unauthenticated stream is refused at
// once, so headers alone cost an attacker's connection, not the broker's
// memory. Every stream, health and reflection included, then has
// FirstMessageTimeout to send its request, and at most MaxPendingStreams
// streams over all connections wait for theirs: their number, hence their
// memory, is bounded. A waiting stream leaves the pool when its request
// arrives, when it ends (closed by the client, or its connection), when
// FirstMessageTimeout passes, or when it is evicted for a newcomer from a
// connection that holds less than its fair share (admit), so that one
// connection's header-only streams cannot lock the others out.
type edge struct {
	auth          authenticator
	authenticates bool
	log           *slog.Logger
	firstMessage  time.Duration
	maxPending    int64
	// metrics count streams ended here by reason (unauthenticated,
	// invalid_client, too_many_pending, evicted, no_request): the
	// interceptors that count and log calls never see them. With them, the
	// gauge of waiting streams. Nil without Config.Metrics.
	metrics *streamMetrics

	mu      sync.Mutex // guards waiting, conns, busiest, and every awaiting's conn, prev and next
	waiting int        // streams in the pool, over all connections
	conns   map[string]*connWaiting
	busiest connHeap // the connections of conns, the one with the most waiting streams on top
}

// connWaiting is a connection's streams in the pool. Connections are told
// apart by their peer address (unique among open TCP connections; over a
// listener whose clients have no address they count as one).
type connWaiting struct {
	addr        string
	n           int       // streams in first..last
	index       int       // in edge.busiest
	first, last *awaiting // in arrival order
	// freed is closed when one of its streams leaves the pool; made when
	// a newcomer of the connection waits for that (admit).
	freed chan struct{}
}

// awaiting is a stream waiting for its first message.
type awaiting struct {
	edge *edge
	// conn is the stream's connection while the stream is in the pool,
	// nil once it has left: whichever of its four ends (arrived, closed,
	// expired, evicted) takes it out under edge.mu does the rest, so none
	// is done twice whatever their order.
	conn       *connWaiting
	prev, next *awaiting // in conn's list
	// Set under edge.mu before the stream joins the pool; never changed.
	timer  *time.Timer             // FirstMessageTimeout
	stop   func() bool             // the context.AfterFunc of the stream's end
	cancel context.CancelCauseFunc // ends the stream, at the timeout or on eviction
}

// streamMetrics are the edge's metrics.
type streamMetrics struct {
	refused *prometheus.CounterVec
	pending prometheus.Gauge
}

// newStreamMetrics makes the edge's metrics: the counter of streams ended
// at the edge by reason and the gauge of streams waiting for their request.
func newStreamMetrics() *streamMetrics {
	return &streamMetrics{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quotabroker_grpc_streams_refused_total",
			Help: "gRPC calls ended when their headers arrived or before their request did, by reason.",
		}, []string{"reason"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "quotabroker_grpc_streams_pending",
			Help: "gRPC calls whose headers have arrived and whose request has not (at most MaxPendingStreams).",
		}),
	}
}

func (m *streamMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.refused.Describe(ch)
	m.pending.Describe(ch)
}

func (m *streamMetrics) Collect(ch chan<- prometheus.Metric) {
	m.refused.Collect(ch)
	m.pending.Collect(ch)
}

func (e *edge) count(reason string) {
	if e.metrics != nil {
		e.metrics.refused.WithLabelValues(reason).Inc()
	}
}

var (
	errTooManyPending = status.Error(codes.ResourceExhausted, "too many calls have not sent their request yet; retry")
	errNoRequest      = errors.New("no request within the first-message timeout")
	errEvicted        = errors.New("no request yet, and its place among the calls waiting for theirs went to a connection holding fewer")
)

// tap is the grpc.InTapHandle.
func (e *edge) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if strings.HasPrefix(info.FullMethodName, "/"+pb.QuotaBroker_ServiceDesc.ServiceName+"/") {
		id, err := e.identify(ctx, info)
		if err != nil {
			// Debug: a flood of bad credentials must not flood the log.
			e.log.DebugContext(ctx, "call refused at stream start", "method", info.FullMethodName, "err", err)
			if status.Code(err) == codes.InvalidArgument {
				e.count("invalid_client")
			} else {
				e.count("unauthenticated")
			}
			return nil, err
		}
		ctx = context.WithValue(ctx, identityKey{}, id)
	}
	// grpc-go derives every stream's context from one that holds its
	// connection's peer (Server.serveStreams), so the peer is known here.
	var addr string
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	// grpc-go cancels stream when the stream or its connection ends.
	stream := ctx
	w := &awaiting{edge: e}
	arm := func() {
		ctx, w.cancel = context.WithCancelCause(stream)
		w.timer = time.AfterFunc(e.firstMessage, w.expired)
		w.stop = context.AfterFunc(stream, w.closed)
	}
	victim, freed, ok := e.admit(addr, w, arm)
	if !ok && freed != nil {
		// The connection holds its share: its reader (this goroutine)
		// waits up to shareWait for one of its streams to leave the
		// pool, then tries once more. A client's burst of calls on one
		// connection, whose requests are read by handlers that have not
		// run yet, is served rather than refused; an attacker that
		// sends a new stream for each one refused can no longer spin
		// the server's CPU (at ~120,000 refusals a second over 100
		// connections, both cores of the benchmark machine) but gets
		// at most one refusal per shareWait per connection. grpc-go
		// holds the connection's transport lock around the tap, so the
		// wait also holds up that connection's ending streams and a
		// shutdown's drain of it, for shareWait at most.
		t := time.NewTimer(shareWait)
		select {
		case <-freed:
		case <-t.C:
		}
		t.Stop()
		victim, _, ok = e.admit(addr, w, arm)
	}
	if !ok {
		e.count("too_many_pending")
		return nil, errTooManyPending
	}
	if victim != nil {
		victim.timer.Stop()
		victim.stop()
		e.count("evicted")
		victim.cancel(errEvicted)
	}
	return context.WithValue(ctx, awaitingKey{}, w), nil
}

// shareWait is how long a connection's reader waits for a place when the
// pool is full and the connection holds its share (tap).
const shareWait = 10 * time.Millisecond

// admit adds w, a stream of the connection addr, to the pool, unless the
// pool is full and addr holds its fair share of it: maxPending divided by
// the connections with streams in it, counting addr's. Then addr's stream
// is refused (the attacker pays) and freed, if addr has streams in the
// pool, is closed when one of them leaves it. Any other connection's newcomer
// takes the place of the oldest stream of the connection with the most,
// which admit takes out of the pool and returns for the caller to end.
// That connection holds more than its share: were every other connection
// at or under its share while addr holds less, the pool would not be full.
// So a connection with fewer streams waiting than its share is never
// refused, and a client's real calls, whose request follows their headers
// at once, wait only until their handler reads it: evicted only in a
// burst of more than the share that the handlers have not caught up with
// (bench/lease's flood, 1,000 at once per connection). arm runs under the lock
// once w is admitted, before anything can take it out again. The work is
// O(log connections).
func (e *edge) admit(addr string, w *awaiting, arm func()) (victim *awaiting, freed <-chan struct{}, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.conns[addr]
	if int64(e.waiting) >= e.maxPending {
		held, conns := 0, len(e.busiest)
		if c != nil {
			held = c.n
		} else {
			conns++
		}
		if int64(held) >= e.maxPending/int64(conns) {
			if c == nil {
				return nil, nil, false
			}
			if c.freed == nil {
				c.freed = make(chan struct{})
			}
			return nil, c.freed, false
		}
		victim = e.busiest[0].first // not addr's: it holds more than the share
		e.leave(victim)
	}
	if c == nil {
		if e.conns == nil {
			e.conns = map[string]*connWaiting{}
		}
		c = &connWaiting{addr: addr}
		e.conns[addr] = c
		heap.Push(&e.busiest, c)
	}
	arm()
	w.conn, w.prev = c, c.last
	if c.last != nil {
		c.last.next = w
	} else {
		c.first = w
	}
	c.last = w
	c.n++
	heap.Fix(&e.busiest, c.index)
	e.waiting++
	e.gauge()
	return victim, nil, true
}

// leave takes w out of the pool; it reports false if w had left already.
// The caller holds e.mu.
func (e *edge) leave(w *awaiting) bool {
	c := w.conn
	if c == nil {
		return false
	}
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		c.first = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		c.last = w.prev
	}
	w.conn, w.prev, w.next = nil, nil, nil
	if c.freed != nil {
		close(c.freed)
		c.freed = nil
	}
	if c.n--; c.n == 0 {
		heap.Remove(&e.busiest, c.index)
		delete(e.conns, c.addr)
	} else {
		heap.Fix(&e.busiest, c.index)
	}
	e.waiting--
	e.gauge()
	return true
}

// release takes w out of the pool under the lock.
func (e *edge) release(w *awaiting) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leave(w)
}

// gauge sets the gauge of waiting streams; the caller holds e.mu, so the
// last value set is the pool's.
func (e *edge) gauge() {
	if e.metrics != nil {
		e.metrics.pending.Set(float64(e.waiting))
	}
}

// connHeap orders connections by waiting streams, the most first.
type connHeap []*connWaiting

func (h connHeap) Len() int           { return len(h) }
func (h connHeap) Less(i, j int) bool { return h[i].n > h[j].n }
func (h connHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *connHeap) Push(x any) {
	c := x.(*connWaiting)
	c.index = len(*h)
	*h = append(*h, c)
}
func (h *connHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return c
}

// identify is the identity of a QuotaBroker call: from its credentials when
// the server authenticates, else as the ClientHeader declares it (checked).
func (e *edge) identify(ctx context.Context, info *tap.Info) (Identity, error) {
	if e.authenticates {
		return e.auth.identify(ctx)
	}
	v := info.Header.Get(ClientHeader)
	if len(v) == 0 || v[0] == "" {
		return Identity{Client: AnonymousClient, Role: RoleClient}, nil
	}
	if err := CheckClient(v[0]); err != nil {
		return Identity{}, status.Errorf(codes.InvalidArgument, "%s: %v", ClientHeader, err)
	}
	return Identity{Client: v[0], Role: RoleClient}, nil
}

type awaitingKey struct{}

// arrived ends the wait when the request came (only the first call of a
// stream finds it in the pool).
func (w *awaiting) arrived() {
	if w.edge.release(w) {
		w.timer.Stop()
		w.stop()
	}
}

// closed ends the wait of a stream that ended without a request, at once:
// its place is free for another.
func (w *awaiting) closed() {
	if w.edge.release(w) {
		w.timer.Stop()
	}
}

// expired ends a stream that sent no request within FirstMessageTimeout.
func (w *awaiting) expired() {
	if w.edge.release(w) {
		w.stop()
		w.edge.count("no_request")
		w.cancel(errNoRequest)
	}
}

func arrived(ctx context.Context) {
	if w, ok := ctx.Value(awaitingKey{}).(*awaiting); ok {
		w.arrived()
	}
}

// arrivedUnary runs once a unary call's request has been read.
func arrivedUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	arrived(ctx)
	return h(ctx, req)
}

// arrivedStream ends the wait at a stream's first message.
func arrivedStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, &firstRecv{ServerStream: ss})
}

type firstRecv struct{ grpc.ServerStream }

func (s *firstRecv) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	arrived(s.Context())
	return err
}
