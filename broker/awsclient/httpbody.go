package awsclient

import (
	"io"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// SafeBodies wraps an SDK client's HTTP client so that request bodies
// reach net/http without their io.WriterTo method. It works around a race
// between smithy-go (v1.28.9, the newest) and net/http that closes a
// connection while its response is still being read ("use of closed
// network connection"): net/http checks that a body is spent by reading it
// once more through WriteTo, smithy-go closes the body as soon as a
// (fast) response arrives, and its closed body answers WriteTo with io.EOF,
// which net/http takes for a write error. Through Read a closed body
// reports a clean end. clients/quotaclient carries the same wrapper (it may
// not import this package); the simulator's
// TestClosedSDKRequestBodyDoesNotCloseConnection reproduces the race.
//
// Use it as a client option, so that the SDK's own HTTP defaults stay:
//
//	servicequotas.NewFromConfig(cfg, func(o *servicequotas.Options) { o.HTTPClient = awsclient.SafeBodies(o.HTTPClient) })
func SafeBodies(c aws.HTTPClient) aws.HTTPClient {
	if _, ok := c.(safeBodies); ok || c == nil {
		return c
	}
	return safeBodies{c}
}

type safeBodies struct{ next aws.HTTPClient }

func (c safeBodies) Do(r *http.Request) (*http.Response, error) {
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = readCloserOnly{r.Body} // Close passes through: the SDK closes r.Body after Do
	}
	return c.next.Do(r)
}

// readCloserOnly hides every method of the body but Read and Close.
type readCloserOnly struct{ io.ReadCloser }
