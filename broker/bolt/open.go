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
	"strconv"
	"strings"
	"syscall"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

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
	defer catchDamage(s.path, "reading pages", &err)
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
