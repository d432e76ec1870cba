// Package policyfile reads how the broker treats its clients from a JSON
// file (quota-broker serve --clients FILE):
//
//	{
//	  "default": {"weight": 1},
//	  "clients": {
//	    "checkout-svc":  {"weight": 3, "max_concurrent": 200},
//	    "nightly-batch": {"max_concurrent": 20}
//	  },
//	  "daily_reserve": {"batch": 0.2, "standard": 0.05},
//	  "aging": "30s"
//	}
//
// weight is a client's share of a budget against other clients of the same
// priority; max_concurrent caps its active leases; daily_reserve keeps a
// share of every TPD out of reach of a priority; aging is how long a waiter
// waits before it is ranked one priority higher. Unknown fields are errors,
// and every error names the file (and, for syntax, the line).
package policyfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// Policies is what the file sets, ready for broker.Config.
type Policies struct {
	Default      broker.ClientPolicy
	Clients      map[string]broker.ClientPolicy
	DailyReserve map[broker.Priority]float64
	Aging        time.Duration // 0: the broker's default
}

type policyJSON struct {
	Weight        *float64 `json:"weight"`
	MaxConcurrent *int64   `json:"max_concurrent"`
}

type fileJSON struct {
	Default      *policyJSON            `json:"default"`
	Clients      map[string]*policyJSON `json:"clients"`
	DailyReserve map[string]float64     `json:"daily_reserve"`
	Aging        string                 `json:"aging"`
}

// Load reads the file at path.
func Load(path string) (Policies, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Policies{}, fmt.Errorf("clients file: %w", err)
	}
	return Parse(path, data)
}

// Parse reads policies from data; name is used in errors.
func Parse(name string, data []byte) (Policies, error) {
	var f fileJSON
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			return Policies{}, fmt.Errorf("%s:%d: invalid JSON: %v", name, line(data, syn.Offset), err)
		case errors.As(err, &typ):
			return Policies{}, fmt.Errorf("%s:%d: %s: want %s, got JSON %s", name, line(data, typ.Offset), typ.Field, typ.Type, typ.Value)
		}
		return Policies{}, fmt.Errorf("%s: %v", name, err)
	}
	p := Policies{Clients: map[string]broker.ClientPolicy{}, DailyReserve: map[broker.Priority]float64{}}
	var err error
	if p.Default, err = f.Default.policy(name, "default"); err != nil {
		return Policies{}, err
	}
	for client, pj := range f.Clients {
		if client == "" || len(client) > 256 {
			return Policies{}, fmt.Errorf("%s: clients: a client name must have 1 to 256 bytes, got %q", name, client)
		}
		if p.Clients[client], err = pj.policy(name, "clients."+client); err != nil {
			return Policies{}, err
		}
	}
	for prio, share := range f.DailyReserve {
		pr, ok := priorities[prio]
		if !ok {
			return Policies{}, fmt.Errorf("%s: daily_reserve.%s: not a priority (want interactive, standard or batch)", name, prio)
		}
		if !(share >= 0 && share < 1) {
			return Policies{}, fmt.Errorf("%s: daily_reserve.%s: %v is not a share in [0, 1)", name, prio, share)
		}
		p.DailyReserve[pr] = share
	}
	if f.Aging != "" {
		if p.Aging, err = time.ParseDuration(f.Aging); err != nil || p.Aging <= 0 {
			return Policies{}, fmt.Errorf("%s: aging: %q is not a positive duration such as \"30s\"", name, f.Aging)
		}
	}
	return p, nil
}

var priorities = map[string]broker.Priority{
	"interactive": broker.PriorityInteractive,
	"standard":    broker.PriorityStandard,
	"batch":       broker.PriorityBatch,
}

func (pj *policyJSON) policy(name, field string) (broker.ClientPolicy, error) {
	var cp broker.ClientPolicy
	if pj == nil {
		return cp, nil
	}
	if pj.Weight != nil {
		if w := *pj.Weight; !(w > 0 && w <= 1000) {
			return cp, fmt.Errorf("%s: %s.weight: %v is outside (0, 1000]", name, field, w)
		}
		cp.Weight = *pj.Weight
	}
	if pj.MaxConcurrent != nil {
		if *pj.MaxConcurrent < 0 {
			return cp, fmt.Errorf("%s: %s.max_concurrent: %d is negative", name, field, *pj.MaxConcurrent)
		}
		cp.MaxConcurrent = *pj.MaxConcurrent
	}
	return cp, nil
}

func line(data []byte, offset int64) int {
	offset = min(max(offset, 0), int64(len(data)))
	return 1 + bytes.Count(data[:offset], []byte("\n"))
}
