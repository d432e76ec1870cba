// Package gctune sets the garbage collector's target for a process that
// serves leases (quota-broker serve and demo, and bench/lease, which
// measures that configuration).
//
// The broker's own live heap is small and long-lived (budgets, leases), and
// gRPC allocates about 10 KB a call that dies at once. At Go's default
// GOGC=100 the collector therefore ran over 30 times a second at 33,000 to
// 43,000 calls/s (866 cycles in 27 s of bench/lease measurements under
// GODEBUG=gctrace=1), and its mark assists, landing on whichever handlers allocate
// during a cycle, set AcquireLease's p99: bench/lease measured p99 1.80x the
// empty RPC's at GOGC=100 and 1.25x at 400, same run (219 cycles in place of
// 866). The price is memory: the heap may grow to five times the live set
// between cycles; GOMEMLIMIT caps it (the collector then runs sooner).
//
// An operator's GOGC in the environment always wins.
package gctune

import (
	"os"
	"runtime/debug"
)

// Percent is the GOGC the broker runs with when the environment sets none.
const Percent = 400

// Apply sets the collector's target to Percent unless GOGC is set in the
// environment, and returns the target in force.
func Apply() int {
	if v, ok := os.LookupEnv("GOGC"); ok && v != "" {
		old := debug.SetGCPercent(100) // read the runtime's value back
		debug.SetGCPercent(old)
		return old
	}
	debug.SetGCPercent(Percent)
	return Percent
}
