package server_test

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

// BenchmarkAcquireDuringHistory measures an unrelated client's
// AcquireLease + CompleteLease over gRPC while GetUsageHistory calls run
// (issue 16, item 4): quiet, then with 8 callers each asking, back to back,
// for the largest answer allowed (400 budgets x 125 points = 50,000
// points) and a 10,000-point answer for all budgets (refused at once as too
// large). It reports the lease call's p50 and p99 and the peak Go heap.
func BenchmarkAcquireDuringHistory(b *testing.B) {
	for _, callers := range []int{0, 8} {
		name := "quiet"
		if callers > 0 {
			name = "history-callers-8"
		}
		b.Run(name, func(b *testing.B) {
			brk, _ := seedHistory(b, 400, 125)
			ctx := context.Background()
			key, _ := broker.ParseModelID(sonnet, "", "us-east-1")
			if err := brk.SetSpecs(ctx, []broker.Spec{{Key: key, Quota: broker.Limits{TPM: 1 << 40}, Source: "bench"}}); err != nil {
				b.Fatal(err)
			}
			c := pb.NewQuotaBrokerClient(serve(b, brk, server.Config{}))
			to := fakeClock().Now()
			big := span(to.Add(-125*time.Minute), 125*time.Minute, time.Minute)
			huge := span(to.Add(-10_000*time.Minute), 10_000*time.Minute, time.Minute)

			stop := make(chan struct{})
			var wg, started sync.WaitGroup
			for i := range callers {
				wg.Add(1)
				started.Add(1)
				go func() {
					defer wg.Done()
					req := big
					if i%4 == 3 {
						req = huge
					}
					for n := 0; ; n++ {
						select {
						case <-stop:
							return
						default:
						}
						c.GetUsageHistory(ctx, req) // refusals (busy, too large) are part of the load
						if n == 0 {
							started.Done()
						}
					}
				}()
			}
			var peak uint64
			wg.Add(1)
			go func() { // samples the heap until stop
				defer wg.Done()
				t := time.NewTicker(50 * time.Millisecond)
				defer t.Stop()
				for {
					var m runtime.MemStats
					runtime.ReadMemStats(&m)
					peak = max(peak, m.HeapInuse)
					select {
					case <-stop:
						return
					case <-t.C:
					}
				}
			}()
			started.Wait() // every caller is past its first call: the load is on
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				r, err := c.AcquireLease(asClient("unrelated"), &pb.AcquireLeaseRequest{ModelId: sonnet, InputTokens: 100, MaxOutputTokens: 100})
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
				if _, err := c.CompleteLease(asClient("unrelated"), &pb.CompleteLeaseRequest{LeaseId: r.GetLease().GetLeaseId(), Outcome: pb.Outcome_OUTCOME_SUCCESS}); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			close(stop)
			wg.Wait()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
		})
	}
}
