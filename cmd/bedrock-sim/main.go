// Command bedrock-sim serves a simulated Amazon Bedrock account (Service
// Quotas, the Bedrock control plane and runtime, CloudWatch in its three
// protocols) on loopback, so the AWS SDKs, the AWS CLI and boto3 work
// against it with --endpoint-url and dummy credentials. See internal/bedrocksim for the model it simulates.
//
// Usage:
//
//	bedrock-sim [--listen 127.0.0.1:8566] [--scenario FILE] [--speed 1] [--seed 1] [--log-level info]
//
// Every flag falls back to an environment variable: BEDROCK_SIM_LISTEN,
// BEDROCK_SIM_SCENARIO, BEDROCK_SIM_SPEED, BEDROCK_SIM_SEED,
// BEDROCK_SIM_LOG_LEVEL. --speed 10 runs simulated time ten times faster:
// quotas refill, scenario changes fire and latencies elapse in simulated time.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

const defaultListen = "127.0.0.1:8566"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bedrock-sim:", err)
		os.Exit(1)
	}
}

const synopsis = `bedrock-sim serves a simulated Amazon Bedrock account on loopback: Service Quotas
(awsJson1_1), the Bedrock control plane and runtime (restJson1), CloudWatch (awsJson1_0,
rpc-v2-cbor and query) and the Price List Query API's Bedrock prices (awsJson1_1), so the AWS
SDKs, the AWS CLI and boto3 work against it unchanged.

Usage:
  bedrock-sim [--listen 127.0.0.1:8566] [--scenario FILE] [--speed 1] [--seed 1] [--log-level info]

Then, with any credentials:
  AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x aws --region us-east-1 --endpoint-url http://127.0.0.1:8566 \
      service-quotas list-service-quotas --service-code bedrock

Flags (each falls back to the environment variable named):
`

// isHelp reports whether args ask for help before any other work.
func isHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help", "--h", "help":
			return true
		case "--":
			return false
		}
	}
	return false
}

// run serves until ctx ends, then shuts the server down gracefully. It
// prints the endpoint URL to stdout once the listener is open.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bedrock-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", envOr("BEDROCK_SIM_LISTEN", defaultListen), "address to listen on (env BEDROCK_SIM_LISTEN)")
	scenario := fs.String("scenario", os.Getenv("BEDROCK_SIM_SCENARIO"), "scenario JSON file; empty runs the embedded default (env BEDROCK_SIM_SCENARIO)")
	speedDefault, err := strconv.ParseFloat(envOr("BEDROCK_SIM_SPEED", "1"), 64)
	if err != nil {
		return fmt.Errorf("BEDROCK_SIM_SPEED: %w", err)
	}
	speed := fs.Float64("speed", speedDefault, "simulated seconds per real second (env BEDROCK_SIM_SPEED)")
	seedDefault, err := strconv.ParseUint(envOr("BEDROCK_SIM_SEED", "1"), 10, 64)
	if err != nil {
		return fmt.Errorf("BEDROCK_SIM_SEED: %w", err)
	}
	seed := fs.Uint64("seed", seedDefault, "random seed for output lengths, latencies and faults (env BEDROCK_SIM_SEED)")
	level := fs.String("log-level", envOr("BEDROCK_SIM_LOG_LEVEL", "info"), "debug, info, warn or error (env BEDROCK_SIM_LOG_LEVEL)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), synopsis)
		fs.PrintDefaults()
	}
	if isHelp(args) {
		fs.SetOutput(stdout) // asked for: the synopsis is the output, and the exit status 0
		fs.Usage()
		return nil
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	if *speed <= 0 {
		return fmt.Errorf("--speed %v: must be positive", *speed)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))

	sc, err := bedrocksim.LoadScenario(*scenario)
	if err != nil {
		return err
	}
	cfg := bedrocksim.Config{Scenario: sc, Speed: *speed, Seed: *seed, Logger: log}
	sim, err := bedrocksim.New(cfg)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w (is another bedrock-sim or a quota-broker demo running? "+
			"choose another address with --listen or BEDROCK_SIM_LISTEN, e.g. --listen 127.0.0.1:0)", *listen, err)
	}
	srv := &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 10 * time.Second}
	url := "http://" + ln.Addr().String()
	fmt.Fprintf(stdout, "bedrock-sim serving scenario %q at %s (use --endpoint-url %s or AWS_ENDPOINT_URL=%s)\n",
		sim.Scenario().Name, url, url, url)
	log.Info("serving", "addr", ln.Addr().String(), "scenario", sim.Scenario().Name, "speed", *speed)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }() // ends when srv shuts down
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		_ = srv.Close()
		<-served
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
