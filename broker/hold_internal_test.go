package broker

import (
	"context"
	"testing"
	"time"
)

type nopStore struct{}

func (nopStore) Load(context.Context) (Snapshot, error) { return Snapshot{}, nil }
func (nopStore) Commit(context.Context, Change) error   { return nil }

// systemClock is the system clock (internal/sysclock imports this package).
type systemClock struct{}

func (systemClock) Now() time.Time                            { return time.Now() }
func (systemClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// BenchmarkGrantHold measures how long a grant drawn from an escrow chunk
// holds Core.mu, the one lock every grant takes: Acquire's critical
// section (admit) timed alone ("held", hold-ns/grant), against the whole
// Acquire ("acquire", ns/grant) in the same run. While a caller holds the
// lock, every other caller of the broker waits; a caller descheduled while
// holding it holds them up for a time slice. One goroutine, so nothing
// waits for the lock and the time is the hold itself (with two reads of
// the clock, ~50 ns). As in bench/lease, 100,000 leases are outstanding
// (older ones are settled, untimed), chunks are committed as the escrow
// loop would, and the sweep runs every second, untimed.
//
//	go test -run '^$' -bench GrantHold -benchtime 300000x ./broker/
func BenchmarkGrantHold(b *testing.B) {
	for _, held := range []bool{true, false} {
		name := "acquire"
		if held {
			name = "held"
		}
		b.Run(name, func(b *testing.B) { benchGrantHold(b, held) })
	}
}

func benchGrantHold(b *testing.B, held bool) {
	const outstanding = 100_000
	ctx := context.Background()
	br, err := Open(ctx, nopStore{}, systemClock{}, Config{Margin: 1, LeaseTTL: time.Hour, DefaultClient: ClientPolicy{MaxConcurrent: -1}})
	if err != nil {
		b.Fatal(err)
	}
	c := br.Core
	defer c.Close()
	const model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
	key, err := ParseModelID(model, "", "us-east-1")
	if err != nil {
		b.Fatal(err)
	}
	if err := c.SetSpecs(ctx, []Spec{{Key: key, Quota: Limits{RPM: 1 << 40, TPM: 1 << 50}, Source: "bench"}}); err != nil {
		b.Fatal(err)
	}
	req := AcquireRequest{ModelID: model, Client: "anonymous", Priority: PriorityStandard, InputTokens: 1000, MaxOutputTokens: 500}
	ids := make([]string, 0, outstanding)
	var spent time.Duration
	var grants, drawn int
	sweptAt := time.Now()
	for b.Loop() {
		var d Decision
		var l *lease
		if held {
			w := &waiter{client: req.Client, priority: req.Priority, spare: new(lease)}
			c.mu.Lock()
			start := time.Now()
			_, d, err, _, _ = c.admit(key, &req, w, 0)
			spent += time.Since(start)
			c.mu.Unlock()
			l = w.lease
		} else {
			start := time.Now()
			d, err = c.Acquire(ctx, req)
			spent += time.Since(start)
		}
		if err != nil || !d.Granted {
			b.Fatalf("acquire: %+v %v", d, err)
		}
		grants++
		b.StopTimer()
		if l == nil {
			c.mu.Lock()
			l = c.leases[d.Lease.ID]
			c.mu.Unlock()
		}
		if l.chunk != nil {
			drawn++
		}
		// The escrow loop's work, the sweep's and the settlements that
		// keep the leases outstanding at a steady number: not the grant's.
		select {
		case <-c.kick:
			c.commitChunks(ctx)
		default:
		}
		if i := grants % outstanding; len(ids) < outstanding {
			ids = append(ids, d.Lease.ID)
		} else {
			if _, err := c.Complete(ctx, ids[i], OutcomeSuccess, Usage{InputTokens: 1000, OutputTokens: 100}); err != nil {
				b.Fatal(err)
			}
			ids[i] = d.Lease.ID
		}
		if time.Since(sweptAt) > time.Second {
			c.Sweep(ctx)
			sweptAt = time.Now()
		}
		b.StartTimer()
	}
	unit := "ns/grant"
	if held {
		unit = "hold-ns/grant"
	}
	b.ReportMetric(float64(spent.Nanoseconds())/float64(grants), unit)
	b.ReportMetric(float64(drawn)/float64(grants), "drawn/grant")
}
