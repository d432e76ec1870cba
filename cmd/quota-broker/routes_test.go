package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

// TestRoutesReloadOnSIGHUP runs a broker with a routes file and changes
// the file under it: on SIGHUP a caller waiting on the route's full target
// is granted at once on the target the new file gives the route; broken
// files (bad JSON, a target without a budget, an unknown field) are
// refused whole, each logged naming the file, the line and the field,
// with the routes in service unchanged; a route taken out is gone for the
// next caller, also when a cap named it until the same SIGHUP, which
// reloads the clients file too.
func TestRoutesReloadOnSIGHUP(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	dir := t.TempDir()
	budgets := filepath.Join(dir, "budgets.json")
	routes := filepath.Join(dir, "routes.json")
	write := func(path, s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// One call at a time per Region, so one held lease fills a target.
	write(budgets, `{"budgets": [
  {"region": "us-east-1", "model": "`+crashModel+`", "concurrency": 1},
  {"region": "us-west-2", "model": "`+crashModel+`", "concurrency": 1}]}`)
	route := func(name, region string) string {
		return `{"name": "` + name + `", "model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "targets": [
    {"region": "` + region + `", "model": "` + crashModel + `"}]}`
	}
	write(routes, `{"routes": [`+route("r", "us-east-1")+`]}`)
	clients := filepath.Join(dir, "clients.json")
	write(clients, `{"clients": {"team": {"caps": {"routes": {"r": {"tpm": 1000000}}}}}}`)
	p := startBroker(t, "serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "state.db"), "--budgets", budgets,
		"--routes", routes, "--clients", clients, "--drain", "100ms")
	c := dial(t, p.addr)
	ctx := context.Background()
	req := &pb.AcquireLeaseRequest{Route: "r", InputTokens: 10, MaxOutputTokens: 10}
	held, err := c.AcquireLease(ctx, req)
	if err != nil || held.GetLease().GetRegion() != "us-east-1" {
		t.Fatalf("first lease: %v %v", held, err)
	}
	type answer struct {
		resp *pb.AcquireLeaseResponse
		err  error
		at   time.Time
	}
	waiter := make(chan answer, 1)
	go func() {
		r := &pb.AcquireLeaseRequest{Route: "r", InputTokens: 10, MaxOutputTokens: 10, Wait: durationpb.New(20 * time.Second)}
		resp, err := c.AcquireLease(ctx, r)
		waiter <- answer{resp, err, time.Now()}
	}()
	routeTargets := func() (targets []string, waiters int64) {
		t.Helper()
		rep, err := c.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rep.GetRoutes() {
			for _, tg := range r.GetTargets() {
				targets = append(targets, r.GetName()+":"+tg.GetBudget().GetRegion())
				waiters += tg.GetWaiters()
			}
		}
		return targets, waiters
	}
	// The report shows the caller queued: a state of another process,
	// with no event to wait on, so it is polled.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, n := routeTargets(); n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the route's caller never queued")
		}
	}

	write(routes, `{"routes": [`+route("r", "us-west-2")+`]}`)
	sent := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	a := <-waiter
	if a.err != nil || a.resp.GetLease().GetRegion() != "us-west-2" || a.resp.GetLease().GetModelId() != crashModel || a.resp.GetRoute().GetRoute() != "r" {
		t.Fatalf("the waiting caller after the reload: %v %v", a.resp, a.err)
	}
	if d := a.at.Sub(sent); d > 5*time.Second {
		t.Fatalf("granted %v after the reload", d)
	}
	if !p.waitFor(`msg="routes reloaded"`, 1, 30*time.Second) {
		t.Fatalf("no reload logged\n%s", p.output())
	}

	for i, tc := range []struct{ file, want string }{
		{`{"routes": [` + route("r", "us-east-1") + `,` + "\n" + `{"name": "x",}]}`, routes + ":3: invalid JSON"},
		{`{"routes": [` + route("r", "us-east-1") + `,` + "\n" + route("x", "us-east-2") + `]}`,
			routes + ":4: routes[1].targets[0]: no budget for cross-region anthropic.claude-sonnet-4-5-20250929-v1:0 in us-east-2"},
		{`{"routes": [` + route("r", "us-east-1") + `,` + "\n" + `{"name": "x", "modle": "y"}]}`, routes + `:3: routes[1]: unknown field \"modle\"`},
	} {
		write(routes, tc.file)
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if !p.waitFor(`msg="routes file reload failed; the routes in service stay"`, i+1, 30*time.Second) {
			t.Fatalf("no failure logged for %s\n%s", tc.file, p.output())
		}
		if !strings.Contains(p.output(), tc.want) {
			t.Fatalf("the failure does not say %q\n%s", tc.want, p.output())
		}
		if got, _ := routeTargets(); strings.Join(got, " ") != "r:us-west-2" {
			t.Fatalf("routes after a broken reload: %v, want r on us-west-2 still", got)
		}
	}

	// Route r goes, and so does the cap on it: the routes wait for the
	// caps.
	write(routes, `{"routes": [`+route("s", "us-east-1")+`]}`)
	write(clients, `{"clients": {"team": {"caps": {"tpm": 1000000}}}}`)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !p.waitFor(`msg="routes reloaded"`, 2, 30*time.Second) {
		t.Fatalf("no second reload logged\n%s", p.output())
	}
	if n := strings.Count(p.output(), "routes file reload failed"); n != 3 {
		t.Fatalf("%d reload failures logged, want the 3 broken files'\n%s", n, p.output())
	}
	if _, err := c.AcquireLease(ctx, req); status.Code(err) != codes.NotFound {
		t.Fatalf("the removed route: %v", err)
	}
	if got, _ := routeTargets(); strings.Join(got, " ") != "s:us-east-1" {
		t.Fatalf("routes: %v", got)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
}

// TestDerivedRoutesFollowDiscovery runs serve against the simulator with
// routes derived from discovery: a Region whose quotas Service Quotas no
// longer lists leaves the derived routes at the next refresh, and comes
// back with its quotas; a refresh that would leave a derived route with
// no target keeps every route as it was and says why in the report.
func TestDerivedRoutesFollowDiscovery(t *testing.T) {
	isolateAWS(t)
	sim, err := bedrocksim.New(bedrocksim.Config{DisableLatency: true})
	if err != nil {
		t.Fatal(err)
	}
	// Service Quotas lists nothing in the hidden Regions, as if the
	// account had lost their quotas.
	var mu sync.Mutex
	hidden := map[string]bool{}
	hide := func(regions ...string) {
		mu.Lock()
		defer mu.Unlock()
		clear(hidden)
		for _, r := range regions {
			hidden[r] = true
		}
	}
	simH := sim.Handler()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.Header.Get("X-Amz-Target"), "ServiceQuotasV20190624.List") {
			mu.Lock()
			hit := false
			for region := range hidden {
				hit = hit || strings.Contains(r.Header.Get("Authorization"), "/"+region+"/servicequotas/")
			}
			mu.Unlock()
			if hit {
				w.Header().Set("Content-Type", "application/x-amz-json-1.1")
				io.WriteString(w, `{"Quotas": []}`)
				return
			}
		}
		simH.ServeHTTP(w, r)
	}))
	defer hs.Close()
	routes := writeFile(t, "routes.json", `{"routes": [
  {"name": "us", "model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "geography": "us"},
  {"name": "pair", "model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "geography": "us", "regions": ["us-east-2", "us-west-2"]}]}`)
	addr, _ := inProcess(t, "serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "state.db"), "--aws-endpoint", hs.URL,
		"--regions", "us-east-1,us-east-2,us-west-2", "--refresh", "1h", "--routes", routes, "--log-level", "error", "--drain", "100ms")
	c := dial(t, addr)
	ctx := context.Background()
	state := func() (string, []string) {
		t.Helper()
		rep, err := c.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var parts []string
		for _, r := range rep.GetRoutes() {
			var regions []string
			for _, tg := range r.GetTargets() {
				regions = append(regions, tg.GetBudget().GetRegion())
			}
			parts = append(parts, r.GetName()+": "+strings.Join(regions, " "))
		}
		return strings.Join(parts, "; "), rep.GetDiscovery().GetNotes()
	}
	refresh := func(step, want string) []string {
		t.Helper()
		if _, err := c.RefreshQuotas(ctx, &pb.RefreshQuotasRequest{}); err != nil {
			t.Fatalf("%s: refresh: %v", step, err)
		}
		got, notes := state()
		if got != want {
			t.Fatalf("%s: routes %q, want %q", step, got, want)
		}
		return notes
	}
	all := "pair: us-east-2 us-west-2; us: us-east-1 us-east-2 us-west-2"
	if got, _ := state(); got != all {
		t.Fatalf("at start: %q", got)
	}
	hide("us-west-2")
	if notes := refresh("us-west-2 hidden", "pair: us-east-2; us: us-east-1 us-east-2"); len(notes) != 0 {
		t.Fatalf("notes: %q", notes)
	}
	hide("us-west-2", "us-east-2")
	notes := refresh("us-east-2 hidden too: pair would be empty", "pair: us-east-2; us: us-east-1 us-east-2")
	if len(notes) != 1 || !strings.Contains(notes[0], "routes not derived again after the quota refresh; the routes in service stay: "+routes+":3: routes[1]") {
		t.Fatalf("notes: %q", notes)
	}
	if _, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{Route: "pair", InputTokens: 10, MaxOutputTokens: 10}); err != nil {
		t.Fatalf("the route kept is served: %v", err)
	}
	hide()
	if notes := refresh("all listed again", all); len(notes) != 0 {
		t.Fatalf("notes: %q", notes)
	}
}
