package dashboard_test

import (
	"context"
	"strings"
	"testing"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/server/dashboard"
)

// TestPageShowsSpendAndCaps: with caps and prices, the page shows each
// client's spend against its money budget (marked at 80% and beyond) and
// its caps with their use; without them, neither table.
func TestPageShowsSpendAndCaps(t *testing.T) {
	t.Parallel()
	f := start(t, dashboard.Config{})
	if _, page := get(t, f.url+"/dashboard"); strings.Contains(page, `id="spend"`) || strings.Contains(page, `id="caps"`) {
		t.Fatal("spend or caps shown by a broker with neither")
	}
	k := f.keys[sonnet]
	f.b.SetPrices(map[broker.PriceKey]broker.Price{{Region: k.Region, Model: k.Model}: {Input: 0.003, Output: 0.015, Has: broker.RateInput | broker.RateOutput}})
	target, err := broker.NewTarget(sonnet, "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.b.SetRoutes([]broker.Route{{Name: "sonnet-us", Targets: []broker.Target{target}}}); err != nil {
		t.Fatal(err)
	}
	if err := f.b.SetCaps(broker.Caps{Clients: map[string]broker.ClientCaps{
		"team": {All: broker.CapLimits{TPM: 10_000}, Money: broker.Money{USDPerDay: 0.02},
			Routes: map[string]broker.CapLimits{"sonnet-us": {RPM: 30}}}}}); err != nil {
		t.Fatal(err)
	}
	// 1000 input at $0.003/1k + 1000 output at $0.015/1k: $0.018, 90% of
	// the day's $0.02; 6000 tokens of the 10,000 TPM cap.
	d, err := f.b.Acquire(context.Background(), broker.AcquireRequest{ModelID: sonnet, Client: "team", InputTokens: 1000, MaxOutputTokens: 1000})
	if err != nil || !d.Granted {
		t.Fatal(d, err)
	}
	_, page := get(t, f.url+"/dashboard")
	i, j := strings.Index(page, `id="spend"`), strings.Index(page, `id="caps"`)
	if i < 0 || j < i {
		t.Fatalf("page lacks the spend and caps tables:\n%s", page)
	}
	spend, caps := page[i:j], page[j:]
	for _, want := range []string{`<tr class="firing"><td class="key">team</td><td>$0.02</td>`, `$0.02 (90%)`, `(account)`} {
		if !strings.Contains(spend, want) {
			t.Errorf("spend table lacks %q:\n%s", want, spend)
		}
	}
	if !strings.Contains(caps, `<td class="key">team</td><td class="key">all models</td><td>-</td><td>6k/10k</td>`) ||
		!strings.Contains(caps, `<td class="key">team</td><td class="key">route sonnet-us</td><td>0/30</td><td>-</td>`) {
		t.Errorf("caps table:\n%s", caps[:min(len(caps), 800)])
	}
}
