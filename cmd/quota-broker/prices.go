package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/awspricing"
	"github.com/bedrockqb/quotabroker/broker/pricefile"
)

// pricedSource is a quota source that also reads prices at each discovery,
// so the broker's Refresher (its loop, its RefreshNow) refreshes both. A
// price read that fails keeps the last good prices and fails nothing else:
// quotas matter more than prices, and AWS's prices change rarely.
type pricedSource struct {
	broker.QuotaSource
	prices *awspricing.Source // nil: the file alone
	file   *pricefile.File    // nil: AWS's prices alone
	set    func(map[broker.PriceKey]broker.Price)
	log    *slog.Logger
}

func (s pricedSource) Discover(ctx context.Context) (broker.Discovery, error) {
	d, err := s.QuotaSource.Discover(ctx)
	s.refreshPrices(ctx)
	return d, err
}

// refreshPrices reads AWS's prices, applies the file and hands the result
// to the broker; on error it logs and leaves the broker's prices alone.
func (s pricedSource) refreshPrices(ctx context.Context) {
	res, err := s.prices.Inspect(ctx)
	if err != nil {
		s.log.Error("reading prices failed; keeping the last good prices", "err", err)
		return
	}
	prices := res.Prices
	if s.file != nil {
		prices = s.file.Apply(prices)
	}
	s.set(prices)
	s.log.Info("prices read", "priced", countPriced(prices), "unpriced", len(unpricedOf(res, s.file)), "notes", len(res.Notes))
	for _, n := range res.Notes {
		s.log.Warn("prices: "+n, "source", "aws pricing")
	}
}

func countPriced(prices map[broker.PriceKey]broker.Price) int {
	n := 0
	for _, p := range prices {
		if p.Priced() {
			n++
		}
	}
	return n
}

// unpricedOf is AWS's unpriced keys less those the file prices.
func unpricedOf(res awspricing.Result, file *pricefile.File) []broker.PriceKey {
	var out []broker.PriceKey
	for _, k := range res.Unpriced {
		if file != nil {
			if p, ok := file.Apply(map[broker.PriceKey]broker.Price{k: res.Prices[k]})[k]; ok && p.Priced() {
				continue
			}
		}
		out = append(out, k)
	}
	return out
}

// priceOfBudget finds the price of calls drawing on budget k: the model's
// own for on-demand, a geo profile's for cross-region (the geo profiles of
// one Region cost the same), the global profile's for global. ok is false
// when nothing is known.
func priceOfBudget(prices map[broker.PriceKey]broker.Price, k broker.Key) (broker.Price, bool) {
	if k.Scope == broker.ScopeOnDemand {
		p, ok := prices[broker.PriceKey{Region: k.Region, Model: k.Model}]
		return p, ok
	}
	var ids []string
	for pk := range prices {
		if pk.Region != k.Region || !strings.HasSuffix(pk.Model, "."+k.Model) {
			continue
		}
		if pkk, err := broker.ParseModelID(pk.Model, pk.Region, ""); err == nil && pkk == k {
			ids = append(ids, pk.Model)
		}
	}
	if len(ids) == 0 {
		return broker.Price{}, false
	}
	slices.Sort(ids) // several geo profiles: any, but the same every time
	return prices[broker.PriceKey{Region: k.Region, Model: ids[0]}], true
}

// perMillion formats a rate, USD per 1,000 tokens, as dollars per million
// tokens, the scale people read prices at; "-" when it is not known.
func perMillion(p broker.Price, r broker.Rate, v float64) string {
	if p.Has&r == 0 {
		return "-"
	}
	return "$" + strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.6f", v*1000), "0"), ".")
}
