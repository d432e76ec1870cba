package server

import (
	"go/ast"
	"go/constant"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// The ErrorInfo reasons are the names of the proto's Limit values, so that
// clients in any language can decode them from the published contract, and
// every limit kind of either side has exactly one row in limitOf: a kind
// added to the proto or to the domain without one fails here, not in a
// client that decodes LIMIT_UNSPECIFIED.
func TestLimitTableCoversDomainAndProto(t *testing.T) {
	domain := domainLimits(t)
	if len(domain) < 7 {
		t.Fatalf("found %d limit constants in package broker, want at least the 7 known: %v", len(domain), domain)
	}
	for name, l := range domain {
		wire, ok := limitOf[l]
		switch {
		case l == broker.LimitNone:
			if ok {
				t.Errorf("broker.%s has a row in limitOf; it names no refusal", name)
			}
		case !ok:
			t.Errorf("broker.%s (%v) has no row in limitOf (server/limit.go): its refusals would go out as LIMIT_UNSPECIFIED", name, l)
		case limitReason(l) != wire.String() || !strings.HasPrefix(limitReason(l), "LIMIT_"):
			t.Errorf("broker.%s: reason %q, want the proto name %q", name, limitReason(l), wire.String())
		}
	}
	byWire := map[pb.Limit]broker.Limit{}
	for l, wire := range limitOf {
		if other, dup := byWire[wire]; dup {
			t.Errorf("%v and %v both map to %v", l, other, wire)
		}
		byWire[wire] = l
		if _, known := pb.Limit_name[int32(wire)]; !known || wire == pb.Limit_LIMIT_UNSPECIFIED {
			t.Errorf("%v maps to %v, not a named proto limit", l, wire)
		}
	}
	for v, name := range pb.Limit_name {
		if _, ok := byWire[pb.Limit(v)]; !ok && pb.Limit(v) != pb.Limit_LIMIT_UNSPECIFIED {
			t.Errorf("proto %s has no row in limitOf (server/limit.go): the broker could never name it", name)
		}
	}
	if got := limitReason(broker.LimitNone); got != pb.Limit_LIMIT_UNSPECIFIED.String() {
		t.Errorf("reason of LimitNone = %q, want %q", got, pb.Limit_LIMIT_UNSPECIFIED.String())
	}
}

// domainLimits type-checks package broker from its source and returns every
// constant of type broker.Limit by name, so that a new constant is found
// without anyone listing it by hand. broker imports only the standard
// library, which the source importer reads from GOROOT.
func domainLimits(t *testing.T) map[string]broker.Limit {
	t.Helper()
	dir := filepath.Join("..", "broker")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var files []*ast.File
	for _, e := range entries {
		n := e.Name()
		if !strings.HasSuffix(n, ".go") || strings.HasSuffix(n, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, n), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	conf := types.Config{Importer: importer.ForCompiler(fset, "source", nil)}
	pkg, err := conf.Check("github.com/bedrockqb/quotabroker/broker", fset, files, nil)
	if err != nil {
		t.Fatalf("type-check package broker: %v", err)
	}
	limitType := pkg.Scope().Lookup("Limit")
	if limitType == nil {
		t.Fatal("package broker has no type Limit")
	}
	out := map[string]broker.Limit{}
	for _, name := range pkg.Scope().Names() {
		c, ok := pkg.Scope().Lookup(name).(*types.Const)
		if !ok || !types.Identical(c.Type(), limitType.Type()) {
			continue
		}
		v, exact := constantInt(c)
		if !exact {
			t.Fatalf("broker.%s: not an int constant", name)
		}
		out[name] = broker.Limit(v)
	}
	return out
}

func constantInt(c *types.Const) (int64, bool) {
	return constant.Int64Val(c.Val())
}
