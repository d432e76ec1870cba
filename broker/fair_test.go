package broker_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// served runs a budget with room for one lease at a time: every client
// queues many requests, then the test completes leases one by one and
// returns which client each of the next n grants went to.
func served(t *testing.T, cfg broker.Config, n int, queues map[string]broker.AcquireRequest, perClient int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	synctest.Test(t, func(t *testing.T) {
		b := bubbleBrokerWith(t, cfg, spec(haiku3, broker.Limits{Concurrency: 1}))
		ctx := context.Background()
		first, err := b.Acquire(ctx, broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 1})
		if err != nil || !first.Granted {
			t.Fatalf("first lease: %+v %v", first, err)
		}
		results := make(chan result, len(queues)*perClient)
		for client, req := range queues {
			for range perClient {
				req := req
				req.ModelID, req.Client, req.Wait = haiku3, client, time.Hour
				go func() {
					d, err := b.Acquire(ctx, req)
					results <- result{d, err}
				}()
			}
		}
		synctest.Wait()
		lease := first.Lease
		for range n {
			b.Complete(ctx, lease.ID, broker.OutcomeSuccess, broker.Usage{})
			r := <-results
			if r.err != nil || !r.d.Granted {
				t.Fatalf("waiter: %+v", r)
			}
			lease = r.d.Lease
			counts[clientOf(t, b, lease.ID)]++
		}
		b.Close()
		for range len(queues)*perClient - n {
			<-results
		}
	})
	return counts
}

// clientOf finds a lease's client through the store the broker wrote.
func clientOf(t *testing.T, b *broker.Broker, id string) string {
	t.Helper()
	return b.LeaseClient(id)
}

func TestEqualClientsGetEqualTokenShares(t *testing.T) {
	// a asks for 1000-token leases, b for 3000: equal shares of tokens
	// means three of a's for each of b's.
	got := served(t, broker.Config{Margin: 1}, 40, map[string]broker.AcquireRequest{
		"a": {MaxOutputTokens: 1000},
		"b": {MaxOutputTokens: 3000},
	}, 40)
	if got["a"] < 28 || got["a"] > 32 {
		t.Fatalf("grants %v, want about 30 to a and 10 to b", got)
	}
}

func TestWeightsSplitTheBudget(t *testing.T) {
	cfg := broker.Config{Margin: 1, Clients: map[string]broker.ClientPolicy{"gold": {Weight: 3}}}
	got := served(t, cfg, 40, map[string]broker.AcquireRequest{
		"gold":   {MaxOutputTokens: 1000},
		"bronze": {MaxOutputTokens: 1000},
	}, 40)
	if got["gold"] < 28 || got["gold"] > 32 {
		t.Fatalf("grants %v, want about 30 to gold (weight 3) and 10 to bronze", got)
	}
}

func TestFloodDoesNotDelayAnotherClient(t *testing.T) {
	// 50 queued requests from a flooder, then 3 from a quiet client: the
	// quiet one is served within the next few grants, not after the flood.
	counts := served(t, broker.Config{Margin: 1}, 6, map[string]broker.AcquireRequest{
		"flood": {MaxOutputTokens: 1000},
		"quiet": {MaxOutputTokens: 1000},
	}, 50)
	if counts["quiet"] < 3 {
		t.Fatalf("the quiet client got %d of the first 6 grants", counts["quiet"])
	}
}

func TestMaxConcurrentCapsAClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := broker.Config{Margin: 1, Clients: map[string]broker.ClientPolicy{"greedy": {MaxConcurrent: 2}}}
		b := bubbleBrokerWith(t, cfg, spec(haiku3, broker.Limits{Concurrency: 10}))
		ctx := context.Background()
		req := broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 1, Client: "greedy"}
		a, _ := b.Acquire(ctx, req)
		b.Acquire(ctx, req)
		if d, _ := b.Acquire(ctx, req); d.Granted || d.Blocked != broker.LimitClientLeases {
			t.Fatalf("a third lease beyond the client's cap: %+v, want a refusal blocked by client leases", d)
		}
		if d, _ := b.Acquire(ctx, broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 1, Client: "other"}); !d.Granted {
			t.Fatal("another client was held back by greedy's cap")
		}
		req.Wait = time.Minute
		ch := goAcquire(b, ctx, req)
		synctest.Wait()
		b.Complete(ctx, a.Lease.ID, broker.OutcomeSuccess, broker.Usage{})
		if r := <-ch; !r.d.Granted {
			t.Fatalf("greedy's waiter not served when it dropped below its cap: %+v", r)
		}
	})
}

func TestAgingServesBatchEventually(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := bubbleBrokerWith(t, broker.Config{Margin: 1, Aging: 10 * time.Second}, spec(haiku3, broker.Limits{Concurrency: 1}))
		ctx := context.Background()
		d, _ := b.Acquire(ctx, broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 1})
		lease := d.Lease
		batch := goAcquire(b, ctx, broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 1, Client: "nightly", Priority: broker.PriorityBatch, Wait: time.Hour})
		synctest.Wait()
		// A steady stream of interactive work: each completion finds a new
		// interactive waiter. Batch must get a turn once it has aged two
		// levels (20 s).
		for i := 0; ; i++ {
			inter := goAcquire(b, ctx, broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 1, Client: "web", Priority: broker.PriorityInteractive, Wait: time.Hour})
			synctest.Wait()
			time.Sleep(time.Second)
			b.Complete(ctx, lease.ID, broker.OutcomeSuccess, broker.Usage{})
			synctest.Wait()
			select {
			case r := <-batch:
				if i < 19 || i > 21 {
					t.Fatalf("batch served after %d interactive grants, want about 20 (two aging steps)", i)
				}
				b.Complete(ctx, r.d.Lease.ID, broker.OutcomeSuccess, broker.Usage{})
				<-inter
				return
			case r := <-inter:
				lease = r.d.Lease
			}
		}
	})
}

func TestDailyReserveHoldsBackBatch(t *testing.T) {
	e := newEnv(t)
	e.cfg.DailyReserve = map[broker.Priority]float64{broker.PriorityBatch: 0.5}
	e.open()
	e.b.SetSpecs(context.Background(), []broker.Spec{spec(haiku3, broker.Limits{TPD: 10_000})})
	batch := broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 2000, Priority: broker.PriorityBatch}
	e.mustGrant(batch)
	e.mustGrant(batch)
	if d, _ := e.acquire(batch); d.Granted || d.Blocked != broker.LimitTPD {
		t.Fatalf("batch went past its half of the day: %+v", d)
	}
	e.mustGrant(broker.AcquireRequest{ModelID: haiku3, MaxOutputTokens: 2000, Priority: broker.PriorityInteractive})
}
