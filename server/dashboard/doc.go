// Package dashboard draws the broker's usage history as SVG charts and
// serves them, inlined in one HTML page, on the HTTP listener that serves
// /metrics.
//
// A Chart is one budget over one Span (the last hour in 1-minute steps, or
// the last day in 15-minute steps). Its figure has two panels on one time
// axis:
//
//   - calls per minute, stacked: successful, throttled by Bedrock (settled
//     as throttled plus throttles reported outside leases), and other
//     errors, so the top of the stack is every call Bedrock saw
//     (broker.Stats.Calls). Refusals by the broker are drawn as a dashed
//     line, not a layer: a refused caller never reached Bedrock, so
//     stacking it would overstate the traffic Bedrock saw.
//   - tokens charged per minute (broker.Stats.WindowTokens) against the
//     effective TPM limit recorded with the history (the limit that bound
//     in each step, lowered by the adaptive ceiling when it engaged) and the
//     static limit (quota x margin, or the operator's override). A budget
//     with an RPM limit and no TPM limit is drawn as requests per minute
//     against RPM instead.
//
// Rates are per minute whatever the step: a day step's counts are divided
// by 15, so peaks within a step are averaged away (the hour view shows
// them). The last step is still in progress; its rate is over the minutes
// elapsed so far.
//
// The page charts budgets with traffic, most traffic first, at most
// Config.MaxCharts of them; the rest with traffic and every idle budget are
// listed by name without a chart, so a page of 150 budgets stays readable
// and its cost bounded. Config.MaxRenders bounds concurrent renders, so
// reloads cannot take the CPU the broker needs; at most Config.MaxQueued
// requests wait for one, each at most Config.QueueWait, and the others are
// answered 503 with Retry-After. Renders are cached under the filter as
// normalised for the render. The listener's timeouts are
// server.NewHTTPServer's.
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
