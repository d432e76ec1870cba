package bolt

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"go.etcd.io/bbolt"
)

// BenchmarkCommit measures what a grant waits for: a Change of one lease
// and one usage delta, committed with fsync to a file in a temporary
// directory. "update" is the baseline, one transaction and fsync per
// Commit; "batch-D" groups concurrent Commits with DB.Batch and a
// MaxBatchDelay of D (10ms is bbolt's default); "group" is the store's own
// commit loop, which groups whatever is queued with no delay. "parallel"
// runs about 50 committers at once, "serial" one.
//
//	go test -run='^$' -bench=Commit -benchtime=2s ./broker/bolt/
func BenchmarkCommit(b *testing.B) {
	modes := []struct {
		name  string
		delay time.Duration // 0: db.Update per Commit
	}{
		{"group", -1},
		{"update", 0},
		{"batch-10ms", 10 * time.Millisecond},
		{"batch-2ms", 2 * time.Millisecond},
		{"batch-1ms", time.Millisecond},
		{"batch-500us", 500 * time.Microsecond},
		{"batch-250us", 250 * time.Microsecond},
	}
	for _, par := range []bool{true, false} {
		for _, m := range modes {
			name := "serial/" + m.name
			if par {
				name = "parallel/" + m.name
			}
			b.Run(name, func(b *testing.B) {
				s := openTest(b, filepath.Join(b.TempDir(), "bench.db"), Options{})
				commit := s.Commit
				switch {
				case m.delay == 0:
					commit = commitVia(s, s.db.Update)
				case m.delay > 0:
					s.db.MaxBatchDelay = m.delay
					commit = commitVia(s, s.db.Batch)
				}
				benchCommits(b, commit, par)
			})
		}
	}
}

// commitVia returns a Commit that, instead of the store's commit loop,
// runs each Change in txn: db.Update (a transaction and an fsync each) or
// db.Batch (bbolt's own group commit), the comparisons for the loop. It
// prepares and applies a Change as Commit does; it leaves out Commit's
// handling of a context that ends first, which the benchmark's never does.
func commitVia(s *Store, txn func(func(*bbolt.Tx) error) error) func(context.Context, broker.Change) error {
	// bbolt's default too; set here so that Options cannot change Batch's
	// groups behind the comparison's back.
	s.db.MaxBatchSize = DefaultMaxBatchSize
	return func(_ context.Context, c broker.Change) error {
		w, err := prepare(&c)
		if err != nil {
			return err
		}
		return s.wrap(txn(s.guard(w.apply)))
	}
}

func benchCommits(b *testing.B, commit func(context.Context, broker.Change) error, parallel bool) {
	var (
		seq atomic.Int64
		mu  sync.Mutex
		lat []time.Duration
	)
	one := func(ctx context.Context, local *[]time.Duration) {
		r := lease(fmt.Sprint("bench-", seq.Add(1)), 1)
		c := broker.Change{
			Leases: []broker.LeaseRecord{r},
			Usage:  []broker.UsageRecord{{Key: r.Key, Minute: r.GrantedAt.Unix() / 60, Tokens: r.Charged, Requests: 1}},
		}
		start := time.Now()
		if err := commit(ctx, c); err != nil {
			b.Error(err)
		}
		*local = append(*local, time.Since(start))
	}
	// A request's context, as the broker passes it.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ResetTimer()
	start := time.Now()
	if parallel {
		b.SetParallelism(max(1, 50/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			var local []time.Duration
			for pb.Next() {
				one(ctx, &local)
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		})
	} else {
		for b.Loop() {
			one(ctx, &lat)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "commits/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
