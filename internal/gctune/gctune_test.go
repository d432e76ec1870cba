package gctune

import (
	"runtime/debug"
	"testing"
)

func TestApply(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "")
	if got := Apply(); got != Percent {
		t.Fatalf("GOGC unset: Apply = %d, want %d", got, Percent)
	}
	if got := debug.SetGCPercent(Percent); got != Percent {
		t.Fatalf("the runtime's target is %d, want %d", got, Percent)
	}
	// An operator's GOGC wins: the runtime read it at start; here it is
	// set by hand as the runtime would have.
	t.Setenv("GOGC", "150")
	debug.SetGCPercent(150)
	if got := Apply(); got != 150 {
		t.Fatalf("GOGC=150: Apply = %d, want the operator's 150", got)
	}
	if got := debug.SetGCPercent(150); got != 150 {
		t.Fatalf("GOGC=150: the runtime's target is %d", got)
	}
}
