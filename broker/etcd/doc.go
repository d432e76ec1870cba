// Package etcd keeps the broker's state in etcd for a cluster of replicas:
// a broker.Store whose every write is fenced on the writer's leadership,
// and the Session (an etcd lease kept alive, with a deadline on this
// replica's own clock) that replicas campaign with.
//
// # Model
//
// Under the cluster's prefix P (default /quota-broker/):
//
//	P format                  {"format":"quota-broker/1","cluster":NAME}
//	P leader/<lease>          the election (concurrency.Election); value: leader's address
//	P epoch                   written after a write whose answer was lost (Limits and order)
//	P specs/<key>             broker.Spec (JSON)
//	P overrides/<key>         broker.OverrideRecord
//	P adaptive/<key>          broker.AdaptiveRecord
//	P leases/<id>             broker.LeaseRecord
//	P usage/<minute>/<key>    broker.UsageRecord: totals per budget and minute
//	P chunks/<id>             broker.ChunkRecord: escrowed capacity
//	P spend/<day>/<client>/<key>
//	                          broker.SpendRecord: a client's spend per budget and day
//	P client-usage/<minute>/<client>/<key>
//	                          broker.ClientUsageRecord: a capped client's tokens per minute
//
// <key> is the budget's Region, scope and model, each path-escaped, and
// <client> the client's name, path-escaped; days, minutes and chunk ids are
// fixed-width hex (days and minutes offset to be non-negative), so that
// byte order is time order and old usage, client usage or spend is one
// range deletion.
//
// What is here is what the grant invariant needs after a failover, the same
// as after a crash of one broker (broker's doc, Durability): the chunks
// (capacity committed before it is granted from), the lease records of
// grants committed one by one and of settlements and renewals, the usage
// totals for the day window, the budgets' specs, overrides and learned
// ceilings, and the tenants' spend and client usage (broker's doc, Caps and
// money: without them a failover would reset every client's money budgets
// and TPD caps). Per-client history (broker.StatsRecord) is not: it is
// statistics, never read by the invariant, and would cost a write per
// budget and client every second; a new leader's history starts with its
// term. The store is thus not a broker.StatsReader.
//
// # Fencing
//
// Only the leader writes, and every write is a transaction whose condition
// is that the election key it won still exists with the create revision it
// had when it won (and that the epoch key is as this Store left it: Limits
// and order). When its session's lease expires, etcd deletes the key;
// a new leader's key has another revision; either way a write from the old
// leader, however late it arrives, is refused by etcd (ErrNotLeader). The
// Store also refuses, without asking etcd, any write after the session's
// Deadline, and any chunk whose End is after that deadline.
//
// # Standbys
//
// A replica that does not lead runs Follow: it reads the prefix once and
// then applies etcd's watch from the revision after that read, keeping
// every record decoded in memory (follow.go). When it wins, Load takes
// that copy instead of reading and decoding everything, which with
// 100,000 lease records is the difference between seconds and a tenth of
// one (BenchmarkTakeOver). It takes it only once the copy reflects a
// revision read after the win (events up to it applied, which a progress
// notification from etcd confirms): the old leader's writes are all
// fenced on its election key, deleted before the win, so the copy then
// holds every one of them, and is what a full read would return. A copy
// that etcd compacted past, whose watch failed, or that does not catch up
// within a second is read again or passed over for the full read. The
// copy costs memory as the broker's own state does: about 55 MB of heap
// for 100,000 lease records, measured here.
//
// # Choosing the TTL
//
// When etcd's own leader dies, every write and keep-alive waits for etcd
// to elect another (an election timeout or two: 1 to 2 s with etcd's
// defaults, more on a loaded machine). A session whose deadline comes
// first steps down, and its replica's standbys take over after the TTL: a
// failover where none was needed, and never an over-grant. The TTL should
// therefore be several times etcd's election timeout. Measured here (a
// loaded 2-core machine, etcd's election timeout 500 ms): killing etcd's
// leader made the replica that led step down in some runs with a 2 s TTL
// and, with 3 s, still stalled its writes past their deadline in one run
// of six; killing a follower never did. The tests kill a follower for
// "one member down" and etcd's leader only to lose quorum.
//
// # Limits and order
//
// etcd takes requests of at most 1.5 MiB and transactions of at most 128
// operations. Commits that arrive together are written as one group (as the
// bolt store does); a group, or one large Change, that exceeds either limit
// is written as several fenced transactions in this order: specs, overrides
// and ceilings; lease records; the totals (usage, client usage, spend) that
// grow; chunk records; deletions; the totals that shrink. A write cut short
// (the leader deposed or etcd unreachable half way) has then applied a
// prefix of that order, which only ever over-charges: a chunk's closing
// record (what it granted) comes after the lease records and usage it
// summarises, so a chunk whose closing is lost counts in full at the next
// load, as after a crash; a chunk's spend bound (broker's doc, Caps and
// money) is added before its opening record and taken back only after its
// leases' spend is written; growth already added is added again when the
// broker retries the Change (the day window and spend charge twice: safe).
// A total whose new value is lower in some count (a settlement's
// correction, a bound taken back, net of the group) is written in two
// steps: the larger of old and new in each count with the growth, the new
// value last (one write when both fall in one transaction). The shrinking
// totals are written in one transaction, of their own unless all that is
// left fits with them, so a Commit that fails has applied all of them or
// none: the broker retries a failed Change whole, and what it subtracts
// must not be subtracted twice. A group whose shrinking totals need more
// than one transaction (over 127 keys) is written as two groups of its
// Commits, in order. So unlike the bolt store, a failed Commit may have
// applied part of its Change, never in a way that lets a budget grant
// more, with one exception: a single Change whose shrinking totals need
// more than one transaction, cut short between them, is retried with
// those already applied subtracted again. The stored totals are then low
// by those corrections (the leader's memory is right), which matters if a
// failover loads them while their window or period lasts.
//
// A transaction whose answer is lost (a connection reset, a timeout while
// etcd elects a leader) may have been applied or not, or be applied later.
// When it holds totals, the Store finds out before failing the Commit:
// every write is also conditional on the revision of the epoch key, which
// the Store then writes (fenced), so that the lost transaction can no
// longer be applied after it, and reads one of the totals the transaction
// wrote: changed since the Store's previous write, it was applied, and the
// Commit goes on. Only if etcd cannot be reached for that either does the
// Commit fail not knowing, and the retry may add it twice.
//
// Totals and lease versions need the stored value; the Store keeps both
// in memory from Load (it is the only writer while it leads) and reads
// a key again only after a write whose outcome is unknown. A lease record
// at the Version already stored is not written again (a record's Version
// grows with every change), so closing a chunk writes only the leases not
// yet on record, not those settled since.
//
// Measured (BenchmarkCommit, three members on loopback, 100 committers):
// about 2,600 Commits/s, grouped. A settlement waits for one, so a
// cluster's settlements are bound by etcd's write latency, not its grants
// (BENCHMARKS.md).
package etcd
