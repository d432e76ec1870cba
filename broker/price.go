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

// PriceKey names a price: the model id as called (a foundation model or an
// inference profile id) and the Region the call is made from. Cross-Region
// profiles are priced at the source Region's price, so Region is the
// Region of the budget, not the Region that serves the call.
type PriceKey struct {
	Region string
	Model  string
}

// SetPrices replaces the prices the core knows, as a price source (AWS's
// Price List, a prices file) read them. The map is the caller's no more:
// it is stored as given, so the caller must not change it afterwards.
func (c *Core) SetPrices(prices map[PriceKey]Price) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.prices = prices
}
