// Package broker is the domain of the Bedrock Quota Broker: budgets, leases,
// the accounting Bedrock applies to them, and the queue of callers waiting
// for capacity. It imports only the standard library; the bbolt store, the
// AWS quota source and the gRPC server are adapters around it.
//
// Vocabulary: a Budget (keyed by Region, Scope and model) has Limits (RPM,
// TPM, TPD, concurrency); a caller Acquires a Lease for one Bedrock call,
// and Completes it with the call's Usage; a request that cannot be served in
// time gets a refusal Decision with a retry delay. A chunk is capacity
// committed to the Store ahead of the grants drawn from it.
//
// # Accounting (bedrock-facts.md section 3)
//
// At grant a lease reserves one request and input + cache_write +
// max_output_tokens x burndown tokens, where an unset max_output_tokens
// means the model's maximum (DefaultMaxOutputTokens, or the budget's spec)
// and burndown is 5 for Claude 3.7 Sonnet and later Claude, 1 otherwise
// (DefaultBurndown, or the spec). The facts do not say whether Bedrock
// multiplies the reserved max_tokens by the burndown; we do, which never
// under-reserves. At completion the charge becomes input + cache_write +
// output x burndown (cache reads are free), and the difference goes back to
// the window slot the reservation came from. A throttled or cancelled call
// consumed nothing: its tokens and its request are returned. A call that
// failed otherwise is charged its reported usage and keeps its request. A
// lease that expires unsettled stays charged at its reservation and counts
// against its client; a late completion corrects the charge but is still
// answered with KindPrecondition.
//
// Settlement is idempotent in every state: an active lease is settled once;
// completing a completed lease, or an expired one already settled late
// (its Outcome is set), changes nothing, counts nothing and answers as the
// first did. Usage above the reservation is charged in full, and Returned
// is never negative.
//
// # Windows
//
// Each per-minute limit is a sliding window of 60 s in 250 ms slots, TPD a
// sliding window of 24 h in one-minute slots (see window). A grant must fit
// every limit: sum of the window + reservation <= limit. Unlike a token
// bucket, which lets a full bucket plus a minute of refill through in one
// minute (up to twice the quota), a sliding window guarantees that no
// interval of 60 s (or 24 h) ever holds more than the limit: Bedrock's quota
// as it reads, with no fixed-minute boundary burst. The price is that a burst
// that uses the whole minute early must wait for that minute to pass.
//
// Static limit = override if the operator set one, else quota x Margin
// (default 0.9, never rounded down to zero; concurrency is not scaled).
// Effective limit = the static one lowered by the adaptive ceiling learned
// from throttles (adaptive.go, persisted). The static limits are enforced on
// the sliding windows; an engaged ceiling paces grants at its rate instead
// (budget.go), so a cut never stalls every caller while the minute slides.
// A decrease restarts the pace owing the throttled call's reservation: the
// throttle has just shown Bedrock's bucket short of that much, so the next
// grant waits until the new ceiling has refilled it instead of going at
// once into the same empty bucket (which bench/route measured as a second
// throttle after every decrease).
// The adaptive Floor is a share of quota x margin (or of the static limit
// when lower or without a quota), never of an operator's override alone,
// which may be as large as int64.
//
// # Throttle evidence
//
// A throttle lowers a ceiling only with evidence and within a bound, since
// anyone who can call ReportThrottle could otherwise shrink every budget
// for everybody. Evidence: the reporter holds a lease on the budget, or
// held one within the last minute (a throttled settlement's lease is its
// own evidence while active or within a minute of its expiry); its grant
// came before the cut the throttle would cause. Bound: the throttles of one
// client cause at most three decreases per minute on a budget (enough for
// the deepening cuts of a real capacity drop). Throttles without evidence
// or beyond the bound are counted in counters and history and change no
// ceiling. Real throttles come from calls the broker granted, so they
// always carry evidence. The rest of the rule (one decrease per
// MinInterval, none for leases granted before the last decrease) is in
// adaptive.go.
// A limit of 0 means absent. A request whose reservation exceeds the
// effective TPM or TPD on its own can never fit, and fails at once with
// KindInvalid naming max_output_tokens.
//
// # Waiting
//
// A request that does not fit joins its budget's queue (queue.go). Between
// priorities the order is strict, except that a waiter ages one level per
// Config.Aging (default 30 s) so batch work is delayed, never starved.
// Within a priority, clients share the budget by start-time fair queuing on
// tokens, weighted by ClientPolicy.Weight: equal clients get equal token
// shares whatever their request sizes, and a flood from one client does not
// delay another. A client at its ClientPolicy.MaxConcurrent cap is skipped,
// not allowed to block others. The queue's operations cost O(log c) for c
// waiting clients (a heap of clients, a list per client), so a flood under
// thousands of self-declared names does not hold the broker's lock for
// long. Config.DailyReserve keeps a share of each TPD out of reach of a
// priority (batch, say), so it cannot spend the day's tokens early.
//
// Waiting costs memory, so it is bounded: a client may have
// ClientPolicy.MaxWaiters callers waiting (default 1,000) and the broker
// Config.MaxWaiters (default 20,000); a caller beyond either is refused at
// once, with a retry delay and LimitClientWaiters or LimitWaiters, before
// it costs a timer. A client's active leases are capped by
// ClientPolicy.MaxConcurrent (default 10,000), which renewals cannot
// escape; its waiters wait under the cap and, if the wait runs out, are
// refused with LimitClientLeases.
//
// The head of the queue is served first and is not overtaken, so a large
// request cannot be starved by small ones. The queue is re-examined whenever
// capacity can return: at a settlement, a cancellation, an expiry, a limit
// change, and at the moment the window frees enough for the head (a timer
// armed for exactly that time: there is no polling). A request that waited
// past its Wait gets a refusal with the time until it would fit and the
// limit that blocks it.
//
// # Routes
//
// A Route is an ordered list of Targets, each a budget and the model id to
// call in its Region (route.go). Acquire on a route grants on the first
// target with room now, or on the target an affinity key was last granted
// on while that one has room (a bounded LRU of key hashes, expiring with
// the prompt cache it stands for). When none has room the caller waits in
// every target's queue at once, with its client, weight and priority, and
// is granted on whichever serves it first; the same critical section takes
// it out of the other queues (routewait.go), so no second grant and no
// ghost waiter can follow. A caller with an affinity key whose target is
// full, when no target has room, first waits on that target alone for
// Config.AffinityWait (5 s, at most half its wait), so a busy route does
// not scatter conversations over whichever target frees first. It waits
// for its target even while another has room when that target will serve
// it within the grace (it is alone in the queue, held back only by the
// window's slide or the pace), and at the grace's end it waits on while
// its target serves it next within half of what is left of its wait: a
// prompt cache is worth seconds, not the caller's whole wait. So a
// conversation moves only when its target has no room soon, or is
// recovering from a throttle while another has room (counted apart,
// TargetCounters.SpillRecovering). A refusal names the target with the
// earliest retry. A throttle lowers one target's ceiling as before, and while
// that ceiling is engaged (below the static limit) the route tries the
// target after the others, the affinity key's included: the route prefers
// the others until it recovers.
//
// Routes are set all or nothing (SetRoutes) and are not persisted: they
// come from configuration (a RouteSource, such as a routes file), checked
// against the budgets when set, and replaced at once by a reload
// (UseRoutes; serve does it on SIGHUP). A reload that fails anywhere
// changes nothing. A route whose targets did not change stays as it was,
// counters and waiters included. A caller waiting on a route that changed
// waits on the route as it is now: it keeps its place on the targets the
// route kept, leaves those it dropped (even if they free first: a reload
// may drop a target for residency) and joins those it added; if its
// affinity key's target was dropped, its grace ends. A caller waiting on
// a route taken out of service is answered at once with KindNotFound.
// Affinity entries naming a target the route no longer has are ignored.
//
// Routes derived from discovery follow it: after every quota refresh the
// source is resolved again, and a derived route draws only on budgets not
// gone. A budget is gone when discovery made it (its spec names AWS
// quotas) and the last refresh did not report it; the budget itself stays,
// at its last spec (a listing may glitch), and a target a route names
// outright keeps it. Budgets an operator configured are never gone. If
// the routes cannot be resolved again (a derived route left with no
// target, say), the routes in service all stay as they were, nothing half
// applied: their targets still have budgets, at the last quotas known.
// The refresh stands, and its discovery status carries the error as a
// note (GetQuotaReport shows it) until a later refresh resolves them.
//
// # Provisioned Throughput
//
// A Provisioned Throughput is a budget of ScopeProvisioned keyed by its
// provisioned model ARN (Key.Model), which is also what a caller names and
// what a lease on it tells the caller to call; Spec.Serves is the base
// model it runs, which routes check their model against. Its capacity is
// its own (model units), not the model's quotas, and AWS publishes no
// tokens per minute per unit, so the operator states it: a budgets file
// entry (the ARN, serves, tpm), or a rate per model unit for the model
// (provisioned_rates), from which discovery makes a budget of units x rate
// for each InService throughput of the model. Nothing invents a rate, and
// discovery notes a throughput InService that has no budget. It is charged input + 1.25 x
// cache_write + 0.1 x cache_read + output, with no burndown, and costs
// nothing per token against money budgets (its units are paid by the
// hour). Discovery decides whether it serves: a budget whose throughput is
// not listed InService in a Region whose listing succeeded is retired
// (retire.go): it grants nothing, leaves every route in the same critical
// section (each route then keeps its other targets; one left with none
// refuses, naming why), its waiters fail at once, it leaves Budgets (so a
// routes file naming it no longer loads) and, once no lease of it runs,
// the report; it returns with its route targets when listed InService
// again. Retirement is not stored.
//
// # Durability: capacity escrow
//
// The invariant: after kill -9 and a restart, no 60-second window and no
// 24-hour window holds more grants or tokens than the limit, and no more
// leases run at once than the concurrency limit. Grants do not wait for the
// disk; capacity does (escrow.go).
//
// A busy budget commits a chunk before it grants from it: "from Start to End
// (Config.EscrowSpan, 1 s), at most N requests and T tokens are granted from
// chunk ID". The Store holds the record before any lease of it is answered;
// grants are then drawn from it in memory while now is in [Start, End] and
// it has room, still checked one by one against the windows. Run's escrow
// loop writes the next chunk in the background when the newest is half used
// or half way through its span, so a steady load never waits for a write.
// A chunk is sized to twice the last second's demand over its span, and
// never more than 1/32 of each per-minute limit nor the room left in any
// window. A budget whose chunk would be smaller than 4 grants (quiet, or a
// 50 RPM quota) commits each grant with its lease record before answering,
// as it always did; so does every grant while Run is not running or the
// escrow commit failed.
//
// Why a crash at any instant cannot over-grant: restore charges every chunk
// whose End is within a window in full, at its End (or at the restart time
// if that is earlier: every grant came before the crash). A grant from a
// chunk happened at or before its End, so any interval that holds it and a
// grant of the new life (which is later than the restart) also holds the
// chunk's End: the new life's window at that grant counted the whole chunk,
// which is at least what the old life granted from it. Placing the charge
// at Start would let the window free it up to a span early. The day window
// counts the chunk the same way: in Usage, written when the chunk closes,
// or, for a chunk never closed, in full by the first commit after restore.
// Grants committed one by one are charged as before, from their records.
//
// The sweep closes a chunk once its span has passed (all of them at
// shutdown): it writes the records of the chunk's leases still active (an
// ended lease's record was written when it ended), then one Change rewrites
// the chunk's record with what it granted and adds the per-minute usage of
// its leases. Lease records are thus checkpointed by the sweep, not before
// the answer, in transactions of at most 1,000 records, each copied under
// a short hold of Core.mu: a busy budget closes thousands a second, and in
// one transaction they made the next chunk's commit (and any settlement)
// queue behind them for up to a second under load, long enough for grants
// to run out of chunk. Any order of these writes is safe: until the closing
// record is durable the chunk counts in full, and a lease of it with no
// record is counted as a phantom (below). The chunk's record, not its
// leases', is what the invariant needs: one record per chunk, never per
// grant, is what a replicated store (etcd) would have to agree on.
//
// What a crash costs: the unused part of the chunks not yet closed, charged
// as if granted until they slide out of the minute: the chunk in use, the
// next one, and those that ended since the last sweep; at most 4 chunks, so
// at most 4/32 = 1/8 of a minute's RPM and TPM. Measured
// (TestCrashEscrowRandomKills, 2,400 RPM so chunks of at most 75 requests,
// kill -9 at random instants): 35 to 225 requests per crash, 1.5 to 9% of
// the minute. A chunk closed before the crash costs nothing beyond its
// grants (charged at its End rather than at each grant's time).
//
// Concurrency across a crash: a lease drawn from a chunk that no record
// names may still be running. Its id is the chunk's ID, its index and an
// HMAC of both keyed by the chunk's secret, so the restarted broker knows
// it from the chunk's record alone. Until the chunk's LeasesEnd (End + the
// lease TTL: such a lease was never renewed, since a renewal is committed
// before it is answered) each chunk counts Requests minus its recorded
// leases as running, bounded by the concurrency limit minus the known
// active leases (at the crash, all of them were within the limit). A
// client's MaxConcurrent does not count them: their clients are unknown, so
// whoever holds such an id may settle or renew it (the id is unguessable).
//
// A restart (or a failover's take-over) gives every active lease whose
// expiry falls within a grace of it (the lease TTL, at most 10 s) that grace
// from the restart: while no broker served, its holder could neither settle
// nor renew it, and a settlement retried across a failover arrives seconds
// after the new leader serves. Holding a lease longer only holds capacity
// longer, so the invariant is untouched; a lease that expired well before
// the restart (a long outage) expires as it would have, so the leases of
// holders that died with the broker hold concurrency for at most the grace.
//
// Settlements, renewals and expiries are committed as before: a settlement
// before its answer, so an acknowledged one survives a crash. (Making them
// asynchronous would keep the grant invariant, since a lost settlement only
// leaves a lease charged at its reservation, but would break the promise
// that an acknowledged settlement is on record.) A settlement of a lease
// the crash left unrecorded, or of one whose chunk counts in full, records
// its outcome and usage (statistics, history) and moves no window: its
// charge stays at the chunk's until the window slides. Should a commit fail
// after the in-memory state moved on, it is retried by Run, and until then
// the store errs on the side of charging. A grant whose own commit fails is
// undone and reported as KindUnavailable.
//
// # Caps and money
//
// Tenants have limits of their own (Caps, caps.go, spend.go), checked at
// reservation with the budget's and corrected at settlement. Rate caps per
// client, over all models together, on one model, or on one route (the
// grants made through the route, on whichever target, which also count
// against the other two; a route waiter blocked by its cap is blocked on
// every target, since each member checks the same window): RPM in requests, TPM
// and TPD in quota tokens as the budget charges them (input + cache_write +
// max_output_tokens x burndown at grant; the settlement's charge after), on
// sliding windows like the budgets', so no 60 s (or 24 h) ever holds more
// than the cap, under any concurrency: the check and the charge happen
// under Core.mu. Money budgets in USD per UTC day and per calendar month,
// per client and for the account: a reservation is priced at input and
// cache_write tokens at their rates plus max_output_tokens at the output
// rate (Price per 1,000 tokens, of the budget's Region and model; a cache
// rate not listed is priced at the input rate, never below it), in exact
// nano-dollars rounded up; the settlement prices the usage as Bedrock bills
// it (input, output, cache reads and writes each at its rate; nothing for a
// throttled or cancelled call; its usage for a call that failed). Spend
// counts in the day and month of the grant. A grant fits when spend so far
// (active leases at their reservation) plus its reservation is within every
// money budget that applies, so the budget is never passed by
// reservations; only a settlement above its reservation can pass it.
//
// A waiter whose client is at a cap, or under a money budget without room,
// is skipped by its budget's queue as a client at MaxConcurrent is: other
// clients are served, and within the client the order stays first come
// first served. It is looked at again when the cap's window frees enough
// (a timer, as for a budget) or a settlement of that client returns tokens
// or money on any budget. A refusal names the cap (LimitClientCap,
// LimitMoney, Decision.Cap) with the time until its window frees, or until
// the next day or month for money (a settlement may free it sooner). A
// reservation above a cap on its own fails at once with KindInvalid naming
// the cap.
//
// A model with no price: under a money budget (the client's or the
// account's) its calls are refused with KindPrecondition naming the model,
// since the broker cannot keep a budget it cannot count; with no money
// budget they are granted and reported as unpriced (calls counted, spend
// unknown), never priced at zero in silence.
//
// Durability. Every grant of a client with caps or a money budget of its
// own is committed one by one with its lease record, its spend (the
// reservation's price, per client, budget and day) and, for rate caps, its
// per-minute tokens (ClientUsageRecord), before it is answered; a
// settlement commits the corrections with the lease. After kill -9 the
// restore rebuilds the minute windows of caps from the lease records (a
// lease's record names its client, and its route if it had one), the day
// windows from the client usage (kept per route too),
// and spend from its records: exactly what was answered, as for a budget
// without escrow. Such grants never draw from an escrow chunk: a chunk's
// record names its budget, not the clients its leases went to, so a crash
// would leave leases no client's cap could count. The price is a commit per
// grant for those clients (group committed with the others; BENCHMARKS.md
// measured per-grant commit at 0.25-0.35x the empty RPC's rate at 50
// callers, escrow at 0.54-0.71x).
//
// The account's money budget keeps escrow, since it needs no client: a
// chunk is committed with a spend record of the most its grants can cost
// (its tokens at the highest of the model's rates, over the burndown when
// below 1), under the client "(escrowed at a crash)", and its close, which
// writes its leases' own spend, takes that record back in the same Change.
// A crash before the close leaves the bound, never less than the chunk's
// grants cost (settlements already written only lower it by what they
// returned); grants are checked against the account's budget one by one in
// memory as any other. Grants free of caps and money draw from chunks as
// before; their spend is written when the chunk closes, so a crash can lose
// up to a second of it in reports, never in a budget that is enforced.
//
// Spend is kept per client name only for named clients and the first
// 1,000 others (names are self-declared without tokens); the rest is spend
// of "(other clients)". It is kept 62 days. SetCaps replaces the caps (a
// reload): a cap that stays keeps its windows; a new one counts the leases
// the broker still remembers, and what is recorded from then on.
//
// # A cluster: failover and the paused leader
//
// Replicas share one Store in etcd (broker/etcd) and elect a leader; only
// the leader runs a Broker, opened from the Store when it wins, so a
// failover is a restart on another machine and the crash argument above
// carries over: the new leader loads every chunk and lease record the old
// one committed and charges them as restore does. The standbys are hot:
// each keeps a copy of the Store's records, following etcd's changes, so
// that the load on a win reads memory rather than all of etcd; the copy is
// taken only once it reflects a revision read after the win, when every
// write of the old leader (each fenced on a key deleted before the win) is
// in it, so the load is the same as a full read and the argument holds
// (broker/etcd, Standbys). What a cluster adds is a
// leader that does not know it was replaced: paused (GC, SIGSTOP, a VM
// migration) past its session's TTL while another took over, then resumed
// with its chunks in memory. It cannot over-grant, for three reasons:
//
//   - Every write is fenced: an etcd transaction conditional on the
//     election key the leader won still having the create revision it had.
//     Once its session's lease expires the key is gone, so nothing the old
//     leader sends afterwards is applied: no chunk, no per-grant lease
//     record, no renewal. A grant that needs a commit (a quiet budget's, or
//     any grant while no chunk is open) is undone and refused.
//   - Grants that need no commit come only from chunks committed under its
//     leadership, so the new leader, which loads after the old lease
//     expired, has them all and charges each in full at its End.
//   - No chunk ends after the leader's step-down deadline, computed on its
//     own clock: the send time of the last keep-alive etcd answered, plus
//     the TTL etcd granted, minus a margin. etcd renews a lease to TTL from
//     when it handles the keep-alive, which is after it was sent, so the
//     lease, and the old leadership, lasts at least until the deadline. A
//     chunk's grants all come at or before its End (draw checks the clock),
//     hence before the new leader's restore, which is what restore's
//     charge "at End, or at restore if earlier" needs: no grant of the old
//     leader falls after the restore that counted it. A grant drawn after a
//     resume finds every chunk ended. The serving replica also refuses
//     every call once its own clock passes the deadline, and steps down.
//
// The margin covers the rate difference of the two clocks over one TTL and
// the time to act on the deadline; it is not a bound on clock offset,
// which does not enter (each side measures only its own intervals).
//
// Leases in flight at a failover are the crash's: a lease drawn from a
// chunk is known to the new leader by its id (its chunk's record and
// HMAC), and counts against the concurrency limit until its LeasesEnd; a
// lease committed one by one has its record. History (Stats) is not in
// etcd: it is statistics, and a new leader's starts with its term.
//
// # Structure
//
// Open returns a Broker, which assembles four types, one per job, each with
// its own state and lock:
//
//   - Core is the hot centre: Acquire, Complete, Renew, ReportThrottle, the
//     queue, the windows and the adaptive ceilings, SetSpecs, and Run (the
//     sweep). Core.mu guards every budget, lease and waiter.
//   - Recorder keeps usage history (history.go), fed by events the core
//     hands it; it answers History and Activity.
//   - Refresher runs the quota source (discovery.go) and hands what it finds
//     to the core with SetSpecs, then tells it what was reported so the
//     routes can follow (specSetter, the two methods it needs of it);
//     RunRefresh is its loop.
//   - Operator carries out operator actions (SetOverride, ResetAdaptive) and
//     reports (Budgets, Report) through operatorCore, a narrow unexported
//     interface onto the core (admin.go).
//
// Broker declares no methods of its own; its method set is its parts', so
// one value serves cmd and the server, whose two interfaces (lease service,
// operator service) are each met by one or more parts.
//
// # History
//
// Every event on a budget is also counted per minute and client (Stats, in
// history.go): the core hands the Recorder an event under its lock (an
// append, nothing more), the Recorder folds events into per-minute Stats off
// that lock, and the sweep writes them once a second as deltas. History is
// statistics, not grants: a crash loses at most that second of it, and the
// grant invariant never reads it. Reports (Activity), the dashboard and
// quota-increase evidence (History) read it back, adding what is still in
// memory, so they are exact up to the call.
//
// History is bounded against callers: a budget keeps at most
// ClientsPerMinute clients by name in a minute (the rest are counted under
// OtherClients), so self-declared names cannot grow the file or a report's
// cost; one History call holds at most 50,000 points over all its series
// (budgets x points; about 8.4 MB) and is refused with KindInvalid on step
// beyond that; window charges are never shown below zero (a crash can lose
// a grant's second of history but keep its settlement's correction).
//
// # Concurrency
//
// Core.mu guards all budgets, leases and waiters; it is never held across a
// Store call or a wait. Every grant takes it, so what a grant does under it
// is kept to the bookkeeping that must be atomic (admit: the windows and
// queue, the lease's id and its places in the lease map and the expiry
// queue, an event for the Recorder): the waiter and the lease are allocated
// before it is taken (an allocation may be made to help the collector mark
// meanwhile), the answer and any commit come after, and BenchmarkGrantHold
// measures the hold. The only lock taken under it is Recorder.mu, held for
// an append or a slice swap; the Recorder folds and answers readers under
// its own Recorder.foldMu and never takes Core.mu. Refresher.mu guards the
// discovery status and source and is never held while discovering or
// calling the core. Core.routeSet.mu serializes resolving and setting
// routes (UseRoutes, a refresh's re-derivation); it is taken before
// Core.mu, never under it. Operator has no state. Core.Run owns the sweep loop and
// the escrow loop (which takes Core.mu to size and open chunks, never across
// their commit), Refresher.RunRefresh the refresh loop, each started and
// stopped by its caller's ctx; timers armed by the queue run on the injected Clock and take
// Core.mu. Nothing here reads the system time: the Clock is injected, so
// tests run on a fake one.
package broker
