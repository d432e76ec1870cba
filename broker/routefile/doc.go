// Package routefile reads spillover routes from a JSON file (quota-broker
// serve --routes FILE):
//
//	{"routes": [
//	  {"name": "sonnet-us", "model": "anthropic.claude-sonnet-4-5-20250929-v1:0",
//	   "targets": [
//	     {"region": "us-east-1", "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0"},
//	     {"region": "us-west-2", "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0"},
//	     {"route": "sonnet-eu"}
//	   ]},
//	  {"name": "sonnet-us-derived", "model": "anthropic.claude-sonnet-4-5-20250929-v1:0",
//	   "geography": "us", "regions": ["us-east-1", "us-east-2", "us-west-2"],
//	   "on_demand": false, "allow_global": false}
//	]}
//
// A route names the base model it serves ("model") and its targets in order
// of preference: a Region and what to call there (a model id, a geo or
// global inference profile id, or a provisioned model ARN,
// arn:aws:bedrock:REGION:ACCOUNT:provisioned-model/ID, whose Region must be
// the target's), or {"route": NAME} for another route's targets in its
// order. A Provisioned Throughput's capacity is its own, so a route may put
// it first and spill to on-demand or profiles when it is full; whether it
// runs the route's model is checked against its budget's "serves" when the
// routes are set. Or it is derived from the budgets the broker has
// (discovered or configured) under a residency rule: the geography's
// profile in each of "regions" (default: every Region of the geography that
// has one, in name order), then, with "on_demand", the model itself in each
// of those Regions, then, with "allow_global", the global profile in each.
//
// A broker resolves the file again after each quota refresh
// (broker.RouteSource): a derived route then draws only on the budgets
// discovery still reports.
//
// Residency: a global profile may run a call anywhere, so no route has a
// global target unless it says "allow_global": true; and a geo profile
// serves only from source Regions of its geography (eu.* from eu-*, ...),
// so "eu.x" in us-east-1 is an error rather than a target that can never
// be called.
//
// Everything is checked when the file is loaded, against the budgets, and
// nothing is applied unless all of it is right: unknown fields, a target
// with no budget, one that serves another model than its route's, the same
// budget twice in a route, a route that includes itself (a cycle), more
// than broker.MaxRouteTargets targets. Every error names the file, the line
// and the field.
package routefile
