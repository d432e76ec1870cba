package quotaclient_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// standby is a cluster replica that does not lead, as the broker's etcd
// mode runs it: a real gRPC server whose standard health service reports
// NOT_SERVING for quotabroker.v1.QuotaBroker and whose QuotaBroker answers
// every call UNAVAILABLE, naming the leader. It counts the QuotaBroker
// calls that reach it.
type standby struct {
	addr   string
	health *health.Server
	leader atomic.Value // string: the address its errors name
	calls  atomic.Int64
	stop   func()
}

func startStandby(t testing.TB, addr, leader string) *standby {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &standby{addr: lis.Addr().String(), health: health.NewServer()}
	s.leader.Store(leader)
	refuse := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !strings.HasPrefix(info.FullMethod, "/"+pb.QuotaBroker_ServiceDesc.ServiceName+"/") {
			return handler(ctx, req)
		}
		s.calls.Add(1)
		return nil, status.Errorf(codes.Unavailable, "this replica is a standby; the leader is %s", s.leader.Load())
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(refuse))
	pb.RegisterQuotaBrokerServer(srv, pb.UnimplementedQuotaBrokerServer{})
	healthpb.RegisterHealthServer(srv, s.health)
	s.health.SetServingStatus(pb.QuotaBroker_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(lis) })
	var once sync.Once
	s.stop = func() {
		once.Do(func() {
			srv.Stop()
			wg.Wait()
		})
	}
	t.Cleanup(s.stop)
	return s
}

// peers counts, per replica address, the calls of one method that
// succeeded there, as the client saw them.
type peers struct {
	mu sync.Mutex // guards n
	n  map[string]int
}

func (p *peers) interceptor(method string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, m string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		var pr peer.Peer
		err := invoker(ctx, m, req, reply, cc, append(opts, grpc.Peer(&pr))...)
		if err == nil && strings.HasSuffix(m, "/"+method) && pr.Addr != nil {
			p.mu.Lock()
			p.n[pr.Addr.String()]++
			p.mu.Unlock()
		}
		return err
	}
}

func (p *peers) snapshot() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.n))
	for k, v := range p.n {
		out[k] = v
	}
	return out
}

// replicaConn connects to addrs through NewConn, reconnecting quickly (a
// replica that comes back is found within tens of milliseconds).
func replicaConn(t testing.TB, addrs string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.5, MaxDelay: 50 * time.Millisecond},
			MinConnectTimeout: time.Second})}, opts...)
	conn, err := quotaclient.NewConn(addrs, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Three replicas; leadership moves twice under load from four callers: the
// leader is killed and a standby takes over, then the new leader steps
// down (its health flips to NOT_SERVING before it stops) and the third
// takes over, while the killed one comes back as a standby. A client with
// the three addresses and a 10 s wait sees no error at all, every lease
// was granted by the replica leading at the time, and no QuotaBroker call
// ever reached a replica that reported NOT_SERVING.
func TestFailoverAcrossReplicasUnderLoad(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	specs := []broker.Spec{spec(t, haiku3, broker.Limits{TPM: 100_000_000})}
	a := startBroker(t, brokerOpts{path: path, specs: specs})
	b := startStandby(t, "", a.addr)
	c := startStandby(t, "", a.addr)
	addrs := []string{a.addr, b.addr, c.addr}

	var granted peers
	granted.n = map[string]int{}
	conn := replicaConn(t, strings.Join(addrs, ","), grpc.WithChainUnaryInterceptor(granted.interceptor("AcquireLease")))
	qc := quotaclient.New(conn, quotaclient.WithName("failover"), quotaclient.WithFailover(), quotaclient.WithWait(10*time.Second))

	// The load: each caller acquires and settles until told to stop, and
	// reports each full call on ok.
	ctx, stopLoad := context.WithCancel(context.Background())
	ok := make(chan struct{}, 1024)
	var errMu sync.Mutex // guards errs
	var errs []error
	var slowest atomic.Int64 // the longest Acquire, in ns: the gap a caller saw
	var load sync.WaitGroup
	for range 4 {
		load.Go(func() {
			for ctx.Err() == nil {
				start := time.Now()
				l, err := qc.Acquire(ctx, quotaclient.Request{ModelID: haiku3, InputTokens: 10, MaxOutputTokens: 10})
				for took := int64(time.Since(start)); ; {
					if s := slowest.Load(); took <= s || slowest.CompareAndSwap(s, took) {
						break
					}
				}
				if err == nil {
					err = l.Complete(ctx, quotaclient.OutcomeSuccess, quotaclient.Usage{InputTokens: 10, OutputTokens: 5})
				}
				if err != nil {
					if ctx.Err() != nil {
						return // the test ended the load
					}
					errMu.Lock()
					errs = append(errs, err)
					errMu.Unlock()
					continue
				}
				select {
				case ok <- struct{}{}:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	t.Cleanup(func() { stopLoad(); load.Wait() })
	// calls waits for n more full calls (bounded, so a stuck client fails
	// the test instead of hanging it).
	calls := func(phase string, n int) {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for range n {
			select {
			case <-ok:
			case <-timeout:
				t.Fatalf("%s: fewer than %d calls completed within 20s", phase, n)
			}
		}
	}

	calls("A leads", 50)

	// Kill the leader; B takes over on its own address (B's standby
	// process is replaced by a leader on the same state, as a replica
	// that wins the election starts serving).
	a.stop()
	b.stop()
	bLead := startBroker(t, brokerOpts{path: path, addr: b.addr})
	c.leader.Store(b.addr)
	calls("B leads after A was killed", 50)

	// A comes back, as a standby.
	aBack := startStandby(t, a.addr, b.addr)
	calls("B leads, A is a standby again", 50)

	// B steps down: NOT_SERVING first, so that clients leave it, then it
	// stops; C takes over.
	bLead.srv.Drain()
	bLead.stop()
	c.stop()
	startBroker(t, brokerOpts{path: path, addr: c.addr})
	aBack.leader.Store(c.addr)
	calls("C leads after B stepped down", 50)

	stopLoad()
	load.Wait()

	errMu.Lock()
	defer errMu.Unlock()
	for i, err := range errs {
		if i == 5 {
			t.Errorf("... %d errors in all", len(errs))
			break
		}
		t.Errorf("a call failed during the failovers: %v", err)
	}
	for name, s := range map[string]*standby{"B as a standby": b, "C as a standby": c, "A back as a standby": aBack} {
		if n := s.calls.Load(); n != 0 {
			t.Errorf("%s (NOT_SERVING) received %d QuotaBroker calls", name, n)
		}
	}
	got := granted.snapshot()
	t.Logf("leases granted per replica %v; the longest Acquire took %s", got, time.Duration(slowest.Load()))
	for _, addr := range addrs {
		if got[addr] == 0 {
			t.Errorf("no lease granted by %s while it led: %v", addr, got)
		}
	}
	if len(got) != 3 {
		t.Errorf("leases granted by %v, want only the three replicas %v", got, addrs)
	}
}

// A replica whose health still says SERVING but which no longer leads (a
// deposed leader in the moment before its health flips) answers
// UNAVAILABLE naming the leader. Without WithFailover the caller sees that
// error; with it acquiring, renewing and settling move to the other
// replica and succeed.
func TestFailoverRetriesAStandbyThatStillClaimsToServe(t *testing.T) {
	t.Parallel()
	leader := startBroker(t, brokerOpts{specs: []broker.Spec{spec(t, haiku3, broker.Limits{TPM: 100_000_000})}})
	stale := startStandby(t, "", leader.addr)
	stale.health.SetServingStatus(pb.QuotaBroker_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	conn := replicaConn(t, stale.addr+","+leader.addr)
	ctx := context.Background()
	req := quotaclient.Request{ModelID: haiku3, InputTokens: 10, MaxOutputTokens: 10}

	// round_robin alternates between the two once both are READY, so a
	// plain client meets the stale replica within a few calls.
	plain := quotaclient.New(conn, quotaclient.WithName("plain"))
	var seen error
	for range 200 {
		l, err := plain.Acquire(ctx, req)
		if err == nil {
			err = l.Complete(ctx, quotaclient.OutcomeSuccess, quotaclient.Usage{InputTokens: 10})
		}
		if err != nil {
			seen = err
			break
		}
	}
	if !errors.Is(seen, quotaclient.ErrUnavailable) || !strings.Contains(seen.Error(), "the leader is "+leader.addr) {
		t.Fatalf("without failover, 200 calls over the stale replica and the leader: %v, want UNAVAILABLE naming %s", seen, leader.addr)
	}

	before := stale.calls.Load()
	fo := quotaclient.New(conn, quotaclient.WithName("failover"), quotaclient.WithFailover(), quotaclient.WithWait(10*time.Second))
	for i := range 20 {
		l, err := fo.Acquire(ctx, req)
		if err != nil {
			t.Fatalf("call %d with failover: %v", i, err)
		}
		if _, err := l.Renew(ctx, time.Minute); err != nil {
			t.Fatalf("renewing call %d with failover: %v", i, err)
		}
		if err := l.Complete(ctx, quotaclient.OutcomeSuccess, quotaclient.Usage{InputTokens: 10}); err != nil {
			t.Fatalf("settling call %d with failover: %v", i, err)
		}
		if err := fo.ReportThrottle(ctx, haiku3, "", "a throttle seen mid-stream"); err != nil {
			t.Fatalf("reporting a throttle after call %d with failover: %v", i, err)
		}
	}
	// The retries did meet the stale replica: half the picks land on it.
	if stale.calls.Load() == before {
		t.Fatal("20 calls with failover never met the stale replica; the test shows nothing")
	}
}

// With no replica serving, a call ends by its wait or its ctx, whichever
// comes first, with the last UNAVAILABLE (naming the leader the standby
// believes in) or the ctx's error, and never runs past either.
func TestFailoverGivesUpWithinTheWait(t *testing.T) {
	t.Parallel()
	s1 := startStandby(t, "", "127.0.0.1:1")
	s2 := startStandby(t, "", "127.0.0.1:1")
	// A standby that says SERVING, so that calls reach it and are refused,
	// rather than failing before they leave the client.
	s2.health.SetServingStatus(pb.QuotaBroker_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	conn := replicaConn(t, s1.addr+","+s2.addr)
	req := quotaclient.Request{ModelID: haiku3, InputTokens: 10}

	const wait = 500 * time.Millisecond
	qc := quotaclient.New(conn, quotaclient.WithFailover(), quotaclient.WithWait(wait), quotaclient.WithBrokerTimeout(time.Second))
	start := time.Now()
	_, err := qc.Acquire(context.Background(), req)
	took := time.Since(start)
	if !errors.Is(err, quotaclient.ErrUnavailable) || !strings.Contains(err.Error(), "no broker replica served within 500ms") ||
		!strings.Contains(err.Error(), "the leader is 127.0.0.1:1") {
		t.Fatalf("no replica serving, wait %s: %v", wait, err)
	}
	// The last retry starts before the wait is over; its answer may take
	// the broker timeout.
	if took > wait+time.Second {
		t.Fatalf("gave up after %s, beyond the wait %s and the broker timeout", took, wait)
	}
	if n := s2.calls.Load(); n < 2 {
		t.Fatalf("the refusing replica saw %d calls in %s, want retries", n, took)
	}
	if n := s1.calls.Load(); n != 0 {
		t.Fatalf("the NOT_SERVING replica saw %d calls", n)
	}

	// A ctx deadline shorter than the wait ends the retries.
	qc = quotaclient.New(conn, quotaclient.WithFailover(), quotaclient.WithWait(10*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = qc.Acquire(ctx, req)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ctx deadline 300ms before the 10s wait: %v", err)
	}
	if dl, _ := ctx.Deadline(); time.Since(dl) > time.Second {
		t.Fatalf("returned %s after the ctx deadline", time.Since(dl))
	}
}

func TestNewConnRejectsBadAddressLists(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ target, want string }{
		{"", "empty"},
		{"127.0.0.1:1,,127.0.0.1:2", "an empty address"},
		{"127.0.0.1", "want host:port"},
		{"127.0.0.1:1,127.0.0.1:1", "127.0.0.1:1 twice"},
	} {
		conn, err := quotaclient.NewConn(tc.target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err == nil {
			conn.Close()
			t.Errorf("NewConn(%q) accepted it", tc.target)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewConn(%q): %v, want it to say %q", tc.target, err, tc.want)
		}
	}
	// Without credentials gRPC refuses, and the error names the target.
	if _, err := quotaclient.NewConn("127.0.0.1:1,127.0.0.1:2"); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1,127.0.0.1:2") {
		t.Errorf("NewConn without credentials: %v", err)
	}
}

// A target with a scheme goes through gRPC's own resolver (dns:///,
// passthrough:///) with the same health-checked service config.
func TestNewConnWithAResolverTarget(t *testing.T) {
	t.Parallel()
	leader := startBroker(t, brokerOpts{specs: []broker.Spec{spec(t, haiku3, broker.Limits{TPM: 100_000_000})}})
	qc := quotaclient.New(replicaConn(t, "dns:///"+leader.addr), quotaclient.WithFailover())
	l, err := qc.Acquire(context.Background(), quotaclient.Request{ModelID: haiku3, InputTokens: 10, MaxOutputTokens: 10})
	if err != nil {
		t.Fatalf("dns:///%s: %v", leader.addr, err)
	}
	if err := l.Complete(context.Background(), quotaclient.OutcomeSuccess, quotaclient.Usage{InputTokens: 10}); err != nil {
		t.Fatal(err)
	}

	// A NOT_SERVING replica behind passthrough:/// is never called: the
	// call waits for it to serve, then gives up with its wait.
	s := startStandby(t, "", leader.addr)
	qc = quotaclient.New(replicaConn(t, "passthrough:///"+s.addr), quotaclient.WithFailover(), quotaclient.WithWait(300*time.Millisecond))
	if _, err := qc.Acquire(context.Background(), quotaclient.Request{ModelID: haiku3, InputTokens: 10}); !errors.Is(err, quotaclient.ErrUnavailable) {
		t.Fatalf("only a NOT_SERVING replica: %v, want ErrUnavailable", err)
	}
	if n := s.calls.Load(); n != 0 {
		t.Fatalf("the NOT_SERVING replica received %d calls", n)
	}
}
