// Package server is the gRPC face of the broker. It only translates: decode
// a request, call the domain once, encode the answer. Cross-cutting work
// (panic recovery, request logging) is an interceptor chain installed by New,
// so tests and production run the same chain; health and reflection are
// registered so that grpcurl needs no proto files.
//
// The server sees the domain through two interfaces of its own: the lease
// calls through LeaseService (the broker's core), the report and admin calls
// through OperatorService (its operator, history and discovery parts). New
// takes one value that is both (a *broker.Broker); each handler uses one.
// Time comes from Config.Clock (the broker's, in production), never from
// the system clock, except for RPC deadlines, which are on it.
//
// Callers authenticate with bearer tokens (Tokens), client certificates
// (mutual TLS, TLS), or both; the identity they prove is the client that
// fairness, caps and lease ownership use, and its role gates SetOverride and
// RefreshQuotas. Without either, callers name themselves (ClientHeader) and
// are all trusted. Every client name, from any of these sources, passes one
// rule (CheckClient) or is refused: INVALID_ARGUMENT for the header,
// UNAUTHENTICATED for a certificate, a load error for the tokens file.
//
// The edge (edge.go): identity is established when a stream's headers
// arrive (grpc.InTapHandle), before its request is read, so a stream
// without credentials costs nothing but its refusal. A stream then has
// Config.FirstMessageTimeout to send its request, at most
// Config.MaxPendingStreams streams wait for theirs over all connections,
// Config.MaxConcurrentStreams bound each connection and Config.MaxConnections
// the connections: what header-only streams can hold is bounded (about
// 11 KiB each, so ~11 MiB at the defaults) and short-lived. A waiting
// stream's place is free again as soon as its request arrives or it ends
// (reset, or its connection closed). When every place is taken, the pool
// is shared fairly between connections: a newcomer whose connection holds
// its share (MaxPendingStreams over the connections with streams waiting)
// waits up to 10 ms, its connection unread, for one of its own to leave,
// and is then refused with RESOURCE_EXHAUSTED (so a connection that sends
// a new stream for each refused gets at most 100 refusals a second); any
// other takes the place of the oldest waiting stream of the connection
// holding the most, which is cancelled. So header-only streams cost their
// own connection, never another's calls: a real call sends its request
// with its headers and waits only until its handler reads it, which is
// too short to be evicted. (While the pool is full, a connection's burst
// of more calls than its share, say 10 of 1,024 places over 100
// connections, may see some refused.) Such refusals are counted in
// quotabroker_grpc_streams_refused_total{reason} (evicted streams under
// "evicted") and logged at debug only, so a flood of them cannot flood
// the log; quotabroker_grpc_streams_pending is the streams waiting.
//
// Tenants: with authentication, a client that is not an admin sees in
// GetQuotaReport every budget's limits, state and totals, and in an
// activity's top_clients only its own entry (if it ranks) and one entry
// named OtherClients summing the other ranked clients. Admins, and every
// caller of a server that does not authenticate, see clients by name.
//
// A request that is not valid protobuf, or whose string field is not UTF-8,
// is answered INTERNAL ("grpc: failed to unmarshal the received message")
// by grpc-go's decoder, not INVALID_ARGUMENT: grpc-go wraps any codec error
// in codes.Internal before an interceptor runs (rpc_util.go, recv), so a
// custom codec cannot change the code, and gRPC's status-code table lists a
// request that cannot be parsed as INTERNAL. Working around it (a codec
// that swallows the error and flags the message for an interceptor) would
// put a side channel into every call for a case no conforming client
// produces; the call never reaches the broker either way.
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
