package bolt

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

func TestTimeRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tm := range []time.Time{{}, t0, time.Unix(0, 0), time.Unix(-1, 5), time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)} {
		d := decoder{b: appendTime(nil, tm)}
		if got := d.time(); d.end() != nil || !got.Equal(tm) || got.IsZero() != tm.IsZero() {
			t.Errorf("time %v: got %v, %v", tm, got, d.err)
		}
	}
	if got := (&decoder{b: appendTime(nil, time.Time{})}).time(); got != (time.Time{}) {
		t.Errorf("zero time decodes to %#v", got)
	}
}

// The fuzz targets feed arbitrary bytes to each decoder, both the framed
// value (checksum, format byte) and the bare body, which random bytes would
// rarely reach past the checksum. Whatever a decoder accepts must encode
// back to the same bytes: the encoding is canonical, so no two stored
// forms mean the same record.

func FuzzDecodeLease(f *testing.F) {
	l := lease("l1", 7)
	f.Add([]byte(l.ID), encodeLease(&l))
	l.Route = "claude-us"
	f.Add([]byte(l.ID), encodeLease(&l))
	l.Cost = 0 // a route on an unpriced model: the zero cost is written before it
	f.Add([]byte(l.ID), encodeLease(&l))
	f.Add([]byte("x"), []byte{recordFormat, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, key, val []byte) {
		if r, err := decodeLease(key, val); err == nil {
			if got := encodeLease(&r); !bytes.Equal(got, val) {
				t.Fatalf("decode(%x) = %+v encodes to %x", val, r, got)
			}
		}
		_, _ = leaseVersion(key, val)
		if r, err := decodeLeaseBody("id", val); err == nil {
			if got := appendLeaseBody(nil, &r); !bytes.Equal(got, val) {
				t.Fatalf("body %x = %+v encodes to %x", val, r, got)
			}
		}
	})
}

// TestLeaseOptionalTail: cost and route are each read back as written,
// and a record without them is the bytes it was before they existed.
func TestLeaseOptionalTail(t *testing.T) {
	t.Parallel()
	bare := lease("l1", 1)
	bare.Cost = 0
	old := appendLeaseBody(nil, &bare)
	for _, tc := range []struct {
		cost  int64
		route string
		tail  int // bytes after the record of old
	}{{0, "", 0}, {17, "", 1}, {0, "r", 3}, {17, "claude-us", 11}} {
		r := bare
		r.Cost, r.Route = tc.cost, tc.route
		body := appendLeaseBody(nil, &r)
		if len(body) != len(old)+tc.tail || !bytes.Equal(body[:len(old)], old) {
			t.Errorf("cost %d route %q: body %x, want %x and %d bytes more", tc.cost, tc.route, body, old, tc.tail)
		}
		got, err := decodeLease([]byte(r.ID), encodeLease(&r))
		if err != nil || got != r {
			t.Errorf("cost %d route %q: decoded %+v, %v", tc.cost, tc.route, got, err)
		}
	}
	// A zero cost with no route after it, and an empty route, are refused.
	for _, body := range [][]byte{append(bytes.Clone(old), 0), append(bytes.Clone(old), 0, 0)} {
		if r, err := decodeLeaseBody("l1", body); err == nil {
			t.Errorf("body %x decoded as %+v, want an error", body, r)
		}
	}
}

func FuzzDecodeClientUsage(f *testing.F) {
	u := broker.ClientUsageRecord{Client: "c", Key: keyA, Minute: 100, Tokens: 5, Requests: 1}
	f.Add(clientUsageKey(&u), encodeUsage(clientUsageKey(&u), 5, 1))
	u.Route = "claude-us"
	f.Add(clientUsageKey(&u), encodeUsage(clientUsageKey(&u), 5, 1))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		if r, err := decodeClientUsage(key, val); err == nil {
			k := clientUsageKey(&r)
			if got := encodeUsage(k, r.Tokens, r.Requests); !bytes.Equal(got, val) || !bytes.Equal(k, key) {
				t.Fatalf("decode(%x, %x) = %+v encodes to %x under %x", key, val, r, got, k)
			}
		}
	})
}

func FuzzDecodeSpec(f *testing.F) {
	s := broker.Spec{Key: keyA, Quota: broker.Limits{RPM: 1, TPM: 2, TPD: 3, Concurrency: 4}, Source: "x", SourceTime: t0, Burndown: 5, MaxOutputTokens: 6}
	k := appendKey(nil, s.Key)
	f.Add(k, encodeSpec(k, &s))
	s.Quotas = []broker.QuotaRef{{Limit: "tpm", Code: "L-1", Name: "n", Applied: 5, Default: 4, Adjustable: true}, {Limit: "rpm"}}
	f.Add(k, encodeSpec(k, &s))
	p := broker.Spec{Key: provKey, Quota: broker.Limits{TPM: 100}, Serves: "anthropic.claude-3-haiku-20240307-v1:0"}
	pk := appendKey(nil, p.Key)
	f.Add(pk, encodeSpec(pk, &p))
	p.Quotas = s.Quotas
	f.Add(pk, encodeSpec(pk, &p))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		if r, err := decodeSpec(key, val); err == nil {
			if got := encodeSpec(appendKey(nil, r.Key), &r); !bytes.Equal(got, val) || !bytes.Equal(appendKey(nil, r.Key), key) {
				t.Fatalf("decode(%x, %x) = %+v encodes to %x", key, val, r, got)
			}
		}
		if r, err := decodeSpecBody(keyA, val); err == nil {
			if got := appendSpecBody(nil, &r); !bytes.Equal(got, val) {
				t.Fatalf("body %x = %+v encodes to %x", val, r, got)
			}
		}
	})
}

func FuzzDecodeOverride(f *testing.F) {
	o := broker.Override{TPM: ptr(5), Concurrency: ptr(-1), Reason: "r", SetAt: t0}
	k := appendKey(nil, keyB)
	f.Add(k, encodeOverride(k, &o))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		if r, err := decodeOverride(key, val); err == nil {
			if got := encodeOverride(key, r.Override); !bytes.Equal(got, val) {
				t.Fatalf("decode(%x) = %+v encodes to %x", val, r, got)
			}
		}
		if r, err := decodeOverrideBody(val); err == nil {
			if got := appendOverrideBody(nil, r); !bytes.Equal(got, val) {
				t.Fatalf("body %x = %+v encodes to %x", val, r, got)
			}
		}
	})
}

func FuzzDecodeUsage(f *testing.F) {
	k := usageKey(29_000_000, keyA)
	f.Add(k, encodeUsage(k, 4096, 1))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		if r, err := decodeUsage(key, val); err == nil {
			k := usageKey(r.Minute, r.Key)
			if got := encodeUsage(k, r.Tokens, r.Requests); !bytes.Equal(got, val) || !bytes.Equal(k, key) {
				t.Fatalf("decode(%x, %x) = %+v encodes to %x", key, val, r, got)
			}
		}
	})
}

func FuzzDecodeStats(f *testing.F) {
	st := broker.Stats{Granted: 3, Refused: -1, WindowTokens: 1 << 40, LimitTPM: 5}
	st.OutputHist = new(broker.Histogram)
	st.OutputHist[0], st.OutputHist[7], st.OutputHist[broker.HistogramBuckets-1] = 1, -2, 3
	k := statsKey(29_000_000, keyA, "svc")
	f.Add(k, encodeStats(k, &st))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		if r, err := decodeStats(key, val); err == nil {
			k := statsKey(r.Minute, r.Key, r.Client)
			if got := encodeStats(k, &r.Stats); !bytes.Equal(got, val) || !bytes.Equal(k, key) {
				t.Fatalf("decode(%x, %x) = %+v encodes to %x", key, val, r, got)
			}
		}
	})
}

// BenchmarkEncodeLease compares the hand-rolled encoding with
// encoding/json, the obvious alternative, for the record written on every
// grant.
func BenchmarkEncodeLease(b *testing.B) {
	l := lease("0190f5c2-7d1e-7cc1-9f4e-3a2b1c0d9e8f", 3)
	b.Run("binary", func(b *testing.B) {
		b.ReportAllocs()
		var n int
		for b.Loop() {
			n = len(encodeLease(&l))
		}
		b.ReportMetric(float64(n), "bytes")
	})
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		var n int
		for b.Loop() {
			v, _ := json.Marshal(&l)
			n = len(v)
		}
		b.ReportMetric(float64(n), "bytes")
	})
}

func BenchmarkDecodeLease(b *testing.B) {
	l := lease("0190f5c2-7d1e-7cc1-9f4e-3a2b1c0d9e8f", 3)
	key := []byte(l.ID)
	bin := encodeLease(&l)
	js, _ := json.Marshal(&l)
	b.Run("binary", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeLease(key, bin); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var r broker.LeaseRecord
			if err := json.Unmarshal(js, &r); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func FuzzDecodeAdaptive(f *testing.F) {
	a := broker.AdaptiveRecord{Key: keyA, TokensWmax: 1.5e6, RequestsWmax: 12, LastDecrease: t0, Throttles: 4}
	k := appendKey(nil, a.Key)
	f.Add(k, encodeAdaptive(k, &a))
	a.Depth, a.TokensCut, a.RequestsCut = 3, 0.729, 0.9
	f.Add(k, encodeAdaptive(k, &a))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		if r, err := decodeAdaptive(key, val); err == nil {
			if got := encodeAdaptive(appendKey(nil, r.Key), &r); !bytes.Equal(got, val) || !bytes.Equal(appendKey(nil, r.Key), key) {
				t.Fatalf("decode(%x, %x) = %+v encodes to %x", key, val, r, got)
			}
		}
		if r, err := decodeAdaptiveBody(keyA, val); err == nil {
			if got := appendAdaptiveBody(nil, &r); !bytes.Equal(got, val) {
				t.Fatalf("body %x = %+v encodes to %x", val, r, got)
			}
		}
	})
}

func FuzzDecodeChunk(f *testing.F) {
	c := broker.ChunkRecord{ID: 42, Key: keyA, Start: t0, End: t0.Add(time.Second), Requests: 12, Tokens: 90_000,
		LeasesEnd: t0.Add(5 * time.Minute), Secret: []byte("0123456789abcdef")}
	f.Add(chunkKey(c.ID), encodeChunk(chunkKey(c.ID), &c))
	c.Closed = true
	f.Add(chunkKey(c.ID), encodeChunk(chunkKey(c.ID), &c))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		if r, err := decodeChunk(key, val); err == nil {
			if got := encodeChunk(chunkKey(r.ID), &r); !bytes.Equal(got, val) || !bytes.Equal(chunkKey(r.ID), key) {
				t.Fatalf("decode(%x, %x) = %+v encodes to %x", key, val, r, got)
			}
		}
	})
}
