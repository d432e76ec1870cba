package broker

// Price is what Bedrock charges for one model called from one Region, in US
// dollars per 1,000 tokens. It is shared by the price sources (AWS's Price
// List API, a prices file) and the tenants' money budgets. A rate that AWS
// does not list is absent from Has, never a silent zero: a model whose
// input or output price is unknown is reported as unpriced.
type Price struct {
	Input      float64 // USD per 1,000 input tokens
	Output     float64 // USD per 1,000 output tokens
	CacheRead  float64 // USD per 1,000 tokens read from the prompt cache
	CacheWrite float64 // USD per 1,000 tokens written to the prompt cache
	// BatchInput and BatchOutput are the batch inference rates, where listed.
	BatchInput  float64
	BatchOutput float64
	// Has names the rates that are known (RateInput|RateOutput|...).
	Has Rate
	// Source says where the price came from, for the report: "aws pricing
	// (AmazonBedrock, 2026-11-01)" or "prices.json".
	Source string
}

// Rate names one of a Price's rates.
type Rate uint8

const (
	RateInput Rate = 1 << iota
	RateOutput
	RateCacheRead
	RateCacheWrite
	RateBatchInput
	RateBatchOutput
)

// Priced reports whether p can price a call: both its input and its output
// rates are known.
func (p Price) Priced() bool { return p.Has&(RateInput|RateOutput) == RateInput|RateOutput }

// PriceKey names a price: a model id or an inference profile id, and the
// Region the call is made from. A geographic profile ("us.", "eu.", ...) is
// priced as the model in its source Region; a global profile ("global.")
// has rates of its own where AWS lists them. A budget's spend looks up its
// "global." id first for a global budget, then the model id.
type PriceKey struct {
	Region string
	Model  string
}
