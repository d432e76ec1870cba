// Package bedrocksim simulates one AWS account's Amazon Bedrock, speaking
// the real wire protocols so that unmodified aws-sdk-go-v2 clients and the
// AWS CLI work against it (BaseEndpoint / --endpoint-url, any credentials,
// any Region). It is the project's independent model of AWS, written from
// bedrock-facts.md; it imports nothing from the broker, so that agreement
// between the two is evidence rather than one implementation checked
// against itself.
//
// # Routes (one http.Handler)
//
//	POST /  X-Amz-Target: ServiceQuotasV20190624.<Op>    Service Quotas, awsJson1_1
//	POST /  X-Amz-Target: AWSPriceListService.<Op>       Price List Query API (GetProducts, DescribeServices), awsJson1_1
//	GET  /foundation-models[/{id}]                        Bedrock control plane, restJson1
//	GET  /inference-profiles[/{id}], /provisioned-model-throughputs, /provisioned-model-throughput/{name or ARN}
//	POST /model/{modelId}/invoke|converse|converse-stream|invoke-with-response-stream|count-tokens
//	                                                      bedrock-runtime, restJson1 + event streams
//	POST /service/GraniteServiceVersion20100801/operation/<Op>   CloudWatch, rpc-v2-cbor (Go SDK)
//	POST /  X-Amz-Target: GraniteServiceVersion20100801.<Op>     CloudWatch, awsJson1_0 (botocore, CLI v1)
//	POST /  form Action=<Op>&Version=2010-08-01                  CloudWatch, query (older clients)
//	GET  /_sim/stats, GET /_sim/scenario, POST /_sim/capacity   admin (tests, benchmarks)
//
// The Region of a request is read from its SigV4 credential scope, so one
// simulator serves every Region; a Region the scenario does not list gets
// its own copy of the default Region's quotas. Signatures are not checked.
//
// # Quotas and accounting
//
// A Scenario lists quota rows per Region. A runtime row enforces one metric
// (TPM, RPM or TPD) for one model in one or more scopes: on-demand (the bare
// model id), cross-region (a geo profile: us., eu., apac., ...) or global
// (global.). A request draws on every row whose (scope, model, metric)
// matches. Service Quotas reports each row's applied value; what is enforced
// is a hidden true capacity (TrueValue, else value x trueCapacityFraction),
// which the broker can only learn from throttles.
//
// A Provisioned Throughput of the scenario (provisionedModelThroughputs) is
// listed in its Region and serves calls whose modelId is its ARN while
// InService, from its own capacity (modelUnits x tokensPerMinutePerUnit
// per minute, a bucket like a row's), never from the quota rows: admission
// reserves input + 1.25 x cache_write + 0.1 x cache_read + max_tokens, and
// the charge settles to the same with the real output (no burndown). A
// test sets its status, or deletes it, with SetProvisionedStatus or POST
// /_sim/provisioned.
//
// Every row is a token bucket holding one period's capacity (a minute, or a
// day for TPD) that starts full and refills continuously at capacity/period.
// Bedrock's algorithm is not public; a bucket caps bursts at one period's
// quota and frees capacity smoothly, which is how throttles clear in
// practice. Invariants:
//
//   - Admission is all or nothing: a request is admitted only if every
//     matching bucket holds its charge (1 for RPM, the reservation for TPM
//     and TPD); a throttled or fault-injected request consumes nothing.
//   - The reservation is input + cache_write + max_tokens x burndown, with
//     max_tokens defaulting to the model's maximum output (64,000 for recent
//     Claude). Burndown is 5 for Claude 3.7 Sonnet and later Claude models, 1
//     otherwise, overridable per model; runtime.reserveOutputBurndown=false
//     reserves max_tokens x 1 instead.
//   - At completion the charge settles to input + cache_write + output x
//     burndown and the difference goes back to the buckets (never above
//     capacity). Cache reads are free. A stream cut by a mid-stream throttle
//     or a departed client settles on the output already sent.
//   - Input tokens are estimated as ceil(characters of text / 4)
//     (runtime.inputCharsPerToken), counting every string in the body except
//     structural keys (role, type, bytes, ...). CountTokens returns the same
//     estimate. Output tokens follow runtime.outputTokens, never above
//     max_tokens; a prompt containing "sim:output_tokens=N" forces N.
//   - Prompt caching: the text before a Converse cachePoint (or an Anthropic
//     cache_control marker), read in tools, system, messages order, is a
//     cache prefix when it is at least 1,024 tokens. The first request writes
//     it (cache_write), later ones within 5 simulated minutes read it.
//
// # Time
//
// Config.Now is the real clock (inject a fake one in tests) and Config.Speed
// compresses time: simulated time = start + (Now() - start) x Speed, so at
// speed 10 one simulated minute passes in six real seconds. Buckets refill,
// scenario changes fire, quota increases are decided and latencies elapse in
// simulated time, and CloudWatch datapoints carry simulated timestamps
// (query around Sim.Now(), which /_sim/stats reports). The simulator owns
// no goroutines: time-driven effects are applied lazily whenever a request
// or admin call observes the clock. Handlers wait (latency/Speed, real time)
// only while generating, and stop when the client goes away.
//
// # Errors
//
// Errors are what Bedrock sends: HTTP 429 with X-Amzn-ErrorType
// "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
// and {"message":"Too many tokens, please wait before trying again."} (or the
// requests / tokens-per-day messages); 503 ServiceUnavailableException, 429
// ModelNotReadyException and 408 ModelTimeoutException when injected; 400
// ValidationException for bad input, unknown ids, and bare ids of models
// served only through inference profiles. Streams fail after their HTTP 200
// with an event-stream exception message (:exception-type
// throttlingException).
//
// # CloudWatch
//
// Namespace AWS/Bedrock, dimension ModelId (the id as called, so a profile
// id for profile traffic), one-minute resolution: Invocations,
// InvocationThrottles, InvocationClientErrors, InvocationServerErrors,
// InvocationLatency, InputTokenCount, OutputTokenCount,
// EstimatedTPMQuotaUsage (the settled charge), CacheRead/WriteInputTokenCount.
// A query without dimensions sums every model.
//
// One implementation of the operations serves all three protocols (thin
// codecs in cwproto.go): GetMetricStatistics, GetMetricData, ListMetrics,
// PutMetricAlarm, DescribeAlarms, DeleteAlarms, DescribeAlarmHistory and
// ListTagsForResource. Statistics are SampleCount, Average, Sum, Minimum and
// Maximum; a percentile is an InvalidParameterValue error. GetMetricData
// evaluates arithmetic over query ids, SUM/AVG/MIN/MAX, FILL(x, number),
// METRICS() and SEARCH('{AWS/Bedrock,ModelId} MetricName="..."', 'Sum', 60);
// any other function is a ValidationError naming it, never an empty
// "Complete" result. Metric alarms are evaluated on the simulated metrics
// whenever a CloudWatch call of their Region observes the clock (the
// current, partial period counts), with AWS's state reasons and a history
// of state and configuration changes; their actions are never executed.
// A metric-math alarm (Metrics: MetricStat queries and expressions, exactly
// one with ReturnData true, returning one series) is checked and evaluated
// with GetMetricData's evaluator and reads back with its Metrics; SEARCH in
// an alarm and anomaly detection are ValidationErrors.
//
// InvokeModel bodies are checked against each model family's shape (Claude
// messages API, Titan, Nova, Llama, ...) before admission; a wrong shape is
// 400 ValidationException "Malformed input request: ...".
//
// # Prices
//
// The Price List Query API (pricing.go) lists, for every Region the
// scenario has quotas in, the on-demand, cache and batch token rates AWS
// publishes for the scenario's models (us-east-1 prices, November 2025,
// times pricing.regionFactor of the Region, 1 by default), in AWS's
// price-document shape: Amazon's and
// the open-weight models under service code AmazonBedrock (attributes
// model, feature, inferenceType; per 1K tokens), Anthropic's and Cohere's
// under AmazonBedrockFoundationModels (the model in servicename "...
// (Amazon Bedrock Edition)", the rate in the usagetype, per 1M tokens,
// global-profile rates apart for the Claude 4.5 models). GetProducts takes
// TERM_MATCH, EQUALS, CONTAINS, ANY_OF and NONE_OF filters and pages of up
// to 100; InjectPriceDocument adds a raw document for tests.
package bedrocksim
