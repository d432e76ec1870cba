package bedrocksim

import (
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// The AWS Price List Query API ("pricing") speaks awsJson1_1: POST / with
// X-Amz-Target AWSPriceListService.<Op>. GetProducts answers with PriceList,
// a list of strings, each one product's whole price document as JSON text
// (product.attributes, terms.OnDemand.<offer>.priceDimensions.<rate>
// .pricePerUnit.USD as a decimal string, unit). The simulator lists the
// on-demand and batch token rates of the models its scenario simulates, in
// every Region the scenario lists quotas for, under the two service codes
// that carry Bedrock's models (see pricingCatalogue).

const (
	pricingTargetPrefix = "AWSPriceListService."
	// The offer term and rate codes every OnDemand price carries; they
	// are the same constants across AWS's price lists.
	onDemandTermCode = "JRTCKXETXF"
	onDemandRateCode = "6YS6EN2CT7"
	priceListVersion = "20251101000000"
	pricePublication = "2025-11-01T00:00:00Z"
	priceEffective   = "2025-11-01T00:00:00Z"

	// ServiceCodeBedrock carries Amazon's own models and the open-weight
	// ones (Nova, Titan, Llama, Mistral, DeepSeek): attributes model,
	// feature, inferenceType; prices per 1K tokens.
	ServiceCodeBedrock = "AmazonBedrock"
	// ServiceCodeFoundationModels carries the models sold through AWS
	// Marketplace (Claude, Cohere): the model is only in servicename
	// ("Claude Sonnet 4.5 (Amazon Bedrock Edition)"), the rate in the
	// usagetype ("USE1-MP:USE1_InputTokenCount-Units"); prices per 1M.
	ServiceCodeFoundationModels = "AmazonBedrockFoundationModels"
)

// modelPrice is a model's published on-demand price in us-east-1, USD per
// 1,000 tokens (https://aws.amazon.com/bedrock/pricing/, read November
// 2025). Zero means not listed. Global is the global cross-Region
// profile's rate where AWS prices it apart (Claude 4.5 models: the
// in-Region and geo rates are 10% above it).
type modelPrice struct {
	in, out, cacheRead, cacheWrite, batchIn, batchOut float64
	global                                            *modelPrice
	// snake names the rates in the newer Marketplace usagetype style
	// ("input_tokens_standard") instead of "InputTokenCount"; AWS lists
	// both styles, model by model.
	snake bool
}

// scaled returns p with every rate times f.
func (p modelPrice) scaled(f float64) modelPrice {
	q := p
	q.in, q.out, q.cacheRead, q.cacheWrite, q.batchIn, q.batchOut = p.in*f, p.out*f, p.cacheRead*f, p.cacheWrite*f, p.batchIn*f, p.batchOut*f
	if p.global != nil {
		g := p.global.scaled(f)
		q.global = &g
	}
	return q
}

// publishedPrices are the token prices of the default scenario's models.
// The embedding models list input only, as AWS does.
var publishedPrices = map[string]modelPrice{
	"anthropic.claude-3-haiku-20240307-v1:0":    {in: 0.00025, out: 0.00125, batchIn: 0.000125, batchOut: 0.000625},
	"anthropic.claude-3-sonnet-20240229-v1:0":   {in: 0.003, out: 0.015},
	"anthropic.claude-3-opus-20240229-v1:0":     {in: 0.015, out: 0.075},
	"anthropic.claude-3-5-sonnet-20240620-v1:0": {in: 0.003, out: 0.015, batchIn: 0.0015, batchOut: 0.0075},
	"anthropic.claude-3-5-sonnet-20241022-v2:0": {in: 0.003, out: 0.015, batchIn: 0.0015, batchOut: 0.0075},
	"anthropic.claude-3-5-haiku-20241022-v1:0":  {in: 0.0008, out: 0.004, cacheRead: 0.00008, cacheWrite: 0.001, batchIn: 0.0004, batchOut: 0.002},
	"anthropic.claude-3-7-sonnet-20250219-v1:0": {in: 0.003, out: 0.015, cacheRead: 0.0003, cacheWrite: 0.00375},
	"anthropic.claude-sonnet-4-20250514-v1:0":   {in: 0.003, out: 0.015, cacheRead: 0.0003, cacheWrite: 0.00375, batchIn: 0.0015, batchOut: 0.0075},
	"anthropic.claude-opus-4-20250514-v1:0":     {in: 0.015, out: 0.075, cacheRead: 0.0015, cacheWrite: 0.01875},
	"anthropic.claude-opus-4-1-20250805-v1:0":   {in: 0.015, out: 0.075, cacheRead: 0.0015, cacheWrite: 0.01875},
	"anthropic.claude-sonnet-4-5-20250929-v1:0": {in: 0.0033, out: 0.0165, cacheRead: 0.00033, cacheWrite: 0.004125,
		global: &modelPrice{in: 0.003, out: 0.015, cacheRead: 0.0003, cacheWrite: 0.00375}},
	"anthropic.claude-haiku-4-5-20251001-v1:0": {in: 0.0011, out: 0.0055, cacheRead: 0.00011, cacheWrite: 0.001375,
		global: &modelPrice{in: 0.001, out: 0.005, cacheRead: 0.0001, cacheWrite: 0.00125}},
	"anthropic.claude-opus-4-5-20251101-v1:0": {in: 0.0055, out: 0.0275, cacheRead: 0.00055, cacheWrite: 0.006875, snake: true,
		global: &modelPrice{in: 0.005, out: 0.025, cacheRead: 0.0005, cacheWrite: 0.00625}},
	"amazon.nova-micro-v1:0":                 {in: 0.000035, out: 0.00014, cacheRead: 0.00000875, batchIn: 0.0000175, batchOut: 0.00007},
	"amazon.nova-lite-v1:0":                  {in: 0.00006, out: 0.00024, cacheRead: 0.000015, batchIn: 0.00003, batchOut: 0.00012},
	"amazon.nova-pro-v1:0":                   {in: 0.0008, out: 0.0032, cacheRead: 0.0002, batchIn: 0.0004, batchOut: 0.0016},
	"amazon.nova-premier-v1:0":               {in: 0.0025, out: 0.0125, batchIn: 0.00125, batchOut: 0.00625},
	"amazon.titan-text-express-v1":           {in: 0.0002, out: 0.0006},
	"amazon.titan-embed-text-v2:0":           {in: 0.00002},
	"amazon.titan-embed-text-v1":             {in: 0.0001},
	"meta.llama3-1-8b-instruct-v1:0":         {in: 0.00022, out: 0.00022, batchIn: 0.00011, batchOut: 0.00011},
	"meta.llama3-1-70b-instruct-v1:0":        {in: 0.00072, out: 0.00072, batchIn: 0.00036, batchOut: 0.00036},
	"meta.llama3-1-405b-instruct-v1:0":       {in: 0.0024, out: 0.0024, batchIn: 0.0012, batchOut: 0.0012},
	"meta.llama3-2-1b-instruct-v1:0":         {in: 0.0001, out: 0.0001},
	"meta.llama3-2-3b-instruct-v1:0":         {in: 0.00015, out: 0.00015},
	"meta.llama3-3-70b-instruct-v1:0":        {in: 0.00072, out: 0.00072, batchIn: 0.00036, batchOut: 0.00036},
	"meta.llama4-maverick-17b-instruct-v1:0": {in: 0.00024, out: 0.00097, batchIn: 0.00012, batchOut: 0.000485},
	"meta.llama4-scout-17b-instruct-v1:0":    {in: 0.00017, out: 0.00066, batchIn: 0.000085, batchOut: 0.00033},
	"mistral.mistral-7b-instruct-v0:2":       {in: 0.00015, out: 0.0002},
	"mistral.mixtral-8x7b-instruct-v0:1":     {in: 0.00045, out: 0.0007},
	"mistral.mistral-large-2402-v1:0":        {in: 0.004, out: 0.012},
	"mistral.mistral-large-2407-v1:0":        {in: 0.002, out: 0.006},
	"mistral.mistral-small-2402-v1:0":        {in: 0.001, out: 0.003},
	"mistral.pixtral-large-2502-v1:0":        {in: 0.002, out: 0.006},
	"cohere.command-r-v1:0":                  {in: 0.0005, out: 0.0015},
	"cohere.command-r-plus-v1:0":             {in: 0.003, out: 0.015},
	"cohere.embed-english-v3":                {in: 0.0001},
	"cohere.embed-multilingual-v3":           {in: 0.0001},
	"deepseek.r1-v1:0":                       {in: 0.00135, out: 0.0054},
}

// marketplaceProviders are sold through AWS Marketplace and so priced
// under ServiceCodeFoundationModels.
var marketplaceProviders = map[string]bool{"Anthropic": true, "Cohere": true}

// billingPrefix is the Region's prefix in usagetypes. It is not derived
// from the Region's name (ap-south-1 is APS3), so Regions missing here get
// an upper-case stand-in that no client should rely on.
var billingPrefix = map[string]string{
	"us-east-1": "USE1", "us-east-2": "USE2", "us-west-1": "USW1", "us-west-2": "USW2",
	"ca-central-1": "CAN1", "eu-central-1": "EUC1", "eu-west-1": "EUW1", "eu-west-2": "EUW2",
	"eu-west-3": "EUW3", "eu-north-1": "EUN1", "ap-northeast-1": "APN1", "ap-northeast-2": "APN2",
	"ap-northeast-3": "APN3", "ap-southeast-1": "APS1", "ap-southeast-2": "APS2", "ap-south-1": "APS3",
	"sa-east-1": "SAE1",
}

var regionLocation = map[string]string{
	"us-east-1": "US East (N. Virginia)", "us-east-2": "US East (Ohio)", "us-west-1": "US West (N. California)",
	"us-west-2": "US West (Oregon)", "ca-central-1": "Canada (Central)", "eu-central-1": "EU (Frankfurt)",
	"eu-west-1": "EU (Ireland)", "eu-west-2": "EU (London)", "eu-west-3": "EU (Paris)", "eu-north-1": "EU (Stockholm)",
	"ap-northeast-1": "Asia Pacific (Tokyo)", "ap-northeast-2": "Asia Pacific (Seoul)", "ap-northeast-3": "Asia Pacific (Osaka)",
	"ap-southeast-1": "Asia Pacific (Singapore)", "ap-southeast-2": "Asia Pacific (Sydney)", "ap-south-1": "Asia Pacific (Mumbai)",
	"sa-east-1": "South America (Sao Paulo)",
}

// priceProduct is one product of the price list before it is encoded.
type priceProduct struct {
	serviceCode string
	attrs       map[string]string
	unit        string
	usd         float64 // per unit
	desc        string
}

// pricingCatalogue builds every product the simulator lists, in a stable
// order (service code, Region, model, rate), so pages are repeatable.
func (s *Sim) pricingCatalogue() map[string][]priceProduct {
	regions := make([]string, 0, len(s.sc.Quotas))
	for r := range s.sc.Quotas {
		regions = append(regions, r)
	}
	slices.Sort(regions)
	out := map[string][]priceProduct{}
	for _, region := range regions {
		for _, m := range s.sc.Models {
			p, ok := publishedPrices[m.ID]
			if !ok {
				continue
			}
			if f, ok := s.sc.Pricing.RegionFactor[region]; ok {
				p = p.scaled(f)
			}
			if marketplaceProviders[m.Provider] {
				out[ServiceCodeFoundationModels] = append(out[ServiceCodeFoundationModels], marketplaceProducts(region, m, p)...)
			} else {
				out[ServiceCodeBedrock] = append(out[ServiceCodeBedrock], bedrockProducts(region, m, p)...)
			}
		}
	}
	return out
}

func prefixOf(region string) string {
	if p, ok := billingPrefix[region]; ok {
		return p
	}
	return strings.ToUpper(strings.ReplaceAll(region, "-", ""))
}

func locationOf(region string) string {
	if l, ok := regionLocation[region]; ok {
		return l
	}
	return region
}

// bedrockProducts lists a first-party or open-weight model the way the
// AmazonBedrock price list does: one product per (feature, inferenceType),
// the model by its display name, a usagetype of the form
// "USE1-NovaPro-input-tokens" ("-batch" for batch inference).
func bedrockProducts(region string, m Model, p modelPrice) []priceProduct {
	stem := strings.NewReplacer(" ", "", ".", "-", "(", "", ")", "").Replace(m.Name)
	base := func(feature, inferenceType, suffix string) map[string]string {
		return map[string]string{
			"servicecode": ServiceCodeBedrock, "servicename": "Amazon Bedrock",
			"regionCode": region, "location": locationOf(region), "locationType": "AWS Region",
			"provider": m.Provider, "model": m.Name, "feature": feature, "inferenceType": inferenceType,
			"usagetype": prefixOf(region) + "-" + stem + "-" + suffix, "operation": "",
		}
	}
	var out []priceProduct
	add := func(usd float64, feature, inferenceType, suffix string) {
		if usd == 0 {
			return
		}
		out = append(out, priceProduct{
			serviceCode: ServiceCodeBedrock, attrs: base(feature, inferenceType, suffix), unit: "1K tokens", usd: usd,
			desc: fmt.Sprintf("$%s per 1K tokens for %s-%s in %s", decimal(usd), stem, suffix, locationOf(region)),
		})
	}
	add(p.in, "On-demand Inference", "Input tokens", "input-tokens")
	add(p.out, "On-demand Inference", "Output tokens", "output-tokens")
	add(p.cacheRead, "On-demand Inference", "Cache read input tokens", "cache-read-input-tokens")
	add(p.cacheWrite, "On-demand Inference", "Cache write input tokens", "cache-write-input-tokens")
	add(p.batchIn, "Batch Inference", "Input tokens", "input-tokens-batch")
	add(p.batchOut, "Batch Inference", "Output tokens", "output-tokens-batch")
	return out
}

// marketplaceProducts lists a Marketplace model the way the
// AmazonBedrockFoundationModels price list does: the model only in
// servicename, the rate in the usagetype after "MP:", prices per 1M
// tokens, global-profile rates under their own "_Global" usagetypes.
func marketplaceProducts(region string, m Model, p modelPrice) []priceProduct {
	pre := prefixOf(region)
	service := m.Name + " (Amazon Bedrock Edition)"
	var out []priceProduct
	add := func(usd float64, rate string) {
		if usd == 0 {
			return
		}
		ut := pre + "-MP:" + pre + "_" + rate + "-Units"
		out = append(out, priceProduct{
			serviceCode: ServiceCodeFoundationModels,
			attrs: map[string]string{
				"servicecode": ServiceCodeFoundationModels, "servicename": service,
				"regionCode": region, "location": locationOf(region), "locationType": "AWS Region",
				"usagetype": ut, "operation": "",
			},
			unit: "1M tokens", usd: usd * 1000,
			desc: fmt.Sprintf("$%s per 1M tokens for %s in %s", decimal(usd*1000), rate, locationOf(region)),
		})
	}
	names := [6]string{"InputTokenCount", "OutputTokenCount", "CacheReadInputTokenCount", "CacheWriteInputTokenCount", "InputTokenCount_Batch", "OutputTokenCount_Batch"}
	global := "_Global"
	if p.snake {
		names = [6]string{"input_tokens_standard", "output_tokens_standard", "cache_read_input_tokens_standard", "cache_write_input_tokens_standard", "input_tokens_batch", "output_tokens_batch"}
		global = ""
	}
	for i, usd := range []float64{p.in, p.out, p.cacheRead, p.cacheWrite, p.batchIn, p.batchOut} {
		add(usd, names[i])
	}
	if g := p.global; g != nil {
		for i, usd := range []float64{g.in, g.out, g.cacheRead, g.cacheWrite} {
			name := names[i] + global
			if p.snake {
				name = strings.Replace(names[i], "_standard", "_global_standard", 1)
			}
			add(usd, name)
		}
	}
	return out
}

func decimal(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// skuOf is a stable 14-character product code, derived from what makes the
// product unique, as AWS's SKUs are opaque but stable.
func skuOf(serviceCode, usagetype string) string {
	h := sha256.Sum256([]byte(serviceCode + "\x00" + usagetype))
	return base32.StdEncoding.EncodeToString(h[:])[:14]
}

// document encodes a product as AWS's aws_v1 price document.
func (p priceProduct) document() string {
	sku := skuOf(p.serviceCode, p.attrs["usagetype"])
	term := sku + "." + onDemandTermCode
	rate := term + "." + onDemandRateCode
	product := map[string]any{"attributes": p.attrs, "sku": sku}
	if p.serviceCode == ServiceCodeBedrock {
		product["productFamily"] = "Amazon Bedrock"
	}
	doc := map[string]any{
		"product":     product,
		"serviceCode": p.serviceCode,
		"terms": map[string]any{"OnDemand": map[string]any{term: map[string]any{
			"priceDimensions": map[string]any{rate: map[string]any{
				"unit": p.unit, "endRange": "Inf", "description": p.desc, "appliesTo": []string{},
				"rateCode": rate, "beginRange": "0",
				"pricePerUnit": map[string]string{"USD": strconv.FormatFloat(p.usd, 'f', 10, 64)},
			}},
			"sku": sku, "effectiveDate": priceEffective, "offerTermCode": onDemandTermCode, "termAttributes": map[string]any{},
		}}},
		"version":         priceListVersion,
		"publicationDate": pricePublication,
	}
	b, err := json.Marshal(doc)
	if err != nil {
		panic(err) // maps of strings always encode
	}
	return string(b)
}

// InjectPriceDocument adds doc, verbatim, at the end of serviceCode's
// price list (every GetProducts of that service code returns it, whatever
// the filters), so tests can see how a client meets a document of a shape
// AWS has not sent before. ClearPriceDocuments removes them.
func (s *Sim) InjectPriceDocument(serviceCode, doc string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.injectedPrices == nil {
		s.injectedPrices = map[string][]string{}
	}
	s.injectedPrices[serviceCode] = append(s.injectedPrices[serviceCode], doc)
}

// ClearPriceDocuments removes what InjectPriceDocument added.
func (s *Sim) ClearPriceDocuments() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.injectedPrices = nil
}

type pricingFilter struct {
	Type  string
	Field string
	Value string
}

type pricingRequest struct {
	ServiceCode   string
	Filters       []pricingFilter
	FormatVersion *string
	NextToken     *string
	MaxResults    *int
}

// matches applies one filter to a product. TERM_MATCH and EQUALS compare
// whole values (TERM_MATCH ignoring case, as AWS does for attribute
// values), CONTAINS a substring, ANY_OF and NONE_OF a comma-separated list.
func (f pricingFilter) matches(p priceProduct) bool {
	v, ok := p.attrs[f.Field]
	if strings.EqualFold(f.Field, "ServiceCode") {
		v, ok = p.serviceCode, true
	}
	if !ok {
		return f.Type == "NONE_OF"
	}
	switch f.Type {
	case "TERM_MATCH":
		return strings.EqualFold(v, f.Value)
	case "EQUALS":
		return v == f.Value
	case "CONTAINS":
		return strings.Contains(v, f.Value)
	case "ANY_OF", "NONE_OF":
		in := false
		for x := range strings.SplitSeq(f.Value, ",") {
			if strings.TrimSpace(x) == v {
				in = true
			}
		}
		return in == (f.Type == "ANY_OF")
	}
	return false
}

func (s *Sim) servePricing(w http.ResponseWriter, r *http.Request) {
	op, _ := strings.CutPrefix(r.Header.Get("X-Amz-Target"), pricingTargetPrefix)
	if r.Method != http.MethodPost {
		writeJSONError(w, http.StatusBadRequest, "UnknownOperationException", "unknown operation "+op)
		return
	}
	var in pricingRequest
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		writeJSONError(w, http.StatusBadRequest, "SerializationException", "cannot decode request body: "+err.Error())
		return
	}
	catalogue := s.pricingCatalogue()
	switch op {
	case "DescribeServices":
		var services []map[string]any
		for _, code := range []string{ServiceCodeBedrock, ServiceCodeFoundationModels} {
			if in.ServiceCode != "" && in.ServiceCode != code {
				continue
			}
			names := map[string]bool{}
			for _, p := range catalogue[code] {
				for k := range p.attrs {
					names[k] = true
				}
			}
			list := make([]string, 0, len(names))
			for k := range names {
				list = append(list, k)
			}
			slices.Sort(list)
			services = append(services, map[string]any{"ServiceCode": code, "AttributeNames": list})
		}
		writeJSON(w, http.StatusOK, sqContentType, map[string]any{"Services": services, "FormatVersion": "aws_v1"})
	case "GetProducts":
		if in.ServiceCode == "" {
			writeJSONError(w, http.StatusBadRequest, "InvalidParameterException", "ServiceCode is required.")
			return
		}
		if in.FormatVersion != nil && *in.FormatVersion != "aws_v1" {
			writeJSONError(w, http.StatusBadRequest, "InvalidParameterException", "Invalid FormatVersion: "+*in.FormatVersion)
			return
		}
		for _, f := range in.Filters {
			if !slices.Contains([]string{"TERM_MATCH", "EQUALS", "CONTAINS", "ANY_OF", "NONE_OF"}, f.Type) || f.Field == "" {
				writeJSONError(w, http.StatusBadRequest, "InvalidParameterException", fmt.Sprintf("Invalid filter: Type %q Field %q", f.Type, f.Field))
				return
			}
		}
		products, known := catalogue[in.ServiceCode]
		if !known && in.ServiceCode != ServiceCodeBedrock && in.ServiceCode != ServiceCodeFoundationModels {
			writeJSONError(w, http.StatusBadRequest, "NotFoundException", "Service code "+in.ServiceCode+" not found")
			return
		}
		var docs []string
	product:
		for _, p := range products {
			for _, f := range in.Filters {
				if !f.matches(p) {
					continue product
				}
			}
			docs = append(docs, p.document())
		}
		s.mu.Lock()
		docs = append(docs, s.injectedPrices[in.ServiceCode]...)
		s.mu.Unlock()
		start, end, next, err := pricingPage(len(docs), in.NextToken, in.MaxResults)
		if err != nil {
			writeJSONError(w, http.StatusBadRequest, "InvalidNextTokenException", err.Error())
			return
		}
		out := map[string]any{"FormatVersion": "aws_v1", "PriceList": append([]string{}, docs[start:end]...)}
		if next != "" {
			out["NextToken"] = next
		}
		writeJSON(w, http.StatusOK, sqContentType, out)
	default:
		writeJSONError(w, http.StatusBadRequest, "UnknownOperationException", "the simulator does not implement pricing "+op)
	}
}

// pricingPage cuts one page of n documents. AWS caps MaxResults at 100 and
// sends 100 when it is unset; the token is opaque to clients.
func pricingPage(n int, token *string, maxResults *int) (start, end int, next string, err error) {
	size := 100
	if maxResults != nil {
		if *maxResults < 1 || *maxResults > 100 {
			return 0, 0, "", fmt.Errorf("MaxResults %d: must be between 1 and 100", *maxResults)
		}
		size = *maxResults
	}
	if token != nil && *token != "" {
		raw, derr := base64.StdEncoding.DecodeString(*token)
		if derr != nil {
			return 0, 0, "", fmt.Errorf("invalid NextToken")
		}
		if _, serr := fmt.Sscanf(string(raw), "pricing:%d", &start); serr != nil || start < 0 || start > n {
			return 0, 0, "", fmt.Errorf("invalid NextToken")
		}
	}
	end = min(start+size, n)
	if end < n {
		next = base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "pricing:%d", end))
	}
	return start, end, next, nil
}
