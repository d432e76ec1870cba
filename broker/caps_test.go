package broker_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

func capsOf(client string, cc broker.ClientCaps) broker.Caps {
	return broker.Caps{Clients: map[string]broker.ClientCaps{client: cc}}
}

// TestCapWaitersWaitFairly: a client's callers waiting on its own cap wait
// until the cap's window frees, first come first served, while another
// client on the same budget is served at once.
func TestCapWaitersWaitFairly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := broker.Config{Margin: 1, Caps: capsOf("team", broker.ClientCaps{All: broker.CapLimits{TPM: 100}})}
		b := bubbleBrokerWith(t, cfg, spec(haiku3, broker.Limits{TPM: 1_000_000}))
		ctx := context.Background()
		req := broker.AcquireRequest{ModelID: haiku3, Client: "team", InputTokens: 50, MaxOutputTokens: 50} // 100
		if d, err := b.Acquire(ctx, req); err != nil || !d.Granted {
			t.Fatalf("first grant: %+v %v", d, err)
		}
		start := time.Now()
		req.Wait = 3 * time.Minute
		first := goAcquire(b, ctx, req)
		synctest.Wait()
		second := goAcquire(b, ctx, req)
		synctest.Wait()
		other, err := b.Acquire(ctx, broker.AcquireRequest{ModelID: haiku3, Client: "other", InputTokens: 5000, MaxOutputTokens: 100})
		if err != nil || !other.Granted || other.Waited != 0 {
			t.Fatalf("another client behind a capped one: %+v %v", other, err)
		}
		r := <-first
		if r.err != nil || !r.d.Granted || time.Since(start) < time.Minute || time.Since(start) > time.Minute+time.Second {
			t.Fatalf("first waiter: %+v %v after %v, want granted once the minute slid", r.d, r.err, time.Since(start))
		}
		select {
		case r := <-second:
			t.Fatalf("second waiter served with the first in the same minute: %+v %v", r.d, r.err)
		default:
		}
		r = <-second
		if r.err != nil || !r.d.Granted || time.Since(start) < 2*time.Minute {
			t.Fatalf("second waiter: %+v %v after %v", r.d, r.err, time.Since(start))
		}
		caps := b.Spend().Caps
		if len(caps) != 1 || caps[0].Client != "team" || caps[0].Tokens != 100 || caps[0].Refused != 0 {
			t.Errorf("caps in the report: %+v", caps)
		}
	})
}

// TestAllModelsCapFreedElsewhere: a settlement on one budget frees an
// all-models cap for the client's waiter on another budget at once.
func TestAllModelsCapFreedElsewhere(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := broker.Config{Margin: 1, Caps: capsOf("team", broker.ClientCaps{All: broker.CapLimits{TPM: 1000}})}
		b := bubbleBrokerWith(t, cfg, spec(haiku3, broker.Limits{TPM: 1_000_000}), spec(sonnet45, broker.Limits{TPM: 1_000_000}))
		ctx := context.Background()
		held, err := b.Acquire(ctx, broker.AcquireRequest{ModelID: sonnet45, Client: "team", MaxOutputTokens: 180}) // 900
		if err != nil || !held.Granted {
			t.Fatal(held, err)
		}
		ch := goAcquire(b, ctx, broker.AcquireRequest{ModelID: haiku3, Client: "team", MaxOutputTokens: 500, Wait: time.Minute})
		synctest.Wait()
		select {
		case r := <-ch:
			t.Fatalf("granted over the cap: %+v", r)
		default:
		}
		time.Sleep(2 * time.Second)
		if _, err := b.Complete(ctx, held.Lease.ID, broker.OutcomeSuccess, broker.Usage{OutputTokens: 10}); err != nil {
			t.Fatal(err)
		}
		if r := <-ch; r.err != nil || !r.d.Granted || r.d.Waited != 2*time.Second {
			t.Fatalf("waiter on the other budget: %+v %v", r.d, r.err)
		}
	})
}

// TestCappedGrantsSkipEscrow: on a budget busy enough to grant from
// escrow chunks, a client held to a cap is still committed grant by grant
// with its record, so a crash (no sweep, no close) leaves its cap's window
// whole; the others draw from the chunk.
func TestCappedGrantsSkipEscrow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.cfg.Caps = capsOf("team", broker.ClientCaps{Models: map[string]broker.CapLimits{haiku3: {TPM: 2000}}})
		e.open()
		if err := e.b.SetSpecs(context.Background(), []broker.Spec{spec(haiku3, broker.Limits{RPM: 6400, TPM: 1 << 40})}); err != nil {
			t.Fatal(err)
		}
		_, _, _, stop := escrowed(t, e, 4) // a chunk is live
		before, _ := e.store.state()
		req := broker.AcquireRequest{ModelID: haiku3, Client: "team", InputTokens: 100, MaxOutputTokens: 100}
		for range 5 {
			e.mustGrant(req)
		}
		if got, _ := e.store.state(); got != before+5 {
			t.Errorf("%d commits for 5 grants of a capped client, want one each", got-before)
		}
		stop() // killed: no sweep
		e2 := &env{t: t, clock: e.clock, store: e.store, cfg: e.cfg}
		e2.open()
		caps := e2.b.Spend().Caps
		if len(caps) != 1 || caps[0].Tokens != 1000 || caps[0].Requests != 5 {
			t.Fatalf("after the crash the cap holds %+v, want the 5 grants of 200 tokens", caps)
		}
		for range 5 {
			e2.mustGrant(req)
		}
		if d, err := e2.acquire(req); err != nil || d.Granted || d.Blocked != broker.LimitClientCap || !strings.Contains(d.Cap, "TPM cap 2000") {
			t.Fatalf("over the cap after the crash: %+v %v", d, err)
		}
	})
}

// TestSetCapsKeepsOldOnError: caps naming a model no budget has are
// refused and the caps in force stay; valid caps replace them and keep the
// window of a cap that stays.
func TestSetCapsKeepsOldOnError(t *testing.T) {
	e := newEnv(t, spec(haiku3, broker.Limits{TPM: 1_000_000}))
	ok := capsOf("team", broker.ClientCaps{All: broker.CapLimits{TPM: 300}})
	if err := e.b.SetCaps(ok); err != nil {
		t.Fatal(err)
	}
	req := broker.AcquireRequest{ModelID: haiku3, Client: "team", InputTokens: 100, MaxOutputTokens: 100}
	e.mustGrant(req)
	bad := capsOf("team", broker.ClientCaps{Models: map[string]broker.CapLimits{"anthropic.claude-nonesuch": {RPM: 1}}})
	err := e.b.SetCaps(bad)
	if broker.KindOf(err) != broker.KindInvalid || !strings.Contains(err.Error(), `clients.team.caps.models.anthropic.claude-nonesuch: no budget has model`) {
		t.Fatalf("unknown model: %v", err)
	}
	if d, err := e.acquire(req); err != nil || d.Granted || d.Blocked != broker.LimitClientCap {
		t.Fatalf("the old cap of 300 no longer holds after a failed reload: %+v %v", d, err)
	}
	if err := e.b.SetCaps(capsOf("team", broker.ClientCaps{All: broker.CapLimits{TPM: 500}})); err != nil {
		t.Fatal(err)
	}
	e.mustGrant(req) // 400 of 500: the window of 200 stayed
	if d, _ := e.acquire(req); d.Granted {
		t.Fatal("granted 600 tokens under a cap of 500: the reload forgot the window")
	}
}

// BenchmarkAcquireCompleteCaps is BenchmarkAcquireComplete with tenants:
// "none" as it, "priced" with prices (spend kept, nothing enforced), and
// "capped" with every client held to TPM and TPD caps and the account to a
// money budget (none of them reached), so the cost of the checks is
// compared within one run.
//
//	go test -run '^$' -bench AcquireCompleteCaps -cpu 1,2 ./broker/
func BenchmarkAcquireCompleteCaps(b *testing.B) {
	prices := map[broker.PriceKey]broker.Price{{Region: "us-east-1", Model: haiku3}: {Input: 0.00025, Output: 0.00125,
		Has: broker.RateInput | broker.RateOutput}}
	caps := broker.Caps{Clients: map[string]broker.ClientCaps{}, Account: broker.Money{USDPerDay: 1e8}}
	for i := range 64 {
		caps.Clients["client-"+strconv.Itoa(i+1)] = broker.ClientCaps{All: broker.CapLimits{TPM: 1e9, TPD: 1e12}}
	}
	for _, c := range []struct {
		name string
		cfg  broker.Config
	}{
		{"none", broker.Config{Margin: 1}},
		{"priced", broker.Config{Margin: 1, Prices: prices}},
		{"capped", broker.Config{Margin: 1, Prices: prices, Caps: caps}},
	} {
		b.Run(c.name, func(b *testing.B) {
			benchAcquireComplete(b, c.cfg)
		})
	}
}

// TestAccountMoneyBudget: the account's money budget holds every client
// together; its refusals are the account's, not the client's, and the
// report's spend adds up per client, per model and for the account.
func TestAccountMoneyBudget(t *testing.T) {
	e := newEnv(t)
	e.cfg.Prices = map[broker.PriceKey]broker.Price{{Region: "us-east-1", Model: haiku3}: {Input: 1, Output: 1, Has: broker.RateInput | broker.RateOutput}}
	e.cfg.Caps = broker.Caps{Account: broker.Money{USDPerMonth: 3}, Clients: map[string]broker.ClientCaps{"rich": {Money: broker.Money{USDPerDay: 100}}}}
	e.open()
	if err := e.b.SetSpecs(context.Background(), []broker.Spec{spec(haiku3, broker.Limits{TPM: 1_000_000})}); err != nil {
		t.Fatal(err)
	}
	// 500 input + 500 output at $1 per 1,000 each: $1 reserved.
	req := func(client string) broker.AcquireRequest {
		return broker.AcquireRequest{ModelID: haiku3, Client: client, InputTokens: 500, MaxOutputTokens: 500}
	}
	e.mustGrant(req("a"))
	e.mustGrant(req("b"))
	e.mustGrant(req("rich"))
	for _, c := range []string{"a", "rich"} {
		d, err := e.acquire(req(c))
		if err != nil || d.Granted || d.Blocked != broker.LimitMoney || !strings.Contains(d.Cap, "the account's money budget per month $3.0000") {
			t.Fatalf("client %s past the account's budget: %+v %v", c, d, err)
		}
	}
	sp := e.b.Spend()
	if sp.Account.MonthUSD != 3 || sp.Account.Refused != 2 || len(sp.Clients) != 3 || len(sp.Models) != 1 || sp.Models[0].MonthUSD != 3 {
		t.Fatalf("spend %+v", sp)
	}
	for _, c := range sp.Clients {
		if c.MonthUSD != 1 || c.Refused != 0 || len(c.Models) != 1 {
			t.Errorf("client %s: %+v", c.Client, c)
		}
	}
}

// TestCappedGrantUndoneWhenStoreFails: a grant whose commit fails takes
// back its charge on the client's cap and its spend, as on the budget.
func TestCappedGrantUndoneWhenStoreFails(t *testing.T) {
	e := newEnv(t)
	e.cfg.Prices = map[broker.PriceKey]broker.Price{{Region: "us-east-1", Model: haiku3}: {Input: 1, Output: 1, Has: broker.RateInput | broker.RateOutput}}
	e.cfg.Caps = capsOf("team", broker.ClientCaps{All: broker.CapLimits{TPM: 1000}, Money: broker.Money{USDPerDay: 1}})
	e.open()
	if err := e.b.SetSpecs(context.Background(), []broker.Spec{spec(haiku3, broker.Limits{TPM: 1_000_000})}); err != nil {
		t.Fatal(err)
	}
	req := broker.AcquireRequest{ModelID: haiku3, Client: "team", InputTokens: 500, MaxOutputTokens: 500} // 1000 tokens, $1
	e.store.setFail(errDiskFull)
	if _, err := e.acquire(req); broker.KindOf(err) != broker.KindUnavailable {
		t.Fatalf("acquire with a failing store: %v", err)
	}
	e.store.setFail(nil)
	sp := e.b.Spend()
	if sp.Account.TodayUSD != 0 || sp.Caps[0].Tokens != 0 || sp.Caps[0].Requests != 0 {
		t.Fatalf("after the undone grant: %+v", sp)
	}
	e.mustGrant(req) // the whole cap and budget are there again
}

// TestAccountMoneyKeepsEscrow: under the account's money budget alone,
// grants still draw from escrow chunks; a chunk commits a bound of its
// spend, so a crash before it closes leaves the account's spend at least
// what was granted, and a crash after it closes leaves it exact.
func TestAccountMoneyKeepsEscrow(t *testing.T) {
	for _, closed := range []bool{false, true} {
		t.Run(map[bool]string{false: "open chunk", true: "closed chunk"}[closed], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t)
				e.cfg.Prices = map[broker.PriceKey]broker.Price{{Region: "us-east-1", Model: haiku3}: {Input: 1, Output: 1, Has: broker.RateInput | broker.RateOutput}}
				e.cfg.Caps = broker.Caps{Account: broker.Money{USDPerDay: 1e6}}
				e.open()
				if err := e.b.SetSpecs(context.Background(), []broker.Spec{spec(haiku3, broker.Limits{RPM: 6400, TPM: 1 << 40})}); err != nil {
					t.Fatal(err)
				}
				single, drawn, c, stop := escrowed(t, e, 8)      // fails unless grants draw from a chunk
				granted := 0.2 * float64(len(single)+len(drawn)) // 100 input + 100 output at $1 per 1,000
				if got := e.b.Spend().Account.TodayUSD; !near(got, granted) {
					t.Fatalf("spend before the crash $%v, want $%v", got, granted)
				}
				if closed {
					e.clock.Advance(c.End.Sub(e.clock.Now()) + time.Millisecond)
					e.b.Sweep(context.Background())
				}
				stop() // killed
				e2 := &env{t: t, clock: e.clock, store: e.store, cfg: e.cfg}
				e2.open()
				got := e2.b.Spend().Account.TodayUSD
				switch bound := float64(c.Tokens) / 1000; {
				case closed && !near(got, granted):
					t.Errorf("after a crash with the chunk closed the account spent $%v, want $%v", got, granted)
				case !closed && !near(got, 0.2*float64(len(single))+bound):
					t.Errorf("after a crash with the chunk open the account spent $%v, want $%v granted one by one + the chunk's bound $%v (%d tokens)",
						got, 0.2*float64(len(single)), bound, c.Tokens)
				case !closed && got < granted:
					t.Errorf("after a crash the account spent $%v, less than the $%v granted", got, granted)
				}
			})
		})
	}
}

func near(a, b float64) bool { return a-b < 1e-6 && b-a < 1e-6 }

// TestGlobalProfilePricedAtItsOwnRates: a global budget's spend uses the
// "global." profile's price where the source lists one (Claude 4.5 is
// cheaper there), and the model's price where it does not.
func TestGlobalProfilePricedAtItsOwnRates(t *testing.T) {
	const sonnet = "anthropic.claude-sonnet-4-5-20250929-v1:0"
	both := broker.RateInput | broker.RateOutput
	e := newEnv(t)
	e.cfg.Prices = map[broker.PriceKey]broker.Price{
		{Region: "us-east-1", Model: sonnet}:             {Input: 2, Output: 2, Has: both},
		{Region: "us-east-1", Model: "global." + sonnet}: {Input: 1, Output: 1, Has: both},
		{Region: "us-east-1", Model: haiku3}:             {Input: 3, Output: 3, Has: both},
	}
	e.open()
	scoped := func(sc broker.Scope, model string) broker.Spec {
		return broker.Spec{Key: broker.Key{Region: "us-east-1", Scope: sc, Model: model}, Quota: broker.Limits{TPM: 1_000_000}, Source: "test"}
	}
	specs := []broker.Spec{scoped(broker.ScopeGlobal, sonnet), scoped(broker.ScopeCrossRegion, sonnet), scoped(broker.ScopeGlobal, haiku3)}
	if err := e.b.SetSpecs(context.Background(), specs); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"global." + sonnet, "us." + sonnet, "global." + haiku3} {
		e.mustGrant(broker.AcquireRequest{ModelID: id, Client: "a", InputTokens: 500, MaxOutputTokens: 500})
	}
	want := map[broker.Scope]map[string]float64{
		broker.ScopeGlobal:      {sonnet: 1, haiku3: 3}, // its own rate; the model's where none is listed
		broker.ScopeCrossRegion: {sonnet: 2},            // the source Region's rate
	}
	sp := e.b.Spend()
	if len(sp.Models) != 3 {
		t.Fatalf("models %+v", sp.Models)
	}
	for _, m := range sp.Models {
		if w := want[m.Key.Scope][m.Key.Model]; !m.Priced || m.TodayUSD != w {
			t.Errorf("%s: priced %v, $%v today; want $%v", m.Key, m.Priced, m.TodayUSD, w)
		}
	}
}
