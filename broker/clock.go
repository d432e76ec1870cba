package broker

import "time"

// Clock is the broker's only source of time. Production wires a clock that
// reads the system time; tests use a fake one so that windows, deadlines and
// expiry run without sleeping.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine once d has elapsed.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc call.
type Timer interface {
	// Stop prevents the call if it has not started; it reports whether it did.
	Stop() bool
}

// after returns a channel closed once d has elapsed on c, and a stop function
// that releases the timer.
func after(c Clock, d time.Duration) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	t := c.AfterFunc(d, func() { close(ch) })
	return ch, func() { t.Stop() }
}
