package bolt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// Every value is framed as
//
//	format byte | body | CRC-32C (big-endian) of key, format byte and body
//
// bbolt checksums only its two meta pages, so without the CRC a flipped
// bit in a leaf page would load as a wrong count, or a lease under another
// ID. Covering the key as well catches a value read under a damaged key.
// The format byte lets one record type change encoding without a schema
// migration of the whole file.
const (
	recordFormat = 1
	crcLen       = 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Times outside years 1..9999 are refused: time.Unix does not round-trip
// seconds beyond that range, and no broker time is ever outside it.
const (
	minUnix = -62135596800 // 0001-01-01T00:00:00Z, the zero time.Time
	maxUnix = 253402300799 // 9999-12-31T23:59:59Z
)

var (
	errShort     = errors.New("record is truncated")
	errTrailing  = errors.New("record has trailing bytes")
	errVarint    = errors.New("malformed varint")
	errChecksum  = errors.New("checksum mismatch")
	errTimeRange = errors.New("time outside years 1..9999")
)

// seal appends the checksum to buf, which holds the format byte and the
// body of the value to be stored under key.
func seal(key, buf []byte) []byte {
	h := crc32.Update(crc32.Checksum(key, castagnoli), castagnoli, buf)
	return binary.BigEndian.AppendUint32(buf, h)
}

// unseal checks the frame of val, stored under key, and returns its body.
func unseal(key, val []byte) ([]byte, error) {
	if len(val) < 1+crcLen {
		return nil, errShort
	}
	n := len(val) - crcLen
	h := crc32.Update(crc32.Checksum(key, castagnoli), castagnoli, val[:n])
	if h != binary.BigEndian.Uint32(val[n:]) {
		return nil, errChecksum
	}
	if val[0] != recordFormat {
		return nil, fmt.Errorf("unknown record format %d (this build reads %d)", val[0], recordFormat)
	}
	return val[1:n], nil
}

// decoder reads a body. Varints must be minimal, so that every accepted
// body has exactly one encoding (the fuzz target checks encode(decode(b))
// == b).
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.b = nil
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || (n > 1 && d.b[n-1] == 0) {
		d.fail(errVarint)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	u := d.uvarint()
	// zig-zag, as binary.Varint, but with the minimality check above.
	v := int64(u >> 1)
	if u&1 != 0 {
		v = ^v
	}
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.fail(errShort)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) float() float64 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 8 {
		d.fail(errShort)
		return 0
	}
	v := math.Float64frombits(binary.BigEndian.Uint64(d.b))
	d.b = d.b[8:]
	return v
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.fail(errShort)
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *decoder) time() time.Time {
	sec := d.varint()
	nsec := d.uvarint()
	if d.err != nil {
		return time.Time{}
	}
	if sec < minUnix || sec > maxUnix || nsec >= 1e9 {
		d.fail(errTimeRange)
		return time.Time{}
	}
	// UTC: the zero time decodes to time.Time{} exactly.
	return time.Unix(sec, int64(nsec)).UTC()
}

func (d *decoder) key() broker.Key {
	return broker.Key{Region: d.string(), Scope: broker.Scope(d.varint()), Model: d.string()}
}

// end reports the first error, or trailing bytes.
func (d *decoder) end() error {
	if d.err == nil && len(d.b) > 0 {
		d.err = errTrailing
	}
	return d.err
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

func appendFloat(b []byte, f float64) []byte {
	return binary.BigEndian.AppendUint64(b, math.Float64bits(f))
}

func appendTime(b []byte, t time.Time) []byte {
	return binary.AppendUvarint(binary.AppendVarint(b, t.Unix()), uint64(t.Nanosecond()))
}

// checkTime fails a time outside the range; the caller names it, only on
// failure, so that the success path (every grant's) builds no message.
func checkTime(t time.Time) error {
	if s := t.Unix(); s < minUnix || s > maxUnix {
		return fmt.Errorf("%v: %w", t, errTimeRange)
	}
	return nil
}

// appendKey is the stable encoding of a budget key, used both inside bodies
// and as the bbolt key of specs and overrides: length-prefixed strings, so
// no character in a model id can make two keys collide.
func appendKey(b []byte, k broker.Key) []byte {
	b = appendString(b, k.Region)
	b = binary.AppendVarint(b, int64(k.Scope))
	return appendString(b, k.Model)
}

func decodeKey(b []byte) (broker.Key, error) {
	d := decoder{b: b}
	k := d.key()
	return k, d.end()
}

// Usage keys put the minute first, big-endian with the sign bit flipped,
// so that bbolt's byte order is time order: DeleteUsageBefore is a scan
// from the first key that stops at the cut-off.
func usageKey(minute int64, k broker.Key) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(k.Region)+len(k.Model)+4), uint64(minute)^(1<<63))
	return appendKey(b, k)
}

func usageMinute(key []byte) (int64, bool) {
	if len(key) < 8 {
		return 0, false
	}
	return int64(binary.BigEndian.Uint64(key) ^ (1 << 63)), true
}

func decodeUsageKey(key []byte) (int64, broker.Key, error) {
	m, ok := usageMinute(key)
	if !ok {
		return 0, broker.Key{}, errShort
	}
	k, err := decodeKey(key[8:])
	return m, k, err
}

// Lease body: version, key, client, priority, state, outcome, reserved,
// charged, requests, max output, burndown, usage (4), granted, expires,
// ended, then cost and route, both optional and at the end (see below).
// The ID is the bbolt key. Version comes first so that Commit can compare
// versions without decoding the rest.
func appendLeaseBody(b []byte, r *broker.LeaseRecord) []byte {
	b = binary.AppendUvarint(b, r.Version)
	b = appendKey(b, r.Key)
	b = appendString(b, r.Client)
	for _, v := range []int64{int64(r.Priority), int64(r.State), int64(r.Outcome), r.Reserved, r.Charged, r.Requests, r.MaxOutput} {
		b = binary.AppendVarint(b, v)
	}
	b = appendFloat(b, r.Burndown)
	for _, v := range []int64{r.Usage.InputTokens, r.Usage.OutputTokens, r.Usage.CacheReadInputTokens, r.Usage.CacheWriteInputTokens} {
		b = binary.AppendVarint(b, v)
	}
	b = appendTime(b, r.GrantedAt)
	b = appendTime(b, r.ExpiresAt)
	b = appendTime(b, r.EndedAt)
	if r.Cost != 0 || r.Route != "" {
		// Cost came later, at the end, and is written only when there is
		// one: a record without it is the same bytes as before it existed,
		// and the encoding stays canonical (one stored form per record).
		// Route came after it, also only when there is one; it needs the
		// cost before it (zero included) to be told apart from one.
		b = binary.AppendVarint(b, r.Cost)
		if r.Route != "" {
			b = appendString(b, r.Route)
		}
	}
	return b
}

func decodeLeaseBody(id string, body []byte) (broker.LeaseRecord, error) {
	d := decoder{b: body}
	r := broker.LeaseRecord{ID: id}
	r.Version = d.uvarint()
	r.Key = d.key()
	r.Client = d.string()
	r.Priority = broker.Priority(d.varint())
	r.State = broker.LeaseState(d.varint())
	r.Outcome = broker.Outcome(d.varint())
	r.Reserved = d.varint()
	r.Charged = d.varint()
	r.Requests = d.varint()
	r.MaxOutput = d.varint()
	r.Burndown = d.float()
	r.Usage.InputTokens = d.varint()
	r.Usage.OutputTokens = d.varint()
	r.Usage.CacheReadInputTokens = d.varint()
	r.Usage.CacheWriteInputTokens = d.varint()
	r.GrantedAt = d.time()
	r.ExpiresAt = d.time()
	r.EndedAt = d.time()
	if len(d.b) > 0 {
		// Cost came later, at the end; records without one lack it. A
		// route follows it, in records of leases granted through one.
		r.Cost = d.varint()
		if len(d.b) > 0 {
			if r.Route = d.string(); r.Route == "" && d.err == nil {
				return r, fmt.Errorf("lease %s: an empty route is stored as none", id)
			}
		} else if r.Cost == 0 && d.err == nil {
			return r, fmt.Errorf("lease %s: a zero cost is stored as none", id)
		}
	}
	return r, d.end()
}

func encodeLease(r *broker.LeaseRecord) []byte {
	b := make([]byte, 1, 128+len(r.Key.Region)+len(r.Key.Model)+len(r.Client)+len(r.Route))
	b[0] = recordFormat
	return seal([]byte(r.ID), appendLeaseBody(b, r))
}

func decodeLease(key, val []byte) (broker.LeaseRecord, error) {
	body, err := unseal(key, val)
	if err != nil {
		return broker.LeaseRecord{}, err
	}
	return decodeLeaseBody(string(key), body)
}

// leaseVersion is the Version of a stored lease, checked but not decoded
// beyond the version.
func leaseVersion(key, val []byte) (uint64, error) {
	body, err := unseal(key, val)
	if err != nil {
		return 0, err
	}
	d := decoder{b: body}
	v := d.uvarint()
	return v, d.err
}

// Spec body: quota (4), source, source time, burndown, max output tokens,
// then, when discovery named them, the count of quota references (at least
// one) and each: limit, code, name, applied, default, adjustable; then,
// for a Provisioned Throughput, the base model it serves (after a
// reference count of 0 when there are none). Specs written before
// references existed end after max output tokens, and still read; those
// written before Serves end after the references. The budget key is the bbolt key.
func appendSpecBody(b []byte, s *broker.Spec) []byte {
	for _, v := range []int64{s.Quota.RPM, s.Quota.TPM, s.Quota.TPD, s.Quota.Concurrency} {
		b = binary.AppendVarint(b, v)
	}
	b = appendString(b, s.Source)
	b = appendTime(b, s.SourceTime)
	b = appendFloat(b, s.Burndown)
	b = binary.AppendVarint(b, s.MaxOutputTokens)
	if len(s.Quotas) == 0 && s.Serves == "" {
		return b
	}
	b = binary.AppendUvarint(b, uint64(len(s.Quotas)))
	for _, q := range s.Quotas {
		b = appendString(b, q.Limit)
		b = appendString(b, q.Code)
		b = appendString(b, q.Name)
		b = binary.AppendVarint(b, q.Applied)
		b = binary.AppendVarint(b, q.Default)
		adj := byte(0)
		if q.Adjustable {
			adj = 1
		}
		b = append(b, adj)
	}
	if s.Serves != "" {
		b = appendString(b, s.Serves)
	}
	return b
}

// maxQuotaRefs bounds a stored spec's references: a budget has four limits.
const maxQuotaRefs = 16

func decodeSpecBody(k broker.Key, body []byte) (broker.Spec, error) {
	d := decoder{b: body}
	s := broker.Spec{Key: k}
	s.Quota.RPM = d.varint()
	s.Quota.TPM = d.varint()
	s.Quota.TPD = d.varint()
	s.Quota.Concurrency = d.varint()
	s.Source = d.string()
	s.SourceTime = d.time()
	s.Burndown = d.float()
	s.MaxOutputTokens = d.varint()
	if d.err == nil && len(d.b) > 0 {
		n := d.uvarint()
		if n > maxQuotaRefs || n == 0 && len(d.b) == 0 {
			d.fail(fmt.Errorf("quota reference count %d outside 1..%d", n, maxQuotaRefs))
		}
		for range n {
			if d.err != nil {
				break
			}
			q := broker.QuotaRef{Limit: d.string(), Code: d.string(), Name: d.string(), Applied: d.varint(), Default: d.varint()}
			switch d.byte() {
			case 0:
			case 1:
				q.Adjustable = true
			default:
				d.fail(errors.New("adjustable is neither 0 nor 1"))
			}
			s.Quotas = append(s.Quotas, q)
		}
		if d.err == nil && len(d.b) > 0 {
			if s.Serves = d.string(); s.Serves == "" {
				d.fail(errors.New("serves is present and empty"))
			}
		}
	}
	return s, d.end()
}

func encodeSpec(key []byte, s *broker.Spec) []byte {
	return seal(key, appendSpecBody([]byte{recordFormat}, s))
}

func decodeSpec(key, val []byte) (broker.Spec, error) {
	k, err := decodeKey(key)
	if err != nil {
		return broker.Spec{}, fmt.Errorf("budget key: %w", err)
	}
	body, err := unseal(key, val)
	if err != nil {
		return broker.Spec{}, err
	}
	return decodeSpecBody(k, body)
}

// Override body: a byte whose bits 0..3 say which of RPM, TPM, TPD and
// Concurrency are set, those values, reason, set-at.
func appendOverrideBody(b []byte, o *broker.Override) []byte {
	fields := []*int64{o.RPM, o.TPM, o.TPD, o.Concurrency}
	var mask byte
	for i, p := range fields {
		if p != nil {
			mask |= 1 << i
		}
	}
	b = append(b, mask)
	for _, p := range fields {
		if p != nil {
			b = binary.AppendVarint(b, *p)
		}
	}
	b = appendString(b, o.Reason)
	return appendTime(b, o.SetAt)
}

func decodeOverrideBody(body []byte) (*broker.Override, error) {
	d := decoder{b: body}
	o := &broker.Override{}
	mask := d.byte()
	if mask&^0xf != 0 {
		return nil, fmt.Errorf("unknown override fields %#x", mask)
	}
	for i, p := range []**int64{&o.RPM, &o.TPM, &o.TPD, &o.Concurrency} {
		if mask&(1<<i) != 0 {
			v := d.varint()
			*p = &v
		}
	}
	o.Reason = d.string()
	o.SetAt = d.time()
	return o, d.end()
}

func encodeOverride(key []byte, o *broker.Override) []byte {
	return seal(key, appendOverrideBody([]byte{recordFormat}, o))
}

func decodeOverride(key, val []byte) (broker.OverrideRecord, error) {
	k, err := decodeKey(key)
	if err != nil {
		return broker.OverrideRecord{}, fmt.Errorf("budget key: %w", err)
	}
	body, err := unseal(key, val)
	if err != nil {
		return broker.OverrideRecord{}, err
	}
	o, err := decodeOverrideBody(body)
	return broker.OverrideRecord{Key: k, Override: o}, err
}

// Usage body: tokens, requests (totals).
func appendUsageBody(b []byte, tokens, requests int64) []byte {
	return binary.AppendVarint(binary.AppendVarint(b, tokens), requests)
}

func decodeUsageBody(body []byte) (tokens, requests int64, err error) {
	d := decoder{b: body}
	tokens = d.varint()
	requests = d.varint()
	return tokens, requests, d.end()
}

func encodeUsage(key []byte, tokens, requests int64) []byte {
	b := make([]byte, 1, 1+2*binary.MaxVarintLen64+crcLen)
	b[0] = recordFormat
	return seal(key, appendUsageBody(b, tokens, requests))
}

func decodeUsageTotals(key, val []byte) (tokens, requests int64, err error) {
	body, err := unseal(key, val)
	if err != nil {
		return 0, 0, err
	}
	return decodeUsageBody(body)
}

func decodeUsage(key, val []byte) (broker.UsageRecord, error) {
	m, k, err := decodeUsageKey(key)
	if err != nil {
		return broker.UsageRecord{}, fmt.Errorf("usage key: %w", err)
	}
	t, r, err := decodeUsageTotals(key, val)
	return broker.UsageRecord{Key: k, Minute: m, Tokens: t, Requests: r}, err
}

// Adaptive body: tokens Wmax, requests Wmax, last decrease, throttles. The
// budget key is the bbolt key.
func appendAdaptiveBody(b []byte, a *broker.AdaptiveRecord) []byte {
	b = appendFloat(b, a.TokensWmax)
	b = appendFloat(b, a.RequestsWmax)
	b = appendTime(b, a.LastDecrease)
	b = binary.AppendVarint(b, a.Throttles)
	// Depth and cuts came later: present only when Depth > 0, so older
	// records (which end here) still read, and every body has one encoding.
	if a.Depth > 0 {
		b = binary.AppendVarint(b, a.Depth)
		b = appendFloat(b, a.TokensCut)
		b = appendFloat(b, a.RequestsCut)
	}
	return b
}

func decodeAdaptiveBody(k broker.Key, body []byte) (broker.AdaptiveRecord, error) {
	d := decoder{b: body}
	a := broker.AdaptiveRecord{Key: k}
	a.TokensWmax = d.float()
	a.RequestsWmax = d.float()
	a.LastDecrease = d.time()
	a.Throttles = d.varint()
	if d.err == nil && len(d.b) > 0 {
		if a.Depth = d.varint(); a.Depth <= 0 {
			d.fail(fmt.Errorf("adaptive depth %d is not positive", a.Depth))
		}
		a.TokensCut = d.float()
		a.RequestsCut = d.float()
	}
	return a, d.end()
}

func encodeAdaptive(key []byte, a *broker.AdaptiveRecord) []byte {
	return seal(key, appendAdaptiveBody([]byte{recordFormat}, a))
}

func decodeAdaptive(key, val []byte) (broker.AdaptiveRecord, error) {
	k, err := decodeKey(key)
	if err != nil {
		return broker.AdaptiveRecord{}, fmt.Errorf("budget key: %w", err)
	}
	body, err := unseal(key, val)
	if err != nil {
		return broker.AdaptiveRecord{}, err
	}
	return decodeAdaptiveBody(k, body)
}

// Stats keys are usage keys (minute first, so history reads and deletes
// are range scans in time order) followed by the client name.
func statsKey(minute int64, k broker.Key, client string) []byte {
	return appendString(usageKey(minute, k), client)
}

func decodeStatsKey(key []byte) (minute int64, k broker.Key, client string, err error) {
	m, ok := usageMinute(key)
	if !ok {
		return 0, broker.Key{}, "", errShort
	}
	d := decoder{b: key[8:]}
	k = d.key()
	client = d.string()
	return m, k, client, d.end()
}

// statsFields lists the additive Stats counters in their stored order. New
// counters go at the end, with a new record format.
func statsFields(s *broker.Stats) []*int64 {
	return []*int64{&s.Granted, &s.Refused, &s.Completed, &s.Throttled, &s.Errors, &s.Cancelled,
		&s.ReportedThrottles, &s.Expired, &s.ReservedTokens, &s.SettledTokens, &s.InputTokens,
		&s.OutputTokens, &s.CacheReadTokens, &s.CacheWriteTokens, &s.Truncated, &s.WaitMillis,
		&s.WindowTokens, &s.WindowRequests, &s.LimitTPM, &s.LimitRPM}
}

// Stats body: the fields of statsFields, then the output histogram as a
// count of non-empty buckets and (index gap, count) pairs in ascending
// order, so that a mostly empty histogram costs a few bytes.
func appendStatsBody(b []byte, s *broker.Stats) []byte {
	for _, f := range statsFields(s) {
		b = binary.AppendVarint(b, *f)
	}
	var hist broker.Histogram
	if s.OutputHist != nil {
		hist = *s.OutputHist
	}
	n := 0
	for _, c := range hist {
		if c != 0 {
			n++
		}
	}
	b = binary.AppendUvarint(b, uint64(n))
	prev := -1
	for i, c := range hist {
		if c != 0 {
			b = binary.AppendUvarint(b, uint64(i-prev-1))
			b = binary.AppendVarint(b, c)
			prev = i
		}
	}
	return b
}

var errHistogram = errors.New("malformed histogram")

func decodeStatsBody(body []byte) (broker.Stats, error) {
	var s broker.Stats
	d := decoder{b: body}
	for _, f := range statsFields(&s) {
		*f = d.varint()
	}
	n := d.uvarint()
	if n > broker.HistogramBuckets {
		d.fail(errHistogram)
	}
	prev := -1
	for j := uint64(0); j < n && d.err == nil; j++ {
		gap := d.uvarint()
		c := d.varint()
		if gap >= broker.HistogramBuckets || prev+1+int(gap) >= broker.HistogramBuckets || c == 0 {
			d.fail(errHistogram)
			break
		}
		prev += 1 + int(gap)
		if s.OutputHist == nil {
			s.OutputHist = new(broker.Histogram)
		}
		s.OutputHist[prev] = c
	}
	return s, d.end()
}

func encodeStats(key []byte, s *broker.Stats) []byte {
	return seal(key, appendStatsBody([]byte{recordFormat}, s))
}

func decodeStats(key, val []byte) (broker.StatsRecord, error) {
	m, k, client, err := decodeStatsKey(key)
	if err != nil {
		return broker.StatsRecord{}, fmt.Errorf("stats key: %w", err)
	}
	body, err := unseal(key, val)
	if err != nil {
		return broker.StatsRecord{}, err
	}
	s, err := decodeStatsBody(body)
	return broker.StatsRecord{Key: k, Minute: m, Client: client, Stats: s}, err
}

// statsKeyCache decodes stats records, decoding the names in each distinct
// key once.
type statsKeyCache struct {
	keys map[string]statsKeyParts
}

type statsKeyParts struct {
	k      broker.Key
	client string
}

func (c *statsKeyCache) decode(key, val []byte) (broker.StatsRecord, error) {
	if len(key) < 8 {
		return broker.StatsRecord{}, fmt.Errorf("stats key: %w", errShort)
	}
	m, _ := usageMinute(key)
	parts, ok := c.keys[string(key[8:])] // no allocation for the lookup
	if !ok {
		_, k, client, err := decodeStatsKey(key)
		if err != nil {
			return broker.StatsRecord{}, fmt.Errorf("stats key: %w", err)
		}
		parts = statsKeyParts{k, client}
		if c.keys == nil {
			c.keys = map[string]statsKeyParts{}
		}
		c.keys[string(key[8:])] = parts
	}
	body, err := unseal(key, val)
	if err != nil {
		return broker.StatsRecord{}, err
	}
	st, err := decodeStatsBody(body)
	return broker.StatsRecord{Key: parts.k, Minute: m, Client: parts.client, Stats: st}, err
}

// Chunk keys are the chunk's ID, big-endian, so chunks sort by ID (by
// time). Chunk body: budget key, start, end, requests, tokens, leases end,
// secret, closed (0 or 1).
func chunkKey(id uint64) []byte { return binary.BigEndian.AppendUint64(nil, id) }

func appendChunkBody(b []byte, c *broker.ChunkRecord) []byte {
	b = appendKey(b, c.Key)
	b = appendTime(b, c.Start)
	b = appendTime(b, c.End)
	b = binary.AppendVarint(b, c.Requests)
	b = binary.AppendVarint(b, c.Tokens)
	b = appendTime(b, c.LeasesEnd)
	b = appendString(b, string(c.Secret))
	closed := byte(0)
	if c.Closed {
		closed = 1
	}
	return append(b, closed)
}

func decodeChunkBody(id uint64, body []byte) (broker.ChunkRecord, error) {
	d := decoder{b: body}
	c := broker.ChunkRecord{ID: id}
	c.Key = d.key()
	c.Start = d.time()
	c.End = d.time()
	c.Requests = d.varint()
	c.Tokens = d.varint()
	c.LeasesEnd = d.time()
	c.Secret = []byte(d.string())
	switch closed := d.byte(); closed {
	case 0, 1:
		c.Closed = closed == 1
	default:
		d.fail(fmt.Errorf("chunk closed flag %d is not 0 or 1", closed))
	}
	if d.err == nil && (c.Requests < 0 || c.Tokens < 0) {
		d.fail(fmt.Errorf("chunk amounts %d requests, %d tokens: negative", c.Requests, c.Tokens))
	}
	return c, d.end()
}

func encodeChunk(key []byte, c *broker.ChunkRecord) []byte {
	return seal(key, appendChunkBody([]byte{recordFormat}, c))
}

func decodeChunk(key, val []byte) (broker.ChunkRecord, error) {
	if len(key) != 8 {
		return broker.ChunkRecord{}, fmt.Errorf("chunk key is %d bytes, want 8", len(key))
	}
	body, err := unseal(key, val)
	if err != nil {
		return broker.ChunkRecord{}, err
	}
	return decodeChunkBody(binary.BigEndian.Uint64(key), body)
}
