// Command quota-broker is the Bedrock Quota Broker's one binary for
// operators.
//
//	quota-broker demo      the broker and the Bedrock simulator together
//	quota-broker serve     run the broker (gRPC) on a bbolt file
//	quota-broker discover  list the account's Bedrock quotas and the budgets they make
//	quota-broker report    print a running broker's quota report
//	quota-broker probe     find where Bedrock starts throttling a model
//	quota-broker token     make a bearer token and its tokens-file entry
//	quota-broker increase  build the evidence for a quota increase and file it
//	quota-broker alarms    CloudWatch alarms for every budget (dry run unless --apply)
//
// Every flag has an environment fallback, named in its help text.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/bedrockqb/quotabroker/internal/gctune"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "quota-broker:", err)
		}
		os.Exit(2)
	}
}

const usage = `usage: quota-broker <command> [flags]

commands:
  demo      run the broker with the Bedrock simulator, quotas discovered from it
  serve     run the broker: gRPC on --listen, state in the bbolt file --data
  discover  list the account's Bedrock quotas and the budgets they make
  report    print a running broker's quota report (table or JSON)
  probe     find where Bedrock starts throttling a model (a rising load through the broker)
  token     make a bearer token for a client, and its tokens-file entry
  increase  show the evidence for a Bedrock quota increase from the broker's
            history, and file the request with Service Quotas (--yes)
  alarms    create (or --delete) CloudWatch alarms on throttles and TPM quota
            usage for every budget; prints the plan unless --apply

Run "quota-broker <command> -h" (or "quota-broker help <command>") for a
command's synopsis and flags; every flag names its environment fallback.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	err := dispatch(ctx, args, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil // help was asked for and printed
	}
	return err
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "serve":
		gctune.Apply()
		return serve(ctx, args[1:], stdout, stderr)
	case "demo":
		gctune.Apply()
		return demo(ctx, args[1:], stdout, stderr)
	case "discover":
		return discover(ctx, args[1:], stdout, stderr)
	case "report":
		return report(ctx, args[1:], stdout, stderr)
	case "probe":
		return probeCommand(ctx, args[1:], stdout, stderr)
	case "token":
		return token(ctx, args[1:], stdout, stderr)
	case "increase":
		return increaseCommand(ctx, args[1:], stdout, stderr)
	case "alarms":
		return alarms(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		if len(args) > 1 && args[0] == "help" && args[1] != "help" {
			return dispatch(ctx, []string{args[1], "-h"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// envOr returns the environment variable name, or def when it is unset.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}
