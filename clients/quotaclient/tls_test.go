package quotaclient_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	"github.com/bedrockqb/quotabroker/internal/certtest"
	"github.com/bedrockqb/quotabroker/server"
)

// TestRefusedCertificateIsNotAnOutage: a broker that refuses the client's
// certificate (none, or one from another CA) answers UNAVAILABLE at the
// transport; FailOpen must not take that for an outage and serve the call
// locally, or a client whose certificate was revoked would go on calling
// Bedrock outside the broker.
func TestRefusedCertificateIsNotAnOutage(t *testing.T) {
	ca, other := certtest.NewCA(t, "broker CA"), certtest.NewCA(t, "other CA")
	cert, key := ca.Server(t, "server")
	cfg, err := server.LoadTLS(server.TLSFiles{CertFile: cert, KeyFile: key, ClientCAFile: ca.CertFile})
	if err != nil {
		t.Fatal(err)
	}
	bp := startBroker(t, brokerOpts{specs: []broker.Spec{spec(t, haiku3, broker.Limits{RPM: 100, TPM: 1_000_000})},
		server: server.Config{TLS: cfg}})
	pemCA, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemCA)
	good, goodKey := ca.Client(t, "svc", certtest.Names{CommonName: "svc"})
	foreign, foreignKey := other.Client(t, "svc-elsewhere", certtest.Names{CommonName: "svc"})
	for name, pair := range map[string][2]string{"no certificate": {}, "another CA": {foreign, foreignKey}, "valid": {good, goodKey}} {
		t.Run(name, func(t *testing.T) {
			// TLS 1.2: the server's refusal then ends the handshake itself.
			// Under TLS 1.3 the client finishes first and learns of the
			// refusal when it reads, or, racing the server's close, sees a
			// broken pipe instead; tlsRefused can only recognise the
			// former (see docs/go-client.md).
			tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12}
			if pair[0] != "" {
				c, err := tls.LoadX509KeyPair(pair[0], pair[1])
				if err != nil {
					t.Fatal(err)
				}
				tc.Certificates = []tls.Certificate{c}
			}
			conn, err := grpc.NewClient(bp.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			qc := quotaclient.New(conn, quotaclient.WithFailureMode(quotaclient.FailOpen))
			l, err := qc.Acquire(context.Background(), quotaclient.Request{ModelID: haiku3, MaxOutputTokens: 10})
			if name == "valid" {
				if err != nil || l.Local {
					t.Fatalf("valid certificate: %v, %+v", err, l)
				}
				return
			}
			if err == nil {
				t.Fatalf("a refused certificate got a lease (local: %v)", l.Local)
			}
			if !errors.Is(err, quotaclient.ErrUnauthenticated) || errors.Is(err, quotaclient.ErrUnavailable) {
				t.Fatalf("refused certificate: %v; want ErrUnauthenticated, not an outage", err)
			}
		})
	}
}
