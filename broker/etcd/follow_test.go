package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/etcd"
	"github.com/bedrockqb/quotabroker/internal/etcdtest"
)

// follow opens a store on prefix, as a standby does, and runs Follow
// until the test ends; hook, when set, installs the follower's test
// hooks first.
func follow(t testing.TB, cli *clientv3.Client, prefix string, hook func(*etcd.Store)) *etcd.Store {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := etcd.Open(ctx, cli, etcd.Options{Prefix: prefix, Clock: clock{}})
	if err != nil {
		t.Fatal(err)
	}
	if hook != nil {
		hook(st)
	}
	var wg sync.WaitGroup
	wg.Go(func() { st.Follow(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if st.FollowStatus().Following {
			t.Error("the copy is kept after Follow returned")
		}
	})
	return st
}

// TestFollow checks the standby's copy of the prefix against what etcd
// holds, read in full, on one real etcd member.
func TestFollow(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real etcd")
	}
	ec := etcdtest.Start(t, 1)
	cli := client(t, ec.Endpoints())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	now := time.Now().Truncate(time.Second)
	minute := now.Unix() / 60
	lease := func(id string, v uint64, pad string) broker.LeaseRecord {
		return broker.LeaseRecord{ID: id, Version: v, Key: key, Client: pad, State: broker.LeaseActive,
			Reserved: 10, Charged: 10, Requests: 1, GrantedAt: now, ExpiresAt: now.Add(time.Minute)}
	}

	t.Run("the copy is what etcd holds after puts, overwrites and deletions", func(t *testing.T) {
		const prefix = "/follow/"
		lead(t, ctx, cli, "/follow-empty/")
		// On a client of its own, as a replica's follower is: etcd
		// defers a progress request while any watch of the stream is
		// catching up (follow.go).
		empty := follow(t, client(t, ec.Endpoints()), "/follow-empty/", nil)
		if !etcd.WaitFollowing(empty, ctx, 0) {
			t.Fatal("the standby of the empty prefix never had a copy")
		}
		st, _ := lead(t, ctx, cli, prefix)
		// Some records before the standby reads the prefix.
		commit(t, ctx, st, broker.Change{
			Specs:  []broker.Spec{{Key: key, Quota: broker.Limits{RPM: 100}, Source: "test"}},
			Leases: []broker.LeaseRecord{lease("a", 1, ""), lease("b", 1, "")},
			Usage:  []broker.UsageRecord{{Key: key, Minute: minute - 3, Tokens: 5, Requests: 1}},
			Chunks: []broker.ChunkRecord{{ID: 1, Key: key, Start: now, End: now.Add(time.Second), Requests: 5, Tokens: 50, Secret: []byte("s")}},
		})
		sb := follow(t, cli, prefix, nil)
		if !etcd.WaitFollowing(sb, ctx, 0) {
			t.Fatal("the standby never had a copy")
		}
		// An empty prefix (but for its marker and the election) loads as
		// the full read does.
		if copied, ok := etcd.LoadCopy(empty, ctx); !ok || !reflect.DeepEqual(copied, load(t, ctx, cli, "/follow-empty/")) {
			t.Errorf("an empty prefix's copy (loaded: %t) differs from the full read: %s", ok, brief(copied))
		}
		// One Change split across transactions (300 leases of 8 KiB:
		// past both the operation and the size limit) with a chunk.
		var big broker.Change
		pad := strings.Repeat("x", 8<<10)
		for i := range 300 {
			big.Leases = append(big.Leases, lease(fmt.Sprintf("l%03d", i), 1, pad))
		}
		big.Chunks = []broker.ChunkRecord{{ID: 2, Key: key, Start: now, End: now.Add(time.Second), Requests: 9, Tokens: 90, Secret: []byte("t")}}
		big.Usage = []broker.UsageRecord{{Key: key, Minute: minute, Tokens: 10, Requests: 1}}
		commit(t, ctx, st, big)
		// Overwrites and deletions, of single keys and of ranges.
		tpm := int64(50)
		commit(t, ctx, st, broker.Change{
			Specs:       []broker.Spec{{Key: key, Quota: broker.Limits{RPM: 200}, Source: "test"}},
			Overrides:   []broker.OverrideRecord{{Key: key, Override: &broker.Override{TPM: &tpm, SetAt: now}}},
			Adaptive:    []broker.AdaptiveRecord{{Key: key, TokensWmax: 7}},
			Leases:      []broker.LeaseRecord{lease("a", 2, "settled")},
			Usage:       []broker.UsageRecord{{Key: key, Minute: minute, Tokens: 1, Requests: 1}},
			ClientUsage: []broker.ClientUsageRecord{{Client: "c", Key: key, Minute: minute, Tokens: 3, Requests: 1}},
			Spend:       []broker.SpendRecord{{Client: "c", Key: key, Day: minute / 1440, NanoUSD: 9, Calls: 1}},
		})
		commit(t, ctx, st, broker.Change{DeleteLeases: []string{"b", "l007"}, DeleteChunks: []uint64{1},
			Overrides: []broker.OverrideRecord{{Key: key}}, DeleteUsageBefore: minute - 1})

		copied, ok := etcd.LoadCopy(sb, ctx)
		if !ok {
			t.Fatalf("no copy to load from: %+v", sb.FollowStatus())
		}
		full := load(t, ctx, cli, prefix)
		if len(full.Leases) != 300 || len(full.Usage) != 1 || len(full.Chunks) != 1 || len(full.Overrides) != 0 ||
			len(full.Adaptive) != 1 || len(full.ClientUsage) != 1 || len(full.Spend) != 1 {
			t.Fatalf("etcd holds %d leases, %d usage, %d chunks, %d overrides, %d adaptive, %d client usage, %d spend; want 300, 1, 1, 0, 1, 1, 1",
				len(full.Leases), len(full.Usage), len(full.Chunks), len(full.Overrides), len(full.Adaptive), len(full.ClientUsage), len(full.Spend))
		}
		if !reflect.DeepEqual(copied, full) {
			t.Errorf("the standby's copy differs from etcd's records:\ncopy %s\netcd %s", brief(copied), brief(full))
		}
		if s := sb.FollowStatus(); !s.Following || s.Rev < s.Seen || s.Resyncs != 0 {
			t.Errorf("follow status %+v: want following, in sync, never read again", s)
		}
	})

	t.Run("a compaction past the copy makes the standby read again", func(t *testing.T) {
		const prefix = "/follow-compact/"
		st, _ := lead(t, ctx, cli, prefix)
		commit(t, ctx, st, broker.Change{Leases: []broker.LeaseRecord{lease("before", 1, "")}})
		var once sync.Once
		sb := follow(t, cli, prefix, func(s *etcd.Store) {
			// Between the standby's read and its watch: a write it
			// would miss, and a compaction past its read's revision,
			// so that the watch cannot start where the read ended.
			etcd.HookFollow(s, func() {
				once.Do(func() {
					if err := st.Commit(ctx, broker.Change{Leases: []broker.LeaseRecord{lease("during", 1, "")}}); err != nil {
						t.Error(err)
					}
					r, err := cli.Put(ctx, "/elsewhere", "x")
					if err != nil {
						t.Error(err)
						return
					}
					if _, err := cli.Compact(ctx, r.Header.Revision); err != nil {
						t.Error(err)
					}
				})
			}, nil)
		})
		if !etcd.WaitFollowing(sb, ctx, 1) {
			t.Fatalf("the standby did not read the prefix again after the compaction: %+v", sb.FollowStatus())
		}
		commit(t, ctx, st, broker.Change{Leases: []broker.LeaseRecord{lease("after", 1, "")}})
		copied, ok := etcd.LoadCopy(sb, ctx)
		if !ok {
			t.Fatalf("no copy to load from: %+v", sb.FollowStatus())
		}
		full := load(t, ctx, cli, prefix)
		if len(full.Leases) != 3 {
			t.Fatalf("etcd holds %d leases, want 3", len(full.Leases))
		}
		if !reflect.DeepEqual(copied, full) {
			t.Errorf("the standby's copy differs from etcd's records:\ncopy %s\netcd %s", brief(copied), brief(full))
		}
	})

	// A leader writes as fast as it can until it is deposed (its session
	// revoked, as at a crash once its lease expires); the standby that
	// wins loads. Every write etcd acknowledged must be in the load, from
	// the copy when the copy's watch answers, from a full read when it
	// does not (a copy left behind must not be taken).
	for _, stalled := range []bool{false, true} {
		name := "Load on a win has every write the old leader made"
		if stalled {
			name += ", from a full read when the copy's watch is stuck"
		}
		t.Run(name, func(t *testing.T) {
			prefix := fmt.Sprintf("/follow-win-%t/", stalled)
			stA, sessA := lead(t, ctx, cli, prefix)
			var stall atomic.Bool
			gate := make(chan struct{})
			sb := follow(t, cli, prefix, func(s *etcd.Store) {
				etcd.HookFollow(s, nil, func() {
					if stall.Load() {
						<-gate
					}
				})
			})
			t.Cleanup(func() { close(gate) }) // before follow's cleanup: cleanups run last first
			if !etcd.WaitFollowing(sb, ctx, 0) {
				t.Fatal("the standby never had a copy")
			}
			stall.Store(stalled)
			sessB, err := etcd.NewSession(ctx, cli, clock{}, etcd.SessionConfig{TTL: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(sessB.Close)
			type won struct {
				f   *etcd.Fence
				err error
			}
			wonc := make(chan won, 1)
			go func() {
				f, _, err := sessB.Campaign(ctx, sb.ElectionPrefix(), "b")
				wonc <- won{f, err}
			}()

			var acked []string
			var lastErr error
			started, wrote := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(wrote)
				for i := 0; ; i++ {
					id := fmt.Sprintf("w%05d", i)
					if lastErr = stA.Commit(ctx, broker.Change{Leases: []broker.LeaseRecord{lease(id, 1, "")}}); lastErr != nil {
						return
					}
					acked = append(acked, id)
					if i == 20 {
						close(started)
					}
				}
			}()
			select {
			case <-started:
			case <-wrote:
				t.Fatalf("the leader stopped writing early: %v", lastErr)
			}
			sessA.Close() // deposed while writing
			w := <-wonc
			if w.err != nil {
				t.Fatal(w.err)
			}
			sb.Lead(w.f)
			// A revision after the prefix's last event: only a progress
			// notification tells the copy it has everything up to it.
			if _, err := cli.Put(ctx, "/elsewhere", "y"); err != nil {
				t.Fatal(err)
			}
			snap, err := sb.Load(ctx)
			if err != nil {
				t.Fatal(err)
			}
			<-wrote
			if !errors.Is(lastErr, etcd.ErrNotLeader) {
				t.Errorf("the old leader's writes ended with %v, want ErrNotLeader", lastErr)
			}
			if got := sb.LoadedFromCopy(); got == stalled {
				t.Errorf("loaded from the copy: %t, want %t", got, !stalled)
			}
			have := map[string]bool{}
			for _, l := range snap.Leases {
				have[l.ID] = true
			}
			for _, id := range acked {
				if !have[id] {
					t.Fatalf("lease %s, acknowledged to the old leader, is not in the new leader's load (%d of %d acknowledged loaded)",
						id, len(snap.Leases), len(acked))
				}
			}
			if full := load(t, ctx, cli, prefix); !reflect.DeepEqual(snap, full) {
				t.Errorf("the new leader's load differs from etcd's records:\nload %s\netcd %s", brief(snap), brief(full))
			}
			// The new leader writes on what it loaded.
			commit(t, ctx, sb, broker.Change{Leases: []broker.LeaseRecord{lease("new", 1, "")}})
		})
	}
}

// brief counts a snapshot's records, for a failure message.
func brief(s broker.Snapshot) string {
	return fmt.Sprintf("%d specs, %d overrides, %d adaptive, %d leases, %d usage, %d client usage, %d spend, %d chunks",
		len(s.Specs), len(s.Overrides), len(s.Adaptive), len(s.Leases), len(s.Usage), len(s.ClientUsage), len(s.Spend), len(s.Chunks))
}
