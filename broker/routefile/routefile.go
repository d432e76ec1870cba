package routefile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/jsonpos"
)

// File is a parsed routes file, not yet checked against budgets.
type File struct {
	src    jsonpos.File // places errors: "name:line: ..."
	routes []routeEntry
}

type routeJSON struct {
	Name        string            `json:"name"`
	Model       string            `json:"model"`
	Targets     []json.RawMessage `json:"targets"`
	Geography   string            `json:"geography"`
	Regions     []string          `json:"regions"`
	OnDemand    bool              `json:"on_demand"`
	AllowGlobal bool              `json:"allow_global"`
}

type targetJSON struct {
	Region string `json:"region"`
	Model  string `json:"model"`
	Route  string `json:"route"`
}

type routeEntry struct {
	routeJSON
	field   string // routes[i]
	at      int64
	targets []targetEntry
}

type targetEntry struct {
	targetJSON
	field string // routes[i].targets[j]
	at    int64
}

// Load reads and resolves the file at path against the budgets the broker
// has.
func Load(path string, budgets []broker.Key) ([]broker.Route, error) {
	f, err := Read(path)
	if err != nil {
		return nil, err
	}
	return f.Resolve(budgets)
}

// Read reads and parses the file at path, for a broker to resolve against
// its budgets (broker.UseRoutes).
func Read(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("routes file: %w", err)
	}
	return Parse(path, data)
}

// Parse reads routes from data, strictly; name is used in errors.
func Parse(name string, data []byte) (*File, error) {
	f := &File{src: jsonpos.File{Name: name, Data: data}}
	var top struct {
		Routes []json.RawMessage `json:"routes"`
	}
	if err := decodeStrict(data, &top); err != nil {
		return nil, f.jsonErr(err, 0, 0, "")
	}
	if top.Routes == nil {
		return nil, f.src.Errorf(0, "no \"routes\" array")
	}
	if len(top.Routes) > broker.MaxRoutes {
		return nil, f.src.Errorf(0, "routes: %d routes; at most %d", len(top.Routes), broker.MaxRoutes)
	}
	next := int64(0)
	for i, raw := range top.Routes {
		at := locate(data, raw, &next)
		e := routeEntry{field: fmt.Sprintf("routes[%d]", i), at: at}
		if err := decodeStrict(raw, &e.routeJSON); err != nil {
			return nil, f.jsonErr(err, at, at, e.field)
		}
		tnext := at
		for j, traw := range e.Targets {
			tat := locate(data, traw, &tnext)
			te := targetEntry{field: fmt.Sprintf("%s.targets[%d]", e.field, j), at: tat}
			if err := decodeStrict(traw, &te.targetJSON); err != nil {
				return nil, f.jsonErr(err, tat, tat, te.field)
			}
			e.targets = append(e.targets, te)
		}
		f.routes = append(f.routes, e)
	}
	return f, nil
}

// decodeStrict decodes one JSON value, refusing unknown fields and
// anything after the value.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errTrailing
	}
	return nil
}

var errTrailing = errors.New("data after the JSON value")

// locate returns the offset in data of raw, a value decoded from it, found
// from *next on (values are found in document order, so equal values each
// get their own place); it moves *next past it.
func locate(data, raw []byte, next *int64) int64 {
	i := bytes.Index(data[*next:], raw)
	if i < 0 {
		return *next
	}
	at := *next + int64(i)
	*next = at + int64(len(raw))
	return at
}

// jsonErr turns a decoding error of a value at base into one with a line
// and the field.
func (f *File) jsonErr(err error, base, at int64, field string) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	prefix := field
	if prefix != "" {
		prefix += "."
	}
	switch {
	case errors.As(err, &syn):
		return f.src.Errorf(base+syn.Offset, "invalid JSON: %v", syn)
	case errors.As(err, &typ):
		return f.src.Errorf(base+typ.Offset, "%s%s: want %s, got JSON %s", prefix, typ.Field, typ.Type, typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return f.src.Errorf(int64(len(f.src.Data)), "unexpected end of file")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		if field == "" {
			return f.src.Errorf(at, "%s (want routes)", strings.TrimPrefix(err.Error(), "json: "))
		}
		return f.src.Errorf(at, "%s: %s", field, strings.TrimPrefix(err.Error(), "json: "))
	case errors.Is(err, errTrailing):
		return f.src.Errorf(at, "%s: data after the value", strings.TrimSuffix(prefix, "."))
	}
	return f.src.Errorf(at, "%s: %v", field, err)
}

// Resolve checks every route against budgets and returns them, targets
// expanded, or the first error (nothing is half-resolved).
func (f *File) Resolve(budgets []broker.Key) ([]broker.Route, error) {
	return f.Routes(budgets, budgets)
}

var _ broker.RouteSource = (*File)(nil)

// Routes is Resolve for a broker whose discovery lost some budgets
// (broker.RouteSource): a derived route takes its targets from live only,
// while a listed target, and a Region a derivation names, need a budget in
// have.
func (f *File) Routes(have, live []broker.Key) ([]broker.Route, error) {
	set := func(keys []broker.Key) map[broker.Key]bool {
		m := make(map[broker.Key]bool, len(keys))
		for _, k := range keys {
			m[k] = true
		}
		return m
	}
	byName := map[string]*routeEntry{}
	for i := range f.routes {
		e := &f.routes[i]
		if err := f.checkRoute(e); err != nil {
			return nil, err
		}
		if prev := byName[e.Name]; prev != nil {
			return nil, f.src.Errorf(e.at, "%s.name: %q is also %s (line %d)", e.field, e.Name, prev.field, f.src.Line(prev.at))
		}
		byName[e.Name] = e
	}
	r := resolver{f: f, have: set(have), live: set(live), byName: byName, done: map[string][]located{}}
	var out []broker.Route
	for i := range f.routes {
		e := &f.routes[i]
		ts, err := r.targets(e, nil)
		if err != nil {
			return nil, err
		}
		route := broker.Route{Name: e.Name, Model: e.Model}
		for _, t := range ts {
			route.Targets = append(route.Targets, t.Target)
		}
		if err := route.Validate(); err != nil {
			return nil, f.src.Errorf(e.at, "%s: %v", e.field, err)
		}
		out = append(out, route)
	}
	return out, nil
}

// checkRoute checks what a route says on its own.
func (f *File) checkRoute(e *routeEntry) error {
	switch {
	case e.Name == "":
		return f.src.Errorf(e.at, "%s.name: is missing", e.field)
	case e.Model == "":
		return f.src.Errorf(e.at, "%s.model: is missing (the base model the route serves)", e.field)
	}
	if err := (broker.Route{Name: e.Name, Targets: []broker.Target{{ModelID: "x"}}}).Validate(); err != nil {
		return f.src.Errorf(e.at, "%s.name: %v", e.field, err)
	}
	k, err := broker.ParseModelID(e.Model, "us-east-1", "us-east-1")
	if err != nil || k.Scope != broker.ScopeOnDemand {
		return f.src.Errorf(e.at, "%s.model: %q is not a base model id (name profiles in targets)", e.field, e.Model)
	}
	derived := e.Geography != "" || e.Regions != nil || e.OnDemand
	switch {
	case derived && e.Targets != nil:
		return f.src.Errorf(e.at, "%s: has both targets and a derivation (geography, regions, on_demand); give one", e.field)
	case !derived && len(e.Targets) == 0:
		return f.src.Errorf(e.at, "%s.targets: is missing or empty (or derive it: geography, regions)", e.field)
	case derived && e.Geography == "" && !e.OnDemand:
		return f.src.Errorf(e.at, "%s.geography: is missing", e.field)
	case e.Geography != "" && geographies[e.Geography] == nil:
		return f.src.Errorf(e.at, "%s.geography: %q is not a geography (want one of %s)", e.field, e.Geography, strings.Join(geographyNames(), ", "))
	}
	return nil
}

type located struct {
	broker.Target
	field string
	at    int64
}

type resolver struct {
	f      *File
	have   map[broker.Key]bool
	live   map[broker.Key]bool // derivations draw on these
	byName map[string]*routeEntry
	done   map[string][]located
}

// targets expands e's targets; path is the chain of routes including e,
// for cycles.
func (r *resolver) targets(e *routeEntry, path []string) ([]located, error) {
	f := r.f
	if ts, ok := r.done[e.Name]; ok {
		return ts, nil
	}
	if i := slices.Index(path, e.Name); i >= 0 {
		return nil, f.src.Errorf(e.at, "%s: routes include each other: %s", e.field, strings.Join(append(path[i:], e.Name), " -> "))
	}
	path = append(path, e.Name)
	var out []located
	var err error
	if e.Targets == nil {
		out, err = r.derive(e)
	} else {
		out, err = r.listed(e, path)
	}
	if err != nil {
		return nil, err
	}
	seen := map[broker.Key]located{}
	for _, t := range out {
		if prev, dup := seen[t.Key]; dup {
			return nil, f.src.Errorf(t.at, "%s: the same budget %s as %s (line %d)", t.field, t.Key, prev.field, f.src.Line(prev.at))
		}
		seen[t.Key] = t
	}
	if len(out) > broker.MaxRouteTargets {
		return nil, f.src.Errorf(e.at, "%s: %d targets; at most %d", e.field, len(out), broker.MaxRouteTargets)
	}
	r.done[e.Name] = out
	return out, nil
}

func (r *resolver) listed(e *routeEntry, path []string) ([]located, error) {
	f := r.f
	var out []located
	for _, te := range e.targets {
		if te.Route != "" {
			if te.Region != "" || te.Model != "" {
				return nil, f.src.Errorf(te.at, "%s: names a route and a region or model; give one", te.field)
			}
			sub := r.byName[te.Route]
			if sub == nil {
				return nil, f.src.Errorf(te.at, "%s.route: no route %q in the file", te.field, te.Route)
			}
			if sub.Model != e.Model {
				return nil, f.src.Errorf(te.at, "%s.route: %q serves %s, not %s", te.field, te.Route, sub.Model, e.Model)
			}
			ts, err := r.targets(sub, path)
			if err != nil {
				return nil, err
			}
			out = append(out, ts...)
			continue
		}
		switch {
		case te.Region == "":
			return nil, f.src.Errorf(te.at, "%s.region: is missing", te.field)
		case te.Model == "":
			return nil, f.src.Errorf(te.at, "%s.model: is missing", te.field)
		}
		t, err := broker.NewTarget(te.Model, te.Region)
		if err != nil {
			field := "model"
			var be *broker.Error
			if errors.As(err, &be) && be.Field == "region" {
				field = "region"
			}
			return nil, f.src.Errorf(te.at, "%s.%s: %v", te.field, field, err)
		}
		if err := r.check(e, t, te.field, te.at); err != nil {
			return nil, err
		}
		out = append(out, located{t, te.field, te.at})
	}
	return out, nil
}

// check is what every target must meet: it serves the route's model, its
// profile may be called from its Region, residency allows it, and there is
// a budget behind it.
func (r *resolver) check(e *routeEntry, t broker.Target, field string, at int64) error {
	f := r.f
	switch {
	case t.Key.Scope == broker.ScopeProvisioned:
		// Its ARN does not say what it runs: the broker checks its
		// budget's model against the route's (Route.Model) when the
		// routes are set.
		if !r.have[t.Key] {
			return f.src.Errorf(at, "%s.model: no budget for the provisioned throughput %s: give it one in the budgets file (\"model\": the ARN, \"serves\", \"tpm\"; or \"provisioned_rates\" for its model: AWS publishes no per-model-unit rate), or it is not InService", field, t.ModelID)
		}
		return nil
	case t.Key.Model != e.Model:
		return f.src.Errorf(at, "%s.model: %s serves %s, not the route's model %s", field, t.ModelID, t.Key.Model, e.Model)
	case t.Key.Scope == broker.ScopeGlobal && !e.AllowGlobal:
		return f.src.Errorf(at, "%s.model: %s is a global profile, which may run the call outside any geography; the route must say \"allow_global\": true", field, t.ModelID)
	case t.Key.Scope == broker.ScopeCrossRegion:
		geo, _, _ := strings.Cut(t.ModelID, ".")
		if g := geographies[geo]; g != nil && !g(t.Key.Region) {
			return f.src.Errorf(at, "%s.region: the %s profile %s cannot be called from %s", field, geo, t.ModelID, t.Key.Region)
		}
		if e.Geography != "" && geo != e.Geography {
			return f.src.Errorf(at, "%s.model: %s is outside the route's geography %s", field, t.ModelID, e.Geography)
		}
	}
	if !r.have[t.Key] {
		return f.src.Errorf(at, "%s: no budget for %s %s in %s", field, t.Key.Scope, t.Key.Model, t.Key.Region)
	}
	return nil
}

// derive builds a route's targets from the budgets: the geography's profile
// in each Region, then on-demand, then global (if allowed).
func (r *resolver) derive(e *routeEntry) ([]located, error) {
	f := r.f
	regions := e.Regions
	if regions == nil {
		seen := map[string]bool{}
		for k := range r.live {
			if k.Model == e.Model && !seen[k.Region] && (e.Geography == "" || geographies[e.Geography](k.Region)) {
				seen[k.Region] = true
				regions = append(regions, k.Region)
			}
		}
		slices.Sort(regions)
	}
	if len(regions) == 0 {
		return nil, f.src.Errorf(e.at, "%s: no Region of geography %q has a budget for %s", e.field, e.Geography, e.Model)
	}
	var out []located
	add := func(i int, modelID, region string) error {
		field := fmt.Sprintf("%s.regions[%d]", e.field, i)
		t, err := broker.NewTarget(modelID, region)
		if err != nil {
			return f.src.Errorf(e.at, "%s: %v", field, err)
		}
		if err := r.check(e, t, field, e.at); err != nil {
			return err
		}
		out = append(out, located{t, field, e.at})
		return nil
	}
	for i, region := range regions {
		if e.Geography != "" && !geographies[e.Geography](region) {
			return nil, f.src.Errorf(e.at, "%s.regions[%d]: %s is not a source Region of geography %s", e.field, i, region, e.Geography)
		}
		any := false
		for _, k := range []broker.Key{{Region: region, Scope: broker.ScopeCrossRegion, Model: e.Model}, {Region: region, Scope: broker.ScopeOnDemand, Model: e.Model}, {Region: region, Scope: broker.ScopeGlobal, Model: e.Model}} {
			any = any || r.have[k]
		}
		if !any {
			return nil, f.src.Errorf(e.at, "%s.regions[%d]: no budget for %s in %s", e.field, i, e.Model, region)
		}
	}
	if e.Geography != "" {
		for i, region := range regions {
			if r.live[broker.Key{Region: region, Scope: broker.ScopeCrossRegion, Model: e.Model}] {
				if err := add(i, e.Geography+"."+e.Model, region); err != nil {
					return nil, err
				}
			}
		}
	}
	if e.OnDemand {
		for i, region := range regions {
			if r.live[broker.Key{Region: region, Scope: broker.ScopeOnDemand, Model: e.Model}] {
				if err := add(i, e.Model, region); err != nil {
					return nil, err
				}
			}
		}
	}
	if e.AllowGlobal {
		for i, region := range regions {
			if r.live[broker.Key{Region: region, Scope: broker.ScopeGlobal, Model: e.Model}] {
				if err := add(i, "global."+e.Model, region); err != nil {
					return nil, err
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, f.src.Errorf(e.at, "%s: no budget in %s serves %s under this rule", e.field, strings.Join(regions, ", "), e.Model)
	}
	return out, nil
}

// geographies are the geo inference profiles' prefixes and the source
// Regions that may call each (bedrock-facts.md: a geo profile is called
// from a Region of its geography).
var geographies = map[string]func(region string) bool{
	"us":     func(r string) bool { return strings.HasPrefix(r, "us-") && !strings.HasPrefix(r, "us-gov-") },
	"us-gov": func(r string) bool { return strings.HasPrefix(r, "us-gov-") },
	"eu":     func(r string) bool { return strings.HasPrefix(r, "eu-") },
	"apac":   func(r string) bool { return strings.HasPrefix(r, "ap-") },
	"jp":     func(r string) bool { return r == "ap-northeast-1" || r == "ap-northeast-3" },
	"au":     func(r string) bool { return r == "ap-southeast-2" || r == "ap-southeast-4" },
	"ca":     func(r string) bool { return strings.HasPrefix(r, "ca-") },
	"in":     func(r string) bool { return strings.HasPrefix(r, "ap-south-") },
	"sa":     func(r string) bool { return strings.HasPrefix(r, "sa-") },
	"me":     func(r string) bool { return strings.HasPrefix(r, "me-") || strings.HasPrefix(r, "il-") },
	"af":     func(r string) bool { return strings.HasPrefix(r, "af-") },
}

func geographyNames() []string {
	var out []string
	for g := range geographies {
		out = append(out, g)
	}
	slices.Sort(out)
	return out
}
