package quotaclient_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/routefile"
	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

// ptHaiku is a Provisioned Throughput of Claude 3 Haiku in us-east-1 of
// testScenario's account.
const ptHaiku = "arn:aws:bedrock:us-east-1:111122223333:provisioned-model/pt-haiku"

// TestRouterProvisionedFirstThenOnDemand: a route [provisioned, on-demand]
// grants on the Provisioned Throughput until it is full, the Router calls
// its ARN, and then spills to on-demand; the simulator throttles nothing,
// and every call to the ARN ran on the throughput's own capacity.
func TestRouterProvisionedFirstThenOnDemand(t *testing.T) {
	t.Parallel()
	// 6,000 tokens a minute each, 0.9 of it for the broker; a call
	// reserves and is charged about 100 input + 50 output tokens (no
	// burndown for Haiku 3, none on a Provisioned Throughput): about 36
	// calls fill a target.
	sc := testScenario(1000, 6000, 1e6)
	sc.ProvisionedModelThroughputs = []bedrocksim.ProvisionedThroughput{
		{Name: "pt-haiku", ModelID: haiku3, ModelUnits: 2, Region: "us-east-1", TokensPerMinutePerUnit: 3000}}
	sim, url := startSim(t, sc, 1)
	pt := broker.Key{Region: "us-east-1", Scope: broker.ScopeProvisioned, Model: ptHaiku}
	od := broker.Key{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: haiku3}
	bp := startBroker(t, brokerOpts{specs: []broker.Spec{
		{Key: pt, Quota: broker.Limits{TPM: 6000}, Serves: haiku3, Source: "test"},
		{Key: od, Quota: broker.Limits{TPM: 6000}, Source: "test"},
	}})
	f, err := routefile.Parse("routes.json", []byte(`{"routes": [{"name": "haiku", "model": "`+haiku3+`", "targets": [
  {"region": "us-east-1", "model": "`+ptHaiku+`"},
  {"region": "us-east-1", "model": "`+haiku3+`"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	routes, err := f.Resolve([]broker.Key{pt, od})
	if err != nil {
		t.Fatal(err)
	}
	if err := bp.b.SetRoutes(routes); err != nil {
		t.Fatal(err)
	}
	qc := quotaclient.New(dial(t, bp.addr), quotaclient.WithWait(-1))
	r := newRouter(t, qc, "haiku", url)
	text := strings.Repeat("word ", 80)
	var got []string
	onPT := 0
	refused := false
	for range 100 {
		out, err := r.Converse(context.Background(), converseIn("", text, 50))
		if err != nil {
			var re *quotaclient.RefusedError
			if !errors.As(err, &re) {
				t.Fatal(err)
			}
			refused = true // both full
			break
		}
		l, ok := quotaclient.LeaseOf(out.ResultMetadata)
		if !ok || l.Route != "haiku" {
			t.Fatalf("lease of the call: %+v", l)
		}
		if l.CallModelID == ptHaiku {
			onPT++
		}
		g := l.CallModelID + ":" + l.RouteReason
		if len(got) == 0 || got[len(got)-1] != g {
			got = append(got, g)
		}
	}
	if want := ptHaiku + ":room " + haiku3 + ":spill"; !refused || strings.Join(got, " ") != want {
		t.Fatalf("calls went in runs %v (refused at the end: %v), want %s", got, refused, want)
	}
	st := sim.Stats()
	if st.Throttles != 0 {
		t.Fatalf("simulator: %d throttles, want 0", st.Throttles)
	}
	var ptAdmitted int64
	for _, q := range st.Quotas {
		if q.Code == "provisioned/pt-haiku" {
			ptAdmitted = q.Admitted
		}
	}
	if onPT < 30 || ptAdmitted != int64(onPT) {
		t.Fatalf("%d calls granted on the throughput, %d admitted by it; want the same, about 36", onPT, ptAdmitted)
	}
}
