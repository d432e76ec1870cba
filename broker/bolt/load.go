package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/bedrockqb/quotabroker/broker"
	"go.etcd.io/bbolt"
)

// Load reads every record. A record that does not decode fails Load with
// its bucket, key and reason: skipping it could forget a lease and let a
// budget overrun its limit.
func (s *Store) Load(ctx context.Context) (broker.Snapshot, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return broker.Snapshot{}, fmt.Errorf("load store %s: %w", s.path, errClosed)
	}
	var snap broker.Snapshot
	err := s.read(func(tx *bbolt.Tx) error {
		n := 0
		for _, name := range dataBuckets {
			b := tx.Bucket(name)
			if b == nil {
				if slices.ContainsFunc(addedBuckets, func(a []byte) bool { return bytes.Equal(a, name) }) {
					continue // a file older than the bucket: nothing of it yet
				}
				return &corruptError{s.path, fmt.Sprintf("bucket %s", name), errors.New("missing")}
			}
			c := b.Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				if n++; n%4096 == 0 {
					if err := ctx.Err(); err != nil {
						return fmt.Errorf("load store %s: %w", s.path, err)
					}
				}
				if err := addRecord(&snap, name, k, v); err != nil {
					return &corruptError{s.path, fmt.Sprintf("bucket %s, key %s", name, describeKey(name, k)), err}
				}
			}
		}
		return nil
	})
	if err != nil {
		return broker.Snapshot{}, err
	}
	return snap, nil
}

// addRecord decodes one record of bucket into snap.
func addRecord(snap *broker.Snapshot, bucket, k, v []byte) error {
	if v == nil {
		return errors.New("nested bucket where a record belongs")
	}
	switch string(bucket) {
	case string(bucketSpecs):
		r, err := decodeSpec(k, v)
		snap.Specs = append(snap.Specs, r)
		return err
	case string(bucketOverrides):
		r, err := decodeOverride(k, v)
		snap.Overrides = append(snap.Overrides, r)
		return err
	case string(bucketLeases):
		r, err := decodeLease(k, v)
		snap.Leases = append(snap.Leases, r)
		return err
	case string(bucketUsage):
		r, err := decodeUsage(k, v)
		snap.Usage = append(snap.Usage, r)
		return err
	case string(bucketAdaptive):
		r, err := decodeAdaptive(k, v)
		snap.Adaptive = append(snap.Adaptive, r)
		return err
	case string(bucketChunks):
		r, err := decodeChunk(k, v)
		snap.Chunks = append(snap.Chunks, r)
		return err
	case string(bucketSpend):
		r, err := decodeSpend(k, v)
		snap.Spend = append(snap.Spend, r)
		return err
	case string(bucketClientUsage):
		r, err := decodeClientUsage(k, v)
		snap.ClientUsage = append(snap.ClientUsage, r)
		return err
	}
	return fmt.Errorf("unknown bucket %s", bucket)
}

// describeKey renders a key for an error message: readable if it decodes,
// hex as well, since a damaged key may not.
func describeKey(bucket, k []byte) string {
	switch string(bucket) {
	case string(bucketLeases):
		return strconv.Quote(string(k))
	case string(bucketSpecs), string(bucketOverrides), string(bucketAdaptive):
		if bk, err := decodeKey(k); err == nil {
			return fmt.Sprintf("%s (%x)", bk, k)
		}
	case string(bucketUsage):
		if m, bk, err := decodeUsageKey(k); err == nil {
			return fmt.Sprintf("%s minute %d (%x)", bk, m, k)
		}
	case string(bucketChunks):
		if len(k) == 8 {
			return fmt.Sprintf("%d (%x)", binary.BigEndian.Uint64(k), k)
		}
	case string(bucketStats), string(bucketStatsTotal), string(bucketSpend):
		if m, bk, client, err := decodeStatsKey(k); err == nil {
			return fmt.Sprintf("%s minute %d client %q (%x)", bk, m, client, k)
		}
	case string(bucketClientUsage):
		if m, bk, client, route, err := decodeClientUsageKey(k); err == nil && route != "" {
			return fmt.Sprintf("%s minute %d client %q route %s (%x)", bk, m, client, route, k)
		} else if err == nil {
			return fmt.Sprintf("%s minute %d client %q (%x)", bk, m, client, k)
		}
	}
	return fmt.Sprintf("%x", k)
}
