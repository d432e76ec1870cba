package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"github.com/bedrockqb/quotabroker/server"
)

// token prints a new bearer token and the entry to add to the tokens file.
// The broker keeps only the token's SHA-256, so a leaked tokens file does
// not leak tokens.
func token(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setSynopsis(fs, `usage: quota-broker token --client NAME [--role client|admin]

Makes a random bearer token for a client and prints it with the entry to add
to serve's --tokens file (JSON; the broker keeps only the token's SHA-256,
so a leaked tokens file leaks no token). Send SIGHUP to the broker to reload
the file. The client passes the token with --token or QUOTA_BROKER_TOKEN
(commands) or quotaclient.BearerToken (Go).`)
	client := fs.String("client", "", "the client name the token stands for (required)")
	role := fs.String("role", "client", "client or admin")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if *client == "" {
		return fmt.Errorf("token: --client is required")
	}
	if err := server.CheckClient(*client); err != nil {
		return fmt.Errorf("token: --client %q: %w", *client, err)
	}
	if *role != string(server.RoleClient) && *role != string(server.RoleAdmin) {
		return fmt.Errorf("token: --role %q: want client or admin", *role)
	}
	tok, sum := server.NewToken()
	entry, _ := json.Marshal(map[string]string{"client": *client, "role": *role, "sha256": sum})
	fmt.Fprintf(stdout, "token (give it to %s; it is not stored anywhere):\n  %s\nentry for the tokens file:\n  %s\n", *client, tok, entry)
	return nil
}
