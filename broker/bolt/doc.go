// Package bolt keeps the broker's state in one bbolt file: a broker.Store.
//
// # Model
//
// The file holds five buckets:
//
//	meta       "schema" -> uvarint schema version (1)
//	specs      budget key -> Spec (quota, source, burndown, max output)
//	overrides  budget key -> Override (absent: no override)
//	leases     lease ID -> LeaseRecord
//	usage      minute | budget key -> usage totals (tokens, requests)
//
// A budget key is the region, scope and model, each string length-prefixed
// so that no model id can make two keys collide. A usage key starts with the
// minute, big-endian with the sign bit flipped, so that byte order is time
// order: DeleteUsageBefore deletes from the first key up to the cut-off.
//
// Values are a format byte, a body of varints (canonical: the decoder
// refuses non-minimal ones), length-prefixed strings, 8-byte floats and
// times as seconds and nanoseconds, and a CRC-32C of the key and the rest of
// the value. Hand-rolled rather than encoding/json: a lease is 150 bytes
// against 540, encodes about 4x and decodes about 25x faster
// (BenchmarkEncodeLease, BenchmarkDecodeLease: ~1.2µs and 0.6µs against
// ~5µs and 16µs), and the format is ours to keep stable; the
// checksum is there because bbolt checksums only its meta pages, so a
// damaged leaf page would otherwise load as wrong numbers.
//
// # Versions
//
// Open gives a new file the current schema version and refuses a file with
// a newer one, an older one (there is no migration yet), or buckets but no
// meta bucket (a bbolt file of something else). A layout change bumps
// schemaVersion and adds a migration in Open; a change to one record's
// body bumps its format byte, which the decoder checks.
//
// # Invariants
//
//   - A Change is applied in one bbolt transaction: all of it or none.
//     Deletions apply after upserts within a Change.
//   - A lease is replaced only by a record of equal or higher Version, so
//     racing Commits never move a lease backwards.
//   - Usage deltas are added to the stored totals inside the transaction.
//   - Load fails, naming bucket, key and reason, on any record that does
//     not decode; it never skips one, since a forgotten lease or usage
//     minute would let a budget grant past its limit after a restart.
//   - A Commit whose context ends before its group transaction has started
//     is never applied and returns the context's error; once started it is
//     waited for and its outcome returned. Either way nothing is half
//     applied.
//
// # Group commit
//
// Every grant waits for its Commit, so fsync latency is grant latency and
// fsyncs per second bound grants per second. Commits use DB.Batch, bbolt's
// own group commit: Commits arriving within MaxBatchDelay of the first share
// one transaction and one fsync. A lone Commit pays that delay, many share
// the cost. Durability is the same in every mode: Commit returns only after
// fsync (NoSync is for tests and benchmarks).
//
// Batch runs a failed group again without its failing member, and then that
// member alone. Each run is a fresh transaction (a failed one is rolled
// back), and a Change is encoded before its transaction and touches nothing
// outside it, so re-running it applies it once: usage deltas are added to
// the totals read in that transaction, which the rollback restored
// (TestBatchRetry).
//
// Measured on this project's 2-core machine (AMD EPYC, virtual disk), a
// Change of one lease and one usage delta, about 50 concurrent committers
// ("parallel") or one ("serial"); two runs, since this disk's fsync varied
// between ~0.4 ms and 1-3 ms with long tails while other work ran:
//
//	                         parallel (50)              serial (1)
//	mode                     commits/s      p50         commits/s    p50
//	update (fsync each)       325 / 1968    139 / 25 ms   342 / 1943  1.0 / 0.4 ms
//	batch, 10 ms (bbolt's)   3132 / 3914     16 / 13 ms    53 / 85     14 / 12 ms
//	batch, 2 ms              6389 / -       7.7 / - ms    156 / -     3.5 / - ms
//	batch, 1 ms (default)    7683 / 16988   5.5 / 2.8 ms  238 / 461   2.8 / 1.8 ms
//	batch, 500 µs            3079 / 15213    13 / 2.4 ms  262 / 521   3.2 / 1.7 ms
//	batch, 250 µs             985 / -        48 / - ms    238 / -     3.4 / - ms
//
// The default MaxBatchDelay is 1 ms: with 50 committers the best or close
// to the best throughput and median in both runs, 4-24x one fsync per
// Commit, with a much tighter p99 than 500 µs; a lone Commit pays about
// 1-2 ms more than a plain fsync. Shorter delays are not better under
// load: groups shrink, and each still queues for the writer lock and its
// own fsync; longer ones only add latency. Figures move by tens of percent
// between runs; the ranking has held.
// Reproduce with
//
//	go test -run='^$' -bench=Commit -benchtime=2s ./broker/bolt/
//
// # Damage and recovery
//
// Open refuses a file bbolt cannot read (bad meta pages, too short), one
// truncated below its high-water mark, and one whose pages make bbolt panic
// or fault while opening; Load refuses a record whose checksum or body is
// wrong, or pages that panic or fault while read. The error names the file
// and the damage. The store never repairs or removes a file: the operator
// either restores it from a backup, or moves it aside and starts empty,
// accepting that the broker forgets outstanding leases and recent usage
// and may overrun limits until a day has passed. `bbolt check FILE` and
// `bbolt pages FILE` (go.etcd.io/bbolt/cmd/bbolt) show more. A panic
// inside bbolt's Open keeps the file mapped and locked until the process
// exits, which it should do anyway.
package bolt
