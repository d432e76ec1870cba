package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// setSynopsis makes the command's help its synopsis (a usage line, what it
// does), then its flags with their environment fallbacks. parseFlags prints
// it on stdout when asked for.
func setSynopsis(fs *flag.FlagSet, synopsis string) {
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), strings.TrimRight(synopsis, "\n")+"\n\nflags:\n")
		fs.PrintDefaults()
	}
}

// parseFlags parses a command's flags. Asked for (-h, --help), the help is
// the output: it goes to stdout and the error is flag.ErrHelp, which run
// turns into exit status 0. A mistake is one error line naming how to see
// the flags, rather than the whole help on stderr ahead of the error.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	usage, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	fs.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		usage()
		fs.SetOutput(out)
		return err
	case err != nil:
		return fmt.Errorf("%s: %w (\"quota-broker %s -h\" lists its flags)", fs.Name(), err, fs.Name())
	}
	return nil
}

// listenError says what to do about a listener that could not open: for an
// address in use, which flag moves it and that another broker may hold it.
func listenError(addr, flagName, env string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("listen on %s (--%s): the address is in use, perhaps by another quota-broker demo or serve (stop it), or pass --%s HOST:PORT (env %s; port 0 picks a free one): %w",
			addr, flagName, flagName, env, err)
	}
	return fmt.Errorf("listen on %s (--%s): %w", addr, flagName, err)
}

// brokerError wraps the error of a call to the broker at addr. A broker
// that is not there (nothing listening, no such host) is the usual first
// mistake, so it says how to get one.
func brokerError(addr string, err error) error {
	if noBroker(err) {
		cause := err.Error()
		var st interface{ GRPCStatus() *status.Status }
		if errors.As(err, &st) {
			cause = st.GRPCStatus().Message() // the transport's words, without the wrapping
		}
		return fmt.Errorf("no broker at %s: start one with `quota-broker demo` or `quota-broker serve`, or pass --addr (env QUOTA_BROKER_ADDR) (%s)", addr, cause)
	}
	return fmt.Errorf("broker %s: %w", addr, err)
}

// noBroker reports whether err is gRPC's UNAVAILABLE for an address where
// no broker listens: refused, or a name that does not resolve.
func noBroker(err error) bool {
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return true
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return false
	}
	msg := st.Message()
	return strings.Contains(msg, "connection refused") || strings.Contains(msg, "no such host") ||
		strings.Contains(msg, "produced zero addresses")
}

// nearModels returns up to n of models that look like want, closest
// first: those containing it give or take a few typing mistakes (one in
// four characters), so "sonet-4-5" finds the Sonnet 4.5 ids.
func nearModels(want string, models []string, n int) []string {
	want = strings.ToLower(want)
	type cand struct {
		id   string
		dist int
	}
	var cs []cand
	for _, m := range models {
		if d := substringDistance(want, strings.ToLower(m)); d <= max(1, len(want)/4) {
			cs = append(cs, cand{m, d})
		}
	}
	slices.SortStableFunc(cs, func(a, b cand) int {
		if a.dist != b.dist {
			return a.dist - b.dist
		}
		return strings.Compare(a.id, b.id)
	})
	var out []string
	for _, c := range cs {
		if !slices.Contains(out, c.id) {
			out = append(out, c.id)
		}
		if len(out) == n {
			break
		}
	}
	return out
}

// substringDistance is the fewest edits (insert, delete, replace a byte)
// that make want a substring of s (Sellers' variant of Levenshtein: a
// match may start and end anywhere in s).
func substringDistance(want, s string) int {
	prev := make([]int, len(s)+1) // row 0: the empty prefix matches anywhere
	cur := make([]int, len(s)+1)
	for i := 1; i <= len(want); i++ {
		cur[0] = i
		for j := 1; j <= len(s); j++ {
			cost := 1
			if want[i-1] == s[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return slices.Min(prev)
}

// list splits a comma-separated flag value (Regions, admin identities)
// into its non-empty, trimmed items.
func list(s string) []string {
	var items []string
	for it := range strings.SplitSeq(s, ",") {
		if it = strings.TrimSpace(it); it != "" {
			items = append(items, it)
		}
	}
	return items
}
