package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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
// streams over all connections may be waiting for theirs: a header-only
// stream from a client with valid credentials ends after the timeout, and
// their number, hence their memory, is bounded.
type edge struct {
	auth          authenticator
	authenticates bool
	log           *slog.Logger
	firstMessage  time.Duration
	maxPending    int64
	pending       atomic.Int64 // streams whose first message has not arrived
	// refused counts streams ended here by reason (unauthenticated,
	// invalid_client, too_many_pending, no_request): the interceptors that
	// count and log calls never see them. Nil without Config.Metrics.
	refused *prometheus.CounterVec
}

// refusedMetric is the counter of edge.refused.
func refusedMetric() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quotabroker_grpc_streams_refused_total",
		Help: "gRPC calls ended when their headers arrived or before their request did, by reason.",
	}, []string{"reason"})
}

func (e *edge) count(reason string) {
	if e.refused != nil {
		e.refused.WithLabelValues(reason).Inc()
	}
}

var (
	errTooManyPending = status.Error(codes.ResourceExhausted, "too many calls have not sent their request yet; retry")
	errNoRequest      = errors.New("no request within the first-message timeout")
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
	if e.pending.Add(1) > e.maxPending {
		e.pending.Add(-1)
		e.count("too_many_pending")
		return nil, errTooManyPending
	}
	// The timer ends the wait either way: stopped when the request
	// arrives, or firing after FirstMessageTimeout, also for a stream that
	// ended without a request (its place is then taken until the timer
	// fires, as if it were still open: no cheaper than holding it open).
	ctx, cancel := context.WithCancelCause(ctx)
	w := &awaiting{edge: e}
	w.timer = time.AfterFunc(e.firstMessage, func() {
		e.count("no_request")
		cancel(errNoRequest)
		e.pending.Add(-1)
	})
	return context.WithValue(ctx, awaitingKey{}, w), nil
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

// awaiting is a stream waiting for its first message.
type awaiting struct {
	edge  *edge
	timer *time.Timer // set before the stream starts; never changed
}

// arrived ends the wait when the request came; only the first call counts
// (Stop reports true once, and never after the timer fired).
func (w *awaiting) arrived() {
	if w.timer.Stop() {
		w.edge.pending.Add(-1)
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
