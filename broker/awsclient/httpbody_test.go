package awsclient

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

type doFunc func(*http.Request) (*http.Response, error)

func (f doFunc) Do(r *http.Request) (*http.Response, error) { return f(r) }

func TestSafeBodiesHidesWriterTo(t *testing.T) {
	var writerTo, closed bool
	next := doFunc(func(r *http.Request) (*http.Response, error) {
		_, writerTo = r.Body.(io.WriterTo)
		return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
	})
	body := &closeRecorder{Reader: bytes.NewReader([]byte("{}")), closed: &closed}
	req, _ := http.NewRequest("POST", "http://127.0.0.1/", nil)
	req.Body = body
	if _, ok := req.Body.(io.WriterTo); !ok {
		t.Fatal("test body lacks WriterTo")
	}
	c := SafeBodies(next)
	if inner := SafeBodies(c).(safeBodies).next; func() bool { _, twice := inner.(safeBodies); return twice }() {
		t.Error("SafeBodies wrapped twice")
	}
	if _, err := c.Do(req); err != nil {
		t.Fatal(err)
	}
	if writerTo {
		t.Error("the body reached the HTTP client with io.WriterTo")
	}
	req.Body.Close()
	if !closed {
		t.Error("Close did not pass through")
	}
}

type closeRecorder struct {
	*bytes.Reader
	closed *bool
}

func (c *closeRecorder) Close() error { *c.closed = true; return nil }
