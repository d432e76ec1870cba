package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/etcd"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

// clusterFlags are serve's --etcd flags: one replica of a cluster whose
// state lives in etcd (broker/etcd).
type clusterFlags struct {
	endpoints, prefix, name string
	ca, cert, key           string
	user, password          string
	advertise               string
	ttl                     time.Duration
}

// etcdStartTimeout bounds the first contact with etcd at start-up.
const etcdStartTimeout = 5 * time.Second

// dialEtcd connects to etcd and checks that it answers, with the causes an
// operator can act on: which endpoints, refused or timed out, credentials.
func dialEtcd(ctx context.Context, f clusterFlags) (*clientv3.Client, error) {
	eps := list(f.endpoints)
	cfg := clientv3.Config{Endpoints: eps, DialTimeout: etcdStartTimeout, Logger: zap.NewNop(),
		Username: f.user, Password: f.password, DialKeepAliveTime: 5 * time.Second, DialKeepAliveTimeout: 2 * time.Second}
	if f.ca != "" || f.cert != "" {
		info := transport.TLSInfo{CertFile: f.cert, KeyFile: f.key, TrustedCAFile: f.ca}
		tc, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd TLS (--etcd-ca, --etcd-cert, --etcd-key): %w", err)
		}
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, etcdError(eps, f.user, err)
	}
	// Members started a moment ago may still be electing their leader:
	// try until the start-up timeout.
	cctx, cancel := context.WithTimeout(ctx, etcdStartTimeout)
	defer cancel()
	for {
		_, err := cli.Get(cctx, f.prefix+"format", clientv3.WithCountOnly())
		if err == nil {
			return cli, nil
		}
		if cctx.Err() != nil || errors.Is(err, rpctypes.ErrAuthFailed) || errors.Is(err, rpctypes.ErrPermissionDenied) {
			cli.Close()
			return nil, etcdError(eps, f.user, err)
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-cctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// etcdError explains a failure to reach etcd: credentials refused, or the
// state of each endpoint as a plain TCP dial sees it.
func etcdError(eps []string, user string, err error) error {
	if errors.Is(err, rpctypes.ErrAuthFailed) || errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrUserEmpty) {
		return fmt.Errorf("etcd at %s refused user %q (--etcd-user, --etcd-password): %w", strings.Join(eps, ","), user, err)
	}
	var why []string
	for _, ep := range eps {
		host := ep
		if _, rest, ok := strings.Cut(ep, "://"); ok {
			host = rest
		}
		c, derr := net.DialTimeout("tcp", host, time.Second)
		if derr != nil {
			why = append(why, fmt.Sprintf("%s: %v", ep, derr))
			continue
		}
		c.Close()
		why = append(why, ep+": accepts connections")
	}
	return fmt.Errorf("etcd unreachable at %s (--etcd): %w [%s]", strings.Join(eps, ","), err, strings.Join(why, "; "))
}

// Role is a replica's part in the cluster.
type Role string

const (
	RoleLeader  Role = "leader"
	RoleStandby Role = "standby"
	RoleNone    Role = "" // not clustered
)

// ClusterStatus is what a replica reports about the cluster.
type ClusterStatus struct {
	Role     Role
	Self     string    // this replica's advertised address
	Leader   string    // the leader's address, "" when none is known
	MovedAt  time.Time // when this replica last saw leadership change
	EtcdUp   bool      // the last exchange with etcd succeeded
	EtcdErr  string    // why not, when not
	Deadline time.Time // leader: when it steps down unless etcd renews its session
}

// replica is the broker as the server sees it in a cluster: the leader's
// broker while this replica leads, refusals naming the leader otherwise.
// It implements the server's and the dashboard's interfaces.
type replica struct {
	clock broker.Clock
	// follow is how far the standby's copy of the state is (the store's).
	follow func() etcd.FollowStatus

	// mu guards the fields below; no call into the broker holds it.
	mu     sync.RWMutex
	b      *broker.Broker
	sess   *etcd.Session // the leading session, with b
	status ClusterStatus
	srv    *server.Server
}

func (r *replica) setStatus(fn func(s *ClusterStatus)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.status.Leader
	fn(&r.status)
	if r.status.Leader != old {
		r.status.MovedAt = r.clock.Now()
	}
}

// Status is the replica's view of the cluster.
func (r *replica) Status() ClusterStatus {
	r.mu.RLock()
	defer r.mu.RUnlock()
	s := r.status
	if r.sess != nil {
		s.Deadline = r.sess.Deadline()
	}
	return s
}

// serverStatus is Status as the server shows it.
func (r *replica) serverStatus() server.ClusterStatus {
	s := r.Status()
	_, err := r.current()
	out := server.ClusterStatus{Leading: s.Role == RoleLeader && err == nil, Self: s.Self, Leader: s.Leader,
		LeaderSince: s.MovedAt, EtcdReachable: s.EtcdUp, EtcdError: s.EtcdErr}
	if !out.Leading && r.follow != nil {
		f := r.follow()
		out.Copy = &server.StandbyCopy{Following: f.Following, Error: f.Err, Revision: f.Rev, EtcdRevision: f.Seen, Resyncs: int64(f.Resyncs)}
	}
	return out
}

// proto is the status as GetQuotaReport carries it (for the dashboard's
// header, which says what the report's does).
func (r *replica) proto() *pb.Cluster {
	s := r.serverStatus()
	role := "standby"
	if s.Leading {
		role = "leader"
	}
	c := &pb.Cluster{Role: role, Self: s.Self, Leader: s.Leader, EtcdReachable: s.EtcdReachable, EtcdError: s.EtcdError,
		StandbyCopy: server.StandbyCopyToPB(s.Copy)}
	if !s.LeaderSince.IsZero() {
		c.LeaderSince = timestamppb.New(s.LeaderSince)
	}
	return c
}

// lead makes b the broker calls go to (nil: none) and sets health.
func (r *replica) lead(b *broker.Broker, sess *etcd.Session) {
	r.mu.Lock()
	r.b, r.sess = b, sess
	srv := r.srv
	r.mu.Unlock()
	if srv != nil {
		srv.SetServing(b != nil)
	}
}

// current returns the broker to call, or the refusal that says where the
// leader is. A leader past its session's deadline refuses too, on its own
// clock, whether or not the controller has stepped down yet.
func (r *replica) current() (*broker.Broker, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.b != nil && r.clock.Now().Before(r.sess.Deadline()) {
		return r.b, nil
	}
	s := r.status
	var msg string
	switch {
	case !s.EtcdUp:
		msg = "no leader: etcd unreachable: " + s.EtcdErr
	case s.Leader != "" && s.Leader != s.Self:
		msg = "this replica (" + s.Self + ") is a standby; the leader is at " + s.Leader
	default:
		msg = "no leader yet: an election is under way in etcd"
	}
	return nil, &broker.Error{Kind: broker.KindUnavailable, Message: msg}
}

func (r *replica) Acquire(ctx context.Context, req broker.AcquireRequest) (broker.Decision, error) {
	b, err := r.current()
	if err != nil {
		return broker.Decision{}, err
	}
	return b.Acquire(ctx, req)
}

func (r *replica) Complete(ctx context.Context, id string, o broker.Outcome, u broker.Usage) (broker.Settlement, error) {
	b, err := r.current()
	if err != nil {
		return broker.Settlement{}, err
	}
	return b.Complete(ctx, id, o, u)
}

func (r *replica) Renew(ctx context.Context, id string, extend time.Duration) (time.Time, error) {
	b, err := r.current()
	if err != nil {
		return time.Time{}, err
	}
	return b.Renew(ctx, id, extend)
}

func (r *replica) ReportThrottle(ctx context.Context, modelID, region, client string) (broker.Key, error) {
	b, err := r.current()
	if err != nil {
		return broker.Key{}, err
	}
	return b.ReportThrottle(ctx, modelID, region, client)
}

// LeaseClient answers "" on a standby: the call itself is refused next.
func (r *replica) LeaseClient(id string) string {
	if b, err := r.current(); err == nil {
		return b.LeaseClient(id)
	}
	return ""
}

// Report is empty on a standby (its header still names the cluster).
func (r *replica) Report(f broker.ReportFilter) ([]broker.BudgetReport, time.Time) {
	if b, err := r.current(); err == nil {
		return b.Report(f)
	}
	return nil, r.clock.Now()
}

// Spend is empty on a standby, as Report is.
func (r *replica) Spend() broker.SpendReport {
	if b, err := r.current(); err == nil {
		return b.Spend()
	}
	return broker.SpendReport{At: r.clock.Now()}
}

// Routes are none on a standby, as budgets are.
func (r *replica) Routes() []broker.RouteInfo {
	if b, err := r.current(); err == nil {
		return b.Routes()
	}
	return nil
}

func (r *replica) Budgets() []broker.BudgetInfo {
	if b, err := r.current(); err == nil {
		return b.Budgets()
	}
	return nil
}

func (r *replica) SetOverride(ctx context.Context, modelID, region string, o broker.Override) (broker.BudgetInfo, error) {
	b, err := r.current()
	if err != nil {
		return broker.BudgetInfo{}, err
	}
	return b.SetOverride(ctx, modelID, region, o)
}

func (r *replica) ResetAdaptive(ctx context.Context, modelID, region string) (broker.BudgetInfo, error) {
	b, err := r.current()
	if err != nil {
		return broker.BudgetInfo{}, err
	}
	return b.ResetAdaptive(ctx, modelID, region)
}

// Activity is empty on a standby, as its Report is.
func (r *replica) Activity(ctx context.Context, f broker.ReportFilter) (map[broker.Key]*broker.Activity, time.Time, error) {
	b, err := r.current()
	if err != nil {
		return nil, r.clock.Now(), nil
	}
	return b.Activity(ctx, f)
}

func (r *replica) History(ctx context.Context, q broker.HistoryQuery) ([]broker.Series, error) {
	b, err := r.current()
	if err != nil {
		return nil, err
	}
	return b.History(ctx, q)
}

// pageSource is the replica as the dashboard reads it: a standby's page
// is empty (its header says where the leader is), not an error.
type pageSource struct{ *replica }

func (p pageSource) History(ctx context.Context, q broker.HistoryQuery) ([]broker.Series, error) {
	b, err := p.current()
	if err != nil {
		return nil, nil
	}
	return b.History(ctx, q)
}

func (r *replica) RefreshNow(ctx context.Context) error {
	b, err := r.current()
	if err != nil {
		return err
	}
	return b.RefreshNow(ctx)
}

func (r *replica) DiscoveryStatus() broker.DiscoveryStatus {
	if b, err := r.current(); err == nil {
		return b.DiscoveryStatus()
	}
	return broker.DiscoveryStatus{}
}

// cluster runs this replica's part: campaign, lead, step down, again.
type cluster struct {
	cli   *clientv3.Client
	store *etcd.Store
	rep   *replica
	clock broker.Clock
	log   *slog.Logger
	ttl   time.Duration
	self  string
	// term opens the broker for a term of leadership and starts its
	// loops on ctx; stop ends them (cmd's Main supplies both).
	term func(ctx context.Context) (*broker.Broker, func(), error)
}

// run campaigns and leads until ctx ends. Main owns it.
func (c *cluster) run(ctx context.Context) {
	for ctx.Err() == nil {
		if err := c.once(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("cluster: not leading", "err", err)
			c.rep.setStatus(func(s *ClusterStatus) {
				s.Role = RoleStandby
				if !errors.Is(err, etcd.ErrNotLeader) {
					s.EtcdUp, s.EtcdErr = false, err.Error()
				}
			})
			t := time.NewTimer(time.Second / 2)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
		}
	}
}

// once is one session: campaign, then lead until the session ends.
func (c *cluster) once(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, c.ttl)
	sess, err := etcd.NewSession(sctx, c.cli, c.clock, etcd.SessionConfig{TTL: c.ttl})
	cancel()
	if err != nil {
		return err
	}
	defer sess.Close()
	c.rep.setStatus(func(s *ClusterStatus) { s.EtcdUp, s.EtcdErr, s.Role = true, "", RoleStandby })
	octx, stopObserve := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopObserve()
	wg.Go(func() { c.observe(octx, sess) })
	// A standby keeps a copy of the state, so that taking over loads
	// from memory (etcd store, follow.go); it ends once the broker has
	// loaded, or with this session.
	fctx, stopFollow := context.WithCancel(ctx)
	var fwg sync.WaitGroup
	fwg.Go(func() { c.store.Follow(fctx) })
	unfollow := sync.OnceFunc(func() { stopFollow(); fwg.Wait() })
	defer unfollow()
	wg.Go(func() {
		// A standby's refusals say at once that etcd is gone, not only
		// once the campaign gives up.
		select {
		case <-sess.Done():
			if ctx.Err() == nil {
				c.rep.setStatus(func(s *ClusterStatus) { s.EtcdUp, s.EtcdErr = false, sess.Err().Error() })
			}
		case <-octx.Done():
		}
	})

	fence, _, err := sess.Campaign(ctx, c.store.ElectionPrefix(), c.self)
	if err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	won := c.clock.Now()
	c.store.Lead(fence)
	defer c.store.Lead(nil)
	tctx, stopTerm := context.WithCancel(ctx)
	b, stop, err := c.term(tctx)
	unfollow()
	if err != nil {
		stopTerm()
		return fmt.Errorf("take over: %w", err)
	}
	c.rep.setStatus(func(s *ClusterStatus) { s.Role, s.Leader = RoleLeader, c.self })
	c.rep.lead(b, sess)
	c.log.Info("cluster: leading", "self", c.self, "session_ttl", sess.TTL(), "fence_rev", fence.Rev,
		"take_over", c.clock.Now().Sub(won), "from_standby_copy", c.store.LoadedFromCopy())
	select {
	case <-ctx.Done():
	case <-sess.Done():
		c.log.Error("cluster: stepping down", "err", sess.Err())
	}
	c.rep.lead(nil, nil)
	c.rep.setStatus(func(s *ClusterStatus) {
		s.Role = RoleStandby
		if s.Leader == c.self {
			s.Leader = ""
		}
		if sess.Err() != nil && ctx.Err() == nil {
			s.EtcdUp, s.EtcdErr = false, sess.Err().Error()
		}
	})
	b.Close()
	stopTerm()
	stop()
	return nil
}

// observe follows the election's leader value for standbys' refusals.
func (c *cluster) observe(ctx context.Context, sess *etcd.Session) {
	for resp := range sess.Observe(ctx, c.store.ElectionPrefix()) {
		if len(resp.Kvs) == 0 {
			continue
		}
		leader := string(resp.Kvs[0].Value)
		c.rep.setStatus(func(s *ClusterStatus) { s.Leader = leader })
	}
}

// openCluster connects to etcd and checks the prefix; the replica it
// returns serves nothing until startCluster's loop wins an election.
func (m *Main) openCluster(ctx context.Context, clock broker.Clock, cfg broker.Config) (*replica, error) {
	f := m.flags
	cli, err := dialEtcd(ctx, f.etcd)
	if err != nil {
		return nil, err
	}
	m.etcdCli = cli
	sctx, cancel := context.WithTimeout(ctx, etcdStartTimeout)
	defer cancel()
	store, err := etcd.Open(sctx, cli, etcd.Options{Prefix: f.etcd.prefix, Cluster: f.etcd.name, Clock: clock})
	if err != nil {
		return nil, etcdCheck(list(f.etcd.endpoints), f.etcd.user, err)
	}
	rep := &replica{clock: clock, follow: store.FollowStatus, status: ClusterStatus{Role: RoleStandby, EtcdUp: true}}
	m.cluster = &cluster{cli: cli, store: store, rep: rep, clock: clock, log: m.log, ttl: f.etcd.ttl}
	m.cluster.term = func(tctx context.Context) (*broker.Broker, func(), error) {
		// Loading and setting budgets are bounded by the session: past
		// its deadline the store refuses anyway.
		b, src, err := m.openBroker(tctx, store, clock, cfg)
		if err != nil {
			if b != nil {
				b.Close()
			}
			return nil, nil, err
		}
		var wg sync.WaitGroup
		wg.Go(func() { b.Run(tctx) })
		if src != nil {
			wg.Go(func() { b.RunRefresh(tctx, src, f.refresh) })
		}
		return b, func() {
			wg.Wait()
			// Closing records of the chunks in use and expiries, while
			// the session may still be ours (fenced: refused otherwise).
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			b.Sweep(sctx)
			cancel()
		}, nil
	}
	return rep, nil
}

// etcdCheck keeps the prefix's own errors as they are and explains the
// others as etcdError does.
func etcdCheck(eps []string, user string, err error) error {
	if errors.Is(err, etcd.ErrForeignPrefix) || errors.Is(err, etcd.ErrOtherCluster) {
		return err
	}
	return etcdError(eps, user, err)
}

// startCluster starts the campaign loop, advertising addr (or --advertise).
func (m *Main) startCluster(addr net.Addr) {
	c := m.cluster
	c.self = cmp.Or(m.flags.etcd.advertise, addr.String())
	c.rep.mu.Lock()
	c.rep.srv = m.srv
	c.rep.status.Self = c.self
	c.rep.mu.Unlock()
	ctx, stop := context.WithCancel(context.Background())
	m.stopCluster, m.clusterDone = stop, make(chan struct{})
	go func() {
		defer close(m.clusterDone)
		c.run(ctx)
	}()
}

// closeCluster shuts a replica down: NOT_SERVING, step down (the leader
// closes its broker, writes what its sweep has, and revokes its session so
// that another replica takes over at once), then stop the servers.
func (m *Main) closeCluster() error {
	if m.srv != nil {
		m.srv.Drain()
	}
	if m.stopCluster != nil {
		m.stopCluster()
		<-m.clusterDone
	}
	if m.srv != nil {
		drainCtx, cancel := context.WithTimeout(context.Background(), m.flags.drain)
		m.srv.Shutdown(drainCtx)
		if m.httpSrv != nil {
			m.httpSrv.Shutdown(drainCtx)
		}
		cancel()
	}
	if m.stopRun != nil {
		m.stopRun()
	}
	m.wg.Wait()
	return m.etcdCli.Close()
}
