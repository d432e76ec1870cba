// Package policyfile reads how the broker treats its clients from a JSON
// file (quota-broker serve --clients FILE):
//
//	{
//	  "default": {"weight": 1},
//	  "clients": {
//	    "checkout-svc":  {"weight": 3, "max_concurrent": 200, "max_waiters": 5000},
//	    "nightly-batch": {"max_concurrent": 20,
//	      "caps": {"tpm": 100000, "tpd": 5000000,
//	               "models": {"anthropic.claude-opus-4-1-20250805-v1:0": {"rpm": 10}},
//	               "routes": {"claude-us": {"tpm": 20000}}},
//	      "money": {"currency": "USD", "per_day": 50, "per_month": 1000}}
//	  },
//	  "account": {"money": {"currency": "USD", "per_month": 20000}},
//	  "daily_reserve": {"batch": 0.2, "standard": 0.05},
//	  "aging": "30s",
//	  "max_waiters": 20000
//	}
//
// caps are a client's own rate caps (rpm, tpm, tpd: requests and quota
// tokens as the budgets count them, on sliding windows of a minute and a
// day) over all models together, under models on one model each (by the
// budgets' model id), and under routes on one route each (by the name in
// the routes file: the grants made through the route, on any of its
// targets; a call naming a model directly does not count against it);
// money is a budget in US dollars per UTC day and
// per calendar month, for one client or (under account) for all together.
// currency may be left out; any value other than "USD" is an error. caps
// and money belong to named clients only: client names are self-declared
// without tokens, so "default" cannot carry them. A model named under
// models must be a budget's model, and a route named under routes a route
// of the routes file; serve checks both once the budgets and the routes
// are known (broker.Core.SetCaps).
//
// weight is a client's share of a budget against other clients of the same
// priority; max_concurrent caps its active leases (default 10,000; -1 for no
// cap); max_waiters caps its calls waiting for capacity (default 1,000; -1
// for no cap of its own); daily_reserve keeps a share of every TPD out of
// reach of a priority; aging is how long a waiter waits before it is ranked
// one priority higher; the top-level max_waiters bounds the calls waiting
// over all clients (default 20,000). A client's entry does not inherit from
// "default": what it leaves out takes the built-in default (see
// broker.ClientPolicy). Unknown fields are errors, and every error names
// the file (and, for syntax, the line).
package policyfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/jsonpos"
)

// Policies is what the file sets, ready for broker.Config.
type Policies struct {
	Default      broker.ClientPolicy
	Clients      map[string]broker.ClientPolicy
	DailyReserve map[broker.Priority]float64
	Aging        time.Duration // 0: the broker's default
	MaxWaiters   int           // 0: the broker's default
	// Caps are the clients' caps and money budgets and the account's.
	Caps broker.Caps
}

type policyJSON struct {
	Weight        *float64   `json:"weight"`
	MaxConcurrent *int64     `json:"max_concurrent"`
	MaxWaiters    *int       `json:"max_waiters"`
	Caps          *capsJSON  `json:"caps"`
	Money         *moneyJSON `json:"money"`
}

type capsJSON struct {
	RPM    int64                 `json:"rpm"`
	TPM    int64                 `json:"tpm"`
	TPD    int64                 `json:"tpd"`
	Models map[string]limitsJSON `json:"models"`
	Routes map[string]limitsJSON `json:"routes"`
}

type limitsJSON struct {
	RPM int64 `json:"rpm"`
	TPM int64 `json:"tpm"`
	TPD int64 `json:"tpd"`
}

type moneyJSON struct {
	Currency string  `json:"currency"`
	PerDay   float64 `json:"per_day"`
	PerMonth float64 `json:"per_month"`
}

type accountJSON struct {
	Money *moneyJSON `json:"money"`
}

type fileJSON struct {
	Default      *policyJSON            `json:"default"`
	Clients      map[string]*policyJSON `json:"clients"`
	DailyReserve map[string]float64     `json:"daily_reserve"`
	Aging        string                 `json:"aging"`
	MaxWaiters   *int                   `json:"max_waiters"`
	Account      *accountJSON           `json:"account"`
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
		src := jsonpos.File{Name: name, Data: data}
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			return Policies{}, src.Errorf(syn.Offset, "invalid JSON: %v", err)
		case errors.As(err, &typ):
			return Policies{}, src.Errorf(typ.Offset, "%s: want %s, got JSON %s", typ.Field, typ.Type, typ.Value)
		}
		return Policies{}, fmt.Errorf("%s: %v", name, err)
	}
	p := Policies{Clients: map[string]broker.ClientPolicy{}, DailyReserve: map[broker.Priority]float64{}}
	var err error
	if p.Default, err = f.Default.policy(name, "default"); err != nil {
		return Policies{}, err
	}
	if f.Default != nil && (f.Default.Caps != nil || f.Default.Money != nil) {
		return Policies{}, fmt.Errorf("%s: default: caps and money belong to named clients (names are self-declared without tokens)", name)
	}
	p.Caps.Clients = map[string]broker.ClientCaps{}
	for client, pj := range f.Clients {
		if pj == nil || (pj.Caps == nil && pj.Money == nil) {
			continue
		}
		var cc broker.ClientCaps
		if c := pj.Caps; c != nil {
			cc.All = broker.CapLimits{RPM: c.RPM, TPM: c.TPM, TPD: c.TPD}
			for m, l := range c.Models {
				if cc.Models == nil {
					cc.Models = map[string]broker.CapLimits{}
				}
				cc.Models[m] = l.limits()
			}
			for r, l := range c.Routes {
				if cc.Routes == nil {
					cc.Routes = map[string]broker.CapLimits{}
				}
				cc.Routes[r] = l.limits()
			}
		}
		if cc.Money, err = pj.Money.money(name, "clients."+client+".money"); err != nil {
			return Policies{}, err
		}
		p.Caps.Clients[client] = cc
	}
	if f.Account != nil {
		if p.Caps.Account, err = f.Account.Money.money(name, "account.money"); err != nil {
			return Policies{}, err
		}
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
	if f.MaxWaiters != nil {
		if p.MaxWaiters = *f.MaxWaiters; p.MaxWaiters <= 0 {
			return Policies{}, fmt.Errorf("%s: max_waiters: %d is not positive", name, p.MaxWaiters)
		}
	}
	if err := p.Caps.Validate(nil, nil); err != nil {
		return Policies{}, fmt.Errorf("%s: %w", name, err)
	}
	return p, nil
}

func (l limitsJSON) limits() broker.CapLimits {
	return broker.CapLimits{RPM: l.RPM, TPM: l.TPM, TPD: l.TPD}
}

func (m *moneyJSON) money(name, field string) (broker.Money, error) {
	if m == nil {
		return broker.Money{}, nil
	}
	if m.Currency != "" && m.Currency != "USD" {
		return broker.Money{}, fmt.Errorf("%s: %s.currency: %q is not supported; money budgets are in USD, as AWS prices Bedrock", name, field, m.Currency)
	}
	if m.PerDay == 0 && m.PerMonth == 0 {
		return broker.Money{}, fmt.Errorf("%s: %s: sets neither per_day nor per_month", name, field)
	}
	return broker.Money{USDPerDay: m.PerDay, USDPerMonth: m.PerMonth}, nil
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
	// 0 would mean "the default" to the broker, which is not what a file
	// saying 0 means; -1 is the explicit "no cap".
	if pj.MaxConcurrent != nil {
		if v := *pj.MaxConcurrent; v == 0 || v < -1 {
			return cp, fmt.Errorf("%s: %s.max_concurrent: %d is neither positive nor -1 (no cap)", name, field, v)
		}
		cp.MaxConcurrent = *pj.MaxConcurrent
	}
	if pj.MaxWaiters != nil {
		if v := *pj.MaxWaiters; v == 0 || v < -1 {
			return cp, fmt.Errorf("%s: %s.max_waiters: %d is neither positive nor -1 (no cap of its own)", name, field, v)
		}
		cp.MaxWaiters = *pj.MaxWaiters
	}
	return cp, nil
}
