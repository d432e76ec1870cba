package quotaclient

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
)

// opKind is one of the four leased operations.
type opKind int

const (
	opConverse opKind = iota + 1
	opConverseStream
	opInvokeModel
	opInvokeModelStream
)

func (k opKind) stream() bool { return k == opConverseStream || k == opInvokeModelStream }

// shape is what the middleware reads from an operation's input before the
// call: the model, max_tokens, and what to count input tokens from.
type shape struct {
	op        opKind
	modelID   string
	maxTokens int64 // 0: unset
	// Converse: the conversation; InvokeModel: the body.
	messages []types.Message
	system   []types.SystemContentBlock
	tools    *types.ToolConfiguration
	body     []byte
}

// shapeOf recognises the leased operations; every other input passes
// through the middleware untouched.
func shapeOf(params any) (shape, bool) {
	switch in := params.(type) {
	case *bedrockruntime.ConverseInput:
		s := shape{op: opConverse, modelID: deref(in.ModelId), messages: in.Messages, system: in.System, tools: in.ToolConfig}
		if in.InferenceConfig != nil && in.InferenceConfig.MaxTokens != nil {
			s.maxTokens = int64(*in.InferenceConfig.MaxTokens)
		}
		return s, true
	case *bedrockruntime.ConverseStreamInput:
		s := shape{op: opConverseStream, modelID: deref(in.ModelId), messages: in.Messages, system: in.System, tools: in.ToolConfig}
		if in.InferenceConfig != nil && in.InferenceConfig.MaxTokens != nil {
			s.maxTokens = int64(*in.InferenceConfig.MaxTokens)
		}
		return s, true
	case *bedrockruntime.InvokeModelInput:
		id := deref(in.ModelId)
		return shape{op: opInvokeModel, modelID: id, body: in.Body, maxTokens: bodyMaxTokens(id, in.Body)}, true
	case *bedrockruntime.InvokeModelWithResponseStreamInput:
		id := deref(in.ModelId)
		return shape{op: opInvokeModelStream, modelID: id, body: in.Body, maxTokens: bodyMaxTokens(id, in.Body)}, true
	}
	return shape{}, false
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// inputTokens is CountTokens' answer when a counter is configured and it
// answers, else the estimate.
func (c *Client) inputTokens(ctx context.Context, s shape) int64 {
	if c.o.counter != nil {
		in := &bedrockruntime.CountTokensInput{ModelId: &s.modelID}
		if s.body != nil {
			in.Input = &types.CountTokensInputMemberInvokeModel{Value: types.InvokeModelTokensRequest{Body: s.body}}
		} else {
			in.Input = &types.CountTokensInputMemberConverse{Value: types.ConverseTokensRequest{Messages: s.messages, System: s.system, ToolConfig: s.tools}}
		}
		out, err := c.o.counter.CountTokens(ctx, in)
		if err == nil && out.InputTokens != nil {
			return int64(*out.InputTokens)
		}
		c.log.Debug("count tokens failed; estimating", "model", s.modelID, "err", err)
	}
	return estimateTokens(s.textBytes(), c.o.inputMargin)
}

// estimateTokens is ceil(bytes/4) x (1+margin), rounded up: four bytes a
// token is the usual rule of thumb for English text (and what the
// simulator charges); the margin covers tokenizers that do worse.
func estimateTokens(bytes int, margin float64) int64 {
	t := (int64(bytes) + 3) / 4
	return t + int64(float64(t)*margin+0.999999)
}

// textBytes counts the text the model will read. Converse: text blocks of
// messages and system prompt, tool results, tool names, descriptions and
// schemas; images, documents and video are not counted (their token cost
// depends on the model; use CountTokens). InvokeModel: the whole body,
// which over-counts JSON punctuation and keys, on the safe side.
func (s shape) textBytes() int {
	if s.body != nil {
		return len(s.body)
	}
	n := 0
	for _, b := range s.system {
		if t, ok := b.(*types.SystemContentBlockMemberText); ok {
			n += len(t.Value)
		}
	}
	for _, m := range s.messages {
		for _, b := range m.Content {
			n += contentBytes(b)
		}
	}
	if s.tools != nil {
		for _, t := range s.tools.Tools {
			if spec, ok := t.(*types.ToolMemberToolSpec); ok {
				n += len(deref(spec.Value.Name)) + len(deref(spec.Value.Description))
				if js, ok := spec.Value.InputSchema.(*types.ToolInputSchemaMemberJson); ok && js.Value != nil {
					if b, err := js.Value.MarshalSmithyDocument(); err == nil {
						n += len(b)
					}
				}
			}
		}
	}
	return n
}

func contentBytes(b types.ContentBlock) int {
	switch v := b.(type) {
	case *types.ContentBlockMemberText:
		return len(v.Value)
	case *types.ContentBlockMemberToolResult:
		n := 0
		for _, c := range v.Value.Content {
			switch c := c.(type) {
			case *types.ToolResultContentBlockMemberText:
				n += len(c.Value)
			case *types.ToolResultContentBlockMemberJson:
				if c.Value != nil {
					if b, err := c.Value.MarshalSmithyDocument(); err == nil {
						n += len(b)
					}
				}
			}
		}
		return n
	case *types.ContentBlockMemberToolUse:
		if v.Value.Input != nil {
			if b, err := v.Value.Input.MarshalSmithyDocument(); err == nil {
				return len(b) + len(deref(v.Value.Name))
			}
		}
	}
	return 0
}

// maxTokenFields are the places an InvokeModel body keeps max_tokens.
type maxTokenFields struct {
	MaxTokens      *int64 `json:"max_tokens"`  // Anthropic, Mistral, Cohere, AI21 Jamba, DeepSeek
	MaxTokensCamel *int64 `json:"maxTokens"`   // AI21 Jurassic; Nova also accepts it
	MaxGenLen      *int64 `json:"max_gen_len"` // Meta Llama
	TextGeneration *struct {
		MaxTokenCount *int64 `json:"maxTokenCount"`
	} `json:"textGenerationConfig"` // Amazon Titan
	InferenceConfig *struct {
		MaxNewTokens *int64 `json:"max_new_tokens"`
		MaxTokens    *int64 `json:"maxTokens"`
	} `json:"inferenceConfig"` // Amazon Nova
}

// bodyMaxTokens reads max_tokens from an InvokeModel body, in the field the
// model's provider uses (see doc.go for the table). 0 means unset or
// unreadable: the broker then reserves the model's maximum.
func bodyMaxTokens(modelID string, body []byte) int64 {
	var f maxTokenFields
	if json.Unmarshal(body, &f) != nil {
		return 0
	}
	first := func(vs ...*int64) int64 {
		for _, v := range vs {
			if v != nil && *v > 0 {
				return *v
			}
		}
		return 0
	}
	var titan, novaNew, novaMax *int64
	if f.TextGeneration != nil {
		titan = f.TextGeneration.MaxTokenCount
	}
	if f.InferenceConfig != nil {
		novaNew, novaMax = f.InferenceConfig.MaxNewTokens, f.InferenceConfig.MaxTokens
	}
	switch provider(modelID) {
	case "anthropic", "mistral", "cohere", "deepseek":
		return first(f.MaxTokens)
	case "meta":
		return first(f.MaxGenLen)
	case "amazon":
		return first(titan, novaNew, novaMax, f.MaxTokensCamel)
	case "ai21":
		return first(f.MaxTokens, f.MaxTokensCamel)
	}
	return first(f.MaxTokens, f.MaxTokensCamel, f.MaxGenLen, titan, novaNew, novaMax)
}

// geoPrefixes are the inference-profile prefixes in front of a model id.
var geoPrefixes = map[string]bool{"us": true, "eu": true, "apac": true, "jp": true, "au": true, "ca": true, "in": true, "global": true, "us-gov": true}

// provider is the first dotted segment of the model id, after any ARN path
// and profile prefix: "anthropic" for us.anthropic.claude-....
func provider(modelID string) string {
	if i := strings.LastIndexByte(modelID, '/'); i >= 0 {
		modelID = modelID[i+1:]
	}
	p, rest, ok := strings.Cut(modelID, ".")
	if ok && geoPrefixes[p] {
		p, _, _ = strings.Cut(rest, ".")
	}
	return p
}
