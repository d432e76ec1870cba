// Package dashboard draws the broker's usage history as SVG charts and
// serves them, inlined in one HTML page, on the HTTP listener that serves
// /metrics.
//
// The page opens with a summary table of every budget with traffic, those
// that need attention first: alerts firing (when Config.Alerts is set),
// then Bedrock's throttle rate over the shortest span shown, the broker's
// refusal rate, callers waiting now, and utilisation now, each compared
// only when the ones before tie. The charts follow in the same order.
//
// The table's figures come in two kinds, labelled as such, because they
// measure different things and disagree by design:
//
//   - "now" is the broker's sliding minute as it grants
//     (broker.BudgetReport.Usage against the effective limits): calls in
//     flight count at their reservation (input + max_tokens) until they
//     settle. The utilisation in each chart's line names the limit it is
//     of (the tightest of RPM, TPM, TPD and concurrency), so a budget near
//     its RPM limit no longer reads as near its TPM limit.
//   - "busiest minute" is the highest step of the shortest span's chart,
//     against the limit recorded in that step: what the charts show.
//
// The two differ when callers reserve more than they use (a reservation
// is settled down to the real usage, so the charts show less than the
// sliding minute did while the calls were in flight), because a sliding
// minute straddles two chart minutes, and because the last chart step is
// still in progress.
//
// A Chart is one budget over one Span (the last hour in 1-minute steps, or
// the last day in 15-minute steps). Its figure has two panels on one time
// axis, in UTC (the axis says so), each with its legend in a strip under
// it, outside the data:
//
//   - calls per minute, stacked: successful, throttled by Bedrock (settled
//     as throttled plus throttles reported outside leases), and other
//     errors, so the top of the stack is every call Bedrock saw
//     (broker.Stats.Calls). Refusals by the broker are an area below the
//     axis, not a layer: a refused caller never reached Bedrock, so
//     stacking it would overstate the traffic Bedrock saw. When the lower
//     panel is tokens, this panel carries the RPM limits.
//   - tokens charged per minute (broker.Stats.WindowTokens) against the
//     effective TPM limit recorded with the history (the limit that bound
//     in each step, lowered by the adaptive ceiling when it engaged) and the
//     static limit (quota x margin, or the operator's override). A budget
//     with an RPM limit and no TPM limit is drawn as requests per minute
//     against RPM instead.
//
// A static limit more than 2.5 times above the rest of its panel is named
// in the legend ("off the scale") rather than drawn: drawn, it would
// flatten the traffic and the effective limit into the axis, which is
// what happens when an adaptive ceiling engages far below the quota.
//
// Rates are per minute whatever the step: a day step's counts are divided
// by 15, so peaks within a step are averaged away (the hour view shows
// them). The last step is still in progress; its rate is over the minutes
// elapsed so far.
//
// The page charts budgets with traffic, in the table's order, at most
// Config.MaxCharts of them; the rest with traffic are in the table and
// listed by name without a chart, and every idle budget is listed by name,
// so a page of 150 budgets stays readable and its cost bounded.
// Config.MaxRenders bounds concurrent renders, so reloads cannot take the
// CPU the broker needs; at most Config.MaxQueued requests wait for one,
// each at most Config.QueueWait, and the others are answered 503 with
// Retry-After. Renders are cached under the filter as normalised for the
// render. The listener's timeouts are server.NewHTTPServer's.
//
// Why gonum.org/v1/plot: it is a maintained, pure-Go plotting library with
// an SVG back end (vg/vgsvg) that writes self-contained SVG on the server,
// so the page needs no JavaScript and no network. go-echarts and similar
// libraries render in the browser with JavaScript fetched from a CDN that
// an operator's network (and our CI) often cannot reach; hand-written SVG
// would mean re-implementing axes, ticks, legends and text layout.
// gonum/plot escapes the text it writes into the SVG, so a model name
// cannot inject markup into the page.
package dashboard
