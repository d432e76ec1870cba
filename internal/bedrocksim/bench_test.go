package bedrocksim

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"
)

// BenchmarkConverse measures the simulator's own cost per admitted request
// through the real SDK and loopback HTTP (no simulated latency).
func BenchmarkConverse(b *testing.B) {
	sc := testScenario()
	sc.Quotas["us-east-1"][1].Value = 1e15 // global Sonnet 4.5: never throttles
	h := newHarness(b, sc)
	ctx := context.Background()
	in := converseIn("global."+sonnet45, prompt(500), 1000)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := h.rt.Converse(ctx, in); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkConverseStream is the same for the event-stream path (100
// output tokens in 13 deltas), read with plain net/http and the event-stream
// decoder: looping the SDK's ConverseStream client sequentially fails about
// once in a thousand streams with "use of closed network connection" on the
// client side, which the raw reader never shows over millions of events.
func BenchmarkConverseStream(b *testing.B) {
	sc := testScenario()
	sc.Quotas["us-east-1"][1].Value = 1e15
	h := newHarness(b, sc)
	url := h.url + "/model/global." + strings.ReplaceAll(sonnet45, ":", "%3A") + "/converse-stream"
	body := `{"messages":[{"role":"user","content":[{"text":"` + prompt(500) + `"}]}],"inferenceConfig":{"maxTokens":1000}}`
	for b.Loop() {
		resp, err := http.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		dec := eventstream.NewDecoder()
		n := 0
		for {
			if _, err := dec.Decode(resp.Body, nil); err == io.EOF {
				break
			} else if err != nil {
				b.Fatal(err)
			}
			n++
		}
		resp.Body.Close()
		if n != 17 {
			b.Fatalf("%d events, want 17", n)
		}
	}
}
