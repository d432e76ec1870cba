// Package quotaname reads Amazon Bedrock Service Quotas names and maps them
// to the model ids and inference profiles they govern.
//
// # What a quota name looks like
//
// Service Quotas gives Bedrock quotas a stable code (L-DCADBC78) and a
// free-text name that AWS rewords over time. Runtime quotas read
//
//	<scope> [latency-optimized] [API words] <metric> for <Provider> <Model> [variant]
//
// for example "Cross-region model inference tokens per minute for Anthropic
// Claude 3.7 Sonnet V1". The same code was once "Cross-region InvokeModel
// tokens per minute for ...": the API words ("InvokeModel", "model
// inference") changed without a change of meaning, so they are dropped.
//
// # What Classify recognises
//
//   - Scope: "On-demand" (the bare model id), "Cross-region" (a geo
//     profile: us., eu., apac., ...), "Global cross-region" (global.), and
//     "Model invocation max tokens per day", an on-demand tokens-per-day
//     quota that "(doubled for cross-region calls)" also sets for the geo
//     profile. These three scopes are runtime budgets.
//   - Metric: requests per minute, tokens per minute, tokens per day,
//     concurrent requests (and "async concurrent requests").
//   - Variants kept apart because they have their own quota:
//     latency-optimized, a context length ("... V1 1M Context Length"), async.
//   - Provider and Model, as written. Runtime names always lead with the
//     provider, so the provider is the first word plus a corporate suffix
//     ("Mistral AI", "AI21 Labs", "Zeta Labs"); a short list of known
//     provider names only settles names of three words and rows that omit
//     the provider (batch rows say "for Claude 3 Haiku").
//   - Not runtime, each with a Reason: Provisioned Throughput (model units,
//     token units, with the context length of the unit), batch inference,
//     the bedrock-mantle endpoint's own input and output token quotas, and
//     everything else (agents, guardrails, knowledge bases, customization).
//
// Classification depends on the wording only. No list of models takes part,
// so a quota for a model or provider that does not exist yet classifies by
// its prefix like any other. Case and spacing do not matter.
//
// # How Match scores
//
// Match compares the quota's model with the catalogue (ListFoundationModels
// and ListInferenceProfiles) as sets of normalised tokens: lower case,
// "llama3" split into "llama 3", version numbers joined across "." and "-"
// ("3.7", "3-7" and the id's "3-7" all become "37"; "24.07" and "2407"
// agree), "+" spelled "plus", snapshot dates dropped, provider words
// removed ("Mistral Large" from Mistral AI is "large"). Each model is
// described twice, by its name and by its id, and the better description
// counts ("SDXL 1.0" and "stable-diffusion-xl-v1").
//
// A model is a candidate when every quota word is covered by its name, id
// or version (exactly, as an abbreviation like "embed" for "embeddings", as
// an acronym like "sd3" for "Stable Diffusion 3", or one edit apart with the
// same digits, for "8X7BB"), its version does not clash with an explicit
// "V2", and it adds no word the quota lacks except generic ones ("text",
// "g1", "instruct"). Candidates are then ranked by the numbers and sizes
// they add ("2402", "17b"), a version only assumed (a quota without "V2"
// means the first version), fuzzy matches, and generic words. The model is
// chosen among all the provider's models; only then is it checked to be
// callable the quota's way: ON_DEMAND for on-demand, a geo or global
// profile routing to it otherwise, whose ids are the result.
//
// # What is reported when it fails
//
// Match never drops a quota and never guesses. A MatchResult has IDs, or a
// Failure with a Reason: NotRuntime, UnknownProvider (listing the providers
// the catalogue has), NoCandidate (naming the closest model and what it
// lacks), Ambiguous (listing the tied models, e.g. anthropic.claude-v2 and
// anthropic.claude-v2:1 for "Claude V2"), NotOnDemand and NoProfile (the
// model was identified, ModelID is set, but cannot be called that way).
package quotaname
