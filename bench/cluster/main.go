// Command cluster measures the broker cluster on etcd against the
// single-node broker in the same run, with real processes on loopback: a
// three-member etcd (etcd's default timeouts, fsync on) and three
// `quota-broker serve --etcd` replicas, against one `quota-broker serve` on
// a bbolt file. It prints
//
//   - AcquireLease alone, then AcquireLease + CompleteLease pairs, at
//     -concurrency callers: calls (or pairs) per second and AcquireLease's
//     p50/p99, for the single node and the cluster's leader (clients call
//     the leader, as health-checking clients do), and their ratio;
//   - the failover gap over -kills kills: SIGKILL of the leader while a
//     caller tries every 10 ms, until a replica grants again; median and
//     max. The killed replica is restarted before the next kill.
//
// It builds quota-broker from this checkout and needs .bin/etcd
// (bash .ci/tools.sh).
//
//	go run ./bench/cluster -duration 3s -rounds 3 -concurrency 50 -kills 10
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bedrockqb/quotabroker/broker/etcd"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/etcdtest"
)

const model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "cluster bench:", err)
		os.Exit(1)
	}
}

// broker is one quota-broker process.
type broker struct {
	args   []string
	cmd    *exec.Cmd
	addr   string
	conn   *grpc.ClientConn
	qb     pb.QuotaBrokerClient
	health healthpb.HealthClient
	done   chan struct{}
}

func start(bin string, args []string, logTo string) (*broker, error) {
	b := &broker{args: args}
	return b, b.start(bin, logTo)
}

func (b *broker) start(bin, logTo string) error {
	cmd := exec.Command(bin, b.args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	log, err := os.OpenFile(logTo, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		log.Close()
		return err
	}
	b.cmd, b.done = cmd, make(chan struct{})
	addr := make(chan string, 1)
	go func() { // ends when the process does
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "quota-broker listening on "); ok {
				addr <- strings.Fields(a)[0]
			}
		}
		io.Copy(io.Discard, out)
		cmd.Wait()
		log.Close()
		close(b.done)
	}()
	select {
	case b.addr = <-addr:
	case <-b.done:
		tail, _ := os.ReadFile(logTo)
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return fmt.Errorf("quota-broker %v exited before listening (log %s):\n%s", b.args, logTo, tail)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("quota-broker did not listen in 30s (log %s)", logTo)
	}
	if b.conn != nil {
		b.conn.Close()
	}
	conn, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	b.conn, b.qb, b.health = conn, pb.NewQuotaBrokerClient(conn), healthpb.NewHealthClient(conn)
	return nil
}

func (b *broker) kill() {
	b.cmd.Process.Signal(syscall.SIGKILL)
	<-b.done
}

func (b *broker) stop() {
	b.cmd.Process.Signal(syscall.SIGTERM)
	<-b.done
	b.conn.Close()
}

func (b *broker) serving() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	r, err := b.health.Check(ctx, &healthpb.HealthCheckRequest{Service: pb.QuotaBroker_ServiceDesc.ServiceName})
	return err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING
}

// leader waits for the one serving replica.
func leader(bs []*broker, limit time.Duration) (int, error) {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for i, b := range bs {
			if b.serving() {
				return i, nil
			}
		}
	}
	return -1, errors.New("no replica serves")
}

// result is one round of load.
type result struct {
	pairs    int
	perSec   float64
	p50, p99 time.Duration
}

// load runs AcquireLease + CompleteLease pairs (or AcquireLease alone,
// when !settle) from n callers, each a client of its own, for d.
func load(c pb.QuotaBrokerClient, n int, d time.Duration, settle bool) (result, error) {
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			var mine []time.Duration
			// A client of its own: a client's active leases are capped
			// (10,000 by default), and unsettled leases stay active.
			ctx := metadata.AppendToOutgoingContext(context.Background(), "x-quotabroker-client", fmt.Sprintf("bench-%d-%d", n, time.Now().UnixNano()))
			for time.Now().Before(stop) {
				t0 := time.Now()
				r, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: model, InputTokens: 100, MaxOutputTokens: 100,
					Wait: durationpb.New(time.Second)})
				if err == nil {
					mine = append(mine, time.Since(t0))
				}
				if err == nil && settle {
					_, err = c.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: r.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS,
						Usage: &pb.Usage{InputTokens: 100, OutputTokens: 20}})
				}
				if err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, err)
					mu.Unlock()
					return
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if firstErr != nil {
		return result{}, firstErr
	}
	slices.Sort(lat)
	if len(lat) == 0 {
		return result{}, errors.New("no grant")
	}
	return result{pairs: len(lat), perSec: float64(len(lat)) / d.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100]}, nil
}

// leaseRecords counts the lease records under the replicas' prefix: the
// bulk of what a new leader takes over.
func leaseRecords(endpoints string) (int64, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(endpoints, ","), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, etcd.DefaultPrefix+"leases/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("count lease records: %w", err)
	}
	return resp.Count, nil
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	duration := fs.Duration("duration", 3*time.Second, "length of one load round")
	rounds := fs.Int("rounds", 3, "load rounds per broker, alternating")
	concurrency := fs.Int("concurrency", 50, "callers in a load round")
	kills := fs.Int("kills", 10, "leader kills for the failover gap")
	ttl := fs.Duration("etcd-ttl", 3*time.Second, "the replicas' session TTL (serve --etcd-ttl)")
	keep := fs.Bool("keep", false, "keep the working directory (logs of etcd and the brokers) and print its path")
	logLevel := fs.String("log-level", "warn", "the brokers' --log-level (info logs each take-over's time: \"cluster: leading\" ... take_over=)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	etcdBin, err := etcdtest.Find()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bench-cluster-")
	if err != nil {
		return err
	}
	if *keep {
		fmt.Fprintf(out, "working directory %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	qb := filepath.Join(dir, "quota-broker")
	if b, err := exec.Command("go", "build", "-o", qb, "./cmd/quota-broker").CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/quota-broker (run from the module's root): %v\n%s", err, b)
	}
	budgets := filepath.Join(dir, "budgets.json")
	// Limits far above the load: the lease path is measured, not refusals.
	if err := os.WriteFile(budgets, []byte(`{"budgets":[{"region":"us-east-1","model":"`+model+`","rpm":100000000,"tpm":100000000000}]}`), 0o600); err != nil {
		return err
	}
	ec, err := etcdtest.StartCluster(filepath.Join(dir, "etcd"), etcdBin, 3, false)
	defer ec.Close()
	if err != nil {
		return err
	}
	// --http= : no HTTP listener, whatever QUOTA_BROKER_HTTP the caller's
	// environment sets (the docs scenes set one; three replicas would
	// contend for it).
	common := []string{"serve", "--listen", "127.0.0.1:0", "--http=", "--budgets", budgets, "--margin", "1", "--log-level", *logLevel}
	single, err := start(qb, append(slices.Clone(common), "--data", filepath.Join(dir, "single.db")), filepath.Join(dir, "single.log"))
	if err != nil {
		return err
	}
	defer single.stop()
	var replicas []*broker
	defer func() {
		for _, r := range replicas {
			r.stop()
		}
	}()
	for i := range 3 {
		r, err := start(qb, append(slices.Clone(common), "--etcd", ec.Endpoints(), "--etcd-ttl", ttl.String()),
			filepath.Join(dir, fmt.Sprintf("replica%d.log", i)))
		if err != nil {
			return err
		}
		replicas = append(replicas, r)
	}
	lead, err := leader(replicas, 15*time.Second)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "lease path over gRPC on loopback, %v per round, %d rounds, %d callers\n", *duration, *rounds, *concurrency)
	fmt.Fprintf(out, "single node: bbolt with fsync; cluster: 3 etcd members (fsync, default timeouts), 3 replicas, calls to the leader\n")
	for _, settle := range []bool{false, true} {
		what := "AcquireLease alone (grants drawn from escrowed chunks)"
		if settle {
			what = "AcquireLease + CompleteLease pairs (each settlement committed before its answer)"
		}
		fmt.Fprintln(out, what+":")
		var s, c []result
		for i := range *rounds {
			rs, err := load(single.qb, *concurrency, *duration, settle)
			if err != nil {
				return fmt.Errorf("single node, round %d: %w", i+1, err)
			}
			rc, err := load(replicas[lead].qb, *concurrency, *duration, settle)
			if err != nil {
				return fmt.Errorf("cluster leader, round %d: %w", i+1, err)
			}
			s, c = append(s, rs), append(c, rc)
			fmt.Fprintf(out, "round %d  single %8.0f/s  p50 %-8v p99 %-8v | cluster %8.0f/s  p50 %-8v p99 %-8v | ratio %.2f\n",
				i+1, rs.perSec, rs.p50.Round(time.Microsecond), rs.p99.Round(time.Microsecond),
				rc.perSec, rc.p50.Round(time.Microsecond), rc.p99.Round(time.Microsecond), rc.perSec/rs.perSec)
		}
		med := func(rs []result) result {
			slices.SortFunc(rs, func(a, b result) int { return int(a.perSec - b.perSec) })
			return rs[len(rs)/2]
		}
		ms, mc := med(s), med(c)
		fmt.Fprintf(out, "median   single %8.0f/s  p50 %-8v p99 %-8v | cluster %8.0f/s  p50 %-8v p99 %-8v | ratio %.2f\n",
			ms.perSec, ms.p50.Round(time.Microsecond), ms.p99.Round(time.Microsecond),
			mc.perSec, mc.p50.Round(time.Microsecond), mc.p99.Round(time.Microsecond), mc.perSec/ms.perSec)
	}

	records, err := leaseRecords(ec.Endpoints())
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "failover: SIGKILL of the leader, session TTL %v, a caller trying every 10 ms on every replica; %d lease records in etcd for the new leaders to load\n", *ttl, records)
	var gaps []time.Duration
	for k := range *kills {
		lead, err := leader(replicas, 15*time.Second)
		if err != nil {
			return err
		}
		killed := time.Now()
		replicas[lead].kill()
		var gap time.Duration
	probe:
		for {
			for i, r := range replicas {
				if i == lead {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				resp, err := r.qb.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: model, InputTokens: 1, MaxOutputTokens: 1})
				cancel()
				if err == nil {
					gap = time.Since(killed)
					r.qb.CompleteLease(context.Background(), &pb.CompleteLeaseRequest{LeaseId: resp.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS})
					break probe
				}
			}
			if time.Since(killed) > 30*time.Second {
				return fmt.Errorf("kill %d: no replica granted within 30s", k+1)
			}
			time.Sleep(10 * time.Millisecond)
		}
		gaps = append(gaps, gap)
		fmt.Fprintf(out, "kill %2d  gap %v\n", k+1, gap.Round(time.Millisecond))
		if err := replicas[lead].start(qb, filepath.Join(dir, fmt.Sprintf("replica%d.log", lead))); err != nil {
			return err
		}
	}
	if len(gaps) > 0 {
		slices.Sort(gaps)
		fmt.Fprintf(out, "failover gap over %d kills: median %v, max %v\n", len(gaps), gaps[len(gaps)/2].Round(time.Millisecond), gaps[len(gaps)-1].Round(time.Millisecond))
	}
	return nil
}
