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
	{claim{otherLangs, "apt-get install -y protobuf-compiler protobuf-compiler-grpc libprotobuf-dev python3-grpcio"},
		"installs Debian packages (root, network); clients/test.sh installs them when missing and the other-languages scene needs them"},
	{claim{benchmarks, "bash bench/ghz/run.sh -c 50 -z 10s -r 3"},
		"compiles ghz and gubernator (minutes on this machine) before its first line, then runs for minutes; BENCHMARKS.md holds its figures"},
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
	{
		name: "a route with a Provisioned Throughput first",
		claims: []claim{
			{readme, "quota-broker serve --budgets pt-budgets.json --routes pt-routes.json"},
			{readme, "grpcurl -plaintext -d '{\"route\": \"haiku\"..."},
		},
		run: func(s *sceneRun) {
			// The two files are the README's own blocks, as it shows them.
			md, err := os.ReadFile(filepath.Join(s.root, readme))
			if err != nil {
				s.t.Fatal(err)
			}
			for _, name := range []string{"pt-budgets.json", "pt-routes.json"} {
				m := regexp.MustCompile("(?s)`" + regexp.QuoteMeta(name) + "`:\n\n```json\n(.*?)```\n").FindSubmatch(md)
				if m == nil {
					s.t.Fatalf("%s: no ```json block after `%s`:", readme, name)
				}
				s.write(name, string(m[1]))
			}
			s.serve(readme, "quota-broker serve --budgets pt-budgets.json --routes pt-routes.json", s.broker)
			c, r := s.run(readme, "grpcurl -plaintext -d '{\"route\": \"haiku\"...", time.Minute)
			s.check(c, r.stdout, jsonKeys(c.output, r.stdout))
			const arn = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/support-bot"
			var got struct {
				Lease struct {
					Budget         struct{ Scope, Model string }
					ModelID        string
					ReservedTokens string
				}
				Route struct{ Reason string }
			}
			if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got.Lease.ModelID != arn || got.Lease.Budget.Scope != "SCOPE_PROVISIONED" ||
				got.Lease.Budget.Model != arn || got.Lease.ReservedTokens != "1500" || got.Route.Reason != "ROUTE_REASON_ROOM" {
				s.t.Errorf("%s: want a lease on the throughput, called by its ARN, as the README shows; got %s (%v)", c, r.stdout, err)
			}
		},
	},
	{
		name: "demo: report, charts, history, increase",
		claims: []claim{
			{readme, "go run ./cmd/quota-broker demo"},
			{readme, "quota-broker report [--model sonnet] [--wide] [--output json]"},
			{readme, "quota-broker report"},
			{readme, "quota-broker alarms [--apply] [--delete]"},
			{readme, "quota-broker alarms --regions us-east-1"},
			{readme, "quota-broker alarms --regions us-east-1 --apply --sns-topic arn:aws:sns:us-east-1:123456789012:bedrock-ops"},
			{readme, "quota-broker alarms --regions us-east-1 --delete --apply"},
			{readme, "quota-broker alarms --aws-endpoint http://127.0.0.1:8566"},
			{readme, "quota-broker alarms --aws-endpoint http://127.0.0.1:8566 --apply --datapoints 1"},
			{readme, "aws --endpoint-url http://127.0.0.1:8566 --region us-east-1 cloudwatch describe-alarms --state-value ALARM ..."},
			{readme, "quota-broker report --svg chart.svg [--span day]"},
			{readme, "grpcurl -plaintext -d '{\"model\": \"claude-sonnet-4-5\", \"step\": \"600s\"}' localhost:50051 quotabroker.v1.QuotaBroker/GetUsageHistory"},
			{readme, "quota-broker increase --model us.anthropic.claude-sonnet-4-5-20250929-v1:0 --period 1d --desired 1000000 ..."},
			{readme, "quota-broker increase --model us.anthropic.claude-sonnet-4-5-20250929-v1:0 [--yes]"},
		},
		run: func(s *sceneRun) {
			s.serve(readme, "go run ./cmd/quota-broker demo", s.broker)
			s.waitListening(nil, s.http, time.Minute)

			_, r := s.run(readme, "quota-broker report [--model sonnet] [--wide] [--output json]", time.Minute)
			var report struct{ Budgets []json.RawMessage }
			if err := json.Unmarshal([]byte(r.stdout), &report); err != nil || len(report.Budgets) == 0 {
				s.t.Errorf("report --output json: not a report with budgets (%v):\n%s", err, r.stdout)
			}

			// The table's header; the ACTIVITY part needs whole minutes of
			// traffic, which a test does not wait for.
			// The default table lists budgets with traffic: the scene asks
			// until the demo's first calls are in it.
			c := s.cmd(readme, "quota-broker report")
			var hdr error
			for deadline := time.Now().Add(90 * time.Second); ; {
				r = s.bash(s.rewrite(c.text), time.Minute)
				if hdr = sameHeader(c.output, r.stdout, "MODEL"); hdr == nil || time.Now().After(deadline) {
					break
				}
				<-time.After(time.Second) // the retry interval of a poll for traffic, not a wait for an event
			}
			s.check(c, r.stdout, hdr)

			_, r = s.run(readme, "quota-broker report --svg chart.svg [--span day]", time.Minute)
			if b, err := os.ReadFile(filepath.Join(s.dir, "chart.svg")); err != nil || !strings.Contains(string(b), "<svg") {
				s.t.Errorf("report --svg wrote no SVG (%v): %s", err, r.stdout)
			}

			c, r = s.run(readme, "grpcurl -plaintext -d '{\"model\": \"claude-sonnet-4-5\", \"step\": \"600s\"}' localhost:50051 quotabroker.v1.QuotaBroker/GetUsageHistory", time.Minute)
			s.check(c, r.stdout, sameLines(r.stdout, `"from"`, `"step"`, `"steps"`))

			// increase needs a minute of history with traffic: the demo's
			// first calls are recorded within a second of settling, so the
			// scene asks until the history has them.
			incr := "quota-broker increase --model us.anthropic.claude-sonnet-4-5-20250929-v1:0 --period 1d --desired 1000000 ..."
			c = s.cmd(readme, incr)
			deadline := time.Now().Add(90 * time.Second)
			for {
				r = s.bash(s.rewrite(c.text), time.Minute)
				if r.err == nil || time.Now().After(deadline) || !strings.Contains(r.stderr, "no usage") {
					break
				}
				<-time.After(time.Second) // the retry interval of a poll for the history, not a wait for an event
			}
			if r.err != nil {
				s.t.Fatalf("%s: %v\n%s%s", c, r.err, r.stdout, r.stderr)
			}
			s.check(c, r.stdout, sameSkeleton(c.output, r.stdout, func(l string) bool { return !strings.HasPrefix(l, "  tokens (TPM)") }))

			// "With --yes the same run ends with:" the block after it.
			c = s.cmd(readme, incr)
			r = s.bash(s.rewrite(c.text)+" --yes", time.Minute)
			if r.err != nil {
				s.t.Fatalf("%s --yes: %v\n%s%s", c, r.err, r.stdout, r.stderr)
			}
			s.check(c, r.stdout, sameLines(r.stdout, "Filed: request", "Increase requests for L-CCB5CBE9:", "CREATED"))

			// The synopsis is for AWS; the demo's simulator stands in. The
			// demo's light traffic asks for less than the quota, which
			// the README says is refused with exit status 2.
			s.setenv("QUOTA_BROKER_AWS_ENDPOINT=http://" + s.sim)
			c, r = s.fails(readme, "quota-broker increase --model us.anthropic.claude-sonnet-4-5-20250929-v1:0 [--yes]", time.Minute)
			// The table says why (on stdout); stderr says only that nothing was filed.
			if !strings.Contains(r.stdout, "is not an increase: the quota L-CCB5CBE9 is 500,000 already; pass --desired to ask for more") ||
				!strings.Contains(r.stderr, "nothing filed") ||
				!strings.Contains(r.err.Error(), "exit status 2") {
				s.t.Errorf("%s: want the refusal the README quotes, exit status 2; got %v\n%s%s", c, r.err, r.stdout, r.stderr)
			}

			// Alarms: the synopsis and the AWS examples against the demo's
			// simulator (QUOTA_BROKER_AWS_ENDPOINT above stands in for AWS),
			// in an order that leaves each its precondition: the synopsis
			// with both options removes what none made yet, the plan, an
			// apply, a delete, then the demo's own examples.
			s.run(readme, "quota-broker alarms [--apply] [--delete]", time.Minute)
			c, r = s.run(readme, "quota-broker alarms --regions us-east-1", time.Minute)
			if !strings.Contains(r.stdout, "Dry run: nothing changed") {
				s.t.Errorf("%s: no dry-run summary:\n%s", c, r.stdout)
			}
			s.run(readme, "quota-broker alarms --regions us-east-1 --apply --sns-topic arn:aws:sns:us-east-1:123456789012:bedrock-ops", time.Minute)
			c, r = s.run(readme, "quota-broker alarms --regions us-east-1 --delete --apply", time.Minute)
			if strings.Contains(r.stdout, " 0 to delete") {
				s.t.Errorf("%s: deleted nothing after an apply:\n%s", c, r.stdout)
			}
			c, r = s.run(readme, "quota-broker alarms --aws-endpoint http://127.0.0.1:8566", time.Minute)
			s.check(c, r.stdout, sameLines(r.stdout, "ACTION", "create"))
			if !strings.Contains(r.stdout, "quota-broker/throttles/us-east-1/cross-region/anthropic.claude-sonnet-4-5-20250929-v1:0") {
				s.t.Errorf("%s: the plan has no throttles alarm for the Sonnet 4.5 profile:\n%s", c, r.stdout)
			}
			s.run(readme, "quota-broker alarms --aws-endpoint http://127.0.0.1:8566 --apply --datapoints 1", time.Minute)
			// The burst that fires them starts 45 s into the demo and the
			// README shows them firing minutes later; the scene checks the
			// query runs, not that the alarms fire (TestAlarmsAgainstSimulator
			// and TestDemoStory do).
			s.setenv("AWS_ACCESS_KEY_ID=docs", "AWS_SECRET_ACCESS_KEY=docs", "AWS_SESSION_TOKEN=")
			s.run(readme, "aws --endpoint-url http://127.0.0.1:8566 --region us-east-1 cloudwatch describe-alarms --state-value ALARM ...", 2*time.Minute)
		},
	},
	{
		name: "probe and overrides against the probe scenario",
		claims: []claim{
			{readme, "go run ./cmd/quota-broker demo --scenario cmd/quota-broker/testdata/probe-scenario.json"},
			{readme, "go run ./cmd/quota-broker probe --addr 127.0.0.1:50051 ..."},
			{readme, "grpcurl -plaintext -d '{\"model_id\": \"us.amazon.nova-micro-v1:0\", \"override\": {\"tokens_per_minute\": 20000, \"reason\": \"probe\"}}' ..."},
			{readme, "quota-broker probe ... --confirm"},
			{readme, "grpcurl -plaintext -d '{\"model_id\": \"us.amazon.nova-micro-v1:0\", \"override\": {}}' ..."},
			{readme, "quota-broker probe --model ID [--confirm]"},
		},
		run: func(s *sceneRun) {
			s.serve(readme, "go run ./cmd/quota-broker demo --scenario cmd/quota-broker/testdata/probe-scenario.json", s.broker)
			s.setenv("QUOTA_BROKER_BEDROCK_ENDPOINT=http://" + s.sim)

			// Steps of a minute: the scene reads the plan, which the
			// document shows in full, and stops the probe.
			plan := regexp.MustCompile(`(?m)^at most \d+ calls`)
			c, out := s.firstLines(readme, "go run ./cmd/quota-broker probe --addr 127.0.0.1:50051 ...", plan, 2*time.Minute)
			inPlan := true
			s.check(c, out, sameSkeleton(c.output, out, func(l string) bool {
				keep := inPlan
				inPlan = inPlan && !plan.MatchString(l)
				return keep
			}))

			s.run(readme, "grpcurl -plaintext -d '{\"model_id\": \"us.amazon.nova-micro-v1:0\", \"override\": {\"tokens_per_minute\": 20000, \"reason\": \"probe\"}}' ...", time.Minute)
			s.replace = []string{"probe ... --confirm", "probe --model us.amazon.nova-micro-v1:0 --confirm"}
			s.firstLines(readme, "quota-broker probe ... --confirm", plan, 2*time.Minute)
			s.run(readme, "grpcurl -plaintext -d '{\"model_id\": \"us.amazon.nova-micro-v1:0\", \"override\": {}}' ...", time.Minute)

			s.replace = []string{"--model ID", "--model us.amazon.nova-micro-v1:0"}
			s.firstLines(readme, "quota-broker probe --model ID [--confirm]", plan, 2*time.Minute)
			s.replace = nil
		},
	},
	{
		name: "discovery from AWS, here the simulator",
		claims: []claim{
			{readme, "quota-broker serve --aws --regions us-east-1,us-west-2"},
			{readme, "quota-broker discover --regions us-east-1 [--output json]"},
		},
		run: func(s *sceneRun) {
			// Against AWS these need credentials and a network; the
			// simulator stands in through the documented endpoint variable.
			s.waitListening(s.start("bedrock-sim"), s.sim, time.Minute)
			s.setenv("QUOTA_BROKER_AWS_ENDPOINT=http://" + s.sim)
			s.serve(readme, "quota-broker serve --aws --regions us-east-1,us-west-2", s.broker)
			_, r := s.run(readme, "quota-broker discover --regions us-east-1 [--output json]", time.Minute)
			var found struct{ Budgets []json.RawMessage }
			if err := json.Unmarshal([]byte(r.stdout), &found); err != nil || len(found.Budgets) == 0 {
				s.t.Errorf("discover --output json: no budgets (%v):\n%s", err, r.stdout)
			}
			if r := s.bash("quota-broker report --output json", time.Minute); r.err != nil || !strings.Contains(r.stdout, `"source"`) {
				s.t.Errorf("serve --aws: no discovered budgets in its report (%v): %s%s", r.err, r.stdout, r.stderr)
			}
		},
	},
	{
		name: "static budgets and offline discovery",
		claims: []claim{
			{readme, "quota-broker serve --budgets budgets.json"},
			{readme, "quota-broker discover --from-file quotas.json --models-file models.json"},
		},
		run: func(s *sceneRun) {
			s.copyFile("cmd/quota-broker/example-budgets.json", "budgets.json")
			s.serve(readme, "quota-broker serve --budgets budgets.json", s.broker)
			if r := s.bash("quota-broker report --model sonnet-4-5", time.Minute); r.err != nil || !strings.Contains(r.stdout, "claude-sonnet-4-5") {
				s.t.Errorf("serve --budgets: the file's budgets are not served (%v): %s%s", r.err, r.stdout, r.stderr)
			}
			// Saved AWS CLI answers: the ones discover's own tests use.
			s.copyFile("cmd/quota-broker/testdata/list-service-quotas.json", "quotas.json")
			s.copyFile("cmd/quota-broker/testdata/list-foundation-models.json", "models.json")
			_, r := s.run(readme, "quota-broker discover --from-file quotas.json --models-file models.json", time.Minute)
			if !strings.Contains(r.stdout, "anthropic.claude") {
				s.t.Errorf("discover --from-file: no budgets in\n%s", r.stdout)
			}
		},
	},
	{
		name: "bearer tokens",
		claims: []claim{
			{readme, "quota-broker token --client checkout-svc"},
			{readme, "echo '{\"tokens\": [ENTRY, ...]}' > tokens.json"},
			{readme, "quota-broker serve --tokens tokens.json"},
			{readme, "grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" ..."},
		},
		run: func(s *sceneRun) {
			_, r := s.run(readme, "quota-broker token --client checkout-svc", time.Minute)
			m := regexp.MustCompile(`(?s)\s(qb_[0-9a-f]+)\s.*\s(\{"client":"checkout-svc".*\})`).FindStringSubmatch(r.stdout)
			if m == nil {
				s.t.Fatalf("token: no token and entry in\n%s", r.stdout)
			}
			s.setenv("TOKEN=" + m[1])
			s.replace = []string{"ENTRY, ...", m[2]}
			s.run(readme, "echo '{\"tokens\": [ENTRY, ...]}' > tokens.json", time.Minute)
			s.serve(readme, "quota-broker serve --tokens tokens.json", s.broker)
			// "..." is the rest of any grpcurl call; a report needs the token.
			s.replace = []string{`" ...`, `" -d '{}' localhost:50051 quotabroker.v1.QuotaBroker/GetQuotaReport`}
			_, r = s.run(readme, "grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" ...", time.Minute)
			if !strings.Contains(r.stdout, `"budgets"`) {
				s.t.Errorf("a report with the token: %s", r.stdout)
			}
			s.replace = nil
			if r := s.bash("grpcurl -plaintext -d '{}' "+s.broker+" quotabroker.v1.QuotaBroker/GetQuotaReport", time.Minute); r.err == nil || !strings.Contains(r.stderr, "Unauthenticated") {
				s.t.Errorf("a report without the token: want Unauthenticated, got %v %s%s", r.err, r.stdout, r.stderr)
			}
		},
	},
	{
		name: "mutual TLS",
		claims: []claim{
			{readme, "quota-broker serve --listen :50051 --tls-cert broker.pem ..."},
			{readme, "quota-broker report --addr broker:50051 --tls-ca ca.pem --tls-cert ops.pem --tls-key ops-key.pem"},
			{readme, "grpcurl -cacert ca.pem -cert ops.pem -key ops-key.pem broker:50051 list"},
		},
		run: func(s *sceneRun) {
			ca := certtest.NewCA(s.t, "docs-ca")
			cert, key := ca.Server(s.t, "broker")
			ops, opsKey := ca.Client(s.t, "ops", certtest.Names{URIs: []string{"spiffe://example.org/ops"}})
			for _, f := range [][2]string{{ca.CertFile, "ca.pem"}, {ca.CertFile, "clients-ca.pem"}, {cert, "broker.pem"}, {key, "broker-key.pem"},
				{ops, "ops.pem"}, {opsKey, "ops-key.pem"}} {
				b, err := os.ReadFile(f[0])
				if err != nil {
					s.t.Fatal(err)
				}
				s.write(f[1], string(b))
			}
			// Tests listen on loopback only; "broker" is the broker's host
			// name, here localhost (the test certificate's name).
			s.replace = []string{"--listen :50051", "--listen 127.0.0.1:50051", "broker:50051", "localhost:50051"}
			s.serve(readme, "quota-broker serve --listen :50051 --tls-cert broker.pem ...", s.broker)
			_, r := s.run(readme, "quota-broker report --addr broker:50051 --tls-ca ca.pem --tls-cert ops.pem --tls-key ops-key.pem", time.Minute)
			// serve's example budgets have no traffic: the report says they
			// are idle, which it can only say once the call is answered.
			if !strings.Contains(r.stdout, "idle budgets") && !strings.HasPrefix(r.stdout, "MODEL") {
				s.t.Errorf("report over mutual TLS: %s", r.stdout)
			}
			_, r = s.run(readme, "grpcurl -cacert ca.pem -cert ops.pem -key ops-key.pem broker:50051 list", time.Minute)
			if !strings.Contains(r.stdout, "quotabroker.v1.QuotaBroker") {
				s.t.Errorf("grpcurl list over mutual TLS: %s", r.stdout)
			}
			s.replace = nil
		},
	},
	{
		name: "Go client: the complete program, an outage, a load",
		claims: []claim{
			{goClient, "go run ./cmd/bedrock-sim"},
			{goClient, "go run ./cmd/quota-broker serve --data /tmp/qb.db"},
			{goClient, "go run ./docs/example -endpoint http://127.0.0.1:8566"},
			{goClient, "go run ./clients/quotaclient/example -endpoint http://127.0.0.1:8566 -calls 40"},
		},
		run: func(s *sceneRun) {
			s.replace = []string{"/tmp/qb.db", filepath.Join(s.dir, "qb.db")}
			s.serve(goClient, "go run ./cmd/bedrock-sim", s.sim)
			broker := s.serve(goClient, "go run ./cmd/quota-broker serve --data /tmp/qb.db", s.broker)

			c, r := s.run(goClient, "go run ./docs/example -endpoint http://127.0.0.1:8566", 2*time.Minute)
			s.check(c, r.stdout, sameSkeleton(c.output, r.stdout, func(l string) bool { return strings.HasPrefix(l, "usage:") }))
			s.check(c, r.stdout, sameLines(r.stdout, "answer: ", "usage: "))
			example := s.rewrite(c.text)
			if r := s.bash(example+" -model global.anthropic.claude-sonnet-4-5-20250929-v1:0", time.Minute); r.err != nil {
				s.t.Errorf("the example on the global budget: %v\n%s%s", r.err, r.stdout, r.stderr)
			}

			c, r = s.run(goClient, "go run ./clients/quotaclient/example -endpoint http://127.0.0.1:8566 -calls 40", 2*time.Minute)
			s.check(c, r.stdout, sameSkeleton(c.output, r.stdout, nil))

			// The outage the document describes: the broker stopped,
			// Bedrock still up; fail-closed refuses, then serve comes back
			// on the same file.
			broker.stop()
			if r := s.bash(example, time.Minute); r.err == nil ||
				!strings.Contains(r.stderr, "the broker is unavailable and the client fails closed, so Bedrock was not called") {
				s.t.Errorf("the example with the broker stopped: want the fail-closed error the document quotes, got %v\n%s%s", r.err, r.stdout, r.stderr)
			}
			s.waitListening(s.start(s.rewrite(s.cmds[claim{goClient, "go run ./cmd/quota-broker serve --data /tmp/qb.db"}].text)), s.broker, time.Minute)
			if r := s.bash(example, time.Minute); r.err != nil {
				s.t.Errorf("the example after serve restarted on its --data: %v\n%s%s", r.err, r.stdout, r.stderr)
			}
			s.replace = nil
		},
	},
	{
		name: "clients in other languages, stubs for them",
		claims: []claim{
			{otherLangs, "go run ./cmd/quota-broker serve &"},
			{otherLangs, "(cd clients/node && npm ci && node example.js)"},
			{otherLangs, "bash clients/python/generate.sh"},
			{otherLangs, "/usr/bin/python3 clients/python/example.py"},
			{otherLangs, ".bin/buf generate --template clients/python/buf.gen.python.yaml -o /tmp/qb-py"},
			{otherLangs, "find /tmp/qb-py -name '*.py*'"},
			{otherLangs, "PYTHONPATH=/tmp/qb-py /usr/bin/python3 -c 'from quotabroker.v1 import broker_pb2_grpc'"},
			{otherLangs, ".bin/buf generate --template buf.gen.cpp.yaml -o /tmp/qb-cpp"},
			{otherLangs, ".bin/buf generate --template buf.gen.ruby.yaml -o /tmp/qb-ruby"},
			{otherLangs, "protoc -Iproto -Iclients/proto-deps --python_out=OUT ..."},
		},
		run: func(s *sceneRun) {
			// What the document has the reader install first (its
			// apt-get and .ci/tools.sh lines, which no test runs).
			var missing []string
			for _, tool := range []string{"node", "npm", "protoc", "grpc_python_plugin", "grpc_cpp_plugin", "grpc_ruby_plugin"} {
				if _, err := exec.LookPath(tool); err != nil {
					missing = append(missing, tool)
				}
			}
			if err := exec.Command("/usr/bin/python3", "-c", "import grpc").Run(); err != nil {
				missing = append(missing, "python3-grpcio for /usr/bin/python3")
			}
			if _, err := os.Stat(filepath.Join(s.root, ".bin/buf")); err != nil {
				missing = append(missing, ".bin/buf (bash .ci/tools.sh)")
			}
			if len(missing) > 0 {
				msg := "missing " + strings.Join(missing, ", ") + ": apt-get install -y nodejs npm protobuf-compiler protobuf-compiler-grpc python3-grpcio; bash .ci/tools.sh"
				if os.Getenv("CI") != "" {
					s.t.Fatal(msg)
				}
				s.t.Skip(msg)
			}
			s.serve(otherLangs, "go run ./cmd/quota-broker serve &", s.broker)
			c, r := s.run(otherLangs, "(cd clients/node && npm ci && node example.js)", 3*time.Minute)
			if !strings.Contains(r.stdout+r.stderr, "RESOURCE_EXHAUSTED") && !strings.Contains(r.stdout+r.stderr, "refus") {
				s.t.Errorf("%s: no refusal shown:\n%s%s", c, r.stdout, r.stderr)
			}
			s.run(otherLangs, "bash clients/python/generate.sh", 3*time.Minute)
			c, r = s.run(otherLangs, "/usr/bin/python3 clients/python/example.py", time.Minute)
			if !strings.Contains(r.stdout+r.stderr, "refus") {
				s.t.Errorf("%s: no refusal shown:\n%s%s", c, r.stdout, r.stderr)
			}

			// Generated code goes to the scene's directory, not /tmp.
			s.replace = []string{"/tmp/qb-", filepath.Join(s.dir, "qb-")}
			s.run(otherLangs, ".bin/buf generate --template clients/python/buf.gen.python.yaml -o /tmp/qb-py", 3*time.Minute)
			c, r = s.run(otherLangs, "find /tmp/qb-py -name '*.py*'", time.Minute)
			for _, f := range []string{"quotabroker/v1/broker_pb2.py", "quotabroker/v1/broker_pb2.pyi", "quotabroker/v1/broker_pb2_grpc.py",
				"google/rpc/status_pb2.py", "google/rpc/error_details_pb2.py"} {
				if !strings.Contains(r.stdout, "/"+f+"\n") {
					s.t.Errorf("%s: no %s (the document's list) in\n%s", c, f, r.stdout)
				}
			}
			s.run(otherLangs, "PYTHONPATH=/tmp/qb-py /usr/bin/python3 -c 'from quotabroker.v1 import broker_pb2_grpc'", time.Minute)

			// The two templates the document shows side by side.
			cpp, ruby := sideBySide(s.t, s.root, otherLangs, "# buf.gen.cpp.yaml")
			s.write("buf.gen.cpp.yaml", cpp)
			s.write("buf.gen.ruby.yaml", ruby)
			s.run(otherLangs, ".bin/buf generate --template buf.gen.cpp.yaml -o /tmp/qb-cpp", 3*time.Minute)
			s.run(otherLangs, ".bin/buf generate --template buf.gen.ruby.yaml -o /tmp/qb-ruby", 3*time.Minute)
			for _, f := range []string{"qb-cpp/quotabroker/v1/broker.pb.h", "qb-cpp/quotabroker/v1/broker.grpc.pb.cc", "qb-ruby/quotabroker/v1/broker_services_pb.rb"} {
				if _, err := os.Stat(filepath.Join(s.dir, f)); err != nil {
					s.t.Errorf("buf generate: %v", err)
				}
			}

			out := filepath.Join(s.dir, "qb-protoc")
			if err := os.Mkdir(out, 0o755); err != nil {
				s.t.Fatal(err)
			}
			s.replace = []string{"=OUT", "=" + out}
			s.run(otherLangs, "protoc -Iproto -Iclients/proto-deps --python_out=OUT ...", time.Minute)
			if _, err := os.Stat(filepath.Join(out, "quotabroker/v1/broker_pb2_grpc.py")); err != nil {
				s.t.Errorf("protoc: %v", err)
			}
			s.replace = nil
		},
	},
	{
		name: "the Go client's failover tests",
		claims: []claim{
			{goClient, "go test -run 'Failover|NewConn' ./clients/quotaclient/"},
		},
		run: func(s *sceneRun) {
			c, r := s.run(goClient, "go test -run 'Failover|NewConn' ./clients/quotaclient/", 5*time.Minute)
			if !regexp.MustCompile(`(?m)^ok\s+github.com/bedrockqb/quotabroker/clients/quotaclient\s`).MatchString(r.stdout) {
				s.t.Errorf("%s: no ok line:\n%s", c, r.stdout)
			}
		},
	},
	{
		name: "a three-replica cluster on a three-member etcd",
		claims: []claim{
			{readme, ".bin/etcd --name e0 ..."},
			{readme, ".bin/etcd --name e1 ..."},
			{readme, ".bin/etcd --name e2 ..."},
			{readme, "quota-broker serve --etcd 127.0.0.1:2379,127.0.0.1:2389,127.0.0.1:2399 --listen 127.0.0.1:50051 &"},
			{readme, "quota-broker serve --etcd 127.0.0.1:2379,127.0.0.1:2389,127.0.0.1:2399 --listen 127.0.0.1:50052 &"},
			{readme, "quota-broker serve --etcd 127.0.0.1:2379,127.0.0.1:2389,127.0.0.1:2399 --listen 127.0.0.1:50053 &"},
			{readme, "grpcurl -plaintext -d '{\"service\": \"quotabroker.v1.QuotaBroker\"}' 127.0.0.1:50052 grpc.health.v1.Health/Check"},
			{readme, "quota-broker report --addr 127.0.0.1:50052"},
		},
		run: func(s *sceneRun) {
			if _, err := os.Stat(filepath.Join(s.root, ".bin", "etcd")); err != nil {
				if os.Getenv("CI") != "" {
					s.t.Fatal("no .bin/etcd: bash .ci/tools.sh builds it")
				}
				s.t.Skip("no .bin/etcd (bash .ci/tools.sh builds it)")
			}
			// The README's replicas serve no HTTP; the world's default
			// --http would be the same address for all three.
			s.setenv("QUOTA_BROKER_HTTP=")
			// The documented ports, moved to free ones.
			var clients []string
			for _, port := range []string{"2379", "2380", "2389", "2390", "2399", "2400", "50052", "50053"} {
				a := freeAddr(s.t)
				s.replace = append(s.replace, "127.0.0.1:"+port, a)
				if port == "2379" || port == "2389" || port == "2399" {
					clients = append(clients, a)
				}
			}
			addr := func(doc string) string { return strings.NewReplacer(s.replace...).Replace(doc) }
			for i, name := range []string{"e0", "e1", "e2"} {
				s.serve(readme, ".bin/etcd --name "+name+" ...", clients[i])
			}
			leader := s.serve(readme, "quota-broker serve --etcd 127.0.0.1:2379,127.0.0.1:2389,127.0.0.1:2399 --listen 127.0.0.1:50051 &", s.broker)
			s.waitOutput(leader, regexp.MustCompile(`cluster: leading`), time.Minute)
			s.serve(readme, "quota-broker serve --etcd 127.0.0.1:2379,127.0.0.1:2389,127.0.0.1:2399 --listen 127.0.0.1:50052 &", addr("127.0.0.1:50052"))
			s.serve(readme, "quota-broker serve --etcd 127.0.0.1:2379,127.0.0.1:2389,127.0.0.1:2399 --listen 127.0.0.1:50053 &", addr("127.0.0.1:50053"))
			c, r := s.run(readme, "grpcurl -plaintext -d '{\"service\": \"quotabroker.v1.QuotaBroker\"}' 127.0.0.1:50052 grpc.health.v1.Health/Check", time.Minute)
			if !strings.Contains(r.stdout, `"status": "NOT_SERVING"`) {
				s.t.Errorf("%s: a standby's health:\n%s", c, r.stdout)
			}
			c, r = s.run(readme, "quota-broker report --addr 127.0.0.1:50052", time.Minute)
			want := "cluster: " + addr("127.0.0.1:50052") + " is the standby; leader " + s.broker + " ("
			if !strings.Contains(r.stdout, want) || !strings.Contains(r.stdout, "etcd reachable") {
				s.t.Errorf("%s: the standby's report:\n%s\nwant %q and etcd reachable", c, r.stdout, want)
			}
			s.replace = nil
		},
	},
	{
		name: "benchmarks, their first lines",
		claims: []claim{
			{benchmarks, "go run ./bench/lease -duration 3s -rounds 3 -concurrency 50 -outstanding 100000"},
			{benchmarks, "go run ./bench/lease -duration 3s -rounds 5 -concurrency 50 -outstanding 100000"},
			{benchmarks, "go test -run='^$' -bench=Commit -benchtime=2s ./broker/bolt/"},
			{benchmarks, "go test -run='^$' -bench=. -benchtime=2s ./clients/quotaclient/"},
			{benchmarks, "go run ./bench/adapt -v"},
			{benchmarks, "go run ./bench/adapt -speed 1 -strategies sdk-adaptive,broker"},
			{benchmarks, "go run ./bench/route"},
			{benchmarks, "go run ./bench/route -short"},
			{benchmarks, "go run ./bench/soak -duration 5m -clients 300"},
			{benchmarks, "go test -run '^$' -bench AcquireUnderFlood -benchtime 400000x ./broker/"},
			{benchmarks, "go run ./bench/lease -attack flood,halfopen,history -duration 3s -rounds 3"},
			{benchmarks, "go run ./bench/lease -attack halfopen -halfopen-refill=false -duration 3s -rounds 3"},
			{benchmarks, "go run ./bench/lease -attack flood,halfopen,history -short"},
			{benchmarks, "go run ./bench/cluster -duration 3s -rounds 3 -concurrency 50 -kills 10"},
			{benchmarks, "go test -run='^$' -bench=Commit -benchtime=3s ./broker/etcd/"},
			{benchmarks, "go test -run '^$' -bench 'AcquireEscrow|GrantHold' -benchmem -benchtime 300000x ./broker/"},
			{goClient, "go test -run='^$' -bench=SimulatorOverhead -benchtime=2s -count=6 ./clients/quotaclient/"},
		},
		run: func(s *sceneRun) {
			// Campaigns of minutes: each runs with its documented flags
			// until its first result, then is stopped; BENCHMARKS.md holds
			// the full runs' figures.
			for _, b := range []struct {
				file, match string
				first       string // a line that shows the campaign measures
			}{
				{benchmarks, "go run ./bench/lease -duration 3s -rounds 3 -concurrency 50 -outstanding 100000", `(?m)^lease path over gRPC on loopback, 3s per round`},
				{benchmarks, "go run ./bench/lease -duration 3s -rounds 5 -concurrency 50 -outstanding 100000", `(?m)^lease path over gRPC on loopback, 3s per round`},
				{benchmarks, "go test -run='^$' -bench=Commit -benchtime=2s ./broker/bolt/", `(?m)^Benchmark\S+\s+\d+\s+\d+ ns/op`},
				{benchmarks, "go test -run='^$' -bench=. -benchtime=2s ./clients/quotaclient/", `(?m)^Benchmark\S+\s+\d+\s+\d+ ns/op`},
				// adapt prints a strategy's name as it starts it and
				// its figures after the whole campaign.
				{benchmarks, "go run ./bench/adapt -v", `(?m)^running \S+ \.\.\. `},
				{benchmarks, "go run ./bench/adapt -speed 1 -strategies sdk-adaptive,broker", `(?m)^running \S+ \.\.\. `},
				// route prints a strategy's name as it starts it; -short
				// runs to its table.
				{benchmarks, "go run ./bench/route", `(?m)^running \S+ \.\.\. `},
				{benchmarks, "go run ./bench/route -short", `(?m)^\s+route\s+\d+\.\d%`},
				{benchmarks, "go run ./bench/soak -duration 5m -clients 300", `(?m)^\s+10s\s+\d`},
				{benchmarks, "go test -run '^$' -bench AcquireUnderFlood -benchtime 400000x ./broker/", `(?m)^BenchmarkAcquireUnderFlood/waiters=0\S*\s+\d+\s+\d+ ns/op.* p99-ms`},
				{benchmarks, "go run ./bench/lease -attack flood,halfopen,history -duration 3s -rounds 3", `(?m)^unrelated client's AcquireLease over gRPC on loopback under attack, 3s per measurement`},
				{benchmarks, "go run ./bench/lease -attack halfopen -halfopen-refill=false -duration 3s -rounds 3", `(?m)^unrelated client's AcquireLease over gRPC on loopback under attack, 3s per measurement`},
				// The short form runs to its end (about 20 s): each
				// attack set up, measured and stopped over gRPC.
				{benchmarks, "go run ./bench/lease -attack flood,halfopen,history -short", `(?m)^history: AcquireLease p99 by round \S+; target < 100ms[^\n]*\n(?:.*\n)*load average at the end: `},

				{benchmarks, "go run ./bench/cluster -duration 3s -rounds 3 -concurrency 50 -kills 10", `(?m)^round 1\s+single\s+\d+/s`},
				{benchmarks, "go test -run='^$' -bench=Commit -benchtime=3s ./broker/etcd/", `(?m)^BenchmarkCommit\S*\s+\d+\s+\d+ ns/op`},
				{benchmarks, "go test -run '^$' -bench 'AcquireEscrow|GrantHold' -benchmem -benchtime 300000x ./broker/", `(?m)^BenchmarkAcquireEscrow\S*\s+\d+\s+\d+ ns/op\s+\d+ B/op\s+\d+ allocs/op`},

				{goClient, "go test -run='^$' -bench=SimulatorOverhead -benchtime=2s -count=6 ./clients/quotaclient/", `(?m)^BenchmarkSimulatorOverhead\S+\s+\d+\s+\d+ ns/op.* p50-ms`},
			} {
				s.firstLines(b.file, b.match, regexp.MustCompile(b.first), 3*time.Minute)
			}
		},
	},
}

// sideBySide returns the two files of a code block that shows them in two
// columns, the block whose first line starts with first.
func sideBySide(t testing.TB, root, file, first string) (left, right string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, file))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n"+first)
	if !ok {
		t.Fatalf("%s: no block starting %q", file, first)
	}
	rest = first + rest
	block, _, _ := strings.Cut(rest, "```")
	lines := strings.Split(strings.TrimRight(block, "\n"), "\n")
	col := strings.Index(lines[0][1:], "# ") + 1
	if col == 0 {
		t.Fatalf("%s: %q is not two columns", file, lines[0])
	}
	var l, r strings.Builder
	for _, line := range lines[1:] {
		if len(line) > col {
			l.WriteString(strings.TrimRight(line[:col], " ") + "\n")
			r.WriteString(line[col:] + "\n")
		} else {
			l.WriteString(strings.TrimRight(line, " ") + "\n")
		}
	}
	return l.String(), r.String()
}

// TestGoClientProgram: the program docs/go-client.md shows in full is
// docs/example/main.go, which the Go client scene builds and runs.
func TestGoClientProgram(t *testing.T) {
	md, err := os.ReadFile(filepath.Join(repoRoot(t), "docs/go-client.md"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(repoRoot(t), "docs/example/main.go"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "```go\n"+string(src)+"```\n") {
		t.Error("docs/go-client.md does not show docs/example/main.go as it is: paste the file into its ```go block")
	}
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
