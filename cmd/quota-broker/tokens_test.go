package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
	"github.com/bedrockqb/quotabroker/server"
)

// TestTokensReloadKeepsTokensOnABrokenFile runs the broker with a tokens
// file, then breaks the file in the ways that once passed (an empty list,
// null, trailing garbage) and sends SIGHUP: each reload fails at ERROR and
// the token in force still works. Before, an empty list was taken (logged
// at INFO) and locked everyone out.
func TestTokensReloadKeepsTokensOnABrokenFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens.json")
	tok, sum := server.NewToken()
	good := `{"tokens": [{"client": "alice", "role": "client", "sha256": "` + sum + `"}]}`
	if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startBroker(t, "serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "state.db"), "--tokens", path)
	c := dial(t, p.addr)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	for i, broken := range []string{`{"tokens": []}`, `null`, good + ` garbage`} {
		if err := os.WriteFile(path, []byte(broken), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		// Each failure is logged once more: wait for the i+1th.
		want := `level=ERROR msg="tokens reload failed; the previous tokens stay in force"`
		if !p.waitFor(want, i+1, 30*time.Second) {
			t.Fatalf("%s: no reload failure logged at ERROR\n%s", broken, p.output())
		}
		if _, err := c.ListBudgets(ctx, &pb.ListBudgetsRequest{}); err != nil {
			t.Fatalf("after reloading %s: the token in force was dropped: %v", broken, err)
		}
	}
}

// TestTokenRefusesInvalidClientNames: quota-broker token checks the name
// with the rule the broker loads the file with.
func TestTokenRefusesInvalidClientNames(t *testing.T) {
	for _, name := range []string{"evil\xff", "a\nb", "<x>"} {
		var out, errOut strings.Builder
		if err := token(context.Background(), []string{"--client", name}, &out, &errOut); err == nil || out.Len() > 0 {
			t.Errorf("--client %q: %v, printed %q", name, err, out.String())
		}
	}
	var out, errOut strings.Builder
	if err := token(context.Background(), []string{"--client", "checkout-svc"}, &out, &errOut); err != nil || !strings.Contains(out.String(), `"client":"checkout-svc"`) {
		t.Fatalf("a valid name: %v %q", err, out.String())
	}
}
