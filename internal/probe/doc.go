// Package probe finds the request rate at which Amazon Bedrock starts
// throttling one model, by raising load step by step through the Quota
// Broker, and estimates the effective limit from where it stopped.
//
// # Model
//
// A Plan is a list of steps, each a target rate in requests per minute held
// for a step duration. Every call is the same small Converse request (a fixed
// prompt and max_tokens), made through a bedrockruntime client that carries
// the quotaclient lease middleware at batch priority: the broker queues the
// probe behind real traffic and refuses it first, so a probe cannot starve
// anyone, and it can never send more than the broker's budget (quota x
// margin). Calls are open loop: one is started every 60/rate seconds
// whatever the earlier ones are doing (at most Concurrency at once; a tick
// that finds them all busy is counted as skipped), so slow answers do not
// lower the load the way a closed loop would.
//
// Each call ends as exactly one of: ok (Bedrock answered; its usage is
// counted), throttled (Bedrock's ThrottlingException), refused (the broker
// had no room within the wait), or error. The middleware retries nothing
// here (WithThrottleRetries(1)): each throttle is one Bedrock answer,
// counted once. It does report each throttle to the broker, on purpose: the
// broker lowers its adaptive ceiling for everyone, which is what should
// happen when Bedrock's real capacity is lower than its budget, and the
// learned ceiling is a second estimate of the limit.
//
// # Stopping
//
// After each step the probe stops when Bedrock throttled more than
// Threshold of the calls it answered, when the broker refused more than
// RefusedStop of the calls (the broker's budget or its adaptive ceiling is
// now the limit: going higher only measures the broker), when errors
// exceeded ErrorStop, when more than SkippedStop of the ticks found every
// call slot busy (the probe could not send its target), or after the last
// step.
//
// # The estimate
//
// Bedrock admits bursts: the simulator (and, as far as anyone can tell,
// Bedrock) holds up to a minute of capacity in reserve, so a step somewhat
// above the real limit can run clean for a while, and the first throttles
// show only once that reserve is spent. The rate of the last step under the
// threshold is therefore an upper bound that can be well above the
// sustained limit. Once Bedrock has throttled, the reserve is empty and what
// it still accepts is its sustained rate, so the probe also measures the
// successful rate of the stopping step after its first throttle. The
// estimate is the lower of the two (the safe side for setting a budget),
// and both are reported. When nothing throttled, the estimate is the last
// step's achieved rate, marked as a lower bound.
//
// Tokens per minute count what Bedrock charges against the quota: input
// tokens plus output tokens times the model's output burndown (from the
// broker's budget), from the usage Bedrock reported.
//
// # Time
//
// Pacing and step lengths use an injected Clock, so tests run the probe in
// the simulator's compressed time; Wall is the real one.
package probe
