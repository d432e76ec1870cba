package quotaclient

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
)

// fallback is the FailOpen limiter: per model id, a request bucket and a
// token bucket, each holding one minute's limit and refilling continuously.
// It is deliberately simple (no queue, no fairness): it only has to keep
// one process from stampeding Bedrock while the broker is away.
type fallback struct {
	limits FallbackLimits
	now    func() time.Time
	seq    atomic.Int64

	mu      sync.Mutex // guards budgets and their buckets
	budgets map[string]*localBudget
}

type localBudget struct{ req, tok bucket }

// bucket holds up to capacity, refilling capacity per minute; capacity 0
// means no limit.
type bucket struct {
	capacity, level float64
	last            time.Time
}

func (b *bucket) refill(now time.Time) {
	if dt := now.Sub(b.last); dt > 0 {
		b.level = math.Min(b.capacity, b.level+b.capacity*dt.Minutes())
		b.last = now
	}
}

// until is how long until the bucket holds n.
func (b *bucket) until(n float64) time.Duration {
	if b.capacity == 0 || b.level >= n {
		return 0
	}
	return time.Duration((n - b.level) / b.capacity * float64(time.Minute))
}

func (b *bucket) take(n float64) {
	if b.capacity > 0 {
		b.level -= n
	}
}

func (b *bucket) give(n float64) {
	if b.capacity > 0 && n > 0 {
		b.level = math.Min(b.capacity, b.level+n)
	}
}

func newFallback(l FallbackLimits, now func() time.Time) *fallback {
	return &fallback{limits: l, now: now, budgets: map[string]*localBudget{}}
}

func (f *fallback) reservation(req Request) (tokens, maxOut int64) {
	maxOut = req.MaxOutputTokens
	if maxOut <= 0 {
		maxOut = f.limits.DefaultMaxOutputTokens
	}
	return req.InputTokens + req.CacheWriteTokens + maxOut, maxOut
}

// acquire grants a local lease, waiting up to req.Wait (and ctx) for the
// buckets to refill.
func (f *fallback) acquire(ctx context.Context, c *Client, req Request) (*Lease, error) {
	tokens, maxOut := f.reservation(req)
	if f.limits.TokensPerMinute > 0 && tokens > f.limits.TokensPerMinute {
		return nil, &Error{Code: codes.InvalidArgument, Field: "max_output_tokens", kind: ErrInvalid,
			Message: fmt.Sprintf("reservation of %d tokens exceeds the fallback limit of %d tokens per minute", tokens, f.limits.TokensPerMinute)}
	}
	start := f.now()
	deadline := start.Add(req.Wait)
	for {
		now := f.now()
		f.mu.Lock()
		b := f.budgets[req.ModelID]
		if b == nil {
			b = &localBudget{
				req: bucket{capacity: float64(f.limits.RequestsPerMinute), level: float64(f.limits.RequestsPerMinute), last: now},
				tok: bucket{capacity: float64(f.limits.TokensPerMinute), level: float64(f.limits.TokensPerMinute), last: now},
			}
			f.budgets[req.ModelID] = b
		}
		b.req.refill(now)
		b.tok.refill(now)
		dr, dt := b.req.until(1), b.tok.until(float64(tokens))
		if dr == 0 && dt == 0 {
			b.req.take(1)
			b.tok.take(float64(tokens))
			f.mu.Unlock()
			return &Lease{
				ID: "local-" + strconv.FormatInt(f.seq.Add(1), 10), Model: req.ModelID, Region: req.Region,
				ReservedTokens: tokens, MaxOutputTokens: maxOut, OutputBurndown: 1,
				GrantedAt: now, ExpiresAt: now.Add(24 * time.Hour), Waited: now.Sub(start),
				Local: true, c: c, modelID: req.ModelID, CallModelID: req.ModelID,
			}, nil
		}
		f.mu.Unlock()
		delay, limit := dr, LimitRPM
		if dt > dr {
			delay, limit = dt, LimitTPM
		}
		delay += time.Millisecond // land after the refill, not just before
		if now.Add(delay).After(deadline) {
			return nil, &RefusedError{RetryAfter: delay, Limit: limit, Model: req.ModelID, Region: req.Region, Local: true,
				Message: "broker unreachable and the local fallback limit is spent"}
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// settle returns what the call did not use: everything for a throttled or
// cancelled call, else reservation - (input + cache_write + output).
func (f *fallback) settle(l *Lease, outcome Outcome, u Usage) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.budgets[l.modelID]
	if b == nil {
		return
	}
	now := f.now()
	b.req.refill(now)
	b.tok.refill(now)
	switch outcome {
	case OutcomeThrottled, OutcomeCancelled:
		b.req.give(1)
		b.tok.give(float64(l.ReservedTokens))
	default:
		used := u.InputTokens + u.CacheWriteInputTokens + u.OutputTokens
		b.tok.give(float64(l.ReservedTokens - used))
	}
}
