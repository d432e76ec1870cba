package server

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// TestLogUnary: a routine outcome is not logged at info and costs no
// allocation; a failure is logged at its level with the call's fields.
func TestLogUnary(t *testing.T) {
	var buf bytes.Buffer
	s := &Server{clock: systemClock{}, log: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4000}})
	info := &grpc.UnaryServerInfo{FullMethod: "/quotabroker.v1.QuotaBroker/AcquireLease"}
	ok := func(context.Context, any) (any, error) { return nil, nil }
	if n := testing.AllocsPerRun(100, func() { s.logUnary(ctx, nil, info, ok) }); n != 0 {
		t.Errorf("a call logged at no level allocates %v times", n)
	}
	if buf.Len() != 0 {
		t.Fatalf("an OK call was logged at info: %s", buf.String())
	}
	failed := func(context.Context, any) (any, error) {
		return nil, status.Error(codes.Unavailable, "broker is shutting down")
	}
	if _, err := s.logUnary(ctx, nil, info, failed); status.Code(err) != codes.Unavailable {
		t.Fatalf("the interceptor changed the error: %v", err)
	}
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("%v: %s", err, buf.String())
	}
	for k, v := range map[string]any{"level": "WARN", "msg": "finished call", "grpc.service": "quotabroker.v1.QuotaBroker",
		"grpc.method": "AcquireLease", "grpc.method_type": "unary", "grpc.code": "Unavailable", "peer.address": "127.0.0.1:4000",
		"grpc.error": "rpc error: code = Unavailable desc = broker is shutting down"} {
		if rec[k] != v {
			t.Errorf("%s = %v, want %v (record %s)", k, rec[k], v, buf.String())
		}
	}
	if _, ok := rec["grpc.time_ms"]; !ok {
		t.Errorf("no grpc.time_ms: %s", buf.String())
	}
}
