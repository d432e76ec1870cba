package awspricing

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/bedrockqb/quotabroker/broker"
)

// Service codes of the Price List that carry Bedrock's models (doc.go).
const (
	ServiceCodeBedrock          = "AmazonBedrock"
	ServiceCodeFoundationModels = "AmazonBedrockFoundationModels"
)

// marketplaceSuffix ends the servicename of every Marketplace model.
const marketplaceSuffix = " (Amazon Bedrock Edition)"

// ShapeError is a price document that is not shaped as this package
// expects: it names the service code, the product (SKU, or the document's
// place in the listing when it has none) and the field. A listing with one
// fails as a whole, so the caller keeps its last good prices rather than a
// set that silently lacks a model.
type ShapeError struct {
	ServiceCode string
	Region      string
	SKU         string // "" when the document has none
	Index       int    // the document's place in the listing, from 0
	Field       string // JSON path, e.g. "terms.OnDemand.*.priceDimensions.*.unit"
	Problem     string
}

func (e *ShapeError) Error() string {
	product := "product " + e.SKU
	if e.SKU == "" {
		product = fmt.Sprintf("document %d", e.Index)
	}
	return fmt.Sprintf("aws pricing %s in %s: %s: %s: %s", e.ServiceCode, e.Region, product, e.Field, e.Problem)
}

// doc is the part of an aws_v1 price document this package reads.
type doc struct {
	Product *struct {
		SKU        string         `json:"sku"`
		Attributes map[string]any `json:"attributes"`
	} `json:"product"`
	ServiceCode     string                              `json:"serviceCode"`
	PublicationDate string                              `json:"publicationDate"`
	Terms           *struct{ OnDemand map[string]term } `json:"terms"`
}

type term struct {
	PriceDimensions map[string]dimension `json:"priceDimensions"`
}

type dimension struct {
	Unit         string            `json:"unit"`
	PricePerUnit map[string]string `json:"pricePerUnit"`
}

// rateKind says which of a Price's rates a product sets.
type rateKind struct {
	rate   broker.Rate
	global bool // the global cross-Region profile's own rate
}

// product is one price document read and classified.
type product struct {
	service, sku, usagetype, name, provider, published string
	kind                                               rateKind
	perK                                               float64 // USD per 1,000 tokens
}

// readDocument decodes the i-th document of a listing. It returns
// (product, "", nil) for a token rate of a model, (_, reason, nil) for a
// product that is not one (skipped with reason), and a *ShapeError for a
// document this package cannot read.
func readDocument(serviceCode, region string, i int, text string) (product, string, error) {
	fail := func(sku, field, problem string) (product, string, error) {
		return product{}, "", &ShapeError{ServiceCode: serviceCode, Region: region, SKU: sku, Index: i, Field: field, Problem: problem}
	}
	// The SKU first, leniently, so that every later error can name it.
	var head struct {
		Product struct {
			SKU any `json:"sku"`
		} `json:"product"`
	}
	if err := json.Unmarshal([]byte(text), &head); err != nil {
		return fail("", "(document)", "not a JSON object: "+err.Error())
	}
	sku, _ := head.Product.SKU.(string)
	if sku == "" {
		return fail("", "product.sku", "missing or not a string")
	}
	var d doc
	if err := json.Unmarshal([]byte(text), &d); err != nil {
		field := "(document)"
		if te, ok := err.(*json.UnmarshalTypeError); ok {
			field = te.Field
		}
		return fail(sku, field, err.Error())
	}
	if d.Product.Attributes == nil {
		return fail(sku, "product.attributes", "missing")
	}
	a := make(map[string]string, len(d.Product.Attributes))
	for _, k := range slices.Sorted(maps.Keys(d.Product.Attributes)) {
		v, ok := d.Product.Attributes[k].(string)
		if !ok {
			return fail(sku, "product.attributes."+k, fmt.Sprintf("%v is not a string", d.Product.Attributes[k]))
		}
		a[k] = v
	}
	switch {
	case d.ServiceCode != serviceCode:
		return fail(sku, "serviceCode", fmt.Sprintf("%q, asked for %q", d.ServiceCode, serviceCode))
	case a["regionCode"] != region:
		return fail(sku, "product.attributes.regionCode", fmt.Sprintf("%q, asked for %q", a["regionCode"], region))
	}
	p := product{service: serviceCode, sku: sku, usagetype: a["usagetype"], published: d.PublicationDate}
	if p.usagetype == "" {
		return fail(sku, "product.attributes.usagetype", "missing")
	}
	var reason string
	if serviceCode == ServiceCodeFoundationModels {
		p.name, p.kind, reason = classifyMarketplace(a)
	} else {
		p.name, p.kind, reason = classifyBedrock(a)
		p.provider = a["provider"]
	}
	if reason != "" {
		return p, reason, nil
	}
	// A token rate: exactly one on-demand term with one dimension, in USD
	// per 1K or 1M tokens. Tiers or other units would need rules this
	// package does not have, so they are errors rather than guesses.
	if d.Terms == nil || len(d.Terms.OnDemand) != 1 {
		n := 0
		if d.Terms != nil {
			n = len(d.Terms.OnDemand)
		}
		return fail(sku, "terms.OnDemand", fmt.Sprintf("%d terms, want 1", n))
	}
	for code, t := range d.Terms.OnDemand {
		if len(t.PriceDimensions) != 1 {
			return fail(sku, "terms.OnDemand."+code+".priceDimensions", fmt.Sprintf("%d dimensions, want 1", len(t.PriceDimensions)))
		}
		for rc, dim := range t.PriceDimensions {
			field := "terms.OnDemand." + code + ".priceDimensions." + rc
			raw, ok := dim.PricePerUnit["USD"]
			if !ok {
				return fail(sku, field+".pricePerUnit.USD", "missing")
			}
			usd, err := strconv.ParseFloat(raw, 64)
			if err != nil || usd < 0 || math.IsInf(usd, 0) || math.IsNaN(usd) {
				return fail(sku, field+".pricePerUnit.USD", fmt.Sprintf("%q is not a price", raw))
			}
			switch strings.ToLower(strings.TrimSpace(dim.Unit)) {
			case "1k tokens":
				p.perK = usd
			case "1m tokens":
				p.perK = usd / 1000
			default:
				return fail(sku, field+".unit", fmt.Sprintf("%q is not 1K tokens or 1M tokens", dim.Unit))
			}
		}
	}
	return p, "", nil
}

// classifyBedrock reads an AmazonBedrock product: the model by its display
// name (attribute model), the rate by feature and inferenceType.
func classifyBedrock(a map[string]string) (string, rateKind, string) {
	name := a["model"]
	if name == "" {
		return "", rateKind{}, "no model attribute (not a model's price)"
	}
	if t := strings.ToLower(a["service_tier"]); t != "" && t != "standard" {
		return name, rateKind{}, "service tier " + a["service_tier"] + " (only standard is priced)"
	}
	var batch bool
	switch strings.ToLower(a["feature"]) {
	case "on-demand inference":
	case "batch inference":
		batch = true
	default:
		return name, rateKind{}, "feature " + strconv.Quote(a["feature"]) + " is neither on-demand nor batch inference"
	}
	var r broker.Rate
	switch strings.Join(strings.Fields(strings.ToLower(a["inferenceType"])), " ") {
	case "input tokens", "text input tokens":
		r = pick(batch, broker.RateInput, broker.RateBatchInput)
	case "output tokens", "text output tokens":
		r = pick(batch, broker.RateOutput, broker.RateBatchOutput)
	case "cache read input tokens":
		r = pick(batch, broker.RateCacheRead, 0)
	case "cache write input tokens":
		r = pick(batch, broker.RateCacheWrite, 0)
	}
	if r == 0 {
		return name, rateKind{}, "inferenceType " + strconv.Quote(a["inferenceType"]) + " of " + strconv.Quote(a["feature"]) + " is not a token rate the broker charges"
	}
	return name, rateKind{rate: r}, ""
}

func pick(batch bool, onDemand, b broker.Rate) broker.Rate {
	if batch {
		return b
	}
	return onDemand
}

// classifyMarketplace reads an AmazonBedrockFoundationModels product: the
// model is the servicename without " (Amazon Bedrock Edition)", the rate
// is the usagetype's part after "MP:<prefix>_", in either of the styles AWS
// uses ("CacheReadInputTokenCount_Global-Units",
// "cache_read_input_tokens_global_standard-Units").
func classifyMarketplace(a map[string]string) (string, rateKind, string) {
	name, ok := strings.CutSuffix(a["servicename"], marketplaceSuffix)
	if !ok || name == "" {
		return "", rateKind{}, "servicename " + strconv.Quote(a["servicename"]) + " is not a Bedrock Marketplace model"
	}
	ut := a["usagetype"]
	_, dim, ok := strings.Cut(ut, "MP:")
	if ok {
		_, dim, ok = strings.Cut(dim, "_")
	}
	if !ok {
		return name, rateKind{}, "usagetype " + strconv.Quote(ut) + " is not a Marketplace usage type"
	}
	var words []string
	var global, batch bool
	for _, w := range splitWords(dim) {
		switch w {
		case "units", "count", "standard", "token", "tokens":
		case "global":
			global = true
		case "batch":
			batch = true
		default:
			words = append(words, w)
		}
	}
	var r broker.Rate
	switch strings.Join(words, " ") {
	case "input":
		r = pick(batch, broker.RateInput, broker.RateBatchInput)
	case "output":
		r = pick(batch, broker.RateOutput, broker.RateBatchOutput)
	case "cache read input":
		r = pick(batch, broker.RateCacheRead, 0)
	case "cache write input":
		r = pick(batch, broker.RateCacheWrite, 0)
	}
	if r == 0 || (batch && global) {
		return name, rateKind{}, "usagetype " + strconv.Quote(ut) + " is not a token rate the broker charges"
	}
	return name, rateKind{rate: r, global: global}, ""
}

// splitWords splits "CacheWrite1hInputTokenCount_LCtx-Units" into lower-case
// words at case changes, digits and separators.
func splitWords(s string) []string {
	var words []string
	var cur []rune
	flush := func() {
		if len(cur) > 0 {
			words = append(words, strings.ToLower(string(cur)))
			cur = cur[:0]
		}
	}
	rs := []rune(s)
	for i, r := range rs {
		switch {
		case !unicode.IsLetter(r) && !unicode.IsDigit(r):
			flush()
			continue
		case unicode.IsUpper(r) && i > 0 && (unicode.IsLower(rs[i-1]) || unicode.IsDigit(rs[i-1])):
			flush()
		case unicode.IsDigit(r) && i > 0 && unicode.IsLetter(rs[i-1]):
			flush()
		}
		cur = append(cur, r)
	}
	flush()
	return words
}

// normName folds a display name for matching: lower case, one space
// between runs of letters, digits, dots and pluses ("Llama 3.1 8B
// Instruct" and "llama-3.1-8b instruct" agree; "Command R+" and "Command
// R" do not).
func normName(s string) string {
	var b strings.Builder
	space := false
	for _, r := range strings.ToLower(s) {
		if unicode.IsLetter(r) || unicode.IsDigit(r) || r == '.' || r == '+' {
			if space && b.Len() > 0 {
				b.WriteByte(' ')
			}
			space = false
			b.WriteRune(r)
			continue
		}
		space = true
	}
	return b.String()
}
