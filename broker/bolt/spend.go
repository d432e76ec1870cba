package bolt

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/bedrockqb/quotabroker/broker"
	"go.etcd.io/bbolt"
)

// The tenants' records (broker.SpendRecord, broker.ClientUsageRecord) are
// keyed like history: the period first (a unix day for spend, a minute for
// client usage; big-endian with the sign bit flipped, so cut-offs are range
// scans), then the budget key and the client, and for client usage through
// a route the route's name (absent for calls that named a model, so keys
// written before routes read the same). Both are totals to which a Change
// adds deltas, like usage.

// Spend body: nano-dollars, calls, unpriced calls.
func encodeSpend(key []byte, nano, calls, unpriced int64) []byte {
	b := make([]byte, 1, 1+3*binary.MaxVarintLen64+crcLen)
	b[0] = recordFormat
	for _, v := range []int64{nano, calls, unpriced} {
		b = binary.AppendVarint(b, v)
	}
	return seal(key, b)
}

func decodeSpendTotals(key, val []byte) (nano, calls, unpriced int64, err error) {
	body, err := unseal(key, val)
	if err != nil {
		return 0, 0, 0, err
	}
	d := decoder{b: body}
	nano, calls, unpriced = d.varint(), d.varint(), d.varint()
	return nano, calls, unpriced, d.end()
}

func decodeSpend(key, val []byte) (broker.SpendRecord, error) {
	day, k, client, err := decodeStatsKey(key)
	if err != nil {
		return broker.SpendRecord{}, fmt.Errorf("spend key: %w", err)
	}
	n, c, u, err := decodeSpendTotals(key, val)
	return broker.SpendRecord{Client: client, Key: k, Day: day, NanoUSD: n, Calls: c, Unpriced: u}, err
}

func clientUsageKey(u *broker.ClientUsageRecord) []byte {
	k := statsKey(u.Minute, u.Key, u.Client)
	if u.Route != "" {
		k = appendString(k, u.Route)
	}
	return k
}

func decodeClientUsageKey(key []byte) (minute int64, k broker.Key, client, route string, err error) {
	m, ok := usageMinute(key)
	if !ok {
		return 0, broker.Key{}, "", "", errShort
	}
	d := decoder{b: key[8:]}
	k = d.key()
	client = d.string()
	if d.err == nil && len(d.b) > 0 {
		if route = d.string(); route == "" && d.err == nil {
			d.fail(errors.New("an empty route is stored as none"))
		}
	}
	return m, k, client, route, d.end()
}

func decodeClientUsage(key, val []byte) (broker.ClientUsageRecord, error) {
	m, k, client, route, err := decodeClientUsageKey(key)
	if err != nil {
		return broker.ClientUsageRecord{}, fmt.Errorf("client usage key: %w", err)
	}
	t, r, err := decodeUsageTotals(key, val)
	return broker.ClientUsageRecord{Client: client, Key: k, Route: route, Minute: m, Tokens: t, Requests: r}, err
}

// spendDelta is a SpendRecord or ClientUsageRecord ready to add.
type spendDelta struct {
	k    []byte
	vals [3]int64
}

func prepareTenants(c *broker.Change, w *write) error {
	for _, s := range c.Spend {
		k := statsKey(s.Day, s.Key, s.Client)
		if err := checkKey(k); err != nil {
			return fmt.Errorf("spend %s %q: %w", s.Key, s.Client, err)
		}
		w.spend = append(w.spend, spendDelta{k, [3]int64{s.NanoUSD, s.Calls, s.Unpriced}})
	}
	for _, u := range c.ClientUsage {
		k := clientUsageKey(&u)
		if err := checkKey(k); err != nil {
			return fmt.Errorf("client usage %s %q: %w", u.Key, u.Client, err)
		}
		w.clientUsage = append(w.clientUsage, spendDelta{k, [3]int64{u.Tokens, u.Requests}})
	}
	w.deleteSpendBefore, w.deleteClientUsageBefore = c.DeleteSpendBefore, c.DeleteClientUsageBefore
	return nil
}

// applyTenants adds w's spend and client usage in tx and drops those
// before the cut-offs.
func (w *write) applyTenants(tx *bbolt.Tx) error {
	if len(w.spend) > 0 {
		b, err := bucket(tx, bucketSpend)
		if err != nil {
			return err
		}
		for _, d := range w.spend {
			var old [3]int64
			if v := b.Get(d.k); v != nil {
				var err error
				if old[0], old[1], old[2], err = decodeSpendTotals(d.k, v); err != nil {
					return fmt.Errorf("bucket %s, key %s: stored spend: %w", bucketSpend, describeKey(bucketSpend, d.k), err)
				}
			}
			for i := range old {
				var ok bool
				if old[i], ok = add(old[i], d.vals[i]); !ok {
					return fmt.Errorf("spend %s: total overflows", describeKey(bucketSpend, d.k))
				}
			}
			if err := b.Put(d.k, encodeSpend(d.k, old[0], old[1], old[2])); err != nil {
				return fmt.Errorf("put spend %s: %w", describeKey(bucketSpend, d.k), err)
			}
		}
	}
	if len(w.clientUsage) > 0 {
		b, err := bucket(tx, bucketClientUsage)
		if err != nil {
			return err
		}
		for _, d := range w.clientUsage {
			var tokens, requests int64
			if v := b.Get(d.k); v != nil {
				var err error
				if tokens, requests, err = decodeUsageTotals(d.k, v); err != nil {
					return fmt.Errorf("bucket %s, key %s: stored client usage: %w", bucketClientUsage, describeKey(bucketClientUsage, d.k), err)
				}
			}
			t, ok1 := add(tokens, d.vals[0])
			r, ok2 := add(requests, d.vals[1])
			if !ok1 || !ok2 {
				return fmt.Errorf("client usage %s: total overflows", describeKey(bucketClientUsage, d.k))
			}
			if err := b.Put(d.k, encodeUsage(d.k, t, r)); err != nil {
				return fmt.Errorf("put client usage %s: %w", describeKey(bucketClientUsage, d.k), err)
			}
		}
	}
	if err := deleteBefore(tx.Bucket(bucketSpend), bucketSpend, w.deleteSpendBefore); err != nil {
		return err
	}
	if err := deleteBefore(tx.Bucket(bucketClientUsage), bucketClientUsage, w.deleteClientUsageBefore); err != nil {
		return err
	}
	return nil
}
