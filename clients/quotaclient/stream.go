package quotaclient

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"sync"
)

// maxFrame bounds one event-stream message (AWS caps them at 16 MiB);
// anything larger means we misread the stream, and we stop looking.
const maxFrame = 24 << 20

// frameReader splits the bytes of an AWS event stream into messages
// (prelude: total length, headers length, prelude CRC; headers; payload;
// message CRC). The SDK checks the CRCs; we only look.
type frameReader struct {
	buf    []byte
	broken bool
}

type frame struct {
	messageType, eventType, exceptionType string
	payload                               []byte
}

// feed appends p and calls fn for every complete message.
func (r *frameReader) feed(p []byte, fn func(frame)) {
	if r.broken {
		return
	}
	r.buf = append(r.buf, p...)
	off := 0
	for len(r.buf)-off >= 12 {
		total := int(binary.BigEndian.Uint32(r.buf[off:]))
		hlen := int(binary.BigEndian.Uint32(r.buf[off+4:]))
		if total < 16 || total > maxFrame || hlen > total-16 {
			r.broken, r.buf = true, nil
			return
		}
		if len(r.buf)-off < total {
			break
		}
		msg := r.buf[off : off+total]
		f, ok := parseHeaders(msg[12 : 12+hlen])
		if !ok {
			r.broken, r.buf = true, nil
			return
		}
		f.payload = msg[12+hlen : total-4]
		fn(f)
		off += total
	}
	if off > 0 {
		r.buf = r.buf[:copy(r.buf, r.buf[off:])]
	}
}

// parseHeaders reads the string headers we need and skips the others by
// their type's size.
func parseHeaders(h []byte) (frame, bool) {
	var f frame
	for len(h) > 0 {
		n := int(h[0])
		if len(h) < 1+n+1 {
			return f, false
		}
		name := string(h[1 : 1+n])
		typ := h[1+n]
		h = h[2+n:]
		var size int
		switch typ {
		case 0, 1: // bool true / false
		case 2: // byte
			size = 1
		case 3: // int16
			size = 2
		case 4: // int32
			size = 4
		case 5, 8: // int64, timestamp
			size = 8
		case 9: // uuid
			size = 16
		case 6, 7: // bytes, string: 2-byte length
			if len(h) < 2 {
				return f, false
			}
			l := int(binary.BigEndian.Uint16(h))
			if len(h) < 2+l {
				return f, false
			}
			if typ == 7 {
				v := string(h[2 : 2+l])
				switch name {
				case ":message-type":
					f.messageType = v
				case ":event-type":
					f.eventType = v
				case ":exception-type":
					f.exceptionType = v
				}
			}
			size = 2 + l
		default:
			return f, false
		}
		if len(h) < size {
			return f, false
		}
		h = h[size:]
	}
	return f, true
}

// usageOf reads usage from one event, if it carries any: ConverseStream's
// metadata event ({"usage": {...}}), or an InvokeModelWithResponseStream
// chunk ({"bytes": base64 of the provider's JSON}) whose JSON carries
// amazon-bedrock-invocationMetrics (the last one does).
func usageOf(f frame) (Usage, bool) {
	switch f.eventType {
	case "metadata":
		var m struct {
			Usage *struct {
				InputTokens           int64 `json:"inputTokens"`
				OutputTokens          int64 `json:"outputTokens"`
				CacheReadInputTokens  int64 `json:"cacheReadInputTokens"`
				CacheWriteInputTokens int64 `json:"cacheWriteInputTokens"`
			} `json:"usage"`
		}
		if json.Unmarshal(f.payload, &m) != nil || m.Usage == nil {
			return Usage{}, false
		}
		return Usage{InputTokens: m.Usage.InputTokens, OutputTokens: m.Usage.OutputTokens,
			CacheReadInputTokens: m.Usage.CacheReadInputTokens, CacheWriteInputTokens: m.Usage.CacheWriteInputTokens}, true
	case "chunk":
		var c struct {
			Bytes []byte `json:"bytes"` // base64 in JSON
		}
		if json.Unmarshal(f.payload, &c) != nil || !bytes.Contains(c.Bytes, []byte("amazon-bedrock-invocationMetrics")) {
			return Usage{}, false
		}
		var m struct {
			Metrics *struct {
				InputTokenCount           int64 `json:"inputTokenCount"`
				OutputTokenCount          int64 `json:"outputTokenCount"`
				CacheReadInputTokenCount  int64 `json:"cacheReadInputTokenCount"`
				CacheWriteInputTokenCount int64 `json:"cacheWriteInputTokenCount"`
			} `json:"amazon-bedrock-invocationMetrics"`
		}
		if json.Unmarshal(c.Bytes, &m) != nil || m.Metrics == nil {
			return Usage{}, false
		}
		return Usage{InputTokens: m.Metrics.InputTokenCount, OutputTokens: m.Metrics.OutputTokenCount,
			CacheReadInputTokens: m.Metrics.CacheReadInputTokenCount, CacheWriteInputTokens: m.Metrics.CacheWriteInputTokenCount}, true
	}
	return Usage{}, false
}

// streamBody wraps the HTTP body of a streaming response. The SDK's
// event-stream reader reads it (in the SDK's goroutine) and closes it when
// the stream ends, fails, or the caller closes the stream; streamBody
// watches the bytes go by and settles the lease exactly once, when the
// body reaches EOF, fails, is closed, or the call's ctx ends.
type streamBody struct {
	body io.ReadCloser
	call *call
	fr   frameReader // touched only by Read, which the SDK calls from one goroutine

	mu        sync.Mutex // guards usage, haveUsage, exception
	usage     Usage
	haveUsage bool
	exception string

	once    sync.Once
	stopCtx func() bool // stops the AfterFunc watching ctx
}

type streamEnd int

const (
	endEOF       streamEnd = iota // the stream ran to its end
	endFailed                     // a read failed (connection lost, ctx cancelled)
	endClosed                     // closed: by the SDK after an exception or at the end, or by the caller
	endCancelled                  // the call's ctx ended
)

func newStreamBody(ctx context.Context, cl *call, body io.ReadCloser) *streamBody {
	s := &streamBody{body: body, call: cl}
	s.stopCtx = context.AfterFunc(ctx, func() { s.finish(endCancelled) })
	return s
}

func (s *streamBody) Read(p []byte) (int, error) {
	n, err := s.body.Read(p)
	if n > 0 {
		s.fr.feed(p[:n], s.event)
	}
	switch {
	case err == io.EOF:
		s.finish(endEOF)
	case err != nil:
		s.finish(endFailed)
	}
	return n, err
}

func (s *streamBody) Close() error {
	err := s.body.Close()
	s.finish(endClosed)
	return err
}

func (s *streamBody) event(f frame) {
	switch f.messageType {
	case "exception", "error":
		s.mu.Lock()
		if s.exception == "" {
			s.exception = f.exceptionType
			if s.exception == "" {
				s.exception = "error"
			}
		}
		s.mu.Unlock()
	case "event":
		if u, ok := usageOf(f); ok {
			s.mu.Lock()
			s.usage, s.haveUsage = u, true
			s.mu.Unlock()
		}
	}
}

// finish settles the lease once. With usage seen, the call succeeded and
// is charged what Bedrock reported, however the stream ended after that.
// Without it the charge is the reservation's estimate (estimated input +
// the reserved max_tokens): an exception or an abandoned stream may have
// produced any output up to max_tokens, and Bedrock charges what was sent.
func (s *streamBody) finish(how streamEnd) {
	s.once.Do(func() {
		s.stopCtx()
		s.mu.Lock()
		u, have, exc := s.usage, s.haveUsage, s.exception
		s.mu.Unlock()
		cl := s.call
		switch {
		case have:
			cl.settle(OutcomeSuccess, u, "stream_complete")
		case exc != "":
			// A mid-stream exception comes after Bedrock admitted the call and
			// sent output, so it is not "consumed nothing" (OutcomeThrottled):
			// settle as an error at the estimate, and report the throttle
			// separately so that it still feeds the adaptive limit.
			cl.settle(OutcomeError, cl.estimateUsage(), "stream_exception_"+exc)
			if exc == "throttlingException" {
				cl.reportThrottle("mid-stream throttlingException")
			}
		case how == endEOF:
			cl.settle(OutcomeSuccess, cl.estimateUsage(), "stream_without_usage")
		default:
			cl.settle(OutcomeError, cl.estimateUsage(), "stream_abandoned")
		}
	})
}
