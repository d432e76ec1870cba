package bedrocksim

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// TestClosedSDKRequestBodyDoesNotCloseConnection forces, without timing, the
// interleaving behind the old "use of closed network connection" flake (see
// closeSafeBodies): the server has the whole request body and has sent its
// response headers; smithy-go's ClientHandler has returned and so closed the
// request body; only then does net/http's writeLoop make its final read of
// that body. The response body must still arrive.
//
// The unwrapped client is checked too, so the test shows that it reaches the
// interleaving. If that half fails, smithy-go no longer reports io.EOF from a
// closed body's WriteTo, and closeSafeBodies may go.
func TestClosedSDKRequestBodyDoesNotCloseConnection(t *testing.T) {
	t.Parallel()
	t.Run("wrapped", func(t *testing.T) {
		t.Parallel()
		body, err := requestAfterBodyClosed(t, func(c *http.Client) aws.HTTPClient { return closeSafeBodies{c} })
		if err != nil || body != "ok" {
			t.Fatalf("response body %q, %v; want ok", body, err)
		}
	})
	t.Run("unwrapped", func(t *testing.T) {
		t.Parallel()
		_, err := requestAfterBodyClosed(t, func(c *http.Client) aws.HTTPClient { return c })
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read error %v, want net.ErrClosed: smithy-go's closed request body no longer makes net/http close the connection", err)
		}
	})
}

// requestAfterBodyClosed sends one POST through smithy-go's ClientHandler,
// as every SDK operation does, and returns what reading the response body
// gave. The client's connection holds the request body's write until the
// handler has returned; the server holds the response body until the client
// has finished writing the request, cleanly or by closing the connection.
func requestAfterBodyClosed(t *testing.T, wrap func(*http.Client) aws.HTTPClient) (string, error) {
	payload := []byte(`{"ServiceCode":"bedrock"}`)
	var (
		unblockWrite = make(chan struct{}) // closed once the handler has returned
		requestDone  = make(chan struct{}) // request written, or connection closed
		doneOnce     sync.Once
	)
	finish := func() { doneOnce.Do(func() { close(requestDone) }) }

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b, err := io.ReadAll(r.Body); err != nil || !bytes.Equal(b, payload) {
			t.Errorf("server read %q, %v", b, err)
		}
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-requestDone:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)

	var dialer net.Dialer
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &gatedConn{Conn: c, payload: payload, unblock: unblockWrite, onClose: finish}, nil
	}}
	t.Cleanup(tr.CloseIdleConnections)

	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		WroteRequest: func(i httptrace.WroteRequestInfo) {
			if i.Err == nil {
				finish()
			}
		},
	})
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	req := smithyhttp.NewStackRequest().(*smithyhttp.Request)
	req.Method = http.MethodPost
	req.URL = u
	if req, err = req.SetStream(bytes.NewReader(payload)); err != nil {
		t.Fatal(err)
	}
	out, _, err := smithyhttp.NewClientHandler(wrap(&http.Client{Transport: tr})).Handle(ctx, req)
	close(unblockWrite)
	if err != nil {
		t.Fatalf("Handle: %v", err)
	}
	resp := out.(*smithyhttp.Response)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// gatedConn holds the write of the request body (after it has reached the
// socket) until unblock is closed, and reports its Close.
type gatedConn struct {
	net.Conn
	payload   []byte
	unblock   <-chan struct{}
	onClose   func()
	closeOnce sync.Once
}

func (c *gatedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if bytes.Equal(p, c.payload) {
		<-c.unblock
	}
	return n, err
}

// Close reports only after the socket is closed: the server then writes the
// response body, which must not reach a client read before that.
func (c *gatedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(c.onClose)
	return err
}
