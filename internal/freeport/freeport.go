// Package freeport finds loopback ports for tests that must name an address
// before the process that will listen on it starts (a documented command, an
// etcd member's URLs).
//
// Such a port is free when found and taken later, so something else may take
// it in between. The kernel's own choices are what took it in practice: every
// listener on port 0 and every outgoing connection draws from the ephemeral
// range (net.ipv4.ip_local_port_range, 32768-60999 by default), and a port just
// released by a test is a likely draw. Ports from this package come from below
// that range, where the kernel never hands one out by itself, picked at random
// so that two test processes asking at once rarely meet.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// low and high bound the ports handed out when the ephemeral range cannot be
// read: below Linux's default range and above the well-known services.
const (
	low  = 20000
	high = 32768
)

// Addr returns "127.0.0.1:PORT" for a port nothing listens on now, outside
// the kernel's ephemeral range.
func Addr() (string, error) {
	lo, hi := span()
	var last error
	for range 200 {
		port := lo + rand.IntN(hi-lo)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			last = err
			continue
		}
		ln.Close()
		return addr, nil
	}
	return "", fmt.Errorf("freeport: no free port in %d-%d after 200 tries: %w", lo, hi-1, last)
}

// span is the range ports are drawn from: [low, high), moved below the
// ephemeral range when the kernel's starts lower.
func span() (int, int) {
	lo, hi := low, high
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return lo, hi
	}
	if eph, err := strconv.Atoi(f[0]); err == nil && eph < hi {
		hi = eph
		if lo > hi-1000 {
			lo = max(hi-1000, 1024)
		}
	}
	return lo, hi
}
