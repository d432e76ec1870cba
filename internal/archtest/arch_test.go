// Package archtest fails the build when an import points the wrong way:
// everything points at broker, broker points at nothing of ours, and the
// simulator and the Go client stay independent of the broker's code.
package archtest

import (
	"encoding/json"
	"os/exec"
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

func TestImportDirection(t *testing.T) {
	pkgs := listPackages(t)
	if len(pkgs) < 5 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	for _, p := range pkgs {
		r := rel(p.ImportPath)
		for _, imp := range p.Imports {
			ours := strings.HasPrefix(imp, module)
			switch {
			// The domain and its standard-library leaves import nothing else.
			case r == "broker" || r == "broker/quotaname" || r == "broker/budgetfile" || r == "broker/policyfile":
				if !std(imp) && !(r != "broker" && imp == module+"/broker") {
					t.Errorf("%s imports %s: the domain imports only the standard library", r, imp)
				}
			// The simulator is the independent model of AWS.
			case under(p.ImportPath, "internal/bedrocksim") || under(p.ImportPath, "cmd/bedrock-sim"):
				if ours && (under(imp, "broker") || under(imp, "server") || under(imp, "clients")) {
					t.Errorf("%s imports %s: the simulator must not share the broker's code", r, imp)
				}
			// The Go client can become its own module: gen and gRPC only.
			case under(p.ImportPath, "clients"):
				if ours && !under(imp, "gen") && !under(imp, "clients") {
					t.Errorf("%s imports %s: the client depends only on gen/", r, imp)
				}
			// The server translates; concrete adapters are wired in cmd/.
			case under(p.ImportPath, "server"):
				if ours && imp != module+"/broker" && !under(imp, "gen") && !under(imp, "server") {
					t.Errorf("%s imports %s: the server sees the domain only", r, imp)
				}
			// Adapters point at the domain, never at each other's insides or
			// at the server.
			case under(p.ImportPath, "broker"):
				if ours && (under(imp, "server") || under(imp, "cmd") || under(imp, "clients")) {
					t.Errorf("%s imports %s: adapters point at the domain only", r, imp)
				}
			}
			if ours && under(imp, "cmd") {
				t.Errorf("%s imports %s: nothing imports a binary", r, imp)
			}
		}
	}
}
