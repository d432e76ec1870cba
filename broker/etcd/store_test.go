package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/etcd"
	"github.com/bedrockqb/quotabroker/internal/etcdtest"
)

// clock is the system clock: the Session times keep-alives by it, and
// these tests run against a real etcd, whose leases run on real time.
type clock struct{}

func (clock) Now() time.Time { return time.Now() }

func client(t testing.TB, eps string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(eps, ","), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// lead opens a store on prefix and makes it the leader with a new session.
func lead(t testing.TB, ctx context.Context, cli *clientv3.Client, prefix string) (*etcd.Store, *etcd.Session) {
	t.Helper()
	st, err := etcd.Open(ctx, cli, etcd.Options{Prefix: prefix, Clock: clock{}})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := etcd.NewSession(ctx, cli, clock{}, etcd.SessionConfig{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sess.Close)
	f, _, err := sess.Campaign(ctx, st.ElectionPrefix(), "me")
	if err != nil {
		t.Fatal(err)
	}
	st.Lead(f)
	return st, sess
}

var key = broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: "anthropic.claude/x v1:0"}

// TestStore runs every store behaviour against one real etcd member (the
// members' start-up dominates the cost), each on its own prefix.
func TestStore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real etcd")
	}
	ec := etcdtest.Start(t, 1)
	cli := client(t, ec.Endpoints())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("round trip, split past etcd's limits", func(t *testing.T) {
		st, _ := lead(t, ctx, cli, "/rt/")
		now := time.Now().Truncate(time.Second)
		var c broker.Change
		c.Specs = []broker.Spec{{Key: key, Quota: broker.Limits{RPM: 100}, Source: "test"}}
		// 300 leases (three transactions' worth) with values big enough
		// that 1.5 MiB would not hold them all either.
		pad := strings.Repeat("x", 8<<10)
		for i := range 300 {
			c.Leases = append(c.Leases, broker.LeaseRecord{ID: fmt.Sprintf("l%03d", i), Version: 2, Key: key, Client: pad,
				State: broker.LeaseActive, Reserved: 10, Charged: 10, Requests: 1, GrantedAt: now, ExpiresAt: now.Add(time.Minute)})
		}
		c.Usage = []broker.UsageRecord{{Key: key, Minute: now.Unix() / 60, Tokens: 10, Requests: 1}}
		c.Chunks = []broker.ChunkRecord{{ID: 7, Key: key, Start: now, End: now.Add(time.Second), Requests: 5, Tokens: 50, Secret: []byte("s")}}
		if err := st.Commit(ctx, c); err != nil {
			t.Fatal(err)
		}
		// Deltas add up; an older lease version does not overwrite.
		if err := st.Commit(ctx, broker.Change{Usage: c.Usage, Leases: []broker.LeaseRecord{{ID: "l000", Version: 1, Key: key}}}); err != nil {
			t.Fatal(err)
		}
		st2, err := etcd.Open(ctx, cli, etcd.Options{Prefix: "/rt/", Clock: clock{}})
		if err != nil {
			t.Fatal(err)
		}
		snap, err := st2.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(snap.Specs) != 1 || len(snap.Leases) != 300 || len(snap.Chunks) != 1 || len(snap.Usage) != 1 {
			t.Fatalf("loaded %d specs, %d leases, %d chunks, %d usage; want 1, 300, 1, 1", len(snap.Specs), len(snap.Leases), len(snap.Chunks), len(snap.Usage))
		}
		if u := snap.Usage[0]; u.Tokens != 20 || u.Requests != 2 || u.Key != key {
			t.Errorf("usage %+v, want 20 tokens and 2 requests of %v", u, key)
		}
		for _, l := range snap.Leases {
			if l.ID == "l000" && l.Version != 2 {
				t.Errorf("lease l000 at version %d: an older record overwrote a newer one", l.Version)
			}
		}
		if ch := snap.Chunks[0]; ch.ID != 7 || !ch.End.Equal(now.Add(time.Second)) || string(ch.Secret) != "s" {
			t.Errorf("chunk %+v", ch)
		}
		// Deletions.
		if err := st.Commit(ctx, broker.Change{DeleteLeases: []string{"l001"}, DeleteChunks: []uint64{7}, DeleteUsageBefore: now.Unix()/60 + 1}); err != nil {
			t.Fatal(err)
		}
		if snap, err = st2.Load(ctx); err != nil {
			t.Fatal(err)
		}
		if len(snap.Leases) != 299 || len(snap.Chunks) != 0 || len(snap.Usage) != 0 {
			t.Errorf("after deletions: %d leases, %d chunks, %d usage; want 299, 0, 0", len(snap.Leases), len(snap.Chunks), len(snap.Usage))
		}
	})

	t.Run("writes are fenced on leadership", func(t *testing.T) {
		st, sess := lead(t, ctx, cli, "/fence/")
		spec := broker.Change{Specs: []broker.Spec{{Key: key, Quota: broker.Limits{RPM: 1}}}}
		if err := st.Commit(ctx, spec); err != nil {
			t.Fatal(err)
		}
		// Another replica takes over once this one's session is gone: the
		// old leader's write is refused by etcd, not by its own check.
		sess.Close()
		st2, _ := lead(t, ctx, cli, "/fence/")
		if err := st.Commit(ctx, spec); !errors.Is(err, etcd.ErrNotLeader) {
			t.Fatalf("deposed leader's commit: %v, want ErrNotLeader", err)
		}
		if err := st2.Commit(ctx, spec); err != nil {
			t.Fatalf("new leader's commit: %v", err)
		}
		// A store that never led writes nothing.
		st3, err := etcd.Open(ctx, cli, etcd.Options{Prefix: "/fence/", Clock: clock{}})
		if err != nil {
			t.Fatal(err)
		}
		if err := st3.Commit(ctx, spec); !errors.Is(err, etcd.ErrNotLeader) {
			t.Fatalf("commit without leadership: %v, want ErrNotLeader", err)
		}
	})

	t.Run("a chunk may not outlive the leadership", func(t *testing.T) {
		st, sess := lead(t, ctx, cli, "/deadline/")
		dl := sess.Deadline()
		if ttl := time.Until(dl); ttl <= 0 || ttl > 2*time.Second {
			t.Fatalf("deadline %v from now, want within the 2 s TTL", ttl)
		}
		late := broker.ChunkRecord{ID: 1, Key: key, Start: time.Now(), End: dl.Add(time.Millisecond), Requests: 5, Tokens: 5}
		if err := st.Commit(ctx, broker.Change{Chunks: []broker.ChunkRecord{late}}); err == nil {
			t.Fatal("a chunk ending after the leadership deadline was committed")
		}
		late.End = dl.Add(-time.Millisecond)
		if err := st.Commit(ctx, broker.Change{Chunks: []broker.ChunkRecord{late}}); err != nil {
			t.Fatalf("a chunk ending before the deadline: %v", err)
		}
	})

	t.Run("the prefix is checked", func(t *testing.T) {
		if _, err := cli.Put(ctx, "/foreign/app/config", "x"); err != nil {
			t.Fatal(err)
		}
		_, err := etcd.Open(ctx, cli, etcd.Options{Prefix: "/foreign", Clock: clock{}})
		if !errors.Is(err, etcd.ErrForeignPrefix) || !strings.Contains(err.Error(), `"/foreign/"`) {
			t.Errorf("someone else's prefix: %v", err)
		}
		if _, err := etcd.Open(ctx, cli, etcd.Options{Prefix: "/two/", Cluster: "a", Clock: clock{}}); err != nil {
			t.Fatal(err)
		}
		_, err = etcd.Open(ctx, cli, etcd.Options{Prefix: "/two/", Cluster: "b", Clock: clock{}})
		if !errors.Is(err, etcd.ErrOtherCluster) || !strings.Contains(err.Error(), `cluster "a"`) {
			t.Errorf("a second cluster on a prefix: %v", err)
		}
		if _, err := etcd.Open(ctx, cli, etcd.Options{Prefix: "/two/", Cluster: "a", Clock: clock{}}); err != nil {
			t.Errorf("the same cluster again: %v", err)
		}
	})
}
