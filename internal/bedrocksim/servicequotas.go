package bedrocksim

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Service Quotas speaks awsJson1_1: POST / with X-Amz-Target
// ServiceQuotasV20190624.<Op>, PascalCase JSON both ways, errors as
// {"__type": ..., "message": ...}, timestamps as epoch seconds.

const (
	sqTargetPrefix = "ServiceQuotasV20190624."
	sqContentType  = "application/x-amz-json-1.1"
	serviceName    = "Amazon Bedrock"
)

// quotaChange is one RequestServiceQuotaIncrease.
type quotaChange struct {
	ID, CaseID   string
	Code, Name   string
	Desired      float64
	Status       string
	Created      time.Time
	LastUpdated  time.Time
	decideAt     time.Time // zero: stays PENDING
	decidedValue bool
}

type sqRequest struct {
	ServiceCode  string
	QuotaCode    string
	NextToken    *string
	MaxResults   *int
	DesiredValue *float64
	Status       string
	RequestId    string
}

func (s *Sim) serveServiceQuotas(w http.ResponseWriter, r *http.Request) {
	target := r.Header.Get("X-Amz-Target")
	op, ok := strings.CutPrefix(target, sqTargetPrefix)
	if !ok || r.Method != http.MethodPost {
		writeJSONError(w, http.StatusBadRequest, "UnknownOperationException", "unknown target "+target)
		return
	}
	var in sqRequest
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		writeJSONError(w, http.StatusBadRequest, "SerializationException", "cannot decode request body: "+err.Error())
		return
	}
	region := s.requestRegion(r)
	if op != "ListServices" && op != "GetRequestedServiceQuotaChange" && op != "ListRequestedServiceQuotaChangeHistory" && in.ServiceCode != "bedrock" {
		writeJSONError(w, http.StatusBadRequest, "NoSuchResourceException", "The request failed because the specified service does not exist.")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.Now()
	s.advanceLocked(now)
	rs := s.regionLocked(region)
	var out any
	var errType, errMsg string
	switch op {
	case "ListServices":
		out = map[string]any{"Services": []map[string]string{{"ServiceCode": "bedrock", "ServiceName": serviceName}}}
	case "ListServiceQuotas", "ListAWSDefaultServiceQuotas":
		def := op == "ListAWSDefaultServiceQuotas"
		quotas := rs.quotas
		if in.QuotaCode != "" {
			quotas = nil
			if q, ok := rs.byCode[in.QuotaCode]; ok {
				quotas = []*quotaState{q}
			}
		}
		page, next, err := s.paginate(len(quotas), in.NextToken, in.MaxResults, !def && in.QuotaCode == "")
		if err != nil {
			errType, errMsg = "InvalidPaginationTokenException", err.Error()
			break
		}
		items := make([]map[string]any, 0, page[1]-page[0])
		for _, q := range quotas[page[0]:page[1]] {
			items = append(items, s.quotaJSON(rs, q, def))
		}
		o := map[string]any{"Quotas": items}
		if next != "" {
			o["NextToken"] = next
		}
		out = o
	case "GetServiceQuota", "GetAWSDefaultServiceQuota":
		q, ok := rs.byCode[in.QuotaCode]
		if !ok {
			errType, errMsg = "NoSuchResourceException", "The request failed because the specified service quota does not exist."
			break
		}
		out = map[string]any{"Quota": s.quotaJSON(rs, q, op == "GetAWSDefaultServiceQuota")}
	case "RequestServiceQuotaIncrease":
		out, errType, errMsg = s.requestIncreaseLocked(rs, now, in)
	case "ListRequestedServiceQuotaChangeHistory", "ListRequestedServiceQuotaChangeHistoryByQuota":
		if op == "ListRequestedServiceQuotaChangeHistoryByQuota" && in.QuotaCode == "" {
			errType, errMsg = "IllegalArgumentException", "QuotaCode is required."
			break
		}
		var list []*quotaChange
		for i := len(rs.changes) - 1; i >= 0; i-- { // newest first, as AWS lists them
			c := rs.changes[i]
			if (in.QuotaCode != "" && c.Code != in.QuotaCode) || (in.Status != "" && c.Status != in.Status) {
				continue
			}
			list = append(list, c)
		}
		page, next, err := s.paginate(len(list), in.NextToken, in.MaxResults, false)
		if err != nil {
			errType, errMsg = "InvalidPaginationTokenException", err.Error()
			break
		}
		items := make([]map[string]any, 0, page[1]-page[0])
		for _, c := range list[page[0]:page[1]] {
			items = append(items, s.changeJSON(rs, c))
		}
		o := map[string]any{"RequestedQuotas": items}
		if next != "" {
			o["NextToken"] = next
		}
		out = o
	case "GetRequestedServiceQuotaChange":
		errType, errMsg = "NoSuchResourceException", "The request failed because the specified request does not exist."
		for _, c := range rs.changes {
			if c.ID == in.RequestId {
				out, errType, errMsg = map[string]any{"RequestedQuota": s.changeJSON(rs, c)}, "", ""
			}
		}
	default:
		errType, errMsg = "UnknownOperationException", "operation "+op+" is not simulated"
	}
	if errType != "" {
		writeJSONError(w, http.StatusBadRequest, errType, errMsg)
		return
	}
	writeJSON(w, http.StatusOK, sqContentType, out)
}

// paginate returns the [from, to) window of n items for a request and the
// token of the next page. With emptyPage (and the scenario option on), the
// second page is empty but carries a token, as AWS sometimes answers.
func (s *Sim) paginate(n int, token *string, maxResults *int, emptyPage bool) ([2]int, string, error) {
	size := s.sc.ServiceQuotas.PageSize
	if size <= 0 {
		size = 100
	}
	if maxResults != nil {
		if *maxResults < 1 || *maxResults > 100 {
			return [2]int{}, "", fmt.Errorf("MaxResults %d: must be between 1 and 100", *maxResults)
		}
		size = *maxResults
	}
	offset, pageNo := 0, 0
	if token != nil {
		raw, err := base64.RawURLEncoding.DecodeString(*token)
		if err != nil {
			return [2]int{}, "", fmt.Errorf("invalid NextToken")
		}
		if _, err := fmt.Sscanf(string(raw), "o=%d;p=%d", &offset, &pageNo); err != nil || offset < 0 || offset > n {
			return [2]int{}, "", fmt.Errorf("invalid NextToken")
		}
	}
	mk := func(o, p int) string {
		return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "o=%d;p=%d", o, p))
	}
	if emptyPage && s.sc.ServiceQuotas.EmptyPage && pageNo == 1 && offset < n {
		return [2]int{offset, offset}, mk(offset, pageNo+1), nil
	}
	end := min(offset+size, n)
	next := ""
	if end < n {
		next = mk(end, pageNo+1)
	}
	return [2]int{offset, end}, next, nil
}

func (s *Sim) quotaArn(region, code string) string {
	return fmt.Sprintf("arn:aws:servicequotas:%s:%s:bedrock/%s", region, s.sc.AccountID, code)
}

func (s *Sim) quotaJSON(rs *regionState, q *quotaState, def bool) map[string]any {
	v := q.applied
	if def {
		v = q.row.DefaultValue
	}
	m := map[string]any{
		"ServiceCode": "bedrock", "ServiceName": serviceName,
		"QuotaArn": s.quotaArn(rs.name, q.row.Code), "QuotaCode": q.row.Code, "QuotaName": q.row.Name,
		"Value": v, "Unit": "None", "Adjustable": q.row.Adjustable, "GlobalQuota": false,
		"QuotaAppliedAtLevel": "ACCOUNT",
	}
	if q.row.Description != "" {
		m["Description"] = q.row.Description
	}
	if e := q.row.Enforces; e != nil {
		unit := "MINUTE"
		if e.Metric == MetricTPD {
			unit = "DAY"
		}
		m["Period"] = map[string]any{"PeriodValue": 1, "PeriodUnit": unit}
	}
	return m
}

func (s *Sim) changeJSON(rs *regionState, c *quotaChange) map[string]any {
	m := map[string]any{
		"Id": c.ID, "ServiceCode": "bedrock", "ServiceName": serviceName,
		"QuotaCode": c.Code, "QuotaName": c.Name, "DesiredValue": c.Desired, "Status": c.Status,
		"Created": epochSeconds(c.Created), "LastUpdated": epochSeconds(c.LastUpdated),
		"Requester": fmt.Sprintf(`{"accountId":"%s","callerArn":"arn:aws:iam::%s:root"}`, s.sc.AccountID, s.sc.AccountID),
		"QuotaArn":  s.quotaArn(rs.name, c.Code), "GlobalQuota": false, "Unit": "None",
		"QuotaRequestedAtLevel": "ACCOUNT",
	}
	if c.CaseID != "" {
		m["CaseId"] = c.CaseID
	}
	return m
}

func epochSeconds(t time.Time) float64 { return float64(t.UnixMilli()) / 1e3 }

func (s *Sim) requestIncreaseLocked(rs *regionState, now time.Time, in sqRequest) (any, string, string) {
	q, ok := rs.byCode[in.QuotaCode]
	if !ok {
		return nil, "NoSuchResourceException", "The request failed because the specified service quota does not exist."
	}
	if in.DesiredValue == nil {
		return nil, "IllegalArgumentException", "DesiredValue is required."
	}
	if !q.row.Adjustable {
		return nil, "IllegalArgumentException", "The quota " + q.row.Code + " is not adjustable."
	}
	if *in.DesiredValue <= q.applied {
		return nil, "IllegalArgumentException", "The requested value must be greater than the current quota value."
	}
	for _, c := range rs.changes {
		if c.Code == q.row.Code && (c.Status == "PENDING" || c.Status == "CASE_OPENED") {
			return nil, "ResourceAlreadyExistsException", "A request for this quota is already pending."
		}
	}
	s.seq++
	c := &quotaChange{
		ID:   fmt.Sprintf("%08x%08x%016x", s.rng.Uint32(), s.rng.Uint32(), uint64(s.seq)),
		Code: q.row.Code, Name: q.row.Name, Desired: *in.DesiredValue,
		Status: "PENDING", Created: now, LastUpdated: now,
	}
	if d := s.sc.ServiceQuotas.AutoApproveAfter; d > 0 {
		c.decideAt = now.Add(time.Duration(d))
	}
	rs.changes = append(rs.changes, c)
	return map[string]any{"RequestedQuota": s.changeJSON(rs, c)}, "", ""
}

// decideRequestsLocked settles increase requests whose decision time has
// come; an approval raises the applied value (and the hidden capacity with
// it). Callers hold mu.
func (s *Sim) decideRequestsLocked(rs *regionState, now time.Time) {
	for _, c := range rs.changes {
		if c.Status != "PENDING" || c.decideAt.IsZero() || now.Before(c.decideAt) {
			continue
		}
		outcome := s.sc.ServiceQuotas.Outcome
		if outcome == "" {
			outcome = "APPROVED"
		}
		c.Status, c.LastUpdated = outcome, c.decideAt
		if outcome == "APPROVED" {
			if q, ok := rs.byCode[c.Code]; ok {
				v := c.Desired
				q.apply(now, CapacityChange{SetApplied: &v})
			}
		}
	}
}

func writeJSON(w http.ResponseWriter, status int, contentType string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"message":"simulator could not encode its response"}`)
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("X-Amzn-RequestId", requestID())
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeJSONError answers in the awsJson1_1 error shape.
func writeJSONError(w http.ResponseWriter, status int, typ, msg string) {
	writeJSON(w, status, sqContentType, map[string]string{"__type": typ, "message": msg})
}
