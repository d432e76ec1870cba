package etcd_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/etcd"
	"github.com/bedrockqb/quotabroker/internal/etcdtest"
	"github.com/bedrockqb/quotabroker/internal/sysclock"
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

// BenchmarkTakeOver: what a replica that wins does before it serves, with
// 100,000 active lease records in etcd (what bench/cluster's acquire-only
// rounds leave): Load, by a full read or from the standby's copy
// (follow.go), and broker.Open (Load and the broker's restore), on one
// etcd member on loopback.
func BenchmarkTakeOver(b *testing.B) {
	const leases = 100_000
	ec := etcdtest.Start(b, 1)
	cli := client(b, ec.Endpoints())
	ctx := context.Background()
	const prefix = "/takeover/"
	st, _ := lead(b, ctx, cli, prefix)
	now := time.Now()
	commit(b, ctx, st, broker.Change{Specs: []broker.Spec{{Key: key, Quota: broker.Limits{RPM: 1e9, TPM: 1e12}, Source: "bench"}}})
	for i := 0; i < leases; i += 120 {
		var c broker.Change
		for j := i; j < min(i+120, leases); j++ {
			c.Leases = append(c.Leases, broker.LeaseRecord{ID: fmt.Sprintf("lease-%08d-%016x", j, j*7919), Version: 1, Key: key,
				Client: fmt.Sprintf("bench-50-%d", j%50), State: broker.LeaseActive, Reserved: 200, Charged: 200, Requests: 1,
				GrantedAt: now, ExpiresAt: now.Add(time.Hour)})
		}
		commit(b, ctx, st, c)
	}
	full, err := etcd.Open(ctx, cli, etcd.Options{Prefix: prefix, Clock: clock{}})
	if err != nil {
		b.Fatal(err)
	}
	standby := follow(b, cli, prefix, nil)
	if !etcd.WaitFollowing(standby, ctx, 0) {
		b.Fatal("the standby never had a copy")
	}
	for _, s := range []struct {
		name string
		st   *etcd.Store
		copy bool
	}{{"full read", full, false}, {"standby copy", standby, true}} {
		b.Run("Load/"+s.name, func(b *testing.B) {
			for b.Loop() {
				snap, err := s.st.Load(ctx)
				if err != nil || len(snap.Leases) != leases || s.st.LoadedFromCopy() != s.copy {
					b.Fatalf("loaded %d leases (%v), from the copy %t", len(snap.Leases), err, s.st.LoadedFromCopy())
				}
			}
		})
		b.Run("Open/"+s.name, func(b *testing.B) {
			for b.Loop() {
				br, err := broker.Open(ctx, s.st, sysclock.Clock{}, broker.Config{})
				if err != nil {
					b.Fatal(err)
				}
				br.Close()
			}
		})
	}
}
