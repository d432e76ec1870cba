package quotaclient

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// WithLeases returns a bedrockruntime option that leases every Converse,
// ConverseStream, InvokeModel and InvokeModelWithResponseStream call from
// the broker and settles it with the usage Bedrock reports:
//
//	rt := bedrockruntime.NewFromConfig(cfg, quotaclient.WithLeases(qc))
//
// It also stops the SDK's retryer from retrying ThrottlingExceptions: the
// middleware settles a throttled lease as throttled and retries with a new
// lease under its own policy (WithThrottleRetries). Other operations pass
// through untouched. See doc.go for the stack positions and the settlement
// rules.
func WithLeases(c *Client) func(*bedrockruntime.Options) {
	return func(o *bedrockruntime.Options) {
		o.APIOptions = append(o.APIOptions, c.addToStack)
		o.HTTPClient = withSafeBodies(o.HTTPClient)
	}
}

const (
	leaseID   = "QuotaBrokerLease"
	attemptID = "QuotaBrokerAttempt"
	noRetryID = "QuotaBrokerNoThrottleRetry"
)

func (c *Client) addToStack(stack *middleware.Stack) error {
	// Initialize, last: after input validation (an invalid input never takes
	// a lease) and outside the retry loop (one lease covers the SDK's own
	// retries of 5xx errors, which consume no quota).
	if err := stack.Initialize.Add(&leaseMiddleware{c: c}, middleware.After); err != nil {
		return err
	}
	// Finalize, just inside Retry: marks each attempt's ThrottlingException
	// not retryable, whatever retryer the client was built with.
	if _, ok := stack.Finalize.Get("Retry"); ok {
		if err := stack.Finalize.Insert(noThrottleRetry{}, "Retry", middleware.After); err != nil {
			return err
		}
	} else if err := stack.Finalize.Add(noThrottleRetry{}, middleware.After); err != nil {
		return err
	}
	// Deserialize, innermost (next is the HTTP round trip): sees the raw
	// response of each attempt, its headers (InvokeModel's token counts)
	// and, for streams, the body before the SDK's event-stream reader wraps
	// it.
	return stack.Deserialize.Add(attemptMiddleware{}, middleware.After)
}

// call is one leased SDK operation, shared by the three middlewares
// through the stack values of its context. The Initialize middleware
// creates it; the Deserialize one fills sent/header/stream during next(),
// on the same goroutine, so no lock is needed until a stream hands it to
// the SDK's reader goroutine (settle is then called exactly once).
type call struct {
	c      *Client
	ctx    context.Context
	s      shape
	region string
	input  int64
	lease  *Lease
	sent   bool
	header http.Header
	stream *streamBody
}

type callKey struct{}

type leaseMiddleware struct{ c *Client }

func (*leaseMiddleware) ID() string { return leaseID }

func (m *leaseMiddleware) HandleInitialize(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (
	middleware.InitializeOutput, middleware.Metadata, error,
) {
	s, ok := shapeOf(in.Parameters)
	if !ok {
		return next.HandleInitialize(ctx, in)
	}
	c := m.c
	region := awsmiddleware.GetRegion(ctx)
	if r, ok := ctx.Value(routedKey{}).(*routed); ok {
		return c.routedCall(ctx, in, next, s, region, r)
	}
	input := c.inputTokens(ctx, s)
	for attempt := 1; ; attempt++ {
		lease, err := c.Acquire(ctx, Request{ModelID: s.modelID, Region: region, InputTokens: input, MaxOutputTokens: s.maxTokens})
		if err != nil {
			return middleware.InitializeOutput{}, middleware.Metadata{}, err
		}
		cl := &call{c: c, ctx: ctx, s: s, region: region, input: input, lease: lease}
		out, md, err := next.HandleInitialize(middleware.WithStackValue(ctx, callKey{}, cl), in)
		if err == nil {
			cl.settleSuccess(out.Result)
			md.Set(callLeaseKey{}, callLeaseOf(lease, attempt))
			return out, md, nil
		}
		if !isThrottle(err) {
			cl.settleFailure(err)
			return out, md, err
		}
		cl.settle(OutcomeThrottled, Usage{}, "throttled")
		if attempt >= c.o.throttleAttempts || ctx.Err() != nil {
			return out, md, err
		}
		if werr := sleep(ctx, c.backoff(attempt)); werr != nil {
			return out, md, err // the caller gave up: report the throttle
		}
	}
}

// CallLease is the lease that covered a Bedrock call made through
// WithLeases, as the call's output carries it (see LeaseOf).
type CallLease struct {
	// ID is the broker's lease id, or "local-N" for a local lease.
	ID string
	// Local is true when the broker was unreachable and FailOpen's
	// fallback limiter granted the lease: the call ran under the local
	// limit, and the broker neither granted nor counted it.
	Local bool
	// The budget the lease drew on (Local: Region and Model as requested).
	Region, Scope, Model string
	ReservedTokens       int64
	Waited               time.Duration
	// Attempts is the leases the call took: 1 plus its throttle retries
	// (WithThrottleRetries).
	Attempts int
	// CallModelID is what was called in Region; Route and RouteReason are
	// set for a Router's call (see Lease).
	CallModelID, Route, RouteReason string
}

type callLeaseKey struct{}

func callLeaseOf(l *Lease, attempts int) CallLease {
	return CallLease{ID: l.ID, Local: l.Local, Region: l.Region, Scope: l.Scope, Model: l.Model,
		ReservedTokens: l.ReservedTokens, Waited: l.Waited, Attempts: attempts,
		CallModelID: l.CallModelID, Route: l.Route, RouteReason: l.RouteReason}
}

// LeaseOf returns the lease that covered a successful call made through
// WithLeases, from the output's ResultMetadata; ok is false for a call the
// middleware did not lease (another operation, another client). With
// FailOpen this is how a caller learns that a call ran on a local lease
// while the broker was away:
//
//	out, err := rt.Converse(ctx, in)
//	if l, ok := quotaclient.LeaseOf(out.ResultMetadata); ok && l.Local { ... }
func LeaseOf(md middleware.Metadata) (CallLease, bool) {
	l, ok := md.Get(callLeaseKey{}).(CallLease)
	return l, ok
}

// backoff is full jitter over base x 2^(attempt-1), capped at 10 s.
func (c *Client) backoff(attempt int) time.Duration {
	d := min(c.o.throttleBackoff<<(attempt-1), 10*time.Second)
	return time.Duration(rand.Int64N(int64(d)) + 1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func isThrottle(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == "ThrottlingException"
}

// settleSuccess settles a call that returned without error. Streams settle
// later, from their body (stream.go).
func (cl *call) settleSuccess(result any) {
	if cl.s.op.stream() {
		if cl.stream == nil { // no body to watch: settle at the estimate now
			cl.settle(OutcomeSuccess, cl.estimateUsage(), "stream_unobserved")
		}
		return
	}
	if out, ok := result.(*bedrockruntime.ConverseOutput); ok && out.Usage != nil {
		u := out.Usage
		cl.settle(OutcomeSuccess, Usage{InputTokens: i32(u.InputTokens), OutputTokens: i32(u.OutputTokens),
			CacheReadInputTokens: i32(u.CacheReadInputTokens), CacheWriteInputTokens: i32(u.CacheWriteInputTokens)}, "ok")
		return
	}
	if u, ok := headerUsage(cl.header); ok {
		cl.settle(OutcomeSuccess, u, "ok")
		return
	}
	cl.settle(OutcomeSuccess, cl.estimateUsage(), "ok_without_usage")
}

// settleFailure settles a call that failed with something other than a
// throttle. A call that never reached the network (signing, endpoint,
// serialisation errors) was not made: cancelled. An HTTP error answer
// (validation, 5xx, ModelNotReady) was refused before generation and
// consumed nothing that Bedrock reports: error, no usage. A call cut off
// without an answer (connection lost, ctx cancelled mid-generation) may
// have been admitted and generated: error at the reservation's estimate.
func (cl *call) settleFailure(err error) {
	var re *smithyhttp.ResponseError
	switch {
	case !cl.sent:
		cl.settle(OutcomeCancelled, Usage{}, "not_sent")
	case errors.As(err, &re) && re.HTTPStatusCode() > 0:
		cl.settle(OutcomeError, Usage{}, "http_"+strconv.Itoa(re.HTTPStatusCode()))
	default:
		cl.settle(OutcomeError, cl.estimateUsage(), "no_answer")
	}
}

// estimateUsage is the reservation in usage terms: the estimated (or
// counted) input and the max_tokens the broker reserved.
func (cl *call) estimateUsage() Usage {
	return Usage{InputTokens: cl.input, OutputTokens: cl.lease.MaxOutputTokens}
}

// settle completes the lease, detached from the caller's ctx (a cancelled
// caller must still give its reservation back), bounded by the broker
// timeout. A failure is logged: the lease then expires at the broker.
func (cl *call) settle(o Outcome, u Usage, why string) {
	ctx := context.WithoutCancel(cl.ctx)
	if err := cl.lease.Complete(ctx, o, u); err != nil {
		cl.c.log.Warn("settle lease", "lease_id", cl.lease.ID, "model", cl.s.modelID, "reason", why, "err", err)
		return
	}
	cl.c.log.Debug("lease settled", "lease_id", cl.lease.ID, "model", cl.s.modelID, "reason", why,
		"input_tokens", u.InputTokens, "output_tokens", u.OutputTokens)
}

func (cl *call) reportThrottle(msg string) {
	if cl.lease.Local {
		return
	}
	if err := cl.c.ReportThrottle(context.WithoutCancel(cl.ctx), cl.s.modelID, cl.region, msg); err != nil {
		cl.c.log.Warn("report throttle", "model", cl.s.modelID, "err", err)
	}
}

func i32(p *int32) int64 {
	if p == nil {
		return 0
	}
	return int64(*p)
}

// headerUsage reads InvokeModel's usage headers.
func headerUsage(h http.Header) (Usage, bool) {
	if h == nil {
		return Usage{}, false
	}
	in, err1 := strconv.ParseInt(h.Get("X-Amzn-Bedrock-Input-Token-Count"), 10, 64)
	out, err2 := strconv.ParseInt(h.Get("X-Amzn-Bedrock-Output-Token-Count"), 10, 64)
	if err1 != nil || err2 != nil {
		return Usage{}, false
	}
	u := Usage{InputTokens: in, OutputTokens: out}
	u.CacheReadInputTokens, _ = strconv.ParseInt(h.Get("X-Amzn-Bedrock-Cache-Read-Input-Token-Count"), 10, 64)
	u.CacheWriteInputTokens, _ = strconv.ParseInt(h.Get("X-Amzn-Bedrock-Cache-Write-Input-Token-Count"), 10, 64)
	return u, true
}

// attemptMiddleware records each HTTP attempt of a leased call and wraps
// a streaming response's body.
type attemptMiddleware struct{}

func (attemptMiddleware) ID() string { return attemptID }

func (attemptMiddleware) HandleDeserialize(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (
	middleware.DeserializeOutput, middleware.Metadata, error,
) {
	cl, _ := middleware.GetStackValue(ctx, callKey{}).(*call)
	if cl == nil {
		return next.HandleDeserialize(ctx, in)
	}
	cl.sent = true
	out, md, err := next.HandleDeserialize(ctx, in)
	if resp, ok := out.RawResponse.(*smithyhttp.Response); ok && resp != nil && resp.Response != nil {
		cl.header = resp.Header
		if err == nil && cl.s.op.stream() && resp.StatusCode == http.StatusOK && resp.Body != nil {
			cl.stream = newStreamBody(cl.ctx, cl, resp.Body)
			resp.Body = cl.stream
		}
	}
	return out, md, err
}

// noThrottleRetry makes an attempt's ThrottlingException not retryable by
// the SDK's retryer (its RetryableError check comes before the throttle
// codes), while errors.As still finds the ThrottlingException.
type noThrottleRetry struct{}

func (noThrottleRetry) ID() string { return noRetryID }

func (noThrottleRetry) HandleFinalize(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (
	middleware.FinalizeOutput, middleware.Metadata, error,
) {
	out, md, err := next.HandleFinalize(ctx, in)
	if err != nil && isThrottle(err) {
		if cl, _ := middleware.GetStackValue(ctx, callKey{}).(*call); cl != nil {
			err = &notRetryable{err}
		}
	}
	return out, md, err
}

type notRetryable struct{ err error }

func (e *notRetryable) Error() string        { return e.err.Error() }
func (e *notRetryable) Unwrap() error        { return e.err }
func (e *notRetryable) RetryableError() bool { return false }
