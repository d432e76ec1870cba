package server

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/metadata"
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

// BenchmarkEdge is what the edge adds to every call: the tap (header
// check, the wait for the request armed) and its end when the request
// arrives. Compare with the empty RPC of bench/lease (about 250 µs of CPU
// a call on these machines: 8,000 calls/s on 2 cores).
func BenchmarkEdge(b *testing.B) {
	e := &edge{log: slog.New(slog.DiscardHandler), firstMessage: 10 * time.Second, maxPending: 1 << 30}
	info := &tap.Info{FullMethodName: "/quotabroker.v1.QuotaBroker/AcquireLease", Header: metadata.Pairs(ClientHeader, "svc-a")}
	b.ReportAllocs()
	for b.Loop() {
		ctx, cancel := context.WithCancel(context.Background()) // the stream's
		ctx, err := e.tap(ctx, info)
		if err != nil {
			b.Fatal(err)
		}
		arrived(ctx)
		cancel()
	}
}
