package bolt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// openDB opens path with bbolt, its errors worded for an operator.
func openDB(path string, opts Options) (db *bbolt.DB, err error) {
	// bbolt panics on some damaged pages while opening (a bad freelist
	// page), and a truncated file can fault when mapped: turn both into
	// an error rather than a crash. The *DB is lost with the panic, and
	// its mapping and file lock with it until the process exits, which
	// it is expected to do with a file it cannot read.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer catchDamage(path, "opening", &err)
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

// createFile makes a new store at path: an initialised bbolt file (schema
// and buckets) written and synced under a temporary name in the same
// directory, then hard-linked to path and the directory synced. A link,
// unlike a rename, fails when path exists: a broker that created the file
// meanwhile keeps it, and createFile reports linked false. Only then is
// path opened like any existing store.
func createFile(path string, opts Options) (linked bool, err error) {
	// The pid keeps two brokers starting at once apart; a file of that
	// name is left by a crashed earlier process with the same pid (pid 1
	// in a container, say), never in use, so it is removed first.
	tmp := fmt.Sprintf("%s.creating-%d", path, os.Getpid())
	_ = os.Remove(tmp)
	defer func() { _ = os.Remove(tmp) }()
	db, err := bbolt.Open(tmp, 0o600, &bbolt.Options{Timeout: opts.LockTimeout, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		return false, openError(path, err)
	}
	if err := db.Update(create); err != nil {
		_ = db.Close()
		return false, openError(path, err)
	}
	if err := db.Close(); err != nil {
		return false, openError(path, err)
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, openError(path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		err = d.Sync()
		_ = d.Close()
		if err != nil {
			return true, openError(path, err)
		}
	}
	return true, nil
}

// refuseEmpty explains why an empty file is not opened. bbolt would make it
// a new store, silently; but a store file is never empty, so the state the
// operator expects is elsewhere or lost, and starting empty would forget
// every lease without a word. A file this process may not write is
// reported as that first, as it would be with content.
func refuseEmpty(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return openError(path, err)
	}
	_ = f.Close()
	return &corruptError{path, "empty (0 bytes)",
		errors.New("a store file is never empty; it was truncated, made by another program, or the broker was killed while creating it")}
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

// init checks the file before anything is written to it: that its pages
// lie within it, its schema, and that it has the buckets of a store. Only
// a new file, one without buckets, is written here: given the schema and
// the buckets. An existing store is not written until its first Commit,
// so a start refused after Open (Load finding a damaged record, say)
// leaves the file as it was, both meta pages included, for a recovery.
func (s *Store) init() error {
	st, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("open store %s: %w", s.path, err)
	}
	var fresh bool
	if err := s.read(func(tx *bbolt.Tx) (err error) {
		fresh, err = s.check(tx, st.Size())
		return err
	}); err != nil || !fresh {
		return err
	}
	if err := s.db.Update(s.guard(create)); err != nil {
		var ce *corruptError
		if errors.As(err, &ce) {
			return err
		}
		return openError(s.path, err) // writing the file failed: space, I/O
	}
	return nil
}

// check verifies within tx that the file is a store this build can use,
// and reports whether it is new: a bbolt file without buckets.
func (s *Store) check(tx *bbolt.Tx, fileSize int64) (fresh bool, err error) {
	// bbolt maps pages up to its high-water mark without checking that
	// the file reaches that far; a truncated file would fault later.
	if tx.Size() > fileSize {
		return false, &corruptError{s.path, "truncated", fmt.Errorf("the file has %d bytes but its pages reach %d", fileSize, tx.Size())}
	}
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		var names []string
		_ = tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
			names = append(names, strconv.Quote(string(name)))
			return nil
		})
		if len(names) > 0 {
			return false, fmt.Errorf("open store %s: %w: not a quota broker store (buckets %v, no %q)", s.path, errSchema, names, bucketMeta)
		}
		return true, nil
	}
	v, n := binary.Uvarint(meta.Get(keySchema))
	switch {
	case n <= 0:
		return false, &corruptError{s.path, fmt.Sprintf("bucket %s, key %s", bucketMeta, keySchema), fmt.Errorf("missing or malformed schema version %x", meta.Get(keySchema))}
	case v > schemaVersion:
		return false, fmt.Errorf("open store %s: %w: schema version %d is newer than this build's %d; run the broker version that wrote it", s.path, errSchema, v, schemaVersion)
	case v < schemaVersion:
		return false, fmt.Errorf("open store %s: %w: schema version %d has no migration to %d", s.path, errSchema, v, schemaVersion)
	}
	for _, name := range schemaBuckets {
		if tx.Bucket(name) == nil {
			return false, &corruptError{s.path, fmt.Sprintf("bucket %s", name), errors.New("missing")}
		}
	}
	return false, nil
}

// create gives a new file the schema version and every bucket.
func create(tx *bbolt.Tx) error {
	meta, err := tx.CreateBucket(bucketMeta)
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", bucketMeta, err)
	}
	if err := meta.Put(keySchema, binary.AppendUvarint(nil, schemaVersion)); err != nil {
		return fmt.Errorf("write schema version: %w", err)
	}
	for _, name := range slices.Concat(schemaBuckets, addedBuckets) {
		if _, err := tx.CreateBucket(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return nil
}

// bucket returns tx's bucket name, creating it if it is one of the
// addedBuckets that an older file lacks.
func bucket(tx *bbolt.Tx, name []byte) (*bbolt.Bucket, error) {
	if b := tx.Bucket(name); b != nil {
		return b, nil
	}
	b, err := tx.CreateBucket(name)
	if err != nil {
		return nil, fmt.Errorf("create bucket %s: %w", name, err)
	}
	return b, nil
}
