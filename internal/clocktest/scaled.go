package clocktest

import (
	"context"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// Scaled is a real clock running Speed times faster than the wall clock
// from Start, as the Bedrock simulator's Speed does: a broker (and a
// workload) on it agrees with a simulator at the same speed on what a
// minute is, so minutes of quota behaviour take seconds.
type Scaled struct {
	Start time.Time
	Speed float64
}

var _ broker.Clock = Scaled{}

// NewScaled starts a scaled clock now.
func NewScaled(speed float64) Scaled { return Scaled{Start: time.Now(), Speed: speed} }

func (c Scaled) Now() time.Time {
	return c.Start.Add(time.Duration(float64(time.Since(c.Start)) * c.Speed))
}

func (c Scaled) AfterFunc(d time.Duration, f func()) broker.Timer {
	return time.AfterFunc(c.real(d), f)
}

// Sleep waits d of this clock's time, or until ctx ends (its error).
func (c Scaled) Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(c.real(d))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c Scaled) real(d time.Duration) time.Duration { return time.Duration(float64(d) / c.Speed) }
