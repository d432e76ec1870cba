package broker

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"time"
)

// Caps are the tenants' own limits (see the package doc's Caps and money):
// rate caps per client, over all models, per model or per route, and money
// budgets per client and for the whole account. The zero value caps
// nothing.
type Caps struct {
	// Clients are the caps of clients by name. A client not named here has
	// no caps of its own (the account's money budget still applies).
	Clients map[string]ClientCaps
	// Account is the money budget of every client together.
	Account Money
}

// ClientCaps are one client's caps. Zero fields are absent.
type ClientCaps struct {
	// All caps the client over all models together.
	All CapLimits
	// Models caps the client on one model each, by the budget's model id
	// (Key.Model: the base model, also for inference profiles; the ARN for
	// a Provisioned Throughput, whose capacity is the account's own and
	// is not drawn from the model's quotas). A model capped here is held
	// to its own cap and to All.
	Models map[string]CapLimits
	// Routes caps the client on one route each, by name: the grants made
	// through the route, on whichever of its targets, count against it
	// (and against All and the target's model cap). A call that names a
	// model directly does not count against a route cap.
	Routes map[string]CapLimits
	Money  Money
}

// CapLimits are rate caps, counted as the budgets count: RPM in requests,
// TPM and TPD in quota tokens (input + cache_write + output x burndown), on
// sliding windows of a minute and a day. Zero is absent.
type CapLimits struct {
	RPM, TPM, TPD int64
}

func (l CapLimits) zero() bool { return l == CapLimits{} }

// Money is a budget in US dollars per UTC day and per calendar month (UTC).
// Zero is absent.
type Money struct {
	USDPerDay, USDPerMonth float64
}

// Zero reports whether m sets no budget.
func (m Money) Zero() bool { return m == Money{} }

// Bounds beyond which a cap is a typing error, not a policy: far above any
// Bedrock quota or bill.
const (
	maxCapRate      = 1_000_000_000     // requests or tokens per minute
	maxCapDay       = 1_000_000_000_000 // tokens per day
	maxMoneyUSD     = 1_000_000_000     // US dollars per day or month
	nanoPerUSD      = 1_000_000_000     // spend is kept in nano-dollars, exact integers
	otherClient     = "(other clients)" // spend of clients beyond maxSpendClients
	maxSpendClients = 1000
)

// Validate checks every cap for sign and size, every per-model cap against
// models and every per-route cap against routes (nil: no check), naming
// the field that fails.
func (c Caps) Validate(models, routes func(name string) bool) error {
	if err := c.Account.validate("account.money"); err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(c.Clients)) {
		cc := c.Clients[name]
		if name == "" || len(name) > maxClientLen {
			return fmt.Errorf("clients: a client name must have 1 to %d bytes, got %q", maxClientLen, name)
		}
		field := "clients." + name
		if err := cc.All.validate(field + ".caps"); err != nil {
			return err
		}
		if err := validateNamed(cc.Models, field+".caps.models.", models, "%s: no budget has model %q"); err != nil {
			return err
		}
		if err := validateNamed(cc.Routes, field+".caps.routes.", routes, "%s: no route %q (routes come from the routes file, --routes)"); err != nil {
			return err
		}
		if err := cc.Money.validate(field + ".money"); err != nil {
			return err
		}
	}
	return nil
}

// validateNamed checks each of caps, in name order, under field+name:
// its name against known (nil: no check), failing with unknown (a format
// of the field and the name), then its limits.
func validateNamed(caps map[string]CapLimits, field string, known func(name string) bool, unknown string) error {
	for _, name := range slices.Sorted(maps.Keys(caps)) {
		f := field + name
		if known != nil && !known(name) {
			return fmt.Errorf(unknown, f, name)
		}
		if err := caps[name].validate(f); err != nil {
			return err
		}
	}
	return nil
}

func (l CapLimits) validate(field string) error {
	for _, v := range []struct {
		name     string
		v, limit int64
	}{{"rpm", l.RPM, maxCapRate}, {"tpm", l.TPM, maxCapRate}, {"tpd", l.TPD, maxCapDay}} {
		if v.v < 0 {
			return fmt.Errorf("%s.%s: %d is negative", field, v.name, v.v)
		}
		if v.v > v.limit {
			return fmt.Errorf("%s.%s: %d is beyond any quota (at most %d)", field, v.name, v.v, v.limit)
		}
	}
	return nil
}

func (m Money) validate(field string) error {
	for _, v := range []struct {
		name string
		v    float64
	}{{"per_day", m.USDPerDay}, {"per_month", m.USDPerMonth}} {
		if math.IsNaN(v.v) || v.v < 0 {
			return fmt.Errorf("%s.%s: %v is negative", field, v.name, v.v)
		}
		if v.v > maxMoneyUSD {
			return fmt.Errorf("%s.%s: %v is beyond any budget (at most %d)", field, v.name, v.v, maxMoneyUSD)
		}
	}
	return nil
}

// capKey names one set of cap windows: a client's over all models (model
// and route ""), on one model, or on one route (model "").
type capKey struct {
	client, model, route string
}

// capWindow is the live state of one set of caps. Guarded by Core.mu.
type capWindow struct {
	lim              CapLimits
	requests, tokens *window // the last minute
	day              *window // the last day; nil without a TPD cap
	refused          int64   // refusals it caused since start
	lastRefusedAt    time.Time
	label            string // for messages: `client "a" (all models)`
}

func newCapWindow(k capKey, lim CapLimits) *capWindow {
	w := &capWindow{lim: lim, requests: newWindow(minuteSpan, minuteRes), tokens: newWindow(minuteSpan, minuteRes)}
	if lim.TPD > 0 {
		w.day = newWindow(daySpan, dayRes)
	}
	switch {
	case k.route != "":
		w.label = fmt.Sprintf("client %q on route %s", k.client, k.route)
	case k.model != "":
		w.label = fmt.Sprintf("client %q on model %s", k.client, k.model)
	default:
		w.label = fmt.Sprintf("client %q (all models)", k.client)
	}
	return w
}

// tenants is the core's state for caps and spend. Guarded by Core.mu.
type tenants struct {
	caps    Caps
	prices  map[PriceKey]Price
	windows map[capKey]*capWindow
	book    spendBook
	// moneyRefused counts refusals on a money budget, by client ("" for
	// the account's), for reports and alerts.
	moneyRefused map[string]int64
}

func newTenants(caps Caps, prices map[PriceKey]Price) tenants {
	t := tenants{windows: map[capKey]*capWindow{}, prices: maps.Clone(prices), book: newSpendBook(),
		moneyRefused: map[string]int64{}}
	t.setCaps(caps)
	return t
}

// setCaps installs caps, keeping the windows of caps that stay (a reload
// does not forgive what was used) and dropping the others.
func (t *tenants) setCaps(caps Caps) {
	t.caps = caps
	old := t.windows
	t.windows = map[capKey]*capWindow{}
	put := func(k capKey, lim CapLimits) {
		if lim.zero() {
			return
		}
		w := old[k]
		if w == nil {
			w = newCapWindow(k, lim)
		} else if w.day == nil && lim.TPD > 0 {
			w.day = newWindow(daySpan, dayRes)
		}
		w.lim = lim
		t.windows[k] = w
	}
	for name, cc := range caps.Clients {
		put(capKey{name, "", ""}, cc.All)
		for m, lim := range cc.Models {
			put(capKey{name, m, ""}, lim)
		}
		for r, lim := range cc.Routes {
			put(capKey{name, "", r}, lim)
		}
	}
}

// capSet is the cap windows one lease counts against: its client's over
// all models, on its model, and on its route (nil where there is none). An
// array, not a slice: this runs for every waiter the queue looks at.
type capSet [3]*capWindow

func (s capSet) any() bool { return s[0] != nil || s[1] != nil || s[2] != nil }

// windowsOf returns the cap windows a lease of client on model, granted
// through route ("": none), counts against.
func (t *tenants) windowsOf(client, model, route string) capSet {
	if len(t.windows) == 0 {
		return capSet{}
	}
	s := capSet{t.windows[capKey{client, "", ""}], t.windows[capKey{client, model, ""}]}
	if route != "" {
		s[2] = t.windows[capKey{client, "", route}]
	}
	return s
}

// route is the name of the route w waits through, "" for a request that
// named a model.
func (w *waiter) route() string {
	if w.group == nil {
		return ""
	}
	return w.group.rt.Name
}

// money reports whether any money budget applies to client's calls.
func (t *tenants) money(client string) bool {
	return !t.caps.Account.Zero() || !t.caps.Clients[client].Money.Zero()
}

// bound reports whether client's grants are held to caps or a money
// budget of its own: those are committed one by one, never drawn from an
// escrow chunk (see the package doc), so restore knows their client. The
// account's money budget alone does not bind: a chunk records a bound of
// its spend instead (escrowSpend).
func (t *tenants) bound(client, model, route string) bool {
	if !t.caps.Clients[client].Money.Zero() {
		return true
	}
	return t.windowsOf(client, model, route).any()
}

// escrowClient is the name spend is recorded under for a chunk's capacity
// until the chunk closes: what a crash leaves of it is the chunk's bound.
const escrowClient = "(escrowed at a crash)"

// escrowSpend adds to c, which commits chunk r of bg, the most its grants
// can cost under the account's money budget, and returns it (0: no money
// budget on the account, or no price). Each grant from the chunk is
// checked against the budget in memory as any other; the record is for a
// crash, which loses the spend records of the chunk's leases (written at
// its close): the restore then counts the bound, never less than they
// cost. The bound: the chunk's tokens at the highest rate, over the
// burndown when below 1 (tokens = input + cache_write + max x burndown,
// each priced at most that rate). Caller holds Core.mu.
func (b *Core) escrowSpend(bg *budget, r ChunkRecord, c *Change) int64 {
	t := &b.ten
	if t.caps.Account.Zero() {
		return 0
	}
	p, ok := t.price(r.Key)
	if !ok {
		return 0 // nothing is granted on an unpriced model under a money budget
	}
	rate := max(p.Input, p.Output, p.rateOr(RateCacheWrite, p.CacheWrite))
	tokens := r.Tokens
	if bd := bg.burndown; bd < 1 {
		tokens = int64(math.Ceil(float64(tokens) / bd))
	}
	bound := perThousand(tokens, rate)
	c.Spend = append(c.Spend, SpendRecord{Client: escrowClient, Key: r.Key, Day: dayOf(r.Start), NanoUSD: bound})
	return bound
}

// capNeverFits explains why n can never be granted to client on key under
// its caps or the money budgets, or returns nil. It also prices n.
// Caller holds Core.mu.
func (b *Core) capNeverFits(client string, key Key, req *AcquireRequest, n *need) error {
	t := &b.ten
	p, priced := t.price(key)
	if priced {
		n.cost = reserveCost(p, req.InputTokens, req.CacheWriteTokens, n.maxOutput)
	}
	n.priced = priced
	if t.money(client) && !priced {
		return &Error{Kind: KindPrecondition, Message: fmt.Sprintf(
			"no price for %s in %s, and %s money budget applies: the broker will not spend unpriced money; add the model to the prices",
			key.Model, key.Region, t.moneyOwner(client))}
	}
	for _, w := range t.windowsOf(client, key.Model, req.Route) {
		if w == nil {
			continue
		}
		for _, l := range []struct {
			name  string
			limit int64
		}{{"TPM", w.lim.TPM}, {"TPD", w.lim.TPD}} {
			if l.limit > 0 && n.tokens > l.limit {
				return &Error{Kind: KindInvalid, Field: "max_output_tokens", Message: fmt.Sprintf(
					"the reservation of %d tokens (input + cache_write + max_output_tokens %d x burndown %g) exceeds the %s cap %d of %s; lower max_output_tokens",
					n.tokens, n.maxOutput, n.burndown, l.name, l.limit, w.label)}
			}
		}
	}
	ms, nm := t.moneyLimits(client)
	for _, m := range ms[:nm] {
		if m.limit > 0 && n.cost > m.limit {
			return &Error{Kind: KindInvalid, Field: "max_output_tokens", Message: fmt.Sprintf(
				"the reservation costs %s (input at the input price, max_output_tokens %d at the output price), more than %s of %s; lower max_output_tokens",
				usd(n.cost), n.maxOutput, m.label(), usd(m.limit))}
		}
	}
	return nil
}

func (t *tenants) moneyOwner(client string) string {
	if !t.caps.Clients[client].Money.Zero() {
		return fmt.Sprintf("client %q's", client)
	}
	return "the account's"
}

// moneyLimit is one money budget that applies to a call.
type moneyLimit struct {
	account bool
	client  string
	month   bool
	limit   int64 // nano-USD
}

// label names the budget in messages; only refusals pay for it.
func (m moneyLimit) label() string {
	owner := fmt.Sprintf("client %q's", m.client)
	if m.account {
		owner = "the account's"
	}
	if m.month {
		return owner + " money budget per month"
	}
	return owner + " money budget per day"
}

// moneyLimits are the money budgets that apply to client's calls, at most
// four, in a fixed array: this runs for every waiter the queue looks at.
func (t *tenants) moneyLimits(client string) (out [4]moneyLimit, n int) {
	add := func(m Money, account bool) {
		if m.USDPerDay > 0 {
			out[n] = moneyLimit{account, client, false, int64(m.USDPerDay * nanoPerUSD)}
			n++
		}
		if m.USDPerMonth > 0 {
			out[n] = moneyLimit{account, client, true, int64(m.USDPerMonth * nanoPerUSD)}
			n++
		}
	}
	add(t.caps.Clients[client].Money, false)
	add(t.caps.Account, true)
	return out, n
}

// capFit checks w against its client's caps and the money budgets at now.
// It returns LimitNone when w fits; otherwise the cap that blocks, how long
// until it would fit (for money: the next period, though a settlement may
// free it sooner) and, when explain is set, a description for the refusal:
// the queue's dispatch asks for none, as it formats nothing for a waiter it
// only skips. Caller holds Core.mu.
func (b *Core) capFit(bg *budget, w *waiter, now time.Time, explain bool) (Limit, time.Duration, string) {
	t := &b.ten
	if len(t.windows) == 0 && t.caps.Account.Zero() && len(t.caps.Clients) == 0 {
		return LimitNone, 0, ""
	}
	blocked, wait, why := LimitNone, time.Duration(0), ""
	note := func(l Limit, d time.Duration, s string) {
		if blocked == LimitNone || d > wait {
			blocked, wait, why = l, d, s
		}
	}
	for _, cw := range t.windowsOf(w.client, bg.spec.Key.Model, w.route()) {
		if cw == nil {
			continue
		}
		if d, name, limit := cw.wait(w.need.tokens, now); d > 0 {
			var s string
			if explain {
				s = fmt.Sprintf("the %s cap %d of %s", name, limit, cw.label)
			}
			note(LimitClientCap, d, s)
		}
	}
	if t.money(w.client) {
		day := dayOf(now)
		ms, nm := t.moneyLimits(w.client)
		for _, m := range ms[:nm] {
			used := t.book.total(m.account, m.client, m.month, day)
			if used+w.need.cost <= m.limit {
				continue
			}
			next := nextDay(now)
			if m.month {
				next = nextMonth(now)
			}
			var s string
			if explain {
				s = fmt.Sprintf("%s %s (spent or reserved %s, this call reserves %s)",
					m.label(), usd(m.limit), usd(used), usd(w.need.cost))
			}
			note(LimitMoney, next.Sub(now), s)
		}
	}
	return blocked, wait, why
}

// wait is how long until a reservation of tokens fits each of w's limits
// at now (0: it fits now), and the limit that holds it longest. Caller
// holds Core.mu.
func (w *capWindow) wait(tokens int64, now time.Time) (d time.Duration, name string, limit int64) {
	for _, c := range []struct {
		name     string
		win      *window
		v, limit int64
	}{{"RPM", w.requests, 1, w.lim.RPM}, {"TPM", w.tokens, tokens, w.lim.TPM}, {"TPD", w.day, tokens, w.lim.TPD}} {
		if c.limit <= 0 || c.win == nil {
			continue
		}
		cd, ok := c.win.wait(now, c.v, c.limit)
		if !ok {
			cd = daySpan
		}
		if cd > d {
			d, name, limit = cd, c.name, c.limit
		}
	}
	return d, name, limit
}

// capRefused counts a refusal on the cap that blocked w: the one capFit
// names, which holds it longest. Caller holds Core.mu.
func (b *Core) capRefused(bg *budget, w *waiter, limit Limit, now time.Time) {
	t := &b.ten
	switch limit {
	case LimitClientCap:
		var worst *capWindow
		var longest time.Duration
		for _, cw := range t.windowsOf(w.client, bg.spec.Key.Model, w.route()) {
			if cw == nil {
				continue
			}
			if d, _, _ := cw.wait(w.need.tokens, now); d > longest {
				worst, longest = cw, d
			}
		}
		if worst != nil {
			worst.refused++
			worst.lastRefusedAt = now
		}
	case LimitMoney:
		// Counted against each budget without room: the client's, the
		// account's, or both.
		day := dayOf(now)
		ms, nm := t.moneyLimits(w.client)
		counted := map[bool]bool{}
		for _, m := range ms[:nm] {
			if counted[m.account] || t.book.total(m.account, m.client, m.month, day)+w.need.cost <= m.limit {
				continue
			}
			counted[m.account] = true
			if m.account {
				t.moneyRefused[""]++
			} else {
				t.moneyRefused[w.client]++
			}
		}
	}
}

// capCharge charges a new grant to its client's caps and to spend, and
// prepares the records its grant commit writes. Caller holds Core.mu.
func (b *Core) capCharge(l *lease, n need, now time.Time) {
	t := &b.ten
	l.Cost = n.cost
	l.spendAs = t.book.name(l.Client, t.caps.Clients)
	ws := t.windowsOf(l.Client, l.Key.Model, l.Route)
	for _, cw := range ws {
		if cw != nil {
			cw.add(now, now, l.Charged, l.Requests)
		}
	}
	day := dayOf(now)
	var unpriced int64
	if !n.priced {
		unpriced = 1
	}
	t.book.add(l.spendAs, l.Key, day, l.Cost, 1, unpriced)
	l.grantRecs.cost, l.grantRecs.unpriced = l.Cost, !n.priced
	if ws.any() {
		l.grantRecs.usage = &ClientUsageRecord{Client: l.Client, Key: l.Key, Route: l.Route, Minute: minuteOf(now), Tokens: l.Charged, Requests: l.Requests}
	}
}

func (w *capWindow) add(now, at time.Time, tokens, requests int64) {
	w.requests.add(now, at, requests)
	w.tokens.add(now, at, tokens)
	if w.day != nil {
		w.day.add(now, at, tokens)
	}
}

// capAdjust corrects a lease's caps and spend when its charge changes
// (settlement, or a grant taken back), and adds the records that make the
// correction durable to c (nil: none, the grant was never recorded).
// Caller holds Core.mu.
func (b *Core) capAdjust(l *lease, now time.Time, dTokens, dRequests, cost int64, c *Change) {
	if l.fixed && l.Client == "" {
		return // a lease recovered from a chunk: its client is unknown
	}
	t := &b.ten
	ws := t.windowsOf(l.Client, l.Key.Model, l.Route)
	for _, cw := range ws {
		if cw != nil {
			cw.add(now, l.GrantedAt, dTokens, dRequests)
		}
	}
	dCost := cost - l.Cost
	day := dayOf(l.GrantedAt)
	t.book.add(l.spendAs, l.Key, day, dCost, 0, 0)
	l.Cost = cost
	if c == nil {
		return
	}
	if dCost != 0 {
		c.Spend = append(c.Spend, SpendRecord{Client: l.spendAs, Key: l.Key, Day: day, NanoUSD: dCost})
	}
	if ws.any() && (dTokens != 0 || dRequests != 0) {
		c.ClientUsage = append(c.ClientUsage, ClientUsageRecord{Client: l.Client, Key: l.Key, Route: l.Route, Minute: minuteOf(l.GrantedAt), Tokens: dTokens, Requests: dRequests})
	}
}

// undoCaps takes back what capCharge charged for a grant the caller never
// received. Caller holds Core.mu.
func (b *Core) undoCaps(l *lease, now time.Time) {
	b.capAdjust(l, now, -l.Charged, -l.Requests, 0, nil)
	b.ten.book.add(l.spendAs, l.Key, dayOf(l.GrantedAt), 0, -1, -l.grantSpend().Unpriced)
}

// capsReleased re-examines the queues after a settlement or expiry of a
// client held to caps or money: an all-models or route cap or a money
// budget freed on one budget may let the client's waiters on another
// through. Caller holds Core.mu.
func (b *Core) capsReleased(l *lease, now time.Time) {
	if !b.ten.bound(l.Client, l.Key.Model, l.Route) {
		return
	}
	for _, bg := range b.budgets {
		if bg != l.b && bg.queue.len() > 0 {
			b.dispatch(bg, now)
		}
	}
}

// SetCaps replaces the tenants' caps. Per-model caps must name a model of
// a known budget, per-route caps a route in service (SetRoutes). Usage
// already counted against a cap that stays is kept; a new cap counts the
// leases the broker still remembers (the last minutes) and, for TPD, what
// is recorded from then on. Waiters are re-examined.
func (b *Core) SetCaps(caps Caps) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	models := map[string]bool{}
	for k := range b.budgets {
		models[k.Model] = true
	}
	routes := func(r string) bool { return b.routing.byName[r] != nil }
	if err := caps.Validate(func(m string) bool { return models[m] }, routes); err != nil {
		return &Error{Kind: KindInvalid, Message: err.Error()}
	}
	before := maps.Clone(b.ten.windows)
	b.ten.setCaps(caps)
	now := b.clock.Now()
	for k, w := range b.ten.windows {
		if before[k] != nil {
			continue
		}
		for _, l := range b.leases {
			if l.Client == k.client && (k.model == "" || k.model == l.Key.Model) && (k.route == "" || k.route == l.Route) &&
				now.Sub(l.GrantedAt) <= daySpan {
				w.add(now, l.GrantedAt, l.Charged, l.Requests)
			}
		}
	}
	for _, bg := range b.budgets {
		b.dispatch(bg, now)
	}
	return nil
}

// SetPrices replaces the prices that spend and money budgets are counted
// in. Leases granted before keep the price of their reservation until they
// are settled at the new one.
func (b *Core) SetPrices(prices map[PriceKey]Price) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ten.prices = maps.Clone(prices)
	now := b.clock.Now()
	for _, bg := range b.budgets {
		b.dispatch(bg, now)
	}
}

// price is what a call on budget k costs. A global profile has rates of
// its own where AWS lists them, which the price sources key by the
// "global." profile id; a geographic profile is priced as the model in its
// source Region, the budget's Region, so the model id's price is its price.
func (t *tenants) price(k Key) (Price, bool) {
	if k.Scope == ScopeProvisioned {
		// A Provisioned Throughput is paid by the hour for its model
		// units, whatever it serves: a call on it costs nothing more.
		return provisionedPrice, true
	}
	if k.Scope == ScopeGlobal {
		if p, ok := t.prices[PriceKey{Region: k.Region, Model: "global." + k.Model}]; ok && p.Priced() {
			return p, true
		}
	}
	p, ok := t.prices[PriceKey{Region: k.Region, Model: k.Model}]
	return p, ok && p.Priced()
}

var provisionedPrice = Price{Has: RateInput | RateOutput | RateCacheRead | RateCacheWrite, Source: "provisioned throughput (billed per model unit hour, not per token)"}

// restoreCaps rebuilds the cap windows and spend from the store: minute
// windows from the lease records (every grant held to a cap was committed
// with its record, which names its route), day windows from the per-client
// usage (per route too), spend from its records. Caller holds Core.mu.
func (b *Core) restoreCaps(snap *Snapshot, now time.Time) {
	t := &b.ten
	for _, s := range snap.Spend {
		t.book.add(s.Client, s.Key, s.Day, s.NanoUSD, s.Calls, s.Unpriced)
	}
	for _, l := range b.leases {
		l.spendAs = t.book.name(l.Client, t.caps.Clients)
		if l.fixed {
			continue
		}
		for _, cw := range t.windowsOf(l.Client, l.Key.Model, l.Route) {
			if cw != nil {
				cw.requests.add(now, l.GrantedAt, l.Requests)
				cw.tokens.add(now, l.GrantedAt, l.Charged)
			}
		}
	}
	for _, u := range snap.ClientUsage {
		for _, cw := range t.windowsOf(u.Client, u.Key.Model, u.Route) {
			if cw != nil && cw.day != nil {
				cw.day.add(now, time.Unix(u.Minute*60, 0), u.Tokens)
			}
		}
	}
}

func dayOf(t time.Time) int64 { return t.Unix() / 86400 }

func nextDay(now time.Time) time.Time {
	return time.Unix((dayOf(now)+1)*86400, 0)
}

func nextMonth(now time.Time) time.Time {
	u := now.UTC()
	return time.Date(u.Year(), u.Month()+1, 1, 0, 0, 0, 0, time.UTC)
}

func monthOfDay(day int64) int64 {
	u := time.Unix(day*86400, 0).UTC()
	return int64(u.Year())*12 + int64(u.Month()) - 1
}

func usd(nano int64) string { return fmt.Sprintf("$%.4f", float64(nano)/nanoPerUSD) }
