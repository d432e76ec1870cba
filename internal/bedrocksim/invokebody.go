package bedrocksim

import (
	"encoding/json"
	"sort"
	"strings"
)

// InvokeModel bodies are the provider's own request format, and Bedrock
// checks them against a JSON schema per model family before admission: a
// wrong shape (no max_tokens for Claude, a Titan body sent to Nova) is a 400
// ValidationException "Malformed input request: #: required key [max_tokens]
// not found, please reformat your input and try again." The simulator
// checks the top-level shape: required keys, keys the family does not know
// (for the families whose schemas are strict), and the types of the keys
// that matter for accounting. Converse needs none of this: its shape is the
// API's own.

type bodySchema struct {
	required []string
	// allowed lists the other keys; nil means the family accepts any others.
	allowed []string
	// types names the JSON type of some keys: "integer", "array", "object", "string".
	types map[string]string
	// enum restricts a string key to given values.
	enum map[string][]string
}

var (
	anthropicSchema = bodySchema{
		required: []string{"anthropic_version", "max_tokens", "messages"},
		allowed: []string{"system", "stop_sequences", "temperature", "top_p", "top_k", "tools", "tool_choice",
			"thinking", "anthropic_beta", "metadata", "output_config"},
		types: map[string]string{"max_tokens": "integer", "messages": "array", "anthropic_version": "string"},
		enum:  map[string][]string{"anthropic_version": {"bedrock-2023-05-31"}},
	}
	titanTextSchema = bodySchema{
		required: []string{"inputText"}, allowed: []string{"textGenerationConfig"},
		types: map[string]string{"inputText": "string", "textGenerationConfig": "object"},
	}
	titanEmbedSchema = bodySchema{
		required: []string{"inputText"}, allowed: []string{"dimensions", "normalize", "embeddingTypes"},
		types: map[string]string{"inputText": "string", "dimensions": "integer"},
	}
	novaSchema = bodySchema{
		required: []string{"messages"}, allowed: []string{"schemaVersion", "system", "inferenceConfig", "toolConfig"},
		types: map[string]string{"messages": "array", "system": "array", "inferenceConfig": "object"},
	}
	llamaSchema = bodySchema{
		required: []string{"prompt"}, allowed: []string{"max_gen_len", "temperature", "top_p", "images"},
		types: map[string]string{"prompt": "string", "max_gen_len": "integer"},
	}
	promptSchema = bodySchema{ // Mistral completions, DeepSeek
		required: []string{"prompt"}, types: map[string]string{"prompt": "string", "max_tokens": "integer"},
	}
	mistralChatSchema = bodySchema{
		required: []string{"messages"}, types: map[string]string{"messages": "array", "max_tokens": "integer"},
	}
	cohereChatSchema  = bodySchema{required: []string{"message"}, types: map[string]string{"message": "string", "max_tokens": "integer"}}
	cohereEmbedSchema = bodySchema{required: []string{"input_type"}, types: map[string]string{"texts": "array"}}
)

// invokeSchema returns the body schema of a model, or nil when the
// simulator does not check that family.
func invokeSchema(modelID string, body map[string]json.RawMessage) *bodySchema {
	switch {
	case strings.HasPrefix(modelID, "anthropic."):
		return &anthropicSchema
	case strings.HasPrefix(modelID, "amazon.titan-embed"):
		return &titanEmbedSchema
	case strings.HasPrefix(modelID, "amazon.titan-text"):
		return &titanTextSchema
	case strings.HasPrefix(modelID, "amazon.nova"):
		return &novaSchema
	case strings.HasPrefix(modelID, "meta."):
		return &llamaSchema
	case strings.HasPrefix(modelID, "mistral."):
		if _, chat := body["messages"]; chat {
			return &mistralChatSchema
		}
		return &promptSchema
	case strings.HasPrefix(modelID, "deepseek."):
		return &promptSchema
	case strings.HasPrefix(modelID, "cohere.embed"):
		return &cohereEmbedSchema
	case strings.HasPrefix(modelID, "cohere."):
		return &cohereChatSchema
	}
	return nil
}

// checkInvokeBody returns "" when body fits the model's schema, else the
// message Bedrock sends.
func checkInvokeBody(modelID string, raw []byte) string {
	var body map[string]json.RawMessage
	if err := json.Unmarshal(raw, &body); err != nil || body == nil {
		return "Malformed input request: #: expected type: JSONObject, please reformat your input and try again."
	}
	sc := invokeSchema(modelID, body)
	if sc == nil {
		return ""
	}
	var problems []string
	for _, k := range sc.required {
		if _, ok := body[k]; !ok {
			problems = append(problems, "#: required key ["+k+"] not found")
		}
	}
	keys := make([]string, 0, len(body))
	for k := range body {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if sc.allowed != nil && !contains(sc.required, k) && !contains(sc.allowed, k) {
			problems = append(problems, "#: extraneous key ["+k+"] is not permitted")
			continue
		}
		if want, ok := sc.types[k]; ok {
			if got := jsonType(body[k]); got != want {
				problems = append(problems, "#/"+k+": expected type: "+typeName(want)+", found: "+typeName(got))
				continue
			}
		}
		if vals, ok := sc.enum[k]; ok {
			var v string
			if json.Unmarshal(body[k], &v) == nil && !contains(vals, v) {
				problems = append(problems, "#/"+k+": "+v+" is not a valid enum value")
			}
		}
	}
	if len(problems) == 0 {
		return ""
	}
	return "Malformed input request: " + strings.Join(problems, ", ") + ", please reformat your input and try again."
}

func jsonType(v json.RawMessage) string {
	s := strings.TrimSpace(string(v))
	switch {
	case s == "":
		return "null"
	case s[0] == '{':
		return "object"
	case s[0] == '[':
		return "array"
	case s[0] == '"':
		return "string"
	case s == "null":
		return "null"
	case s == "true" || s == "false":
		return "boolean"
	case strings.ContainsAny(s, ".eE"):
		return "number"
	}
	return "integer"
}

func typeName(t string) string {
	switch t {
	case "object":
		return "JSONObject"
	case "array":
		return "JSONArray"
	case "string":
		return "String"
	case "integer":
		return "Integer"
	case "number":
		return "BigDecimal"
	case "boolean":
		return "Boolean"
	}
	return "Null"
}
