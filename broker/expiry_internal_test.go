package broker

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestExpiryQueue: whatever the order of pushes (mostly ascending, as
// grants come, with renewals and restores out of order), popDue gives
// every entry due at now, earliest first, and none that is not due.
func TestExpiryQueue(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	t0 := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	for round := range 20 {
		var q expiryQueue
		var ref []expiryRef // what is pushed and not yet popped
		at, now := t0, t0
		for step := range 20_000 {
			switch r := rng.IntN(100); {
			case r < 70: // a grant: in order
				at = at.Add(time.Duration(rng.IntN(3)) * time.Millisecond)
				e := expiryRef{id: strconv.Itoa(step), at: at}
				q.push(e)
				ref = append(ref, e)
			case r < 80: // a renewal or restore: anywhere
				e := expiryRef{id: strconv.Itoa(step), at: t0.Add(time.Duration(rng.IntN(40_000)) * time.Millisecond)}
				q.push(e)
				ref = append(ref, e)
			default: // a sweep
				now = now.Add(time.Duration(rng.IntN(400)) * time.Millisecond)
				slices.SortStableFunc(ref, func(a, b expiryRef) int { return a.at.Compare(b.at) })
				for {
					e, ok := q.popDue(now)
					if !ok {
						break
					}
					if len(ref) == 0 || e.at.After(now) || !e.at.Equal(ref[0].at) {
						t.Fatalf("round %d step %d: popped %v at %v; earliest left %v", round, step, e, now, ref[:min(1, len(ref))])
					}
					i := slices.IndexFunc(ref, func(x expiryRef) bool { return x.id == e.id })
					if i < 0 || !ref[i].at.Equal(ref[0].at) {
						t.Fatalf("round %d step %d: popped %v, not among the earliest", round, step, e)
					}
					ref = slices.Delete(ref, i, i+1)
				}
				if len(ref) > 0 && !ref[0].at.After(now) {
					t.Fatalf("round %d step %d: %v is due at %v and was not popped", round, step, ref[0], now)
				}
			}
		}
	}
}
