package main

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bedrockqb/quotabroker/internal/certtest"
)

func TestCheckExposure(t *testing.T) {
	lo := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50051}
	lo6 := &net.TCPAddr{IP: net.IPv6loopback, Port: 50051}
	// Never bound: the rule looks at the address only.
	wide := &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 50051}
	tlsOnly := serveFlags{tlsCert: "c.pem", tlsKey: "k.pem"}
	mtls := serveFlags{tlsCert: "c.pem", tlsKey: "k.pem", tlsClientCA: "ca.pem"}
	for _, c := range []struct {
		name     string
		addr     net.Addr
		f        serveFlags
		ok, warn bool
	}{
		{"loopback, nothing", lo, serveFlags{}, true, false},
		{"loopback v6, nothing", lo6, serveFlags{}, true, false},
		{"beyond loopback, nothing", wide, serveFlags{}, false, false},
		{"beyond loopback, --insecure-listen", wide, serveFlags{insecureListen: true}, true, true},
		{"beyond loopback, TLS without client certificates", wide, tlsOnly, false, false},
		{"beyond loopback, TLS without client certificates, --insecure-listen", wide, serveFlags{tlsCert: "c", tlsKey: "k", insecureListen: true}, true, true},
		{"beyond loopback, mutual TLS", wide, mtls, true, false},
		{"beyond loopback, tokens over TLS", wide, serveFlags{tokens: "t.json", tlsCert: "c", tlsKey: "k"}, true, false},
		{"beyond loopback, tokens in the clear", wide, serveFlags{tokens: "t.json"}, true, true},
	} {
		warn, err := checkExposure(c.addr, c.f)
		if (err == nil) != c.ok || (warn != "") != c.warn {
			t.Errorf("%s: warn %q, err %v; want ok %v, warn %v", c.name, warn, err, c.ok, c.warn)
		}
		if err != nil && !strings.Contains(err.Error(), "--tls-client-ca") {
			t.Errorf("%s: the refusal does not say how to fix it: %v", c.name, err)
		}
	}
}

func TestServeTLSFlags(t *testing.T) {
	f, err := parseServeFlags([]string{"--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca", "--tls-admins", " ops , spiffe://x/admin,,"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.tlsAdmins) != 2 || f.tlsAdmins[0] != "ops" || f.tlsAdmins[1] != "spiffe://x/admin" {
		t.Fatalf("admins %q", f.tlsAdmins)
	}
	t.Setenv("QUOTA_BROKER_TLS_CERT", "env-cert.pem")
	t.Setenv("QUOTA_BROKER_TLS_KEY", "env-key.pem")
	if f, err := parseServeFlags(nil, io.Discard); err != nil || f.tlsCert != "env-cert.pem" || f.tlsKey != "env-key.pem" {
		t.Fatalf("env fallback: %+v %v", f, err)
	}
	t.Setenv("QUOTA_BROKER_TLS_CERT", "")
	t.Setenv("QUOTA_BROKER_TLS_KEY", "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-cert", "c"}, "--tls-cert and --tls-key go together"},
		{[]string{"--tls-key", "k"}, "--tls-cert and --tls-key go together"},
		{[]string{"--tls-client-ca", "ca"}, "--tls-client-ca needs --tls-cert"},
		{[]string{"--tls-cert", "c", "--tls-key", "k", "--tls-admins", "ops"}, "--tls-admins names certificate identities"},
	} {
		if _, err := parseServeFlags(c.args, io.Discard); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.args, err, c.want)
		}
	}
}

// TestReportOverMutualTLS runs serve with mutual TLS and the report command
// against it, with and without a client certificate.
func TestReportOverMutualTLS(t *testing.T) {
	ca := certtest.NewCA(t, "test CA")
	cert, key := ca.Server(t, "server")
	cliCert, cliKey := ca.Client(t, "ops", certtest.Names{URIs: []string{"spiffe://test.example/ops"}})
	addr, _ := inProcess(t, "serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "s.db"),
		"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca.CertFile, "--tls-admins", "spiffe://test.example/ops")
	var out strings.Builder
	if err := run(context.Background(), []string{"report", "--wide", "--addr", addr, "--tls-ca", ca.CertFile, "--tls-cert", cliCert, "--tls-key", cliKey}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "TPM used/limit") {
		t.Fatalf("table:\n%s", out.String())
	}
	for name, args := range map[string][]string{
		"no client certificate": {"--tls-ca", ca.CertFile},
		"no TLS":                {},
		"cert without key":      {"--tls-ca", ca.CertFile, "--tls-cert", cliCert},
	} {
		err := run(context.Background(), append([]string{"report", "--addr", addr, "--timeout", "5s"}, args...), io.Discard, io.Discard)
		if err == nil {
			t.Errorf("report with %s: succeeded", name)
		}
	}
}
