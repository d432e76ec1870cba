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
	"path/filepath"
	"time"

	"github.com/bedrockqb/quotabroker/internal/bedrocksim"
)

// demo runs the Bedrock simulator and the broker in one process: the broker
// discovers its budgets from the simulator exactly as it would from AWS
// (real aws-sdk-go-v2 clients over loopback), so a laptop without AWS
// credentials sees a realistic account.
func demo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setSynopsis(fs, `usage: quota-broker demo [flags]

Runs the broker and the Bedrock simulator together in one process, with no
AWS account: the broker discovers its budgets from the simulator as it would
from AWS (real AWS SDK clients over loopback), and synthetic services
(--traffic) call models through it and around it, so that report, the
dashboard and the metrics have a story to show. The state file is temporary
unless --data. Stop with Ctrl-C.`)
	listen := fs.String("listen", envOr("QUOTA_BROKER_LISTEN", "127.0.0.1:50051"), "broker gRPC address (env QUOTA_BROKER_LISTEN)")
	httpListen := fs.String("http", envOr("QUOTA_BROKER_HTTP", "127.0.0.1:9464"), "HTTP address for /metrics and /dashboard (env QUOTA_BROKER_HTTP)")
	simListen := fs.String("sim-listen", envOr("BEDROCK_SIM_LISTEN", "127.0.0.1:8566"), "simulator address (env BEDROCK_SIM_LISTEN)")
	dataDir := fs.String("data", envOr("QUOTA_BROKER_DATA", ""), "state file; default a temporary one, removed at exit (env QUOTA_BROKER_DATA)")
	scenario := fs.String("scenario", envOr("BEDROCK_SIM_SCENARIO", ""), "simulator scenario file; default the built-in account (env BEDROCK_SIM_SCENARIO)")
	speed := fs.Float64("speed", 1, "simulated time runs this many times faster")
	regions := fs.String("regions", "us-east-1", "Regions the broker discovers from the simulator")
	traffic := fs.Bool("traffic", true, "run a few synthetic services through the broker against the simulator, so the report, metrics and dashboard have something to show")
	logLevel := fs.String("log-level", envOr("QUOTA_BROKER_LOG_LEVEL", "info"), "debug, info, warn or error")
	alertWebhook := fs.String("alert-webhook", envOr("QUOTA_BROKER_ALERT_WEBHOOK", ""), "URL alerts are also POSTed to; they always go to the log (env QUOTA_BROKER_ALERT_WEBHOOK)")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("demo: unexpected argument %q", fs.Arg(0))
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	sc, err := bedrocksim.LoadScenario(*scenario)
	if err != nil {
		return err
	}
	cfg := bedrocksim.Config{Scenario: sc, Speed: *speed, Logger: log.With("component", "bedrock-sim")}
	sim, err := bedrocksim.New(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *simListen)
	if err != nil {
		return listenError(*simListen, "sim-listen", "BEDROCK_SIM_LISTEN", err)
	}
	simURL := "http://" + ln.Addr().String()
	srv := &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	// Stop the simulator after the broker, which may still talk to it while
	// it drains.
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("simulator stopped", "err", err)
		}
	}()

	data := *dataDir
	if data == "" {
		dir, err := os.MkdirTemp("", "quota-broker-demo")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		data = filepath.Join(dir, "quota-broker.db")
	}
	f, err := parseServeFlags([]string{"--listen", *listen, "--http", *httpListen, "--data", data, "--aws-endpoint", simURL,
		"--regions", *regions, "--region", firstRegion(*regions), "--refresh", "1m", "--cloudwatch", "--log-level", *logLevel,
		"--alert-webhook", *alertWebhook}, stderr)
	if err != nil {
		return err
	}
	f.banner = func(w io.Writer, addr net.Addr) {
		fmt.Fprintf(w, `Bedrock simulator on %[2]s (quotas, models, runtime, CloudWatch; scenario %[3]s)

Try it (grpcurl: go run github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3):
  grpcurl -plaintext %[1]s list
  grpcurl -plaintext -d '{"model": "claude-sonnet-4-5"}' %[1]s quotabroker.v1.QuotaBroker/GetQuotaReport
  grpcurl -plaintext -H 'x-quotabroker-client: demo' -d '{"model_id": "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "input_tokens": 1200, "max_output_tokens": 1024}' %[1]s quotabroker.v1.QuotaBroker/AcquireLease
  quota-broker discover --aws-endpoint %[2]s
  aws --endpoint-url %[2]s --region us-east-1 service-quotas list-service-quotas --service-code bedrock   (any dummy AWS credentials)
Alerts (utilisation >= %[4]g%% for %[5]v, throttle rate > %[6]g%% over %[7]v) go to this log%[8]s.
Stop with Ctrl-C.
`, addr, simURL, scenarioName(*scenario), f.alert.utilisation*100, f.alert.utilisationFor, f.alert.throttleRate*100, f.alert.window, webhookNote(*alertWebhook))
	}
	if !*traffic {
		return runBroker(ctx, f, stdout, stderr)
	}
	// The traffic starts once the broker listens, and on Ctrl-C it stops
	// before the broker does: its calls end and settle their leases while
	// the broker still serves, so the broker's drain has nothing to refuse
	// (answering the traffic's waiters "shutting down" logged a WARN each).
	ready := make(chan net.Addr, 1)
	banner := f.banner
	f.banner = func(w io.Writer, addr net.Addr) {
		banner(w, addr)
		fmt.Fprint(w, demoStory)
		ready <- addr
	}
	tctx, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	trafficDone := make(chan struct{})
	go func() {
		defer close(trafficDone)
		select {
		case addr := <-ready:
			// The broker's clock is the system's: the services keep its
			// time whatever the simulator's --speed.
			if err := runDemoTraffic(tctx, addr.String(), simURL, firstRegion(*regions), 1, log.With("component", "demo-traffic")); err != nil {
				log.Warn("demo traffic stopped", "err", err)
			}
		case <-tctx.Done():
		}
	}()
	// The broker's own context ends once the traffic has stopped after
	// ctx ended, or when the broker returned by itself (a server failed).
	bctx, stopBroker := context.WithCancel(context.WithoutCancel(ctx))
	brokerDone := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-ctx.Done():
			stopTraffic()
			<-trafficDone
			log.Info("demo traffic stopped; stopping the broker")
		case <-brokerDone:
		}
		stopBroker()
	}()
	err = runBroker(bctx, f, stdout, stderr)
	close(brokerDone)
	<-stopped
	stopTraffic()
	<-trafficDone
	return err
}

// demoStory tells what the demo's traffic will show, and where (see
// demoServices).
const demoStory = `
Synthetic traffic is running (--traffic=false turns it off); what to look for:
  - nightly-batch pushes Claude Sonnet 4, whose real capacity here is half its published quota:
    Bedrock throttles it within seconds and the budget's adaptive ceiling settles near the real limit
    (quota-broker report --model sonnet-4-2025: THROTTLED, CEILING; its adaptive reason says so).
  - legacy-summariser calls Sonnet 4.5 straight to Bedrock, bypassing the broker, for 75 s from 0:45
    and every 15 minutes: Bedrock throttles chat-frontend too, the ceiling drops, then climbs back
    over the next minutes (quota-broker report --model sonnet-4-5: THROTTLED, CEILING; the dashboard's
    calls and tokens panels; GetUsageHistory's cloudwatchInvocations exceed the broker's calls).
  - report-writer leaves max_tokens unset: see the report's MAX_TOKENS ADVICE.
`

func webhookNote(url string) string {
	if url == "" {
		return " (add --alert-webhook URL to POST them too)"
	}
	return " and to the webhook"
}

func firstRegion(list string) string {
	for i := range len(list) {
		if list[i] == ',' {
			return list[:i]
		}
	}
	return list
}

func scenarioName(path string) string {
	if path == "" {
		return "built-in"
	}
	return path
}
