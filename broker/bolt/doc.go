// Package bolt keeps the broker's state in one bbolt file: a broker.Store.
//
// # Model
//
// The file holds these buckets:
//
//	meta         "schema" -> uvarint schema version (1)
//	specs        budget key -> Spec (quota, source, burndown, max output, AWS quota refs)
//	overrides    budget key -> Override (absent: no override)
//	leases       lease ID -> LeaseRecord
//	usage        minute | budget key -> usage totals (tokens, requests)
//	adaptive     budget key -> AdaptiveRecord (learned ceiling, depth, cuts)
//	stats        minute | budget key | client -> history (broker.Stats)
//	stats-total  minute | budget key | "" -> history summed over clients
//	chunks       chunk ID (big-endian uint64) -> ChunkRecord (escrowed capacity)
//
// Load reads the first six and chunks; history is read by ReadStats, a
// range scan by minute, and is never needed to rebuild the broker's windows.
// A chunk is written when the broker commits it and once more when it
// closes, never per grant. Buckets and record fields added after schema 1
// was first written (adaptive, the stats buckets, chunks, quota refs,
// adaptive depth) are read as empty when
// missing, created by the first Commit that writes to them, or written only
// when set, so older files open and read unchanged.
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
// a newer one, an older one (there is no migration yet), buckets but no
// meta bucket (a bbolt file of something else), or a meta bucket without
// one of schema 1's data buckets (damage). A layout change bumps
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
// fsyncs per second bound grants per second. Commits go through the store's
// commit loop (commitLoop): it takes the first queued Commit plus every
// other Commit already waiting, and applies them in one transaction and one
// fsync. A lone Commit pays one transaction and no batching delay; under
// load a group holds whatever queued while the previous group was being
// synced, so throughput grows with concurrency. Durability is the same in
// every mode the benchmark compares: a Commit returns only after fsync
// (NoSync is for tests and benchmarks).
//
// We first used bbolt's DB.Batch, the library's own group commit. Its
// groups start on a timer (MaxBatchDelay after the first call) or at
// MaxBatchSize calls: a lone Commit always pays the delay, and under load a
// short delay makes small groups while a long one adds latency (with 50
// committers 1 ms measured best, 500 µs and 250 µs worse, 10 ms (bbolt's
// default) 2-4x worse). The loop has no delay to tune and measured as good
// as or better than the best Batch setting under load, and as fast as a
// plain transaction for a lone Commit. Batch and a plain transaction per
// Commit stay in the benchmark (commitVia in bench_test.go) as the
// comparison; the store itself has only the loop.
//
// A failed group is re-run member by member. Each run is a fresh
// transaction (a failed one is rolled back), and a Change is encoded before
// its transaction and touches nothing outside it, so re-running it applies
// it once: usage deltas are added to the totals read in that transaction,
// which the rollback restored (TestBatchRetry, for both the loop and Batch).
//
// Measured on this project's 2-core machine (a virtual disk, one fsync
// about 0.3 ms when the machine is quiet, up to 3 ms when it is not), a
// Change of one lease and one usage delta, 50 concurrent committers
// ("parallel") or one ("serial"), all modes in the same run:
//
//	                          parallel (50)              serial (1)
//	mode                      commits/s   p50    p99     commits/s   p50
//	group (the commit loop)   29473       1.6ms  3.0ms   2164        0.44ms
//	batch, 1 ms               18161       2.7ms  4.8ms    555        1.76ms
//	batch, 10 ms (bbolt's)     3969      12.6ms 13.8ms     86       11.5ms
//	update (fsync each)        1993      25.0ms 29.5ms   2048        0.46ms
//
// Reproduce with
//
//	go test -run='^$' -bench=Commit -benchtime=2s ./broker/bolt/
//
// # Files
//
// store.go has Open, Close and the options; open.go opens a file and checks
// its schema; corrupt.go turns damage into errors that say what to do;
// load.go and stats.go read (state at start-up, history); commit.go is
// Commit and the commit loop; write.go encodes a Change before its
// transaction and applies it inside; codec.go is the record format.
//
// # Damage and recovery
//
// Open refuses an empty file (0 bytes: bbolt would silently make it a new
// store, forgetting every lease), a file bbolt cannot read (bad meta
// pages, too short), one truncated below its high-water mark, and one
// whose pages make bbolt panic or fault while opening; Load refuses a
// record whose checksum or body is wrong, or pages that panic or fault
// while read. The error names the file and the damage. Nothing is written
// to an existing file before its first Commit, which the broker makes only
// after Load has read every record: a refused start leaves the file as it
// was, the older meta page included, which a recovery may need. The store
// never repairs or removes a file: the operator either restores it from a
// backup, or moves it aside and starts empty, accepting that the broker
// forgets outstanding leases and recent usage and may overrun limits until
// a day has passed. `bbolt check FILE` and `bbolt pages FILE`
// (go.etcd.io/bbolt/cmd/bbolt) show more. A panic inside bbolt's Open
// keeps the file mapped and locked until the process exits, which it
// should do anyway.
package bolt
