package bolt

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"go.etcd.io/bbolt"
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
	// additive (see addedBuckets).
	bucketAdaptive = []byte("adaptive")
	// bucketStats holds usage history per client (broker.StatsRecord) and
	// bucketStatsTotal the same summed per budget (client ""). ReadStats
	// reads them, not Load; like "adaptive", they are additive.
	bucketStats      = []byte("stats")
	bucketStatsTotal = []byte("stats-total")
	// bucketChunks holds escrowed capacity (broker.ChunkRecord), one
	// record per chunk; additive.
	bucketChunks = []byte("chunks")
	// bucketSpend holds the tenants' spend per client, budget and day
	// (broker.SpendRecord), bucketClientUsage the tokens of clients held
	// to caps per minute (broker.ClientUsageRecord); additive.
	bucketSpend       = []byte("spend")
	bucketClientUsage = []byte("client-usage")
	keySchema         = []byte("schema")
)

// dataBuckets are the buckets Load reads, in Snapshot order.
var dataBuckets = [][]byte{bucketSpecs, bucketOverrides, bucketLeases, bucketUsage, bucketAdaptive, bucketChunks, bucketSpend, bucketClientUsage}

// schemaBuckets are in every store since schema 1 was first written: Open
// refuses a file without one. addedBuckets came later without a migration:
// a file written before lacks them, reads treat a missing one as empty, and
// the first Commit that writes to one creates it, so that Open never writes
// to an existing file.
var (
	schemaBuckets = [][]byte{bucketSpecs, bucketOverrides, bucketLeases, bucketUsage}
	addedBuckets  = [][]byte{bucketAdaptive, bucketStats, bucketStatsTotal, bucketChunks, bucketSpend, bucketClientUsage}
)

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
	// (a Commit until its group is done, unless its context ended before
	// the group started), so Close, which holds it exclusively, waits for
	// them.
	mu     sync.RWMutex
	closed bool

	maxGroup int
	queue    chan *groupCall // to the commit loop
	loopDone chan struct{}   // closed when the commit loop has exited
}

var (
	errLocked = errors.New("locked by another process")
	errClosed = errors.New("store is closed")
	errSchema = errors.New("unsupported schema")
)

// Open opens the store at path, creating the file if it does not exist.
// It fails if another process has the file open, if the file is not a
// store this build can read, or if it cannot be written; the error names
// the path and the cause an operator can act on (permissions, a missing
// directory, a full disk, damage). It writes nothing to an existing store:
// the first write is the first Commit.
func Open(path string, opts Options) (*Store, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	st, statErr := os.Stat(path)
	created := errors.Is(statErr, fs.ErrNotExist)
	if statErr == nil && st.Mode().IsRegular() && st.Size() == 0 {
		return nil, refuseEmpty(path)
	}
	if created {
		// A new store is built under another name and linked into place
		// whole, so a crash while creating it leaves no file (or a
		// temporary one), never an empty or half-initialised store that
		// the next start would refuse as damaged.
		linked, err := createFile(path, opts)
		if err != nil {
			return nil, err
		}
		created = linked
	}
	db, err := openDB(path, opts)
	if err != nil {
		return nil, removeNew(path, created, err)
	}
	s := &Store{path: path, db: db, maxGroup: opts.MaxBatchSize,
		queue: make(chan *groupCall, opts.MaxBatchSize), loopDone: make(chan struct{})}
	if err := s.init(); err != nil {
		_ = db.Close()
		return nil, removeNew(path, created, err)
	}
	go s.commitLoop()
	return s, nil
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
