package bedrocksim

import (
	"encoding/json"
	"net/http"
)

// The admin endpoint lets tests and benchmarks steer the simulator over
// HTTP. It is the only way to see the hidden capacity; a broker under test
// must never call it.
//
//	GET  /_sim/stats     Stats as JSON
//	POST /_sim/capacity  {"region":..., "quotaCode":..., "setTrue"|"scaleTrue"|"setApplied": N}
//	GET  /_sim/scenario  the scenario being run
//	POST /_sim/provisioned  {"name":..., "status": "InService"|"Creating"|"Updating"|"Failed"|"Deleted"}

type capacityRequest struct {
	Region    string `json:"region"`
	QuotaCode string `json:"quotaCode"`
	CapacityChange
}

func (s *Sim) serveAdmin(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/_sim/stats" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, "application/json", s.Stats())
	case r.URL.Path == "/_sim/scenario" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, "application/json", s.sc)
	case r.URL.Path == "/_sim/capacity" && r.Method == http.MethodPost:
		var in capacityRequest
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			writeJSON(w, http.StatusBadRequest, "application/json", map[string]string{"message": "decode capacity request: " + err.Error()})
			return
		}
		if in.Region == "" {
			in.Region = s.sc.DefaultRegion
		}
		if err := s.SetCapacity(in.Region, in.QuotaCode, in.CapacityChange); err != nil {
			writeJSON(w, http.StatusBadRequest, "application/json", map[string]string{"message": err.Error()})
			return
		}
		qs, _ := s.Quota(in.Region, in.QuotaCode)
		writeJSON(w, http.StatusOK, "application/json", qs)
	case r.URL.Path == "/_sim/provisioned" && r.Method == http.MethodPost:
		var in struct {
			Name   string `json:"name"`
			Status string `json:"status"`
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			writeJSON(w, http.StatusBadRequest, "application/json", map[string]string{"message": "decode provisioned request: " + err.Error()})
			return
		}
		if err := s.SetProvisionedStatus(in.Name, in.Status); err != nil {
			writeJSON(w, http.StatusBadRequest, "application/json", map[string]string{"message": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, "application/json", in)
	default:
		writeJSON(w, http.StatusNotFound, "application/json", map[string]string{"message": "unknown admin route " + r.Method + " " + r.URL.Path})
	}
}
