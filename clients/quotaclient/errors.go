package quotaclient

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// Sentinels for errors.Is. A refusal is matched by ErrRefused and carries
// its details in *RefusedError (errors.As).
var (
	// ErrRefused: no capacity within the wait (RESOURCE_EXHAUSTED).
	ErrRefused = errors.New("quotaclient: refused")
	// ErrInvalid: the request can never be served as asked
	// (INVALID_ARGUMENT), e.g. max_output_tokens larger than the budget.
	ErrInvalid = errors.New("quotaclient: invalid request")
	// ErrNotFound: unknown model, budget or lease (NOT_FOUND).
	ErrNotFound = errors.New("quotaclient: not found")
	// ErrExpired: the lease expired before it was completed or renewed
	// (FAILED_PRECONDITION); it stays charged at its reservation.
	ErrExpired = errors.New("quotaclient: lease expired")
	// ErrUnavailable: the broker cannot be reached or is shutting down
	// (UNAVAILABLE, or no answer within the broker timeout).
	ErrUnavailable = errors.New("quotaclient: broker unavailable")
	// ErrUnauthenticated: the broker wants a valid bearer token
	// (UNAUTHENTICATED); see BearerToken. Not an outage: FailOpen does not
	// apply.
	ErrUnauthenticated = errors.New("quotaclient: unauthenticated")
	// ErrPermission: the caller's role or identity does not allow the call
	// (PERMISSION_DENIED), e.g. settling another client's lease.
	ErrPermission = errors.New("quotaclient: permission denied")
)

// Limit names the limit of a budget that refused a lease. Its values are
// the proto's Limit values, and its names derive from them, so a limit the
// broker adds later decodes and prints without a change here.
type Limit int

// Limits, as ErrorInfo reasons LIMIT_RPM ... name them.
const (
	LimitUnknown     = Limit(pb.Limit_LIMIT_UNSPECIFIED)
	LimitRPM         = Limit(pb.Limit_LIMIT_RPM)
	LimitTPM         = Limit(pb.Limit_LIMIT_TPM)
	LimitTPD         = Limit(pb.Limit_LIMIT_TPD)
	LimitConcurrency = Limit(pb.Limit_LIMIT_CONCURRENCY)
	// The bounds that protect the broker from a flood: too many calls of
	// this client waiting, too many calls waiting in all, too many leases
	// held by this client.
	LimitClientWaiters = Limit(pb.Limit_LIMIT_CLIENT_WAITERS)
	LimitWaiters       = Limit(pb.Limit_LIMIT_WAITERS)
	LimitClientLeases  = Limit(pb.Limit_LIMIT_CLIENT_LEASES)
	// The client's own caps (requests or tokens per minute or day) and the
	// money budgets (the client's or the account's).
	LimitClientCap = Limit(pb.Limit_LIMIT_CLIENT_CAP)
	LimitMoney     = Limit(pb.Limit_LIMIT_MONEY)
)

// String is the proto name without its LIMIT_ prefix, in lower case with
// spaces ("client waiters"); the three-letter names are the rate units and
// stay upper case (RPM, TPM, TPD).
func (l Limit) String() string {
	name, ok := pb.Limit_name[int32(l)]
	if !ok || l == LimitUnknown {
		return "unknown"
	}
	name = strings.TrimPrefix(name, "LIMIT_")
	if len(name) == 3 {
		return name
	}
	return strings.ReplaceAll(strings.ToLower(name), "_", " ")
}

// RefusedError is a lease refused for want of capacity: try again after
// RetryAfter. errors.Is(err, ErrRefused) holds for it.
type RefusedError struct {
	RetryAfter time.Duration
	Limit      Limit
	// Region, Scope and Model name the budget, when the broker said.
	Region, Scope, Model string
	// Local is true when the client's own fallback limiter refused (the
	// broker was unreachable and the client fails open).
	Local   bool
	Message string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("quotaclient: refused on %s, retry after %s: %s", e.Limit, e.RetryAfter.Round(time.Millisecond), e.Message)
}

// Is makes errors.Is(err, ErrRefused) true.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// Error is a broker failure other than a refusal. errors.Is matches its
// kind: ErrInvalid, ErrNotFound, ErrExpired or ErrUnavailable (Internal
// failures match none of them).
type Error struct {
	Code    codes.Code
	Message string
	// Field names the request field at fault (INVALID_ARGUMENT with
	// google.rpc.BadRequest), e.g. "max_output_tokens".
	Field string
	kind  error
	cause error
}

func (e *Error) Error() string {
	if e.Field != "" {
		return "quotaclient: " + e.Field + ": " + e.Message
	}
	return "quotaclient: " + e.Message
}

// Is matches the error's kind sentinel.
func (e *Error) Is(target error) bool { return e.kind != nil && target == e.kind }

// Unwrap returns the transport error the broker call failed with, if any
// (e.g. context.DeadlineExceeded of the broker timeout).
func (e *Error) Unwrap() error { return e.cause }

// kindOf is the inverse of the server's table (server/errors.go codeOf):
// gRPC code to error kind.
var kindOf = map[codes.Code]error{
	codes.InvalidArgument:    ErrInvalid,
	codes.NotFound:           ErrNotFound,
	codes.FailedPrecondition: ErrExpired,
	codes.Unavailable:        ErrUnavailable,
	codes.Unauthenticated:    ErrUnauthenticated,
	codes.PermissionDenied:   ErrPermission,
}

// fromStatus turns the error of a broker RPC into the client's typed
// errors. Cancellation and deadlines of the caller's context come back as
// context errors, so errors.Is(err, context.Canceled) works.
func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return &Error{Code: codes.Unknown, Message: err.Error(), cause: err}
	}
	switch st.Code() {
	case codes.Canceled:
		return fmt.Errorf("quotaclient: %s: %w", st.Message(), context.Canceled)
	case codes.DeadlineExceeded:
		return fmt.Errorf("quotaclient: %s: %w", st.Message(), context.DeadlineExceeded)
	case codes.ResourceExhausted:
		r := &RefusedError{Message: st.Message()}
		for _, d := range st.Details() {
			switch d := d.(type) {
			case *errdetails.RetryInfo:
				r.RetryAfter = d.GetRetryDelay().AsDuration()
			case *errdetails.ErrorInfo:
				r.Limit = limitOfReason(d.GetReason())
				md := d.GetMetadata()
				r.Region, r.Scope, r.Model = md["region"], md["scope"], md["model"]
			}
		}
		return r
	}
	if st.Code() == codes.Unavailable && tlsRefused(st.Message()) {
		return &Error{Code: codes.Unauthenticated, kind: ErrUnauthenticated, cause: err,
			Message: "TLS credentials refused (a client certificate the broker does not accept, or a broker certificate this client does not trust): " + st.Message()}
	}
	e := &Error{Code: st.Code(), Message: st.Message(), kind: kindOf[st.Code()]}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			e.Field = br.GetFieldViolations()[0].GetField()
		}
	}
	return e
}

// tlsRefused reports whether an UNAVAILABLE from the transport is a TLS
// handshake that one side refused, which gRPC reports like an outage. It is
// not one: retrying will not help, and FailOpen must not take it for one,
// or a client whose certificate was revoked would go on calling Bedrock
// outside the broker. The wordings are grpc-go's ("authentication handshake
// failed", this side refusing) and crypto/tls's alerts ("remote error: tls:
// ...", the other side refusing: with TLS 1.3 a refused client certificate
// shows only when the first frame is read).
func tlsRefused(msg string) bool {
	return strings.Contains(msg, "authentication handshake failed") || strings.Contains(msg, "remote error: tls:")
}

// limitOfReason reads an ErrorInfo reason: the name of a proto Limit value.
// A name this client's generated code does not know is LimitUnknown.
func limitOfReason(reason string) Limit {
	if v, ok := pb.Limit_value[reason]; ok {
		return Limit(v)
	}
	return LimitUnknown
}
