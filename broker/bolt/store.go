package bolt

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

var _ broker.Store = (*Store)(nil)

// schemaVersion is the layout of buckets and keys this build reads and
// writes. Open refuses a file with a newer one rather than guess.
const schemaVersion = 1

var (
	bucketMeta      = []byte("meta")
	bucketSpecs     = []byte("specs")
	bucketOverrides = []byte("overrides")
	bucketLeases    = []byte("leases")
	bucketUsage     = []byte("usage")
	// bucketAdaptive arrived after schema 1 was first written; it is
	// additive, so Open creates it in older files instead of migrating.
	bucketAdaptive = []byte("adaptive")
	// bucketStats holds usage history per client (broker.StatsRecord) and
	// bucketStatsTotal the same summed per budget (client ""). ReadStats
	// reads them, not Load; like "adaptive", they are created when missing,
	// so schema 1 files gain them without a migration.
	bucketStats      = []byte("stats")
	bucketStatsTotal = []byte("stats-total")
	keySchema        = []byte("schema")
)

// dataBuckets are the buckets Load reads, in Snapshot order.
var dataBuckets = [][]byte{bucketSpecs, bucketOverrides, bucketLeases, bucketUsage, bucketAdaptive}

// Defaults; see doc.go for the measurements behind group commit.
const (
	DefaultLockTimeout  = time.Second
	DefaultMaxBatchSize = 1000
)

// Options tune a Store. The zero value works.
type Options struct {
	// LockTimeout is how long Open waits for the file lock that another
	// process using the file holds. Default DefaultLockTimeout.
	LockTimeout time.Duration
	// MaxBatchSize caps how many queued Commits share one transaction.
	// Default DefaultMaxBatchSize.
	MaxBatchSize int
	// NoSync skips fsync. A crash can then lose commits the broker
	// reported durable, or damage the file: for tests and benchmarks only.
	NoSync bool
}

func (o *Options) setDefaults() error {
	switch {
	case o.LockTimeout < 0:
		return fmt.Errorf("options: LockTimeout %v is negative", o.LockTimeout)
	case o.MaxBatchSize < 0:
		return fmt.Errorf("options: MaxBatchSize %d is negative", o.MaxBatchSize)
	}
	if o.LockTimeout == 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.MaxBatchSize == 0 {
		o.MaxBatchSize = DefaultMaxBatchSize
	}
	return nil
}

// Store is a broker.Store in one bbolt file. It is safe for concurrent use.
type Store struct {
	path string
	db   *bbolt.DB

	// mu guards closed. Load and Commit hold it shared while they use db
	// (the goroutine of an abandoned Commit until its group is done), so
	// Close, which holds it exclusively, waits for them.
	mu     sync.RWMutex
	closed bool

	// mode is how Commits become transactions: grouped by the commit loop
	// (production), or, for the benchmarks' comparison, one transaction
	// each (modeSolo) or bbolt's DB.Batch (modeBatch).
	mode     commitMode
	maxGroup int
	queue    chan *groupCall // to the commit loop
	loopDone chan struct{}   // closed when the commit loop has exited
}

type commitMode int

const (
	modeGroup commitMode = iota
	modeSolo
	modeBatch
)

// groupCall is one Commit waiting in the commit loop's queue.
type groupCall struct {
	fn   func(*bbolt.Tx) error
	done chan error // buffered: the loop never blocks on it
}

var (
	errLocked = errors.New("locked by another process")
	errClosed = errors.New("store is closed")
	errSchema = errors.New("unsupported schema")
)

// recovery is appended to every corruption error: the operator's options,
// since the store never repairs or wipes a file itself.
const recovery = "restore the file from a backup, or move it aside to start with an empty store " +
	"(the broker then forgets outstanding leases and recent usage, so limits may be overrun until a day has passed); " +
	"`bbolt check FILE` (go.etcd.io/bbolt/cmd/bbolt) gives details"

// corruptError says that the file is damaged, where, and what to do.
type corruptError struct {
	path  string
	where string
	err   error
}

func (e *corruptError) Error() string {
	return fmt.Sprintf("store %s is corrupt: %s: %v; %s", e.path, e.where, e.err, recovery)
}

func (e *corruptError) Unwrap() error { return e.err }

// Open opens the store at path, creating the file if it does not exist.
// It fails if another process has the file open, if the file is not a
// store this build can read, or if it cannot be written; the error names
// the path and the cause an operator can act on (permissions, a missing
// directory, a full disk).
func Open(path string, opts Options) (*Store, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, fs.ErrNotExist)
	db, err := openDB(path, opts)
	if err != nil {
		return nil, removeNew(path, created, err)
	}
	db.MaxBatchSize = opts.MaxBatchSize
	s := &Store{path: path, db: db, maxGroup: opts.MaxBatchSize,
		queue: make(chan *groupCall, opts.MaxBatchSize), loopDone: make(chan struct{})}
	if err := s.init(); err != nil {
		_ = db.Close()
		return nil, removeNew(path, created, err)
	}
	go s.commitLoop()
	return s, nil
}

func openDB(path string, opts Options) (db *bbolt.DB, err error) {
	// bbolt panics on some damaged pages while opening (a bad freelist
	// page), and a truncated file can fault when mapped: turn both into
	// an error rather than a crash. The *DB is lost with the panic, and
	// its mapping and file lock with it until the process exits, which
	// it is expected to do with a file it cannot read.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			db, err = nil, &corruptError{path, "opening", fmt.Errorf("%v", p)}
		}
	}()
	db, err = bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout: opts.LockTimeout,
		NoSync:  opts.NoSync,
		// The hashmap freelist stays fast as usage history churns pages.
		FreelistType: bbolt.FreelistMapType,
	})
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("open store %s: %w (waited %v): is another broker running with this file?", path, errLocked, opts.LockTimeout)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch),
		bytes.Contains([]byte(err.Error()), []byte("file size too small")):
		return nil, &corruptError{path, "not a readable bbolt file", err}
	}
	return nil, openError(path, err)
}

// removeNew removes the file Open created before it failed, typically
// half-written for want of space, so that the next start does not take it
// for a corrupt store. A file that existed, or that another broker holds
// (errLocked: it may have created it meanwhile), is never touched.
func removeNew(path string, created bool, err error) error {
	if created && !errors.Is(err, errLocked) {
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return fmt.Errorf("%w (and the partial file could not be removed: %v)", err, rerr)
		}
	}
	return err
}

// openError explains an error opening path for writing by its cause.
func openError(path string, err error) error {
	dir := filepath.Dir(path)
	switch {
	case errors.Is(err, fs.ErrPermission):
		if _, serr := os.Stat(path); serr == nil {
			return fmt.Errorf("open store %s: the file is not writable by this process (uid %d): %w", path, os.Geteuid(), err)
		}
		return fmt.Errorf("open store %s: cannot create the file: directory %s is not writable by this process (uid %d): %w", path, dir, os.Geteuid(), err)
	case errors.Is(err, syscall.EROFS):
		return fmt.Errorf("open store %s: the file system is read-only: %w", path, err)
	case noSpace(err):
		return fmt.Errorf("open store %s: %s: %w", path, noSpaceHelp, err)
	case errors.Is(err, syscall.EISDIR):
		return fmt.Errorf("open store %s: this is a directory; name the store file in it, e.g. %s: %w", path, filepath.Join(path, "quota-broker.db"), err)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("open store %s: directory %s does not exist: %w", path, dir, err)
	}
	return fmt.Errorf("open store %s: %w", path, err)
}

const noSpaceHelp = "out of space: the disk is full, or a disk quota or file size limit (ulimit -f) is reached"

// noSpace reports whether err means a write found no room. bbolt formats
// some errors with %s (file resize), so the message is checked too.
func noSpace(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EFBIG) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	msg := err.Error()
	for _, e := range []syscall.Errno{syscall.ENOSPC, syscall.EFBIG, syscall.EDQUOT} {
		if strings.Contains(msg, e.Error()) {
			return true
		}
	}
	return false
}

// init checks the file's size and schema, and gives a new file the current
// schema and the buckets.
func (s *Store) init() (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = &corruptError{s.path, "reading pages", fmt.Errorf("%v", p)}
		}
	}()
	st, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("open store %s: %w", s.path, err)
	}
	var checkErr error
	err = s.db.Update(func(tx *bbolt.Tx) error {
		checkErr = s.check(tx, st.Size())
		return checkErr
	})
	if err != nil && err != checkErr { // identity: the check failed, or the commit after it
		return openError(s.path, err) // writing the file failed: space, I/O
	}
	return err
}

// check verifies the file's schema within tx, and gives a new file the
// schema and buckets.
func (s *Store) check(tx *bbolt.Tx, fileSize int64) error {
	// bbolt maps pages up to its high-water mark without checking that
	// the file reaches that far; a truncated file would fault later.
	if tx.Size() > fileSize {
		return &corruptError{s.path, "truncated", fmt.Errorf("the file has %d bytes but its pages reach %d", fileSize, tx.Size())}
	}
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		var names []string
		_ = tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
			names = append(names, strconv.Quote(string(name)))
			return nil
		})
		if len(names) > 0 {
			return fmt.Errorf("open store %s: %w: not a quota broker store (buckets %v, no %q)", s.path, errSchema, names, bucketMeta)
		}
		var err error
		if meta, err = tx.CreateBucket(bucketMeta); err != nil {
			return fmt.Errorf("open store %s: create bucket %s: %w", s.path, bucketMeta, err)
		}
		if err := meta.Put(keySchema, binary.AppendUvarint(nil, schemaVersion)); err != nil {
			return fmt.Errorf("open store %s: write schema version: %w", s.path, err)
		}
	}
	v, n := binary.Uvarint(meta.Get(keySchema))
	switch {
	case n <= 0:
		return &corruptError{s.path, fmt.Sprintf("bucket %s, key %s", bucketMeta, keySchema), fmt.Errorf("missing or malformed schema version %x", meta.Get(keySchema))}
	case v > schemaVersion:
		return fmt.Errorf("open store %s: %w: schema version %d is newer than this build's %d; run the broker version that wrote it", s.path, errSchema, v, schemaVersion)
	case v < schemaVersion:
		return fmt.Errorf("open store %s: %w: schema version %d has no migration to %d", s.path, errSchema, v, schemaVersion)
	}
	for _, name := range append(dataBuckets[:len(dataBuckets):len(dataBuckets)], bucketStats, bucketStatsTotal) {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("open store %s: create bucket %s: %w", s.path, name, err)
		}
	}
	return nil
}

// Close waits for Commits in flight and closes the file. Commit and Load
// fail after Close.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	// Every Commit has returned (they hold mu shared), so the queue is
	// empty: stop the loop before closing the file under it.
	close(s.queue)
	<-s.loopDone
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store %s: %w", s.path, err)
	}
	return nil
}

// Load reads every record. A record that does not decode fails Load with
// its bucket, key and reason: skipping it could forget a lease and let a
// budget overrun its limit.
func (s *Store) Load(ctx context.Context) (snap broker.Snapshot, err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return snap, fmt.Errorf("load store %s: %w", s.path, errClosed)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			snap, err = broker.Snapshot{}, &corruptError{s.path, "reading pages", fmt.Errorf("%v", p)}
		}
	}()
	err = s.db.View(func(tx *bbolt.Tx) error {
		n := 0
		for _, name := range dataBuckets {
			b := tx.Bucket(name)
			if b == nil {
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
	case string(bucketStats), string(bucketStatsTotal):
		if m, bk, client, err := decodeStatsKey(k); err == nil {
			return fmt.Sprintf("%s minute %d client %q (%x)", bk, m, client, k)
		}
	}
	return fmt.Sprintf("%x", k)
}

// Commit applies c in one transaction, shared with concurrent Commits, and
// returns once it is on disk. If ctx ends before c's group transaction has
// started, Commit returns ctx's error and c is never applied; once it has
// started, Commit waits for the outcome whatever ctx does.
func (s *Store) Commit(ctx context.Context, c broker.Change) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("commit to store %s: %w", s.path, err)
	}
	w, err := prepare(&c)
	if err != nil {
		return fmt.Errorf("commit to store %s: %w", s.path, err)
	}
	if w.empty() {
		return nil
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return fmt.Errorf("commit to store %s: %w", s.path, errClosed)
	}
	if ctx.Done() == nil {
		// Cannot be cancelled: no need for a goroutine to watch it.
		defer s.mu.RUnlock()
		return s.wrap(s.run(w.apply))
	}

	// state moves from pending to claimed when the transaction first runs
	// w, or to abandoned when ctx ends first. Once claimed, w may run again
	// (Batch retries a group without a failed member, and re-runs a failed
	// member alone), always in a fresh transaction, since a failed one is
	// rolled back; an abandoned w never runs.
	const (
		pending int32 = iota
		claimed
		abandoned
	)
	var state atomic.Int32
	fn := func(tx *bbolt.Tx) error {
		if state.CompareAndSwap(pending, claimed) || state.Load() == claimed {
			return w.apply(tx)
		}
		return nil
	}
	if s.mode == modeGroup {
		// The commit loop holds the call; no goroutine is needed to wait
		// for it while watching ctx. An abandoned call stays queued and
		// runs as a no-op; Close drains the queue before closing the file.
		defer s.mu.RUnlock()
		c := &groupCall{fn: s.guard(fn), done: make(chan error, 1)}
		s.queue <- c
		select {
		case err := <-c.done:
			return s.wrap(err)
		case <-ctx.Done():
			if state.CompareAndSwap(pending, abandoned) {
				return fmt.Errorf("commit to store %s: %w", s.path, ctx.Err())
			}
			return s.wrap(<-c.done)
		}
	}
	done := make(chan error, 1)
	go func() {
		defer s.mu.RUnlock()
		done <- s.run(fn)
	}()
	select {
	case err := <-done:
		return s.wrap(err)
	case <-ctx.Done():
		if state.CompareAndSwap(pending, abandoned) {
			return fmt.Errorf("commit to store %s: %w", s.path, ctx.Err())
		}
		return s.wrap(<-done)
	}
}

// run runs fn in a group transaction, guarding against faults and panics
// from damaged pages.
func (s *Store) run(fn func(*bbolt.Tx) error) error {
	guarded := s.guard(fn)
	switch s.mode {
	case modeSolo:
		return s.db.Update(guarded)
	case modeBatch:
		return s.db.Batch(guarded)
	}
	c := &groupCall{fn: guarded, done: make(chan error, 1)}
	s.queue <- c
	return <-c.done
}

// guard turns faults and panics from damaged pages during fn into a
// corruption error.
func (s *Store) guard(fn func(*bbolt.Tx) error) func(*bbolt.Tx) error {
	return func(tx *bbolt.Tx) (err error) {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			if p := recover(); p != nil {
				err = &corruptError{s.path, "writing", fmt.Errorf("%v", p)}
			}
		}()
		return fn(tx)
	}
}

// commitLoop is group commit without a timer: it takes the first queued
// Commit, adds every other Commit already waiting (they queued while the
// previous transaction was being written and synced), and applies them all
// in one transaction and one fsync. A lone Commit pays one transaction; under
// load the group grows to whatever arrived during the last fsync, so
// throughput rises with concurrency instead of being capped by a fixed
// batching delay. It runs until Close closes the queue.
func (s *Store) commitLoop() {
	defer close(s.loopDone)
	group := make([]*groupCall, 0, s.maxGroup)
	for first := range s.queue {
		group = append(group[:0], first)
	fill:
		for len(group) < s.maxGroup {
			select {
			case c, ok := <-s.queue:
				if !ok {
					break fill
				}
				group = append(group, c)
			default:
				break fill
			}
		}
		s.commitGroup(group)
	}
}

// commitGroup applies group in one transaction. If that fails, each member
// runs alone, so one bad Commit cannot fail the others; re-running is safe
// because a failed transaction is rolled back whole.
func (s *Store) commitGroup(group []*groupCall) {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		for _, c := range group {
			if err := c.fn(tx); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil || len(group) == 1 {
		for _, c := range group {
			c.done <- err
		}
		return
	}
	for _, c := range group {
		c.done <- s.db.Update(c.fn)
	}
}

func (s *Store) wrap(err error) error {
	var ce *corruptError
	if err == nil || errors.As(err, &ce) {
		return err
	}
	if noSpace(err) {
		return fmt.Errorf("commit to store %s: %s: %w", s.path, noSpaceHelp, err)
	}
	return fmt.Errorf("commit to store %s: %w", s.path, err)
}

// write is a Change encoded before its transaction, so that the work done
// while holding bbolt's writer lock, which every group waits for, is only
// lookups and puts.
type write struct {
	specs, overrides  []kv // overrides: nil v deletes
	adaptive          []kv
	leases            []leaseWrite
	deleteLeases      [][]byte
	usage             []usageDelta
	deleteUsageBefore int64
	stats             []statsDelta
	deleteStatsBefore int64
	deleteClientStats int64
}

// statsDelta is added to the client's record (k) and the budget's (total).
type statsDelta struct {
	k, total []byte
	s        *broker.Stats
}

type kv struct{ k, v []byte }

type leaseWrite struct {
	id      []byte
	version uint64
	v       []byte
}

type usageDelta struct {
	k                []byte
	tokens, requests int64
}

func (w *write) empty() bool {
	return len(w.specs)+len(w.overrides)+len(w.leases)+len(w.deleteLeases)+len(w.usage)+len(w.adaptive)+len(w.stats) == 0 &&
		w.deleteUsageBefore == 0 && w.deleteStatsBefore == 0 && w.deleteClientStats == 0
}

func checkKey(what string, k []byte) error {
	if len(k) == 0 {
		return fmt.Errorf("%s: empty key", what)
	}
	if len(k) > bbolt.MaxKeySize {
		return fmt.Errorf("%s: key is %d bytes; at most %d", what, len(k), bbolt.MaxKeySize)
	}
	return nil
}

func prepare(c *broker.Change) (*write, error) {
	w := &write{deleteUsageBefore: c.DeleteUsageBefore, deleteStatsBefore: c.DeleteStatsBefore, deleteClientStats: c.DeleteClientStatsBefore}
	for i := range c.Stats {
		r := &c.Stats[i]
		k := statsKey(r.Minute, r.Key, r.Client)
		if err := checkKey("stats "+r.Key.String(), k); err != nil {
			return nil, err
		}
		w.stats = append(w.stats, statsDelta{k, statsKey(r.Minute, r.Key, ""), &r.Stats})
	}
	for i := range c.Specs {
		s := &c.Specs[i]
		k := appendKey(nil, s.Key)
		if err := checkKey("spec "+s.Key.String(), k); err != nil {
			return nil, err
		}
		if err := checkTime("spec "+s.Key.String()+" source time", s.SourceTime); err != nil {
			return nil, err
		}
		w.specs = append(w.specs, kv{k, encodeSpec(k, s)})
	}
	for i := range c.Adaptive {
		a := &c.Adaptive[i]
		k := appendKey(nil, a.Key)
		if err := checkKey("adaptive "+a.Key.String(), k); err != nil {
			return nil, err
		}
		if err := checkTime("adaptive "+a.Key.String()+" last decrease", a.LastDecrease); err != nil {
			return nil, err
		}
		w.adaptive = append(w.adaptive, kv{k, encodeAdaptive(k, a)})
	}
	for _, o := range c.Overrides {
		k := appendKey(nil, o.Key)
		if err := checkKey("override "+o.Key.String(), k); err != nil {
			return nil, err
		}
		var v []byte
		if o.Override != nil {
			if err := checkTime("override "+o.Key.String()+" set at", o.Override.SetAt); err != nil {
				return nil, err
			}
			v = encodeOverride(k, o.Override)
		}
		w.overrides = append(w.overrides, kv{k, v})
	}
	for i := range c.Leases {
		r := &c.Leases[i]
		k := []byte(r.ID)
		if err := checkKey(fmt.Sprintf("lease %q", r.ID), k); err != nil {
			return nil, err
		}
		for _, t := range []struct {
			name string
			t    time.Time
		}{{"granted at", r.GrantedAt}, {"expires at", r.ExpiresAt}, {"ended at", r.EndedAt}} {
			if err := checkTime(fmt.Sprintf("lease %q %s", r.ID, t.name), t.t); err != nil {
				return nil, err
			}
		}
		w.leases = append(w.leases, leaseWrite{k, r.Version, encodeLease(r)})
	}
	for _, id := range c.DeleteLeases {
		if id != "" {
			w.deleteLeases = append(w.deleteLeases, []byte(id))
		}
	}
	for _, u := range c.Usage {
		k := usageKey(u.Minute, u.Key)
		if err := checkKey("usage "+u.Key.String(), k); err != nil {
			return nil, err
		}
		w.usage = append(w.usage, usageDelta{k, u.Tokens, u.Requests})
	}
	return w, nil
}

// apply writes w in tx. It changes nothing outside tx, so running it again
// in a new transaction after a rolled-back one applies w exactly once: the
// usage deltas are added to the totals tx reads, which a rollback restored.
func (w *write) apply(tx *bbolt.Tx) error {
	specs, overrides := tx.Bucket(bucketSpecs), tx.Bucket(bucketOverrides)
	leases, usage := tx.Bucket(bucketLeases), tx.Bucket(bucketUsage)
	for _, s := range w.specs {
		if err := specs.Put(s.k, s.v); err != nil {
			return fmt.Errorf("put spec %s: %w", describeKey(bucketSpecs, s.k), err)
		}
	}
	if len(w.adaptive) > 0 {
		adaptive := tx.Bucket(bucketAdaptive)
		for _, a := range w.adaptive {
			if err := adaptive.Put(a.k, a.v); err != nil {
				return fmt.Errorf("put adaptive %s: %w", describeKey(bucketAdaptive, a.k), err)
			}
		}
	}
	for _, o := range w.overrides {
		var err error
		if o.v == nil {
			err = overrides.Delete(o.k)
		} else {
			err = overrides.Put(o.k, o.v)
		}
		if err != nil {
			return fmt.Errorf("put override %s: %w", describeKey(bucketOverrides, o.k), err)
		}
	}
	for _, l := range w.leases {
		if old := leases.Get(l.id); old != nil {
			v, err := leaseVersion(l.id, old)
			if err != nil {
				return fmt.Errorf("bucket %s, key %q: stored lease: %w", bucketLeases, l.id, err)
			}
			// A racing commit already stored a later state of this lease.
			if v > l.version {
				continue
			}
		}
		if err := leases.Put(l.id, l.v); err != nil {
			return fmt.Errorf("put lease %q: %w", l.id, err)
		}
	}
	for _, u := range w.usage {
		var tokens, requests int64
		if old := usage.Get(u.k); old != nil {
			var err error
			if tokens, requests, err = decodeUsageTotals(u.k, old); err != nil {
				return fmt.Errorf("bucket %s, key %s: stored usage: %w", bucketUsage, describeKey(bucketUsage, u.k), err)
			}
		}
		t, ok1 := add(tokens, u.tokens)
		r, ok2 := add(requests, u.requests)
		if !ok1 || !ok2 {
			return fmt.Errorf("usage %s: total overflows", describeKey(bucketUsage, u.k))
		}
		if err := usage.Put(u.k, encodeUsage(u.k, t, r)); err != nil {
			return fmt.Errorf("put usage %s: %w", describeKey(bucketUsage, u.k), err)
		}
	}
	if len(w.stats) > 0 {
		stats, totals := tx.Bucket(bucketStats), tx.Bucket(bucketStatsTotal)
		for _, d := range w.stats {
			if err := addStats(stats, bucketStats, d.k, d.s); err != nil {
				return err
			}
			if err := addStats(totals, bucketStatsTotal, d.total, d.s); err != nil {
				return err
			}
		}
	}
	// Deletions come last: a lease both upserted and deleted in one Change
	// is gone, and no usage before the cut-off survives the Change.
	for _, id := range w.deleteLeases {
		if err := leases.Delete(id); err != nil {
			return fmt.Errorf("delete lease %q: %w", id, err)
		}
	}
	if w.deleteUsageBefore != 0 {
		if err := deleteBefore(usage, bucketUsage, w.deleteUsageBefore); err != nil {
			return err
		}
	}
	if w.deleteStatsBefore != 0 {
		if err := deleteBefore(tx.Bucket(bucketStatsTotal), bucketStatsTotal, w.deleteStatsBefore); err != nil {
			return err
		}
	}
	if w.deleteClientStats != 0 {
		if err := deleteBefore(tx.Bucket(bucketStats), bucketStats, w.deleteClientStats); err != nil {
			return err
		}
	}
	return nil
}

// addStats adds delta to the record at k of bucket b (named name).
func addStats(b *bbolt.Bucket, name, k []byte, delta *broker.Stats) error {
	var total broker.Stats
	if old := b.Get(k); old != nil {
		r, err := decodeStats(k, old)
		if err != nil {
			// A damaged history record is replaced by the delta: losing
			// one minute of statistics beats failing the sweep's commit,
			// which carries lease expiries.
			r = broker.StatsRecord{}
		}
		total = r.Stats
	}
	prev := total
	total.Add(delta)
	// Gauges replace: the latest write knows the limits in force.
	total.LimitTPM, total.LimitRPM = cmp.Or(delta.LimitTPM, prev.LimitTPM), cmp.Or(delta.LimitRPM, prev.LimitRPM)
	if err := b.Put(k, encodeStats(k, &total)); err != nil {
		return fmt.Errorf("put %s %s: %w", name, describeKey(name, k), err)
	}
	return nil
}

// deleteBefore deletes the keys of a minute-first bucket before minute.
func deleteBefore(b *bbolt.Bucket, name []byte, minute int64) error {
	// Collect, then delete: deleting under a bbolt cursor can make Next
	// skip a key.
	var dead [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if m, _ := usageMinute(k); m >= minute {
			break
		}
		dead = append(dead, bytes.Clone(k))
	}
	for _, k := range dead {
		if err := b.Delete(k); err != nil {
			return fmt.Errorf("delete %s %s: %w", name, describeKey(name, k), err)
		}
	}
	return nil
}

// ReadStats calls fn for every history record from <= Minute < to, in
// minute order (broker.StatsReader). It reads in one read transaction,
// which does not block commits.
func (s *Store) ReadStats(ctx context.Context, from, to int64, perClient bool, fn func(*broker.StatsRecord) error) (err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return fmt.Errorf("read history from store %s: %w", s.path, errClosed)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = &corruptError{s.path, "reading pages", fmt.Errorf("%v", p)}
		}
	}()
	return s.db.View(func(tx *bbolt.Tx) error {
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

func add(a, b int64) (int64, bool) {
	s := a + b
	return s, !((b > 0 && s < a) || (b < 0 && s > a))
}
