// Package sysclock is the system clock, for binaries to inject into the
// broker (which never reads the system time itself).
package sysclock

import (
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// Clock reads the system time.
type Clock struct{}

var _ broker.Clock = Clock{}

func (Clock) Now() time.Time { return time.Now() }

func (Clock) AfterFunc(d time.Duration, f func()) broker.Timer { return time.AfterFunc(d, f) }
