// Package increase builds the evidence AWS asks for with a Bedrock quota
// increase request, from the Quota Broker's usage history, sets it next to
// the quota as Service Quotas holds it, and files the request when asked.
//
// # Model
//
// Evidence is a budget's per-minute use over a period: steady (median), p95
// and peak tokens and requests per minute, tokens per call, throttles and
// refusals. A minute counts when the budget granted or refused in it
// (settlements alone, of calls granted the minute before, charge nothing to
// it). Demand in a minute is what was charged to the window plus what was
// refused: each refusal counts one request and, for TPM, the average charge
// of a granted request. A caller that retries after a refusal counts each
// refusal, so demand is an upper estimate when callers retry quickly.
//
// The value to ask for, unless the caller names one, is the peak demand
// divided by the broker's margin (the broker hands out quota x margin, so
// that is the quota that would have served the peak), rounded up to two
// significant digits.
//
// # Invariants
//
// Nothing is filed unless Options.File is set, and never a request that is
// not an increase of an adjustable quota: the Report then says why in
// Problem. The requests already made for the quota are always listed.
//
// The evidence is read from the broker through the small Broker interface
// (the generated gRPC client satisfies it); Service Quotas is reached with
// the AWS SDK, through awsquota's configuration and body workaround.
package increase
