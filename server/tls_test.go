package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/internal/certtest"
	"github.com/bedrockqb/quotabroker/server"
)

// Client identities of the test PKI, one per naming rule: a SPIFFE URI SAN,
// a DNS SAN (the CN is ignored), a bare Common Name.
const (
	aliceID = "spiffe://test.example/ns/prod/sa/alice"
	bobID   = "bob.test.example"
	opsID   = "ops"
)

type tlsFixture struct {
	ca          *certtest.CA
	addr        string
	b           *broker.Broker
	tls         *server.TLS
	files       server.TLSFiles
	alice, bob  [2]string // client certificate and key files
	ops, others [2]string // ops is an admin; others is signed by another CA
}

// serveOn runs srv on a loopback port until the test ends.
func serveOn(t testing.TB, srv *server.Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return lis.Addr().String()
}

// startMTLS serves a broker with mutual TLS (ops is admin) and, when tokens
// is not nil, bearer tokens too.
func startMTLS(t *testing.T, tokens *server.Tokens) *tlsFixture {
	t.Helper()
	f := &tlsFixture{ca: certtest.NewCA(t, "test CA"), b: newBroker(t)}
	cert, key := f.ca.Server(t, "server")
	f.alice[0], f.alice[1] = f.ca.Client(t, "alice", certtest.Names{CommonName: "ignored", URIs: []string{aliceID}, DNS: []string{"ignored.example"}})
	f.bob[0], f.bob[1] = f.ca.Client(t, "bob", certtest.Names{CommonName: "ignored", DNS: []string{bobID, "second.example"}})
	f.ops[0], f.ops[1] = f.ca.Client(t, "ops", certtest.Names{CommonName: opsID})
	other := certtest.NewCA(t, "another CA")
	f.others[0], f.others[1] = other.Client(t, "alice-elsewhere", certtest.Names{URIs: []string{aliceID}})
	// The server's own copy of the client CA, so that a test can rotate it
	// while the clients keep trusting the server's CA.
	clientCA := filepath.Join(t.TempDir(), "client-ca.pem")
	data, err := os.ReadFile(f.ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(clientCA, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f.files = server.TLSFiles{CertFile: cert, KeyFile: key, ClientCAFile: clientCA, Admins: []string{opsID}}
	if f.tls, err = server.LoadTLS(f.files); err != nil {
		t.Fatal(err)
	}
	f.addr = serveOn(t, server.New(f.b, server.Config{TLS: f.tls, Tokens: tokens}))
	return f
}

// dialTLS connects trusting caFile, presenting the client certificate in
// pair unless it is empty.
func dialTLS(t *testing.T, addr, caFile string, pair [2]string) (pb.QuotaBrokerClient, *grpc.ClientConn) {
	t.Helper()
	pemCA, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemCA)
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if pair[0] != "" {
		c, err := tls.LoadX509KeyPair(pair[0], pair[1])
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewQuotaBrokerClient(conn), conn
}

func TestMTLSIdentityOwnershipAndRoles(t *testing.T) {
	f := startMTLS(t, nil)
	alice, _ := dialTLS(t, f.addr, f.ca.CertFile, f.alice)
	bob, _ := dialTLS(t, f.addr, f.ca.CertFile, f.bob)
	ops, _ := dialTLS(t, f.addr, f.ca.CertFile, f.ops)
	ctx := context.Background()

	// The identity is the certificate's, not the header's.
	withHeader := metadata.AppendToOutgoingContext(ctx, server.ClientHeader, bobID)
	resp, err := alice.AcquireLease(withHeader, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetLease().GetLeaseId()
	if got := f.b.LeaseClient(id); got != aliceID {
		t.Fatalf("lease granted to %q, want %q (the certificate's URI SAN)", got, aliceID)
	}
	// Bob cannot settle or renew it, and learns nothing about whose it is.
	_, err = bob.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: id, Outcome: pb.Outcome_OUTCOME_SUCCESS})
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || st.Message() != "permission denied" {
		t.Fatalf("bob completing alice's lease: %v", err)
	}
	_, err = bob.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: id})
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || st.Message() != "permission denied" {
		t.Fatalf("bob renewing alice's lease: %v", err)
	}
	// Bob's own lease is his, by his first DNS SAN.
	resp, err = bob.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.b.LeaseClient(resp.GetLease().GetLeaseId()); got != bobID {
		t.Fatalf("bob's lease belongs to %q, want %q", got, bobID)
	}
	if _, err := alice.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: id}); err != nil {
		t.Fatalf("alice renewing her lease: %v", err)
	}
	if _, err := alice.CompleteLease(ctx, &pb.CompleteLeaseRequest{LeaseId: id, Outcome: pb.Outcome_OUTCOME_SUCCESS}); err != nil {
		t.Fatalf("alice completing her lease: %v", err)
	}

	// Only the admin identity changes budgets.
	v := int64(5)
	override := &pb.SetOverrideRequest{ModelId: sonnet, Override: &pb.LimitOverride{TokensPerMinute: &v}}
	if _, err := bob.SetOverride(ctx, override); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("client setting an override: %v", err)
	}
	if _, err := bob.RefreshQuotas(ctx, &pb.RefreshQuotasRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("client refreshing quotas: %v", err)
	}
	if _, err := ops.SetOverride(ctx, override); err != nil {
		t.Fatalf("admin setting an override: %v", err)
	}
	// The broker has no quota source, so the refresh itself may fail; the
	// admin must get past the role check.
	if _, err := ops.RefreshQuotas(ctx, &pb.RefreshQuotasRequest{}); status.Code(err) == codes.PermissionDenied || status.Code(err) == codes.Unauthenticated {
		t.Fatalf("admin refreshing quotas: %v", err)
	}
	if _, err := bob.GetQuotaReport(ctx, &pb.GetQuotaReportRequest{}); err != nil {
		t.Fatalf("client reading the report: %v", err)
	}
}

func TestMTLSRefusesConnectionsWithoutATrustedCertificate(t *testing.T) {
	f := startMTLS(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	anon, anonConn := dialTLS(t, f.addr, f.ca.CertFile, [2]string{})
	stranger, _ := dialTLS(t, f.addr, f.ca.CertFile, f.others)
	plain, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	for name, c := range map[string]pb.QuotaBrokerClient{
		"no client certificate":     anon,
		"certificate of another CA": stranger,
		"no TLS":                    pb.NewQuotaBrokerClient(plain),
	} {
		_, err := c.ListBudgets(ctx, &pb.ListBudgetsRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("%s: %v, want UNAVAILABLE (handshake refused)", name, err)
		}
	}
	// Health checks need a certificate too: the handshake comes first.
	if _, err := healthpb.NewHealthClient(anonConn).Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("health without a certificate: %v", err)
	}
}

func TestMTLSWithTokens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.json")
	aliceTok, aliceSum := server.NewToken()
	aliceAdmin, aliceAdminSum := server.NewToken()
	bobTok, bobSum := server.NewToken()
	writeTokens(t, path, [3]string{aliceID, "client", aliceSum}, [3]string{aliceID, "admin", aliceAdminSum}, [3]string{bobID, "client", bobSum})
	tokens, err := server.LoadTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	f := startMTLS(t, tokens)
	alice, _ := dialTLS(t, f.addr, f.ca.CertFile, f.alice)
	req := &pb.ListBudgetsRequest{}

	if _, err := alice.ListBudgets(context.Background(), req); err != nil {
		t.Fatalf("certificate without a token: %v", err)
	}
	if _, err := alice.ListBudgets(as(aliceTok), req); err != nil {
		t.Fatalf("certificate with a token of the same client: %v", err)
	}
	_, err = alice.ListBudgets(as(bobTok), req)
	if st := status.Convert(err); st.Code() != codes.Unauthenticated || strings.Contains(st.Message(), "bob") {
		t.Fatalf("alice's certificate with bob's token: %v", err)
	}
	if _, err := alice.ListBudgets(as("qb_not-a-token"), req); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("certificate with an invalid token: %v", err)
	}
	// Agreeing credentials: admin if either grants it.
	v := int64(5)
	override := &pb.SetOverrideRequest{ModelId: sonnet, Override: &pb.LimitOverride{TokensPerMinute: &v}}
	if _, err := alice.SetOverride(as(aliceTok), override); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("alice with her client token setting an override: %v", err)
	}
	if _, err := alice.SetOverride(as(aliceAdmin), override); err != nil {
		t.Fatalf("alice with her admin token setting an override: %v", err)
	}
}

func TestMTLSTokenWithoutTokensFile(t *testing.T) {
	f := startMTLS(t, nil)
	alice, _ := dialTLS(t, f.addr, f.ca.CertFile, f.alice)
	tok, _ := server.NewToken()
	if _, err := alice.ListBudgets(as(tok), &pb.ListBudgetsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a token the broker cannot check was accepted: %v", err)
	}
}

func TestCertificateIdentityRule(t *testing.T) {
	ca := certtest.NewCA(t, "rule CA")
	cert, key := ca.Server(t, "server")
	tl, err := server.LoadTLS(server.TLSFiles{CertFile: cert, KeyFile: key, ClientCAFile: ca.CertFile, Admins: []string{"spiffe://x/admin"}})
	if err != nil {
		t.Fatal(err)
	}
	u := func(s string) *url.URL { p, _ := url.Parse(s); return p }
	for _, c := range []struct {
		name string
		cert x509.Certificate
		want server.Identity
		ok   bool
	}{
		{"URI SAN first", x509.Certificate{URIs: []*url.URL{u("spiffe://x/a"), u("spiffe://x/b")}, DNSNames: []string{"d"}, Subject: pkix.Name{CommonName: "cn"}}, server.Identity{Client: "spiffe://x/a", Role: server.RoleClient}, true},
		{"then DNS SAN", x509.Certificate{DNSNames: []string{"d1", "d2"}, Subject: pkix.Name{CommonName: "cn"}}, server.Identity{Client: "d1", Role: server.RoleClient}, true},
		{"then CN", x509.Certificate{Subject: pkix.Name{CommonName: "cn"}}, server.Identity{Client: "cn", Role: server.RoleClient}, true},
		{"admin", x509.Certificate{URIs: []*url.URL{u("spiffe://x/admin")}}, server.Identity{Client: "spiffe://x/admin", Role: server.RoleAdmin}, true},
		{"admin by another name only", x509.Certificate{URIs: []*url.URL{u("spiffe://x/a")}, DNSNames: []string{"spiffe://x/admin"}}, server.Identity{Client: "spiffe://x/a", Role: server.RoleClient}, true},
		{"no name", x509.Certificate{}, server.Identity{}, false},
		{"too long", x509.Certificate{Subject: pkix.Name{CommonName: strings.Repeat("x", 257)}}, server.Identity{}, false},
		{"CN with spaces", x509.Certificate{Subject: pkix.Name{CommonName: "Build Bot"}}, server.Identity{Client: "Build Bot", Role: server.RoleClient}, true},
		{"not UTF-8", x509.Certificate{Subject: pkix.Name{CommonName: "evil\xff\xfe"}}, server.Identity{}, false},
		{"control character", x509.Certificate{DNSNames: []string{"a\nb"}}, server.Identity{}, false},
		{"markup", x509.Certificate{Subject: pkix.Name{CommonName: "<script>"}}, server.Identity{}, false},
	} {
		got, ok := tl.Identity(&c.cert)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: %+v %v, want %+v %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

func TestLoadTLSErrors(t *testing.T) {
	ca := certtest.NewCA(t, "CA")
	cert, key := ca.Server(t, "server")
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	for name, files := range map[string]server.TLSFiles{
		"no key":              {CertFile: cert},
		"key of another cert": {CertFile: cert, KeyFile: ca.CertFile},
		"missing file":        {CertFile: cert + ".missing", KeyFile: key},
		"client CA not PEM":   {CertFile: cert, KeyFile: key, ClientCAFile: notPEM},
		"admins without mTLS": {CertFile: cert, KeyFile: key, Admins: []string{"ops"}},
		"empty admin":         {CertFile: cert, KeyFile: key, ClientCAFile: ca.CertFile, Admins: []string{""}},
		"admin not a name":    {CertFile: cert, KeyFile: key, ClientCAFile: ca.CertFile, Admins: []string{"ops\x00"}},
	} {
		if _, err := server.LoadTLS(files); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// servedCert is the leaf certificate the server at addr presents.
func servedCert(t *testing.T, addr, caFile string, pair [2]string) (*x509.Certificate, error) {
	t.Helper()
	pemCA, _ := os.ReadFile(caFile)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemCA)
	cfg := &tls.Config{RootCAs: roots, NextProtos: []string{"h2"}, ServerName: "localhost"}
	if pair[0] != "" {
		c, err := tls.LoadX509KeyPair(pair[0], pair[1])
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// Under TLS 1.3 the server checks the client's certificate after the
	// client's side of the handshake is done: a read shows the verdict.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
		return nil, err
	}
	return conn.ConnectionState().PeerCertificates[0], nil
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestTLSReload(t *testing.T) {
	f := startMTLS(t, nil)
	before, err := servedCert(t, f.addr, f.ca.CertFile, f.alice)
	if err != nil {
		t.Fatal(err)
	}
	// A new server certificate and a new client CA, written over the old
	// files, as a certificate rotation does.
	next := certtest.NewCA(t, "next CA")
	cert, key := f.ca.Server(t, "server-renewed")
	carol := [2]string{}
	carol[0], carol[1] = next.Client(t, "carol", certtest.Names{CommonName: "carol"})
	for from, to := range map[string]string{cert: f.files.CertFile, key: f.files.KeyFile, next.CertFile: f.files.ClientCAFile} {
		data, _ := os.ReadFile(from)
		if err := os.WriteFile(to, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.tls.Reload(); err != nil {
		t.Fatal(err)
	}
	after, err := servedCert(t, f.addr, f.ca.CertFile, carol)
	if err != nil {
		t.Fatalf("carol, of the new client CA, after the reload: %v", err)
	}
	if after.SerialNumber.Cmp(before.SerialNumber) == 0 {
		t.Fatal("the server still presents the certificate from before the reload")
	}
	if _, err := servedCert(t, f.addr, f.ca.CertFile, f.alice); err == nil {
		t.Fatal("alice, of the CA no longer trusted, was accepted after the reload")
	}
	// A broken file keeps what is in force.
	os.WriteFile(f.files.KeyFile, []byte("garbage"), 0o600)
	if err := f.tls.Reload(); err == nil {
		t.Fatal("a broken key was accepted")
	}
	if _, err := servedCert(t, f.addr, f.ca.CertFile, carol); err != nil {
		t.Fatalf("a failed reload dropped the configuration in force: %v", err)
	}
}

func TestTLSWithoutClientCertificatesTrustsTheHeader(t *testing.T) {
	ca := certtest.NewCA(t, "CA")
	cert, key := ca.Server(t, "server")
	tl, err := server.LoadTLS(server.TLSFiles{CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	b := newBroker(t)
	addr := serveOn(t, server.New(b, server.Config{TLS: tl}))
	c, _ := dialTLS(t, addr, ca.CertFile, [2]string{})
	ctx := metadata.AppendToOutgoingContext(context.Background(), server.ClientHeader, "svc-a")
	resp, err := c.AcquireLease(ctx, &pb.AcquireLeaseRequest{ModelId: sonnet, MaxOutputTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	if got := b.LeaseClient(resp.GetLease().GetLeaseId()); got != "svc-a" {
		t.Fatalf("lease of %q, want svc-a (TLS alone authenticates nobody)", got)
	}
}
