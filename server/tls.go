package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// TLSFiles names the PEM files of the server's TLS set-up.
type TLSFiles struct {
	// CertFile and KeyFile are the server's certificate (chain) and key.
	// Required.
	CertFile, KeyFile string
	// ClientCAFile, when set, turns on mutual TLS: every connection must
	// present a client certificate signed by one of these CAs, and the
	// caller's identity comes from it (see TLS.Identity).
	ClientCAFile string
	// Admins are the certificate identities that get the admin role; the
	// others are clients. Needs ClientCAFile.
	Admins []string
}

// TLS is the server's transport security. The files are read again by
// Reload (on SIGHUP in quota-broker serve); handshakes after it use the new
// certificate and client CAs, connections already open keep theirs.
//
// The minimum version is TLS 1.2, which HTTP/2 requires; with Go's default
// suites (ECDHE and AEAD only, as gRPC filters them) 1.2 is sound, and 1.3
// as a floor would shut out older client runtimes and TLS-terminating
// proxies for no gain in what the broker protects.
type TLS struct {
	files  TLSFiles
	admins map[string]bool
	cur    atomic.Pointer[loaded]
}

// loaded is one reading of the files.
type loaded struct {
	config   *tls.Config
	notAfter time.Time
}

// LoadTLS reads the files.
func LoadTLS(f TLSFiles) (*TLS, error) {
	switch {
	case f.CertFile == "" || f.KeyFile == "":
		return nil, errors.New("tls: a certificate and its key are both required")
	case len(f.Admins) > 0 && f.ClientCAFile == "":
		return nil, errors.New("tls: admins are certificate identities: they need a client CA (mutual TLS)")
	}
	t := &TLS{files: f, admins: make(map[string]bool, len(f.Admins))}
	for i, a := range f.Admins {
		if err := CheckClient(a); err != nil {
			return nil, fmt.Errorf("tls: admins[%d] %q: %w", i, a, err)
		}
		t.admins[a] = true
	}
	if err := t.Reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// Reload reads the files again; on error the configuration in force stays.
func (t *TLS) Reload() error {
	cert, err := tls.LoadX509KeyPair(t.files.CertFile, t.files.KeyFile)
	if err != nil {
		return fmt.Errorf("tls: certificate %s, key %s: %w", t.files.CertFile, t.files.KeyFile, err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2"},
	}
	if t.files.ClientCAFile != "" {
		pem, err := os.ReadFile(t.files.ClientCAFile)
		if err != nil {
			return fmt.Errorf("tls: client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("tls: client CA %s: no PEM certificate in it", t.files.ClientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		// A resumed session would skip verifying the client against the
		// CAs in force now (they may have been reloaded without one).
		// Broker connections live long, so full handshakes cost nothing.
		cfg.SessionTicketsDisabled = true
	}
	t.cur.Store(&loaded{config: cfg, notAfter: cert.Leaf.NotAfter})
	return nil
}

// Mutual reports whether clients must present certificates. False for nil.
func (t *TLS) Mutual() bool { return t != nil && t.files.ClientCAFile != "" }

// NotAfter is when the server certificate in force expires.
func (t *TLS) NotAfter() time.Time { return t.cur.Load().notAfter }

// credentials are the gRPC transport credentials; every handshake takes the
// configuration in force at that moment.
func (t *TLS) credentials() credentials.TransportCredentials {
	base := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return t.cur.Load().config, nil
		},
	}
	return credentials.NewTLS(base)
}

var errNoCertIdentity = status.Error(codes.Unauthenticated, "client certificate names no valid client")

// Identity is the identity a verified client certificate gives its holder.
// The client is the certificate's first URI SAN (e.g. a SPIFFE id such as
// spiffe://example.org/ns/prod/sa/checkout), else its first DNS SAN, else
// its Subject Common Name; a certificate with none of them, or whose name
// CheckClient refuses, is refused. The role is admin when that client is
// one of TLSFiles.Admins, else client.
func (t *TLS) Identity(cert *x509.Certificate) (Identity, bool) {
	var name string
	switch {
	case len(cert.URIs) > 0:
		name = cert.URIs[0].String()
	case len(cert.DNSNames) > 0:
		name = cert.DNSNames[0]
	default:
		name = cert.Subject.CommonName
	}
	if CheckClient(name) != nil {
		return Identity{}, false
	}
	role := RoleClient
	if t.admins[name] {
		role = RoleAdmin
	}
	return Identity{Client: name, Role: role}, true
}

// peerIdentity is the identity of the verified client certificate on ctx's
// connection.
func (t *TLS) peerIdentity(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, errNoCertIdentity
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Identity{}, errNoCertIdentity
	}
	id, ok := t.Identity(info.State.VerifiedChains[0][0])
	if !ok {
		return Identity{}, errNoCertIdentity
	}
	return id, nil
}
