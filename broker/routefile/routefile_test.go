package routefile_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/routefile"
)

const sonnet = "anthropic.claude-sonnet-4-5-20250929-v1:0"

// budgets: Sonnet 4.5's US profile in three Regions, its EU profile in
// one, its global profile and on-demand in us-east-1.
var budgets = []broker.Key{
	{Region: "us-east-1", Scope: broker.ScopeCrossRegion, Model: sonnet},
	{Region: "us-east-2", Scope: broker.ScopeCrossRegion, Model: sonnet},
	{Region: "us-west-2", Scope: broker.ScopeCrossRegion, Model: sonnet},
	{Region: "eu-west-1", Scope: broker.ScopeCrossRegion, Model: sonnet},
	{Region: "us-east-1", Scope: broker.ScopeGlobal, Model: sonnet},
	{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: sonnet},
	{Region: "us-east-1", Scope: broker.ScopeOnDemand, Model: "amazon.nova-pro-v1:0"},
	{Region: "us-east-1", Scope: broker.ScopeProvisioned, Model: provARN},
}

// provARN is a Provisioned Throughput with a budget in us-east-1.
const provARN = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/pt-sonnet"

func resolve(t *testing.T, data string) ([]broker.Route, error) {
	t.Helper()
	f, err := routefile.Parse("r.json", []byte(data))
	if err != nil {
		return nil, err
	}
	return f.Resolve(budgets)
}

func describe(r broker.Route) string {
	var parts []string
	for _, t := range r.Targets {
		parts = append(parts, t.String())
	}
	return r.Name + ": " + strings.Join(parts, " ")
}

func TestResolve(t *testing.T) {
	rs, err := resolve(t, `{"routes": [
  {"name": "us", "model": "`+sonnet+`", "targets": [
    {"region": "us-west-2", "model": "us.`+sonnet+`"},
    {"region": "us-east-1", "model": "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.`+sonnet+`"}]},
  {"name": "us-then-eu", "model": "`+sonnet+`", "targets": [
    {"route": "us"},
    {"region": "eu-west-1", "model": "eu.`+sonnet+`"}]},
  {"name": "derived", "model": "`+sonnet+`", "geography": "us", "regions": ["us-east-2", "us-east-1"]},
  {"name": "derived-all", "model": "`+sonnet+`", "geography": "us", "on_demand": true, "allow_global": true}
]}`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs {
		got = append(got, describe(r))
	}
	want := []string{
		"us: us-west-2/us." + sonnet + " us-east-1/us." + sonnet,
		"us-then-eu: us-west-2/us." + sonnet + " us-east-1/us." + sonnet + " eu-west-1/eu." + sonnet,
		"derived: us-east-2/us." + sonnet + " us-east-1/us." + sonnet,
		"derived-all: us-east-1/us." + sonnet + " us-east-2/us." + sonnet + " us-west-2/us." + sonnet +
			" us-east-1/" + sonnet + " us-east-1/global." + sonnet,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("routes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestProvisionedTarget: a provisioned model ARN is a target like any
// other; the caller calls the ARN itself, and the route carries its model
// for the broker to check the throughput's budget against.
func TestProvisionedTarget(t *testing.T) {
	rs, err := resolve(t, `{"routes": [{"name": "pt-first", "model": "`+sonnet+`", "targets": [
    {"region": "us-east-1", "model": "`+provARN+`"},
    {"region": "us-east-1", "model": "`+sonnet+`"}]}]}`)
	if err != nil {
		t.Fatal(err)
	}
	want := "pt-first: us-east-1/" + provARN + " us-east-1/" + sonnet
	if len(rs) != 1 || describe(rs[0]) != want || rs[0].Model != sonnet {
		t.Fatalf("routes %+v, want %s with model %s", rs, want, sonnet)
	}
	if k := rs[0].Targets[0].Key; k != (broker.Key{Region: "us-east-1", Scope: broker.ScopeProvisioned, Model: provARN}) || rs[0].Targets[0].ModelID != provARN {
		t.Fatalf("target %+v: want the ARN's budget, called by its ARN", rs[0].Targets[0])
	}
}

// TestResidencyExcludesGlobal: a derived route never has a global target
// unless it allows one, and a listed global target is an error without it.
func TestResidencyExcludesGlobal(t *testing.T) {
	rs, err := resolve(t, `{"routes": [{"name": "d", "model": "`+sonnet+`", "geography": "us", "on_demand": true}]}`)
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range rs[0].Targets {
		if tg.Key.Scope == broker.ScopeGlobal {
			t.Fatalf("derived route without allow_global has %s", tg)
		}
	}
	_, err = resolve(t, `{"routes": [{"name": "g", "model": "`+sonnet+`", "targets": [{"region": "us-east-1", "model": "global.`+sonnet+`"}]}]}`)
	if err == nil || !strings.Contains(err.Error(), `r.json:1: routes[0].targets[0].model: global.`+sonnet+` is a global profile`) {
		t.Fatalf("listed global target: %v", err)
	}
}

func TestErrorsNameFileLineAndField(t *testing.T) {
	us := func(region string) string {
		return fmt.Sprintf(`{"region": %q, "model": "us.%s"}`, region, sonnet)
	}
	route := func(name string, targets ...string) string {
		return fmt.Sprintf(`{"name": %q, "model": %q, "targets": [%s]}`, name, sonnet, strings.Join(targets, ",\n"))
	}
	for _, tc := range []struct{ name, data, want string }{
		{"syntax", "{\"routes\": [\n{\"name\": \"a\",, }]}", "r.json:2: invalid JSON"},
		{"unknown top", `{"route": []}`, `r.json:1: unknown field "route" (want routes)`},
		{"unknown route field", "{\"routes\": [\n\n{\"name\": \"a\", \"modle\": \"x\"}]}", `r.json:3: routes[0]: unknown field "modle"`},
		{"unknown target field", "{\"routes\": [{\"name\": \"a\", \"model\": \"" + sonnet + "\", \"targets\": [\n" + us("us-east-1") + ",\n{\"regoin\": \"us-east-1\"}]}]}", `r.json:3: routes[0].targets[1]: unknown field "regoin"`},
		{"type", "{\"routes\": [{\"name\": \"a\",\n \"model\": 5}]}", "r.json:2: routes[0].model: want string"},
		{"trailing", `{"routes": []} {}`, "data after"},
		{"no routes", `{}`, `no "routes" array`},
		{"no budget", "{\"routes\": [" + route("a", us("us-east-1"), us("us-west-1")) + "]}", "r.json:2: routes[0].targets[1]: no budget for cross-region " + sonnet + " in us-west-1"},
		{"other model", "{\"routes\": [" + route("a", `{"region": "us-east-1", "model": "amazon.nova-pro-v1:0"}`) + "]}", "routes[0].targets[0].model: amazon.nova-pro-v1:0 serves amazon.nova-pro-v1:0, not the route's model"},
		{"profile outside its geography", "{\"routes\": [" + route("a", `{"region": "us-east-1", "model": "eu.`+sonnet+`"}`) + "]}", "routes[0].targets[0].region: the eu profile eu." + sonnet + " cannot be called from us-east-1"},
		{"duplicate", "{\"routes\": [" + route("a", us("us-east-1"), us("us-east-2"), us("us-east-1")) + "]}", "r.json:3: routes[0].targets[2]: the same budget us-east-1/cross-region/" + sonnet + " as routes[0].targets[0] (line 1)"},
		{"duplicate through a route", "{\"routes\": [" + route("a", us("us-east-1")) + ",\n" + route("b", `{"route": "a"}`, us("us-east-1")) + "]}", "routes[1].targets[1]: the same budget"},
		{"cycle", "{\"routes\": [" + route("a", us("us-east-1"), `{"route": "b"}`) + ",\n" + route("b", `{"route": "c"}`) + ",\n" + route("c", `{"route": "a"}`) + "]}", "routes include each other: a -> b -> c -> a"},
		{"self", "{\"routes\": [" + route("a", `{"route": "a"}`) + "]}", "routes include each other: a -> a"},
		{"unknown route", "{\"routes\": [" + route("a", `{"route": "zz"}`) + "]}", `routes[0].targets[0].route: no route "zz" in the file`},
		{"name twice", "{\"routes\": [" + route("a", us("us-east-1")) + ",\n" + route("a", us("us-east-2")) + "]}", `r.json:2: routes[1].name: "a" is also routes[0] (line 1)`},
		{"no model", `{"routes": [{"name": "a", "targets": []}]}`, "routes[0].model: is missing"},
		{"profile as model", `{"routes": [{"name": "a", "model": "us.` + sonnet + `", "targets": []}]}`, "routes[0].model: \"us." + sonnet + "\" is not a base model id"},
		{"targets and derive", `{"routes": [{"name": "a", "model": "` + sonnet + `", "geography": "us", "targets": [` + us("us-east-1") + `]}]}`, "has both targets and a derivation"},
		{"bad geography", `{"routes": [{"name": "a", "model": "` + sonnet + `", "geography": "mars"}]}`, `routes[0].geography: "mars" is not a geography`},
		{"derived region outside", `{"routes": [{"name": "a", "model": "` + sonnet + `", "geography": "us", "regions": ["us-east-1", "eu-west-1"]}]}`, "routes[0].regions[1]: eu-west-1 is not a source Region of geography us"},
		{"derived region without budget", `{"routes": [{"name": "a", "model": "` + sonnet + `", "geography": "us", "regions": ["us-west-1"]}]}`, "routes[0].regions[0]: no budget for " + sonnet + " in us-west-1"},
		{"bad route name", `{"routes": [{"name": "a b", "model": "` + sonnet + `", "targets": [` + us("us-east-1") + `]}]}`, "routes[0].name: route: name \"a b\" contains white space"},
		{"bad region", `{"routes": [` + route("a", `{"region": "moon", "model": "us.`+sonnet+`"}`) + `]}`, "routes[0].targets[0].region: region: \"moon\" is not an AWS Region name"},
		{"provisioned ARN in another Region", "{\"routes\": [" + route("a", us("us-east-1"), `{"region": "us-west-2", "model": "`+provARN+`"}`) + "]}",
			"r.json:2: routes[0].targets[1].region: region: \"us-west-2\" disagrees with the Region \"us-east-1\" of the provisioned model ARN " + provARN},
		{"provisioned ARN without account", "{\"routes\": [" + route("a", `{"region": "us-east-1", "model": "arn:aws:bedrock:us-east-1::provisioned-model/pt-sonnet"}`) + "]}",
			`r.json:1: routes[0].targets[0].model: model_id: "arn:aws:bedrock:us-east-1::provisioned-model/pt-sonnet" is not a provisioned model ARN (want arn:aws:bedrock:REGION:ACCOUNT:provisioned-model/ID): account "" is not 12 digits`},
		{"provisioned ARN with a bad id", "{\"routes\": [" + route("a", `{"region": "us-east-1", "model": "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/a b"}`) + "]}",
			`routes[0].targets[0].model: model_id: "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/a b" is not a provisioned model ARN`},
		{"unknown provisioned ARN", "{\"routes\": [" + route("a", `{"region": "us-east-1", "model": "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/other"}`) + "]}",
			"routes[0].targets[0].model: no budget for the provisioned throughput arn:aws:bedrock:us-east-1:123456789012:provisioned-model/other: give it one in the budgets file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := resolve(t, tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "r.json:") {
				t.Fatalf("got %v\nwant an error with %q", err, tc.want)
			}
		})
	}
}

func TestTooManyTargets(t *testing.T) {
	var keys []broker.Key
	var targets []string
	for i := range broker.MaxRouteTargets + 1 {
		region := fmt.Sprintf("us-test-%d", i+1)
		keys = append(keys, broker.Key{Region: region, Scope: broker.ScopeCrossRegion, Model: sonnet})
		targets = append(targets, fmt.Sprintf(`{"region": %q, "model": "us.%s"}`, region, sonnet))
	}
	f, err := routefile.Parse("r.json", []byte(`{"routes": [{"name": "big", "model": "`+sonnet+`", "targets": [`+strings.Join(targets, ",")+`]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Resolve(keys); err == nil || !strings.Contains(err.Error(), "r.json:1: routes[0]: 17 targets; at most 16") {
		t.Fatalf("got %v", err)
	}
	if _, err := f.Resolve(keys[:broker.MaxRouteTargets]); err == nil || !strings.Contains(err.Error(), "no budget") {
		t.Fatalf("a target without budget among many: %v", err)
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.json")
	if err := os.WriteFile(path, []byte(`{"routes": [{"name": "d", "model": "`+sonnet+`", "geography": "us"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	rs, err := routefile.Load(path, budgets)
	if err != nil || len(rs) != 1 || len(rs[0].Targets) != 3 {
		t.Fatalf("%+v %v", rs, err)
	}
	if _, err := routefile.Load(filepath.Join(t.TempDir(), "none.json"), budgets); err == nil || !strings.Contains(err.Error(), "none.json") {
		t.Fatalf("missing file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"routes": [{"name": "a", "model": "` + sonnet + `", "targets": [{"region": "us-east-1", "model": "us.` + sonnet + `"}, {"route": "b"}]}, {"name": "b", "model": "` + sonnet + `", "geography": "us"}]}`))
	f.Add([]byte(`{"routes": [{"name": "a", "model": "x", "targets": [{"route": "a"}]}]}`))
	f.Add([]byte(`{"routes": [{"name": "p", "model": "` + sonnet + `", "targets": [{"region": "us-east-1", "model": "` + provARN + `"}, {"region": "us-east-1", "model": "` + sonnet + `"}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := routefile.Parse("fuzz.json", data)
		if err == nil {
			var rs []broker.Route
			rs, err = file.Resolve(budgets)
			for _, r := range rs {
				if verr := r.Validate(); verr != nil {
					t.Fatalf("resolved an invalid route: %v", verr)
				}
			}
		}
		if err != nil && !strings.HasPrefix(err.Error(), "fuzz.json:") {
			t.Fatalf("error without file and line: %v", err)
		}
	})
}

// TestRoutesLive: a derivation draws only on live budgets (those
// discovery still reports), default Regions and named ones alike, and a
// route that includes it follows; a listed target needs only a budget; a
// named Region with no budget at all is still a mistake, and a derived
// route left with no target an error naming its line.
func TestRoutesLive(t *testing.T) {
	f, err := routefile.Parse("r.json", []byte(`{"routes": [
  {"name": "listed", "model": "`+sonnet+`", "targets": [
    {"region": "us-west-2", "model": "us.`+sonnet+`"}, {"route": "named"}]},
  {"name": "named", "model": "`+sonnet+`", "geography": "us", "regions": ["us-east-2", "us-east-1"]},
  {"name": "default", "model": "`+sonnet+`", "geography": "us", "on_demand": true}
]}`))
	if err != nil {
		t.Fatal(err)
	}
	var live []broker.Key
	for _, k := range budgets {
		if k.Region != "us-west-2" && !(k.Region == "us-east-2" && k.Scope == broker.ScopeCrossRegion) {
			live = append(live, k)
		}
	}
	rs, err := f.Routes(budgets, live)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs {
		got = append(got, describe(r))
	}
	want := []string{
		"listed: us-west-2/us." + sonnet + " us-east-1/us." + sonnet,
		"named: us-east-1/us." + sonnet,
		"default: us-east-1/us." + sonnet + " us-east-1/" + sonnet,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var none []broker.Key
	for _, k := range live {
		if k.Region != "us-east-1" {
			none = append(none, k)
		}
	}
	if _, err := f.Routes(budgets, none); err == nil || !strings.Contains(err.Error(), "r.json:4: routes[1]: no budget in us-east-2, us-east-1 serves "+sonnet) {
		t.Fatalf("a derived route with no live target: %v", err)
	}
	bad, err := routefile.Parse("r.json", []byte(`{"routes": [{"name": "x", "model": "`+sonnet+`", "geography": "us", "regions": ["us-east-3"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Routes(budgets, live); err == nil || !strings.Contains(err.Error(), "regions[0]: no budget for "+sonnet+" in us-east-3") {
		t.Fatalf("a Region without any budget: %v", err)
	}
}
