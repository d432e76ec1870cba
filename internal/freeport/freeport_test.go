package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestAddrIsFreeAndOutsideTheEphemeralRange: the address can be listened on,
// and its port is one the kernel would not pick for port 0.
func TestAddrIsFreeAndOutsideTheEphemeralRange(t *testing.T) {
	lo, hi := span()
	for range 20 {
		addr, err := Addr()
		if err != nil {
			t.Fatal(err)
		}
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		port, _ := strconv.Atoi(p)
		if port < lo || port >= hi {
			t.Fatalf("port %d outside [%d, %d)", port, lo, hi)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s is not free: %v", addr, err)
		}
		ln.Close()
	}
}
