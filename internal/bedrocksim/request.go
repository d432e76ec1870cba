package bedrocksim

import (
	"bytes"
	"encoding/json"
	"errors"
	"hash"
	"hash/fnv"
	"io"
	"math"
	"regexp"
	"sort"
	"strconv"
)

// bodyScan is what the simulator reads from a request body, whatever the
// provider's format: the amount of text (for the input-token estimate), the
// prompt-cache prefix, and the output limit.
type bodyScan struct {
	chars       int    // characters of text in the request
	hash        uint64 // FNV-1a of all text, in order
	prefixChars int    // text before the last cache point, 0 if none
	prefixHash  uint64
	maxTokens   int // 0 when unset
	hasMax      bool
	forceOutput int // from a "sim:output_tokens=N" directive, -1 if none
}

// skipKeys hold structure, not text; their strings are not counted.
var skipKeys = map[string]bool{
	"role": true, "type": true, "anthropic_version": true, "format": true, "media_type": true,
	"bytes": true, "data": true, "modelId": true, "guardrailIdentifier": true, "guardrailVersion": true,
	"stopReason": true, "cachePoint": true, "cache_control": true, "toolChoice": true,
}

// maxKeys name the output limit in every provider's format: Converse
// (maxTokens), Anthropic and Mistral and Cohere (max_tokens), Nova
// (max_new_tokens), Llama (max_gen_len), Titan (maxTokenCount).
var maxKeys = map[string]bool{
	"maxTokens": true, "max_tokens": true, "max_new_tokens": true, "max_gen_len": true, "maxTokenCount": true,
}

var directiveRe = regexp.MustCompile(`sim:output_tokens=(\d+)`)

var errMalformed = errors.New("Malformed input request, please reformat your input and try again.")

// promptOrder is the order in which a model reads the parts of a request,
// whatever the order of the JSON keys: tools, then system, then messages.
var promptOrder = map[string]int{"toolConfig": 0, "tools": 0, "system": 1, "messages": 2}

// scanBody reads a request body. Top-level members are visited in prompt
// order and each is walked token by token, so the cache prefix is the text
// that precedes a cache point (Converse "cachePoint" blocks, Anthropic
// "cache_control" markers) as the model sees it.
func scanBody(b []byte) (bodyScan, error) {
	sc := bodyScan{forceOutput: -1}
	if m := directiveRe.FindSubmatch(b); m != nil {
		if n, err := strconv.Atoi(string(m[1])); err == nil {
			sc.forceOutput = n
		}
	}
	h := fnv.New64a()
	var top map[string]json.RawMessage
	if trimmed := bytes.TrimSpace(b); len(trimmed) > 0 && trimmed[0] == '{' {
		if err := json.Unmarshal(trimmed, &top); err != nil {
			return sc, errMalformed
		}
		keys := make([]string, 0, len(top))
		for k := range top {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			pi, oki := promptOrder[keys[i]]
			pj, okj := promptOrder[keys[j]]
			if !oki {
				pi = 3
			}
			if !okj {
				pj = 3
			}
			if pi != pj {
				return pi < pj
			}
			return keys[i] < keys[j]
		})
		for _, k := range keys {
			if err := sc.walk(top[k], k, h); err != nil {
				return sc, err
			}
		}
	} else if err := sc.walk(b, "", h); err != nil {
		return sc, err
	}
	sc.hash = h.Sum64()
	return sc, nil
}

// walk visits one JSON value in document order; key is the member name it
// sits under.
func (sc *bodyScan) walk(b []byte, key0 string, h hash.Hash64) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	type frame struct {
		obj       bool
		expectKey bool
		key       string
	}
	var stack []frame
	sawValue := false
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return errMalformed
		}
		sawValue = true
		key := key0
		if n := len(stack); n > 0 {
			top := &stack[n-1]
			if top.obj && top.expectKey {
				if d, ok := tok.(json.Delim); ok && d == '}' {
					stack = stack[:n-1]
					continue
				}
				k, _ := tok.(string)
				top.key, top.expectKey = k, false
				if k == "cachePoint" || k == "cache_control" {
					sc.prefixChars, sc.prefixHash = sc.chars, h.Sum64()
				}
				continue
			}
			key = top.key
			if top.obj {
				top.expectKey = true
			}
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{':
				stack = append(stack, frame{obj: true, expectKey: true, key: key})
			case '[':
				stack = append(stack, frame{key: key})
			default:
				if len(stack) > 0 {
					stack = stack[:len(stack)-1]
				}
			}
		case string:
			if !skipKeys[key] {
				sc.chars += len(v)
				h.Write([]byte(v))
			}
		case json.Number:
			if maxKeys[key] && !sc.hasMax {
				n, err := v.Int64()
				if err != nil || n < 0 || n > math.MaxInt32 {
					return errMalformed
				}
				sc.maxTokens, sc.hasMax = int(n), true
			}
		}
	}
	if !sawValue {
		return errMalformed
	}
	return nil
}

// tokensFor estimates tokens from characters: ceil(chars / charsPerToken).
func tokensFor(chars int, perToken float64) int {
	if chars <= 0 {
		return 0
	}
	return int(math.Ceil(float64(chars) / perToken))
}

// words make up generated text; each stands for one output token.
var words = []string{"the ", "sim ", "ulat", "ed ", "mod", "el ", "writ", "es ", "text ", "here "}

func genText(from, n int) string {
	var b bytes.Buffer
	for i := range n {
		b.WriteString(words[(from+i)%len(words)])
	}
	return b.String()
}
