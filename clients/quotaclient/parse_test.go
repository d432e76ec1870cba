package quotaclient

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"
)

func TestBodyMaxTokens(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		model, body string
		want        int64
	}{
		{"anthropic.claude-3-haiku-20240307-v1:0", `{"anthropic_version":"bedrock-2023-05-31","max_tokens":512,"messages":[]}`, 512},
		{"us.anthropic.claude-sonnet-4-5-20250929-v1:0", `{"max_tokens":64}`, 64},
		{"arn:aws:bedrock:us-east-1:1:inference-profile/global.anthropic.claude-haiku-4-5-20251001-v1:0", `{"max_tokens":7}`, 7},
		{"meta.llama3-1-8b-instruct-v1:0", `{"prompt":"hi","max_gen_len":256}`, 256},
		{"amazon.titan-text-express-v1", `{"inputText":"hi","textGenerationConfig":{"maxTokenCount":300}}`, 300},
		{"us.amazon.nova-lite-v1:0", `{"messages":[],"inferenceConfig":{"max_new_tokens":900}}`, 900},
		{"amazon.nova-pro-v1:0", `{"messages":[],"inferenceConfig":{"maxTokens":901}}`, 901},
		{"mistral.mistral-large-2407-v1:0", `{"prompt":"hi","max_tokens":100}`, 100},
		{"cohere.command-r-v1:0", `{"message":"hi","max_tokens":101}`, 101},
		{"ai21.jamba-1-5-large-v1:0", `{"messages":[],"max_tokens":102}`, 102},
		{"ai21.j2-ultra-v1", `{"prompt":"hi","maxTokens":103}`, 103},
		{"meta.llama3-1-8b-instruct-v1:0", `{"max_tokens":5}`, 0}, // not Llama's field
		{"anthropic.claude-3-haiku-20240307-v1:0", `{"messages":[]}`, 0},
		{"anthropic.claude-3-haiku-20240307-v1:0", `not json`, 0},
		{"acme.new-model-v1", `{"maxTokens":42}`, 42},
	} {
		if got := bodyMaxTokens(tc.model, []byte(tc.body)); got != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.model, tc.body, got, tc.want)
		}
	}
}

func TestEstimateTokens(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		bytes  int
		margin float64
		want   int64
	}{{0, 0.1, 0}, {1, 0, 1}, {4, 0, 1}, {5, 0, 2}, {400, 0.1, 110}, {401, 0.1, 112}} {
		if got := estimateTokens(tc.bytes, tc.margin); got != tc.want {
			t.Errorf("estimateTokens(%d, %v) = %d, want %d", tc.bytes, tc.margin, got, tc.want)
		}
	}
}

func encodeEvents(t testing.TB, msgs ...eventstream.Message) []byte {
	var buf bytes.Buffer
	enc := eventstream.NewEncoder()
	for _, m := range msgs {
		if err := enc.Encode(&buf, m); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func event(typ string, payload any) eventstream.Message {
	b, _ := json.Marshal(payload)
	var m eventstream.Message
	m.Headers.Set(":message-type", eventstream.StringValue("event"))
	m.Headers.Set(":event-type", eventstream.StringValue(typ))
	m.Headers.Set(":content-type", eventstream.StringValue("application/json"))
	m.Headers.Set("x-other", eventstream.Int64Value(7))
	m.Payload = b
	return m
}

// The frame reader finds usage however the bytes are split across reads.
func TestFrameReaderUsage(t *testing.T) {
	t.Parallel()
	metrics, _ := json.Marshal(map[string]any{"type": "message_stop",
		"amazon-bedrock-invocationMetrics": map[string]int{"inputTokenCount": 11, "outputTokenCount": 22}})
	exc := eventstream.Message{Payload: []byte(`{"message":"Too many tokens"}`)}
	exc.Headers.Set(":message-type", eventstream.StringValue("exception"))
	exc.Headers.Set(":exception-type", eventstream.StringValue("throttlingException"))
	stream := encodeEvents(t,
		event("messageStart", map[string]string{"role": "assistant"}),
		event("metadata", map[string]any{"usage": map[string]int{"inputTokens": 5, "outputTokens": 6, "cacheReadInputTokens": 7}}),
		event("chunk", map[string][]byte{"bytes": metrics}),
		exc,
	)
	for _, step := range []int{1, 3, 7, 64, len(stream)} {
		var fr frameReader
		var usages []Usage
		var exceptions []string
		for i := 0; i < len(stream); i += step {
			fr.feed(stream[i:min(i+step, len(stream))], func(f frame) {
				if f.messageType == "exception" {
					exceptions = append(exceptions, f.exceptionType)
				}
				if u, ok := usageOf(f); ok {
					usages = append(usages, u)
				}
			})
		}
		want := []Usage{{InputTokens: 5, OutputTokens: 6, CacheReadInputTokens: 7}, {InputTokens: 11, OutputTokens: 22}}
		if len(usages) != 2 || usages[0] != want[0] || usages[1] != want[1] || len(exceptions) != 1 || exceptions[0] != "throttlingException" {
			t.Fatalf("step %d: usages %v exceptions %v", step, usages, exceptions)
		}
	}
}

// FuzzFrameReader: arbitrary bytes never panic or grow the buffer past one
// frame.
func FuzzFrameReader(f *testing.F) {
	f.Add(encodeEvents(f, event("metadata", map[string]any{"usage": map[string]int{"inputTokens": 1}})))
	f.Add([]byte{0, 0, 0, 16, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Fuzz(func(t *testing.T, b []byte) {
		var fr frameReader
		half := len(b) / 2
		fr.feed(b[:half], func(f frame) { usageOf(f) })
		fr.feed(b[half:], func(f frame) { usageOf(f) })
		if len(fr.buf) > maxFrame {
			t.Fatalf("buffer %d", len(fr.buf))
		}
	})
}
