package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// blankTimes replaces the time stamps of discover's JSON, which say when
// the command ran.
func blankTimes(t testing.TB, b []byte) []byte {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, b)
	}
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if k == "at" || k == "read_at" || k == "source_time" {
					x[k] = "TIME"
					continue
				}
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(v)
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(out, '\n')
}

func runDiscover(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	err = discover(context.Background(), args, &o, &e)
	return o.String(), e.String(), err
}

func TestDiscoverGolden(t *testing.T) {
	t.Parallel()
	out, _, err := runDiscover(t, "--region", "us-east-1", "--output", "json",
		"--from-file", "testdata/list-service-quotas.json", "--models-file", "testdata/list-foundation-models.json")
	if err != nil {
		t.Fatal(err)
	}
	got := blankTimes(t, []byte(out))
	path := filepath.Join("testdata", "discover.golden.json")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("discover --output json differs from %s; run go test -update and review the diff\n%s", path, got)
	}

	// The fields the JSON promises, on every quota.
	var doc struct {
		Quotas []map[string]any `json:"quotas"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Quotas) != 16 {
		t.Errorf("%d quotas, want every row of the file (16)", len(doc.Quotas))
	}
	for _, q := range doc.Quotas {
		for _, k := range []string{"region", "quota_code", "quota_name", "value", "default_value", "adjustable", "source", "scope", "metric", "model", "provider", "model_ids", "runtime"} {
			if _, ok := q[k]; !ok {
				t.Errorf("quota %v lacks %q", q["quota_code"], k)
			}
		}
		if q["runtime"] == false && q["reason"] == nil {
			t.Errorf("quota %v is not runtime and gives no reason", q["quota_code"])
		}
	}
}

func TestDiscoverTable(t *testing.T) {
	t.Parallel()
	out, _, err := runDiscover(t, "--region", "us-east-1",
		"--from-file", "testdata/list-service-quotas.json", "--models-file", "testdata/list-foundation-models.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^REGION +SCOPE +MODEL +RPM +TPM +TPD +CONCURRENCY$`),
		regexp.MustCompile(`(?m)^us-east-1 +on-demand +anthropic\.claude-3-haiku-20240307-v1:0 +1000 +2000000 +2880000000 +-$`),
		regexp.MustCompile(`(?m)^us-east-1 +cross-region +anthropic\.claude-3-haiku-20240307-v1:0 +- +4000000 +5760000000 +-$`),
		regexp.MustCompile(`(?m)^us-east-1 +global +anthropic\.claude-sonnet-4-20250514-v1:0 +- +400000 +- +-$`),
		regexp.MustCompile(`(?m)^Runtime quotas not brokered \(\d+\):$`),
		regexp.MustCompile(`L-TEST0002 .* value is 0: AWS allows none; not brokered`),
		regexp.MustCompile(`(?m)^16 quotas: \d+ became \d+ budgets, \d+ runtime quotas not brokered, 3 not runtime quotas`),
	} {
		if !want.MatchString(out) {
			t.Errorf("table lacks %s:\n%s", want, out)
		}
	}
}

func TestDiscoverOfflineWithoutCatalogue(t *testing.T) {
	t.Parallel()
	out, _, err := runDiscover(t, "--output", "json", "--region", "us-east-1", "--from-file", "testdata/list-service-quotas.json")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"reason": "no catalogue given"`) || !strings.Contains(out, `"budgets": []`) {
		t.Errorf("output:\n%s", out)
	}
}

// isolateAWS hides any AWS configuration of the machine running the test.
func isolateAWS(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
		"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
		"QUOTA_BROKER_REGIONS", "QUOTA_BROKER_AWS_ENDPOINT", "QUOTA_BROKER_OUTPUT", "QUOTA_BROKER_QUOTAS_FILE",
		"QUOTA_BROKER_MODELS_FILE", "QUOTA_BROKER_PROFILES_FILE", "QUOTA_BROKER_DISCOVER_TIMEOUT",
		"QUOTA_BROKER_PRICES", "QUOTA_BROKER_DISCOVER_PRICES"} {
		t.Setenv(k, "") // restored after the test
		os.Unsetenv(k)
	}
}

// TestDiscoverSimulator runs the command as a user would on a laptop: no
// AWS credentials, the simulator's endpoint, two Regions from the
// environment.
func TestDiscoverSimulator(t *testing.T) {
	isolateAWS(t)
	sim, err := bedrocksim.New(bedrocksim.Config{DisableLatency: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sim.Handler())
	defer srv.Close()
	t.Setenv("QUOTA_BROKER_REGIONS", "us-east-1, eu-central-1")
	t.Setenv("QUOTA_BROKER_AWS_ENDPOINT", srv.URL)
	out, stderr, err := runDiscover(t)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if !regexp.MustCompile(`(?m)^us-east-1 +cross-region +anthropic\.claude-sonnet-4-5-20250929-v1:0 +250 +500000 +1440000000 +-$`).MatchString(out) ||
		!strings.Contains(out, "eu-central-1 ") {
		t.Errorf("table:\n%s", out)
	}
	t.Log(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:])
}

// Without credentials and without an endpoint the command fails at once,
// saying what to do.
func TestDiscoverNoCredentials(t *testing.T) {
	isolateAWS(t)
	_, _, err := runDiscover(t, "--timeout", "20s")
	if err == nil || !strings.Contains(err.Error(), "no usable AWS credentials for us-east-1") || !strings.Contains(err.Error(), "--aws-endpoint") {
		t.Fatalf("err = %v", err)
	}
}

func TestDiscoverFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--output", "yaml"}, "want table or json"},
		{[]string{"--region", " , "}, "names no Region"},
		{[]string{"--models-file", "x.json"}, "go with --from-file"},
		{[]string{"--from-file", "x.json", "--region", "us-east-1,us-west-2"}, "exactly one --region"},
		{[]string{"--from-file", "x.json", "--aws-endpoint", "http://127.0.0.1:1"}, "drop --aws-endpoint"},
		{[]string{"--region", "mars-1"}, "not an AWS Region name"},
		{[]string{"extra"}, "unexpected argument"},
		{[]string{"--from-file", "testdata/missing.json"}, "read quotas file"},
	} {
		if _, _, err := runDiscover(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("discover %q: %v, want %q", tc.args, err, tc.want)
		}
	}
}
