package bedrocksim

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// bedrock-runtime speaks restJson1: POST /model/{modelId}/{op}, the model id
// URL-escaped (it may be an ARN or a profile id). Errors are typed by
// X-Amzn-ErrorType; streams are AWS event streams after an HTTP 200.

// cacheTTL is how long a prompt-cache entry lives (simulated); minCacheTokens
// is the smallest prefix Bedrock caches (1,024 for most Claude models).
const (
	cacheTTL       = 5 * time.Minute
	minCacheTokens = 1024
)

// target is what a model identifier resolved to.
type target struct {
	model  *Model
	scope  string
	dim    string // the CloudWatch ModelId dimension: the id as called
	region string
	pt     *ProvisionedThroughput // for ScopeProvisioned
}

const (
	msgInvalidModel = "The provided model identifier is invalid."
	msgUnavailable  = "Too many connections, please wait before trying again."
	msgNotReady     = "Model is not ready to serve inference requests. The model is in the process of being loaded."
	msgTimeout      = "Model has timed out in processing the request. Try your request again."
)

func (s *Sim) resolve(region, raw string) (target, string) {
	if isProvisionedARN(raw) {
		return s.resolveProvisioned(region, raw)
	}
	id := modelIDFromArn(raw)
	if m, ok := s.models[id]; ok {
		if !m.has("ON_DEMAND") {
			return target{}, fmt.Sprintf("Invocation of model ID %s with on-demand throughput isn’t supported. "+
				"Retry your request with the ID or ARN of an inference profile that contains this model.", id)
		}
		return target{model: m, scope: ScopeOnDemand, dim: id, region: region}, ""
	}
	p, ok := s.profiles[id]
	if !ok || !profileServes(p, region) {
		return target{}, msgInvalidModel
	}
	m := s.models[modelIDFromArn(p.Models[0].ModelArn)]
	scope := ScopeCrossRegion
	if strings.HasPrefix(id, "global.") {
		scope = ScopeGlobal
	}
	return target{model: m, scope: scope, dim: id, region: region}, ""
}

func (s *Sim) serveRuntime(w http.ResponseWriter, r *http.Request) {
	segs := strings.Split(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/")
	if len(segs) != 3 || r.Method != http.MethodPost {
		writeRestError(w, http.StatusNotFound, "UnknownOperationException", "no simulated API at "+r.Method+" "+r.URL.Path)
		return
	}
	rawID, err := url.PathUnescape(segs[1])
	if err != nil {
		writeRestError(w, http.StatusBadRequest, "ValidationException", msgInvalidModel)
		return
	}
	op := segs[2]
	switch op {
	case "invoke", "converse", "converse-stream", "invoke-with-response-stream", "count-tokens":
	default:
		writeRestError(w, http.StatusNotFound, "UnknownOperationException", "operation "+op+" is not simulated")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 32<<20))
	if err != nil {
		writeRestError(w, http.StatusBadRequest, "ValidationException", "cannot read request body")
		return
	}
	region := s.requestRegion(r)
	if op == "count-tokens" {
		s.countTokens(w, region, rawID, body)
		return
	}
	t, verr := s.resolve(region, rawID)
	if verr != "" {
		s.clientError(region, rawID, w, verr)
		return
	}
	s.invoke(w, r, t, op, body)
}

func (s *Sim) clientError(region, dim string, w http.ResponseWriter, msg string) {
	s.mu.Lock()
	s.metrics.add(region, dim, "InvocationClientErrors", s.Now(), 1)
	s.mu.Unlock()
	writeRestError(w, http.StatusBadRequest, "ValidationException", msg)
}

// plan is an admitted request: its reservation and what it will produce.
type plan struct {
	res                   *reservation
	input, cacheRead      int
	cacheWrite, output    int
	burndown              float64
	ttft                  time.Duration
	perToken              time.Duration
	midStreamThrottle     bool
	maxTokens             int
	hitMax                bool
	start                 time.Time
	charge, reservedValue float64
	provisioned           bool // on a Provisioned Throughput: its charge
}

func (s *Sim) invoke(w http.ResponseWriter, r *http.Request, t target, op string, body []byte) {
	m := t.model
	stream := op == "converse-stream" || op == "invoke-with-response-stream"
	embedding := m.MaxOutputTokens == 0
	if embedding && op != "invoke" {
		s.clientError(t.region, t.dim, w, "This action doesn't support the model that you provided. Try again with a supported text or chat model.")
		return
	}
	scan, err := scanBody(body)
	if err != nil {
		s.clientError(t.region, t.dim, w, err.Error())
		return
	}
	if op == "invoke" || op == "invoke-with-response-stream" {
		if msg := checkInvokeBody(m.ID, body); msg != "" {
			s.clientError(t.region, t.dim, w, msg)
			return
		}
	}
	maxTokens := m.MaxOutputTokens
	if scan.hasMax && !embedding {
		if scan.maxTokens > m.MaxOutputTokens {
			s.clientError(t.region, t.dim, w, fmt.Sprintf("The maximum tokens you requested exceeds the model limit of %d. "+
				"Try again with a maximum tokens value that is lower than %d.", m.MaxOutputTokens, m.MaxOutputTokens))
			return
		}
		maxTokens = scan.maxTokens
	}

	rt := &s.sc.Runtime
	perTok := rt.InputCharsPerToken
	if perTok == 0 {
		perTok = 4
	}
	total := max(1, tokensFor(scan.chars, perTok))
	prefix := tokensFor(scan.prefixChars, perTok)
	if prefix < minCacheTokens {
		prefix = 0
	}
	cacheKey := fmt.Sprintf("%s/%s/%x", t.region, m.ID, scan.prefixHash)
	burndown := m.burndown()
	reserveMul := burndown
	if rt.ReserveOutputBurndown != nil && !*rt.ReserveOutputBurndown {
		reserveMul = 1
	}

	s.mu.Lock()
	now := s.Now()
	s.advanceLocked(now)
	rs := s.regionLocked(t.region)
	// Faults come before admission: a refused request consumes nothing.
	if status, typ, msg := s.rollFaultLocked(); status != 0 {
		rs.faults++
		name := "InvocationServerErrors"
		if status == http.StatusTooManyRequests {
			name = "InvocationThrottles"
		}
		s.metrics.add(t.region, t.dim, name, now, 1)
		s.mu.Unlock()
		s.log.Debug("fault", "region", t.region, "model", t.dim, "error", typ)
		writeRestError(w, status, typ, msg)
		return
	}
	p := plan{burndown: burndown, maxTokens: maxTokens, start: now}
	if prefix > 0 {
		if exp, ok := s.caches[cacheKey]; ok && now.Before(exp) {
			p.cacheRead = prefix
		} else {
			p.cacheWrite = prefix
		}
	}
	p.input = total - p.cacheRead - p.cacheWrite
	p.reservedValue = float64(p.input+p.cacheWrite) + float64(maxTokens)*reserveMul
	var res *reservation
	var reason throttleReason
	if t.pt != nil {
		p.provisioned, p.burndown = true, 1
		p.reservedValue = provisionedCharge(p.input, p.cacheWrite, p.cacheRead, maxTokens)
		res, reason = rs.admitProvisionedLocked(now, s.provisionedQuotaLocked(rs, t.pt), p.reservedValue)
	} else {
		res, reason = rs.admitLocked(now, t.scope, m.ID, p.reservedValue)
	}
	if reason != "" {
		s.metrics.add(t.region, t.dim, "InvocationThrottles", now, 1)
		s.mu.Unlock()
		s.log.Debug("throttle", "region", t.region, "model", t.dim, "reserve", p.reservedValue, "reason", string(reason))
		writeRestError(w, http.StatusTooManyRequests, "ThrottlingException", string(reason))
		return
	}
	p.res = res
	if prefix > 0 {
		s.caches[cacheKey] = now.Add(cacheTTL)
	}
	if !embedding {
		p.output = s.sampleOutputLocked(maxTokens, scan.forceOutput)
		p.hitMax = p.output == maxTokens
	}
	p.ttft = s.sampleTTFTLocked()
	if tps := rt.Latency.OutputTokensPerSecond; tps > 0 {
		p.perToken = time.Duration(float64(time.Second) / tps)
	}
	p.midStreamThrottle = stream && p.output > 1 && rt.Faults.MidStreamThrottleRate > 0 && s.rng.Float64() < rt.Faults.MidStreamThrottleRate
	s.mu.Unlock()

	switch op {
	case "converse", "invoke":
		err := s.wait(r.Context(), p.ttft+time.Duration(p.output)*p.perToken)
		out := p.output
		if err != nil {
			out = 0 // the caller went away; Bedrock still bills the input
		}
		s.finish(t, &p, out, false)
		if err != nil {
			return
		}
		if op == "converse" {
			s.writeConverse(w, &p)
		} else {
			s.writeInvoke(w, t, &p, scan)
		}
	case "converse-stream", "invoke-with-response-stream":
		s.stream(w, r, t, op, &p)
	}
}

// finish settles the reservation and records the CloudWatch metrics.
func (s *Sim) finish(t target, p *plan, output int, throttled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.Now()
	p.output = output
	p.charge = float64(p.input+p.cacheWrite) + float64(output)*p.burndown
	if p.provisioned {
		p.charge = provisionedCharge(p.input, p.cacheWrite, p.cacheRead, output)
	}
	p.res.settleLocked(now, p.charge)
	if throttled {
		s.metrics.add(t.region, t.dim, "InvocationThrottles", now, 1)
	} else {
		s.metrics.add(t.region, t.dim, "Invocations", now, 1)
		s.metrics.add(t.region, t.dim, "InvocationLatency", now, float64(now.Sub(p.start).Milliseconds()))
	}
	s.metrics.add(t.region, t.dim, "InputTokenCount", now, float64(p.input))
	s.metrics.add(t.region, t.dim, "OutputTokenCount", now, float64(output))
	s.metrics.add(t.region, t.dim, "EstimatedTPMQuotaUsage", now, p.charge)
	if p.cacheRead > 0 {
		s.metrics.add(t.region, t.dim, "CacheReadInputTokenCount", now, float64(p.cacheRead))
	}
	if p.cacheWrite > 0 {
		s.metrics.add(t.region, t.dim, "CacheWriteInputTokenCount", now, float64(p.cacheWrite))
	}
}

// rollFaultLocked draws the injected pre-admission faults. Callers hold mu.
func (s *Sim) rollFaultLocked() (int, string, string) {
	f := &s.sc.Runtime.Faults
	if f.ServiceUnavailableRate+f.ModelNotReadyRate+f.ModelTimeoutRate == 0 {
		return 0, "", ""
	}
	u := s.rng.Float64()
	switch {
	case u < f.ServiceUnavailableRate:
		return http.StatusServiceUnavailable, "ServiceUnavailableException", msgUnavailable
	case u < f.ServiceUnavailableRate+f.ModelNotReadyRate:
		return http.StatusTooManyRequests, "ModelNotReadyException", msgNotReady
	case u < f.ServiceUnavailableRate+f.ModelNotReadyRate+f.ModelTimeoutRate:
		return http.StatusRequestTimeout, "ModelTimeoutException", msgTimeout
	}
	return 0, "", ""
}

// sampleOutputLocked draws the output length, never above maxTokens.
func (s *Sim) sampleOutputLocked(maxTokens, forced int) int {
	if forced >= 0 {
		return min(forced, maxTokens)
	}
	d := &s.sc.Runtime.OutputTokens
	n := 0
	switch d.Distribution {
	case "uniform":
		lo, hi := d.MinFraction, d.MaxFraction
		if hi <= 0 {
			hi = 1
		}
		f := lo + (hi-lo)*s.rng.Float64()
		n = int(math.Round(f * float64(maxTokens)))
	default:
		n = d.Fixed
		if n == 0 {
			n = 100
		}
	}
	if d.Max > 0 {
		n = min(n, d.Max)
	}
	return max(1, min(n, maxTokens))
}

func (s *Sim) sampleTTFTLocked() time.Duration {
	d := s.sc.Runtime.Latency.TimeToFirstTokenMs
	ms := d.Min
	if d.Max > d.Min {
		ms += (d.Max - d.Min) * s.rng.Float64()
	}
	return time.Duration(ms * float64(time.Millisecond))
}

func (p *plan) stopReason() string {
	if p.hitMax {
		return "max_tokens"
	}
	return "end_turn"
}

func (p *plan) usage() map[string]int {
	return map[string]int{
		"inputTokens": p.input, "outputTokens": p.output, "totalTokens": p.input + p.output + p.cacheRead + p.cacheWrite,
		"cacheReadInputTokens": p.cacheRead, "cacheWriteInputTokens": p.cacheWrite,
	}
}

func (s *Sim) writeConverse(w http.ResponseWriter, p *plan) {
	writeJSON(w, http.StatusOK, "application/json", map[string]any{
		"output": map[string]any{"message": map[string]any{
			"role": "assistant", "content": []map[string]string{{"text": genText(0, p.output)}},
		}},
		"stopReason": p.stopReason(),
		"usage":      p.usage(),
		"metrics":    map[string]int64{"latencyMs": s.Now().Sub(p.start).Milliseconds()},
	})
}

// writeInvoke answers InvokeModel in the provider's own body format, with
// usage in the X-Amzn-Bedrock-*-Token-Count headers as Bedrock reports it.
func (s *Sim) writeInvoke(w http.ResponseWriter, t target, p *plan, scan bodyScan) {
	h := w.Header()
	h.Set("X-Amzn-Bedrock-Input-Token-Count", strconv.Itoa(p.input))
	h.Set("X-Amzn-Bedrock-Output-Token-Count", strconv.Itoa(p.output))
	h.Set("X-Amzn-Bedrock-Invocation-Latency", strconv.FormatInt(s.Now().Sub(p.start).Milliseconds(), 10))
	if p.cacheRead > 0 || p.cacheWrite > 0 {
		h.Set("X-Amzn-Bedrock-Cache-Read-Input-Token-Count", strconv.Itoa(p.cacheRead))
		h.Set("X-Amzn-Bedrock-Cache-Write-Input-Token-Count", strconv.Itoa(p.cacheWrite))
	}
	writeJSON(w, http.StatusOK, "application/json", s.invokeBody(t, p, scan))
}

func (s *Sim) invokeBody(t target, p *plan, scan bodyScan) any {
	m := t.model
	text := genText(0, p.output)
	if m.MaxOutputTokens == 0 { // embedding
		vec := make([]float64, 256)
		for i := range vec {
			vec[i] = math.Sin(float64(scan.hash%1000) + float64(i))
		}
		if strings.HasPrefix(m.ID, "cohere.") {
			return map[string]any{"id": s.nextID("emb-"), "embeddings": [][]float64{vec}, "response_type": "embeddings_floats"}
		}
		return map[string]any{"embedding": vec, "inputTextTokenCount": p.input}
	}
	switch provider(m.ID) {
	case "anthropic":
		return map[string]any{
			"id": s.nextID("msg_bdrk_"), "type": "message", "role": "assistant", "model": strings.TrimPrefix(m.ID, "anthropic."),
			"content": []map[string]string{{"type": "text", "text": text}}, "stop_reason": p.stopReason(), "stop_sequence": nil,
			"usage": map[string]int{"input_tokens": p.input, "output_tokens": p.output,
				"cache_creation_input_tokens": p.cacheWrite, "cache_read_input_tokens": p.cacheRead},
		}
	case "amazon":
		if strings.HasPrefix(m.ID, "amazon.titan") {
			return map[string]any{"inputTextTokenCount": p.input, "results": []map[string]any{
				{"tokenCount": p.output, "outputText": text, "completionReason": "FINISH"}}}
		}
		return map[string]any{
			"output":     map[string]any{"message": map[string]any{"role": "assistant", "content": []map[string]string{{"text": text}}}},
			"stopReason": p.stopReason(),
			"usage":      map[string]int{"inputTokens": p.input, "outputTokens": p.output, "totalTokens": p.input + p.output},
		}
	case "meta":
		return map[string]any{"generation": text, "prompt_token_count": p.input, "generation_token_count": p.output, "stop_reason": "stop"}
	case "cohere":
		return map[string]any{"generation_id": s.nextID("gen-"), "text": text, "finish_reason": "COMPLETE"}
	case "mistral":
		return map[string]any{"outputs": []map[string]string{{"text": text, "stop_reason": "stop"}}}
	default:
		return map[string]any{"choices": []map[string]string{{"text": text, "stop_reason": "stop"}}}
	}
}

func provider(modelID string) string {
	p, _, _ := strings.Cut(modelID, ".")
	return p
}

// countTokens answers CountTokens with the same estimate admission uses.
func (s *Sim) countTokens(w http.ResponseWriter, region, rawID string, body []byte) {
	id := modelIDFromArn(rawID)
	m, ok := s.models[id]
	if !ok {
		if p, isProfile := s.profiles[id]; isProfile {
			m, ok = s.models[modelIDFromArn(p.Models[0].ModelArn)]
		}
	}
	if !ok {
		writeRestError(w, http.StatusBadRequest, "ValidationException", msgInvalidModel)
		return
	}
	if !m.CountTokens {
		writeRestError(w, http.StatusBadRequest, "ValidationException", "The provided model doesn't support counting tokens.")
		return
	}
	var in struct {
		Input struct {
			Converse    json.RawMessage `json:"converse"`
			InvokeModel *struct {
				Body string `json:"body"`
			} `json:"invokeModel"`
		} `json:"input"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		writeRestError(w, http.StatusBadRequest, "ValidationException", errMalformed.Error())
		return
	}
	payload := []byte(in.Input.Converse)
	if in.Input.InvokeModel != nil {
		b, err := base64.StdEncoding.DecodeString(in.Input.InvokeModel.Body)
		if err != nil {
			writeRestError(w, http.StatusBadRequest, "ValidationException", errMalformed.Error())
			return
		}
		payload = b
	}
	scan, err := scanBody(payload)
	if err != nil {
		writeRestError(w, http.StatusBadRequest, "ValidationException", err.Error())
		return
	}
	perTok := s.sc.Runtime.InputCharsPerToken
	if perTok == 0 {
		perTok = 4
	}
	writeJSON(w, http.StatusOK, "application/json", map[string]int{"inputTokens": max(1, tokensFor(scan.chars, perTok))})
}
