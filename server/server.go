package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// LeaseService is what the lease calls need of the domain (broker.Core):
// acquire, settle, renew, report a throttle, and a lease's owner for the
// ownership check.
type LeaseService interface {
	Acquire(ctx context.Context, req broker.AcquireRequest) (broker.Decision, error)
	Complete(ctx context.Context, leaseID string, outcome broker.Outcome, u broker.Usage) (broker.Settlement, error)
	Renew(ctx context.Context, leaseID string, extend time.Duration) (time.Time, error)
	ReportThrottle(ctx context.Context, modelID, region, client string) (broker.Key, error)
	LeaseClient(leaseID string) string
}

// OperatorService is what the report and admin calls need of the domain:
// budgets and their state (broker.Operator), usage history
// (broker.Recorder) and quota discovery (broker.Refresher).
type OperatorService interface {
	Report(f broker.ReportFilter) ([]broker.BudgetReport, time.Time)
	Budgets() []broker.BudgetInfo
	SetOverride(ctx context.Context, modelID, region string, o broker.Override) (broker.BudgetInfo, error)
	ResetAdaptive(ctx context.Context, modelID, region string) (broker.BudgetInfo, error)
	Activity(ctx context.Context, f broker.ReportFilter) (map[broker.Key]*broker.Activity, time.Time, error)
	History(ctx context.Context, q broker.HistoryQuery) ([]broker.Series, error)
	RefreshNow(ctx context.Context) error
	DiscoveryStatus() broker.DiscoveryStatus
	Spend() broker.SpendReport
	Routes() []broker.RouteInfo
}

// Broker is both services in one value, as *broker.Broker assembles them;
// the server keeps them apart (each handler uses one).
type Broker interface {
	LeaseService
	OperatorService
}

// Clock is the server's source of time (a broker.Clock satisfies it).
type Clock interface {
	Now() time.Time
}

// systemClock reads the system time: the default Config.Clock.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// ClientHeader is the metadata key a caller names itself with when the
// server does not authenticate (no Tokens, no mutual TLS); otherwise the
// name comes from the credentials and the header is ignored. Fairness and
// accounting are per client.
const ClientHeader = "x-quotabroker-client"

// Config holds the server's tunables; the zero value works.
type Config struct {
	// Logger receives request logs (failures at warn and above, everything
	// else at debug); nil discards them.
	Logger *slog.Logger
	// DeadlineMargin is kept back from an RPC deadline when waiting for
	// capacity, so the caller gets a refusal with a retry delay rather than
	// DEADLINE_EXCEEDED. Default 50 ms.
	DeadlineMargin time.Duration
	// MaxRecvMsgSize bounds a request. Default 64 KiB: requests are small.
	MaxRecvMsgSize int
	// Tokens, when set, requires a bearer token on every QuotaBroker call
	// (health and reflection stay open; with mutual TLS the certificate
	// suffices) and takes the client's identity from it; admin calls need the admin role, and leases can be settled
	// or renewed only by their own client. Without it the client names
	// itself with ClientHeader and every caller is trusted.
	Tokens *Tokens
	// TLS, when set, serves over TLS. When it is mutual (a client CA), every
	// connection needs a verified client certificate, which alone
	// authenticates the caller (see TLS.Identity); a bearer token sent as
	// well must name the same client. Health and reflection then need a
	// certificate too: the handshake asks for it before any call.
	TLS *TLS
	// Metrics, when set, receives the gRPC server metrics (requests,
	// codes, handling time per method) as go-grpc-middleware's Prometheus
	// provider names them (see callMetrics), and
	// quotabroker_grpc_streams_refused_total (calls ended at stream start,
	// which those never see).
	Metrics prometheus.Registerer
	// Keepalive: the server pings a connection quiet for Time and closes
	// it if the ping is not answered within Timeout, so that a vanished
	// client's waiting AcquireLease calls end (and free their place in the
	// queue) in about a minute and a half, well inside the longest wait;
	// a connection with no call for MaxConnectionIdle is closed gracefully
	// (clients reconnect on their next call). Zero fields take the
	// defaults: Time 1m, Timeout 20s, MaxConnectionIdle 15m; MaxConnectionAge
	// stays unlimited unless set.
	Keepalive keepalive.ServerParameters
	// MaxConcurrentStreams bounds the calls in flight on one connection
	// (waiting AcquireLease calls included); a client's further calls wait
	// for a free stream. Default 1024.
	MaxConcurrentStreams uint32
	// MaxConnections bounds the connections open at once; further ones
	// wait in the listen backlog until one closes. Default 1024.
	MaxConnections int
	// FirstMessageTimeout is how long a call may take to send its request
	// after its headers; a call that sends none is cancelled then, so a
	// half-open stream cannot hold the broker's memory. Default 10 s.
	FirstMessageTimeout time.Duration
	// MaxPendingStreams bounds the calls, over all connections, whose
	// headers have arrived and whose request has not; when all are taken,
	// a call from a connection holding its fair share is refused with
	// RESOURCE_EXHAUSTED and any other evicts a waiting call of the
	// connection holding the most. With FirstMessageTimeout it bounds
	// what header-only streams can cost (see edge.go). Default 1024.
	MaxPendingStreams int
	// MaxConcurrentHistory bounds the GetUsageHistory calls at work at
	// once; one more waits up to a second for a slot, then is refused with
	// RESOURCE_EXHAUSTED and a retry delay. Default 1: a history call is
	// CPU-bound for up to about a second, and one leaves the other cores to
	// the lease path (measured in BenchmarkAcquireDuringHistory).
	MaxConcurrentHistory int
	// CloudWatch, when set, adds CloudWatch's figures to GetUsageHistory.
	CloudWatch CloudWatch
	// Cluster, when set, is the state of the cluster this server is a
	// replica of, shown in GetQuotaReport.
	Cluster ClusterFunc
	// Clock gives the time the server stamps answers with and defaults
	// GetUsageHistory's span to; wire the broker's. Default: the system
	// clock. (Waits are bounded by RPC deadlines, which are on the system
	// clock whatever this is.)
	Clock Clock
}

// Keepalive enforcement: a client may ping at most every 10 s (the
// shortest interval grpc-go clients allow), also when it has no call in
// flight (clients keep idle connections warm); one that pings more often is
// sent GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and disconnected.
var keepalivePolicy = keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}

// authenticates reports whether callers prove who they are.
func (c Config) authenticates() bool { return c.Tokens != nil || c.TLS.Mutual() }

// Server is the gRPC face of the broker: it translates, calls the domain
// once, and encodes. Health and reflection are registered with it, so
// grpcurl works without proto files.
type Server struct {
	pb.UnimplementedQuotaBrokerServer
	leases  LeaseService
	ops     OperatorService
	clock   Clock
	cfg     Config
	log     *slog.Logger
	grpc    *grpc.Server
	health  *health.Server
	history historySlots
}

// New builds the server with its interceptor chain: metrics (when
// Config.Metrics is set), recovery (a panic becomes INTERNAL, logged with its
// stack), then logging.
func New(b Broker, cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DeadlineMargin == 0 {
		cfg.DeadlineMargin = 50 * time.Millisecond
	}
	if cfg.MaxRecvMsgSize == 0 {
		cfg.MaxRecvMsgSize = 64 << 10
	}
	if cfg.Keepalive.Time == 0 {
		cfg.Keepalive.Time = time.Minute
	}
	if cfg.Keepalive.Timeout == 0 {
		cfg.Keepalive.Timeout = 20 * time.Second
	}
	if cfg.Keepalive.MaxConnectionIdle == 0 {
		cfg.Keepalive.MaxConnectionIdle = 15 * time.Minute
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = 1024
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = 1024
	}
	if cfg.FirstMessageTimeout == 0 {
		cfg.FirstMessageTimeout = 10 * time.Second
	}
	if cfg.MaxPendingStreams == 0 {
		cfg.MaxPendingStreams = 1024
	}
	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}
	if cfg.MaxConcurrentHistory <= 0 {
		cfg.MaxConcurrentHistory = 1
	}
	s := &Server{leases: b, ops: b, clock: cfg.Clock, cfg: cfg, log: cfg.Logger, health: health.NewServer(),
		history: make(historySlots, cfg.MaxConcurrentHistory)}
	logger := logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		s.log.Log(ctx, slog.Level(lvl), msg, fields...)
	})
	levels := logging.WithLevels(func(c codes.Code) logging.Level { return logging.Level(callLevel(c)) })
	recoverOpt := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		s.log.ErrorContext(ctx, "panic in handler", "panic", p, "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	})
	// Identity and authentication happen in the tap (edge.go), before the
	// request is read; the first interceptor only notes that it was.
	unary := []grpc.UnaryServerInterceptor{
		arrivedUnary,
		recovery.UnaryServerInterceptor(recoverOpt),
		s.logUnary,
	}
	stream := []grpc.StreamServerInterceptor{
		arrivedStream,
		recovery.StreamServerInterceptor(recoverOpt),
		logging.StreamServerInterceptor(logger, levels, logging.WithLogOnEvents(logging.FinishCall)),
	}
	edge := &edge{
		auth: authenticator{tokens: cfg.Tokens, tls: cfg.TLS}, authenticates: cfg.authenticates(), log: cfg.Logger,
		firstMessage: cfg.FirstMessageTimeout, maxPending: int64(cfg.MaxPendingStreams),
	}
	var metrics *callMetrics
	if cfg.Metrics != nil {
		edge.metrics = newStreamMetrics()
		cfg.Metrics.MustRegister(edge.metrics)
		metrics = newCallMetrics(cfg.Clock)
		cfg.Metrics.MustRegister(metrics)
		// Outermost, so a panic is counted as the INTERNAL that recovery
		// turns it into.
		unary = append([]grpc.UnaryServerInterceptor{metrics.unary}, unary...)
		stream = append([]grpc.StreamServerInterceptor{metrics.stream}, stream...)
	}
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize),
		grpc.KeepaliveEnforcementPolicy(keepalivePolicy),
		grpc.KeepaliveParams(cfg.Keepalive),
		grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams),
		grpc.InTapHandle(edge.tap),
	}
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(cfg.TLS.credentials()))
	}
	s.grpc = grpc.NewServer(opts...)
	pb.RegisterQuotaBrokerServer(s.grpc, s)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	if metrics != nil {
		metrics.initialize(s.grpc) // every method shows up at 0
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(pb.QuotaBroker_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	return s
}

// Serve accepts connections on lis, at most Config.MaxConnections at once,
// until Stop or GracefulStop.
func (s *Server) Serve(lis net.Listener) error {
	return s.grpc.Serve(netutil.LimitListener(lis, s.cfg.MaxConnections))
}

// Drain marks the server NOT_SERVING so that load balancers and health
// checks move traffic away, before the broker is closed.
func (s *Server) Drain() { s.health.Shutdown() }

// Shutdown waits for in-flight calls to finish, or until ctx ends, then
// stops the server.
func (s *Server) Shutdown(ctx context.Context) {
	s.health.Shutdown()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.grpc.Stop()
		<-done
	}
}

// GRPC exposes the underlying server, e.g. to register more services.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// clientOf is the caller's client name: from its credentials when the
// server authenticates, else as the caller declares it, checked by
// CheckClient at stream start (edge.go).
func clientOf(ctx context.Context) string {
	if id, ok := identityOf(ctx); ok {
		return id.Client
	}
	return AnonymousClient
}

// AnonymousClient is the client of calls that name none.
const AnonymousClient = "anonymous"

// AcquireLease waits for capacity up to the request's wait, bounded by the
// RPC deadline (less DeadlineMargin) and the broker's maximum.
func (s *Server) AcquireLease(ctx context.Context, req *pb.AcquireLeaseRequest) (*pb.AcquireLeaseResponse, error) {
	wait := time.Duration(0)
	if req.GetWait() != nil {
		if err := req.GetWait().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "wait: %v", err)
		}
		wait = req.GetWait().AsDuration()
	}
	if dl, ok := ctx.Deadline(); ok && wait > 0 {
		// The deadline is on the system clock, not on Config.Clock. A
		// negative wait is left as asked, for the domain to refuse the
		// same with a deadline as without; only the deadline's bound is
		// clamped at zero (a deadline already close answers at once).
		wait = max(min(wait, time.Until(dl)-s.cfg.DeadlineMargin), 0)
	}
	prio, err := priorityFromPB(req.GetPriority())
	if err != nil {
		return nil, err
	}
	d, err := s.leases.Acquire(ctx, broker.AcquireRequest{
		ModelID:          req.GetModelId(),
		Region:           req.GetRegion(),
		Client:           clientOf(ctx),
		Priority:         prio,
		InputTokens:      req.GetInputTokens(),
		MaxOutputTokens:  req.GetMaxOutputTokens(),
		CacheWriteTokens: req.GetCacheWriteTokens(),
		Wait:             wait,
		Route:            req.GetRoute(),
		AffinityKey:      req.GetAffinityKey(),
	})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	if !d.Granted {
		return nil, refusal(d.Key, d)
	}
	return acquiredToPB(d, req), nil
}

func (s *Server) CompleteLease(ctx context.Context, req *pb.CompleteLeaseRequest) (*pb.CompleteLeaseResponse, error) {
	if err := s.requireOwner(ctx, req.GetLeaseId()); err != nil {
		return nil, err
	}
	outcome, err := outcomeFromPB(req.GetOutcome())
	if err != nil {
		return nil, err
	}
	u := req.GetUsage()
	st, err := s.leases.Complete(ctx, req.GetLeaseId(), outcome, broker.Usage{
		InputTokens:           u.GetInputTokens(),
		OutputTokens:          u.GetOutputTokens(),
		CacheReadInputTokens:  u.GetCacheReadInputTokens(),
		CacheWriteInputTokens: u.GetCacheWriteInputTokens(),
	})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &pb.CompleteLeaseResponse{AlreadyCompleted: st.AlreadyCompleted, ChargedTokens: st.Charged, ReturnedTokens: st.Returned}, nil
}

func (s *Server) RenewLease(ctx context.Context, req *pb.RenewLeaseRequest) (*pb.RenewLeaseResponse, error) {
	if err := s.requireOwner(ctx, req.GetLeaseId()); err != nil {
		return nil, err
	}
	extend := time.Duration(0)
	if req.GetExtend() != nil {
		if err := req.GetExtend().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "extend: %v", err)
		}
		extend = req.GetExtend().AsDuration()
	}
	at, err := s.leases.Renew(ctx, req.GetLeaseId(), extend)
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &pb.RenewLeaseResponse{ExpiresAt: timestampPB(at)}, nil
}

func (s *Server) ReportThrottle(ctx context.Context, req *pb.ReportThrottleRequest) (*pb.ReportThrottleResponse, error) {
	if len(req.GetMessage()) > 4096 {
		return nil, status.Errorf(codes.InvalidArgument, "message: is %d bytes long; at most 4096", len(req.GetMessage()))
	}
	key, err := s.leases.ReportThrottle(ctx, req.GetModelId(), req.GetRegion(), clientOf(ctx))
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &pb.ReportThrottleResponse{Budget: keyToPB(key)}, nil
}

func (s *Server) GetQuotaReport(ctx context.Context, req *pb.GetQuotaReportRequest) (*pb.GetQuotaReportResponse, error) {
	if len(req.GetRegion()) > 64 || len(req.GetModel()) > 2048 {
		return nil, status.Error(codes.InvalidArgument, "region or model filter too long")
	}
	f := broker.ReportFilter{Region: req.GetRegion(), Model: req.GetModel()}
	reports, at := s.ops.Report(f)
	out := &pb.GetQuotaReportResponse{GeneratedAt: timestampPB(at), Discovery: discoveryToPB(s.ops.DiscoveryStatus(), at)}
	// The budgets' state is answered even when history cannot be read; the
	// response then says why activity is missing.
	activity, _, err := s.ops.Activity(ctx, f)
	if err != nil {
		// The cause (a store error, naming the data file) goes to the
		// log; callers learn only that activity is missing.
		s.log.WarnContext(ctx, "report without activity: usage history unreadable", "err", err)
		out.HistoryError = "usage history could not be read; see the broker's log"
	}
	all, self := s.seesEveryClient(ctx), clientOf(ctx)
	for _, r := range reports {
		pr := reportToPB(r)
		if err == nil {
			a := activity[r.Spec.Key]
			if !all {
				a = ownView(a, self)
			}
			pr.Activity = activityToPB(a)
		}
		out.Budgets = append(out.Budgets, pr)
	}
	sp := s.ops.Spend()
	if !all {
		sp = ownSpend(sp, self)
	}
	out.Spend = spendToPB(sp)
	out.Routes = routesToPB(s.ops.Routes())
	if s.cfg.Cluster != nil {
		out.Cluster = clusterToPB(s.cfg.Cluster())
	}
	return out, nil
}

func (s *Server) ListBudgets(ctx context.Context, _ *pb.ListBudgetsRequest) (*pb.ListBudgetsResponse, error) {
	out := &pb.ListBudgetsResponse{}
	for _, b := range s.ops.Budgets() {
		out.Budgets = append(out.Budgets, budgetToPB(b))
	}
	return out, nil
}

func (s *Server) SetOverride(ctx context.Context, req *pb.SetOverrideRequest) (*pb.SetOverrideResponse, error) {
	if err := s.requireAdmin(ctx); err != nil {
		return nil, err
	}
	o := req.GetOverride()
	var ov broker.Override
	if o != nil {
		ov = broker.Override{RPM: o.RequestsPerMinute, TPM: o.TokensPerMinute, TPD: o.TokensPerDay, Concurrency: o.Concurrency, Reason: o.GetReason()}
	}
	info, err := s.ops.SetOverride(ctx, req.GetModelId(), req.GetRegion(), ov)
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &pb.SetOverrideResponse{Budget: budgetToPB(info)}, nil
}

func (s *Server) ResetAdaptive(ctx context.Context, req *pb.ResetAdaptiveRequest) (*pb.ResetAdaptiveResponse, error) {
	if err := s.requireAdmin(ctx); err != nil {
		return nil, err
	}
	info, err := s.ops.ResetAdaptive(ctx, req.GetModelId(), req.GetRegion())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &pb.ResetAdaptiveResponse{Budget: budgetToPB(info)}, nil
}

func (s *Server) RefreshQuotas(ctx context.Context, _ *pb.RefreshQuotasRequest) (*pb.RefreshQuotasResponse, error) {
	if err := s.requireAdmin(ctx); err != nil {
		return nil, err
	}
	if err := s.ops.RefreshNow(ctx); err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &pb.RefreshQuotasResponse{
		Discovery: discoveryToPB(s.ops.DiscoveryStatus(), s.clock.Now()),
		Budgets:   int64(len(s.ops.Budgets())),
	}, nil
}

// callLevel is the level a finished call is logged at.
func callLevel(c codes.Code) slog.Level {
	switch c {
	case codes.OK, codes.ResourceExhausted, codes.NotFound, codes.Canceled, codes.InvalidArgument, codes.FailedPrecondition:
		return slog.LevelDebug // routine outcomes; counted, not logged
	case codes.Internal, codes.Unknown, codes.DataLoss:
		return slog.LevelError
	}
	return slog.LevelWarn
}

// logUnary logs a finished unary call at callLevel, with the fields
// go-grpc-middleware's logging interceptor gives a stream. It builds them
// only when that level is enabled: the middleware's interceptor built about
// 45 allocations of fields for every call, logged or not, and routine
// outcomes are logged at debug, which production leaves off.
func (s *Server) logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := s.clock.Now()
	resp, err := handler(ctx, req)
	code := status.Code(err)
	lvl := callLevel(code)
	if !s.log.Enabled(ctx, lvl) {
		return resp, err
	}
	service, method, _ := strings.Cut(strings.TrimPrefix(info.FullMethod, "/"), "/")
	attrs := []any{"protocol", "grpc", "grpc.component", "server", "grpc.service", service, "grpc.method", method,
		"grpc.method_type", "unary", "grpc.code", code.String(),
		"grpc.time_ms", fmt.Sprintf("%.3f", float64(s.clock.Now().Sub(start))/float64(time.Millisecond))}
	if p, ok := peer.FromContext(ctx); ok {
		attrs = append(attrs, "peer.address", p.Addr.String())
	}
	if err != nil {
		attrs = append(attrs, "grpc.error", err.Error())
	}
	s.log.Log(ctx, lvl, "finished call", attrs...)
	return resp, err
}

// SetServing sets the health of quotabroker.v1.QuotaBroker: a cluster's
// standby is NOT_SERVING, so that clients' health checks send their calls
// to the leader, and SERVING once it leads.
func (s *Server) SetServing(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus(pb.QuotaBroker_ServiceDesc.ServiceName, st)
}
