// Package awsmetrics reads what Amazon CloudWatch counted for a broker
// budget, so that usage history can show the traffic that did not go
// through the broker next to the traffic that did.
//
// # The model
//
// Bedrock publishes per-minute metrics in the AWS/Bedrock namespace with one
// dimension, ModelId, whose value is the id the caller invoked: the bare
// model id for on-demand calls, "us.<model>" (or another geography's
// prefix) for cross-region calls, "global.<model>" for global ones. A budget
// (Region, scope, model) is therefore the sum of the ModelId values that
// resolve to it; ModelIDs lists them (every known geography for a
// cross-region budget: a geography that cannot be called from the Region
// simply has no data). A Reader asks GetMetricData, in the budget's Region,
// for the Sum of Invocations, InvocationThrottles, InputTokenCount,
// OutputTokenCount and EstimatedTPMQuotaUsage of each id at the requested
// period, and adds the ids up per step.
//
// Invocations counts the calls Bedrock served (throttled ones are
// InvocationThrottles), stamped at the minute the call ended. CloudWatch
// publishes a minute a few minutes late and keeps one-minute data for 15
// days; older steps read as zero.
//
// # Cache
//
// The same span is often asked for again (a dashboard refreshing, an
// operator re-running grpcurl), and GetMetricData is billed per metric
// read, so answers are cached for Config.CacheTTL (default 30 s), keyed by
// budget, start, step and length; at most cacheMax spans are kept.
//
// # Errors
//
// AWS errors are worded by awsclient.Describe: AccessDenied names the IAM
// action cloudwatch:GetMetricData. A Reader holds no goroutines.
package awsmetrics
