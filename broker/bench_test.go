package broker_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/internal/clocktest"
	"github.com/bedrockqb/quotabroker/internal/sysclock"
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

// BenchmarkAcquireEscrow is the grant path as bench/lease's AcquireLease
// sees it, in the domain alone: 50 callers of one client (as the bench's
// anonymous callers are) acquiring on one budget that never refuses, on
// the system clock with Run going, so that grants are drawn from escrowed
// chunks; the leases stay outstanding, as the bench's do.
//
//	go test -run '^$' -bench AcquireEscrow -benchmem ./broker/
func BenchmarkAcquireEscrow(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	br, err := broker.Open(ctx, nopStore{}, sysclock.Clock{}, broker.Config{Margin: 1, LeaseTTL: time.Hour,
		DefaultClient: broker.ClientPolicy{MaxConcurrent: -1}})
	if err != nil {
		b.Fatal(err)
	}
	if err := br.SetSpecs(ctx, []broker.Spec{spec(haiku3, broker.Limits{RPM: 1 << 40, TPM: 1 << 50})}); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- br.Run(ctx) }()
	defer func() { cancel(); <-done; br.Close() }()
	req := broker.AcquireRequest{ModelID: haiku3, InputTokens: 1000, MaxOutputTokens: 500}
	b.ReportAllocs()
	b.SetParallelism(25) // 50 callers on 2 cores
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if d, err := br.Acquire(ctx, req); err != nil || !d.Granted {
				b.Errorf("acquire: %+v %v", d, err)
				return
			}
		}
	})
}
