package bolt

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/bedrockqb/quotabroker/broker"
)

// BenchmarkReadStatsDay reads a day of per-budget history of a busy broker
// (50 budgets, 10 clients each, every minute), what a report's activity
// and the dashboard's day view read. Per-client records alone would be ten
// times as many; the per-budget sums keep this a few hundred milliseconds.
func BenchmarkReadStatsDay(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "s.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const budgets, clients, minutes = 50, 10, 1440
	if testing.Short() {
		b.Skip("writes 720,000 records")
	}
	for m := 0; m < minutes; m++ {
		var c broker.Change
		for i := 0; i < budgets; i++ {
			for j := 0; j < clients; j++ {
				r := broker.StatsRecord{Key: broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: fmt.Sprintf("model-%d", i)}, Minute: int64(m), Client: fmt.Sprintf("client-%d", j)}
				r.Granted, r.WindowTokens, r.Completed = 10, 1000, 10
				r.ObserveOutput(300)
				c.Stats = append(c.Stats, r)
			}
		}
		if err := s.Commit(context.Background(), c); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		n := 0
		s.ReadStats(context.Background(), 0, minutes, false, func(*broker.StatsRecord) error { n++; return nil })
		if n != budgets*minutes {
			b.Fatal(n)
		}
	}
}
