// Package certtest makes a throwaway PKI for tests: a certificate authority
// and the server and client certificates it signs, ECDSA P-256, written as
// PEM files into the test's temporary directory. Nothing is committed: every
// test run has its own keys, valid for a day.
package certtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a test certificate authority.
type CA struct {
	// CertFile is the CA certificate (PEM), to trust.
	CertFile string
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	dir      string
}

// Names are what a certificate says about its holder.
type Names struct {
	CommonName string
	DNS        []string
	URIs       []string // e.g. spiffe://example.org/checkout
	IPs        []net.IP
}

// NewCA makes a CA whose files live in tb's temporary directory.
func NewCA(tb testing.TB, name string) *CA {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatalf("certtest: create CA %s: %v", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	ca := &CA{cert: cert, key: key, dir: tb.TempDir()}
	ca.CertFile = writePEM(tb, filepath.Join(ca.dir, "ca.pem"), "CERTIFICATE", der)
	return ca
}

// Server issues a server certificate for 127.0.0.1 and localhost and returns
// its certificate and key files.
func (ca *CA) Server(tb testing.TB, file string) (certFile, keyFile string) {
	tb.Helper()
	return ca.issue(tb, file, Names{CommonName: "quota-broker", DNS: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, x509.ExtKeyUsageServerAuth)
}

// Client issues a client certificate with the given names and returns its
// certificate and key files. file names them (file.pem, file-key.pem).
func (ca *CA) Client(tb testing.TB, file string, n Names) (certFile, keyFile string) {
	tb.Helper()
	return ca.issue(tb, file, n, x509.ExtKeyUsageClientAuth)
}

func (ca *CA) issue(tb testing.TB, file string, n Names, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber: serial(tb),
		Subject:      pkix.Name{CommonName: n.CommonName},
		DNSNames:     n.DNS,
		IPAddresses:  n.IPs,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	for _, s := range n.URIs {
		u, err := url.Parse(s)
		if err != nil {
			tb.Fatalf("certtest: URI %q: %v", s, err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatalf("certtest: issue %s: %v", file, err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	certFile = writePEM(tb, filepath.Join(ca.dir, file+".pem"), "CERTIFICATE", der)
	keyFile = writePEM(tb, filepath.Join(ca.dir, file+"-key.pem"), "PRIVATE KEY", pkcs8)
	return certFile, keyFile
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

func serial(tb testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

func writePEM(tb testing.TB, path, typ string, der []byte) string {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}
