package server

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/tap"

	"google.golang.org/protobuf/proto"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// FuzzCheckClient checks what CheckClient promises of a name it accepts:
// 1 to 256 bytes of UTF-8 without control characters, quotes, angle
// brackets or outer spaces, that a report can carry (proto strings must be
// UTF-8: the case of issue 16 item 2).
func FuzzCheckClient(f *testing.F) {
	for _, s := range []string{"svc-a", "evil\xff\xfe", "spiffe://x/y", "Build Bot", " a", "<b>", "a\x1b[31m", "é", OtherClients, strings.Repeat("x", 257)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if CheckClient(name) != nil {
			return
		}
		if name == "" || len(name) > maxClientLen || !utf8.ValidString(name) || strings.ContainsAny(name, "\"<>\\`\x00\n\r\t\x7f") ||
			name[0] == ' ' || name[len(name)-1] == ' ' || name == OtherClients {
			t.Fatalf("accepted %q", name)
		}
		u := &pb.ClientUsage{Client: name}
		if _, err := proto.Marshal(u); err != nil {
			t.Fatalf("accepted %q, which a report cannot carry: %v", name, err)
		}
	})
}

// FuzzTokensFile checks that a tokens file the parser accepts holds only
// names CheckClient accepts, known roles, and lower-case 64-digit keys,
// and is never empty unless it says allow_empty.
func FuzzTokensFile(f *testing.F) {
	const sum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	for _, s := range []string{
		`{"tokens": [{"client": "a", "role": "client", "sha256": "` + sum + `"}]}`,
		`{"tokens": [{"client": "a", "role": "client", "sha256": "` + strings.ToUpper(sum) + `"}]}`,
		`{"tokens": []}`, `{"tokens": [], "allow_empty": true}`, `null`, `{} {}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := parseTokens(data)
		if err != nil {
			return
		}
		if len(set) == 0 && !strings.Contains(string(data), "allow_empty") {
			t.Fatalf("an empty set without allow_empty from %q", data)
		}
		for k, id := range set {
			if len(k) != 64 || strings.ToLower(k) != k || CheckClient(id.Client) != nil || (id.Role != RoleClient && id.Role != RoleAdmin) {
				t.Fatalf("accepted %q -> %+v from %q", k, id, data)
			}
		}
	})
}

// FuzzPendingPool runs the pending-stream pool (edge.admit, edge.leave)
// through a sequence of streams opened, ended and connections closed, and
// checks it against a model after each step: the pool never exceeds
// MaxPendingStreams; while it has room every stream is admitted; when it
// is full, a connection holding its share (the pool over the connections
// with waiting streams, its own counted) is refused and one holding less
// is admitted in place of the oldest stream of the connection holding the
// most, which is another and holds more than the share; the
// per-connection lists, counts and heap agree with the model.
func FuzzPendingPool(f *testing.F) {
	f.Add([]byte{3, 0, 0, 0, 0, 4, 4, 8, 0x13, 2, 6, 0x0b, 0x07})
	f.Add([]byte{7, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 12, 16, 3, 4, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) == 0 {
			return
		}
		e := &edge{maxPending: 1 + int64(ops[0]%8)}
		model := map[string][]*awaiting{} // each connection's waiting streams, oldest first
		total := func() (n int) {
			for _, ws := range model {
				n += len(ws)
			}
			return n
		}
		type wait struct {
			addr  string
			freed <-chan struct{}
		}
		var waits []wait // refused newcomers' channels not yet closed
		for step, op := range ops[1:] {
			before := map[string]int{}
			for a, ws := range model {
				before[a] = len(ws)
			}
			addr := string(rune('a' + (op>>2)%5))
			switch op & 3 {
			case 0, 1: // a stream's headers arrive on addr
				held, conns := len(model[addr]), 0
				most := 0
				for _, ws := range model {
					if len(ws) > 0 {
						conns++
						most = max(most, len(ws))
					}
				}
				if held == 0 {
					conns++
				}
				full, share := int64(total()) >= e.maxPending, int(e.maxPending)/conns
				w, armed := &awaiting{}, false
				victim, freed, ok := e.admit(addr, w, func() { armed = true })
				switch {
				case (freed != nil) != (!ok && held > 0):
					t.Fatalf("step %d: %s holds %d and was admitted %v, with a channel to wait on %v", step, addr, held, ok, freed != nil)
				case ok != armed:
					t.Fatalf("step %d: admitted %v, armed %v", step, ok, armed)
				case !full && (!ok || victim != nil):
					t.Fatalf("step %d: the pool has room, and %s's stream: admitted %v, victim %v", step, addr, ok, victim != nil)
				case full && held >= share && ok:
					t.Fatalf("step %d: %s holds %d, its share %d of a full pool, and was admitted", step, addr, held, share)
				case full && held < share && (!ok || victim == nil):
					t.Fatalf("step %d: %s holds %d, under its share %d, and was refused (admitted %v)", step, addr, held, share, ok)
				}
				if victim != nil {
					var from string
					for a, ws := range model {
						if len(ws) > 0 && ws[0] == victim {
							from = a
						}
					}
					if from == "" || from == addr || len(model[from]) <= share || len(model[from]) != most {
						t.Fatalf("step %d: the victim is not the oldest of another connection holding the most, over the share %d (from %q, for %q)", step, share, from, addr)
					}
					model[from] = model[from][1:]
				}
				if ok {
					model[addr] = append(model[addr], w)
				}
				if freed != nil {
					waits = append(waits, wait{addr, freed})
				}
			case 2: // a stream's request arrives, or it is reset
				n := int(op >> 2)
				for _, a := range []string{"a", "b", "c", "d", "e"} {
					if ws := model[a]; n < len(ws) {
						if !e.release(ws[n]) || e.release(ws[n]) {
							t.Fatalf("step %d: a waiting stream left the pool other than once", step)
						}
						model[a] = append(ws[:n:n], ws[n+1:]...)
						break
					} else {
						n -= len(ws)
					}
				}
			case 3: // the connection closes
				for _, w := range model[addr] {
					e.release(w)
				}
				delete(model, addr)
			}
			// A refused newcomer's channel is closed once a stream of its
			// connection has left the pool, and not before.
			waits = slices.DeleteFunc(waits, func(w wait) bool {
				select {
				case <-w.freed:
					if len(model[w.addr]) >= before[w.addr] {
						t.Fatalf("step %d: %s's channel closed, and none of its streams left the pool", step, w.addr)
					}
					return true
				default:
					if len(model[w.addr]) < before[w.addr] {
						t.Fatalf("step %d: a stream of %s left the pool, and its channel is open", step, w.addr)
					}
					return false
				}
			})
			// The pool agrees with the model.
			if int64(e.waiting) > e.maxPending || e.waiting != total() {
				t.Fatalf("step %d: %d waiting, the model %d, the bound %d", step, e.waiting, total(), e.maxPending)
			}
			nonEmpty := 0
			for a, ws := range model {
				c := e.conns[a]
				if len(ws) == 0 {
					if c != nil {
						t.Fatalf("step %d: %s has no stream waiting but is in the pool", step, a)
					}
					continue
				}
				nonEmpty++
				if c == nil || c.n != len(ws) || e.busiest[c.index] != c {
					t.Fatalf("step %d: %s's %d waiting streams are not in the pool as such", step, a, len(ws))
				}
				w := c.first
				for i := range ws {
					if w != ws[i] || w.conn != c {
						t.Fatalf("step %d: %s's streams are out of arrival order at %d", step, a, i)
					}
					w = w.next
				}
				if w != nil || c.last != ws[len(ws)-1] {
					t.Fatalf("step %d: %s's list does not end at its last stream", step, a)
				}
			}
			if len(e.conns) != nonEmpty || len(e.busiest) != nonEmpty {
				t.Fatalf("step %d: %d connections and %d in the heap, want %d", step, len(e.conns), len(e.busiest), nonEmpty)
			}
			for i := 1; i < len(e.busiest); i++ {
				if e.busiest[(i-1)/2].n < e.busiest[i].n {
					t.Fatalf("step %d: the heap is out of order at %d", step, i)
				}
			}
		}
	})
}

// BenchmarkEdge is what the edge adds to every call: the tap (header
// check, the wait for the request armed) and its end when the request
// arrives. Compare with the empty RPC of bench/lease (about 250 µs of CPU
// a call on these machines: 8,000 calls/s on 2 cores).
func BenchmarkEdge(b *testing.B) {
	e := &edge{log: slog.New(slog.DiscardHandler), firstMessage: 10 * time.Second, maxPending: 1 << 30}
	info := &tap.Info{FullMethodName: "/quotabroker.v1.QuotaBroker/AcquireLease", Header: metadata.Pairs(ClientHeader, "svc-a")}
	conn := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000}})
	b.ReportAllocs()
	for b.Loop() {
		ctx, cancel := context.WithCancel(conn) // the stream's
		ctx, err := e.tap(ctx, info)
		if err != nil {
			b.Fatal(err)
		}
		arrived(ctx)
		cancel()
	}
}
