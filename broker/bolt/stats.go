package bolt

import (
	"context"
	"fmt"

	"github.com/bedrockqb/quotabroker/broker"
	"go.etcd.io/bbolt"
)

// ReadStats calls fn for every history record from <= Minute < to, in
// minute order (broker.StatsReader). It reads in one read transaction,
// which does not block commits.
func (s *Store) ReadStats(ctx context.Context, from, to int64, perClient bool, fn func(*broker.StatsRecord) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return fmt.Errorf("read history from store %s: %w", s.path, errClosed)
	}
	return s.read(func(tx *bbolt.Tx) error {
		name := bucketStatsTotal
		if perClient {
			name = bucketStats
		}
		b := tx.Bucket(name)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		n := 0
		// A day of history repeats the same few budgets and clients: decode
		// each key's names once, not once per record.
		var keys statsKeyCache
		for k, v := c.Seek(usageKey(from, broker.Key{})[:8]); k != nil; k, v = c.Next() {
			if m, _ := usageMinute(k); m >= to {
				break
			}
			if n++; n%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			r, err := keys.decode(k, v)
			if err != nil {
				return &corruptError{s.path, fmt.Sprintf("bucket %s, key %s", name, describeKey(name, k)), err}
			}
			if err := fn(&r); err != nil {
				return err
			}
		}
		return nil
	})
}
