package quotaclient

import (
	"io"
	"net/http"
)

// httpDoer is what bedrockruntime.Options.HTTPClient is.
type httpDoer interface {
	Do(*http.Request) (*http.Response, error)
}

// safeBodies hands the SDK's request bodies to net/http without their
// io.WriterTo method, working around a race between smithy-go (v1.28.9,
// the newest) and net/http that closes a connection while its response is
// being read ("use of closed network connection"; a stream then fails in
// its Err(), after Bedrock has charged the call):
//
//   - net/http writes the body's Content-Length bytes, then reads the body
//     once more (io.Copy, which prefers WriteTo) to check it is empty;
//   - when the response comes first, smithy-go's ClientHandler closes the
//     request body as soon as Do returns, and its closed body answers
//     WriteTo with io.EOF instead of (0, nil);
//   - net/http takes that for a write error and closes the connection.
//
// Through Read the same closed body reports a clean end. The simulator's
// TestClosedSDKRequestBodyDoesNotCloseConnection forces the interleaving
// and will say when an upgrade fixes it. WithLeases installs it around
// whatever client the SDK resolved, so the SDK's own HTTP defaults stay.
type safeBodies struct{ next httpDoer }

func (c safeBodies) Do(r *http.Request) (*http.Response, error) {
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = readCloserOnly{r.Body} // Close passes through: the SDK closes r.Body after Do
	}
	return c.next.Do(r)
}

// readCloserOnly hides every method of the body but Read and Close.
type readCloserOnly struct{ io.ReadCloser }

func withSafeBodies(c httpDoer) httpDoer {
	if _, ok := c.(safeBodies); ok || c == nil {
		return c
	}
	return safeBodies{c}
}
