package broker

import (
	"errors"
	"fmt"
)

// Kind is the closed set of failure classes the broker reports. Adapters map
// kinds to their own codes in one place (server/errors.go for gRPC).
type Kind int

const (
	// KindInternal is a bug or an unexpected failure; its detail is logged,
	// not shown to callers.
	KindInternal Kind = iota
	// KindInvalid is a request that is wrong in itself: a bad field, or a
	// reservation larger than the limit it must fit.
	KindInvalid
	// KindNotFound is an unknown budget or lease.
	KindNotFound
	// KindPrecondition is a call the broker is not in a state to serve: the
	// lease has expired or is already completed, or there is no quota
	// source to refresh.
	KindPrecondition
	// KindUnavailable is a temporary inability to serve: the broker is
	// shutting down or its store failed.
	KindUnavailable
)

func (k Kind) String() string {
	switch k {
	case KindInvalid:
		return "invalid"
	case KindNotFound:
		return "not found"
	case KindPrecondition:
		return "failed precondition"
	case KindUnavailable:
		return "unavailable"
	default:
		return "internal"
	}
}

// Error is the broker's error type. Message is safe to show to the caller;
// Err, when set, is the underlying cause, for logs.
type Error struct {
	Kind    Kind
	Field   string // the request field at fault, for KindInvalid
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the kind of err, KindInternal for errors that are not an
// *Error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

func invalidf(field, format string, args ...any) *Error {
	return &Error{Kind: KindInvalid, Field: field, Message: field + ": " + fmt.Sprintf(format, args...)}
}

func notFoundf(format string, args ...any) *Error {
	return &Error{Kind: KindNotFound, Message: fmt.Sprintf(format, args...)}
}
