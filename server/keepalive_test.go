package server_test

import (
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/bedrockqb/quotabroker/server"
)

// rawConn speaks HTTP/2 frames to the server directly: grpc-go's own client
// never pings more often than every 10 s, which the policy allows, so only
// a hand-driven connection can break the policy without waiting for it.
type rawConn struct {
	t    *testing.T
	conn net.Conn
	fr   *http2.Framer
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// A bound on a test that goes wrong, not a timed assertion: every frame
	// awaited here is sent at once or after a few milliseconds.
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return &rawConn{t: t, conn: conn, fr: fr}
}

// next reads frames until one that match accepts, or the connection ends.
func (c *rawConn) next(match func(http2.Frame) bool) http2.Frame {
	c.t.Helper()
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("connection ended before the frame looked for: %v", err)
		}
		if match(f) {
			return f
		}
	}
}

func isGoAway(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }

func TestKeepaliveTooManyPingsAndStreamLimit(t *testing.T) {
	addr := serveOn(t, server.New(newBroker(t), server.Config{}))
	c := dialRaw(t, addr)
	s := c.next(func(f http2.Frame) bool { sf, ok := f.(*http2.SettingsFrame); return ok && !sf.IsAck() }).(*http2.SettingsFrame)
	if v, ok := s.Value(http2.SettingMaxConcurrentStreams); !ok || v != 1024 {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d (set: %v), want 1024", v, ok)
	}
	// Pings back to back, no call in flight: the first is free, the policy
	// (one per 10 s) counts a strike for each of the others, and the third
	// strike gets the connection closed.
	for i := range 5 {
		if err := c.fr.WritePing(false, [8]byte{byte(i)}); err != nil {
			break // the server may have closed it already: the GOAWAY is read below
		}
	}
	g := c.next(isGoAway).(*http2.GoAwayFrame)
	if g.ErrCode != http2.ErrCodeEnhanceYourCalm || string(g.DebugData()) != "too_many_pings" {
		t.Fatalf("GOAWAY %v %q, want ENHANCE_YOUR_CALM too_many_pings", g.ErrCode, g.DebugData())
	}
}

func TestKeepalivePingsWithinPolicyAreAnswered(t *testing.T) {
	addr := serveOn(t, server.New(newBroker(t), server.Config{}))
	c := dialRaw(t, addr)
	// One ping is within any policy: it is acknowledged and the connection
	// stays (the read deadline would end a test that waits for nothing).
	if err := c.fr.WritePing(false, [8]byte{7}); err != nil {
		t.Fatal(err)
	}
	f := c.next(func(f http2.Frame) bool {
		p, ok := f.(*http2.PingFrame)
		return isGoAway(f) || ok && p.IsAck() && p.Data == [8]byte{7}
	})
	if isGoAway(f) {
		t.Fatalf("one ping got GOAWAY %v", f)
	}
}

func TestIdleConnectionIsClosedGracefully(t *testing.T) {
	cfg := server.Config{}
	cfg.Keepalive.MaxConnectionIdle = 50 * time.Millisecond
	addr := serveOn(t, server.New(newBroker(t), cfg))
	c := dialRaw(t, addr)
	g := c.next(isGoAway).(*http2.GoAwayFrame)
	if g.ErrCode != http2.ErrCodeNo {
		t.Fatalf("idle connection closed with %v, want a graceful GOAWAY (NO_ERROR)", g.ErrCode)
	}
}
