// Command halfopen measures what header-only gRPC streams cost a broker
// (issue 16 item 3): it opens -conns connections to -addr, sends -streams
// calls on each that send their headers and never their request, and
// samples the broker's resident memory (-pid, from /proc) for -hold, then
// prints it before, at its peak, and the streams' fates.
//
//	quota-broker serve --tokens tokens.json --listen 127.0.0.1:50051 &
//	go run ./bench/halfopen -addr 127.0.0.1:50051 -pid $!
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "broker address")
	pid := flag.Int("pid", 0, "broker process id (for its memory)")
	conns := flag.Int("conns", 100, "connections")
	streams := flag.Int("streams", 1000, "header-only calls per connection")
	token := flag.String("token", "", "bearer token to send (default none)")
	hold := flag.Duration("hold", 15*time.Second, "how long to keep the streams open and sample memory")
	flag.Parse()
	before := rss(*pid)
	var ended atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	for range *conns {
		c, err := net.Dial("tcp", *addr)
		if err != nil {
			log.Fatal(err)
		}
		mu.Lock()
		open = append(open, c)
		mu.Unlock()
		wg.Go(func() { attack(c, *streams, *token, &ended) })
	}
	peak := before
	deadline := time.Now().Add(*hold)
	for time.Now().Before(deadline) {
		peak = max(peak, rss(*pid))
		time.Sleep(100 * time.Millisecond) // sampling interval
	}
	for _, c := range open {
		c.Close()
	}
	wg.Wait()
	fmt.Printf("conns %d x streams %d: RSS before %d MiB, peak %d MiB; streams the server ended with a status %d\n",
		*conns, *streams, before>>20, peak>>20, ended.Load())
}

// attack sends n header-only calls on c and counts the streams the server
// ends with a status, until c is closed.
func attack(c net.Conn, n int, token string, ended *atomic.Int64) {
	c.Write([]byte(http2.ClientPreface))
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings()
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for i := range n {
		buf.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/quotabroker.v1.QuotaBroker/ListBudgets"},
			{":authority", "broker"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if token != "" {
			enc.WriteField(hpack.HeaderField{Name: "authorization", Value: "Bearer " + token})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: buf.Bytes(), EndHeaders: true}); err != nil {
			return
		}
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				ended.Add(1)
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		}
	}
}

// rss is the resident memory of process pid in bytes (0 if unknown).
func rss(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
