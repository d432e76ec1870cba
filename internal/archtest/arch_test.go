// Package archtest fails the build when an import points the wrong way:
// everything points at broker, broker points at nothing of ours, adapters
// never import each other, and the simulator and the Go client stay
// independent of the broker's code.
package archtest

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/bedrockqb/quotabroker"

type pkg struct {
	ImportPath string
	Imports    []string // non-test imports
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json=ImportPath,Imports", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func std(path string) bool { return !strings.Contains(strings.Split(path, "/")[0], ".") }

func rel(path string) string { return strings.TrimPrefix(strings.TrimPrefix(path, module), "/") }

func under(path, dir string) bool { r := rel(path); return r == dir || strings.HasPrefix(r, dir+"/") }

// leaves are the domain's standard-library leaves: they import the domain
// and nothing else of ours, and any package may import them.
var leaves = []string{"broker/quotaname", "broker/budgetfile", "broker/policyfile", "broker/pricefile", "broker/routefile", jsonpos}

// jsonpos places errors in the operator's JSON files; the leaves that parse
// those files share it, and it imports the standard library only.
const jsonpos = "broker/jsonpos"

// sharedAWS is the one package that adapters share: what every AWS client
// is built with. It imports nothing of ours, so sharing it couples no
// adapter to another.
const sharedAWS = "broker/awsclient"

func TestImportDirection(t *testing.T) {
	pkgs := listPackages(t)
	if len(pkgs) < 5 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	for _, p := range pkgs {
		for _, imp := range p.Imports {
			if why := violation(p.ImportPath, imp); why != "" {
				t.Errorf("%s imports %s: %s", rel(p.ImportPath), imp, why)
			}
		}
	}
}

// violation says why importer may not import imp, or "" if it may.
func violation(importer, imp string) string {
	r := rel(importer)
	ours := strings.HasPrefix(imp, module)
	if ours && under(imp, "cmd") {
		return "nothing imports a binary"
	}
	switch {
	// The domain and its standard-library leaves import nothing else.
	case r == "broker" || slices.Contains(leaves, r):
		leafMay := r != "broker" && r != jsonpos && (imp == module+"/broker" || imp == module+"/"+jsonpos)
		if !std(imp) && !leafMay {
			return "the domain imports only the standard library"
		}
	// The simulator is the independent model of AWS.
	case under(importer, "internal/bedrocksim") || under(importer, "cmd/bedrock-sim"):
		if ours && (under(imp, "broker") || under(imp, "server") || under(imp, "clients")) {
			return "the simulator must not share the broker's code"
		}
	// The Go client can become its own module: gen and gRPC only.
	case under(importer, "clients"):
		if ours && !under(imp, "gen") && !under(imp, "clients") {
			return "the client depends only on gen/"
		}
	// The server translates; concrete adapters are wired in cmd/.
	case under(importer, "server"):
		if ours && imp != module+"/broker" && !under(imp, "gen") && !under(imp, "server") {
			return "the server sees the domain only"
		}
	case r == sharedAWS:
		if ours {
			return "the plumbing adapters share imports nothing of ours"
		}
	// Adapters point at the domain and its leaves, never at each other
	// (the shared AWS plumbing aside) or at the server: only cmd/ wires
	// adapters together.
	case under(importer, "broker"):
		if ours && imp != module+"/broker" && !slices.Contains(leaves, rel(imp)) && rel(imp) != sharedAWS && !under(imp, r) {
			return "adapters import the domain, its leaves and " + sharedAWS + ", never each other"
		}
	}
	return ""
}

// TestViolation checks that the rules catch what they are for, so that a
// rule that stopped matching cannot pass unnoticed.
func TestViolation(t *testing.T) {
	for _, tc := range []struct {
		importer, imp string
		allowed       bool
	}{
		{"broker/awsmetrics", "broker/awsquota", false},
		{"broker/awsquota", "broker/bolt", false},
		{"broker/bolt", "server", false},
		{"broker/awsmetrics", "broker/awsclient", true},
		{"broker/awsquota", "broker/quotaname", true},
		{"broker/bolt", "broker", true},
		{"broker/awsclient", "broker", false},
		{"broker", "broker/bolt", false},
		{"broker/quotaname", "broker", true},
		{"server", "broker/bolt", false},
		{"clients/quotaclient", "broker", false},
		{"internal/bedrocksim", "broker/quotaname", false},
		{"cmd/quota-broker", "broker/awsquota", true},
		{"internal/probe", "cmd/quota-broker", false},
		{"broker/pricefile", "broker/jsonpos", true},
		{"broker/jsonpos", "broker", false},
		{"broker", "broker/jsonpos", false},
		{"broker/pricefile", "broker/budgetfile", false},
	} {
		why := violation(module+"/"+tc.importer, module+"/"+tc.imp)
		if (why == "") != tc.allowed {
			t.Errorf("%s importing %s: allowed %v, want %v (%q)", tc.importer, tc.imp, why == "", tc.allowed, why)
		}
	}
}
