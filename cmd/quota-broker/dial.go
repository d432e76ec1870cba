package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bedrockqb/quotabroker/clients/quotaclient"
)

// dialFlags are the flags of every command that calls a running broker:
// where it is and how to prove who we are. The client-side environment
// names differ from serve's (QUOTA_BROKER_CLIENT_CERT, not
// QUOTA_BROKER_TLS_CERT) so that a shell set up for the server does not hand
// the server's key to a client command.
type dialFlags struct {
	addr, ca, cert, key, token string
	tls                        bool
}

func addDialFlags(fs *flag.FlagSet) *dialFlags {
	d := &dialFlags{}
	fs.StringVar(&d.addr, "addr", envOr("QUOTA_BROKER_ADDR", "127.0.0.1:50051"), "broker gRPC address (env QUOTA_BROKER_ADDR)")
	fs.BoolVar(&d.tls, "tls", envOr("QUOTA_BROKER_TLS", "") == "1", "connect with TLS, trusting the system's CAs unless --tls-ca (env QUOTA_BROKER_TLS=1); implied by --tls-ca and --tls-cert")
	fs.StringVar(&d.ca, "tls-ca", envOr("QUOTA_BROKER_TLS_CA", ""), "PEM file of the CA(s) that sign the broker's certificate (env QUOTA_BROKER_TLS_CA)")
	fs.StringVar(&d.cert, "tls-cert", envOr("QUOTA_BROKER_CLIENT_CERT", ""), "client certificate (PEM) for a broker with mutual TLS (env QUOTA_BROKER_CLIENT_CERT)")
	fs.StringVar(&d.key, "tls-key", envOr("QUOTA_BROKER_CLIENT_KEY", ""), "key of --tls-cert (PEM) (env QUOTA_BROKER_CLIENT_KEY)")
	fs.StringVar(&d.token, "token", envOr("QUOTA_BROKER_TOKEN", ""), "bearer token for a broker with --tokens; prefer the env QUOTA_BROKER_TOKEN, which ps does not show")
	return d
}

// deprecatedAddr registers --name as an old spelling of --addr that still
// works, so that scripts written for it do not break, and says so on stderr
// each time it is used.
func (d *dialFlags) deprecatedAddr(fs *flag.FlagSet, name string, stderr io.Writer) {
	fs.Func(name, "deprecated: use --addr", func(v string) error {
		fmt.Fprintf(stderr, "quota-broker %s: --%s is deprecated; use --addr\n", fs.Name(), name)
		d.addr = v
		return nil
	})
}

// dial connects to the broker as the flags say; opts come after the flags'
// (e.g. a larger message size). gRPC connects lazily, so a wrong address or
// a refused certificate shows on the first call.
func (d *dialFlags) dial(opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if (d.cert == "") != (d.key == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	creds := insecure.NewCredentials()
	if d.tls || d.ca != "" || d.cert != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if d.ca != "" {
			pem, err := os.ReadFile(d.ca)
			if err != nil {
				return nil, fmt.Errorf("--tls-ca: %w", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", d.ca)
			}
		}
		if d.cert != "" {
			c, err := tls.LoadX509KeyPair(d.cert, d.key)
			if err != nil {
				return nil, fmt.Errorf("--tls-cert %s, --tls-key %s: %w", d.cert, d.key, err)
			}
			cfg.Certificates = []tls.Certificate{c}
		}
		creds = credentials.NewTLS(cfg)
	}
	all := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if d.token != "" {
		all = append(all, grpc.WithPerRPCCredentials(quotaclient.BearerToken(d.token)))
	}
	conn, err := grpc.NewClient(d.addr, append(all, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("broker %s: %w", d.addr, err)
	}
	return conn, nil
}
