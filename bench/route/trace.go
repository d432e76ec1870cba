package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"

	"github.com/bedrockqb/quotabroker/broker"
)

// trace (-v) records every request the simulator answered, and for each
// ThrottlingException the broker's effective TPM of the throttled Region
// at that moment, so that the cost of learning the drop can be read
// throttle by throttle: which throttle cut the ceiling, and which request
// went into the bucket a throttle had just shown empty.
type trace struct {
	now       func() time.Duration
	mu        sync.Mutex // guards b, throttles and requests
	b         *broker.Broker
	throttles []traced
	requests  []traced
}

type traced struct {
	at        time.Duration // simulated, from the run's start: when the request was sent
	region    string
	ok        bool  // not throttled
	effective int64 // throttles only: the broker's effective TPM then (0: no broker)
}

// client wraps next so that every answer is recorded.
func (t *trace) client(next aws.HTTPClient) aws.HTTPClient {
	if next == nil {
		next = awshttp.NewBuildableClient()
	}
	return tracedClient{t: t, next: next}
}

type tracedClient struct {
	t    *trace
	next aws.HTTPClient
}

func (c tracedClient) Do(r *http.Request) (*http.Response, error) {
	sent := c.t.now()
	resp, err := c.next.Do(r)
	if err == nil {
		c.t.note(traced{at: sent, region: regionOf(r), ok: resp.StatusCode != http.StatusTooManyRequests})
	}
	return resp, err
}

// regionOf reads the Region from the request's SigV4 credential scope
// (Credential=AKID/date/region/service/aws4_request).
func regionOf(r *http.Request) string {
	a := r.Header.Get("Authorization")
	i := strings.Index(a, "Credential=")
	if i < 0 {
		return "?"
	}
	parts := strings.Split(a[i+len("Credential="):], "/")
	if len(parts) < 3 {
		return "?"
	}
	return parts[2]
}

func (t *trace) note(ev traced) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.requests = append(t.requests, ev)
	if ev.ok {
		return
	}
	if t.b != nil {
		if rs, _ := t.b.Report(broker.ReportFilter{Region: ev.region}); len(rs) > 0 {
			ev.effective = rs[0].Effective.TPM
		}
	}
	t.throttles = append(t.throttles, ev)
}

// print lists the throttles, each with the requests sent to its Region in
// the 3 s before it (seconds before, and ok or throttled).
func (t *trace) print(out io.Writer, name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(out, "%s: %d throttles (simulated time sent, Region, the broker's effective TPM there when answered; requests there in the 3 s before):\n",
		name, len(t.throttles))
	for _, ev := range t.throttles {
		fmt.Fprintf(out, "  %9s %s %7d  before:", ev.at.Truncate(10*time.Millisecond), ev.region, ev.effective)
		for _, r := range t.requests {
			if r.region == ev.region && r.at >= ev.at-3*time.Second && r.at < ev.at {
				state := "ok"
				if !r.ok {
					state = "throttled"
				}
				fmt.Fprintf(out, " %.2fs %s", (r.at - ev.at).Seconds(), state)
			}
		}
		fmt.Fprintln(out)
	}
}
