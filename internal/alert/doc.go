// Package alert watches the broker's budget report and tells operators when
// a budget runs hot or Bedrock throttles it: a firing alert when a rule's
// condition starts to hold, one resolved alert when it stops.
//
// # Model
//
// An Alerter samples a Source (the broker's Report) every Config.Interval
// and keeps, per budget, the samples of the last Config.Window plus one
// older sample as the baseline. Rules turn the samples into conditions:
//
//   - utilisation: every sample for at least UtilisationFor has the budget's
//     Utilisation (its tightest limit, now) at or above Utilisation. The run
//     starts at the first sample at or above; one sample below ends it.
//   - throttle_rate: throttles / calls over the last Window, from the deltas
//     of the cumulative counters between the baseline and the newest sample,
//     above ThrottleRate with at least MinCalls calls in the window. Until
//     the Alerter has watched a budget for a whole Window, the window is as
//     long as it has watched.
//   - refusal_rate (off unless set): refusals / (grants + refusals) over the
//     Window, with the same minimum of MinCalls decisions.
//
// Throttles are Counters.Throttled (leases settled as throttled) plus
// Counters.ReportedThrottles (ReportThrottle: throttles seen outside a
// lease). Calls are Counters.Completed (every settled lease, whatever its
// outcome) plus ReportedThrottles. The two are disjoint as the Go client
// uses them: a ThrottlingException answer settles the lease as throttled
// and is not reported; a throttle in the middle of a stream settles the
// lease as an error and is reported, so it counts once as a throttle and
// twice as a call (the rate errs low, never paging on its own). A client
// that both settled a lease as throttled and reported the same throttle
// would be counted twice; the API says ReportThrottle is for throttles
// outside a lease. Expired leases are not calls: nobody knows how they
// ended.
//
// A rate rule fires only on calls >= MinCalls and rate > threshold, but
// resolves only when the rate is back at or below the threshold (no calls
// at all is a rate of 0): a traffic dip below MinCalls while throttles go
// on does not resolve it.
//
// # Deduplication
//
// Each (rule, budget) is firing or not. The Alerter emits one firing event
// when it starts and one resolved event when it ends; with Config.Repeat
// set, a still-firing alert is emitted again (Repeat true) every Repeat.
// The state is in memory only: after a restart the broker's counters start
// from zero and every condition is re-learned, so an alert that was firing
// fires again once its condition holds for its full duration, and one that
// ended during the restart never gets its resolved event.
//
// # Sinks
//
// Events go to Sinks, whose Notify must not block the evaluation: LogSink
// writes them to a slog.Logger (warn when firing, info when resolved);
// Webhook POSTs them as JSON from its own worker goroutine with a bounded
// queue (dropping the oldest when full), a timeout per attempt, and retries
// with exponential backoff on connection errors, 429 and 5xx.
//
// # Goroutines
//
// Alerter.Run and Webhook.Run are the only goroutines; each runs until its
// ctx ends and returns when it has stopped.
package alert
