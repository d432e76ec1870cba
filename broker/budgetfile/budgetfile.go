// Package budgetfile reads static budgets from a JSON file, for offline use
// and tests:
//
//	{"budgets": [
//	  {"region": "us-east-1", "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
//	   "rpm": 200, "tpm": 2000000, "tpd": 2880000000, "concurrency": 0}
//	]}
//
// "model" is what a client will call: a model id (on-demand), a geo or
// global inference profile id (the scope follows from the prefix), or an
// ARN. "region" may be left out when the file sets "default_region".
//
// A Provisioned Throughput is a budget keyed by its provisioned model ARN,
// with "serves" (the base model id it runs) and "tpm" (the tokens per
// minute its model units buy: AWS publishes no rate per model unit, so
// the operator states it; input + 1.25 x cache_write + 0.1 x cache_read +
// output count against it, with no output burndown):
//
//	{"model": "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc123",
//	 "serves": "anthropic.claude-3-haiku-20240307-v1:0", "tpm": 400000}
//
// With discovery on, it serves only while its throughput is InService.
//
// Or, when the account manager has said what one model unit buys for a
// model, "provisioned_rates" gives it once, in tokens per minute per model
// unit, and discovery (which reads each throughput's model units) makes a
// budget of units x rate for every InService throughput of that model:
//
//	{"provisioned_rates": {"anthropic.claude-3-haiku-20240307-v1:0": 200000},
//	 "budgets": []}
//
// A model has a rate or its throughputs have entries of their own, not
// both.
// Optional per budget: "output_burndown" (default per model) and
// "max_output_tokens" (what an unset max_tokens reserves). Unknown fields
// are errors, so a typo cannot silently drop a limit. Every error names the
// file, the line and the field.
package budgetfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/jsonpos"
)

// Entry is one budget as written in the file.
type Entry struct {
	Region          string   `json:"region"`
	Model           string   `json:"model"`
	RPM             *int64   `json:"rpm"`
	TPM             *int64   `json:"tpm"`
	TPD             *int64   `json:"tpd"`
	Concurrency     *int64   `json:"concurrency"`
	OutputBurndown  *float64 `json:"output_burndown"`
	MaxOutputTokens *int64   `json:"max_output_tokens"`
	Serves          string   `json:"serves"`
}

// File is a budgets file: its budgets, and the tokens per minute one model
// unit buys, by base model, for discovery to size Provisioned Throughputs.
type File struct {
	Specs            []broker.Spec
	ProvisionedRates map[string]int64
}

// LoadFile reads the file at path; source names it in every spec.
func LoadFile(path string, now time.Time) (File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("budgets file: %w", err)
	}
	return ParseFile(path, data, "budgets-file:"+path, now)
}

// ParseFile reads a budgets file from data; name is used in errors.
func ParseFile(name string, data []byte, source string, now time.Time) (File, error) {
	p := parser{jsonpos.File{Name: name, Data: data}}
	return p.parse(source, now)
}

// Load is LoadFile for a caller that uses budgets alone.
func Load(path string, now time.Time) ([]broker.Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("budgets file: %w", err)
	}
	return Parse(path, data, "budgets-file:"+path, now)
}

// Parse is ParseFile for a caller that uses budgets alone: a file with
// provisioned_rates is an error, not rates silently dropped.
func Parse(name string, data []byte, source string, now time.Time) ([]broker.Spec, error) {
	f, err := ParseFile(name, data, source, now)
	if err == nil && len(f.ProvisionedRates) > 0 {
		err = fmt.Errorf("%s: provisioned_rates: need quota discovery to read model units; this command uses budgets only", name)
	}
	return f.Specs, err
}

// parser reads one file; jsonpos places its errors.
type parser struct{ jsonpos.File }

func (p *parser) parse(source string, now time.Time) (File, error) {
	dec := json.NewDecoder(bytes.NewReader(p.Data))
	if tok, err := dec.Token(); err != nil {
		return File{}, p.DecodeErr(err, 0, "")
	} else if d, ok := tok.(json.Delim); !ok || d != '{' {
		return File{}, p.Errorf(dec.InputOffset(), "want a JSON object with a \"budgets\" array")
	}
	var specs []broker.Spec
	var rates map[string]int64
	ratesAt := int64(0)
	defaultRegion := ""
	seenBudgets := false
	type located struct {
		e  Entry
		at int64
		i  int
	}
	var entries []located
	for dec.More() {
		at := dec.InputOffset()
		tok, err := dec.Token()
		if err != nil {
			return File{}, p.DecodeErr(err, at, "")
		}
		key, _ := tok.(string)
		switch key {
		case "default_region":
			if err := dec.Decode(&defaultRegion); err != nil {
				return File{}, p.DecodeErr(err, at, "default_region")
			}
		case "provisioned_rates":
			for at < int64(len(p.Data)) && strings.ContainsRune(" \t\r\n,", rune(p.Data[at])) {
				at++ // the field's own line
			}
			ratesAt = at
			if err := dec.Decode(&rates); err != nil {
				return File{}, p.DecodeErr(err, at, "provisioned_rates")
			}
			for _, m := range slices.Sorted(maps.Keys(rates)) {
				if k, err := broker.ParseModelID(m, "us-east-1", "us-east-1"); err != nil || k.Scope != broker.ScopeOnDemand {
					return File{}, p.Errorf(at, "provisioned_rates: %q is not a base model id", m)
				}
				if rates[m] <= 0 {
					return File{}, p.Errorf(at, "provisioned_rates[%q]: %d tokens per minute per model unit; want more than 0", m, rates[m])
				}
			}
		case "budgets":
			seenBudgets = true
			if tok, err := dec.Token(); err != nil {
				return File{}, p.DecodeErr(err, at, "budgets")
			} else if d, ok := tok.(json.Delim); !ok || d != '[' {
				return File{}, p.Errorf(dec.InputOffset(), "budgets: want an array")
			}
			for i := 0; dec.More(); i++ {
				// Skip whitespace so the offset is the entry's own line.
				start := p.Skip(dec.InputOffset())
				var raw json.RawMessage
				if err := dec.Decode(&raw); err != nil {
					return File{}, p.DecodeErr(err, start, fmt.Sprintf("budgets[%d]", i))
				}
				var e Entry
				sub := json.NewDecoder(bytes.NewReader(raw))
				sub.DisallowUnknownFields()
				if err := sub.Decode(&e); err != nil {
					var typ *json.UnmarshalTypeError
					if errors.As(err, &typ) {
						typ.Offset += start
						return File{}, p.DecodeErr(typ, start, fmt.Sprintf("budgets[%d]", i))
					}
					return File{}, p.DecodeErr(err, start, fmt.Sprintf("budgets[%d]", i))
				}
				entries = append(entries, located{e, start, i})
			}
			if _, err := dec.Token(); err != nil {
				return File{}, p.DecodeErr(err, dec.InputOffset(), "budgets")
			}
		default:
			return File{}, p.Errorf(at, "unknown field %q (want default_region, provisioned_rates or budgets)", key)
		}
	}
	if !seenBudgets {
		return File{}, p.Errorf(0, "no \"budgets\" array")
	}
	seen := map[broker.Key]int{}
	for _, le := range entries {
		spec, field, err := le.e.spec(defaultRegion)
		if err != nil {
			return File{}, p.Errorf(le.at, "budgets[%d].%s: %v", le.i, field, err)
		}
		if prev, dup := seen[spec.Key]; dup {
			return File{}, p.Errorf(le.at, "budgets[%d]: the same budget (%s) as budgets[%d]", le.i, spec.Key, prev)
		}
		seen[spec.Key] = le.i
		if _, ok := rates[spec.Serves]; ok && spec.Key.Scope == broker.ScopeProvisioned {
			return File{}, p.Errorf(le.at, "budgets[%d].serves: %s has a rate in provisioned_rates (line %d), which sizes its throughputs from their model units; give the rate or this entry, not both", le.i, spec.Serves, p.Line(ratesAt))
		}
		spec.Source, spec.SourceTime = source, now
		specs = append(specs, spec)
	}
	return File{Specs: specs, ProvisionedRates: rates}, nil
}

func (e Entry) spec(defaultRegion string) (broker.Spec, string, error) {
	if e.Model == "" {
		return broker.Spec{}, "model", errors.New("is missing")
	}
	region := e.Region
	if region == "" && !strings.HasPrefix(e.Model, "arn:") {
		if defaultRegion == "" {
			return broker.Spec{}, "region", errors.New("is missing (or set default_region)")
		}
		region = defaultRegion
	}
	key, err := broker.ParseModelID(e.Model, region, defaultRegion)
	if err != nil {
		var be *broker.Error
		field := "model"
		if errors.As(err, &be) && be.Field == "region" {
			field = "region"
		}
		return broker.Spec{}, field, err
	}
	s := broker.Spec{Key: key}
	for _, f := range []struct {
		name string
		v    *int64
		dst  *int64
	}{{"rpm", e.RPM, &s.Quota.RPM}, {"tpm", e.TPM, &s.Quota.TPM}, {"tpd", e.TPD, &s.Quota.TPD},
		{"concurrency", e.Concurrency, &s.Quota.Concurrency}, {"max_output_tokens", e.MaxOutputTokens, &s.MaxOutputTokens}} {
		if f.v == nil {
			continue
		}
		if *f.v < 0 {
			return broker.Spec{}, f.name, fmt.Errorf("must not be negative, got %d", *f.v)
		}
		*f.dst = *f.v
	}
	if key.Scope == broker.ScopeProvisioned {
		switch {
		case e.Serves == "":
			return broker.Spec{}, "serves", errors.New("is missing: name the base model id the Provisioned Throughput runs")
		case e.TPM == nil || *e.TPM == 0:
			return broker.Spec{}, "tpm", errors.New("is missing: state the tokens per minute the Provisioned Throughput's model units buy (AWS publishes no per-unit rate)")
		case e.OutputBurndown != nil:
			return broker.Spec{}, "output_burndown", errors.New("a Provisioned Throughput has no output burndown")
		}
		if k, err := broker.ParseModelID(e.Serves, key.Region, key.Region); err != nil || k.Scope != broker.ScopeOnDemand {
			return broker.Spec{}, "serves", fmt.Errorf("%q is not a base model id", e.Serves)
		}
		s.Serves = e.Serves
	} else if e.Serves != "" {
		return broker.Spec{}, "serves", fmt.Errorf("only a Provisioned Throughput (a provisioned model ARN) names the model it serves; %s is %s", e.Model, key.Scope)
	}
	if s.Quota == (broker.Limits{}) {
		return broker.Spec{}, "tpm", errors.New("no limit set: give at least one of rpm, tpm, tpd, concurrency")
	}
	if e.OutputBurndown != nil {
		if b := *e.OutputBurndown; !(b >= 1 && b <= 100) {
			return broker.Spec{}, "output_burndown", fmt.Errorf("must be between 1 and 100, got %v", b)
		}
		s.Burndown = *e.OutputBurndown
	}
	return s, "", nil
}
