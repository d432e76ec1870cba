package bedrocksim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"
)

// deltaTokens is how many output tokens one streamed delta carries.
const deltaTokens = 8

// eventWriter writes AWS event-stream messages and flushes each one, so a
// client sees tokens as they are "generated".
type eventWriter struct {
	w   http.ResponseWriter
	enc *eventstream.Encoder
	err error
}

func (e *eventWriter) send(msgType, typeHeader, typeName string, payload any) {
	if e.err != nil {
		return
	}
	b, err := json.Marshal(payload)
	if err != nil {
		e.err = fmt.Errorf("encode %s: %w", typeName, err)
		return
	}
	var msg eventstream.Message
	msg.Headers.Set(":message-type", eventstream.StringValue(msgType))
	msg.Headers.Set(typeHeader, eventstream.StringValue(typeName))
	msg.Headers.Set(":content-type", eventstream.StringValue("application/json"))
	msg.Payload = b
	if err := e.enc.Encode(e.w, msg); err != nil {
		e.err = fmt.Errorf("write %s: %w", typeName, err)
		return
	}
	if f, ok := e.w.(http.Flusher); ok {
		f.Flush()
	}
}

func (e *eventWriter) event(name string, payload any) { e.send("event", ":event-type", name, payload) }

// exception sends a modelled error after the 200, as Bedrock does mid-stream.
func (e *eventWriter) exception(name, message string) {
	e.send("exception", ":exception-type", name, map[string]string{"message": message})
}

// chunk wraps a provider-format JSON body as InvokeModelWithResponseStream's
// PayloadPart ({"bytes": base64}).
func (e *eventWriter) chunk(body any) {
	b, err := json.Marshal(body)
	if err != nil {
		e.err = fmt.Errorf("encode chunk: %w", err)
		return
	}
	e.event("chunk", map[string][]byte{"bytes": b})
}

// stream runs an admitted streaming request: time to first token, then
// deltas paced at the scenario's token rate, then the closing events with
// usage. An injected mid-stream throttle stops half way with a
// throttlingException event; the reservation settles on what was emitted.
func (s *Sim) stream(w http.ResponseWriter, r *http.Request, t target, op string, p *plan) {
	w.Header().Set("Content-Type", "application/vnd.amazon.eventstream")
	w.Header().Set("X-Amzn-RequestId", requestID())
	if op == "invoke-with-response-stream" {
		w.Header().Set("X-Amzn-Bedrock-Content-Type", "application/json")
	}
	w.WriteHeader(http.StatusOK)
	ew := &eventWriter{w: w, enc: eventstream.NewEncoder()}
	ctx := r.Context()
	anthropic := provider(t.model.ID) == "anthropic"
	converse := op == "converse-stream"

	stopAt := p.output
	if p.midStreamThrottle {
		stopAt = p.output / 2
	}
	emitted := 0
	if err := s.wait(ctx, p.ttft); err != nil {
		s.finish(t, p, 0, false)
		return
	}
	firstByte := s.Now().Sub(p.start).Milliseconds()
	switch {
	case converse:
		ew.event("messageStart", map[string]string{"role": "assistant"})
	case anthropic:
		ew.chunk(map[string]any{"type": "message_start", "message": map[string]any{
			"id": s.nextID("msg_bdrk_"), "type": "message", "role": "assistant", "model": strings.TrimPrefix(t.model.ID, "anthropic."),
			"content": []any{}, "stop_reason": nil, "stop_sequence": nil,
			"usage": map[string]int{"input_tokens": p.input, "output_tokens": 1,
				"cache_creation_input_tokens": p.cacheWrite, "cache_read_input_tokens": p.cacheRead},
		}})
		ew.chunk(map[string]any{"type": "content_block_start", "index": 0, "content_block": map[string]string{"type": "text", "text": ""}})
	}
	for emitted < stopAt && ew.err == nil {
		n := min(deltaTokens, stopAt-emitted)
		if err := s.wait(ctx, time.Duration(n)*p.perToken); err != nil {
			break
		}
		text := genText(emitted, n)
		emitted += n
		switch {
		case converse:
			ew.event("contentBlockDelta", map[string]any{"contentBlockIndex": 0, "delta": map[string]string{"text": text}})
		case anthropic:
			ew.chunk(map[string]any{"type": "content_block_delta", "index": 0, "delta": map[string]string{"type": "text_delta", "text": text}})
		case provider(t.model.ID) == "meta":
			ew.chunk(map[string]any{"generation": text, "prompt_token_count": nil, "generation_token_count": emitted, "stop_reason": nil})
		default:
			ew.chunk(map[string]any{"outputText": text, "index": 0, "totalOutputTextTokenCount": emitted, "completionReason": nil})
		}
	}
	if p.midStreamThrottle || emitted < p.output {
		s.finish(t, p, emitted, p.midStreamThrottle)
		if p.midStreamThrottle {
			ew.exception("throttlingException", string(reasonTPM))
		}
		return
	}
	s.finish(t, p, emitted, false)
	latency := s.Now().Sub(p.start).Milliseconds()
	metrics := map[string]int64{
		"inputTokenCount": int64(p.input), "outputTokenCount": int64(p.output),
		"invocationLatency": latency, "firstByteLatency": firstByte,
	}
	switch {
	case converse:
		ew.event("contentBlockStop", map[string]int{"contentBlockIndex": 0})
		ew.event("messageStop", map[string]string{"stopReason": p.stopReason()})
		ew.event("metadata", map[string]any{"usage": p.usage(), "metrics": map[string]int64{"latencyMs": latency}})
	case anthropic:
		ew.chunk(map[string]any{"type": "content_block_stop", "index": 0})
		ew.chunk(map[string]any{"type": "message_delta", "delta": map[string]any{"stop_reason": p.stopReason(), "stop_sequence": nil},
			"usage": map[string]int{"output_tokens": p.output}})
		ew.chunk(map[string]any{"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics})
	case provider(t.model.ID) == "meta":
		ew.chunk(map[string]any{"generation": "", "prompt_token_count": p.input, "generation_token_count": p.output,
			"stop_reason": "stop", "amazon-bedrock-invocationMetrics": metrics})
	default:
		ew.chunk(map[string]any{"outputText": "", "index": 0, "totalOutputTextTokenCount": p.output, "completionReason": "FINISH",
			"inputTextTokenCount": p.input, "amazon-bedrock-invocationMetrics": metrics})
	}
	if ew.err != nil {
		s.log.Debug("stream write", "model", t.dim, "error", ew.err)
	}
}
