// Package server is the gRPC face of the broker. It only translates: decode
// a request, call the domain once, encode the answer. Cross-cutting work
// (panic recovery, request logging) is an interceptor chain installed by New,
// so tests and production run the same chain; health and reflection are
// registered so that grpcurl needs no proto files.
//
// Callers authenticate with bearer tokens (Tokens), client certificates
// (mutual TLS, TLS), or both; the identity they prove is the client that
// fairness, caps and lease ownership use, and its role gates SetOverride and
// RefreshQuotas. Without either, callers name themselves (ClientHeader) and
// are all trusted.
//
// Errors map to gRPC codes in one table (errors.go): invalid ->
// INVALID_ARGUMENT (with google.rpc.BadRequest naming the field), not found
// -> NOT_FOUND, expired -> FAILED_PRECONDITION, unavailable -> UNAVAILABLE,
// anything else -> INTERNAL with the cause logged, not sent. A refused lease
// is RESOURCE_EXHAUSTED with google.rpc.RetryInfo and google.rpc.ErrorInfo
// (reason LIMIT_RPM, LIMIT_TPM, LIMIT_TPD or LIMIT_CONCURRENCY for a budget's
// limit; LIMIT_CLIENT_WAITERS, LIMIT_WAITERS or LIMIT_CLIENT_LEASES for the
// bounds that protect the broker from a flood). The reason is the name of
// the proto's Limit value, found through one table from the domain's limits
// (limit.go); a limit kind of either side without a row fails its test.
//
// AcquireLease waits at most the request's wait, the broker's maximum, and
// the RPC deadline less Config.DeadlineMargin, so a caller with a deadline
// gets a refusal it can act on rather than DEADLINE_EXCEEDED.
package server
