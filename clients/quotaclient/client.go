package quotaclient

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// ClientHeader is the gRPC metadata key the client names itself with; the
// broker keeps fairness and accounting per client. (The server declares the
// same constant; the client does not import the server.)
const ClientHeader = "x-quotabroker-client"

// Priority orders waiters on a budget.
type Priority int

// Priorities; the zero value means the client's default (standard unless
// WithPriority says otherwise).
const (
	PriorityDefault Priority = iota
	PriorityInteractive
	PriorityStandard
	PriorityBatch
)

// FailureMode is what Acquire does when the broker cannot be reached.
type FailureMode int

const (
	// FailClosed returns the broker's error (errors.Is ErrUnavailable): no
	// Bedrock call is made without a lease. The default.
	FailClosed FailureMode = iota
	// FailOpen grants leases from a local limiter (FallbackLimits, per
	// model) while the broker is unreachable, and returns to the broker as
	// soon as a probe reaches it.
	FailOpen
)

// Client asks a Quota Broker for leases. It is safe for concurrent use and
// owns no goroutines, so it needs no Close; the gRPC connection stays the
// caller's to close. For a cluster of replicas, connect with NewConn and
// add WithFailover.
type Client struct {
	rpc   pb.QuotaBrokerClient
	o     options
	log   *slog.Logger
	local *fallback // used only in FailOpen

	mu        sync.Mutex // guards down and nextProbe
	down      bool       // the last broker call found it unreachable
	nextProbe time.Time  // while down: when the next call tries the broker again
}

// New returns a client that talks to the broker over conn (a
// *grpc.ClientConn, or anything that implements the interface).
func New(conn grpc.ClientConnInterface, opts ...Option) *Client {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	c := &Client{rpc: pb.NewQuotaBrokerClient(conn), o: o, log: o.logger}
	c.local = newFallback(o.fallback, o.now)
	return c
}

// Request asks for a lease for one Bedrock call.
type Request struct {
	// ModelID is what will be called: a model id, an inference profile id,
	// or the ARN of either. Required.
	ModelID string
	// Region of the call; empty means the client's Region (WithRegion),
	// else the broker's default.
	Region   string
	Priority Priority
	// InputTokens is the estimated (or CountTokens-exact) prompt size.
	InputTokens int64
	// MaxOutputTokens is the call's max_tokens; 0 means unset, and the
	// broker reserves the model's maximum, as Bedrock does.
	MaxOutputTokens  int64
	CacheWriteTokens int64
	// Wait is how long to wait for capacity: 0 means the client's default
	// (WithWait), negative means do not wait. The caller's ctx bounds it too.
	Wait time.Duration
	// Route names one of the broker's routes instead of ModelID and
	// Region: the lease is granted on one of its targets, and the Lease
	// says where to call (Region, CallModelID). A Router does this for
	// bedrockruntime calls.
	Route string
	// AffinityKey (a conversation or session id, with Route) keeps calls
	// on the target the key last ran on while it has room.
	AffinityKey string
}

// Outcome is how the Bedrock call behind a lease ended.
type Outcome int

const (
	OutcomeSuccess Outcome = iota + 1
	// OutcomeThrottled: Bedrock answered ThrottlingException. The call
	// consumed nothing, and the throttle lowers the budget's adaptive limit.
	OutcomeThrottled
	// OutcomeError: the call failed otherwise; reported usage is charged.
	OutcomeError
	// OutcomeCancelled: the call was not made.
	OutcomeCancelled
)

// Usage is what Bedrock reported for a call.
type Usage struct {
	InputTokens, OutputTokens                   int64
	CacheReadInputTokens, CacheWriteInputTokens int64
}

// Lease is the right to make one Bedrock call. Complete it when the call
// ends; a lease left uncompleted expires at ExpiresAt and stays charged at
// its full reservation.
type Lease struct {
	ID string
	// Region, Scope and Model name the budget the lease draws on.
	Region, Scope, Model string
	ReservedTokens       int64
	// MaxOutputTokens is what the reservation used (the model's maximum
	// when the request left it unset); OutputBurndown its multiplier.
	MaxOutputTokens int64
	OutputBurndown  float64
	GrantedAt       time.Time
	ExpiresAt       time.Time
	Waited          time.Duration
	// Local is true for a lease granted by the fallback limiter while the
	// broker was unreachable (FailOpen); it never reaches the broker.
	Local bool
	// CallModelID is what to call in Region: for a route, the granted
	// target's model or inference profile id; otherwise the request's.
	CallModelID string
	// Route and RouteReason (room, affinity, spill) say which route
	// granted the lease and why this target; empty without a route.
	Route, RouteReason string

	c       *Client
	modelID string     // as requested: the fallback limiter's key
	mu      sync.Mutex // serialises Complete; guards done
	done    bool
}

// Acquire asks the broker for a lease, waiting up to the request's wait for
// capacity. Errors: *RefusedError (ErrRefused) when there was no room in
// time, *Error matching ErrInvalid when the request can never fit,
// ErrUnavailable when the broker cannot be reached (FailClosed), or the
// caller's context error.
func (c *Client) Acquire(ctx context.Context, req Request) (*Lease, error) {
	if req.ModelID == "" && req.Route == "" {
		return nil, &Error{Code: codes.InvalidArgument, Field: "model_id", Message: "is required (or a route)", kind: ErrInvalid}
	}
	if req.Route != "" {
		req.Region = "" // a route's targets carry their Regions
	}
	if req.Region == "" {
		req.Region = c.o.region
	}
	if req.Priority == PriorityDefault {
		req.Priority = c.o.priority
	}
	switch {
	case req.Wait == 0:
		req.Wait = c.o.wait
	case req.Wait < 0:
		req.Wait = 0
	}
	// A route's targets are the broker's to know: without the broker there
	// is no target to run on, so route requests fail closed.
	if c.o.mode == FailOpen && req.Route == "" && !c.probeDue() {
		return c.local.acquire(ctx, c, req)
	}
	l, err := c.acquireRemote(ctx, req)
	if err == nil {
		c.markUp()
		return l, nil
	}
	if !errors.Is(err, ErrUnavailable) {
		if ctx.Err() == nil {
			c.markUp() // the broker answered (a refusal is an answer)
		}
		return nil, err
	}
	c.markDown(err)
	if req.Route != "" {
		return nil, routeUnavailable(err)
	}
	if c.o.mode == FailOpen {
		return c.local.acquire(ctx, c, req)
	}
	return nil, failClosed(err)
}

// failClosed words FailClosed's error so that the log line a caller
// writes says what happened and what the alternative is: the transport's
// words alone ("connection refused") name neither the broker nor the mode.
func failClosed(err error) error {
	return explained(err, "broker unavailable, so no lease and no Bedrock call (FailClosed; with WithFailureMode(FailOpen) the call would run on a local lease under FallbackLimits): ")
}

// routeUnavailable words the error of a route request without a broker,
// whatever the failure mode: only the broker knows the route's targets.
func routeUnavailable(err error) error {
	return explained(err, "broker unavailable, so no lease and no Bedrock call: a route's targets are the broker's to know, so route calls fail closed even with FailOpen: ")
}

// explained returns a copy of err's *Error with why before its message,
// keeping its kind for errors.Is; err itself is left as it is, since the
// caller's other paths may still hold it.
func explained(err error, why string) error {
	var e *Error
	if !errors.As(err, &e) {
		return err
	}
	cp := *e
	cp.Message = why + e.Message
	return &cp
}

func (c *Client) outgoing(ctx context.Context) context.Context {
	if c.o.name == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, ClientHeader, c.o.name)
}

// Failover backoff: full jitter, doubling from failoverBase up to
// failoverCap. The first retry comes quickly because it usually finds a
// serving replica at once (round_robin picks another subchannel, and a
// replica that died has already left READY); the cap keeps a cluster
// without a leader from being hammered by every client.
const (
	failoverBase = 20 * time.Millisecond
	failoverCap  = time.Second
)

// invoke runs one broker RPC. Without WithFailover it makes one attempt,
// bounded by wait (the time the broker may queue it, when queues) plus the
// broker timeout. With WithFailover an attempt that ends UNAVAILABLE (a
// standby answering, a replica dying, no replica serving for a moment, or
// no answer within the broker timeout) is tried again, on whichever
// replica the balancer then picks, with backoff, for as long as wait
// lasts: a retry never starts after the wait is over, and the caller's ctx
// bounds everything. call gets what is left of the wait, for the request.
func (c *Client) invoke(ctx context.Context, wait time.Duration, queues bool, call func(rctx context.Context, left time.Duration) error) error {
	// Wall-clock time, not c.o.now: the bound is a context deadline and
	// timers, which run on the real clock.
	end := time.Now().Add(wait)
	backoff := failoverBase
	for attempt := 1; ; attempt++ {
		left := wait // exactly as asked the first time
		if attempt > 1 {
			left = max(time.Until(end), 0)
		}
		bound := c.o.brokerTimeout
		if queues {
			bound += left
		}
		rctx, cancel := context.WithTimeout(c.outgoing(ctx), bound)
		err := call(rctx, left)
		if err != nil {
			err = c.rpcError(ctx, rctx, err)
		}
		cancel()
		if err == nil || !c.o.failover || !errors.Is(err, ErrUnavailable) {
			return err
		}
		if ctx.Err() != nil {
			// The caller's deadline, not the broker, ended the retries.
			return ctxEnded(ctx, err)
		}
		sleep := rand.N(backoff) + time.Millisecond
		if time.Until(end) < sleep {
			return failedOver(err, attempt, wait)
		}
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctxEnded(ctx, err)
		case <-t.C:
		}
		backoff = min(2*backoff, failoverCap)
	}
}

// ctxEnded is the caller's context error (errors.Is finds it, as the
// errors table promises), saying what the last replica answered.
func ctxEnded(ctx context.Context, last error) error {
	return fmt.Errorf("quotaclient: waiting for a serving broker replica, the last said %q: %w", last.Error(), ctx.Err())
}

// failedOver says that the error is the last of several attempts, so that
// a log line shows the client did try the other replicas.
func failedOver(err error, attempts int, wait time.Duration) error {
	if attempts < 2 {
		return err
	}
	return explained(err, fmt.Sprintf("no broker replica served within %s (%d attempts), the last said: ", wait, attempts))
}

func (c *Client) rpcError(ctx, rctx context.Context, err error) error {
	if rctx.Err() != nil && ctx.Err() == nil {
		// Our broker timeout, not the caller's deadline: the broker is slow
		// or gone, which FailOpen treats like UNAVAILABLE.
		return &Error{Code: codes.Unavailable, Message: "broker did not answer within " + c.o.brokerTimeout.String(), kind: ErrUnavailable, cause: rctx.Err()}
	}
	return fromStatus(err)
}

func (c *Client) acquireRemote(ctx context.Context, req Request) (*Lease, error) {
	var resp *pb.AcquireLeaseResponse
	err := c.invoke(ctx, req.Wait, true, func(rctx context.Context, left time.Duration) error {
		var err error
		resp, err = c.rpc.AcquireLease(rctx, &pb.AcquireLeaseRequest{
			ModelId:          req.ModelID,
			Region:           req.Region,
			Priority:         priorityPB(req.Priority),
			InputTokens:      req.InputTokens,
			MaxOutputTokens:  req.MaxOutputTokens,
			CacheWriteTokens: req.CacheWriteTokens,
			// What is left of the wait: a retry after a failover queues
			// only for the rest of it.
			Wait:        durationpb.New(left),
			Route:       req.Route,
			AffinityKey: req.AffinityKey,
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	pl := resp.GetLease()
	l := &Lease{
		ID:              pl.GetLeaseId(),
		Region:          pl.GetBudget().GetRegion(),
		Scope:           scopeString(pl.GetBudget().GetScope()),
		Model:           pl.GetBudget().GetModel(),
		ReservedTokens:  pl.GetReservedTokens(),
		MaxOutputTokens: pl.GetMaxOutputTokens(),
		OutputBurndown:  pl.GetOutputBurndown(),
		GrantedAt:       pl.GetGrantedAt().AsTime(),
		ExpiresAt:       pl.GetExpiresAt().AsTime(),
		Waited:          resp.GetWaited().AsDuration(),
		CallModelID:     cmp.Or(pl.GetModelId(), req.ModelID),
		c:               c,
		modelID:         req.ModelID,
	}
	if r := resp.GetRoute(); r != nil {
		l.Route = r.GetRoute()
		l.RouteReason = routeReasonString(r.GetReason())
	}
	return l, nil
}

// Complete settles the lease with the call's outcome and real usage; the
// unused reservation returns to the budget. Completing again is a no-op
// that returns nil. A lease that expired first returns ErrExpired (the
// broker still corrects its charge). On ErrUnavailable the lease is not
// marked done, so the caller may try again before it expires.
func (l *Lease) Complete(ctx context.Context, outcome Outcome, u Usage) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil
	}
	if l.Local {
		l.c.local.settle(l, outcome, u)
		l.done = true
		return nil
	}
	c := l.c
	req := &pb.CompleteLeaseRequest{
		LeaseId: l.ID,
		Outcome: outcomePB(outcome),
		Usage: &pb.Usage{InputTokens: u.InputTokens, OutputTokens: u.OutputTokens,
			CacheReadInputTokens: u.CacheReadInputTokens, CacheWriteInputTokens: u.CacheWriteInputTokens},
	}
	// Settling is idempotent at the broker (a second completion answers
	// already_completed), so a retry after a failover is safe.
	err := c.invoke(ctx, c.o.wait, false, func(rctx context.Context, _ time.Duration) error {
		_, err := c.rpc.CompleteLease(rctx, req)
		return err
	})
	if err != nil {
		if errors.Is(err, ErrExpired) || errors.Is(err, ErrNotFound) {
			l.done = true // nothing more will change at the broker
		}
		return err
	}
	l.done = true
	return nil
}

// Renew extends the lease by extend from now (0: the broker's default
// lease duration) and returns the new expiry. Local leases never expire.
func (l *Lease) Renew(ctx context.Context, extend time.Duration) (time.Time, error) {
	if l.Local {
		return l.ExpiresAt, nil
	}
	c := l.c
	// Renewing sets the expiry to now+extend, so a retry after a failover
	// asks for the same thing again.
	var resp *pb.RenewLeaseResponse
	err := c.invoke(ctx, c.o.wait, false, func(rctx context.Context, _ time.Duration) error {
		var err error
		resp, err = c.rpc.RenewLease(rctx, &pb.RenewLeaseRequest{LeaseId: l.ID, Extend: durationpb.New(extend)})
		return err
	})
	if err != nil {
		return time.Time{}, err
	}
	at := resp.GetExpiresAt().AsTime()
	l.mu.Lock()
	l.ExpiresAt = at
	l.mu.Unlock()
	return at, nil
}

// ReportThrottle tells the broker about a ThrottlingException seen outside
// a lease (or after its settlement, e.g. in the middle of a stream), so
// that it feeds the budget's adaptive limit.
func (c *Client) ReportThrottle(ctx context.Context, modelID, region, message string) error {
	if region == "" {
		region = c.o.region
	}
	if len(message) > 4096 {
		message = message[:4096]
	}
	// With WithFailover a report made while the leader moves reaches the
	// new one: a throttle is the signal the adaptive limit needs most
	// exactly when callers are retrying.
	req := &pb.ReportThrottleRequest{ModelId: modelID, Region: region, Message: message}
	return c.invoke(ctx, c.o.wait, false, func(rctx context.Context, _ time.Duration) error {
		_, err := c.rpc.ReportThrottle(rctx, req)
		return err
	})
}

// probeDue reports whether this call should try the broker: always while
// it is up; while it is down, one call per probe interval does (the rest
// go straight to the fallback limiter, so an outage costs no latency).
func (c *Client) probeDue() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.down {
		return true
	}
	now := c.o.now()
	if now.Before(c.nextProbe) {
		return false
	}
	c.nextProbe = now.Add(c.o.probeInterval)
	return true
}

func (c *Client) markDown(err error) {
	c.mu.Lock()
	was := c.down
	c.down = true
	c.nextProbe = c.o.now().Add(c.o.probeInterval)
	c.mu.Unlock()
	if !was {
		mode := "closed"
		if c.o.mode == FailOpen {
			mode = "open"
		}
		c.log.Warn("quota broker unreachable", "err", err, "failure_mode", mode)
	}
}

func (c *Client) markUp() {
	c.mu.Lock()
	was := c.down
	c.down = false
	c.mu.Unlock()
	if was {
		c.log.Info("quota broker reachable again")
	}
}

// BrokerReachable reports whether the last broker call reached the broker.
func (c *Client) BrokerReachable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.down
}

func priorityPB(p Priority) pb.Priority {
	switch p {
	case PriorityInteractive:
		return pb.Priority_PRIORITY_INTERACTIVE
	case PriorityBatch:
		return pb.Priority_PRIORITY_BATCH
	case PriorityStandard:
		return pb.Priority_PRIORITY_STANDARD
	}
	return pb.Priority_PRIORITY_UNSPECIFIED
}

func outcomePB(o Outcome) pb.Outcome {
	switch o {
	case OutcomeSuccess:
		return pb.Outcome_OUTCOME_SUCCESS
	case OutcomeThrottled:
		return pb.Outcome_OUTCOME_THROTTLED
	case OutcomeError:
		return pb.Outcome_OUTCOME_ERROR
	case OutcomeCancelled:
		return pb.Outcome_OUTCOME_CANCELLED
	}
	return pb.Outcome_OUTCOME_UNSPECIFIED
}

func scopeString(s pb.Scope) string {
	switch s {
	case pb.Scope_SCOPE_ON_DEMAND:
		return "on-demand"
	case pb.Scope_SCOPE_CROSS_REGION:
		return "cross-region"
	case pb.Scope_SCOPE_GLOBAL:
		return "global"
	case pb.Scope_SCOPE_PROVISIONED:
		return "provisioned"
	}
	return ""
}

func routeReasonString(r pb.RouteReason) string {
	switch r {
	case pb.RouteReason_ROUTE_REASON_ROOM:
		return "room"
	case pb.RouteReason_ROUTE_REASON_AFFINITY:
		return "affinity"
	case pb.RouteReason_ROUTE_REASON_SPILL:
		return "spill"
	}
	return ""
}
