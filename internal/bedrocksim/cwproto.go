package bedrocksim

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fxamacker/cbor/v2"
)

// CloudWatch speaks three protocols and the simulator answers all of them
// from one implementation of the operations (cwops.go). Each codec decodes
// a request into a generic tree (cwValue: maps, lists, scalars) and encodes
// the operation's generic answer back:
//
//   - rpc-v2-cbor (aws-sdk-go-v2): POST /service/GraniteServiceVersion20100801/operation/<Op>,
//     CBOR maps, timestamps as tag 1 epoch seconds, errors as {__type, message}.
//   - awsJson1_0 (botocore >= 1.3x, AWS CLI v1): POST / with X-Amz-Target
//     GraniteServiceVersion20100801.<Op>, timestamps as epoch seconds.
//   - query (older clients): POST / form-encoded Action=<Op>&Version=2010-08-01,
//     lists as Name.member.N, XML answers, timestamps as ISO 8601.
//
// CloudWatch is "query compatible": the JSON and CBOR codecs also send the
// query error code in X-Amzn-Query-Error, which is what botocore and the Go
// SDK read to name the error.

const (
	cwTargetPrefix = "GraniteServiceVersion20100801."
	cwCBORPrefix   = "/service/GraniteServiceVersion20100801/operation/"
	cwXMLNS        = "http://monitoring.amazonaws.com/doc/2010-08-01/"
	cwAPIVersion   = "2010-08-01"
)

// cwError is a CloudWatch error by its query-protocol code
// (InvalidParameterValue, MissingParameter, ResourceNotFound, ...).
type cwError struct {
	code string
	msg  string
}

func (e *cwError) Error() string { return e.code + ": " + e.msg }

func cwErrorf(code, format string, args ...any) *cwError {
	return &cwError{code: code, msg: fmt.Sprintf(format, args...)}
}

// cwCodec is one wire protocol.
type cwCodec interface {
	decode(r *http.Request, body []byte) (op string, in map[string]any, err *cwError)
	encode(w http.ResponseWriter, op string, out map[string]any)
	encodeError(w http.ResponseWriter, e *cwError)
}

// isCloudWatchQuery reports whether r is a query-protocol call: POST / with
// a form body (no other simulated API posts a form to /).
func isCloudWatchQuery(r *http.Request) bool {
	return r.Method == http.MethodPost && r.URL.EscapedPath() == "/" &&
		strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded")
}

func (s *Sim) serveCloudWatch(w http.ResponseWriter, r *http.Request, c cwCodec) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		c.encodeError(w, cwErrorf("InvalidParameterValue", "cannot read request body"))
		return
	}
	op, in, cerr := c.decode(r, body)
	if cerr != nil {
		c.encodeError(w, cerr)
		return
	}
	out, cerr := s.cloudWatchOp(s.requestRegion(r), op, in)
	if cerr != nil {
		s.log.Debug("cloudwatch error", "op", op, "code", cerr.code, "message", cerr.msg)
		c.encodeError(w, cerr)
		return
	}
	c.encode(w, op, out)
}

// ---- rpc-v2-cbor ----

type cborCodec struct{}

var cwDec = func() cbor.DecMode {
	dm, err := cbor.DecOptions{DefaultMapType: reflect.TypeOf(map[string]any(nil))}.DecMode()
	if err != nil {
		panic(err) // static options; cannot fail
	}
	return dm
}()

var cwEnc = func() cbor.EncMode {
	em, err := cbor.EncOptions{Time: cbor.TimeUnixDynamic, TimeTag: cbor.EncTagRequired}.EncMode()
	if err != nil {
		panic(err) // static options; cannot fail
	}
	return em
}()

func (cborCodec) decode(r *http.Request, body []byte) (string, map[string]any, *cwError) {
	op := strings.TrimPrefix(r.URL.Path, cwCBORPrefix)
	in := map[string]any{}
	if len(body) > 0 {
		if err := cwDec.Unmarshal(body, &in); err != nil {
			return op, nil, cwErrorf("InvalidParameterValue", "cannot decode CBOR request: %v", err)
		}
	}
	return op, in, nil
}

func (cborCodec) encode(w http.ResponseWriter, _ string, out map[string]any) {
	b, err := cwEnc.Marshal(out)
	if err != nil {
		cborCodec{}.encodeError(w, cwErrorf("InternalServiceError", "simulator could not encode its response"))
		return
	}
	w.Header().Set("Content-Type", "application/cbor")
	w.Header().Set("Smithy-Protocol", "rpc-v2-cbor")
	w.Header().Set("X-Amzn-RequestId", requestID())
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

func (cborCodec) encodeError(w http.ResponseWriter, e *cwError) {
	b, _ := cwEnc.Marshal(map[string]string{"__type": "com.amazonaws.cloudwatch#" + smithyErrorType(e.code), "message": e.msg})
	w.Header().Set("Content-Type", "application/cbor")
	w.Header().Set("Smithy-Protocol", "rpc-v2-cbor")
	w.Header().Set("X-Amzn-Query-Error", e.code+";"+errorFault(e.code))
	w.WriteHeader(errorStatus(e.code))
	_, _ = w.Write(b)
}

// smithyErrorType is the Smithy shape name of a query error code
// (InvalidParameterValue -> InvalidParameterValueException).
func smithyErrorType(code string) string {
	switch {
	case strings.HasSuffix(code, "Exception"), code == "InvalidAction", code == "ValidationError":
		return code
	case code == "ResourceNotFound":
		return "ResourceNotFoundException"
	case code == "LimitExceeded":
		return "LimitExceededException"
	}
	return code + "Exception"
}

func errorFault(code string) string {
	if code == "InternalServiceError" {
		return "Receiver"
	}
	return "Sender"
}

func errorStatus(code string) int {
	switch code {
	case "InternalServiceError":
		return http.StatusInternalServerError
	case "ResourceNotFound":
		return http.StatusNotFound
	}
	return http.StatusBadRequest
}

// ---- awsJson1_0 ----

type jsonCodec struct{}

func (jsonCodec) decode(r *http.Request, body []byte) (string, map[string]any, *cwError) {
	op := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), cwTargetPrefix)
	in := map[string]any{}
	if len(bytes.TrimSpace(body)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		if err := dec.Decode(&in); err != nil {
			return op, nil, cwErrorf("SerializationException", "cannot decode JSON request: %v", err)
		}
	}
	return op, in, nil
}

func (jsonCodec) encode(w http.ResponseWriter, _ string, out map[string]any) {
	b, err := json.Marshal(jsonTimes(out))
	if err != nil {
		jsonCodec{}.encodeError(w, cwErrorf("InternalServiceError", "simulator could not encode its response"))
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	w.Header().Set("X-Amzn-RequestId", requestID())
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

func (jsonCodec) encodeError(w http.ResponseWriter, e *cwError) {
	b, _ := json.Marshal(map[string]string{"__type": "com.amazonaws.cloudwatch#" + smithyErrorType(e.code), "message": e.msg})
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	w.Header().Set("X-Amzn-Query-Error", e.code+";"+errorFault(e.code))
	w.Header().Set("X-Amzn-RequestId", requestID())
	w.WriteHeader(errorStatus(e.code))
	_, _ = w.Write(b)
}

// jsonTimes turns timestamps into epoch seconds, as awsJson1_0 sends them.
func jsonTimes(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = jsonTimes(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = jsonTimes(e)
		}
		return l
	case time.Time:
		return float64(x.UnixMilli()) / 1000
	}
	return v
}

// ---- query ----

type queryCodec struct{}

func (queryCodec) decode(r *http.Request, body []byte) (string, map[string]any, *cwError) {
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return "", nil, cwErrorf("MalformedQueryString", "cannot parse form body: %v", err)
	}
	op := form.Get("Action")
	if v := form.Get("Version"); v != cwAPIVersion {
		return op, nil, cwErrorf("InvalidParameterValue", "Version %q is not supported; use %s", v, cwAPIVersion)
	}
	in := map[string]any{}
	keys := make([]string, 0, len(form))
	for k := range form {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "Action" || k == "Version" {
			continue
		}
		setQueryPath(in, strings.Split(k, "."), form.Get(k))
	}
	top, ok := listify(in).(map[string]any)
	if !ok {
		return op, nil, cwErrorf("MalformedQueryString", "a form key starts with member.")
	}
	return op, top, nil
}

// setQueryPath stores v at a dotted form key. "member" levels become maps
// keyed by index, which listify turns into lists.
func setQueryPath(m map[string]any, path []string, v string) {
	for i := 0; i < len(path)-1; i++ {
		k := path[i]
		if k == "member" {
			k = "#member"
		}
		next, ok := m[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	m[path[len(path)-1]] = v
}

// listify turns {"#member": {"1": a, "2": b}} into [a, b].
func listify(v any) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	if members, ok := m["#member"].(map[string]any); ok && len(m) == 1 {
		idx := make([]int, 0, len(members))
		for k := range members {
			n, err := strconv.Atoi(k)
			if err == nil {
				idx = append(idx, n)
			}
		}
		sort.Ints(idx)
		l := make([]any, 0, len(idx))
		for _, n := range idx {
			l = append(l, listify(members[strconv.Itoa(n)]))
		}
		return l
	}
	for k, e := range m {
		m[k] = listify(e)
	}
	return m
}

func (queryCodec) encode(w http.ResponseWriter, op string, out map[string]any) {
	var b bytes.Buffer
	fmt.Fprintf(&b, `<%sResponse xmlns="%s">`, op, cwXMLNS)
	if len(out) > 0 {
		fmt.Fprintf(&b, "<%sResult>", op)
		writeXMLValue(&b, out)
		fmt.Fprintf(&b, "</%sResult>", op)
	}
	fmt.Fprintf(&b, "<ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata></%sResponse>", requestID(), op)
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b.Bytes())
}

func writeXMLValue(b *bytes.Buffer, v any) {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(b, "<%s>", k)
			writeXMLValue(b, x[k])
			fmt.Fprintf(b, "</%s>", k)
		}
	case []any:
		for _, e := range x {
			b.WriteString("<member>")
			writeXMLValue(b, e)
			b.WriteString("</member>")
		}
	case time.Time:
		b.WriteString(x.UTC().Format("2006-01-02T15:04:05.000Z"))
	case float64:
		b.WriteString(strconv.FormatFloat(x, 'f', -1, 64))
	case string:
		_ = xml.EscapeText(b, []byte(x))
	case nil:
	default:
		fmt.Fprint(b, x)
	}
}

func (queryCodec) encodeError(w http.ResponseWriter, e *cwError) {
	var b bytes.Buffer
	fmt.Fprintf(&b, `<ErrorResponse xmlns="%s"><Error><Type>%s</Type><Code>%s</Code><Message>`, cwXMLNS, errorFault(e.code), e.code)
	_ = xml.EscapeText(&b, []byte(e.msg))
	fmt.Fprintf(&b, "</Message></Error><RequestId>%s</RequestId></ErrorResponse>", requestID())
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(errorStatus(e.code))
	_, _ = w.Write(b.Bytes())
}

// ---- reading a decoded request, whatever its codec ----

// cwIn reads members of a decoded request. Scalars may arrive typed (JSON,
// CBOR) or as strings (query); each accessor accepts both and names the
// member in its error.
type cwIn struct {
	m    map[string]any
	path string // for error messages: "MetricDataQueries.member.1."
}

func (in cwIn) name(k string) string { return in.path + k }

func (in cwIn) has(k string) bool { _, ok := in.m[k]; return ok && in.m[k] != nil }

func (in cwIn) str(k string) string {
	switch v := in.m[k].(type) {
	case string:
		return v
	case json.Number:
		return v.String()
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

func (in cwIn) float(k string) (float64, *cwError) {
	var f float64
	var err error
	switch v := in.m[k].(type) {
	case nil:
		return 0, nil
	case json.Number:
		f, err = v.Float64()
	case string:
		f, err = strconv.ParseFloat(v, 64)
	case float64:
		f = v
	case float32:
		f = float64(v)
	case uint64:
		f = float64(v)
	case int64:
		f = float64(v)
	default:
		err = fmt.Errorf("type %T", v)
	}
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, cwErrorf("InvalidParameterValue", "The parameter %s must be a number.", in.name(k))
	}
	return f, nil
}

func (in cwIn) int(k string) (int64, *cwError) {
	f, err := in.float(k)
	if err != nil {
		return 0, err
	}
	if f != math.Trunc(f) || math.Abs(f) > math.MaxInt32 {
		return 0, cwErrorf("InvalidParameterValue", "The parameter %s must be an integer.", in.name(k))
	}
	return int64(f), nil
}

func (in cwIn) bool(k string, def bool) (bool, *cwError) {
	switch v := in.m[k].(type) {
	case nil:
		return def, nil
	case bool:
		return v, nil
	case string:
		b, err := strconv.ParseBool(v)
		if err == nil {
			return b, nil
		}
	}
	return false, cwErrorf("InvalidParameterValue", "The parameter %s must be a boolean.", in.name(k))
}

func (in cwIn) time(k string) (time.Time, *cwError) {
	switch v := in.m[k].(type) {
	case nil:
		return time.Time{}, nil
	case time.Time:
		return v.UTC(), nil
	case string:
		for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
			if t, err := time.Parse(layout, v); err == nil {
				return t.UTC(), nil
			}
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			return epoch(f), nil
		}
	default:
		if f, err := in.float(k); err == nil {
			return epoch(f), nil
		}
	}
	return time.Time{}, cwErrorf("InvalidParameterValue", "The parameter %s must be a timestamp.", in.name(k))
}

func epoch(f float64) time.Time {
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC()
}

func (in cwIn) obj(k string) (cwIn, bool) {
	m, ok := in.m[k].(map[string]any)
	return cwIn{m: m, path: in.name(k) + "."}, ok
}

// list returns the elements of a list member; query lists of one element
// are lists too (listify), and an absent member is an empty list.
func (in cwIn) list(k string) []any {
	l, _ := in.m[k].([]any)
	return l
}

func (in cwIn) objs(k string) []cwIn {
	var out []cwIn
	for i, e := range in.list(k) {
		m, _ := e.(map[string]any)
		out = append(out, cwIn{m: m, path: fmt.Sprintf("%s.member.%d.", in.name(k), i+1)})
	}
	return out
}

func (in cwIn) strs(k string) []string {
	var out []string
	for _, e := range in.list(k) {
		out = append(out, cwIn{m: map[string]any{"v": e}}.str("v"))
	}
	return out
}

func (in cwIn) required(keys ...string) *cwError {
	for _, k := range keys {
		if !in.has(k) {
			return cwErrorf("MissingParameter", "The parameter %s is required.", in.name(k))
		}
	}
	return nil
}
