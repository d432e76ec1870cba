package broker_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/internal/clocktest"
)

// nopStore accepts every Change and keeps nothing, so a benchmark measures
// the domain, not a store.
type nopStore struct{}

func (nopStore) Load(context.Context) (broker.Snapshot, error) { return broker.Snapshot{}, nil }
func (nopStore) Commit(context.Context, broker.Change) error   { return nil }

// BenchmarkAcquireComplete is the lease path in the domain alone: parallel
// callers, each its own client, acquiring and settling on one budget that
// never refuses, with the sweep running as Run would (every 1,000 ops). It
// measures what the core's lock and the history hand-over cost per lease.
//
//	go test -run '^$' -bench AcquireComplete -cpu 1,2 ./broker/
func BenchmarkAcquireComplete(b *testing.B) {
	benchAcquireComplete(b, broker.Config{Margin: 1})
}

// benchAcquireComplete runs BenchmarkAcquireComplete's load on a broker
// opened with cfg.
func benchAcquireComplete(b *testing.B, cfg broker.Config) {
	ctx := context.Background()
	br, err := broker.Open(ctx, nopStore{}, clocktest.New(t0), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	if err := br.SetSpecs(ctx, []broker.Spec{spec(haiku3, broker.Limits{RPM: 1 << 40, TPM: 1 << 50})}); err != nil {
		b.Fatal(err)
	}
	var clients, ops atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		client := "client-" + strconv.FormatInt(clients.Add(1), 10)
		for pb.Next() {
			d, err := br.Acquire(ctx, broker.AcquireRequest{ModelID: haiku3, Client: client, InputTokens: 100, MaxOutputTokens: 100})
			if err != nil || !d.Granted {
				b.Errorf("acquire: %+v %v", d, err)
				return
			}
			if _, err := br.Complete(ctx, d.Lease.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 100, OutputTokens: 50}); err != nil {
				b.Error(err)
				return
			}
			if ops.Add(1)%1000 == 0 {
				br.Sweep(ctx)
			}
		}
	})
}
