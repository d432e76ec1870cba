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
	"os"
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
}

// Load reads the file at path; source names it in every spec.
func Load(path string, now time.Time) ([]broker.Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("budgets file: %w", err)
	}
	return Parse(path, data, "budgets-file:"+path, now)
}

// Parse reads budgets from data; name is used in errors.
func Parse(name string, data []byte, source string, now time.Time) ([]broker.Spec, error) {
	p := parser{jsonpos.File{Name: name, Data: data}}
	return p.parse(source, now)
}

// parser reads one file; jsonpos places its errors.
type parser struct{ jsonpos.File }

func (p *parser) parse(source string, now time.Time) ([]broker.Spec, error) {
	dec := json.NewDecoder(bytes.NewReader(p.Data))
	if tok, err := dec.Token(); err != nil {
		return nil, p.DecodeErr(err, 0, "")
	} else if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, p.Errorf(dec.InputOffset(), "want a JSON object with a \"budgets\" array")
	}
	var specs []broker.Spec
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
			return nil, p.DecodeErr(err, at, "")
		}
		key, _ := tok.(string)
		switch key {
		case "default_region":
			if err := dec.Decode(&defaultRegion); err != nil {
				return nil, p.DecodeErr(err, at, "default_region")
			}
		case "budgets":
			seenBudgets = true
			if tok, err := dec.Token(); err != nil {
				return nil, p.DecodeErr(err, at, "budgets")
			} else if d, ok := tok.(json.Delim); !ok || d != '[' {
				return nil, p.Errorf(dec.InputOffset(), "budgets: want an array")
			}
			for i := 0; dec.More(); i++ {
				// Skip whitespace so the offset is the entry's own line.
				start := p.Skip(dec.InputOffset())
				var raw json.RawMessage
				if err := dec.Decode(&raw); err != nil {
					return nil, p.DecodeErr(err, start, fmt.Sprintf("budgets[%d]", i))
				}
				var e Entry
				sub := json.NewDecoder(bytes.NewReader(raw))
				sub.DisallowUnknownFields()
				if err := sub.Decode(&e); err != nil {
					var typ *json.UnmarshalTypeError
					if errors.As(err, &typ) {
						typ.Offset += start
						return nil, p.DecodeErr(typ, start, fmt.Sprintf("budgets[%d]", i))
					}
					return nil, p.DecodeErr(err, start, fmt.Sprintf("budgets[%d]", i))
				}
				entries = append(entries, located{e, start, i})
			}
			if _, err := dec.Token(); err != nil {
				return nil, p.DecodeErr(err, dec.InputOffset(), "budgets")
			}
		default:
			return nil, p.Errorf(at, "unknown field %q (want default_region or budgets)", key)
		}
	}
	if !seenBudgets {
		return nil, p.Errorf(0, "no \"budgets\" array")
	}
	seen := map[broker.Key]int{}
	for _, le := range entries {
		spec, field, err := le.e.spec(defaultRegion)
		if err != nil {
			return nil, p.Errorf(le.at, "budgets[%d].%s: %v", le.i, field, err)
		}
		if prev, dup := seen[spec.Key]; dup {
			return nil, p.Errorf(le.at, "budgets[%d]: the same budget (%s) as budgets[%d]", le.i, spec.Key, prev)
		}
		seen[spec.Key] = le.i
		spec.Source, spec.SourceTime = source, now
		specs = append(specs, spec)
	}
	return specs, nil
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
