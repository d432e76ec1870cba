package bedrocksim

import (
	"crypto/rand"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// The Bedrock control plane speaks restJson1: GET routes, camelCase JSON,
// timestamps as RFC 3339 strings, errors typed by the X-Amzn-ErrorType header.

// profileEpoch is when system-defined profiles claim to have been created.
var profileEpoch = time.Date(2024, 8, 27, 0, 0, 0, 0, time.UTC)

func (s *Sim) serveControl(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeRestError(w, http.StatusMethodNotAllowed, "ValidationException", "method "+r.Method+" is not supported")
		return
	}
	region := s.requestRegion(r)
	q := r.URL.Query()
	segs := strings.Split(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/")
	switch {
	case segs[0] == "foundation-models" && len(segs) == 1:
		var out []map[string]any
		for i := range s.sc.Models {
			m := &s.sc.Models[i]
			if p := q.Get("byProvider"); p != "" && !strings.EqualFold(p, m.Provider) {
				continue
			}
			if t := q.Get("byInferenceType"); t != "" && !m.has(t) {
				continue
			}
			if o := q.Get("byOutputModality"); o != "" && !contains(m.OutputModalities, o) {
				continue
			}
			if q.Get("byCustomizationType") != "" { // the simulated catalogue has no customisations
				continue
			}
			out = append(out, s.modelJSON(region, m))
		}
		if out == nil {
			out = []map[string]any{}
		}
		writeJSON(w, http.StatusOK, "application/json", map[string]any{"modelSummaries": out})
	case segs[0] == "foundation-models" && len(segs) == 2:
		id, _ := url.PathUnescape(segs[1])
		m, ok := s.models[modelIDFromArn(id)]
		if !ok {
			writeRestError(w, http.StatusNotFound, "ResourceNotFoundException", "The model "+id+" does not exist.")
			return
		}
		writeJSON(w, http.StatusOK, "application/json", map[string]any{"modelDetails": s.modelJSON(region, m)})
	case segs[0] == "inference-profiles" && len(segs) == 1:
		if t := q.Get("type"); t != "" && t != "SYSTEM_DEFINED" {
			writeJSON(w, http.StatusOK, "application/json", map[string]any{"inferenceProfileSummaries": []any{}})
			return
		}
		var all []map[string]any
		for i := range s.sc.InferenceProfiles {
			p := &s.sc.InferenceProfiles[i]
			if profileServes(p, region) {
				all = append(all, s.profileJSON(region, p))
			}
		}
		from := 0
		if t := q.Get("nextToken"); t != "" {
			n, err := strconv.Atoi(t)
			if err != nil || n < 0 || n > len(all) {
				writeRestError(w, http.StatusBadRequest, "ValidationException", "The provided pagination token is invalid.")
				return
			}
			from = n
		}
		size := 1000
		if m := q.Get("maxResults"); m != "" {
			n, err := strconv.Atoi(m)
			if err != nil || n < 1 || n > 1000 {
				writeRestError(w, http.StatusBadRequest, "ValidationException", "maxResults must be between 1 and 1000.")
				return
			}
			size = n
		}
		end := min(from+size, len(all))
		out := map[string]any{"inferenceProfileSummaries": append([]map[string]any{}, all[from:end]...)}
		if end < len(all) {
			out["nextToken"] = strconv.Itoa(end)
		}
		writeJSON(w, http.StatusOK, "application/json", out)
	case segs[0] == "inference-profiles" && len(segs) == 2:
		id, _ := url.PathUnescape(segs[1])
		p, ok := s.profiles[modelIDFromArn(id)]
		if !ok || !profileServes(p, region) {
			writeRestError(w, http.StatusNotFound, "ResourceNotFoundException", "Inference profile "+id+" not found.")
			return
		}
		writeJSON(w, http.StatusOK, "application/json", s.profileJSON(region, p))
	case segs[0] == "provisioned-model-throughputs" && len(segs) == 1:
		out := []map[string]any{}
		s.mu.Lock()
		for _, pt := range s.provisionedInLocked(region) {
			out = append(out, s.provisionedJSONLocked(region, pt))
		}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, "application/json", map[string]any{"provisionedModelSummaries": out})
	case segs[0] == "provisioned-model-throughput" && len(segs) == 2:
		// GetProvisionedModelThroughput takes the name or the ARN.
		id, _ := url.PathUnescape(segs[1])
		s.mu.Lock()
		for _, pt := range s.provisionedInLocked(region) {
			if j := s.provisionedJSONLocked(region, pt); id == pt.Name || id == j["provisionedModelArn"] {
				s.mu.Unlock()
				writeJSON(w, http.StatusOK, "application/json", j)
				return
			}
		}
		s.mu.Unlock()
		writeRestError(w, http.StatusNotFound, "ResourceNotFoundException", "Provisioned model "+id+" not found.")
	default:
		writeRestError(w, http.StatusNotFound, "UnknownOperationException", "no simulated API at GET "+r.URL.Path)
	}
}

// provisionedJSONLocked describes pt as listed in region. Callers hold mu.
func (s *Sim) provisionedJSONLocked(region string, pt *ProvisionedThroughput) map[string]any {
	arn := s.provisionedARN(region, pt)
	fm := fmt.Sprintf("arn:aws:bedrock:%s::foundation-model/%s", region, pt.ModelID)
	status := s.provisionedStatusLocked(pt)
	ts := profileEpoch.Format(time.RFC3339)
	return map[string]any{
		"provisionedModelName": pt.Name, "provisionedModelArn": arn, "modelArn": fm, "desiredModelArn": fm,
		"foundationModelArn": fm, "modelUnits": pt.ModelUnits, "desiredModelUnits": pt.ModelUnits,
		"status": status, "creationTime": ts, "lastModifiedTime": ts,
	}
}

func (s *Sim) modelJSON(region string, m *Model) map[string]any {
	life := m.Lifecycle
	if life == "" {
		life = "ACTIVE"
	}
	embedding := contains(m.OutputModalities, "EMBEDDING")
	return map[string]any{
		"modelArn":                   fmt.Sprintf("arn:aws:bedrock:%s::foundation-model/%s", region, m.ID),
		"modelId":                    m.ID,
		"modelName":                  m.Name,
		"providerName":               m.Provider,
		"inputModalities":            nonNil(m.InputModalities),
		"outputModalities":           nonNil(m.OutputModalities),
		"responseStreamingSupported": !embedding,
		"customizationsSupported":    []string{},
		"inferenceTypesSupported":    nonNil(m.InferenceTypes),
		"modelLifecycle":             map[string]any{"status": life},
	}
}

func (s *Sim) profileJSON(region string, p *InferenceProfile) map[string]any {
	typ, status := p.Type, p.Status
	if typ == "" {
		typ = "SYSTEM_DEFINED"
	}
	if status == "" {
		status = "ACTIVE"
	}
	models := make([]map[string]string, len(p.Models))
	for i, m := range p.Models {
		models[i] = map[string]string{"modelArn": m.ModelArn}
	}
	ts := profileEpoch.Format(time.RFC3339)
	return map[string]any{
		"inferenceProfileName": p.Name, "description": p.Description,
		"createdAt": ts, "updatedAt": ts,
		"inferenceProfileArn": fmt.Sprintf("arn:aws:bedrock:%s:%s:inference-profile/%s", region, s.sc.AccountID, p.ID),
		"models":              models, "inferenceProfileId": p.ID, "status": status, "type": typ,
	}
}

// profileServes reports whether a request sent to region may use p.
func profileServes(p *InferenceProfile, region string) bool {
	return len(p.SourceRegions) == 0 || contains(p.SourceRegions, region)
}

// writeRestError answers in the restJson1 error shape Bedrock uses: the type
// in X-Amzn-ErrorType with its coral namespace suffix, the message in the body.
func writeRestError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("X-Amzn-ErrorType", typ+":http://internal.amazon.com/coral/com.amazon.bedrock/")
	writeJSON(w, status, "application/json", map[string]string{"message": msg})
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func nonNil(v []string) []string {
	if v == nil {
		return []string{}
	}
	return v
}
