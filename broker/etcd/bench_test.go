package etcd_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/internal/etcdtest"
)

// BenchmarkCommit: one lease record per Commit from 50 goroutines per
// GOMAXPROCS (SetParallelism; 100 on BENCHMARKS.md's 2 cores), as
// settlements arrive, against three etcd members on loopback (fsync on,
// etcd's default timeouts). Commits that arrive together share a
// transaction, so throughput grows with concurrency.
func BenchmarkCommit(b *testing.B) {
	bin := etcdtest.Binary(b)
	ec, err := etcdtest.StartCluster(b.TempDir(), bin, 3, false)
	defer ec.Close()
	if err != nil {
		b.Fatal(err)
	}
	cli := client(b, ec.Endpoints())
	ctx := context.Background()
	st, _ := lead(b, ctx, cli, "/bench/")
	var n atomic.Int64
	now := time.Now()
	b.SetParallelism(50)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			l := broker.LeaseRecord{ID: fmt.Sprintf("l%d", i), Version: 1, Key: key, State: broker.LeaseCompleted,
				Reserved: 10, Charged: 10, Requests: 1, GrantedAt: now, ExpiresAt: now.Add(time.Minute)}
			if err := st.Commit(ctx, broker.Change{Leases: []broker.LeaseRecord{l}}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
