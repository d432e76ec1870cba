// Package awspricing reads Amazon Bedrock's on-demand token prices from
// the AWS Price List Query API (service "pricing", GetProducts) and keys
// them as broker.Price by (Region, model id as called). It is the AWS price
// source; broker/pricefile is the offline one.
//
// # How AWS lists Bedrock's prices
//
// Verified means seen in AWS's own output (a GetProducts response quoted in
// aws/aws-cli issue 9567, June 2025) or in the SDK (aws-sdk-go-v2
// service/pricing v1.51.6); inferred means read from several independent
// public projects that parse the live price list (cost tools on GitHub:
// their parsers, test fixtures and Cost Explorer usage types agree), not
// checked against AWS from here, which has no AWS access.
//
//   - The API is served from us-east-1, eu-central-1 and ap-south-1 only
//     (APIRegions); any of them prices every Region. GetProducts takes a
//     service code, TERM_MATCH filters on attributes, MaxResults (at most
//     100) and NextToken; PriceList is a list of strings, each a whole
//     aws_v1 price document as JSON text (verified, SDK).
//   - A document is {"product": {"sku", "productFamily", "attributes":
//     {...}}, "serviceCode", "terms": {"OnDemand": {"<sku>.<offer term>":
//     {"priceDimensions": {"<sku>.<term>.<rate code>": {"unit",
//     "pricePerUnit": {"USD": "0.0080000000"}, "beginRange", "endRange",
//     "description"}}}}}, "version", "publicationDate"}; prices are decimal
//     strings (verified, aws-cli 9567).
//   - Service code AmazonBedrock carries Amazon's models and the
//     open-weight ones (Nova, Titan, Llama, Mistral, DeepSeek, and
//     Anthropic's pre-Marketplace Claude 2). Attributes: regionCode,
//     location, provider, model (a display name such as "Claude 2.0" or
//     "Llama 3.1 8B", not the model id), feature ("On-demand Inference",
//     "Batch Inference", Provisioned Throughput, ...), inferenceType
//     ("Input tokens", "Output tokens", ...), usagetype
//     ("USE1-Claude2.0-input-tokens", "USE1-Llama3-1-8B-input-tokens-batch");
//     unit "1K tokens" (verified, aws-cli 9567). The inferenceType of
//     prompt-cache rates ("Cache read input tokens", "Cache write input
//     tokens") is inferred; so are the service_tier attribute (flex,
//     priority) and latency-optimized rows, which are skipped.
//   - Service code AmazonBedrockFoundationModels carries the models sold
//     through AWS Marketplace: Claude 3 and later, Cohere, AI21, Writer
//     (inferred). The model is only in servicename, "Claude Sonnet 4.5
//     (Amazon Bedrock Edition)"; the rate is in the usagetype after
//     "MP:<prefix>_", in two styles: "USE1-MP:USE1_InputTokenCount-Units",
//     OutputTokenCount, CacheReadInputTokenCount, CacheWriteInputTokenCount,
//     with "_Global" for the global cross-Region profile's rate; and, for
//     newer models, "input_tokens_standard", "input_tokens_global_standard",
//     and so on. Prices are mostly per "1M tokens" (inferred). This is why
//     Claude 3+ seems to have "no output price" when only AmazonBedrock is
//     read (aws-cli 9567, boto3 4531).
//   - Cross-Region inference is priced at the source Region, at no extra
//     charge (Bedrock pricing page); for the Claude 4.5 models the in-Region
//     and geo profiles cost 10% more than the global profile, which is why
//     the global rates are listed apart (inferred from the same projects and
//     the pricing page).
//   - Batch rates are listed under feature "Batch Inference" (verified for
//     Llama, aws-cli 9567); for Marketplace models, usage types with a
//     "Batch" word (inferred).
//   - A third code, AmazonBedrockService, is reported by one project for
//     Claude global-profile rows; it is not read here (not confirmed).
//
// # The model
//
// For each configured Region an Inspect reads the catalogue
// (ListFoundationModels; ListInferenceProfiles of type SYSTEM_DEFINED) and
// every page of both service codes' products filtered on regionCode. Each
// document is read (document.go) and either sets one rate of one model, is
// skipped with a reason (not a token rate: images, provisioned throughput,
// flex or priority tiers, long-context or one-hour cache rates, or a model
// the catalogue does not have), or is an error.
//
// Products match catalogue models by display name (case and punctuation
// folded; the catalogue's trailing "Instruct" may be absent from the price
// list), and AmazonBedrock products by provider too. Prices are keyed:
//
//   - PriceKey{Region, model id}: the model's own (in-Region) rates;
//   - PriceKey{Region, geo profile id} ("us.", "eu.", "apac.", ...): the
//     same rates, since a cross-Region call is priced at its source Region;
//   - PriceKey{Region, "global." profile id}: the global rates where AWS
//     lists them, the model's own rates otherwise.
//
// Rates are USD per 1,000 tokens ("1M tokens" prices are divided by 1,000).
// A rate AWS does not list is absent from Price.Has, never zero: a model or
// profile without both input and output rates is in Result.Unpriced (with
// its partial Price, if any, in Result.Prices). Two products for the same
// rate with different prices keep the higher and add a note.
//
// # Errors
//
// A document of an unexpected shape (not JSON, no SKU, attributes missing,
// a service code or regionCode other than asked, a token rate with other
// than exactly one on-demand term and dimension, a USD price that is not a
// non-negative decimal, a unit other than 1K or 1M tokens) is a
// *ShapeError naming the service code, Region, SKU and JSON field. Any
// error fails the whole Inspect: the caller keeps its last good prices
// (the serve command does so at each refresh). API errors are worded by
// awsclient.Describe, naming pricing:GetProducts when access is denied.
package awspricing
