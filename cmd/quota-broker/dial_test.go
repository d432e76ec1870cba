package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bedrockqb/quotabroker/internal/certtest"
	"github.com/bedrockqb/quotabroker/server"
)

// TestEveryClientCommandDialsTLSWithToken runs serve with TLS and bearer
// tokens, and every command that calls a broker (report, probe, increase)
// against it with the same connection flags: each reaches the broker with
// --tls-ca and --token, and none does without the token or without TLS.
func TestEveryClientCommandDialsTLSWithToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := certtest.NewCA(t, "test CA")
	cert, key := ca.Server(t, "server")
	tok, sum := server.NewToken()
	tokens, err := json.Marshal(map[string]any{"tokens": []map[string]string{{"client": "ops", "role": "client", "sha256": sum}}})
	if err != nil {
		t.Fatal(err)
	}
	tokensFile := filepath.Join(dir, "tokens.json")
	if err := os.WriteFile(tokensFile, tokens, 0o600); err != nil {
		t.Fatal(err)
	}
	addr, _ := inProcess(t, "serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "s.db"),
		"--tls-cert", cert, "--tls-key", key, "--tokens", tokensFile)

	const model = "us.anthropic.claude-haiku-4-5-20251001-v1:0" // in the example budgets, no traffic
	// reached reads a command's outcome: did its first call get an answer
	// from the broker (authenticated), or a refusal, and what did it say?
	commands := []struct {
		name    string
		args    []string
		reached func(out string, err error) bool
	}{
		{"report", []string{"report", "--wide", "--timeout", "10s"}, func(out string, err error) bool {
			return err == nil && strings.Contains(out, "TPM used/limit")
		}},
		// Without --confirm the probe prints its plan, with the broker's
		// budget when the broker answered.
		{"probe", []string{"probe", "--model", model, "--region", "us-east-1"}, func(out string, err error) bool {
			return err != nil && strings.Contains(err.Error(), "--confirm") && !strings.Contains(out, "broker budget unknown") &&
				strings.Contains(out, "us-east-1/cross-region/anthropic.claude-haiku-4-5-20251001-v1:0")
		}},
		// The broker answers that the budget has no history: it was read.
		{"increase", []string{"increase", "--model", model, "--period", "1h", "--timeout", "10s"}, func(out string, err error) bool {
			return err != nil && strings.Contains(err.Error(), "no usage of")
		}},
	}
	for _, c := range commands {
		for _, conn := range []struct {
			name string
			args []string
			ok   bool
		}{
			{"TLS and token", []string{"--addr", addr, "--tls-ca", ca.CertFile, "--token", tok}, true},
			{"TLS, no token", []string{"--addr", addr, "--tls-ca", ca.CertFile, "--token", ""}, false},
			{"token, no TLS", []string{"--addr", addr, "--token", tok}, false},
			{"TLS, wrong token", []string{"--addr", addr, "--tls-ca", ca.CertFile, "--token", "qb_wrong"}, false},
		} {
			var out strings.Builder
			err := run(context.Background(), append(append([]string{}, c.args...), conn.args...), &out, io.Discard)
			if got := c.reached(out.String(), err); got != conn.ok {
				t.Errorf("%s with %s: reached the broker %v, want %v (err %v)\n%s", c.name, conn.name, got, conn.ok, err, out.String())
			}
		}
	}
	// probe's old --broker still names the address, with a warning.
	var out, errOut strings.Builder
	err = run(context.Background(), []string{"probe", "--model", model, "--region", "us-east-1", "--broker", addr, "--tls-ca", ca.CertFile, "--token", tok}, &out, &errOut)
	if !commands[1].reached(out.String(), err) || !strings.Contains(errOut.String(), "--broker is deprecated; use --addr") {
		t.Errorf("probe --broker: err %v, stderr %q\n%s", err, errOut.String(), out.String())
	}
}
