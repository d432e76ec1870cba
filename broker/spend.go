package broker

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// spendRetentionDays is how long spend is kept per day: the current month
// and the whole of the one before, for reports.
const spendRetentionDays = 62

// SpendRecord is what one client's calls on one budget cost on one UTC
// day (by grant time), in nano-dollars. Records are deltas in a Change
// (a grant adds its reservation's price, its settlement the difference)
// and totals in a Snapshot.
type SpendRecord struct {
	Client  string
	Key     Key
	Day     int64 // unix days (UTC)
	NanoUSD int64
	// Calls counts the grants, Unpriced those of them with no price.
	Calls, Unpriced int64
}

// ClientUsageRecord is what one client held to a cap was charged on one
// budget (through one route) in one minute, by grant time, in quota tokens and requests: its
// TPD caps are rebuilt from these after a restart. Deltas in a Change,
// totals in a Snapshot, like UsageRecord.
type ClientUsageRecord struct {
	Client string
	Key    Key
	// Route is the route of the grants counted ("": calls that named a
	// model), for the client's TPD caps per route.
	Route    string
	Minute   int64
	Tokens   int64
	Requests int64
}

// grantRecs are what a grant's commit writes besides the lease: set once
// under Core.mu when the lease is granted and never changed, so the commit
// that follows reads them without the lock. The spend record is built
// from them and the lease's fields set at grant (grantSpend) rather than
// kept, which made every lease, outstanding by the hundred thousand on a
// busy broker, a size class larger.
type grantRecs struct {
	cost     int64 // the lease's Cost at grant
	unpriced bool
	usage    *ClientUsageRecord // nil: the client has no rate caps
}

// grantSpend is the spend record of l's grant.
func (l *lease) grantSpend() SpendRecord {
	var unpriced int64
	if l.grantRecs.unpriced {
		unpriced = 1
	}
	return SpendRecord{Client: l.spendAs, Key: l.Key, Day: dayOf(l.GrantedAt), NanoUSD: l.grantRecs.cost, Calls: 1, Unpriced: unpriced}
}

// perThousand converts tokens at a price per 1,000 tokens to nano-dollars,
// rounded up: the broker never prices a call below what it costs.
func perThousand(tokens int64, usdPer1k float64) int64 {
	if tokens <= 0 {
		return 0
	}
	// At most a billion dollars: far beyond any budget, and an int64.
	return int64(math.Min(math.Ceil(float64(tokens)*usdPer1k*(nanoPerUSD/1000)), maxMoneyUSD*nanoPerUSD))
}

// rateOr is p's rate r if known, else fallback's: a cache rate AWS does
// not list is priced at the input rate, which is never below it.
func (p Price) rateOr(r Rate, v float64) float64 {
	if p.Has&r != 0 {
		return v
	}
	return p.Input
}

// reserveCost is the price of a reservation: input and cache_write tokens
// at their rates, max_output_tokens at the output rate.
func reserveCost(p Price, input, cacheWrite, maxOutput int64) int64 {
	return perThousand(input, p.Input) + perThousand(cacheWrite, p.rateOr(RateCacheWrite, p.CacheWrite)) +
		perThousand(maxOutput, p.Output)
}

// callCost is the price of a call's usage, as Bedrock bills it: input,
// output, cache reads and cache writes each at their rate.
func callCost(p Price, u Usage) int64 {
	return perThousand(u.InputTokens, p.Input) + perThousand(u.OutputTokens, p.Output) +
		perThousand(u.CacheReadInputTokens, p.rateOr(RateCacheRead, p.CacheRead)) +
		perThousand(u.CacheWriteInputTokens, p.rateOr(RateCacheWrite, p.CacheWrite))
}

// settleCost is what a settlement charges a lease in money: nothing for a
// throttled or cancelled call, the usage's price otherwise (an error call
// pays for what Bedrock processed). Caller holds Core.mu.
func (b *Core) settleCost(l *lease, outcome Outcome, u Usage) int64 {
	if outcome == OutcomeThrottled || outcome == OutcomeCancelled {
		return 0
	}
	p, ok := b.ten.price(l.Key)
	if !ok {
		return 0
	}
	return callCost(p, u)
}

// spendBook is spend in memory: per client, budget and day, with totals
// per client and for the account per day and month. Active leases count
// at their reservation's price until settled. Guarded by Core.mu.
type spendBook struct {
	cells map[spendKey]*spendCell
	// months are the cells summed per month (spendKey.day holds the
	// month): reports read them, not every day's cells, under Core.mu.
	months   map[spendKey]*spendCell
	totals   map[periodKey]*int64
	names    map[string]int // client name -> cells, to bound distinct names
	prunedAt int64          // the day prune last ran
	// last is what add touched last time: a busy budget's grants come
	// from the same client on the same day one after another, and the six
	// map lookups by keys of strings that add makes otherwise were a large
	// part of a grant's time under Core.mu. prune, which deletes cells,
	// forgets it.
	last spendRefs
}

// spendRefs are the cells and totals one spendKey adds to.
type spendRefs struct {
	k           spendKey
	cell, month *spendCell
	totals      [4]*int64 // the client's day and month, the account's day and month
}

type spendKey struct {
	client string
	key    Key
	day    int64
}

type spendCell struct{ nano, calls, unpriced int64 }

type periodKey struct {
	account bool
	client  string
	month   bool
	n       int64 // day, or year*12 + month-1
}

func newSpendBook() spendBook {
	return spendBook{cells: map[spendKey]*spendCell{}, months: map[spendKey]*spendCell{}, totals: map[periodKey]*int64{},
		names: map[string]int{}}
}

// name is the name client's spend is kept under: its own, unless it is
// none of the capped clients and maxSpendClients others already have
// spend (client names are self-declared without tokens, and each costs
// memory and a record a day).
func (s *spendBook) name(client string, capped map[string]ClientCaps) string {
	if _, ok := s.names[client]; ok {
		return client
	}
	if _, ok := capped[client]; ok || len(s.names) < maxSpendClients {
		return client
	}
	return otherClient
}

func (s *spendBook) add(client string, key Key, day, nano, calls, unpriced int64) {
	r := &s.last
	if k := (spendKey{client, key, day}); r.cell == nil || r.k != k {
		*r = s.refs(k)
	}
	r.cell.nano += nano
	r.cell.calls += calls
	r.cell.unpriced += unpriced
	r.month.nano += nano
	r.month.calls += calls
	r.month.unpriced += unpriced
	for _, t := range r.totals {
		*t += nano
	}
}

// refs returns the cells and totals of k, made if new.
func (s *spendBook) refs(k spendKey) spendRefs {
	c := s.cells[k]
	if c == nil {
		c = &spendCell{}
		s.cells[k] = c
		s.names[k.client]++
	}
	month := monthOfDay(k.day)
	mk := spendKey{k.client, k.key, month}
	m := s.months[mk]
	if m == nil {
		m = &spendCell{}
		s.months[mk] = m
	}
	r := spendRefs{k: k, cell: c, month: m}
	for i, pk := range [...]periodKey{{false, k.client, false, k.day}, {false, k.client, true, month},
		{true, "", false, k.day}, {true, "", true, month}} {
		t := s.totals[pk]
		if t == nil {
			t = new(int64)
			s.totals[pk] = t
		}
		r.totals[i] = t
	}
	return r
}

// total is the spend of the account (or of client) in the day, or in its
// month.
func (s *spendBook) total(account bool, client string, month bool, day int64) int64 {
	if account {
		client = "" // the account's totals are kept under no client
	}
	n := day
	if month {
		n = monthOfDay(day)
	}
	if t := s.totals[periodKey{account, client, month, n}]; t != nil {
		return *t
	}
	return 0
}

// prune forgets spend older than spendRetentionDays before today, once a
// day.
func (s *spendBook) prune(today int64) {
	if today == s.prunedAt {
		return
	}
	s.prunedAt = today
	s.last = spendRefs{} // its cells may go
	cut := today - spendRetentionDays
	for k := range s.months {
		if k.day < monthOfDay(cut) {
			delete(s.months, k)
		}
	}
	for k := range s.cells {
		if k.day < cut {
			delete(s.cells, k)
			if s.names[k.client]--; s.names[k.client] <= 0 {
				delete(s.names, k.client)
			}
		}
	}
	for k := range s.totals {
		if (!k.month && k.n < cut) || (k.month && k.n < monthOfDay(cut)) {
			delete(s.totals, k)
		}
	}
}

// SpendReport is spend and caps as of At (see Core.Spend).
type SpendReport struct {
	At time.Time
	// Account is every client's spend together, with the account's money
	// budget.
	Account Spending
	// Clients are the clients with spend or caps, by name.
	Clients []ClientSpend
	// Models are the budgets with spend, by key.
	Models []ModelSpend
	// Caps are the rate caps with their use, by client, model and route.
	Caps []CapUsage
}

// Spending is spend today and this month (UTC), and the forecast of each
// at the current rate: today's so far over the share of the day gone, and
// the same for the month. Active leases count at their reservation.
type Spending struct {
	TodayUSD, MonthUSD                 float64
	ForecastTodayUSD, ForecastMonthUSD float64
	Money                              Money // the budget, zero if none
	// Calls is the number of grants this month, Unpriced those with no
	// price (their spend is unknown, not zero).
	Calls, Unpriced int64
	Refused         int64 // refusals on this money budget since start
}

// ClientSpend is one client's spend, in all and per budget.
type ClientSpend struct {
	Client string
	Spending
	Models []ModelSpend
}

// ModelSpend is spend on one budget.
type ModelSpend struct {
	Key Key
	Spending
	Priced bool // a price is known for the budget's model and Region
}

// CapUsage is one set of a client's rate caps and their use now.
type CapUsage struct {
	Client string
	Model  string // "" for the caps over all models, or on a route
	Route  string // the route a per-route cap holds on, else ""
	Limits CapLimits
	// Requests and Tokens are used in the last minute, DayTokens in the
	// last day (0 without a TPD cap).
	Requests, Tokens, DayTokens int64
	Refused                     int64
	LastRefusedAt               time.Time
}

// Spend reports spend per client and per model, the money budgets and the
// rate caps with their use.
func (b *Core) Spend() SpendReport {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock.Now()
	t := &b.ten
	today, month := dayOf(now), monthOfDay(dayOf(now))
	dayShare := float64(now.Unix()-today*86400) / 86400
	ms := time.Date(now.UTC().Year(), now.UTC().Month(), 1, 0, 0, 0, 0, time.UTC)
	monthShare := now.Sub(ms).Seconds() / nextMonth(now).Sub(ms).Seconds()
	forecast := func(s *Spending) {
		if dayShare > 0 {
			s.ForecastTodayUSD = s.TodayUSD / dayShare
		}
		if monthShare > 0 {
			s.ForecastMonthUSD = s.MonthUSD / monthShare
		}
	}
	type ck struct {
		client string
		key    Key
	}
	perCK := map[ck]*Spending{}
	perClient := map[string]*Spending{}
	perKey := map[Key]*Spending{}
	var acct Spending
	// The month's cells, one per client and budget, and today's beside
	// each: not every day's, since this runs under Core.mu.
	for k, c := range b.ten.book.months {
		if k.day != month || (c.nano == 0 && c.calls == 0) {
			continue // another month, or an escrow bound taken back
		}
		var todayNano int64
		if d := b.ten.book.cells[spendKey{k.client, k.key, today}]; d != nil {
			todayNano = d.nano
		}
		for _, s := range []*Spending{get(perCK, ck{k.client, k.key}), get(perClient, k.client), get(perKey, k.key), &acct} {
			s.MonthUSD += float64(c.nano) / nanoPerUSD
			s.TodayUSD += float64(todayNano) / nanoPerUSD
			s.Calls += c.calls
			s.Unpriced += c.unpriced
		}
	}
	for name, cc := range t.caps.Clients {
		s := get(perClient, name)
		s.Money = cc.Money
		s.Refused = t.moneyRefused[name]
	}
	acct.Money, acct.Refused = t.caps.Account, t.moneyRefused[""]
	forecast(&acct)
	out := SpendReport{At: now, Account: acct}
	for name, s := range perClient {
		forecast(s)
		cs := ClientSpend{Client: name, Spending: *s}
		for k, v := range perCK {
			if k.client == name {
				forecast(v)
				_, priced := t.price(k.key)
				cs.Models = append(cs.Models, ModelSpend{Key: k.key, Spending: *v, Priced: priced})
			}
		}
		slices.SortFunc(cs.Models, func(x, y ModelSpend) int { return compareKeys(x.Key, y.Key) })
		out.Clients = append(out.Clients, cs)
	}
	slices.SortFunc(out.Clients, func(x, y ClientSpend) int { return cmp.Compare(x.Client, y.Client) })
	for k, s := range perKey {
		forecast(s)
		_, priced := t.price(k)
		out.Models = append(out.Models, ModelSpend{Key: k, Spending: *s, Priced: priced})
	}
	slices.SortFunc(out.Models, func(x, y ModelSpend) int { return compareKeys(x.Key, y.Key) })
	for k, w := range t.windows {
		u := CapUsage{Client: k.client, Model: k.model, Route: k.route, Limits: w.lim, Requests: w.requests.used(now),
			Tokens: w.tokens.used(now), Refused: w.refused, LastRefusedAt: w.lastRefusedAt}
		if w.day != nil {
			u.DayTokens = w.day.used(now)
		}
		out.Caps = append(out.Caps, u)
	}
	slices.SortFunc(out.Caps, func(x, y CapUsage) int {
		return cmp.Or(cmp.Compare(x.Client, y.Client), cmp.Compare(x.Model, y.Model), cmp.Compare(x.Route, y.Route))
	})
	return out
}

func get[K comparable](m map[K]*Spending, k K) *Spending {
	s := m[k]
	if s == nil {
		s = &Spending{}
		m[k] = s
	}
	return s
}
