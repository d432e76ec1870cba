package awsquota

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t testing.TB, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from the output; run go test -update and review the diff", path)
	}
}

// TestGeneralReference reads AWS's published quota table of June 2025
// (622 rows, saved as list-service-quotas output) against a hand-written
// modern catalogue, and pins every budget and every runtime-looking quota
// not brokered, with its reason.
func TestGeneralReference(t *testing.T) {
	t.Parallel()
	at := time.Date(2025, 6, 5, 0, 0, 0, 0, time.UTC)
	res, err := FromFiles(Files{Region: "us-east-1", Quotas: "testdata/list-service-quotas-gr-2025-06.json",
		Models: "testdata/catalogue-modern.json", Now: func() time.Time { return at }})
	if err != nil {
		t.Fatal(err)
	}
	checkAccounted(t, res)
	if len(res.Quotas) != 622 {
		t.Fatalf("%d quotas, want the table's 622", len(res.Quotas))
	}
	var b strings.Builder
	runtime := 0
	for _, q := range res.Quotas {
		if q.Runtime {
			runtime++
		}
	}
	fmt.Fprintf(&b, "%d quotas, %d runtime, %d budgets, %d skipped\n\nbudgets (region scope model rpm tpm tpd concurrency):\n",
		len(res.Quotas), runtime, len(res.Specs), len(res.Skipped))
	for _, s := range res.Specs {
		fmt.Fprintf(&b, "%s %s %s %d %d %d %d\n", s.Key.Region, s.Key.Scope, s.Key.Model, s.Quota.RPM, s.Quota.TPM, s.Quota.TPD, s.Quota.Concurrency)
	}
	fmt.Fprintf(&b, "\nruntime-looking quotas not brokered, or brokered in part:\n")
	for _, q := range res.Quotas {
		if (q.Scope == "on-demand" || q.Scope == "cross-region" || q.Scope == "global") && q.Reason != "" {
			fmt.Fprintf(&b, "%s %q runtime=%v: %s\n", q.QuotaCode, q.QuotaName, q.Runtime, q.Reason)
		}
	}
	golden(t, "gr-2025-06.golden.txt", []byte(b.String()))
	t.Logf("June 2025 table: %d quotas, %d runtime, %d budgets, %d skipped", len(res.Quotas), runtime, len(res.Specs), len(res.Skipped))
}

func TestFromFilesWithoutCatalogue(t *testing.T) {
	t.Parallel()
	res, err := FromFiles(Files{Region: "us-east-1", Quotas: "testdata/list-service-quotas-gr-2025-06.json"})
	if err != nil {
		t.Fatal(err)
	}
	checkAccounted(t, res)
	if len(res.Specs) != 0 {
		t.Errorf("%d budgets without a catalogue", len(res.Specs))
	}
	n := 0
	for _, q := range res.Quotas {
		if q.Reason == reasonNoCatalog {
			n++
			if len(q.ModelIDs) != 0 || q.Model == "" || q.Metric == "other" {
				t.Errorf("%s: %+v", q.QuotaCode, q)
			}
		}
	}
	if n == 0 {
		t.Error("no quota says the catalogue is missing")
	}
}

func TestFromFilesErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"modelSummaries": []}`), 0o644)
	for _, tc := range []struct {
		f    Files
		want string
	}{
		{Files{Region: "nowhere", Quotas: bad}, "not an AWS Region name"},
		{Files{Region: "us-east-1"}, "no quotas file"},
		{Files{Region: "us-east-1", Quotas: filepath.Join(dir, "missing.json")}, "read quotas file"},
		{Files{Region: "us-east-1", Quotas: bad}, `no "Quotas" array`},
		{Files{Region: "us-east-1", Quotas: "testdata/list-service-quotas-gr-2025-06.json", Models: "testdata/list-service-quotas-gr-2025-06.json"}, "neither"},
	} {
		if _, err := FromFiles(tc.f); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("FromFiles(%+v): %v, want %q", tc.f, err, tc.want)
		}
	}
}
