package server

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bedrockqb/quotabroker/broker"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of the broker's errors.
const ErrorDomain = "quotabroker.v1"

// codeOf is the one table from domain error kinds to gRPC codes. The Go
// client holds the inverse.
var codeOf = map[broker.Kind]codes.Code{
	broker.KindInvalid:      codes.InvalidArgument,
	broker.KindNotFound:     codes.NotFound,
	broker.KindPrecondition: codes.FailedPrecondition,
	broker.KindUnavailable:  codes.Unavailable,
	broker.KindInternal:     codes.Internal,
}

// toStatus turns a domain error into the status a caller sees. Context
// errors keep their meaning; internal errors go out as "internal error" and
// their cause goes to the log.
func toStatus(ctx context.Context, log *slog.Logger, err error) error {
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "the call was cancelled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "the call's deadline passed")
	}
	var be *broker.Error
	if !errors.As(err, &be) || be.Kind == broker.KindInternal {
		log.ErrorContext(ctx, "internal error", "err", err)
		return status.Error(codes.Internal, "internal error")
	}
	if be.Err != nil {
		log.WarnContext(ctx, "request failed", "err", err)
	}
	st := status.New(codeOf[be.Kind], be.Message)
	if be.Kind == broker.KindInvalid && be.Field != "" {
		if d, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: be.Field, Description: be.Message},
		}}); derr == nil {
			st = d
		}
	}
	return st.Err()
}

// busy is the status of a call refused because too many like it are at
// work: RESOURCE_EXHAUSTED with google.rpc.RetryInfo.
func busy(retry time.Duration) error {
	st := status.New(codes.ResourceExhausted, "too many usage history calls at once; retry later")
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)}); err == nil {
		st = d
	}
	return st.Err()
}

// refusal is the status of an AcquireLease that found no capacity in time:
// RESOURCE_EXHAUSTED with google.rpc.RetryInfo (when to try again) and
// google.rpc.ErrorInfo (reason LIMIT_TPM etc.: which limit blocked). The
// reasons are the names of the proto's Limit values (limit.go).
func refusal(key broker.Key, d broker.Decision) error {
	retry := "; retry after " + d.RetryAfter.Round(time.Millisecond).String()
	msg := "no capacity on " + d.Blocked.String() + " of " + key.String() + " within the wait" + retry
	switch d.Blocked {
	case broker.LimitClientWaiters:
		msg = "too many calls of this client are waiting for capacity already" + retry
	case broker.LimitWaiters:
		msg = "too many calls are waiting for capacity on the broker" + retry
	case broker.LimitClientLeases:
		msg = "this client holds as many leases as it may (max_concurrent); complete some" + retry
	case broker.LimitClientCap, broker.LimitMoney:
		msg = "refused by " + d.Cap + retry
	}
	meta := map[string]string{
		"limit":  d.Blocked.String(),
		"region": key.Region,
		"scope":  key.Scope.String(),
		"model":  key.Model,
	}
	if r := d.Route; r.Route != "" {
		// key is the target with the earliest retry; say that every
		// target was full, and which route.
		meta["route"] = r.Route
		if !d.Blocked.Flood() && d.Cap == "" {
			msg = "no capacity on any target of route " + r.Route + " within the wait; the earliest is " +
				d.Blocked.String() + " of " + key.String() + retry
		}
	}
	if d.Cap != "" {
		meta["cap"] = d.Cap
	}
	st := status.New(codes.ResourceExhausted, msg)
	withDetails, err := st.WithDetails(
		&errdetails.RetryInfo{RetryDelay: durationpb.New(d.RetryAfter)},
		&errdetails.ErrorInfo{
			Reason:   limitReason(d.Blocked),
			Domain:   ErrorDomain,
			Metadata: meta,
		},
	)
	if err != nil {
		return st.Err() // details are an aid; the code and message stand alone
	}
	return withDetails.Err()
}
