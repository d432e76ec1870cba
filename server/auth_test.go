package server_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

type authFixture struct {
	client            pb.QuotaBrokerClient
	conn              *grpc.ClientConn
	tokens            *server.Tokens
	path              string
	alice, bob, admin string // bearer tokens
	b                 *broker.Broker
}

func writeTokens(t *testing.T, path string, entries ...[3]string) {
	t.Helper()
	s := `{"tokens": [`
	for i, e := range entries {
		if i > 0 {
			s += ","
		}
		s += fmt.Sprintf(`{"client": %q, "role": %q, "sha256": %q}`, e[0], e[1], e[2])
	}
	if err := os.WriteFile(path, []byte(s+"]}"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func startWithAuth(t *testing.T) *authFixture {
	t.Helper()
	f := &authFixture{path: filepath.Join(t.TempDir(), "tokens.json")}
	var aliceSum, bobSum, adminSum string
	f.alice, aliceSum = server.NewToken()
	f.bob, bobSum = server.NewToken()
	f.admin, adminSum = server.NewToken()
	writeTokens(t, f.path, [3]string{"alice", "client", aliceSum}, [3]string{"bob", "client", bobSum}, [3]string{"ops", "admin", adminSum})
	tokens, err := server.LoadTokens(f.path)
	if err != nil {
		t.Fatal(err)
	}
	f.tokens = tokens
	f.b = newBroker(t)
	conn := serve(t, f.b, server.Config{Tokens: tokens})
	f.conn, f.client = conn, pb.NewQuotaBrokerClient(conn)
	return f
}

func as(token string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
}

func TestAuthentication(t *testing.T) {
	f := startWithAuth(t)
	req := &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10}
	for name, ctx := range map[string]context.Context{
		"no token":     context.Background(),
		"wrong token":  as("qb_not-a-token"),
		"wrong scheme": metadata.AppendToOutgoingContext(context.Background(), "authorization", "Basic "+f.alice),
	} {
		_, err := f.client.AcquireLease(ctx, req)
		if st := status.Convert(err); st.Code() != codes.Unauthenticated || st.Message() != "missing or invalid bearer token" {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Health (load balancers) and reflection (grpcurl) stay open.
	if h, err := healthpb.NewHealthClient(f.conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health without a token: %v %v", h, err)
	}
	// The identity comes from the token, not from the header the caller
	// fills in.
	ctx := metadata.AppendToOutgoingContext(as(f.alice), server.ClientHeader, "bob")
	resp, err := f.client.AcquireLease(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.b.LeaseClient(resp.GetLease().GetLeaseId()); got != "alice" {
		t.Fatalf("lease granted to %q, want alice (the token's client)", got)
	}
}

func TestAuthorization(t *testing.T) {
	f := startWithAuth(t)
	resp, err := f.client.AcquireLease(as(f.alice), &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetLease().GetLeaseId()
	// Bob cannot settle or renew Alice's lease; the answer says no more.
	_, err = f.client.CompleteLease(as(f.bob), &pb.CompleteLeaseRequest{LeaseId: id, Outcome: pb.Outcome_OUTCOME_SUCCESS})
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || st.Message() != "permission denied" {
		t.Fatalf("bob completing alice's lease: %v", err)
	}
	if _, err := f.client.RenewLease(as(f.bob), &pb.RenewLeaseRequest{LeaseId: id}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("bob renewing alice's lease: %v", err)
	}
	if _, err := f.client.CompleteLease(as(f.alice), &pb.CompleteLeaseRequest{LeaseId: id, Outcome: pb.Outcome_OUTCOME_SUCCESS}); err != nil {
		t.Fatalf("alice completing her lease: %v", err)
	}
	// Only admins change budgets.
	v := int64(5)
	override := &pb.SetOverrideRequest{ModelId: sonnet, Override: &pb.LimitOverride{TokensPerMinute: &v}}
	if _, err := f.client.SetOverride(as(f.alice), override); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("client setting an override: %v", err)
	}
	if _, err := f.client.RefreshQuotas(as(f.alice), &pb.RefreshQuotasRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("client refreshing quotas: %v", err)
	}
	if _, err := f.client.SetOverride(as(f.admin), override); err != nil {
		t.Fatalf("admin setting an override: %v", err)
	}
	// Likewise resetting a learned ceiling.
	if _, err := f.client.ReportThrottle(as(f.bob), &pb.ReportThrottleRequest{ModelId: sonnet}); err != nil {
		t.Fatal(err)
	}
	reset := &pb.ResetAdaptiveRequest{ModelId: sonnet}
	if _, err := f.client.ResetAdaptive(as(f.alice), reset); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("client resetting the adaptive ceiling: %v", err)
	}
	if b, err := f.client.ResetAdaptive(as(f.admin), reset); err != nil || b.GetBudget().GetAdaptive().GetDecreases() != 0 {
		t.Fatalf("admin resetting the adaptive ceiling: %v %v", b, err)
	}
	// Reports are for everyone with a token.
	if _, err := f.client.GetQuotaReport(as(f.bob), &pb.GetQuotaReportRequest{}); err != nil {
		t.Fatal(err)
	}
}

func TestTokensReload(t *testing.T) {
	f := startWithAuth(t)
	carol, carolSum := server.NewToken()
	if _, err := f.client.ListBudgets(as(carol), &pb.ListBudgetsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("unknown token: %v", err)
	}
	writeTokens(t, f.path, [3]string{"carol", "client", carolSum})
	if err := f.tokens.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.ListBudgets(as(carol), &pb.ListBudgetsRequest{}); err != nil {
		t.Fatalf("carol after reload: %v", err)
	}
	if _, err := f.client.ListBudgets(as(f.alice), &pb.ListBudgetsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("alice's token was removed by the reload: %v", err)
	}
	// A broken file keeps the tokens in force.
	os.WriteFile(f.path, []byte(`{"tokens": [{"client": "x", "role": "root", "sha256": "00"}]}`), 0o600)
	if err := f.tokens.Reload(); err == nil {
		t.Fatal("a role that does not exist was accepted")
	}
	if _, err := f.client.ListBudgets(as(carol), &pb.ListBudgetsRequest{}); err != nil {
		t.Fatalf("a failed reload dropped the tokens in force: %v", err)
	}
}

func TestTokensFileErrors(t *testing.T) {
	dir := t.TempDir()
	_, sum := server.NewToken()
	for name, body := range map[string]string{
		"bad json":    `{"tokens": [`,
		"unknown key": `{"tokens": [], "extra": 1}`,
		"bad role":    fmt.Sprintf(`{"tokens": [{"client": "a", "role": "root", "sha256": %q}]}`, sum),
		"short hash":  `{"tokens": [{"client": "a", "role": "client", "sha256": "abcd"}]}`,
		"no client":   fmt.Sprintf(`{"tokens": [{"role": "client", "sha256": %q}]}`, sum),
		"duplicate":   fmt.Sprintf(`{"tokens": [{"client": "a", "role": "client", "sha256": %q}, {"client": "b", "role": "client", "sha256": %q}]}`, sum, sum),
		// An upper-case copy of a hash is the same token: before, it gave
		// that token to a second (here admin) client.
		"upper-case duplicate": fmt.Sprintf(`{"tokens": [{"client": "a", "role": "client", "sha256": %q}, {"client": "ops", "role": "admin", "sha256": %q}]}`, sum, strings.ToUpper(sum)),
		"trailing garbage":     fmt.Sprintf(`{"tokens": [{"client": "a", "role": "client", "sha256": %q}]} {"tokens": []}`, sum),
		"trailing bracket":     fmt.Sprintf(`{"tokens": [{"client": "a", "role": "client", "sha256": %q}]}]`, sum),
		"empty list":           `{"tokens": []}`,
		"null list":            `{"tokens": null}`,
		"null":                 `null`,
		"no list":              `{}`,
		"client not UTF-8":     fmt.Sprintf(`{"tokens": [{"client": "evil\xff", "role": "client", "sha256": %q}]}`, sum),
		"client with newline":  fmt.Sprintf(`{"tokens": [{"client": "a\nb", "role": "client", "sha256": %q}]}`, sum),
	} {
		p := filepath.Join(dir, "t.json")
		os.WriteFile(p, []byte(body), 0o600)
		if _, err := server.LoadTokens(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestTokensFileCanonicalAndEmpty checks what a strict file still allows:
// an upper-case hash names the token (compared in lower case), and an
// empty list when the file says so.
func TestTokensFileCanonicalAndEmpty(t *testing.T) {
	p := filepath.Join(t.TempDir(), "t.json")
	tok, sum := server.NewToken()
	writeTokens(t, p, [3]string{"alice", "client", strings.ToUpper(sum)})
	tokens, err := server.LoadTokens(p)
	if err != nil {
		t.Fatal(err)
	}
	conn := serve(t, newBroker(t), server.Config{Tokens: tokens})
	c := pb.NewQuotaBrokerClient(conn)
	if _, err := c.ListBudgets(as(tok), &pb.ListBudgetsRequest{}); err != nil {
		t.Fatalf("token with an upper-case hash: %v", err)
	}
	os.WriteFile(p, []byte(`{"tokens": [], "allow_empty": true}`), 0o600)
	if err := tokens.Reload(); err != nil || tokens.Len() != 0 {
		t.Fatalf("an explicitly empty file: %v (%d tokens)", err, tokens.Len())
	}
	if _, err := c.ListBudgets(as(tok), &pb.ListBudgetsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("after an explicitly empty file: %v", err)
	}
}
