package docs

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bedrockqb/quotabroker/internal/certtest"
)

// The documents whose commands the scenes run, by short names.
const (
	readme     = "README.md"
	benchmarks = "BENCHMARKS.md"
	goClient   = "docs/go-client.md"
	otherLangs = "docs/other-languages.md"
)

// notRunHere: commands no test runs, each with why. Everything else runs.
var notRunHere = []notRun{
	{claim{readme, "bash .ci/test"}, "the project's test command: it runs this test"},
	{claim{otherLangs, "bash .ci/tools.sh"}, "installs the pinned tools into the checkout's .bin/; .ci/test runs it before the tests"},
	{claim{otherLangs, "apt-get install -y protobuf-compiler protobuf-compiler-grpc python3-grpcio"},
		"installs Debian packages (root, network); clients/test.sh installs them when missing and the other-languages scene needs them"},
}

// scenes: each sets up what its commands need, runs them as the documents
// write them and checks their output against the documents'. To run a new
// command, claim it in the scene whose set-up it needs and run it there;
// a new set-up is a new scene.
var scenes = []*scene{
	{
		name: "grpcurl walkthrough against serve's example budgets",
		claims: []claim{
			{readme, "quota-broker serve"},
			{readme, "alias grpcurl='go run github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3'"},
			{readme, "grpcurl -plaintext localhost:50051 list"},
			{readme, "grpcurl -plaintext -H 'x-quotabroker-client: checkout-svc' -d '{ \"model_id\": \"us.anthropic.claude-sonnet-4-5-20250929-v1:0\"..."},
			{readme, "grpcurl -plaintext -H 'x-quotabroker-client: checkout-svc' -d '{\"lease_id\": \"tv3o536njcbxrvuwdcegzg52li\"..."},
			{readme, "grpcurl -plaintext -d '{\"model\": \"sonnet-4-5\"}' localhost:50051 quotabroker.v1.QuotaBroker/GetQuotaReport"},
			{readme, "grpcurl -plaintext -format-error -d '{\"model_id\": \"anthropic.claude-3-haiku-20240307-v1:0\"..."},
		},
		run: func(s *sceneRun) {
			s.serve(readme, "quota-broker serve", s.broker)

			// The alias runs the version .ci/tools.sh pins; the scenes run
			// that pinned grpcurl from PATH rather than compile it again.
			alias := s.cmd(readme, "alias grpcurl='go run github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3'")
			tools, err := os.ReadFile(filepath.Join(s.root, ".ci/tools.sh"))
			if err != nil {
				s.t.Fatal(err)
			}
			pinned := regexp.MustCompile(`github.com/fullstorydev/grpcurl/cmd/grpcurl@v[0-9.]+`).FindString(string(tools))
			if pinned == "" || !strings.Contains(alias.text, pinned) {
				s.t.Errorf("%s: the alias is not the grpcurl .ci/tools.sh pins (%s)", alias, pinned)
			}
			if r := s.bash(s.rewrite(alias.text), time.Minute); r.err != nil {
				s.t.Errorf("%s: %v %s", alias, r.err, r.stderr)
			}

			c, r := s.run(readme, "grpcurl -plaintext localhost:50051 list", time.Minute)
			s.check(c, r.stdout, sameSkeleton(c.output, r.stdout, nil))

			c, r = s.run(readme, "grpcurl -plaintext -H 'x-quotabroker-client: checkout-svc' -d '{ \"model_id\": \"us.anthropic.claude-sonnet-4-5-20250929-v1:0\"...", time.Minute)
			s.check(c, r.stdout, jsonKeys(c.output, r.stdout))
			var acquired struct{ Lease struct{ LeaseID string } }
			if err := json.Unmarshal([]byte(r.stdout), &acquired); err != nil || acquired.Lease.LeaseID == "" {
				s.t.Fatalf("%s: no lease id in %s", c, r.stdout)
			}

			// The walkthrough settles the lease it was given. The README
			// says another client (here: no header) may not.
			s.replace = []string{"tv3o536njcbxrvuwdcegzg52li", acquired.Lease.LeaseID}
			complete := s.cmd(readme, "grpcurl -plaintext -H 'x-quotabroker-client: checkout-svc' -d '{\"lease_id\": \"tv3o536njcbxrvuwdcegzg52li\"...")
			if r := s.bash(strings.Replace(s.rewrite(complete.text), "-H 'x-quotabroker-client: checkout-svc' ", "", 1), time.Minute); r.err == nil ||
				!strings.Contains(r.stderr, "PermissionDenied") {
				s.t.Errorf("%s without its header: want PermissionDenied as the README says, got %v\n%s%s", complete, r.err, r.stdout, r.stderr)
			}
			c, r = s.run(readme, "grpcurl -plaintext -H 'x-quotabroker-client: checkout-svc' -d '{\"lease_id\": \"tv3o536njcbxrvuwdcegzg52li\"...", time.Minute)
			s.check(c, r.stdout, jsonKeys(c.output, r.stdout))
			s.replace = nil

			c, r = s.run(readme, "grpcurl -plaintext -d '{\"model\": \"sonnet-4-5\"}' localhost:50051 quotabroker.v1.QuotaBroker/GetQuotaReport", time.Minute)
			s.check(c, r.stdout, jsonKeys(c.output, r.stdout))

			// "the second call within the minute is refused"
			haiku := "grpcurl -plaintext -format-error -d '{\"model_id\": \"anthropic.claude-3-haiku-20240307-v1:0\"..."
			c = s.cmd(readme, haiku)
			if r := s.bash(s.rewrite(c.text), time.Minute); r.err != nil {
				s.t.Fatalf("%s: the first call should be granted: %v\n%s%s", c, r.err, r.stdout, r.stderr)
			}
			c, r = s.fails(readme, haiku, time.Minute)
			s.check(c, r.stderr, jsonKeys(c.output, r.stderr))
		},
	},
}

// TestCoverage: every command the documents show is run by a scene or is
// in notRunHere with its reason.
func TestCoverage(t *testing.T) {
	checkCoverage(t, readCommands(t, documents(t)...), scenes, notRunHere)
}

// TestScenes runs the scenes, in parallel.
func TestScenes(t *testing.T) {
	cmds := readCommands(t, documents(t)...)
	for _, sc := range scenes {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			runScene(t, cmds, sc)
		})
	}
}

var (
	_ = exec.LookPath
	_ = certtest.NewCA
)
