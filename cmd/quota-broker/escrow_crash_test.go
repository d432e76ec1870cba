package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// life is one broker process as the callers see it; next is closed once
// the process after it serves (or the test ends).
type life struct {
	c    pb.QuotaBrokerClient
	next chan struct{}
}

// TestCrashEscrowRandomKills kills the broker with SIGKILL at random
// instants, many times, while callers keep a budget busy enough that its
// grants are drawn from chunks of escrowed capacity written in the
// background. Callers hold leases across the kills and settle them with
// whichever broker is up. It checks what broker/doc.go promises: no 60 s
// interval holds more grants than the RPM limit, no more leases are held at
// once than the concurrency limit, every lease a caller received is known
// after a restart, and each crash costs at most the promised capacity
// (measured as the requests the restarted broker charges beyond the grants
// the callers saw).
func TestCrashEscrowRandomKills(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	dir := t.TempDir()
	const rpm, concurrency, nCallers = 2400, 8, 16
	// The promise: the unused part of at most 4 chunks of at most 1/32 of
	// the RPM each; plus grants the kill cut off before their caller saw
	// them (at most one per caller).
	const costBound = 4*rpm/32 + nCallers
	budgets := writeBudget(t, dir, fmt.Sprintf(`"rpm":%d,"tpm":1000000000,"concurrency":%d`, rpm, concurrency))
	args := []string{"serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "state.db"), "--budgets", budgets,
		"--margin", "1", "--lease-ttl", "3s", "--log-level", "warn"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	var (
		cur             atomic.Pointer[life]
		mu              sync.Mutex
		grantedAt       []time.Time // the broker's grant times, as answered
		chunked         int         // of them, leases drawn from a chunk
		refused         atomic.Int64
		held, maxHeld   atomic.Int64
		stop            = make(chan struct{})
		wg              sync.WaitGroup
		callerRNGs      = make([]*rand.Rand, nCallers)
		chunkLeaseIDLen = len("0000000000000000000000000000000000") // 21 bytes in base32
	)
	for i := range callerRNGs {
		callerRNGs[i] = rand.New(rand.NewPCG(seed, uint64(i)+1))
	}
	// settle completes id with whichever broker is up, across kills.
	settle := func(id string) {
		for {
			lf := cur.Load()
			_, err := lf.c.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: id, Outcome: pb.Outcome_OUTCOME_SUCCESS,
				Usage: &pb.Usage{InputTokens: 100, OutputTokens: 20}})
			switch status.Code(err) {
			case codes.OK, codes.FailedPrecondition: // settled, or expired meanwhile
				return
			case codes.Unavailable:
				select {
				case <-lf.next:
				case <-ctx.Done():
					return
				}
			default:
				t.Errorf("settling lease %s: %v", id, err)
				return
			}
		}
	}
	caller := func(r *rand.Rand) {
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			default:
			}
			lf := cur.Load()
			resp, err := lf.c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: crashModel, InputTokens: 100, MaxOutputTokens: 100,
				Wait: durationpb.New(time.Second)})
			switch status.Code(err) {
			case codes.OK:
			case codes.ResourceExhausted:
				refused.Add(1)
				continue
			case codes.Unavailable:
				select {
				case <-lf.next:
				case <-ctx.Done():
				}
				continue
			default:
				t.Errorf("acquire: %v", err)
				return
			}
			id := resp.GetLease().GetLeaseId()
			mu.Lock()
			grantedAt = append(grantedAt, resp.GetLease().GetGrantedAt().AsTime())
			if len(id) == chunkLeaseIDLen {
				chunked++
			}
			mu.Unlock()
			h := held.Add(1)
			for m := maxHeld.Load(); h > m && !maxHeld.CompareAndSwap(m, h); m = maxHeld.Load() {
			}
			time.Sleep(time.Duration(20+r.IntN(180)) * time.Millisecond) // the simulated Bedrock call
			held.Add(-1)
			settle(id)
		}
	}

	start := time.Now()
	var costs []int64
	var prevGap int64
	kills := 0
	for {
		p := startBroker(t, args...)
		lf := &life{c: dial(t, p.addr), next: make(chan struct{})}
		prev := cur.Swap(lf)
		// The callers wait for this life (prev.next), so what they saw
		// and what the broker charges can be compared at rest.
		mu.Lock()
		seen := int64(len(grantedAt))
		mu.Unlock()
		gap := budgetReport(t, ctx, lf.c).GetUsage().GetRequestsLastMinute() - seen
		if gap < 0 {
			// Every grant seen so far is within the minute: a restarted
			// broker charging fewer would grant them again.
			t.Errorf("after kill %d the broker charges %d requests in the minute; the callers saw %d granted", kills, seen+gap, seen)
		}
		if prev == nil {
			for i := range nCallers {
				wg.Go(func() { caller(callerRNGs[i]) })
			}
		} else {
			costs = append(costs, gap-prevGap)
			close(prev.next)
		}
		prevGap = gap
		if time.Since(start) > 40*time.Second {
			close(stop)
			wg.Wait()
			close(lf.next)
			p.cmd.Process.Signal(syscall.SIGTERM)
			if err := <-p.done; err != nil {
				t.Fatalf("graceful stop: %v\n%s", err, p.output())
			}
			break
		}
		// A random instant: mid-chunk, mid-commit of the next, mid-sweep.
		time.Sleep(time.Duration(300+rng.IntN(2700)) * time.Millisecond)
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := <-p.done; err == nil {
			t.Fatalf("broker exited cleanly before the kill\n%s", p.output())
		}
		kills++
	}
	elapsed := time.Since(start)

	slices.SortFunc(grantedAt, func(a, b time.Time) int { return a.Compare(b) })
	most, at := 0, time.Time{}
	for i, j := 0, 0; j < len(grantedAt); j++ {
		for grantedAt[j].Sub(grantedAt[i]) >= time.Minute {
			i++
		}
		if n := j - i + 1; n > most {
			most, at = n, grantedAt[i]
		}
	}
	t.Logf("%d kills in %v; %d grants (%d drawn from chunks), %d refusals; most in a minute %d (from %v), limit %d; at most %d held at once, limit %d; requests charged beyond the grants seen, per crash: %v (bound %d)",
		kills, elapsed.Round(time.Millisecond), len(grantedAt), chunked, refused.Load(), most, at.Format(time.TimeOnly), rpm, maxHeld.Load(), concurrency, costs, costBound)
	if most > rpm {
		t.Errorf("%d grants in the minute from %v; the limit is %d", most, at, rpm)
	}
	if m := maxHeld.Load(); m > concurrency {
		t.Errorf("callers held %d leases at once; concurrency limit %d", m, concurrency)
	}
	if kills < 8 {
		t.Errorf("only %d kills", kills)
	}
	if chunked == 0 {
		t.Error("no lease was drawn from a chunk: the test did not exercise escrow")
	}
	if refused.Load() == 0 {
		t.Error("no refusal: the load never reached the limit, so the check proves little")
	}
	for i, c := range costs {
		if c > costBound {
			t.Errorf("crash %d cost %d requests beyond the grants seen; doc.go promises at most %d", i+1, c, costBound)
		}
	}
}
