// Package pricefile reads model prices from a JSON file, to correct or
// stand in for the AWS Price List offline:
//
//	{"currency": "USD", "unit": "1M tokens", "mode": "override",
//	 "default_region": "us-east-1",
//	 "prices": [
//	   {"model": "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
//	    "input": 3, "output": 15, "cache_read": 0.3, "cache_write": 3.75},
//	   {"region": "eu-central-1", "model": "amazon.nova-pro-v1:0",
//	    "input": 1.05, "output": 4.2, "batch_input": 0.525, "batch_output": 2.1}
//	 ]}
//
// "unit" is required ("1K tokens" or "1M tokens"): a price read at the
// wrong scale is off by a thousand, so it is never assumed. Prices are US
// dollars; "currency", at the top or on an entry, may only say "USD".
// "model" is the id as called (a model id or an inference profile id),
// since a profile may cost other than its model (global profiles of the
// Claude 4.5 models do). "mode" says what the file does to the prices read
// from AWS: "override" (the default) sets the rates an entry names and
// keeps AWS's others; "replace" makes the file the only prices. A rate an
// entry leaves out is unknown, never zero.
//
// Strict, like the budgets file: unknown fields, a negative price, a rate
// above 1 USD per 1,000 tokens (no Bedrock model charges that much; it is
// almost always a per-million price under "1K tokens"), a currency other
// than USD, an entry with no rate, and two entries for one (region, model)
// are errors naming the file, the line and the field.
package pricefile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"strings"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/jsonpos"
)

// File is a prices file, read.
type File struct {
	// Replace is true for "mode": "replace": the file's prices are the
	// only ones; otherwise they override AWS's rate by rate.
	Replace bool
	// Prices by (Region, model), USD per 1,000 tokens, Source the file.
	Prices map[broker.PriceKey]broker.Price
}

// Entry is one price as written in the file.
type Entry struct {
	Region      string   `json:"region"`
	Model       string   `json:"model"`
	Currency    string   `json:"currency"`
	Input       *float64 `json:"input"`
	Output      *float64 `json:"output"`
	CacheRead   *float64 `json:"cache_read"`
	CacheWrite  *float64 `json:"cache_write"`
	BatchInput  *float64 `json:"batch_input"`
	BatchOutput *float64 `json:"batch_output"`
}

// maxPerK is the highest believable rate, USD per 1,000 tokens.
const maxPerK = 1.0

// Load reads the file at path.
func Load(path string) (File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("prices file: %w", err)
	}
	return Parse(path, data)
}

// Parse reads prices from data; name is used in errors and as the
// prices' Source.
func Parse(name string, data []byte) (File, error) {
	p := parser{jsonpos.File{Name: name, Data: data}}
	return p.parse()
}

// Apply returns the prices to use, given those read from AWS (nil when
// there are none): the file's alone when it replaces, else AWS's with the
// file's rates set over them. Neither input is modified.
func (f File) Apply(api map[broker.PriceKey]broker.Price) map[broker.PriceKey]broker.Price {
	if f.Replace {
		return maps.Clone(f.Prices)
	}
	out := maps.Clone(api)
	if out == nil {
		out = map[broker.PriceKey]broker.Price{}
	}
	for k, fp := range f.Prices {
		ap, ok := out[k]
		if !ok || ap.Has&^fp.Has == 0 {
			out[k] = fp // nothing of AWS's survives
			continue
		}
		for _, r := range rates {
			if fp.Has&r.rate != 0 {
				*r.field(&ap) = *r.field(&fp)
			}
		}
		ap.Has |= fp.Has
		ap.Source = ap.Source + " with " + fp.Source
		out[k] = ap
	}
	return out
}

var rates = []struct {
	name  string
	rate  broker.Rate
	field func(*broker.Price) *float64
	entry func(*Entry) *float64
}{
	{"input", broker.RateInput, func(p *broker.Price) *float64 { return &p.Input }, func(e *Entry) *float64 { return e.Input }},
	{"output", broker.RateOutput, func(p *broker.Price) *float64 { return &p.Output }, func(e *Entry) *float64 { return e.Output }},
	{"cache_read", broker.RateCacheRead, func(p *broker.Price) *float64 { return &p.CacheRead }, func(e *Entry) *float64 { return e.CacheRead }},
	{"cache_write", broker.RateCacheWrite, func(p *broker.Price) *float64 { return &p.CacheWrite }, func(e *Entry) *float64 { return e.CacheWrite }},
	{"batch_input", broker.RateBatchInput, func(p *broker.Price) *float64 { return &p.BatchInput }, func(e *Entry) *float64 { return e.BatchInput }},
	{"batch_output", broker.RateBatchOutput, func(p *broker.Price) *float64 { return &p.BatchOutput }, func(e *Entry) *float64 { return e.BatchOutput }},
}

// parser reads one file; jsonpos places its errors.
type parser struct{ jsonpos.File }

type located struct {
	e  Entry
	at int64
	i  int
}

func (p *parser) parse() (File, error) {
	dec := json.NewDecoder(bytes.NewReader(p.Data))
	if tok, err := dec.Token(); err != nil {
		return File{}, p.DecodeErr(err, 0, "")
	} else if d, ok := tok.(json.Delim); !ok || d != '{' {
		return File{}, p.Errorf(dec.InputOffset(), "want a JSON object with a \"prices\" array")
	}
	var (
		unit, mode, currency, defaultRegion  string
		unitAt, modeAt, currencyAt, regionAt int64
		seenPrices                           bool
		entries                              []located
	)
	str := func(dst *string, dstAt *int64, at int64, field string) error {
		*dstAt = at
		if err := dec.Decode(dst); err != nil {
			return p.DecodeErr(err, at, field)
		}
		return nil
	}
	for dec.More() {
		at := p.Skip(dec.InputOffset())
		tok, err := dec.Token()
		if err != nil {
			return File{}, p.DecodeErr(err, at, "")
		}
		key, _ := tok.(string)
		switch key {
		case "unit":
			err = str(&unit, &unitAt, at, key)
		case "mode":
			err = str(&mode, &modeAt, at, key)
		case "currency":
			err = str(&currency, &currencyAt, at, key)
		case "default_region":
			err = str(&defaultRegion, &regionAt, at, key)
		case "prices":
			seenPrices = true
			entries, err = p.entries(dec, at)
		default:
			return File{}, p.Errorf(at, "unknown field %q (want unit, mode, currency, default_region or prices)", key)
		}
		if err != nil {
			return File{}, err
		}
	}
	if !seenPrices {
		return File{}, p.Errorf(0, "no \"prices\" array")
	}
	var scale float64
	switch strings.ToLower(strings.TrimSpace(unit)) {
	case "1k tokens":
		scale = 1
	case "1m tokens":
		scale = 1.0 / 1000
	case "":
		return File{}, p.Errorf(0, "unit: is missing (\"1K tokens\" or \"1M tokens\"); a price is never assumed to be per thousand or per million")
	default:
		return File{}, p.Errorf(unitAt, "unit: %q: want \"1K tokens\" or \"1M tokens\"", unit)
	}
	var f File
	switch mode {
	case "", "override":
	case "replace":
		f.Replace = true
	default:
		return File{}, p.Errorf(modeAt, "mode: %q: want \"override\" or \"replace\"", mode)
	}
	if currency != "" && currency != "USD" {
		return File{}, p.Errorf(currencyAt, "currency: %q: prices are in USD, as AWS lists them", currency)
	}
	if defaultRegion != "" && !broker.ValidRegion(defaultRegion) {
		return File{}, p.Errorf(regionAt, "default_region: %q is not an AWS Region name", defaultRegion)
	}
	f.Prices = map[broker.PriceKey]broker.Price{}
	seen := map[broker.PriceKey]int{}
	for _, le := range entries {
		key, price, field, err := le.e.price(defaultRegion, scale)
		if err != nil {
			return File{}, p.Errorf(le.at, "prices[%d].%s: %v", le.i, field, err)
		}
		if prev, dup := seen[key]; dup {
			return File{}, p.Errorf(le.at, "prices[%d]: the same model and Region (%s in %s) as prices[%d]", le.i, key.Model, key.Region, prev)
		}
		seen[key] = le.i
		price.Source = p.Name
		f.Prices[key] = price
	}
	return f, nil
}

// entries decodes the "prices" array, strictly, keeping each entry's
// offset for its errors.
func (p *parser) entries(dec *json.Decoder, at int64) ([]located, error) {
	if tok, err := dec.Token(); err != nil {
		return nil, p.DecodeErr(err, at, "prices")
	} else if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, p.Errorf(dec.InputOffset(), "prices: want an array")
	}
	var out []located
	for i := 0; dec.More(); i++ {
		start := p.Skip(dec.InputOffset())
		field := fmt.Sprintf("prices[%d]", i)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, p.DecodeErr(err, start, field)
		}
		var e Entry
		sub := json.NewDecoder(bytes.NewReader(raw))
		sub.DisallowUnknownFields()
		if err := sub.Decode(&e); err != nil {
			var typ *json.UnmarshalTypeError
			if errors.As(err, &typ) {
				typ.Offset += start
				return nil, p.DecodeErr(typ, start, field)
			}
			return nil, p.DecodeErr(err, start, field)
		}
		out = append(out, located{e, start, i})
	}
	if _, err := dec.Token(); err != nil {
		return nil, p.DecodeErr(err, dec.InputOffset(), "prices")
	}
	return out, nil
}

func (e Entry) price(defaultRegion string, scale float64) (broker.PriceKey, broker.Price, string, error) {
	var k broker.PriceKey
	var pr broker.Price
	model := strings.TrimSpace(e.Model)
	switch {
	case model == "":
		return k, pr, "model", errors.New("is missing")
	case strings.ContainsAny(model, " \t/") && !strings.HasPrefix(model, "arn:"):
		return k, pr, "model", fmt.Errorf("%q is not a model or inference profile id", e.Model)
	}
	region := e.Region
	if region == "" {
		if region = defaultRegion; region == "" {
			return k, pr, "region", errors.New("is missing (or set default_region)")
		}
	}
	if !broker.ValidRegion(region) {
		return k, pr, "region", fmt.Errorf("%q is not an AWS Region name", region)
	}
	if e.Currency != "" && e.Currency != "USD" {
		return k, pr, "currency", fmt.Errorf("%q: prices are in USD, as AWS lists them", e.Currency)
	}
	for _, r := range rates {
		v := r.entry(&e)
		if v == nil {
			continue
		}
		if *v < 0 {
			return k, pr, r.name, fmt.Errorf("must not be negative, got %v", *v)
		}
		perK := *v * scale
		if perK > maxPerK {
			return k, pr, r.name, fmt.Errorf("%v USD per 1,000 tokens is more than any Bedrock model charges; is \"unit\" right?", perK)
		}
		*r.field(&pr) = perK
		pr.Has |= r.rate
	}
	if pr.Has == 0 {
		return k, pr, "input", errors.New("no rate set: give at least one of input, output, cache_read, cache_write, batch_input, batch_output")
	}
	return broker.PriceKey{Region: region, Model: model}, pr, "", nil
}
