// Package quotaclient is the Go client of the Bedrock Quota Broker: it
// asks the broker for a lease before each Amazon Bedrock call and settles
// the lease with the usage Bedrock reports after it. It depends on the
// generated gRPC code and the AWS SDK only, never on the broker's own
// packages, so that it can become its own module.
//
// Vocabulary: a Client acquires a Lease for a Request (model, input tokens,
// max_tokens); the Lease is completed with an Outcome and a Usage. A
// refusal is a *RefusedError (retry after, blocking limit); other failures
// are *Error values whose kind is matched with errors.Is: ErrInvalid,
// ErrNotFound, ErrExpired, ErrUnavailable (the inverse of the server's
// status table).
//
// # The SDK middleware
//
// WithLeases(c) is a bedrockruntime option. It adds three middlewares to the
// stack of every operation and acts on Converse, ConverseStream,
// InvokeModel and InvokeModelWithResponseStream (other operations pass
// through):
//
//   - Initialize step, last (after input validation, outside the SDK's
//     retry loop): reads the typed input (model id, max_tokens, text),
//     acquires the lease, calls the rest of the stack, settles. One lease
//     covers the SDK's own retries of 5xx answers, which consume no quota.
//     A ThrottlingException settles the lease as OutcomeThrottled and is
//     retried here with a new lease (WithThrottleRetries: bounded attempts,
//     full-jitter backoff, the caller's ctx honoured).
//   - Finalize step, just inside "Retry": wraps an attempt's
//     ThrottlingException in an error whose RetryableError() is false, so
//     the SDK's retryer (standard, adaptive or custom built on them) does
//     not retry throttles as well; errors.As still finds the
//     ThrottlingException. This is done on the stack rather than by wrapping
//     Options.Retryer because a later option replacing the retryer would
//     silently undo a wrapper. (The adaptive mode's client-side rate limiter
//     still sees the throttle; it only slows that client.)
//   - Deserialize step, innermost (its next is the HTTP round trip): records
//     that the request went out, keeps the raw response headers (InvokeModel
//     reports usage only in X-Amzn-Bedrock-Input/Output-Token-Count), and for
//     a streaming 200 wraps the HTTP body before the SDK's event-stream
//     reader takes it.
//
// The stream wrapper splits the event-stream bytes the SDK reads into
// messages (prelude, headers, payload; the SDK checks the CRCs) and looks
// for usage: ConverseStream's final "metadata" event, or the
// "amazon-bedrock-invocationMetrics" of InvokeModelWithResponseStream's last
// chunk. The public stream types could not be wrapped without racing the
// SDK's own goroutine (it reads the Reader field as soon as the stream is
// built), and the body is the one place every end of a stream passes
// through: EOF, a failed read, Close (by the SDK after an exception or at
// the end, or by the caller abandoning the stream), and the call's ctx
// ending (context.AfterFunc, stopped at settlement; no goroutine is left
// behind).
//
// # Routes
//
// A Router (router.go) makes bedrockruntime calls on a broker route: it
// takes the lease on the route (Request.Route, with the affinity key of
// WithAffinityKey), sends the call to the granted target through a client
// of that Region built with WithLeases, whose middleware settles the lease
// it was handed rather than taking one, and on a throttle asks the route
// again. One client per Region, because a bedrockruntime.Client's Region
// is fixed before any middleware runs. Its streams (ConverseStream,
// InvokeModelWithResponseStream) settle from the stream's body by the
// same rules as WithLeases' streams, on the target that was granted.
// Route calls fail closed when the broker is unreachable: only the broker
// knows the targets.
//
// # Settlement rules (each lease is settled exactly once)
//
//	usage reported (Converse, headers, metadata, metrics)  success, that usage
//	ThrottlingException answer (HTTP 429)                   throttled, no usage; retried
//	other HTTP error (validation, 5xx, ModelNotReady, ...)  error, no usage (nothing generated)
//	request never sent (signing, endpoint, serialisation)   cancelled
//	no answer (connection lost, ctx ended during the call)  error at the estimate
//	stream exception (throttlingException mid-stream, ...)  error at the estimate; a throttle
//	                                                        is also sent with ReportThrottle
//	stream abandoned (Close early, ctx ended) before usage  error at the estimate
//	success without usage (missing headers, no metadata)    success at the estimate
//
// "The estimate" is the reservation in usage terms: the input tokens the
// lease was taken with and the max_tokens the broker reserved. A mid-stream
// exception or an abandoned stream may have produced any output up to
// max_tokens, and Bedrock charges what it sent, which the client cannot
// count from text deltas; charging the reservation errs on the safe side.
// A mid-stream throttle is not settled as throttled because "throttled"
// means "consumed nothing" and returns the whole reservation.
//
// # Reading the request
//
// max_tokens comes from Converse's InferenceConfig.MaxTokens, or from the
// InvokeModel body by provider (the first segment of the model id after an
// ARN path and a us./eu./apac./global./... profile prefix):
//
//	anthropic, mistral, cohere, deepseek  max_tokens
//	meta                                   max_gen_len
//	amazon (Titan)                         textGenerationConfig.maxTokenCount
//	amazon (Nova)                          inferenceConfig.max_new_tokens, inferenceConfig.maxTokens
//	ai21                                   max_tokens (Jamba), maxTokens (Jurassic)
//	other                                  the first of these present
//
// Unset or unreadable means 0: the broker then reserves the model's
// maximum, as Bedrock does. Input tokens come from CountTokens when
// WithTokenCounter is set (one extra call; on error, the estimate), else
// the estimate ceil(bytes/4) x (1 + margin), margin 0.1 by default, over the
// text of messages, system prompt and tools for Converse (images and
// documents are not counted) and over the whole body for InvokeModel (JSON
// punctuation and keys included, on the safe side).
//
// # Broker down or slow
//
// A broker that answers UNAVAILABLE, or does not answer within the wait
// plus WithBrokerTimeout (2 s), is unreachable. FailClosed (the default)
// returns ErrUnavailable and no Bedrock call is made. FailOpen grants leases
// from a local limiter instead (FallbackLimits: per model, token buckets of
// requests and tokens per minute, refusals as *RefusedError with Local set)
// and marks those leases Local; they never reach the broker. A call made
// through WithLeases tells its caller which lease it ran on: LeaseOf on the
// output's ResultMetadata (CallLease.Local). FailClosed's error says
// "broker unavailable" and what FailOpen would have done. While the
// broker is down, one call per WithProbeInterval (1 s) tries it again (the
// others go straight to the limiter, so an outage costs no latency), and
// the first answer returns every caller to the broker. There is no
// background goroutine: probing rides on calls. Settlements of broker leases
// that fail during an outage are logged; those leases expire at the broker,
// charged at their reservation.
//
// # A cluster of replicas
//
// NewConn dials a broker cluster: a static list of replicas
// ("broker-1:50051,broker-2:50051,broker-3:50051", held by a resolver of
// that one connection) or a gRPC target whose resolver lists them
// ("dns:///brokers.internal:50051"). Its service config asks for
// round_robin with client-side health checking of
// quotabroker.v1.QuotaBroker (grpc.health.v1 Watch): only a replica whose
// health reports SERVING, the leader, is ever READY, so calls go to it
// alone, and when leadership moves the old leader's subchannel leaves READY
// and the new one's enters it without the client knowing who leads. The
// health stream is gRPC's own, one per replica, on the connection's
// goroutines; the Client still starts none.
//
// WithFailover covers the moments the balancer cannot: a standby that has
// not yet flipped its health answers UNAVAILABLE naming the leader, a
// leader dies mid-call, no replica serves for the second an election takes.
// Such a call is retried (jittered exponential backoff, 20 ms to 1 s) on
// whatever replica is then picked, for as long as the call's wait lasts
// (Acquire: the request's wait, sending the broker what is left of it;
// Complete and Renew, idempotent at the broker: WithWait), never past the
// caller's ctx. An Acquire whose answer was lost with a dying leader may
// have been granted there: that lease is never settled and expires at its
// reservation (the cluster's new leader knows it when the grant was durable
// before the answer, as the broker makes it). ReportThrottle is not
// retried: a second report would count the throttle twice.
//
// # Concurrency
//
// Client and Lease are safe for concurrent use. Client.mu guards only the
// reachability state; Lease.mu serialises Complete (a second completion
// returns nil at once). A call's state moves between the middlewares of one
// operation through the stack values of its ctx, on one goroutine, until a
// stream hands it to the SDK's reader goroutine; settlement then happens
// once, guarded by a sync.Once.
//
// Note: aws-sdk-go-v2 (bedrockruntime v1.63.13, smithy-go v1.28.9) shares
// one event-stream decoder buffer per bedrockruntime.Client, so concurrent
// streams on one client race inside the SDK, with or without this package.
// Until that is fixed, use one client per goroutine that streams.
package quotaclient
