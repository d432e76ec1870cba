package quotaclient

import (
	"context"
	"fmt"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/aws/smithy-go/middleware"
	"google.golang.org/grpc/codes"
)

// Router makes bedrockruntime calls on a broker route: for each call it
// takes a lease on the route, sends the call to the granted target (its
// Region, its model or profile id) and settles the lease there. It is the
// one call site for a caller whose calls may run in several Regions:
//
//	r := quotaclient.NewRouter(qc, "sonnet-us", awsCfg)
//	out, err := r.Converse(quotaclient.WithAffinityKey(ctx, conversationID), in)
//
// It has Converse, ConverseStream, InvokeModel and
// InvokeModelWithResponseStream; a stream's lease is settled when the
// stream ends, from its final usage (stream.go), exactly as WithLeases
// settles one.
//
// Why a router and not the middleware alone: a bedrockruntime.Client's
// Region (its endpoint and signing Region) is fixed before any middleware
// sees the call, so the middleware of one client cannot send a call to
// another Region. The Router holds one client per Region, built on first
// use from the aws.Config with WithLeases and the caller's options, and
// the middleware of that client settles the lease the Router took (one
// lease per attempt, settled exactly once, by the same rules as WithLeases).
// A ThrottlingException settles the lease as throttled, which lowers that
// target's ceiling at the broker, and the Router asks the route again
// (WithThrottleRetries, the same backoff): the retry goes wherever the
// broker now has room. The input's ModelId is replaced by the target's on a
// copy; the caller's input is not changed. The route's targets are the
// broker's to know: the Router never reads routing rules, and a route call
// fails closed when the broker is unreachable (there is no target to run
// on), whatever WithFailureMode says.
type Router struct {
	c     *Client
	route string
	cfg   aws.Config
	opts  []func(*bedrockruntime.Options)

	mu      sync.Mutex // guards clients
	clients map[string]*bedrockruntime.Client
}

// NewRouter returns a router for route; optFns apply to every per-Region
// client (an endpoint for tests, a retryer, ...).
func NewRouter(c *Client, route string, cfg aws.Config, optFns ...func(*bedrockruntime.Options)) *Router {
	return &Router{c: c, route: route, cfg: cfg, opts: optFns, clients: make(map[string]*bedrockruntime.Client)}
}

// Client returns the Router's bedrockruntime client for region, built on
// first use.
func (r *Router) Client(region string) *bedrockruntime.Client {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cl := r.clients[region]; cl != nil {
		return cl
	}
	opts := append(append([]func(*bedrockruntime.Options){}, r.opts...), WithLeases(r.c), func(o *bedrockruntime.Options) { o.Region = region })
	cl := bedrockruntime.NewFromConfig(r.cfg, opts...)
	r.clients[region] = cl
	return cl
}

type affinityKey struct{}

// WithAffinityKey returns ctx carrying an affinity key (a conversation or
// session id) for the Router's calls under it: the broker keeps them on the
// target the key last ran on while that one has room, where the prompt
// cache is.
func WithAffinityKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, affinityKey{}, key)
}

// routed hands a lease the Router took to the middleware of the client it
// calls. A plain context value: the SDK clears stack values when an
// operation starts.
type routed struct {
	lease   *Lease
	input   int64
	attempt int
	used    bool // the middleware took charge of the lease
}

type routedKey struct{}

// Converse calls Converse on the route's granted target.
func (r *Router) Converse(ctx context.Context, in *bedrockruntime.ConverseInput, optFns ...func(*bedrockruntime.Options)) (*bedrockruntime.ConverseOutput, error) {
	return routeCall(r, ctx, in, func(in *bedrockruntime.ConverseInput, id string) *bedrockruntime.ConverseInput {
		cp := *in
		cp.ModelId = &id
		return &cp
	}, func(cl *bedrockruntime.Client, ctx context.Context, in *bedrockruntime.ConverseInput) (*bedrockruntime.ConverseOutput, error) {
		return cl.Converse(ctx, in, optFns...)
	})
}

// ConverseStream calls ConverseStream on the route's granted target; the
// lease is settled when the stream ends, as with WithLeases.
func (r *Router) ConverseStream(ctx context.Context, in *bedrockruntime.ConverseStreamInput, optFns ...func(*bedrockruntime.Options)) (*bedrockruntime.ConverseStreamOutput, error) {
	return routeCall(r, ctx, in, func(in *bedrockruntime.ConverseStreamInput, id string) *bedrockruntime.ConverseStreamInput {
		cp := *in
		cp.ModelId = &id
		return &cp
	}, func(cl *bedrockruntime.Client, ctx context.Context, in *bedrockruntime.ConverseStreamInput) (*bedrockruntime.ConverseStreamOutput, error) {
		return cl.ConverseStream(ctx, in, optFns...)
	})
}

// InvokeModel calls InvokeModel on the route's granted target. The input's
// ModelId, if set, is read only to find the provider's max_tokens field in
// the body; set it to the base model id.
func (r *Router) InvokeModel(ctx context.Context, in *bedrockruntime.InvokeModelInput, optFns ...func(*bedrockruntime.Options)) (*bedrockruntime.InvokeModelOutput, error) {
	return routeCall(r, ctx, in, func(in *bedrockruntime.InvokeModelInput, id string) *bedrockruntime.InvokeModelInput {
		cp := *in
		cp.ModelId = &id
		return &cp
	}, func(cl *bedrockruntime.Client, ctx context.Context, in *bedrockruntime.InvokeModelInput) (*bedrockruntime.InvokeModelOutput, error) {
		return cl.InvokeModel(ctx, in, optFns...)
	})
}

// InvokeModelWithResponseStream calls InvokeModelWithResponseStream on the
// route's granted target; the lease is settled when the stream ends, with
// the usage of its last chunk's amazon-bedrock-invocationMetrics, as with
// WithLeases. As for InvokeModel, set the input's ModelId to the base
// model id.
func (r *Router) InvokeModelWithResponseStream(ctx context.Context, in *bedrockruntime.InvokeModelWithResponseStreamInput, optFns ...func(*bedrockruntime.Options)) (*bedrockruntime.InvokeModelWithResponseStreamOutput, error) {
	return routeCall(r, ctx, in, func(in *bedrockruntime.InvokeModelWithResponseStreamInput, id string) *bedrockruntime.InvokeModelWithResponseStreamInput {
		cp := *in
		cp.ModelId = &id
		return &cp
	}, func(cl *bedrockruntime.Client, ctx context.Context, in *bedrockruntime.InvokeModelWithResponseStreamInput) (*bedrockruntime.InvokeModelWithResponseStreamOutput, error) {
		return cl.InvokeModelWithResponseStream(ctx, in, optFns...)
	})
}

func routeCall[I, O any](r *Router, ctx context.Context, in *I, withModel func(*I, string) *I,
	call func(*bedrockruntime.Client, context.Context, *I) (O, error)) (O, error) {
	var zero O
	s, ok := shapeOf(in)
	if !ok {
		return zero, &Error{Code: codes.InvalidArgument, Message: fmt.Sprintf("router: %T is not a leased operation", in), kind: ErrInvalid}
	}
	c := r.c
	input := c.inputTokens(ctx, s)
	key, _ := ctx.Value(affinityKey{}).(string)
	for attempt := 1; ; attempt++ {
		lease, err := c.Acquire(ctx, Request{Route: r.route, AffinityKey: key, InputTokens: input, MaxOutputTokens: s.maxTokens})
		if err != nil {
			return zero, err
		}
		rt := &routed{lease: lease, input: input, attempt: attempt}
		out, err := call(r.Client(lease.Region), context.WithValue(ctx, routedKey{}, rt), withModel(in, lease.CallModelID))
		if !rt.used {
			// The SDK failed the call before the middleware ran (input
			// validation): nothing was sent.
			if cerr := lease.Complete(context.WithoutCancel(ctx), OutcomeCancelled, Usage{}); cerr != nil {
				c.log.Warn("settle lease", "lease_id", lease.ID, "reason", "not_sent", "err", cerr)
			}
		}
		if err == nil || !isThrottle(err) || attempt >= c.o.throttleAttempts || ctx.Err() != nil {
			return out, err
		}
		if werr := sleep(ctx, c.backoff(attempt)); werr != nil {
			return out, err
		}
	}
}

// routedCall is the middleware's part of a Router call: one attempt on the
// lease the Router took, settled by the same rules as a WithLeases call; a
// throttle is settled and returned, for the Router to ask the route again.
func (c *Client) routedCall(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler, s shape, region string, r *routed) (
	middleware.InitializeOutput, middleware.Metadata, error,
) {
	r.used = true
	if region != r.lease.Region {
		r.lease.Complete(context.WithoutCancel(ctx), OutcomeCancelled, Usage{})
		return middleware.InitializeOutput{}, middleware.Metadata{}, fmt.Errorf("quotaclient: a lease for %s used by a client of %s", r.lease.Region, region)
	}
	cl := &call{c: c, ctx: ctx, s: s, region: region, input: r.input, lease: r.lease}
	out, md, err := next.HandleInitialize(middleware.WithStackValue(ctx, callKey{}, cl), in)
	switch {
	case err == nil:
		cl.settleSuccess(out.Result)
		md.Set(callLeaseKey{}, callLeaseOf(r.lease, r.attempt))
	case isThrottle(err):
		cl.settle(OutcomeThrottled, Usage{}, "throttled")
	default:
		cl.settleFailure(err)
	}
	return out, md, err
}
