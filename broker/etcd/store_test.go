package etcd_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/etcd"
	"github.com/bedrockqb/quotabroker/internal/etcdtest"
	"github.com/bedrockqb/quotabroker/internal/sysclock"
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

	t.Run("every field of a Change is written", func(t *testing.T) {
		testCommitEveryField(t, ctx, cli)
	})

	t.Run("totals add, shrink and are cut", func(t *testing.T) {
		st, _ := lead(t, ctx, cli, "/totals/")
		commit(t, ctx, st, broker.Change{
			Spend: []broker.SpendRecord{{Client: "a/b", Key: key, Day: 20000, NanoUSD: 900, Calls: 1}, {Client: "a/b", Key: key, Day: 19990, NanoUSD: 1, Calls: 1}},
			ClientUsage: []broker.ClientUsageRecord{{Client: "a/b", Key: key, Minute: 100, Tokens: 50, Requests: 1}, {Client: "a/b", Key: key, Minute: 10, Tokens: 1},
				{Client: "a/b", Key: key, Route: "sonnet-us", Minute: 100, Tokens: 7, Requests: 1}},
		})
		// One key that grows in one count and shrinks in another, in one
		// transaction: written once, at its new total.
		commit(t, ctx, st, broker.Change{
			Spend:                   []broker.SpendRecord{{Client: "a/b", Key: key, Day: 20000, Calls: 1}, {Client: "a/b", Key: key, Day: 20000, NanoUSD: -400}},
			ClientUsage:             []broker.ClientUsageRecord{{Client: "a/b", Key: key, Minute: 100, Tokens: -20, Requests: 1}},
			DeleteSpendBefore:       19995,
			DeleteClientUsageBefore: 50,
		})
		snap := load(t, ctx, cli, "/totals/")
		wantSpend := []broker.SpendRecord{{Client: "a/b", Key: key, Day: 20000, NanoUSD: 500, Calls: 2}}
		// The route's total stays its own.
		wantUsage := []broker.ClientUsageRecord{{Client: "a/b", Key: key, Minute: 100, Tokens: 30, Requests: 2},
			{Client: "a/b", Key: key, Route: "sonnet-us", Minute: 100, Tokens: 7, Requests: 1}}
		if !reflect.DeepEqual(snap.Spend, wantSpend) || !reflect.DeepEqual(snap.ClientUsage, wantUsage) {
			t.Errorf("loaded spend %+v and client usage %+v, want %+v and %+v", snap.Spend, snap.ClientUsage, wantSpend, wantUsage)
		}
	})

	t.Run("a chunk's spend bound is taken back after its leases' spend", func(t *testing.T) {
		testSpendBoundOrder(t, ctx, cli)
	})

	t.Run("a client's spend survives a new leader", func(t *testing.T) {
		st, sess := lead(t, ctx, cli, "/failover/")
		day := time.Now().Unix() / 86400
		grant := broker.Change{
			Leases:      []broker.LeaseRecord{{ID: "g1", Version: 1, Key: key, Client: "team-a", State: broker.LeaseActive, Reserved: 100, Charged: 100, Requests: 1, Cost: 3000}},
			Spend:       []broker.SpendRecord{{Client: "team-a", Key: key, Day: day, NanoUSD: 3000, Calls: 1}},
			ClientUsage: []broker.ClientUsageRecord{{Client: "team-a", Key: key, Minute: day * 1440, Tokens: 100, Requests: 1}},
		}
		commit(t, ctx, st, grant)
		sess.Close()
		// The new leader loads what the old one wrote, and adds to it.
		st2, _ := lead(t, ctx, cli, "/failover/")
		snap, err := st2.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(snap.Spend, grant.Spend) || !reflect.DeepEqual(snap.ClientUsage, grant.ClientUsage) {
			t.Fatalf("new leader loaded spend %+v and client usage %+v, want %+v and %+v", snap.Spend, snap.ClientUsage, grant.Spend, grant.ClientUsage)
		}
		settle := broker.Change{
			Spend:       []broker.SpendRecord{{Client: "team-a", Key: key, Day: day, NanoUSD: -1000}},
			ClientUsage: []broker.ClientUsageRecord{{Client: "team-a", Key: key, Minute: day * 1440, Tokens: -40}},
		}
		commit(t, ctx, st2, settle)
		snap = load(t, ctx, cli, "/failover/")
		if len(snap.Spend) != 1 || snap.Spend[0].NanoUSD != 2000 || snap.Spend[0].Calls != 1 {
			t.Errorf("spend after the new leader's settlement: %+v, want 2000 nano-USD over 1 call", snap.Spend)
		}
		if len(snap.ClientUsage) != 1 || snap.ClientUsage[0].Tokens != 60 {
			t.Errorf("client usage after the new leader's settlement: %+v, want 60 tokens", snap.ClientUsage)
		}
	})

	t.Run("a capped client's spend and day tokens survive a new leader's broker", func(t *testing.T) {
		testSpendFailover(t, ctx, cli)
	})

	t.Run("shrinking totals are written in one transaction", func(t *testing.T) {
		testShrinksTogether(t, ctx, cli)
	})

	t.Run("a write whose answer is lost is not applied twice", func(t *testing.T) {
		testLostAnswer(t, ctx, ec.Endpoints())
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

func commit(t testing.TB, ctx context.Context, st *etcd.Store, c broker.Change) {
	t.Helper()
	if err := st.Commit(ctx, c); err != nil {
		t.Fatal(err)
	}
}

// load reads prefix as a replica that does not lead would.
func load(t testing.TB, ctx context.Context, cli *clientv3.Client, prefix string) broker.Snapshot {
	t.Helper()
	st, err := etcd.Open(ctx, cli, etcd.Options{Prefix: prefix, Clock: clock{}})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// dump returns the records under prefix (not the election's), by key, at
// revision rev (0: the latest).
func dump(t testing.TB, ctx context.Context, cli *clientv3.Client, prefix string, rev int64) map[string]string {
	t.Helper()
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if rev != 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := cli.Get(ctx, prefix, opts...)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		if k := string(kv.Key); !strings.HasPrefix(k, prefix+"leader/") {
			out[k] = string(kv.Value)
		}
	}
	return out
}

// notKept are the fields of broker.Change this store does not keep, by
// design (doc.go): per-client history is statistics.
var notKept = map[string]bool{"Stats": true, "DeleteStatsBefore": true, "DeleteClientStatsBefore": true}

// testCommitEveryField commits, onto a prefix holding a little of
// everything, Changes of one field each, taken from a Change with every
// field set: each must change what etcd holds (as bolt's
// TestCommitEveryField). It fails while full leaves a field zero, so a
// field added to broker.Change is covered, or named in notKept, as soon
// as it exists.
func testCommitEveryField(t *testing.T, ctx context.Context, cli *clientv3.Client) {
	t0 := time.Now().Truncate(time.Second)
	keyB := broker.Key{Region: "us-west-2", Scope: broker.ScopeOnDemand, Model: "b"}
	tpm := int64(7)
	full := broker.Change{
		Specs:                   []broker.Spec{{Key: keyB, Quota: broker.Limits{TPM: 100}}},
		Overrides:               []broker.OverrideRecord{{Key: keyB, Override: &broker.Override{TPM: &tpm, SetAt: t0}}},
		Leases:                  []broker.LeaseRecord{{ID: "new", Version: 1, Key: keyB, State: broker.LeaseActive}},
		DeleteLeases:            []string{"old"},
		Usage:                   []broker.UsageRecord{{Key: keyB, Minute: 5, Tokens: 1, Requests: 1}},
		DeleteUsageBefore:       2,
		Adaptive:                []broker.AdaptiveRecord{{Key: keyB, TokensWmax: 1}},
		Stats:                   []broker.StatsRecord{{Key: keyB, Minute: 5, Client: "c", Stats: broker.Stats{Granted: 1}}},
		DeleteStatsBefore:       2,
		DeleteClientStatsBefore: 2,
		Chunks:                  []broker.ChunkRecord{{ID: 9, Key: keyB, Start: t0, End: t0, Requests: 4, Tokens: 40, LeasesEnd: t0.Add(time.Minute), Secret: []byte("s")}},
		DeleteChunks:            []uint64{8},
		Spend:                   []broker.SpendRecord{{Client: "c", Key: keyB, Day: 20000, NanoUSD: 5, Calls: 1}},
		ClientUsage:             []broker.ClientUsageRecord{{Client: "c", Key: keyB, Minute: 5, Tokens: 1, Requests: 1}},
		DeleteSpendBefore:       20000,
		DeleteClientUsageBefore: 2,
	}
	base := broker.Change{
		Chunks: []broker.ChunkRecord{{ID: 8, Key: key, Start: t0, End: t0, Requests: 4, Tokens: 40, LeasesEnd: t0.Add(time.Minute)}},
		Leases: []broker.LeaseRecord{{ID: "old", Version: 1, Key: key, State: broker.LeaseCompleted}},
		// Before the cut-offs of full, so that they delete something.
		Usage:       []broker.UsageRecord{{Key: key, Minute: 1, Tokens: 1}},
		Spend:       []broker.SpendRecord{{Client: "c", Key: key, Day: 19000, NanoUSD: 5, Calls: 1}},
		ClientUsage: []broker.ClientUsageRecord{{Client: "c", Key: key, Minute: 1, Tokens: 1}},
	}
	v := reflect.ValueOf(full)
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if v.Field(i).IsZero() {
			t.Errorf("full leaves %s zero: set it, so that this test covers it", name)
			continue
		}
		prefix := fmt.Sprintf("/every/%s/", name)
		st, _ := lead(t, ctx, cli, prefix)
		commit(t, ctx, st, base)
		before := dump(t, ctx, cli, prefix, 0)
		var one broker.Change
		reflect.ValueOf(&one).Elem().Field(i).Set(v.Field(i))
		commit(t, ctx, st, one)
		after := dump(t, ctx, cli, prefix, 0)
		if changed := !maps.Equal(before, after); changed == notKept[name] {
			t.Errorf("a Change of %s alone: etcd changed %v, want %v", name, changed, !notKept[name])
		}
	}
}

// testSpendBoundOrder closes a chunk in a Change too big for one
// transaction (its leases' spend, one client each, and the bound taken
// back) and reads the prefix at every revision the Commit wrote: a Commit
// cut short after any of its transactions must hold at least the spend
// there was before it, and the last holds the leases' spend alone.
func testSpendBoundOrder(t *testing.T, ctx context.Context, cli *clientv3.Client) {
	const prefix = "/bound/"
	st, _ := lead(t, ctx, cli, prefix)
	now := time.Now().Truncate(time.Second)
	day := now.Unix() / 86400
	const bound, each, leases = 1_000_000, 1000, 300
	chunk := broker.ChunkRecord{ID: 1, Key: key, Start: now, End: now, Requests: leases, Tokens: leases * 10, LeasesEnd: now.Add(time.Minute)}
	commit(t, ctx, st, broker.Change{
		Chunks: []broker.ChunkRecord{chunk},
		Spend: []broker.SpendRecord{{Client: "(escrowed at a crash)", Key: key, Day: day, NanoUSD: bound},
			// A client that also settles below its reservation in the
			// close: its total shrinks in money while its calls grow.
			{Client: "c000", Key: key, Day: day, NanoUSD: 2000, Calls: 1}},
	})
	// The bound taken back comes first: the store may not rely on the
	// order within a Change (in a group, an earlier Change may open the
	// budget's next chunk and add to the same record).
	closing := broker.Change{Chunks: []broker.ChunkRecord{chunk},
		Spend: []broker.SpendRecord{{Client: "(escrowed at a crash)", Key: key, Day: day, NanoUSD: -bound}}}
	closing.Chunks[0].Closed = true
	for i := range leases {
		c := fmt.Sprintf("c%03d", i)
		closing.Leases = append(closing.Leases, broker.LeaseRecord{ID: fmt.Sprintf("l%03d", i), Version: 1, Key: key, Client: c, State: broker.LeaseActive, Cost: each})
		closing.Spend = append(closing.Spend, broker.SpendRecord{Client: c, Key: key, Day: day, NanoUSD: each, Calls: 1})
	}
	closing.Spend = append(closing.Spend, broker.SpendRecord{Client: "c000", Key: key, Day: day, NanoUSD: -1500})

	total := func(rev int64) int64 {
		var sum int64
		for k, v := range dump(t, ctx, cli, prefix+"spend/", rev) {
			var r broker.SpendRecord
			if err := json.Unmarshal([]byte(v), &r); err != nil {
				t.Fatalf("key %s: %v", k, err)
			}
			sum += r.NanoUSD
		}
		return sum
	}
	resp, err := cli.Get(ctx, prefix+"format")
	if err != nil {
		t.Fatal(err)
	}
	from := resp.Header.Revision
	before := total(from)
	commit(t, ctx, st, closing)
	if resp, err = cli.Get(ctx, prefix+"format"); err != nil {
		t.Fatal(err)
	}
	to := resp.Header.Revision
	if to-from < 3 {
		t.Fatalf("the close was written in %d transactions, want it split in at least 3", to-from)
	}
	for rev := from + 1; rev < to; rev++ {
		if got := total(rev); got < before {
			t.Errorf("after transaction %d of %d the spend is %d nano-USD, below the %d before the close", rev-from, to-from, got, before)
		}
	}
	if got, want := total(to), int64(leases*each+2000-1500); got != want {
		t.Errorf("spend after the close %d nano-USD, want %d (the leases' own)", got, want)
	}
	for _, r := range load(t, ctx, cli, prefix).Spend {
		if r.Client == "c000" && (r.NanoUSD != 1500 || r.Calls != 2) {
			t.Errorf("c000's spend %+v, want 1500 nano-USD over 2 calls", r)
		}
	}
}

// testSpendFailover: what a client was granted and charged under one
// leader's broker (its spend, and its day cap's tokens) is what the next
// leader's broker opens with, from the Store, as a failover does in
// cmd/quota-broker's cluster; and the new leader adds to it.
func testSpendFailover(t *testing.T, ctx context.Context, cli *clientv3.Client) {
	const prefix = "/spend-failover/"
	const model = "anthropic.claude-3-haiku-20240307-v1:0"
	k := broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: model}
	cfg := broker.Config{
		Caps: broker.Caps{Clients: map[string]broker.ClientCaps{
			"team": {All: broker.CapLimits{TPD: 1_000_000}, Money: broker.Money{USDPerDay: 100}}}},
		Prices: map[broker.PriceKey]broker.Price{{Region: k.Region, Model: model}: {
			Input: 0.00025, Output: 0.00125, Has: broker.RateInput | broker.RateOutput, Source: "test"}},
	}
	req := broker.AcquireRequest{ModelID: model, Region: k.Region, Client: "team", InputTokens: 1000, MaxOutputTokens: 1000}
	// serve grants and settles n calls of the team on b.
	serve := func(b *broker.Broker, n int) {
		t.Helper()
		for range n {
			d, err := b.Acquire(ctx, req)
			if err != nil || !d.Granted {
				t.Fatalf("acquire: %+v %v", d, err)
			}
			if _, err := b.Complete(ctx, d.Lease.ID, broker.OutcomeSuccess, broker.Usage{InputTokens: 1000, OutputTokens: 200}); err != nil {
				t.Fatal(err)
			}
		}
	}
	team := func(r broker.SpendReport) (broker.ClientSpend, int64) {
		t.Helper()
		var cs broker.ClientSpend
		for _, c := range r.Clients {
			if c.Client == "team" {
				cs = c
			}
		}
		if len(r.Caps) != 1 {
			t.Fatalf("caps in the report: %+v, want the team's", r.Caps)
		}
		return cs, r.Caps[0].DayTokens
	}

	stA, sessA := lead(t, ctx, cli, prefix)
	a, err := broker.Open(ctx, stA, sysclock.Clock{}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.SetSpecs(ctx, []broker.Spec{{Key: k, Quota: broker.Limits{RPM: 1000, TPM: 1_000_000}, Source: "test"}}); err != nil {
		t.Fatal(err)
	}
	serve(a, 3)
	spentA, dayA := team(a.Spend())
	if spentA.TodayUSD <= 0 || spentA.Calls != 3 || dayA <= 0 {
		t.Fatalf("the first leader's report: %+v, %d day tokens; want spend, 3 calls and day tokens", spentA, dayA)
	}
	// The leader is gone (its broker never closes: as at a crash); the
	// next one opens from what it committed.
	sessA.Close()
	stB, _ := lead(t, ctx, cli, prefix)
	b, err := broker.Open(ctx, stB, sysclock.Clock{}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	spentB, dayB := team(b.Spend())
	if spentB.TodayUSD != spentA.TodayUSD || spentB.MonthUSD != spentA.MonthUSD || spentB.Calls != 3 || dayB != dayA {
		t.Fatalf("the new leader opened with %+v, %d day tokens; the old one had %+v, %d", spentB, dayB, spentA, dayA)
	}
	serve(b, 1)
	spentB, dayB = team(b.Spend())
	if spentB.Calls != 4 || spentB.TodayUSD <= spentA.TodayUSD || dayB <= dayA {
		t.Fatalf("after one more call on the new leader: %+v, %d day tokens", spentB, dayB)
	}
	// And a third leader sees the four calls.
	snap := load(t, ctx, cli, prefix)
	var calls int64
	for _, r := range snap.Spend {
		if r.Client == "team" {
			calls += r.Calls
		}
	}
	if calls != 4 {
		t.Errorf("the store holds %d calls of the team, want 4: %+v", calls, snap.Spend)
	}
}

// flakyKV is a client's KV whose next Txns fail as told: after etcd
// applied them (the answer lost) or before they reach it.
type flakyKV struct {
	clientv3.KV
	mu   sync.Mutex
	next []flake
}

type flake int

const (
	answered flake = iota
	answerLost
	notSent
)

var errLost = errors.New("connection reset (test)")

func (k *flakyKV) fail(f ...flake) {
	k.mu.Lock()
	k.next = append(k.next, f...)
	k.mu.Unlock()
}

func (k *flakyKV) Txn(ctx context.Context) clientv3.Txn {
	k.mu.Lock()
	defer k.mu.Unlock()
	f := answered
	if len(k.next) > 0 {
		f, k.next = k.next[0], k.next[1:]
	}
	return &flakyTxn{Txn: k.KV.Txn(ctx), f: f}
}

type flakyTxn struct {
	clientv3.Txn
	f flake
}

func (t *flakyTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { t.Txn = t.Txn.If(cs...); return t }
func (t *flakyTxn) Then(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Then(ops...); return t }
func (t *flakyTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(ops...); return t }

func (t *flakyTxn) Commit() (*clientv3.TxnResponse, error) {
	switch t.f {
	case notSent:
		return nil, errLost
	case answerLost:
		if _, err := t.Txn.Commit(); err != nil {
			return nil, err
		}
		return nil, errLost
	}
	return t.Txn.Commit()
}

// testLostAnswer: a Commit whose transaction etcd applied but whose answer
// was lost succeeds (the store finds out), rather than failing into the
// broker's retry, which would subtract a settlement's correction twice; one
// that never reached etcd fails, and its retry applies it once.
func testLostAnswer(t *testing.T, ctx context.Context, eps string) {
	cli := client(t, eps)
	kv := &flakyKV{KV: cli.KV}
	cli.KV = kv
	const prefix = "/lost/"
	st, _ := lead(t, ctx, cli, prefix)
	if _, err := st.Load(ctx); err != nil {
		t.Fatal(err)
	}
	spend := func(nano int64) broker.Change {
		return broker.Change{Spend: []broker.SpendRecord{{Client: "c", Key: key, Day: 20000, NanoUSD: nano}},
			Usage: []broker.UsageRecord{{Key: key, Minute: 100, Tokens: nano / 10}}}
	}
	want := func(nano int64) {
		t.Helper()
		snap := load(t, ctx, cli, prefix)
		if len(snap.Spend) != 1 || snap.Spend[0].NanoUSD != nano || len(snap.Usage) != 1 || snap.Usage[0].Tokens != nano/10 {
			t.Fatalf("spend %+v and usage %+v, want %d nano-USD and %d tokens", snap.Spend, snap.Usage, nano, nano/10)
		}
	}
	commit(t, ctx, st, spend(1000))

	kv.fail(answerLost)
	if err := st.Commit(ctx, spend(-400)); err != nil {
		t.Fatalf("a commit applied with its answer lost: %v, want it found applied", err)
	}
	want(600)

	kv.fail(notSent)
	if err := st.Commit(ctx, spend(-100)); !errors.Is(err, errLost) {
		t.Fatalf("a commit that never reached etcd: %v, want its error", err)
	}
	commit(t, ctx, st, spend(-100)) // the broker's retry
	want(500)

	// The epoch's own write loses its answer too: the Commit fails, and
	// the next one reads the epoch again rather than taking itself for
	// deposed.
	kv.fail(notSent, answerLost)
	if err := st.Commit(ctx, spend(-50)); !errors.Is(err, errLost) {
		t.Fatalf("a commit whose outcome could not be found: %v, want its error", err)
	}
	commit(t, ctx, st, spend(-50))
	want(450)
}

// testShrinksTogether: a Commit's shrinking totals (here 100 settlements'
// corrections, after 100 lease records) are written in one transaction,
// so that a Commit that fails has applied all of them or none; and 200
// concurrent Commits, grouped past what one transaction holds of them,
// each add what they carry once.
func testShrinksTogether(t *testing.T, ctx context.Context, cli *clientv3.Client) {
	const prefix = "/shrinks/"
	st, _ := lead(t, ctx, cli, prefix)
	if _, err := st.Load(ctx); err != nil {
		t.Fatal(err)
	}
	rec := func(i int, nano int64) broker.SpendRecord {
		return broker.SpendRecord{Client: fmt.Sprintf("c%03d", i), Key: key, Day: 20000, NanoUSD: nano}
	}
	var grants, settles broker.Change
	for i := range 100 {
		grants.Spend = append(grants.Spend, rec(i, 1000))
		settles.Spend = append(settles.Spend, rec(i, -300))
		settles.Leases = append(settles.Leases, broker.LeaseRecord{ID: fmt.Sprintf("l%03d", i), Version: 2, Key: key, State: broker.LeaseCompleted})
	}
	commit(t, ctx, st, grants)
	commit(t, ctx, st, settles)
	resp, err := cli.Get(ctx, prefix+"spend/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	revs := map[int64]int{}
	for _, kv := range resp.Kvs {
		revs[kv.ModRevision]++
	}
	if len(resp.Kvs) != 100 || len(revs) != 1 {
		t.Errorf("the 100 corrections were written at revisions %v, want one", revs)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Go(func() {
			errs <- st.Commit(ctx, broker.Change{Spend: []broker.SpendRecord{rec(i, -100)}})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	spent := load(t, ctx, cli, prefix).Spend
	if len(spent) != 200 {
		t.Errorf("%d clients with spend, want 200", len(spent))
	}
	for _, r := range spent {
		var i int
		fmt.Sscanf(r.Client, "c%03d", &i)
		want := int64(-100)
		if i < 100 {
			want = 1000 - 300 - 100
		}
		if r.NanoUSD != want {
			t.Errorf("%s's spend %d, want %d", r.Client, r.NanoUSD, want)
		}
	}
}
