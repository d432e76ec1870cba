package bolt

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"go.etcd.io/bbolt"
)

var (
	keyA = broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: "anthropic.claude-sonnet-4-5-20250929-v1:0"}
	keyB = broker.Key{Region: "eu-west-1", Scope: broker.ScopeCrossRegion, Model: "amazon.nova-pro-v1:0"}
	// provKey is a Provisioned Throughput's budget: keyed by its ARN, its
	// spec names the model it serves.
	provKey = broker.Key{Region: "us-east-1", Scope: broker.ScopeProvisioned, Model: "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc123"}
	t0      = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
)

func openTest(tb testing.TB, path string, opts Options) *Store {
	tb.Helper()
	s, err := Open(path, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Error(err)
		}
	})
	return s
}

func newTest(tb testing.TB) (*Store, string) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "state.db")
	return openTest(tb, path, Options{}), path
}

func commit(tb testing.TB, s *Store, c broker.Change) {
	tb.Helper()
	if err := s.Commit(context.Background(), c); err != nil {
		tb.Fatal(err)
	}
}

func load(tb testing.TB, s *Store) broker.Snapshot {
	tb.Helper()
	snap, err := s.Load(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return snap
}

func lease(id string, version uint64) broker.LeaseRecord {
	return broker.LeaseRecord{
		ID: id, Version: version, Key: keyA, Client: "svc-" + id,
		Priority: broker.PriorityStandard, State: broker.LeaseCompleted, Outcome: broker.OutcomeSuccess,
		Reserved: 4096, Charged: 1234, Requests: 1, MaxOutput: 4096, Burndown: 5,
		Usage:     broker.Usage{InputTokens: 1000, OutputTokens: 46, CacheReadInputTokens: 7, CacheWriteInputTokens: 8},
		GrantedAt: t0, ExpiresAt: t0.Add(15 * time.Minute), EndedAt: t0.Add(3 * time.Second), Cost: 17_500,
	}
}

func ptr(v int64) *int64 { return &v }

func sorted(s broker.Snapshot) broker.Snapshot {
	slices.SortFunc(s.Specs, func(a, b broker.Spec) int { return cmp.Compare(a.Key.String(), b.Key.String()) })
	slices.SortFunc(s.Overrides, func(a, b broker.OverrideRecord) int { return cmp.Compare(a.Key.String(), b.Key.String()) })
	slices.SortFunc(s.Leases, func(a, b broker.LeaseRecord) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(s.Usage, func(a, b broker.UsageRecord) int {
		return cmp.Or(cmp.Compare(a.Minute, b.Minute), cmp.Compare(a.Key.String(), b.Key.String()))
	})
	slices.SortFunc(s.Adaptive, func(a, b broker.AdaptiveRecord) int { return cmp.Compare(a.Key.String(), b.Key.String()) })
	return s
}

func TestRoundTripAndReopen(t *testing.T) {
	t.Parallel()
	s, path := newTest(t)
	if snap := load(t, s); !reflect.DeepEqual(snap, broker.Snapshot{}) {
		t.Fatalf("new store: %+v", snap)
	}
	active := lease("l-active", 1)
	active.State, active.Outcome, active.EndedAt, active.Usage = broker.LeaseActive, broker.OutcomeUnknown, time.Time{}, broker.Usage{}
	want := broker.Snapshot{
		Specs: []broker.Spec{
			{Key: keyA, Quota: broker.Limits{RPM: 50, TPM: 2_000_000, TPD: 144_000_000, Concurrency: 10}, Source: "aws:servicequotas", SourceTime: t0, Burndown: 5, MaxOutputTokens: 8192,
				Quotas: []broker.QuotaRef{{Limit: "tpm", Code: "L-59759B4A", Name: "On-demand model inference tokens per minute for Anthropic Claude Sonnet 4.5", Applied: 2_000_000, Default: 200_000, Adjustable: true}}},
			{Key: keyB, Quota: broker.Limits{TPM: 1}},
			{Key: provKey, Quota: broker.Limits{TPM: 50_000}, Source: "budgets-file:b.json", Serves: "anthropic.claude-3-haiku-20240307-v1:0"},
		},
		Overrides: []broker.OverrideRecord{
			{Key: keyA, Override: &broker.Override{RPM: ptr(0), TPM: ptr(3_000_000), TPD: ptr(-1), Concurrency: ptr(math.MaxInt64), Reason: "raise pending, ticket 42", SetAt: t0}},
			{Key: keyB, Override: &broker.Override{TPM: ptr(7)}},
		},
		Leases: []broker.LeaseRecord{active, lease("l-done", 3)},
		Usage: []broker.UsageRecord{
			{Key: keyA, Minute: 29_000_000, Tokens: 4096, Requests: 1},
			{Key: keyB, Minute: 29_000_000, Tokens: -5, Requests: 0},
			{Key: keyA, Minute: 29_000_001, Tokens: math.MaxInt64, Requests: 2},
		},
		Adaptive: []broker.AdaptiveRecord{
			{Key: keyA, TokensWmax: 1.25e6, RequestsWmax: 80.5, LastDecrease: t0, Throttles: 3},
		},
		Chunks: []broker.ChunkRecord{
			{ID: 1 << 60, Key: keyA, Start: t0, End: t0.Add(time.Second), Requests: 40, Tokens: 1 << 40,
				LeasesEnd: t0.Add(5 * time.Minute), Secret: []byte("0123456789abcdef"), Closed: true},
		},
	}
	commit(t, s, broker.Change{Specs: want.Specs, Overrides: want.Overrides, Leases: want.Leases, Usage: want.Usage, Adaptive: want.Adaptive,
		Chunks: want.Chunks})
	want = sorted(want)
	if got := sorted(load(t, s)); !reflect.DeepEqual(got, want) {
		t.Fatalf("Load:\n got %+v\nwant %+v", got, want)
	}

	// A nil Override deletes; a Spec is replaced whole.
	spec := broker.Spec{Key: keyB, Quota: broker.Limits{RPM: 9}, Source: "operator"}
	commit(t, s, broker.Change{Overrides: []broker.OverrideRecord{{Key: keyB}}, Specs: []broker.Spec{spec}})
	for i := range want.Specs {
		if want.Specs[i].Key == keyB {
			want.Specs[i] = spec
		}
	}
	want.Overrides = slices.DeleteFunc(want.Overrides, func(o broker.OverrideRecord) bool { return o.Key == keyB })

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, path, Options{})
	if got := sorted(load(t, s)); !reflect.DeepEqual(got, sorted(want)) {
		t.Fatalf("after reopen:\n got %+v\nwant %+v", got, want)
	}
}

func TestLeaseVersion(t *testing.T) {
	t.Parallel()
	s, _ := newTest(t)
	check := func(step string, wantVersion uint64, wantClient string) {
		t.Helper()
		snap := load(t, s)
		if len(snap.Leases) != 1 || snap.Leases[0].Version != wantVersion || snap.Leases[0].Client != wantClient {
			t.Fatalf("%s: leases %+v, want version %d client %s", step, snap.Leases, wantVersion, wantClient)
		}
	}
	v := func(version uint64, client string) broker.LeaseRecord {
		r := lease("l1", version)
		r.Client = client
		return r
	}
	commit(t, s, broker.Change{Leases: []broker.LeaseRecord{v(2, "a")}})
	check("insert", 2, "a")
	commit(t, s, broker.Change{Leases: []broker.LeaseRecord{v(1, "older")}})
	check("older", 2, "a")
	commit(t, s, broker.Change{Leases: []broker.LeaseRecord{v(2, "equal")}})
	check("equal", 2, "equal")
	commit(t, s, broker.Change{Leases: []broker.LeaseRecord{v(3, "newer")}})
	check("newer", 3, "newer")
	commit(t, s, broker.Change{Leases: []broker.LeaseRecord{v(5, "five"), v(4, "four")}})
	check("two in one change", 5, "five")

	// Racing commits of every version leave the newest, whatever the order.
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if err := s.Commit(ctx, broker.Change{Leases: []broker.LeaseRecord{v(uint64(10+i), fmt.Sprint(10+i))}}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	check("racing", 59, "59")
}

func TestDeleteLeases(t *testing.T) {
	t.Parallel()
	s, _ := newTest(t)
	commit(t, s, broker.Change{Leases: []broker.LeaseRecord{lease("a", 1), lease("b", 1), lease("c", 1)}})
	commit(t, s, broker.Change{DeleteLeases: []string{"a", "missing", ""}, Leases: []broker.LeaseRecord{lease("c", 2), lease("d", 1)}})
	commit(t, s, broker.Change{Leases: []broker.LeaseRecord{lease("d", 2)}, DeleteLeases: []string{"d"}})
	var ids []string
	for _, l := range load(t, s).Leases {
		ids = append(ids, fmt.Sprint(l.ID, "@", l.Version))
	}
	if want := []string{"b@1", "c@2"}; !slices.Equal(ids, want) {
		t.Fatalf("leases %v, want %v", ids, want)
	}
}

func TestUsageDeltas(t *testing.T) {
	t.Parallel()
	s, _ := newTest(t)
	commit(t, s, broker.Change{Usage: []broker.UsageRecord{{Key: keyA, Minute: 100, Tokens: 10, Requests: 1}, {Key: keyA, Minute: 100, Tokens: 5, Requests: 1}}})
	commit(t, s, broker.Change{Usage: []broker.UsageRecord{{Key: keyA, Minute: 100, Tokens: -3, Requests: -1}, {Key: keyB, Minute: 100, Tokens: 1}}})
	want := []broker.UsageRecord{{Key: keyA, Minute: 100, Tokens: 12, Requests: 1}, {Key: keyB, Minute: 100, Tokens: 1}}
	if got := sorted(load(t, s)).Usage; !reflect.DeepEqual(got, sorted(broker.Snapshot{Usage: want}).Usage) {
		t.Fatalf("usage %+v, want %+v", got, want)
	}

	// 50 concurrent committers, half with a cancellable context (the
	// goroutine path), half without: the totals are exact.
	const workers, per = 50, 20
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			ctx := context.Background()
			if w%2 == 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer cancel()
			}
			for i := range per {
				c := broker.Change{
					Leases: []broker.LeaseRecord{lease(fmt.Sprintf("w%d-%d", w, i), 1)},
					Usage:  []broker.UsageRecord{{Key: keyB, Minute: 200, Tokens: int64(w*per + i), Requests: 1}},
				}
				if err := s.Commit(ctx, c); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	n := int64(workers * per)
	for _, u := range load(t, s).Usage {
		if u.Minute == 200 && (u.Tokens != n*(n-1)/2 || u.Requests != n) {
			t.Fatalf("concurrent usage %+v, want tokens %d requests %d", u, n*(n-1)/2, n)
		}
	}
}

// TestBatchRetry makes groups roll back: commits whose usage total would
// overflow fail inside the shared transaction, so the group is re-run (the
// commit loop re-runs every member alone; bbolt's Batch re-runs the rest of
// the group, then the failed ones alone). The other commits' deltas must
// count once.
func TestBatchRetry(t *testing.T) {
	t.Parallel()
	t.Run("loop", func(t *testing.T) { testBatchRetry(t, false) })
	t.Run("batch", func(t *testing.T) { testBatchRetry(t, true) })
}

func testBatchRetry(t *testing.T, batch bool) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openTest(t, path, Options{NoSync: true})
	commitOne := s.Commit
	if batch {
		commitOne = commitVia(s, s.db.Batch)
		s.db.MaxBatchDelay = 5 * time.Millisecond
	}
	commit(t, s, broker.Change{Usage: []broker.UsageRecord{{Key: keyA, Minute: 1, Tokens: 1}}})
	const good, bad = 50, 5
	var wg sync.WaitGroup
	for i := range good + bad {
		wg.Go(func() {
			c := broker.Change{Usage: []broker.UsageRecord{{Key: keyB, Minute: 1, Tokens: 1, Requests: 1}}}
			if i >= good {
				c.Usage = append(c.Usage, broker.UsageRecord{Key: keyA, Minute: 1, Tokens: math.MaxInt64})
			}
			err := commitOne(context.Background(), c)
			if (err != nil) != (i >= good) {
				t.Errorf("commit %d: %v", i, err)
			}
			if err != nil && !strings.Contains(err.Error(), "overflows") {
				t.Errorf("commit %d: %v, want an overflow", i, err)
			}
		})
	}
	wg.Wait()
	want := []broker.UsageRecord{{Key: keyA, Minute: 1, Tokens: 1}, {Key: keyB, Minute: 1, Tokens: good, Requests: good}}
	if got := sorted(load(t, s)).Usage; !reflect.DeepEqual(got, sorted(broker.Snapshot{Usage: want}).Usage) {
		t.Fatalf("usage %+v, want %+v", got, want)
	}
}

func TestDeleteUsageBefore(t *testing.T) {
	t.Parallel()
	s, _ := newTest(t)
	var usage []broker.UsageRecord
	for _, m := range []int64{-5, 0, 10, 11, 12, 1 << 40} {
		usage = append(usage, broker.UsageRecord{Key: keyA, Minute: m, Tokens: 1}, broker.UsageRecord{Key: keyB, Minute: m, Tokens: 2})
	}
	commit(t, s, broker.Change{Usage: usage})
	// Usage written in the same Change as the cut-off is cut too.
	commit(t, s, broker.Change{DeleteUsageBefore: 12, Usage: []broker.UsageRecord{{Key: keyA, Minute: 11, Tokens: 1}, {Key: keyA, Minute: 12, Tokens: 1}}})
	var got []string
	for _, u := range sorted(load(t, s)).Usage {
		got = append(got, fmt.Sprint(u.Minute, u.Key.Region, u.Tokens))
	}
	want := []string{"12eu-west-12", "12us-east-12", "1099511627776eu-west-12", "1099511627776us-east-11"}
	if !slices.Equal(got, want) {
		t.Fatalf("usage %v, want %v", got, want)
	}
}

// TestCommitCancelled cancels Commits at random moments: each either
// returned nil and is wholly on disk, or returned an error and left no
// trace.
func TestCommitCancelled(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	s := openTest(t, path, Options{})
	const n = 200
	ok := make([]bool, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			time.AfterFunc(time.Duration(rand.IntN(4000))*time.Microsecond, cancel)
			c := broker.Change{
				Leases: []broker.LeaseRecord{lease(fmt.Sprint(i), 1)},
				Usage:  []broker.UsageRecord{{Key: keyA, Minute: 7, Tokens: 1, Requests: 1}},
			}
			err := s.Commit(ctx, c)
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("commit %d: %v", i, err)
			}
			ok[i] = err == nil
		})
	}
	wg.Wait()
	snap := load(t, s)
	stored := make(map[string]bool)
	for _, l := range snap.Leases {
		stored[l.ID] = true
	}
	var succeeded int64
	for i, o := range ok {
		if o {
			succeeded++
		}
		if o != stored[fmt.Sprint(i)] {
			t.Errorf("lease %d: commit succeeded %v, stored %v", i, o, stored[fmt.Sprint(i)])
		}
	}
	var tokens int64
	for _, u := range snap.Usage {
		tokens += u.Tokens
	}
	if tokens != succeeded {
		t.Errorf("usage %d tokens, want %d (one per successful commit)", tokens, succeeded)
	}
	t.Logf("%d of %d commits succeeded", succeeded, n)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Commit(ctx, broker.Change{Leases: []broker.LeaseRecord{lease("late", 1)}}); !errors.Is(err, context.Canceled) {
		t.Errorf("commit with a cancelled context: %v", err)
	}
}

func TestSecondOpenFailsFast(t *testing.T) {
	t.Parallel()
	_, path := newTest(t)
	start := time.Now()
	s2, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	if err == nil {
		s2.Close()
		t.Fatal("second Open succeeded")
	}
	if !errors.Is(err, errLocked) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "another") {
		t.Fatalf("second Open: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("second Open took %v", d)
	}
	t.Log(err)
}

func TestClosed(t *testing.T) {
	t.Parallel()
	s, path := newTest(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(context.Background(), broker.Change{DeleteUsageBefore: 1}); !errors.Is(err, errClosed) {
		t.Errorf("Commit after Close: %v", err)
	}
	if _, err := s.Load(context.Background()); !errors.Is(err, errClosed) {
		t.Errorf("Load after Close: %v", err)
	}
	// Closed: another Store can have the file.
	openTest(t, path, Options{})
}

func TestOptions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, o := range []Options{{LockTimeout: -1}, {MaxBatchSize: -1}} {
		if _, err := Open(filepath.Join(dir, "x.db"), o); err == nil || !strings.Contains(err.Error(), "negative") {
			t.Errorf("Open with %+v: %v", o, err)
		}
	}
}

func TestUnwritablePath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	paths := []string{filepath.Join(file, "state.db"), filepath.Join(dir, "missing", "state.db"), dir}
	if os.Geteuid() != 0 { // root ignores permissions
		ro := filepath.Join(dir, "ro")
		if err := os.Mkdir(ro, 0o500); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, filepath.Join(ro, "state.db"))
	}
	for _, p := range paths {
		s, err := Open(p, Options{})
		if err == nil {
			s.Close()
			t.Errorf("Open(%s) succeeded", p)
			continue
		}
		if !strings.Contains(err.Error(), "open store "+p+": ") {
			t.Errorf("Open(%s): %v", p, err)
		}
		t.Log(err)
	}
}

// fill writes enough leases to spread them over many pages.
func fill(tb testing.TB, path string) {
	tb.Helper()
	s, err := Open(path, Options{})
	if err != nil {
		tb.Fatal(err)
	}
	var c broker.Change
	for i := range 2000 {
		c.Leases = append(c.Leases, lease(fmt.Sprintf("lease-%04d", i), 1))
		c.Usage = append(c.Usage, broker.UsageRecord{Key: keyA, Minute: int64(i), Tokens: 1})
	}
	commit(tb, s, c)
	if err := s.Close(); err != nil {
		tb.Fatal(err)
	}
}

// openAndLoad returns the first error of Open and Load.
func openAndLoad(path string) error {
	s, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	if err != nil {
		return err
	}
	defer s.Close()
	_, err = s.Load(context.Background())
	return err
}

// refusedOpen is openAndLoad of a file that must be refused, checking that
// the refusal wrote nothing: a start that fails must leave the damaged
// file, both its meta pages included, as it was for a recovery.
func refusedOpen(t *testing.T, path string) error {
	t.Helper()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	err = openAndLoad(path)
	if err == nil {
		t.Fatalf("%s: opened and loaded", path)
	}
	if after, rerr := os.ReadFile(path); rerr != nil || !bytes.Equal(after, before) {
		t.Errorf("%s: the refused open changed the file (%v)", path, rerr)
	}
	return err
}

func wantCorrupt(t *testing.T, path string, err error, parts ...string) {
	t.Helper()
	var ce *corruptError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v, want a corruption error", err)
	}
	for _, p := range append([]string{path, "backup", "move it aside"}, parts...) {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
	t.Log(err)
}

func TestCorruptRecord(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	fill(t, path)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Damage one byte of one lease's client name: bbolt cannot see it,
	// the record's checksum can.
	i := bytes.Index(data, []byte("svc-lease-1234"))
	if i < 0 {
		t.Fatal("lease not found in the file")
	}
	data[i+4] = 'X'
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	wantCorrupt(t, path, refusedOpen(t, path), "bucket leases", `"lease-1234"`, "checksum")

	// A damaged page header, in a page of leases that Open does not read.
	page := bytes.Clone(data)
	p := bytes.Index(page, []byte("svc-lease-0500")) / 4096 * 4096
	for i := p; i < p+16; i++ {
		page[i] = 0xee
	}
	pagePath := path + ".page"
	if err := os.WriteFile(pagePath, page, 0o600); err != nil {
		t.Fatal(err)
	}
	wantCorrupt(t, pagePath, refusedOpen(t, pagePath))

	// Commit refuses to build on the damaged record too.
	s := openTest(t, path, Options{})
	err = s.Commit(context.Background(), broker.Change{Leases: []broker.LeaseRecord{lease("lease-1234", 2)}})
	if err == nil || !strings.Contains(err.Error(), "lease-1234") {
		t.Errorf("commit over a damaged lease: %v", err)
	}
}

func TestCorruptFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		name   string
		damage func([]byte) []byte
	}{
		{"truncated to half", func(b []byte) []byte { return b[:len(b)/2] }},
		{"last quarter cut", func(b []byte) []byte { return b[:len(b)*3/4/4096*4096] }},
		{"truncated to a page", func(b []byte) []byte { return b[:4096] }},
		{"meta pages zeroed", func(b []byte) []byte { clear(b[:2*4096]); return b }},
		{"garbage", func(b []byte) []byte {
			r := rand.New(rand.NewPCG(1, 2))
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			return b
		}},
		{"data pages overwritten", func(b []byte) []byte {
			for i := 2 * 4096; i < len(b); i++ {
				b[i] = 0xa5
			}
			return b
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".db")
			fill(t, path)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			damaged := tc.damage(data)
			if err := os.WriteFile(path, damaged, 0o600); err != nil {
				t.Fatal(err)
			}
			wantCorrupt(t, path, refusedOpen(t, path))
			// Never repaired or wiped.
			if after, err := os.ReadFile(path); err != nil || !bytes.Equal(after, damaged) {
				t.Errorf("file changed (%v)", err)
			}

		})
	}
}

func TestSchema(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, fn func(*bbolt.Tx) error) string {
		path := filepath.Join(dir, name)
		db, err := bbolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Update(fn); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		return path
	}
	newer := write("newer.db", func(tx *bbolt.Tx) error {
		b, _ := tx.CreateBucket(bucketMeta)
		return b.Put(keySchema, []byte{99})
	})
	if _, err := Open(newer, Options{}); !errors.Is(err, errSchema) || !strings.Contains(err.Error(), "99") || !strings.Contains(err.Error(), newer) {
		t.Errorf("newer schema: %v", err)
	}
	foreign := write("foreign.db", func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucket([]byte("widgets"))
		return err
	})
	if _, err := Open(foreign, Options{}); !errors.Is(err, errSchema) || !strings.Contains(err.Error(), "widgets") {
		t.Errorf("foreign file: %v", err)
	}
	// A new file gets the current version.
	s, path := newTest(t)
	s.Close()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keySchema); !bytes.Equal(v, []byte{schemaVersion}) {
			t.Errorf("schema %x, want %d", v, schemaVersion)
		}
		return nil
	})
}

func TestCommitInvalid(t *testing.T) {
	t.Parallel()
	s, _ := newTest(t)
	for _, c := range []broker.Change{
		{Leases: []broker.LeaseRecord{{Version: 1}}},
		{Leases: []broker.LeaseRecord{{ID: strings.Repeat("x", bbolt.MaxKeySize+1)}}},
		{Leases: []broker.LeaseRecord{{ID: "y", GrantedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}}},
	} {
		if err := s.Commit(context.Background(), c); err == nil {
			t.Errorf("Commit(%.80v) succeeded", c)
		}
	}
	if snap := load(t, s); len(snap.Leases) != 0 {
		t.Errorf("leases %v", snap.Leases)
	}
}

func readStats(tb testing.TB, s *Store, from, to int64, perClient bool) []broker.StatsRecord {
	tb.Helper()
	var out []broker.StatsRecord
	if err := s.ReadStats(context.Background(), from, to, perClient, func(r *broker.StatsRecord) error {
		out = append(out, *r)
		return nil
	}); err != nil {
		tb.Fatal(err)
	}
	return out
}

// TestStatsHistory checks that history deltas add up per (minute, budget,
// client), gauges keep the latest value, reads are by minute range in time
// order, retention deletes by minute, and all of it survives a reopen.
func TestStatsHistory(t *testing.T) {
	s, path := newTest(t)
	rec := func(m int64, k broker.Key, client string, granted, tpm int64, out ...int64) broker.StatsRecord {
		r := broker.StatsRecord{Key: k, Minute: m, Client: client, Stats: broker.Stats{Granted: granted, WindowTokens: 10 * granted, LimitTPM: tpm}}
		for _, v := range out {
			r.ObserveOutput(v)
		}
		return r
	}
	commit(t, s, broker.Change{Stats: []broker.StatsRecord{rec(100, keyA, "a", 1, 500, 7), rec(100, keyB, "a", 2, 0), rec(101, keyA, "b", 3, 0)}})
	commit(t, s, broker.Change{Stats: []broker.StatsRecord{rec(100, keyA, "a", 4, 400, 9000), rec(102, keyA, "a", 5, 0)}})
	got := readStats(t, s, 100, 102, true)
	if len(got) != 3 {
		t.Fatalf("minutes 100..101: %d records; want 3: %+v", len(got), got)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Minute < got[i-1].Minute {
			t.Fatalf("records out of minute order: %+v", got)
		}
	}
	var a100 *broker.StatsRecord
	for i := range got {
		if got[i].Minute == 100 && got[i].Key == keyA {
			a100 = &got[i]
		}
	}
	if a100 == nil || a100.Client != "a" || a100.Granted != 5 || a100.WindowTokens != 50 || a100.LimitTPM != 400 || a100.OutputHist.Count() != 2 {
		t.Fatalf("minute 100 keyA: %+v; want 1+4 grants, 50 tokens, TPM gauge 400 (the latest), 2 outputs", a100)
	}
	// The per-budget view sums clients: keyA minute 101 has client b only,
	// and minute 100 keyA has a's 5.
	totals := readStats(t, s, 0, 1<<40, false)
	if len(totals) != 4 {
		t.Fatalf("per-budget records %+v; want 4 (budget x minute)", totals)
	}
	for _, r := range totals {
		if r.Client != "" {
			t.Fatalf("per-budget record with a client: %+v", r)
		}
		if r.Minute == 100 && r.Key == keyA && r.Granted != 5 {
			t.Fatalf("per-budget minute 100 keyA: %+v", r)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, path, Options{})
	if n := len(readStats(t, s, 0, 1<<40, true)); n != 4 {
		t.Fatalf("after reopen: %d records; want 4", n)
	}
	commit(t, s, broker.Change{DeleteStatsBefore: 101, DeleteClientStatsBefore: 102})
	left := readStats(t, s, 0, 1<<40, false)
	if len(left) != 2 || left[0].Minute != 101 || left[1].Minute != 102 {
		t.Fatalf("per-budget after deleting before 101: %+v", left)
	}
	if left := readStats(t, s, 0, 1<<40, true); len(left) != 1 || left[0].Minute != 102 {
		t.Fatalf("per-client after deleting before 102: %+v", left)
	}
	// History is not part of the snapshot the broker rebuilds from.
	if snap := load(t, s); len(snap.Usage) != 0 {
		t.Fatalf("history leaked into Load: %+v", snap.Usage)
	}
}

// TestCommitEveryField commits, into a store holding a little of
// everything, Changes of one field each, taken from a Change with every
// field set: each must change what the file holds. A field that Commit
// ignores would be acknowledged and never written; the test fails while
// full leaves any field of broker.Change zero, so a new field is covered
// as soon as it exists.
func TestCommitEveryField(t *testing.T) {
	t.Parallel()
	tpm := int64(7)
	full := broker.Change{
		Specs:                   []broker.Spec{{Key: keyB, Quota: broker.Limits{TPM: 100}}},
		Overrides:               []broker.OverrideRecord{{Key: keyB, Override: &broker.Override{TPM: &tpm, SetAt: t0}}},
		Leases:                  []broker.LeaseRecord{lease("new", 1)},
		DeleteLeases:            []string{"old"},
		Usage:                   []broker.UsageRecord{{Key: keyB, Minute: 5, Tokens: 1, Requests: 1}},
		DeleteUsageBefore:       2,
		Adaptive:                []broker.AdaptiveRecord{{Key: keyB, TokensWmax: 1}},
		Stats:                   []broker.StatsRecord{{Key: keyB, Minute: 5, Client: "c", Stats: broker.Stats{Granted: 1}}},
		DeleteStatsBefore:       2,
		DeleteClientStatsBefore: 2,
		Chunks:                  []broker.ChunkRecord{{ID: 9, Key: keyB, Start: t0, End: t0.Add(time.Second), Requests: 4, Tokens: 40, LeasesEnd: t0.Add(time.Minute), Secret: []byte("s")}},
		DeleteChunks:            []uint64{8},
		Spend:                   []broker.SpendRecord{{Client: "c", Key: keyB, Day: 20000, NanoUSD: 5, Calls: 1}},
		ClientUsage:             []broker.ClientUsageRecord{{Client: "c", Key: keyB, Minute: 5, Tokens: 1, Requests: 1}, {Client: "c", Key: keyB, Route: "r", Minute: 5, Tokens: 2, Requests: 1}},
		DeleteSpendBefore:       20000,
		DeleteClientUsageBefore: 2,
	}
	base := broker.Change{
		Chunks: []broker.ChunkRecord{{ID: 8, Key: keyA, Start: t0, End: t0.Add(time.Second), Requests: 4, Tokens: 40, LeasesEnd: t0.Add(time.Minute)}},
		Leases: []broker.LeaseRecord{lease("old", 1)},
		Usage:  []broker.UsageRecord{{Key: keyA, Minute: 1, Tokens: 1}},
		Stats:  []broker.StatsRecord{{Key: keyA, Minute: 1, Client: "c", Stats: broker.Stats{Granted: 1}}},
		// Before the cut-offs of full, so that they delete something.
		Spend:       []broker.SpendRecord{{Client: "c", Key: keyA, Day: 19000, NanoUSD: 5, Calls: 1}},
		ClientUsage: []broker.ClientUsageRecord{{Client: "c", Key: keyA, Minute: 1, Tokens: 1}},
	}
	v := reflect.ValueOf(full)
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if v.Field(i).IsZero() {
			t.Errorf("full leaves %s zero: set it, so that this test covers it", name)
			continue
		}
		s, _ := newTest(t)
		commit(t, s, base)
		before := dump(t, s)
		var one broker.Change
		reflect.ValueOf(&one).Elem().Field(i).Set(v.Field(i))
		commit(t, s, one)
		if after := dump(t, s); maps.Equal(before, after) {
			t.Errorf("a Change of %s alone left the file as it was", name)
		}
	}
}

// dump returns every record of every bucket, by bucket and key.
func dump(tb testing.TB, s *Store) map[string]string {
	tb.Helper()
	out := map[string]string{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bbolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				out[string(name)+"/"+string(k)] = string(v)
				return nil
			})
		})
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// TestEmptyFile: a zero-byte file is refused, not made a new store, and
// left as it is.
func TestEmptyFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	wantCorrupt(t, path, refusedOpen(t, path), "empty (0 bytes)")
}

// writeOldLayout writes a store as the first schema-1 build did: the meta
// bucket and the four data buckets, none of the buckets added since
// (adaptive, stats, stats-total), and lease l.
func writeOldLayout(tb testing.TB, path string, l broker.LeaseRecord, buckets ...[]byte) {
	tb.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		tb.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(keySchema, []byte{1}); err != nil {
			return err
		}
		for _, name := range buckets {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		if b := tx.Bucket(bucketLeases); b != nil {
			return b.Put([]byte(l.ID), encodeLease(&l))
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := db.Close(); err != nil {
		tb.Fatal(err)
	}
}

// TestOldLayout opens a file from before the added buckets: opening and
// loading it writes nothing (so a damaged record in it is refused with the
// file untouched), and the first Commit that needs an added bucket creates
// it. A file that lacks one of schema 1's own buckets is damaged.
func TestOldLayout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l := lease("old-1", 1)
	path := filepath.Join(dir, "old.db")
	writeOldLayout(t, path, l, schemaBuckets...)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := openTest(t, path, Options{})
	if got := load(t, s).Leases; len(got) != 1 || !reflect.DeepEqual(got[0], l) {
		t.Fatalf("leases %+v, want %+v", got, l)
	}
	if got := readStats(t, s, 0, 100, true); len(got) != 0 {
		t.Fatalf("history %+v in a file without its buckets", got)
	}
	if after, err := os.ReadFile(path); err != nil || !bytes.Equal(after, before) {
		t.Fatalf("opening and loading changed the file (%v)", err)
	}

	// Cut-offs on buckets the file lacks delete nothing; then writes
	// create them.
	commit(t, s, broker.Change{DeleteStatsBefore: 9, DeleteClientStatsBefore: 9})
	stats := broker.StatsRecord{Key: keyA, Minute: 10, Client: "c", Stats: broker.Stats{Granted: 2}}
	adaptive := broker.AdaptiveRecord{Key: keyA, TokensWmax: 5e5, LastDecrease: t0, Throttles: 1}
	commit(t, s, broker.Change{Adaptive: []broker.AdaptiveRecord{adaptive}, Stats: []broker.StatsRecord{stats}})
	if got := load(t, s).Adaptive; !reflect.DeepEqual(got, []broker.AdaptiveRecord{adaptive}) {
		t.Errorf("adaptive %+v, want %+v", got, adaptive)
	}
	if got := readStats(t, s, 0, 100, true); len(got) != 1 || got[0].Granted != 2 {
		t.Errorf("history %+v, want one record of 2 grants", got)
	}

	damaged := filepath.Join(dir, "old-damaged.db")
	writeOldLayout(t, damaged, l, schemaBuckets...)
	data, err := os.ReadFile(damaged)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(data, []byte("svc-old-1"))
	if i < 0 {
		t.Fatal("lease not found in the file")
	}
	data[i+4] = 'X'
	if err := os.WriteFile(damaged, data, 0o600); err != nil {
		t.Fatal(err)
	}
	wantCorrupt(t, damaged, refusedOpen(t, damaged), "bucket leases", "checksum")

	missing := filepath.Join(dir, "no-leases.db")
	writeOldLayout(t, missing, l, bucketSpecs, bucketOverrides, bucketUsage)
	wantCorrupt(t, missing, refusedOpen(t, missing), "bucket leases", "missing")
}

// TestCreateIsWhole: a new store appears whole under its name (built under
// a temporary one and linked), so no crash while creating it can leave the
// empty file that TestEmptyFile refuses; the temporary is gone afterwards,
// and one left by a crashed process with the same pid is replaced.
func TestCreateIsWhole(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	stale := fmt.Sprintf("%s.creating-%d", path, os.Getpid())
	if err := os.WriteFile(stale, []byte("half a file from a crash"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "state.db" {
		t.Fatalf("directory holds %v, want only state.db", entries)
	}
	// The file is a complete store on its own: it opens again, unchanged.
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	_ = s.Close()
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("reopening a new store rewrote it")
	}
}

// TestSpendRoundTrip: spend and client usage are totals of the deltas
// committed, read back by Load, and the cut-offs drop what is before them.
func TestSpendRoundTrip(t *testing.T) {
	t.Parallel()
	s, _ := newTest(t)
	commit(t, s, broker.Change{
		Spend: []broker.SpendRecord{{Client: "a", Key: keyA, Day: 20000, NanoUSD: 900, Calls: 1, Unpriced: 0}, {Client: "a", Key: keyA, Day: 19990, NanoUSD: 1, Calls: 1}},
		ClientUsage: []broker.ClientUsageRecord{{Client: "a", Key: keyA, Minute: 100, Tokens: 50, Requests: 1}, {Client: "a", Key: keyA, Minute: 10, Tokens: 1},
			{Client: "a", Key: keyA, Route: "r", Minute: 100, Tokens: 7, Requests: 1}, {Client: "a", Key: keyA, Route: "r", Minute: 10, Tokens: 1}},
	})
	commit(t, s, broker.Change{
		Spend: []broker.SpendRecord{{Client: "a", Key: keyA, Day: 20000, NanoUSD: -400}},
		// The route's usage is a total of its own, beside the direct calls'.
		ClientUsage:             []broker.ClientUsageRecord{{Client: "a", Key: keyA, Minute: 100, Tokens: -20}, {Client: "a", Key: keyA, Route: "r", Minute: 100, Tokens: -2}},
		DeleteSpendBefore:       19995,
		DeleteClientUsageBefore: 50,
	})
	snap, err := s.Load(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	wantSpend := []broker.SpendRecord{{Client: "a", Key: keyA, Day: 20000, NanoUSD: 500, Calls: 1}}
	wantUsage := []broker.ClientUsageRecord{{Client: "a", Key: keyA, Minute: 100, Tokens: 30, Requests: 1}, {Client: "a", Key: keyA, Route: "r", Minute: 100, Tokens: 5, Requests: 1}}
	if !reflect.DeepEqual(snap.Spend, wantSpend) || !reflect.DeepEqual(snap.ClientUsage, wantUsage) {
		t.Errorf("loaded spend %+v and client usage %+v, want %+v and %+v", snap.Spend, snap.ClientUsage, wantSpend, wantUsage)
	}
}
