// Package awsquota discovers an AWS account's Amazon Bedrock quotas and
// turns them into broker budgets. It is the broker.QuotaSource for AWS.
//
// # The model
//
// For every configured Region a discovery reads two things:
//
//   - the quotas: Service Quotas' ListServiceQuotas (the account's applied
//     values) and ListAWSDefaultServiceQuotas (AWS's defaults), service code
//     "bedrock", every page of both. A listing goes on while NextToken is set,
//     across empty pages (AWS sends them); a token repeated back to back, or
//     more than 1,000 pages, ends it with an error rather than a loop. The two
//     are merged by quota code, the stable key (names are reworded over
//     time): the applied value wins, the default is kept beside it, and a
//     code listed only among the defaults is still a quota AWS enforces, with
//     source "default".
//   - the catalogue: Bedrock's ListFoundationModels (which the API does not
//     paginate) and ListInferenceProfiles of type SYSTEM_DEFINED (every page).
//     Application profiles are the account's own copies of a system profile
//     or model and draw on that quota, so they are not matched against.
//
// Each quota name is read by quotaname.Classify and, when it is a runtime
// quota, matched to a model and its profiles by quotaname.Match. The result
// is one broker.Spec per (Region, scope, base model id) with the RPM, TPM,
// TPD and concurrency its quotas set, Source "aws:service-quotas:REGION" and
// SourceTime the start of the discovery. Every quota row ends up either in
// a Spec (Quota.Runtime) or in Discovery.Skipped with a reason; none is
// dropped, and the tests check this for every listing they make.
//
// # Mapping rules
//
//   - On-demand quotas key the budget by the model id.
//   - Cross-region (geo) and global quotas key it by the base model id too,
//     with scope ScopeCrossRegion or ScopeGlobal: the broker resolves "us.x",
//     "eu.x" and "global.x" to (scope, x) itself (broker.ParseModelID). One
//     cross-region quota covers all the geo profiles of its model in that
//     Region; their ids are Quota.ModelIDs.
//   - "Model invocation max tokens per day for X (doubled for cross-region
//     calls)" sets TPD V for on-demand X and 2V for cross-region X, as the
//     name says. Without the note the facts are silent; this package applies
//     V to both scopes, because the rows that lack it (June 2025: Claude
//     Sonnet 4, Claude Opus 4, Nova Premier) name models callable only
//     through profiles, and a tokens-per-day quota that governs nothing would
//     be odd. A half that cannot be called (no ON_DEMAND, no geo profile) is
//     not made into a budget and the quota's Reason says which half.
//   - Global quotas ("Global cross-region ... tokens per day" included) set
//     their own limit on the global scope only.
//   - Concurrency quotas ("On-demand InvokeModel concurrent requests") set
//     Limits.Concurrency.
//   - Two quotas setting the same limit of the same budget (two wordings
//     matched to one model): the lower value is used, and the other quota is
//     skipped with a reason naming the winner. The lower is the one AWS can
//     be relied on to honour.
//
// # What is not a budget
//
// Skipped, each with a reason: quotas that are not runtime quotas
// (Provisioned Throughput model units, batch inference, the bedrock-mantle
// endpoint, agents, guardrails and other features; quotaname says which);
// latency-optimized variants and context-length variants ("... 1M Context
// Length"), which are separate quotas drawn only by calls that ask for the
// variant, so charging ordinary calls to them would be wrong; async
// concurrency (StartAsyncInvoke jobs); quotas whose model is unknown,
// ambiguous or not callable that way (quotaname's reason, verbatim); and
// quotas whose value is 0. The broker's domain reads a 0 limit as "absent",
// so a budget from a 0 quota would be unlimited, the opposite of what AWS
// means ("none allowed"); such quotas are reported as "value is 0: AWS
// allows none; not brokered" and callers of that model get no budget.
//
// # Provisioned Throughputs
//
// ListProvisionedModelThroughputs is read in every Region; the Regions
// whose listing succeeded are named in Discovery.ProvisionedRegions, so the
// broker retires the budgets of throughputs no longer InService there and
// of no other Region (a denied listing is a note). AWS publishes no rate
// per model unit; with Config.ProvisionedRates (tokens per minute per
// unit, by base model, from the operator) each InService throughput of a
// rated model becomes a budget of units x rate keyed by its ARN, so a
// throughput resized or added is sized at the next refresh.
//
// # Errors
//
// A discovery fails as a whole when any Region fails: broker.Refresh then
// keeps the last known budgets, which beats a discovery silently missing a
// Region. AWS API errors are reworded by code, naming the Region, the
// operation and, for AccessDenied, the IAM action the broker's role lacks;
// they still unwrap to the SDK's typed error. Throttled calls
// (TooManyRequestsException) are retried by the SDK's standard retryer; what
// reaches here has exhausted it, and the broker's refresh loop backs off
// between whole discoveries. Credentials are looked for before the first
// call, so a machine without any fails with ErrNoCredentials at once. One
// discovery is bounded by Config.Timeout.
//
// # Offline
//
// FromFiles builds the same Result from saved AWS CLI output (list-service-
// quotas, and optionally list-foundation-models and list-inference-
// profiles). Without a models file nothing is matched: every runtime quota
// is still classified and listed, with reason "no catalogue given". Saved
// files carry applied values only, so DefaultValue is null there.
//
// The SDK configuration, the HTTP client's body workaround and the wording
// of AWS errors come from awsclient, which every AWS adapter shares.
package awsquota
