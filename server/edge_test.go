package server_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

// grpcConn is a raw HTTP/2 connection that sends gRPC calls by hand: grpc-go's
// client refuses to send a header that is not printable ASCII and always
// sends a request after its headers, which is what an attacker does not.
type grpcConn struct {
	*rawConn
	enc    *hpack.Encoder
	buf    bytes.Buffer
	stream uint32
	ended  map[uint32]ended
}

func dialGRPC(t *testing.T, addr string) *grpcConn {
	t.Helper()
	c := &grpcConn{rawConn: dialRaw(t, addr), stream: 1}
	c.enc = hpack.NewEncoder(&c.buf)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	return c
}

// open sends the headers of a call of method with the extra headers (name,
// value pairs), and its request unless req is nil; it returns the stream id.
func (c *grpcConn) open(method string, req proto.Message, headers ...string) uint32 {
	c.t.Helper()
	c.buf.Reset()
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", method},
		{":authority", "broker"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for i := 0; i+1 < len(headers); i += 2 {
		c.enc.WriteField(hpack.HeaderField{Name: headers[i], Value: headers[i+1]})
	}
	id := c.stream
	c.stream += 2
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.buf.Bytes(), EndHeaders: true}); err != nil {
		c.t.Fatal(err)
	}
	if req != nil {
		c.send(id, req)
	}
	return id
}

// ended is how a stream ended.
type ended struct {
	code codes.Code
	msg  string
}

// status reads frames until stream id ends, and returns its grpc-status
// (codes.Canceled for a stream reset without one). Streams that end on the
// way are kept for later calls.
func (c *grpcConn) status(id uint32) (codes.Code, string) {
	c.t.Helper()
	if c.ended == nil {
		c.ended = map[uint32]ended{}
	}
	for {
		if e, ok := c.ended[id]; ok {
			return e.code, e.msg
		}
		f := c.next(func(f http2.Frame) bool { return f.Header().StreamID != 0 })
		sid := f.Header().StreamID
		if _, done := c.ended[sid]; done {
			continue // the RST_STREAM after trailers
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			c.ended[sid] = ended{codes.Canceled, "reset: " + f.ErrCode.String()}
		case *http2.MetaHeadersFrame:
			if v := f.PseudoValue("status"); v != "" && v != "200" {
				c.t.Fatalf("stream %d: HTTP status %s", sid, v)
			}
			var e ended
			for _, h := range f.RegularFields() {
				switch h.Name {
				case "grpc-status":
					n, err := strconv.Atoi(h.Value)
					if err != nil {
						c.t.Fatal(err)
					}
					e.code = codes.Code(n)
					c.ended[sid] = e
				case "grpc-message":
					e.msg = h.Value
				}
			}
			if _, ok := c.ended[sid]; ok {
				c.ended[sid] = e
			}
		}
	}
}

// send sends the request of stream id, opened without one.
func (c *grpcConn) send(id uint32, req proto.Message) {
	c.t.Helper()
	b, err := proto.Marshal(req)
	if err != nil {
		c.t.Fatal(err)
	}
	msg := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(b)))
	if err := c.fr.WriteData(id, true, append(msg, b...)); err != nil {
		c.t.Fatal(err)
	}
}

const listBudgets = "/quotabroker.v1.QuotaBroker/ListBudgets"

// TestInvalidClientNamesAreRefusedAtTheEdge sends self-declared client names
// that are not UTF-8, not ASCII, too long, or that hold markup or spaces
// at either end: each is refused with INVALID_ARGUMENT before the broker sees
// it, so no such name reaches its state (one once broke every report).
func TestInvalidClientNamesAreRefusedAtTheEdge(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{TPM: 1_000_000})
	addr := f.conn.Target()
	c := dialGRPC(t, addr)
	acquire := "/quotabroker.v1.QuotaBroker/AcquireLease"
	req := &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10}
	for _, name := range []string{"evil\xff\xfe", "café", "<b>", "a\"b", " padded ", strings.Repeat("x", 257)} {
		id := c.open(acquire, req, server.ClientHeader, name)
		if code, msg := c.status(id); code != codes.InvalidArgument || !strings.Contains(msg, server.ClientHeader) {
			t.Errorf("client %q: %v %q, want InvalidArgument naming the header", name, code, msg)
		}
	}
	// Control characters are not even valid HTTP/2 field values: the
	// transport resets the stream before the server sees it.
	if code, msg := c.status(c.open(acquire, req, server.ClientHeader, "a\x1b[31mred")); code != codes.Canceled {
		t.Errorf("client with an escape sequence: %v %q, want the stream reset", code, msg)
	}
	// A valid name is served on the same connection.
	if code, msg := c.status(c.open(acquire, req, server.ClientHeader, "svc-a")); code != codes.OK {
		t.Fatalf("valid client: %v %s", code, msg)
	}
	// No refused name reached the broker: the report (after the minute
	// rolled over, when history is read) names only svc-a.
	f.clock.Advance(2 * time.Minute)
	f.b.Sweep(context.Background())
	rep, err := f.client.GetQuotaReport(context.Background(), &pb.GetQuotaReportRequest{})
	if err != nil {
		t.Fatalf("report: %v", err)
	}
	for _, b := range rep.GetBudgets() {
		for _, u := range b.GetActivity().GetTopClients() {
			if u.GetClient() != "svc-a" {
				t.Errorf("report names client %q", u.GetClient())
			}
		}
	}
}

func TestCheckClient(t *testing.T) {
	for _, ok := range []string{"svc-a", "spiffe://example.org/ns/prod/sa/checkout", "Build Bot", "a@b.example", "x", strings.Repeat("x", 256)} {
		if err := server.CheckClient(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", " a", "a ", "evil\xff", "é", "a\tb", "a\"b", "a\\b", "<a>", "a`b", strings.Repeat("x", 257)} {
		if err := server.CheckClient(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

// tokenFile writes a tokens file with one client token and returns it
// loaded, with the token.
func tokenFile(t *testing.T) (*server.Tokens, string) {
	t.Helper()
	tok, sum := server.NewToken()
	p := filepath.Join(t.TempDir(), "tokens.json")
	writeTokens(t, p, [3]string{"alice", "client", sum})
	tokens, err := server.LoadTokens(p)
	if err != nil {
		t.Fatal(err)
	}
	return tokens, tok
}

// TestHalfOpenStreams sends calls that send their headers and never their
// request: without credentials each is refused at once (before the fix it
// held a stream, a goroutine and its buffers until the attacker left), and
// at most MaxPendingStreams with credentials wait at once.
func TestHalfOpenStreams(t *testing.T) {
	tokens, tok := tokenFile(t)
	reg := prometheus.NewRegistry()
	addr := serveOn(t, server.New(newBroker(t), server.Config{Tokens: tokens, MaxPendingStreams: 2, Metrics: reg}))
	c := dialGRPC(t, addr)
	var ids []uint32
	for range 50 {
		ids = append(ids, c.open(listBudgets, nil))
	}
	for _, id := range ids {
		if code, msg := c.status(id); code != codes.Unauthenticated {
			t.Fatalf("header-only call without a token: %v %s, want Unauthenticated at once", code, msg)
		}
	}
	auth := []string{"authorization", "Bearer " + tok}
	a, b := c.open(listBudgets, nil, auth...), c.open(listBudgets, nil, auth...)
	if code, msg := c.status(c.open(listBudgets, nil, auth...)); code != codes.ResourceExhausted {
		t.Fatalf("a third waiting call: %v %s, want ResourceExhausted", code, msg)
	}
	// Their requests arrive: their places are free again.
	for _, id := range []uint32{a, b} {
		c.send(id, &pb.ListBudgetsRequest{})
		if code, msg := c.status(id); code != codes.OK {
			t.Fatalf("a waiting call that sent its request: %v %s", code, msg)
		}
	}
	last := c.open(listBudgets, nil, auth...)
	c.send(last, &pb.ListBudgetsRequest{})
	if code, msg := c.status(last); code != codes.OK {
		t.Fatalf("a call after the waiting ones: %v %s", code, msg)
	}
	for reason, want := range map[string]float64{"unauthenticated": 50, "too_many_pending": 1, "no_request": 0} {
		if got := refusedCount(t, reg, reason); got != want {
			t.Errorf("streams refused for %s: %v, want %v", reason, got, want)
		}
	}
}

// refusedCount is quotabroker_grpc_streams_refused_total{reason} in reg.
func refusedCount(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "quotabroker_grpc_streams_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestFirstMessageTimeout checks that a call with credentials that sends
// no request is cancelled after FirstMessageTimeout, health checks too.
func TestFirstMessageTimeout(t *testing.T) {
	tokens, tok := tokenFile(t)
	reg := prometheus.NewRegistry()
	addr := serveOn(t, server.New(newBroker(t), server.Config{Tokens: tokens, FirstMessageTimeout: 100 * time.Millisecond, Metrics: reg}))
	c := dialGRPC(t, addr)
	for _, m := range []string{listBudgets, "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"} {
		if code, msg := c.status(c.open(m, nil, "authorization", "Bearer "+tok)); code != codes.Canceled {
			t.Fatalf("%s without its request: %v %s, want it cancelled", m, code, msg)
		}
	}
	if got := refusedCount(t, reg, "no_request"); got != 3 {
		t.Errorf("streams ended without a request: %v counted, want 3", got)
	}
}

// TestMaxConnections checks that a connection beyond MaxConnections is not
// served until another closes.
func TestMaxConnections(t *testing.T) {
	addr := serveOn(t, server.New(newBroker(t), server.Config{MaxConnections: 1}))
	isSettings := func(f http2.Frame) bool { _, ok := f.(*http2.SettingsFrame); return ok }
	first := dialRaw(t, addr)
	first.next(isSettings)
	second, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.Write([]byte(http2.ClientPreface))
	fr := http2.NewFramer(second, second)
	fr.WriteSettings()
	// A bounded look for what must not come: the server's SETTINGS.
	second.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if f, err := fr.ReadFrame(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a connection beyond the limit was served: %v %v", f, err)
	}
	first.conn.Close()
	second.SetReadDeadline(time.Now().Add(20 * time.Second))
	if f, err := fr.ReadFrame(); err != nil || !isSettings(f) {
		t.Fatalf("the waiting connection was not served once the first closed: %v %v", f, err)
	}
}

// TestHeaderNameStillNamesTheClient checks the valid path end to end with
// grpc-go's own client: the lease belongs to the declared client.
func TestHeaderNameStillNamesTheClient(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{TPM: 1_000_000})
	ctx := metadata.AppendToOutgoingContext(context.Background(), server.ClientHeader, "Build Bot")
	resp, err := f.client.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.b.LeaseClient(resp.GetLease().GetLeaseId()); got != "Build Bot" {
		t.Fatalf("lease of %q", got)
	}
}

// TestMalformedRequestIsInternalAndHarmless pins what gRPC does with a
// request that is not valid protobuf, or whose string field is not UTF-8:
// its decoder answers INTERNAL before any interceptor runs, and no codec can
// change the code (see doc.go); the call never reaches the broker, and the
// connection serves the next call.
func TestMalformedRequestIsInternalAndHarmless(t *testing.T) {
	f := start(t, fakeClock(), broker.Config{}, broker.Limits{TPM: 1_000_000})
	c := dialGRPC(t, f.conn.Target())
	acquire := "/quotabroker.v1.QuotaBroker/AcquireLease"
	for name, body := range map[string][]byte{
		"model_id not UTF-8": append([]byte{0x0a, 6}, "evil\xff\xfe"...),
		"truncated field":    {0x0a, 50, 'x'},
	} {
		id := c.open(acquire, nil)
		msg := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(body)))
		if err := c.fr.WriteData(id, true, append(msg, body...)); err != nil {
			t.Fatal(err)
		}
		if code, msg := c.status(id); code != codes.Internal || !strings.Contains(msg, "unmarshal") {
			t.Errorf("%s: %v %q, want INTERNAL from the decoder", name, code, msg)
		}
	}
	if code, msg := c.status(c.open(acquire, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10})); code != codes.OK {
		t.Fatalf("a valid call after malformed ones: %v %s", code, msg)
	}
	rep, err := f.client.GetQuotaReport(context.Background(), &pb.GetQuotaReportRequest{})
	if err != nil || rep.GetBudgets()[0].GetCounters().GetGranted() != 1 {
		t.Fatalf("report %v %v, want the one valid grant", rep, err)
	}
}

// pendingStreams is quotabroker_grpc_streams_pending in reg.
func pendingStreams(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "quotabroker_grpc_streams_pending" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no quotabroker_grpc_streams_pending")
	return 0
}

// awaitPending polls the pending-streams gauge until it is want. Polled:
// a closed stream's place is freed by the goroutine context.AfterFunc
// starts, which nothing outside the server can wait on. The tests that use
// it set FirstMessageTimeout to an hour, so only a stream's end can free a
// place; the limit only bounds a test that goes wrong.
func awaitPending(t *testing.T, reg *prometheus.Registry, want float64) time.Duration {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		got := pendingStreams(t, reg)
		if got == want {
			return time.Since(start)
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("%v streams pending, want %v", got, want)
		}
		<-tick.C
	}
}

// TestHalfOpenAttackerDoesNotLockOthersOut has one connection hold every
// place of the pending pool with header-only calls (as issue 16's attacker
// did, which locked every other call out, health included): its own
// further calls are refused, while another connection's calls are all
// served, each taking the place of the attacker's oldest waiting call.
func TestHalfOpenAttackerDoesNotLockOthersOut(t *testing.T) {
	reg := prometheus.NewRegistry()
	addr := serveOn(t, server.New(newBroker(t), server.Config{MaxPendingStreams: 4, FirstMessageTimeout: time.Hour, Metrics: reg}))
	attacker := dialGRPC(t, addr)
	var waiting []uint32 // the attacker's, oldest first
	for range 4 {
		waiting = append(waiting, attacker.open(listBudgets, nil))
	}
	// full refuses the attacker one more call: the pool is full and the
	// attacker holds all of it. Its answer also means that every call
	// sent before it on the connection has passed the edge.
	full := func() {
		t.Helper()
		if code, msg := attacker.status(attacker.open(listBudgets, nil)); code != codes.ResourceExhausted {
			t.Fatalf("the attacker's call beyond the pool: %v %s, want ResourceExhausted", code, msg)
		}
		if got := pendingStreams(t, reg); got != 4 {
			t.Fatalf("%v streams pending, want the pool's 4", got)
		}
	}
	full()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	qb, health := pb.NewQuotaBrokerClient(conn), healthpb.NewHealthClient(conn)
	const calls = 10
	for i := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if i%2 == 0 {
			_, err = qb.ListBudgets(ctx, &pb.ListBudgetsRequest{})
		} else {
			_, err = health.Check(ctx, &healthpb.HealthCheckRequest{})
		}
		cancel()
		if err != nil {
			t.Fatalf("call %d of another connection while the attacker holds the pool: %v", i, err)
		}
		if code, msg := attacker.status(waiting[0]); code != codes.Canceled {
			t.Fatalf("the attacker's oldest waiting call: %v %s, want it cancelled for the newcomer", code, msg)
		}
		waiting = append(waiting[1:], attacker.open(listBudgets, nil))
		full()
	}
	for reason, want := range map[string]float64{"evicted": calls, "too_many_pending": calls + 1, "no_request": 0} {
		if got := refusedCount(t, reg, reason); got != want {
			t.Errorf("streams refused for %s: %v, want %v", reason, got, want)
		}
	}
}

// TestFairShareOfPendingStreams fills the pool from three connections in
// turn: a newcomer holding less than its share (the pool over the
// connections with waiting calls) takes the place of the oldest call of
// the connection holding the most; one holding its share is refused.
func TestFairShareOfPendingStreams(t *testing.T) {
	reg := prometheus.NewRegistry()
	addr := serveOn(t, server.New(newBroker(t), server.Config{MaxPendingStreams: 6, FirstMessageTimeout: time.Hour, Metrics: reg}))
	a, b, c := dialGRPC(t, addr), dialGRPC(t, addr), dialGRPC(t, addr)
	var as, bs []uint32
	for range 6 {
		as = append(as, a.open(listBudgets, nil))
	}
	refused := func(conn *grpcConn, who string) {
		t.Helper()
		if code, msg := conn.status(conn.open(listBudgets, nil)); code != codes.ResourceExhausted {
			t.Fatalf("%s's call at its share: %v %s, want ResourceExhausted", who, code, msg)
		}
	}
	refused(a, "a") // a holds 6 of 6, its share alone
	// b's share is 6/2 = 3: its first three calls take a's three oldest
	// places, its fourth is refused, and so is a's next.
	for range 3 {
		bs = append(bs, b.open(listBudgets, nil))
	}
	refused(b, "b")
	for _, id := range as[:3] {
		if code, msg := a.status(id); code != codes.Canceled {
			t.Fatalf("a's call %d: %v %s, want it evicted", id, code, msg)
		}
	}
	refused(a, "a")
	// c's share is 6/3 = 2: its two calls evict one call each of a and b
	// (the connection with the most, their oldest); a third is refused.
	c.open(listBudgets, nil)
	c.open(listBudgets, nil)
	refused(c, "c")
	if code, _ := a.status(as[3]); code != codes.Canceled {
		t.Fatalf("a's oldest waiting call: %v, want it evicted", code)
	}
	if code, _ := b.status(bs[0]); code != codes.Canceled {
		t.Fatalf("b's oldest waiting call: %v, want it evicted", code)
	}
	// Each connection now holds 2, its share: the ones not evicted are
	// still served when their requests come.
	for _, id := range as[4:] {
		a.send(id, &pb.ListBudgetsRequest{})
		if code, msg := a.status(id); code != codes.OK {
			t.Fatalf("a's call %d with its request: %v %s", id, code, msg)
		}
	}
	if got := pendingStreams(t, reg); got != 4 {
		t.Errorf("%v streams pending, want b's 2 and c's 2", got)
	}
	for reason, want := range map[string]float64{"evicted": 5, "too_many_pending": 4} {
		if got := refusedCount(t, reg, reason); got != want {
			t.Errorf("streams refused for %s: %v, want %v", reason, got, want)
		}
	}
}

// TestClosedHalfOpenStreamFreesItsPlace checks that a waiting call that is
// reset, or whose connection closes, gives its place back when it ends,
// not when its FirstMessageTimeout (an hour here) would have passed:
// before, the server went on refusing calls for seconds after an attacker
// had left.
func TestClosedHalfOpenStreamFreesItsPlace(t *testing.T) {
	reg := prometheus.NewRegistry()
	addr := serveOn(t, server.New(newBroker(t), server.Config{MaxPendingStreams: 2, FirstMessageTimeout: time.Hour, Metrics: reg}))
	c := dialGRPC(t, addr)
	a := c.open(listBudgets, nil)
	c.open(listBudgets, nil) // waits until the connection closes
	if code, msg := c.status(c.open(listBudgets, nil)); code != codes.ResourceExhausted {
		t.Fatalf("a third waiting call: %v %s, want ResourceExhausted", code, msg)
	}
	if got := pendingStreams(t, reg); got != 2 {
		t.Fatalf("%v streams pending, want 2", got)
	}
	if err := c.fr.WriteRSTStream(a, http2.ErrCodeCancel); err != nil {
		t.Fatal(err)
	}
	took := awaitPending(t, reg, 1)
	t.Logf("a reset stream's place was free after %v", took)
	// The place is the connection's again: one more call waits, and the
	// next is refused.
	d := c.open(listBudgets, nil)
	if code, msg := c.status(c.open(listBudgets, nil)); code != codes.ResourceExhausted {
		t.Fatalf("a call beyond the pool: %v %s, want ResourceExhausted", code, msg)
	}
	c.send(d, &pb.ListBudgetsRequest{})
	if code, msg := c.status(d); code != codes.OK {
		t.Fatalf("the call that took the freed place: %v %s", code, msg)
	}
	c.conn.Close()
	took = awaitPending(t, reg, 0)
	t.Logf("a closed connection's places were free after %v", took)
	for reason, want := range map[string]float64{"no_request": 0, "evicted": 0, "too_many_pending": 2} {
		if got := refusedCount(t, reg, reason); got != want {
			t.Errorf("streams refused for %s: %v, want %v", reason, got, want)
		}
	}
}
