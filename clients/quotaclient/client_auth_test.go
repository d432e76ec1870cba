package quotaclient_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	"github.com/bedrockqb/quotabroker/clients/quotaclient"
	"github.com/bedrockqb/quotabroker/internal/sysclock"
	"github.com/bedrockqb/quotabroker/server"
)

func TestBearerToken(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	tok, sum := server.NewToken()
	path := filepath.Join(dir, "tokens.json")
	os.WriteFile(path, []byte(`{"tokens": [{"client": "svc", "role": "client", "sha256": "`+sum+`"}]}`), 0o600)
	tokens, err := server.LoadTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	store, err := bolt.Open(filepath.Join(dir, "s.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	b, err := broker.Open(ctx, store, sysclock.Clock{}, broker.Config{Margin: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	key, _ := broker.ParseModelID(haiku3, "", "us-east-1")
	b.SetSpecs(ctx, []broker.Spec{{Key: key, Quota: broker.Limits{TPM: 1_000_000}}})
	srv := server.New(b, server.Config{Tokens: tokens})
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(lis)
	defer srv.Shutdown(ctx)

	dialWith := func(opts ...grpc.DialOption) *quotaclient.Client {
		conn, err := grpc.NewClient(lis.Addr().String(), append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return quotaclient.New(conn, quotaclient.WithName("claims-to-be-someone-else"), quotaclient.WithFailureMode(quotaclient.FailOpen))
	}
	// Without the token: unauthenticated, and FailOpen does not paper over it.
	if _, err := dialWith().Acquire(ctx, quotaclient.Request{ModelID: haiku3, MaxOutputTokens: 10}); !errors.Is(err, quotaclient.ErrUnauthenticated) {
		t.Fatalf("without a token: %v", err)
	}
	l, err := dialWith(grpc.WithPerRPCCredentials(quotaclient.BearerToken(tok))).Acquire(ctx, quotaclient.Request{ModelID: haiku3, MaxOutputTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	if got := b.LeaseClient(l.ID); got != "svc" {
		t.Fatalf("lease belongs to %q, want svc (the token's client)", got)
	}
	if err := l.Complete(ctx, quotaclient.OutcomeSuccess, quotaclient.Usage{}); err != nil {
		t.Fatal(err)
	}
}
