package bolt

import (
	"fmt"
	"runtime/debug"

	"go.etcd.io/bbolt"
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

// catchDamage turns a panic or memory fault that a damaged page caused in
// its caller into a corruption error in *err. bbolt panics on some damaged
// pages, and a page past a truncated file's end faults when read. The
// caller defers it right after enabling faults as panics:
//
//	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
//	defer catchDamage(path, "reading pages", &err)
func catchDamage(path, where string, err *error) {
	if p := recover(); p != nil {
		*err = &corruptError{path, where, fmt.Errorf("%v", p)}
	}
}

// read runs fn in a read transaction, turning faults and panics from
// damaged pages into a corruption error.
func (s *Store) read(fn func(*bbolt.Tx) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer catchDamage(s.path, "reading pages", &err)
	return s.db.View(fn)
}

// guard turns faults and panics from damaged pages during fn into a
// corruption error.
func (s *Store) guard(fn func(*bbolt.Tx) error) func(*bbolt.Tx) error {
	return func(tx *bbolt.Tx) (err error) {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer catchDamage(s.path, "writing", &err)
		return fn(tx)
	}
}
