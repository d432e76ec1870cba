package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/etcdtest"
)

// These tests run a three-member etcd cluster and three broker replicas as
// real processes on loopback, and check from the callers' side what
// broker/doc.go promises of a cluster: a standby serves within 5 s of the
// leader's death, no 60 s interval holds more grants than the RPM limit and
// no more leases run at once than the concurrency limit across all lives, a
// paused leader that resumes grants nothing and writes nothing, and losing
// etcd's quorum stops every replica from granting, with UNAVAILABLE that
// names etcd, until it returns.

// clusterTTL is the replicas' session TTL in these tests: the default.
// With 2 s a replica sometimes stepped down when the etcd member that led
// died, on this loaded machine: its deadline (1.7 s after the last renewal
// sent) came before etcd had elected another leader.
const clusterTTL = 3 * time.Second

type clusterRig struct {
	t       *testing.T
	etcd    *etcdtest.Cluster
	args    []string
	procs   []*proc
	clients []pb.QuotaBrokerClient
	health  []healthpb.HealthClient
	prefix  string
}

func startClusterRig(t *testing.T, rpm, concurrency int) *clusterRig {
	t.Helper()
	if testing.Short() {
		t.Skip("starts real processes")
	}
	ec := etcdtest.Start(t, 3)
	dir := t.TempDir()
	budgets := writeBudget(t, dir, fmt.Sprintf(`"rpm":%d,"tpm":1000000000,"concurrency":%d`, rpm, concurrency))
	r := &clusterRig{t: t, etcd: ec, prefix: "/qb-test/",
		args: []string{"serve", "--listen", "127.0.0.1:0", "--etcd", ec.Endpoints(), "--etcd-prefix", "/qb-test/",
			"--etcd-ttl", clusterTTL.String(), "--budgets", budgets, "--http", "127.0.0.1:0", "--margin", "1", "--lease-ttl", "3s", "--log-level", "info"}}
	for range 3 {
		p := startBroker(t, r.args...)
		conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		r.procs = append(r.procs, p)
		r.clients = append(r.clients, pb.NewQuotaBrokerClient(conn))
		r.health = append(r.health, healthpb.NewHealthClient(conn))
	}
	return r
}

// etcdRoles returns a follower and the leader among the etcd members.
func (r *clusterRig) etcdRoles() (follower, leader int) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(r.etcd.Endpoints(), ","), Logger: zap.NewNop()})
	if err != nil {
		r.t.Fatal(err)
	}
	defer cli.Close()
	follower, leader = -1, -1
	for i, m := range r.etcd.Members {
		st, err := cli.Status(ctx, m.ClientURL)
		if err != nil {
			r.t.Fatal(err)
		}
		if st.Leader == st.Header.MemberId {
			leader = i
		} else {
			follower = i
		}
	}
	if leader < 0 || follower < 0 {
		r.t.Fatalf("etcd members: leader %d, a follower %d", leader, follower)
	}
	return follower, leader
}

// metrics returns replica i's /metrics page.
func (r *clusterRig) metrics(i int) string { return r.http(i, "/metrics") }

// http returns the page at path of replica i's HTTP listener.
func (r *clusterRig) http(i int, path string) string {
	r.t.Helper()
	out := r.procs[i].output()
	_, rest, ok := strings.Cut(out, "metrics on ")
	if !ok {
		r.t.Fatalf("replica %d printed no metrics address:\n%s", i, out)
	}
	url, _, _ := strings.Cut(rest, "\n")
	resp, err := http.Get(strings.TrimSuffix(url, "/metrics") + path)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	return string(b)
}

// serving reports whether replica i says it serves the QuotaBroker.
func (r *clusterRig) serving(i int) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	resp, err := r.health[i].Check(ctx, &healthpb.HealthCheckRequest{Service: pb.QuotaBroker_ServiceDesc.ServiceName})
	return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
}

// leader waits until exactly one of the replicas not in skip serves and
// returns it.
func (r *clusterRig) leader(limit time.Duration, skip ...int) int {
	r.t.Helper()
	found := -1
	waitFor(r.t, limit, "a replica serving", func() bool {
		found = -1
		n := 0
		for i := range r.procs {
			if !slices.Contains(skip, i) && r.serving(i) {
				found, n = i, n+1
			}
		}
		return n == 1
	})
	return found
}

// load is paced callers that follow the leader the simplest way: on
// UNAVAILABLE (or no answer) try the next replica. It keeps, across all
// lives, what a checker needs.
type load struct {
	r    *clusterRig
	stop chan struct{}
	wg   sync.WaitGroup

	mu        sync.Mutex
	grantedAt []time.Time // the broker's grant times, as answered
	by        []int       // the replica that answered each
	received  []time.Time // when the caller had it
	unknown   []string    // settlements a later leader did not know
	errs      []error     // unexpected errors

	held, maxHeld, refused atomic.Int64
}

func (r *clusterRig) startLoad(callers int) *load {
	l := &load{r: r, stop: make(chan struct{})}
	for i := range callers {
		l.wg.Go(func() { l.caller(i) })
	}
	r.t.Cleanup(l.halt)
	return l
}

func (l *load) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

func (l *load) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

// call runs fn against replica *at, moving on to the next replica while
// the answer is UNAVAILABLE or none comes in time.
func (l *load) call(at *int, fn func(ctx context.Context, c pb.QuotaBrokerClient) error) error {
	for !l.stopped() {
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		err := fn(ctx, l.r.clients[*at])
		cancel()
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded:
			*at = (*at + 1) % len(l.r.clients)
			time.Sleep(20 * time.Millisecond) // pace the search for the leader
			continue
		}
		return err
	}
	return errors.New("stopped")
}

func (l *load) caller(i int) {
	at := i % len(l.r.clients)
	for !l.stopped() {
		var lease *pb.Lease
		from := 0
		err := l.call(&at, func(ctx context.Context, c pb.QuotaBrokerClient) error {
			resp, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: crashModel, InputTokens: 100, MaxOutputTokens: 100,
				Wait: durationpb.New(500 * time.Millisecond)})
			lease, from = resp.GetLease(), at
			return err
		})
		switch {
		case l.stopped():
			return
		case status.Code(err) == codes.ResourceExhausted:
			l.refused.Add(1)
			time.Sleep(50 * time.Millisecond)
			continue
		case err != nil:
			l.fail(fmt.Errorf("acquire: %w", err))
			return
		}
		h := l.held.Add(1)
		for m := l.maxHeld.Load(); h > m && !l.maxHeld.CompareAndSwap(m, h); m = l.maxHeld.Load() {
		}
		l.mu.Lock()
		l.grantedAt = append(l.grantedAt, lease.GetGrantedAt().AsTime())
		l.by = append(l.by, from)
		l.received = append(l.received, time.Now())
		l.mu.Unlock()
		time.Sleep(time.Duration(20+i*10) * time.Millisecond) // the simulated Bedrock call
		l.held.Add(-1)
		err = l.call(&at, func(ctx context.Context, c pb.QuotaBrokerClient) error {
			_, err := c.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: lease.GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS,
				Usage: &pb.Usage{InputTokens: 100, OutputTokens: 20}})
			return err
		})
		switch status.Code(err) {
		case codes.OK, codes.FailedPrecondition: // settled, or expired meanwhile
		case codes.NotFound:
			l.mu.Lock()
			l.unknown = append(l.unknown, lease.GetLeaseId())
			l.mu.Unlock()
		default:
			if !l.stopped() {
				l.fail(fmt.Errorf("complete: %w", err))
			}
		}
	}
}

func (l *load) fail(err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

func (l *load) grants() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.grantedAt)
}

// firstGrantAfter is when a caller first received a grant after t.
func (l *load) firstGrantAfter(t time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.received {
		if r.After(t) {
			return r, true
		}
	}
	return time.Time{}, false
}

// reachLimit waits until the callers have run into the RPM limit from
// now on: refusals (the new leader counts the old one's grants, and its
// chunks in full, so this can come before rpm grants were seen).
func (l *load) reachLimit(t *testing.T) {
	t.Helper()
	r0 := l.refused.Load()
	deadline := time.Now().Add(30 * time.Second)
	for l.refused.Load() < r0+20 {
		if time.Now().After(deadline) {
			l.halt()
			t.Fatalf("the callers did not reach the limit in 30 s: %d grants, %d refusals, errors %v", l.grants(), l.refused.Load(), l.errs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// check halts the load and checks the limits over all lives.
func (l *load) check(t *testing.T, rpm, concurrency int) {
	t.Helper()
	l.halt()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, err := range l.errs {
		t.Error(err)
	}
	if len(l.unknown) > 0 {
		t.Errorf("%d leases granted to callers were unknown to a later leader, e.g. %s", len(l.unknown), l.unknown[0])
	}
	ts := slices.Clone(l.grantedAt)
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	most := 0
	for i, j := 0, 0; j < len(ts); j++ {
		for ts[j].Sub(ts[i]) >= time.Minute {
			i++
		}
		most = max(most, j-i+1)
	}
	t.Logf("%d grants, %d refusals; most in a minute %d (limit %d); at most %d held at once (limit %d)",
		len(ts), l.refused.Load(), most, rpm, l.maxHeld.Load(), concurrency)
	if most > rpm {
		t.Errorf("%d grants within a minute; the limit is %d", most, rpm)
	}
	if m := l.maxHeld.Load(); m > int64(concurrency) {
		t.Errorf("callers held %d leases at once; the concurrency limit is %d", m, concurrency)
	}
	if l.refused.Load() == 0 {
		t.Error("no refusal: the load never reached the limit, so the check proves little")
	}
}

// TestClusterLeaderKill kills the leader with SIGKILL under load from
// several callers: a standby serves within 5 s, the limits hold across both
// lives, and every lease a caller received is known to the new leader.
func TestClusterLeaderKill(t *testing.T) {
	const rpm, concurrency = 600, 6
	r := startClusterRig(t, rpm, concurrency)
	lead := r.leader(15 * time.Second)
	l := r.startLoad(10)
	waitFor(t, 30*time.Second, "grants from the first leader", func() bool { return l.grants() >= 100 })
	gc := startGoClient(t, r)
	waitFor(t, 10*time.Second, "a grant to the Go client", func() bool { return gc.grants.Load() > 0 })
	killed := time.Now()
	if err := r.procs[lead].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-r.procs[lead].done
	before := gc.grants.Load()
	next := r.leader(10*time.Second, lead)
	var served time.Time
	waitFor(t, 10*time.Second, "a grant after the kill", func() bool {
		var ok bool
		served, ok = l.firstGrantAfter(killed)
		return ok
	})
	waitFor(t, 15*time.Second, "grants to the Go client from the new leader", func() bool { return gc.grants.Load() >= before+3 })
	gc.stop(t)
	gap := served.Sub(killed)
	t.Logf("leader %d killed; replica %d leads; first grant after the kill %v later", lead, next, gap.Round(time.Millisecond))
	if gap > 5*time.Second {
		t.Errorf("the failover took %v; the promise is 5 s", gap)
	}
	// The report shows the cluster from both sides.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	standby := 3 - lead - next
	for i, role := range map[int]string{next: "leader", standby: "standby"} {
		rep, err := r.clients[i].GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
		if err != nil {
			t.Fatal(err)
		}
		c := rep.GetCluster()
		if c.GetRole() != role || c.GetSelf() != r.procs[i].addr || c.GetLeader() != r.procs[next].addr || !c.GetEtcdReachable() ||
			!c.GetLeaderSince().AsTime().After(killed) {
			t.Errorf("replica %d reports the cluster as %v; want role %s, leader %s since after the kill, etcd reachable", i, c, role, r.procs[next].addr)
		}
		if role == "standby" && len(rep.GetBudgets()) != 0 {
			t.Errorf("a standby reported %d budgets", len(rep.GetBudgets()))
		}
		// A standby keeps a copy of the state to take over from; the
		// leader has none.
		if sc := c.GetStandbyCopy(); (role == "standby") != sc.GetFollowing() || (role == "leader") != (sc == nil) {
			t.Errorf("replica %d, the %s, reports its copy of the state as %v", i, role, sc)
		}
	}
	if out := r.procs[next].output(); !strings.Contains(out, "from_standby_copy=true") {
		t.Errorf("the new leader did not take over from its copy of the state:\n%s", out)
	}
	if page := r.http(standby, "/dashboard"); !strings.Contains(page, "cluster: "+r.procs[standby].addr+" is the standby; leader "+r.procs[next].addr) {
		t.Errorf("the standby's dashboard does not say what it is:\n%.2000s", page)
	}
	metrics := r.metrics(standby)
	for _, want := range []string{
		`quotabroker_cluster_leader{leader="` + r.procs[next].addr + `",self="` + r.procs[standby].addr + `"} 0`,
		"quotabroker_cluster_etcd_up 1", "quotabroker_cluster_leader_change_timestamp_seconds ", "quotabroker_cluster_standby_lag_revisions ",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("the standby's /metrics lack %q", want)
		}
	}
	if want := `quotabroker_cluster_leader{leader="` + r.procs[next].addr + `",self="` + r.procs[next].addr + `"} 1`; !strings.Contains(r.metrics(next), want) {
		t.Errorf("the leader's /metrics lack %q", want)
	}
	var out strings.Builder
	if err := run(ctx, []string{"report", "--addr", r.procs[standby].addr}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if want := "cluster: " + r.procs[standby].addr + " is the standby; leader " + r.procs[next].addr; !strings.Contains(out.String(), want) {
		t.Errorf("report's header:\n%s\nwant %q", out.String(), want)
	}
	if !strings.Contains(out.String(), "; copy of the state ") {
		t.Errorf("report's header does not say how far the standby's copy of the state is:\n%s", out.String())
	}
	// Run the new leader into the limit, then check.
	l.reachLimit(t)
	l.check(t, rpm, concurrency)
}

// TestClusterPausedLeader stops the leader (SIGSTOP) for longer than its
// session TTL, lets another replica take over, and resumes it: the old
// leader answers nothing but UNAVAILABLE, reports NOT_SERVING, and etcd
// accepts none of its writes (the chunks of its term are as the new leader
// left them), and the limits hold.
func TestClusterPausedLeader(t *testing.T) {
	const rpm, concurrency = 600, 6
	r := startClusterRig(t, rpm, concurrency)
	lead := r.leader(15 * time.Second)
	l := r.startLoad(10)
	waitFor(t, 30*time.Second, "grants from the first leader", func() bool { return l.grants() >= 100 })
	paused := time.Now()
	if err := r.procs[lead].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer r.procs[lead].cmd.Process.Signal(syscall.SIGCONT)
	next := r.leader(10*time.Second, lead)
	waitFor(t, 10*time.Second, "a grant from the new leader", func() bool { _, ok := l.firstGrantAfter(paused); return ok })
	// The new leader has loaded the old term's chunks and closed them (its
	// first commit). Note each one's revision: a write from the old leader
	// would change it.
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(r.etcd.Endpoints(), ","), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	oldChunks := func() map[string]int64 {
		resp, err := cli.Get(ctx, r.prefix+"chunks/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]int64{}
		for _, kv := range resp.Kvs {
			var c broker.ChunkRecord
			if err := json.Unmarshal(kv.Value, &c); err != nil {
				t.Fatal(err)
			}
			if c.Start.Before(paused) {
				m[string(kv.Key)] = kv.ModRevision
			}
		}
		return m
	}
	waitFor(t, 5*time.Second, "the old term's chunks closed by the new leader", func() bool {
		resp, err := cli.Get(ctx, r.prefix+"chunks/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			var c broker.ChunkRecord
			json.Unmarshal(kv.Value, &c)
			if c.Start.Before(paused) && !c.Closed {
				return false
			}
		}
		return true
	})
	before := oldChunks()
	if len(before) == 0 {
		t.Fatal("no chunk of the old leader's term in etcd: the test did not exercise escrow")
	}
	// Paused for longer than the TTL, as the test's name promises (the
	// takeover may come sooner: etcd counts the TTL from the last renewal).
	time.Sleep(time.Until(paused.Add(clusterTTL)))
	resumed := time.Now()
	if err := r.procs[lead].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// At once, on its own clock, the old leader refuses.
	_, err = r.clients[lead].AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: crashModel, InputTokens: 1, MaxOutputTokens: 1})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("the resumed old leader answered AcquireLease with %v, want UNAVAILABLE", err)
	}
	waitFor(t, 5*time.Second, "the old leader stepping down", func() bool {
		return !r.serving(lead) && strings.Contains(r.procs[lead].output(), "cluster: stepping down")
	})
	// Its sweep has run (every 250 ms by default) and tried to close its
	// chunks: etcd must have refused every write.
	waitFor(t, 5*time.Second, "the old leader's refused write", func() bool {
		return strings.Contains(r.procs[lead].output(), "does not lead the cluster")
	})
	after := oldChunks()
	for k, rev := range before {
		if after[k] != rev {
			t.Errorf("chunk %s was written after the old leader resumed (revision %d, was %d)", k, after[k], rev)
		}
	}
	if !r.serving(next) {
		t.Errorf("replica %d no longer leads after the old leader resumed", next)
	}
	l.mu.Lock()
	for i, at := range l.received {
		if l.by[i] == lead && at.After(resumed) {
			t.Errorf("the resumed old leader granted a lease at %v", at)
		}
	}
	l.mu.Unlock()
	l.reachLimit(t)
	l.check(t, rpm, concurrency)
}

// TestClusterEtcdQuorum kills one etcd member, a follower (grants keep
// flowing, without a failover), then etcd's leader (quorum lost: within the
// session TTL every replica refuses with UNAVAILABLE naming etcd), then
// restores both: service resumes by itself.
func TestClusterEtcdQuorum(t *testing.T) {
	const rpm, concurrency = 6000, 6
	r := startClusterRig(t, rpm, concurrency)
	lead := r.leader(15 * time.Second)
	l := r.startLoad(6)
	waitFor(t, 30*time.Second, "grants", func() bool { return l.grants() >= 50 })

	// A follower: killing etcd's leader stalls every write for etcd's own
	// election (1 to 2 s on this loaded machine), which the replica may
	// not survive within its TTL; that case is the second kill's.
	follower, etcdLeader := r.etcdRoles()
	r.etcd.Members[follower].Kill()
	n := l.grants()
	for deadline := time.Now().Add(5 * time.Second); l.grants() < n+50; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			l.mu.Lock()
			errs := l.errs
			l.mu.Unlock()
			t.Fatalf("with one etcd member down, %d grants in 5 s (errors %v); the leader's log:\n%s", l.grants()-n, errs, r.procs[lead].output())
		}
	}
	// Without a failover: the leader kept its session.
	if !r.serving(lead) || strings.Contains(r.procs[lead].output(), "cluster: stepping down") {
		t.Errorf("the leader stepped down when one of three etcd members died:\n%s", r.procs[lead].output())
	}

	r.etcd.Members[etcdLeader].Kill()
	lost := time.Now()
	// Every replica refuses, each on its own clock, within the TTL.
	var said []string
	quiet := func() bool {
		said = said[:0]
		for i := range r.procs {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			_, err := r.clients[i].AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: crashModel, InputTokens: 1, MaxOutputTokens: 1})
			cancel()
			said = append(said, fmt.Sprint(err))
			if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "etcd") {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(clusterTTL + time.Second); !quiet(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not every replica refuses with UNAVAILABLE naming etcd %v after quorum was lost: %q", time.Since(lost), said)
		}
	}
	stoppedIn := time.Since(lost)
	l.mu.Lock()
	var late []time.Time
	for _, at := range l.received {
		if at.Sub(lost) > clusterTTL {
			late = append(late, at)
		}
	}
	l.mu.Unlock()
	if len(late) > 0 {
		t.Errorf("%d grants more than the TTL after quorum was lost, e.g. at %v", len(late), late[0].Sub(lost))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err := r.clients[0].AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: crashModel, InputTokens: 1, MaxOutputTokens: 1})
	cancel()
	t.Logf("quorum lost: every replica refused %v later: %v", stoppedIn.Round(time.Millisecond), err)

	restored := time.Now()
	r.etcd.Members[follower].Start(t)
	r.etcd.Members[etcdLeader].Start(t)
	waitFor(t, 20*time.Second, "grants after quorum returned", func() bool { _, ok := l.firstGrantAfter(restored); return ok })
	at, _ := l.firstGrantAfter(restored)
	t.Logf("quorum restored: first grant %v later", at.Sub(restored).Round(time.Millisecond))
	l.halt()
	l.mu.Lock()
	for _, err := range l.errs {
		t.Error(err)
	}
	l.mu.Unlock()
}

// TestClusterStartErrors: what a replica says when it cannot join.
func TestClusterStartErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real etcd")
	}
	ec := etcdtest.Start(t, 1)
	eps := ec.Endpoints()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{eps}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/app/config", "someone else's"); err != nil {
		t.Fatal(err)
	}
	// A first cluster "a" claims /qb/.
	if err := run(ctx, []string{"serve", "--etcd", eps, "--etcd-prefix", "/qb/", "--etcd-cluster", "a", "--listen", "256.0.0.1:1"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "listen on") {
		t.Fatalf("cluster a's first replica: %v", err)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"etcd unreachable", []string{"--etcd", dead}, []string{"etcd unreachable at " + dead + " (--etcd)", "connection refused"}},
		{"someone else's prefix", []string{"--etcd", eps, "--etcd-prefix", "/app"}, []string{`etcd prefix "/app/"`, "not a quota broker's", "1 keys and no format key"}},
		{"two clusters on one prefix", []string{"--etcd", eps, "--etcd-prefix", "/qb/", "--etcd-cluster", "b"}, []string{`it holds cluster "a", this replica is of cluster "b"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(ctx, append([]string{"serve", "--listen", "127.0.0.1:0"}, tc.args...), io.Discard, io.Discard)
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Fatalf("got %v, want an error containing %q", err, w)
				}
			}
		})
	}
	t.Run("wrong credentials", func(t *testing.T) {
		if _, err := cli.RoleAdd(ctx, "root"); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.UserAdd(ctx, "root", "right"); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.AuthEnable(ctx); err != nil {
			t.Fatal(err)
		}
		err := run(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--etcd", eps, "--etcd-prefix", "/qb/", "--etcd-cluster", "a",
			"--etcd-user", "root", "--etcd-password", "wrong"}, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), `refused user "root" (--etcd-user, --etcd-password)`) {
			t.Fatalf("got %v, want etcd's refusal of the credentials", err)
		}
	})
}

// goClient is the Go client as a service runs it against a cluster: the
// three replicas' addresses (NewConn: health-checked, so calls go to the
// serving one), WithFailover and a 10 s wait. It acquires and settles in a
// loop until stopped.
type goClient struct {
	grants atomic.Int64
	done   chan struct{}
	quit   chan struct{}
	mu     sync.Mutex
	errs   []error
}

func startGoClient(t *testing.T, r *clusterRig) *goClient {
	t.Helper()
	var addrs []string
	for _, p := range r.procs {
		addrs = append(addrs, p.addr)
	}
	conn, err := quotaclient.NewConn(strings.Join(addrs, ","), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	qc := quotaclient.New(conn, quotaclient.WithName("go-client"), quotaclient.WithFailover(), quotaclient.WithWait(10*time.Second))
	g := &goClient{done: make(chan struct{}), quit: make(chan struct{})}
	go func() {
		defer close(g.done)
		for {
			select {
			case <-g.quit:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			l, err := qc.Acquire(ctx, quotaclient.Request{ModelID: crashModel, Region: "us-east-1", InputTokens: 10, MaxOutputTokens: 10})
			if err == nil {
				g.grants.Add(1)
				err = l.Complete(ctx, quotaclient.OutcomeSuccess, quotaclient.Usage{InputTokens: 10, OutputTokens: 5})
			}
			cancel()
			if err != nil {
				g.mu.Lock()
				g.errs = append(g.errs, err)
				g.mu.Unlock()
			}
		}
	}()
	return g
}

// stop ends the loop and fails t if the client saw any error.
func (g *goClient) stop(t *testing.T) {
	t.Helper()
	close(g.quit)
	<-g.done
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.errs) > 0 {
		t.Errorf("the Go client with the three replicas and a 10 s wait saw %d errors across the failover; the first: %v", len(g.errs), g.errs[0])
		return
	}
	t.Logf("the Go client: %d grants across the failover, no error", g.grants.Load())
}
