package main

import (
	"cmp"
	"context"
	_ "embed"
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
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/awspricing"
	"github.com/bedrockqb/quotabroker/broker/awsquota"
	"github.com/bedrockqb/quotabroker/broker/bolt"
	"github.com/bedrockqb/quotabroker/broker/budgetfile"
	"github.com/bedrockqb/quotabroker/broker/policyfile"
	"github.com/bedrockqb/quotabroker/broker/pricefile"
	"github.com/bedrockqb/quotabroker/broker/routefile"
	"github.com/bedrockqb/quotabroker/internal/sysclock"
	"github.com/bedrockqb/quotabroker/server"
	"github.com/bedrockqb/quotabroker/server/dashboard"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// exampleBudgets is served when neither --budgets nor the store names any
// budget, so a new user sees a working broker at once.
//
//go:embed example-budgets.json
var exampleBudgets []byte

type serveFlags struct {
	listen, httpAddr, data, budgets, clients, tokens, region, logLevel string
	insecureListen                                                     bool
	routes                                                             string
	// TLS: server certificate and key; the client CA turns on mutual TLS.
	tlsCert, tlsKey, tlsClientCA string
	tlsAdmins                    []string // certificate identities with the admin role
	margin                       float64
	maxWait, leaseTTL, drain     time.Duration
	// Discovery from AWS (or an endpoint such as the simulator).
	aws             bool
	regions, awsURL string
	refresh         time.Duration
	// prices is a prices file: with --aws over AWS's Price List (or,
	// "mode": "replace", instead of it), else the only prices.
	prices           string
	banner           func(w io.Writer, addr net.Addr) // extra lines after "listening on"
	exampleWhenEmpty bool
	alert            alertFlags

	// Usage history: how long it is kept, and whether GetUsageHistory adds
	// CloudWatch's figures.
	historyRetention time.Duration
	cloudwatch       bool

	// A replica of a cluster on etcd instead of the bbolt file (cluster.go).
	etcd clusterFlags
}

const serveSynopsis = `usage: quota-broker serve [flags]

Runs the broker: gRPC on --listen, state in the bbolt file --data. Budgets
come from --budgets FILE, from AWS Service Quotas (--aws, --regions, or an
endpoint such as the simulator with --aws-endpoint) or, with neither and an
empty state file, a built-in example set. --http adds /metrics (Prometheus)
and /dashboard. --prices FILE, and with --aws the AWS Price List at each
refresh, tell the broker what calls cost. On SIGINT or SIGTERM it stops
accepting, drains the calls in flight (--drain) and closes the state file.
Callers are trusted unless --tokens or --tls-client-ca says otherwise;
beyond loopback one is required. With --etcd it is one replica of a cluster whose state is in etcd instead:
the elected leader serves, the others answer UNAVAILABLE naming it.`

// parseServeFlags reads serve's flags; -h prints the help on out (flag
// errors are returned, not printed).
func parseServeFlags(args []string, out io.Writer) (serveFlags, error) {
	var f serveFlags
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(out)
	setSynopsis(fs, serveSynopsis)
	fs.StringVar(&f.listen, "listen", envOr("QUOTA_BROKER_LISTEN", "127.0.0.1:50051"), "gRPC listen address (env QUOTA_BROKER_LISTEN)")
	fs.StringVar(&f.httpAddr, "http", envOr("QUOTA_BROKER_HTTP", ""), "HTTP listen address for /metrics (Prometheus) and /dashboard; empty: none (env QUOTA_BROKER_HTTP)")
	fs.StringVar(&f.data, "data", envOr("QUOTA_BROKER_DATA", "quota-broker.db"), "bbolt state file (env QUOTA_BROKER_DATA)")
	fs.StringVar(&f.budgets, "budgets", envOr("QUOTA_BROKER_BUDGETS", ""), "JSON file of static budgets (env QUOTA_BROKER_BUDGETS); default: the stored budgets, or a built-in example set")
	fs.StringVar(&f.routes, "routes", envOr("QUOTA_BROKER_ROUTES", ""), "JSON file of spillover routes (AcquireLease route=NAME), checked against the budgets at start-up and reloaded on SIGHUP (all or nothing); derived routes follow each quota refresh (env QUOTA_BROKER_ROUTES)")
	fs.StringVar(&f.clients, "clients", envOr("QUOTA_BROKER_CLIENTS", ""), "JSON file of client policies: weights, max_concurrent caps, daily_reserve, aging, rate caps and money budgets (caps and money reloaded on SIGHUP) (env QUOTA_BROKER_CLIENTS)")
	fs.StringVar(&f.tokens, "tokens", envOr("QUOTA_BROKER_TOKENS", ""), "JSON file of hashed bearer tokens (client, role); reloaded on SIGHUP (env QUOTA_BROKER_TOKENS); without it callers are trusted")
	fs.BoolVar(&f.insecureListen, "insecure-listen", envOr("QUOTA_BROKER_INSECURE_LISTEN", "") == "1", "allow listening beyond loopback without authenticating callers (no --tokens, no --tls-client-ca) (env QUOTA_BROKER_INSECURE_LISTEN=1)")
	fs.StringVar(&f.tlsCert, "tls-cert", envOr("QUOTA_BROKER_TLS_CERT", ""), "serve TLS with this certificate (PEM, chain first to last); reloaded on SIGHUP (env QUOTA_BROKER_TLS_CERT)")
	fs.StringVar(&f.tlsKey, "tls-key", envOr("QUOTA_BROKER_TLS_KEY", ""), "key of --tls-cert (PEM); reloaded on SIGHUP (env QUOTA_BROKER_TLS_KEY)")
	fs.StringVar(&f.tlsClientCA, "tls-client-ca", envOr("QUOTA_BROKER_TLS_CLIENT_CA", ""), "mutual TLS: require client certificates signed by these CAs (PEM); the client id is the certificate's first URI SAN, else first DNS SAN, else Subject CN; reloaded on SIGHUP (env QUOTA_BROKER_TLS_CLIENT_CA)")
	var admins string
	fs.StringVar(&admins, "tls-admins", envOr("QUOTA_BROKER_TLS_ADMINS", ""), "comma-separated certificate identities (as --tls-client-ca derives them) with the admin role; the others are clients (env QUOTA_BROKER_TLS_ADMINS)")
	fs.StringVar(&f.region, "region", envOr("QUOTA_BROKER_REGION", "us-east-1"), "default AWS Region of requests that name none (env QUOTA_BROKER_REGION)")
	fs.StringVar(&f.logLevel, "log-level", envOr("QUOTA_BROKER_LOG_LEVEL", "info"), "debug, info, warn or error (env QUOTA_BROKER_LOG_LEVEL)")
	margin, err := strconv.ParseFloat(envOr("QUOTA_BROKER_MARGIN", "0.9"), 64)
	if err != nil {
		return f, fmt.Errorf("QUOTA_BROKER_MARGIN: %w", err)
	}
	fs.Float64Var(&f.margin, "margin", margin, "share of each quota the broker hands out, (0, 1] (env QUOTA_BROKER_MARGIN)")
	durEnv := func(name string, def time.Duration) (time.Duration, error) {
		v := envOr(name, "")
		if v == "" {
			return def, nil
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		return d, nil
	}
	fs.BoolVar(&f.aws, "aws", envOr("QUOTA_BROKER_AWS", "") == "1", "discover quotas from AWS Service Quotas for --regions (env QUOTA_BROKER_AWS=1)")
	fs.StringVar(&f.regions, "regions", envOr("QUOTA_BROKER_REGIONS", ""), "comma-separated Regions to discover (env QUOTA_BROKER_REGIONS); default --region")
	fs.StringVar(&f.prices, "prices", envOr("QUOTA_BROKER_PRICES", ""), "JSON prices file; with --aws it overrides the AWS Price List's prices (read at each refresh) rate by rate, or replaces them with \"mode\": \"replace\" (env QUOTA_BROKER_PRICES)")
	fs.BoolVar(&f.cloudwatch, "cloudwatch", envOr("QUOTA_BROKER_CLOUDWATCH", "") == "1", "GetUsageHistory adds CloudWatch AWS/Bedrock metrics, so traffic that bypasses the broker shows; uses --aws-endpoint when set (env QUOTA_BROKER_CLOUDWATCH=1)")
	fs.StringVar(&f.awsURL, "aws-endpoint", envOr("QUOTA_BROKER_AWS_ENDPOINT", ""), "base URL for every AWS client, e.g. the Bedrock simulator; implies --aws (env QUOTA_BROKER_AWS_ENDPOINT)")
	for _, d := range []struct {
		p         *time.Duration
		name, env string
		def       time.Duration
		help      string
	}{
		{&f.maxWait, "max-wait", "QUOTA_BROKER_MAX_WAIT", 5 * time.Minute, "longest AcquireLease wait the broker grants, whatever the caller asks"},
		{&f.leaseTTL, "lease-ttl", "QUOTA_BROKER_LEASE_TTL", 5 * time.Minute, "how long a lease lives unless renewed"},
		{&f.drain, "drain", "QUOTA_BROKER_DRAIN", 10 * time.Second, "on SIGTERM, how long in-flight calls may take to finish"},
		{&f.refresh, "refresh", "QUOTA_BROKER_REFRESH", 10 * time.Minute, "with --aws, how often quotas are discovered again"},
		{&f.historyRetention, "history-retention", "QUOTA_BROKER_HISTORY_RETENTION", 14 * 24 * time.Hour, "how long per-minute usage history is kept (at least 24h)"},
	} {
		def, err := durEnv(d.env, d.def)
		if err != nil {
			return f, err
		}
		fs.DurationVar(d.p, d.name, def, d.help+" (env "+d.env+")")
	}
	fs.StringVar(&f.etcd.endpoints, "etcd", envOr("QUOTA_BROKER_ETCD", ""), "comma-separated etcd endpoints: run as one replica of a cluster whose state is in etcd, instead of the --data file (env QUOTA_BROKER_ETCD)")
	fs.StringVar(&f.etcd.prefix, "etcd-prefix", envOr("QUOTA_BROKER_ETCD_PREFIX", "/quota-broker/"), "etcd key prefix of the cluster's state and election (env QUOTA_BROKER_ETCD_PREFIX)")
	fs.StringVar(&f.etcd.name, "etcd-cluster", envOr("QUOTA_BROKER_ETCD_CLUSTER", "quota-broker"), "the cluster's name, kept in the prefix's format key: a replica of another cluster is refused (env QUOTA_BROKER_ETCD_CLUSTER)")
	fs.StringVar(&f.etcd.ca, "etcd-ca", envOr("QUOTA_BROKER_ETCD_CA", ""), "CA certificates (PEM) that sign etcd's server certificates (env QUOTA_BROKER_ETCD_CA)")
	fs.StringVar(&f.etcd.cert, "etcd-cert", envOr("QUOTA_BROKER_ETCD_CERT", ""), "client certificate (PEM) for etcd (env QUOTA_BROKER_ETCD_CERT)")
	fs.StringVar(&f.etcd.key, "etcd-key", envOr("QUOTA_BROKER_ETCD_KEY", ""), "key of --etcd-cert (PEM) (env QUOTA_BROKER_ETCD_KEY)")
	fs.StringVar(&f.etcd.user, "etcd-user", envOr("QUOTA_BROKER_ETCD_USER", ""), "etcd user, with --etcd-password (env QUOTA_BROKER_ETCD_USER)")
	fs.StringVar(&f.etcd.password, "etcd-password", envOr("QUOTA_BROKER_ETCD_PASSWORD", ""), "etcd password (env QUOTA_BROKER_ETCD_PASSWORD)")
	fs.StringVar(&f.etcd.advertise, "advertise", envOr("QUOTA_BROKER_ADVERTISE", ""), "address other replicas name as the leader's when this one leads; default the --listen address (env QUOTA_BROKER_ADVERTISE)")
	ttl, err := durEnv("QUOTA_BROKER_ETCD_TTL", 3*time.Second)
	if err != nil {
		return f, err
	}
	fs.DurationVar(&f.etcd.ttl, "etcd-ttl", ttl, "TTL of the replica's etcd session: a dead leader is replaced after about this long; the leader steps down on its own clock before etcd can expire it (env QUOTA_BROKER_ETCD_TTL)")
	if err := f.alert.register(fs); err != nil {
		return f, err
	}
	if err := parseFlags(fs, args, out); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("serve: unexpected argument %q", fs.Arg(0))
	}
	if f.awsURL != "" {
		f.aws = true
	}
	f.tlsAdmins = list(admins)
	switch {
	case (f.tlsCert == "") != (f.tlsKey == ""):
		return f, errors.New("--tls-cert and --tls-key go together")
	case f.tlsClientCA != "" && f.tlsCert == "":
		return f, errors.New("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")
	case len(f.tlsAdmins) > 0 && f.tlsClientCA == "":
		return f, errors.New("--tls-admins names certificate identities: it needs --tls-client-ca")
	}
	if f.aws && f.refresh < time.Second {
		return f, fmt.Errorf("--refresh %v: at least 1s", f.refresh)
	}
	if f.historyRetention < 24*time.Hour {
		return f, fmt.Errorf("--history-retention %v: at least 24h (reports read the last day)", f.historyRetention)
	}
	if f.etcd.endpoints != "" && f.etcd.ttl < time.Second {
		return f, fmt.Errorf("--etcd-ttl %v: at least 1s (etcd counts leases in seconds)", f.etcd.ttl)
	}
	if (f.etcd.cert == "") != (f.etcd.key == "") {
		return f, errors.New("--etcd-cert and --etcd-key go together")
	}
	f.exampleWhenEmpty = !f.aws
	return f, nil
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// serve runs the broker until ctx ends (see Main).
func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	m := NewMain(stdout, stderr)
	if err := m.ParseFlags(args); err != nil {
		return err
	}
	return m.Serve(ctx)
}

// runBroker serves with flags already parsed (demo sets its own).
func runBroker(ctx context.Context, f serveFlags, stdout, stderr io.Writer) error {
	m := NewMain(stdout, stderr)
	m.flags = f
	return m.Serve(ctx)
}

// discoveryTimeout bounds the first discovery at start-up; after it the
// broker serves what it has (stored quotas) and keeps trying in the
// background.
const discoveryTimeout = 30 * time.Second

// Main is the serve command as a value: ParseFlags, Run (open and start
// everything, return once serving), Close (shut down in reverse order of
// start-up). Its fields are what Run opened, so that Close undoes exactly
// that, also after a Run that failed half way.
type Main struct {
	flags          serveFlags
	stdout, stderr io.Writer

	log    *slog.Logger
	store  *bolt.Store
	broker *broker.Broker
	// In a cluster (--etcd) store and broker stay nil: the cluster opens
	// a broker for each term it leads.
	cluster     *cluster
	etcdCli     *clientv3.Client
	stopCluster context.CancelFunc
	clusterDone chan struct{}
	scfg        server.Config
	srv         *server.Server
	lis         net.Listener
	httpLis     net.Listener
	httpSrv     *http.Server

	// The background loops (sweep, refresh, alerts, SIGHUP, the servers)
	// run on runCtx; Close cancels it and waits for them.
	stopRun  context.CancelFunc
	wg       sync.WaitGroup
	serveErr chan error // a server that stopped by itself

	// caps are the clients file's caps last accepted by a broker (at a
	// term's start or a SIGHUP), for the next term's broker (setCaps).
	caps atomic.Pointer[broker.Caps]
	// routes is the routes file last accepted by a broker, likewise
	// (useRoutes).
	routes atomic.Pointer[routefile.File]
}

// NewMain returns a Main that prints to stdout (the lines tools wait for)
// and logs to stderr.
func NewMain(stdout, stderr io.Writer) *Main {
	return &Main{stdout: stdout, stderr: stderr, serveErr: make(chan error, 2)}
}

// ParseFlags reads serve's flags and their environment fallbacks.
func (m *Main) ParseFlags(args []string) error {
	f, err := parseServeFlags(args, m.stdout)
	if err != nil {
		return err
	}
	m.flags = f
	return nil
}

// Serve runs the broker until ctx ends or a server fails, then closes it.
func (m *Main) Serve(ctx context.Context) error {
	if err := m.Run(ctx); err != nil {
		m.Close()
		return err
	}
	var result error
	select {
	case <-ctx.Done():
		m.log.Info("shutting down", "drain", m.flags.drain)
	case err := <-m.serveErr:
		result = fmt.Errorf("serve: %w", err)
	}
	if err := m.Close(); err != nil && result == nil {
		result = err
	}
	if result == nil {
		fmt.Fprintln(m.stdout, "quota-broker stopped")
	}
	return result
}

// Run opens the store and the broker, discovers quotas, starts the
// background loops and the servers, and prints the "listening" line. ctx
// bounds start-up only (discovery); the broker runs until Close.
func (m *Main) Run(ctx context.Context) (err error) {
	f := m.flags
	if m.log, err = newLogger(m.stderr, f.logLevel); err != nil {
		return err
	}
	log := m.log
	cfg := broker.Config{
		DefaultRegion: f.region, Margin: f.margin, MaxWait: f.maxWait, LeaseTTL: f.leaseTTL,
		MaxLeaseTTL: max(time.Hour, f.leaseTTL), Logger: log, HistoryRetention: f.historyRetention,
	}
	if f.clients != "" {
		p, err := policyfile.Load(f.clients)
		if err != nil {
			return err
		}
		cfg.DefaultClient, cfg.Clients, cfg.DailyReserve, cfg.Aging, cfg.MaxWaiters = p.Default, p.Clients, p.DailyReserve, p.Aging, p.MaxWaiters
		// At Open, so that the restore rebuilds the caps' windows; their
		// models are checked against the budgets in openBroker, once known.
		cfg.Caps = p.Caps
	}
	clock := sysclock.Clock{}
	var svc service
	var src broker.QuotaSource
	if f.etcd.endpoints != "" {
		rep, err := m.openCluster(ctx, clock, cfg)
		if err != nil {
			return err
		}
		svc = rep
	} else {
		if m.store, err = bolt.Open(f.data, bolt.Options{}); err != nil {
			return fmt.Errorf("state file (--data): %w", err)
		}
		if m.broker, src, err = m.openBroker(ctx, m.store, clock, cfg); err != nil {
			return err
		}
		svc = m.broker
	}
	alerts, err := newAlerting(f.alert, svc, log)
	if err != nil {
		return err
	}
	m.scfg = server.Config{Logger: log, Clock: clock}
	scfg := &m.scfg
	if m.cluster != nil {
		scfg.Cluster = m.cluster.rep.serverStatus
	}
	if f.cloudwatch {
		scfg.CloudWatch = newCloudWatch(f.awsURL, log)
	}
	if f.tokens != "" {
		if scfg.Tokens, err = server.LoadTokens(f.tokens); err != nil {
			return err
		}
		log.Info("callers authenticate with bearer tokens", "tokens", scfg.Tokens.Len())
	}
	if f.tlsCert != "" {
		if scfg.TLS, err = server.LoadTLS(server.TLSFiles{CertFile: f.tlsCert, KeyFile: f.tlsKey, ClientCAFile: f.tlsClientCA, Admins: f.tlsAdmins}); err != nil {
			return err
		}
		log.Info("serving TLS", "mutual", scfg.TLS.Mutual(), "admins", len(f.tlsAdmins), "cert_expires", scfg.TLS.NotAfter().Format(time.RFC3339))
	}
	lis, err := net.Listen("tcp", f.listen)
	if err != nil {
		return listenError(f.listen, "listen", "QUOTA_BROKER_LISTEN", err)
	}
	warn, err := checkExposure(lis.Addr(), f)
	if err != nil {
		lis.Close()
		return err
	}
	if warn != "" {
		log.Warn(warn, "addr", lis.Addr().String())
	}
	var httpLis net.Listener
	if f.httpAddr != "" {
		reg := server.NewRegistry(svc)
		alerts.register(reg)
		if m.cluster != nil {
			server.RegisterCluster(reg, m.cluster.rep.serverStatus)
		}
		scfg.Metrics = reg
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", server.MetricsHandler(reg))
		// Renders are reused for 10 s: the page reloads itself every minute
		// and a render costs hundreds of milliseconds of CPU.
		dcfg := dashboard.Config{Logger: log, CacheFor: 10 * time.Second}
		if m.cluster != nil {
			rep := m.cluster.rep
			dcfg.Cluster = func() string { return clusterLine(rep.proto()) }
		}
		if alerts != nil { // a nil *alerting in the interface would not be nil
			dcfg.Alerts = alerts
		}
		var page dashboard.Source = svc
		if m.cluster != nil {
			page = pageSource{m.cluster.rep}
		}
		dashboard.New(page, dcfg).Register(mux)
		if httpLis, err = net.Listen("tcp", f.httpAddr); err != nil {
			lis.Close()
			return listenError(f.httpAddr, "http", "QUOTA_BROKER_HTTP", err)
		}
		m.httpSrv = server.NewHTTPServer(mux, log)
	}
	m.srv = server.New(svc, *scfg)
	if m.cluster != nil {
		m.srv.SetServing(false) // a standby until elected
	}
	m.lis, m.httpLis = lis, httpLis

	runCtx, stopRun := context.WithCancel(context.Background())
	m.stopRun = stopRun
	wg := &m.wg
	if b := m.broker; b != nil {
		wg.Go(func() { b.Run(runCtx) })
		if src != nil {
			wg.Go(func() { b.RunRefresh(runCtx, src, f.refresh) })
		}
	}
	alerts.start(runCtx, wg)
	if scfg.Tokens != nil || scfg.TLS != nil || f.clients != "" || f.routes != "" {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		reloadCfg := *scfg
		clientsFile, routesFile := f.clients, f.routes
		// The broker whose caps a reload replaces: this process's, or in a
		// cluster the one it leads with now (a standby has none; a new
		// term reads the file as it is then).
		current := func() *broker.Broker { return m.broker }
		if m.cluster != nil {
			rep := m.cluster.rep
			current = func() *broker.Broker {
				b, _ := rep.current()
				return b
			}
		}
		wg.Go(func() {
			defer signal.Stop(hup)
			for {
				select {
				case <-runCtx.Done():
					return
				case <-hup:
					reload(log, reloadCfg)
					if b := current(); b != nil {
						m.reloadPolicy(log, b, clientsFile, routesFile)
					}
				}
			}
		})
	}
	srv := m.srv
	wg.Go(func() { m.serveErr <- srv.Serve(lis) })
	if m.httpSrv != nil {
		httpSrv := m.httpSrv
		wg.Go(func() {
			if err := httpSrv.Serve(httpLis); !errors.Is(err, http.ErrServerClosed) {
				m.serveErr <- fmt.Errorf("http: %w", err)
			}
		})
	}

	if httpLis != nil {
		fmt.Fprintf(m.stdout, "metrics on http://%s/metrics\n", httpLis.Addr())
		fmt.Fprintf(m.stdout, "dashboard on http://%s/dashboard\n", httpLis.Addr())
	}
	// Last: tools and tests wait for this line.
	if m.cluster != nil {
		m.startCluster(lis.Addr())
		fmt.Fprintf(m.stdout, "quota-broker listening on %s (state in etcd %s under %s; a standby until elected)\n", lis.Addr(), f.etcd.endpoints, m.cluster.store.Prefix())
	} else {
		fmt.Fprintf(m.stdout, "quota-broker listening on %s (state %s, %d budgets)\n", lis.Addr(), f.data, len(m.broker.Budgets()))
	}
	switch {
	case f.banner != nil:
		f.banner(m.stdout, lis.Addr())
	case scfg.TLS.Mutual():
		fmt.Fprintf(m.stdout, "try: grpcurl -cacert CA.pem -cert CLIENT.pem -key CLIENT-KEY.pem %s list\n", lis.Addr())
	case scfg.TLS != nil:
		fmt.Fprintf(m.stdout, "try: grpcurl -cacert CA.pem %s list\n", lis.Addr())
	default:
		fmt.Fprintf(m.stdout, "try: grpcurl -plaintext %s list\n", lis.Addr())
	}
	return nil
}

// Close shuts down in reverse order of start-up: stop accepting and mark
// NOT_SERVING, answer waiters with UNAVAILABLE, drain in-flight calls,
// stop the background loops, persist expiries, close the store. After a
// Run that failed it closes what that Run opened.
func (m *Main) Close() error {
	if m.etcdCli != nil {
		return m.closeCluster()
	}
	b := m.broker
	if m.srv == nil {
		// Run failed before serving: nothing to drain.
		if b != nil {
			b.Close()
		}
		if m.store != nil {
			m.store.Close()
		}
		return nil
	}
	m.srv.Drain()
	b.Close()
	drainCtx, cancel := context.WithTimeout(context.Background(), m.flags.drain)
	// New leases are refused now; leases held by calls in flight may still
	// be settled (and renewed) until they all are or the drain runs out.
	select {
	case <-b.Settled():
	case <-drainCtx.Done():
		m.log.Warn("drain ended with leases still held; they stay charged at their reservation until settled after a restart or expired")
	}
	m.srv.Shutdown(drainCtx)
	if m.httpSrv != nil {
		m.httpSrv.Shutdown(drainCtx)
	}
	cancel()
	m.stopRun()
	m.wg.Wait()
	b.Sweep(context.Background()) // persist expiries and pending retries
	if err := m.store.Close(); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// reload reads the tokens and TLS files again (SIGHUP); a file that fails
// keeps what is in force.
func reload(log *slog.Logger, scfg server.Config) {
	if scfg.Tokens != nil {
		if err := scfg.Tokens.Reload(); err != nil {
			log.Error("tokens reload failed; the previous tokens stay in force", "err", err)
		} else {
			log.Info("tokens reloaded", "tokens", scfg.Tokens.Len())
		}
	}
	if scfg.TLS != nil {
		if err := scfg.TLS.Reload(); err != nil {
			log.Error("TLS reload failed; the previous certificate and client CAs stay in force", "err", err)
		} else {
			log.Info("TLS certificate and client CAs reloaded", "cert_expires", scfg.TLS.NotAfter().Format(time.RFC3339))
		}
	}
}

// checkExposure decides whether the broker may listen on addr. Beyond
// loopback its callers must prove who they are (bearer tokens or client
// certificates), or the operator must say --insecure-listen: anyone who can
// reach the port could otherwise spend the account's quota. TLS without
// client certificates encrypts but authenticates nobody, so it does not
// count. The warning, if any, is for the log.
func checkExposure(addr net.Addr, f serveFlags) (warn string, err error) {
	if loopback(addr) {
		return "", nil
	}
	switch {
	case f.tokens == "" && f.tlsClientCA == "" && !f.insecureListen:
		return "", fmt.Errorf("listen on %s: not a loopback address and callers are not authenticated (no --tokens, no --tls-client-ca): anyone who can reach it could spend the account's quota; add --tokens FILE or --tls-client-ca FILE, or --insecure-listen to accept that", addr)
	case f.tokens == "" && f.tlsClientCA == "":
		return "listening beyond loopback without authentication (--insecure-listen): every caller is trusted", nil
	case f.tlsCert == "":
		return "bearer tokens travel in the clear beyond loopback: add --tls-cert and --tls-key", nil
	}
	return "", nil
}

// loopback reports whether addr only accepts connections from this host.
func loopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// service is the broker as the server, dashboard, metrics and alerts see it:
// a *broker.Broker on one machine, a *replica in a cluster.
type service interface {
	server.Broker
	dashboard.Source
}

// openBroker opens a broker on store and gives it its budgets: the
// --budgets file, the quotas discovered from AWS, or the built-in example
// set when the store names none. src is the quota source, if any, for the
// caller's refresh loop.
func (m *Main) openBroker(ctx context.Context, store broker.Store, clock broker.Clock, cfg broker.Config) (b *broker.Broker, src broker.QuotaSource, err error) {
	f, log := m.flags, m.log
	if b, err = broker.Open(ctx, store, clock, cfg); err != nil {
		return nil, nil, err
	}
	var specs []broker.Spec
	var rates map[string]int64 // tokens per minute per model unit, for discovery
	switch {
	case f.budgets != "":
		bf, err := budgetfile.LoadFile(f.budgets, clock.Now())
		if err != nil {
			return b, nil, err
		}
		specs, rates = bf.Specs, bf.ProvisionedRates
		if len(rates) > 0 && !f.aws {
			return b, nil, fmt.Errorf("%s: provisioned_rates size Provisioned Throughputs from the model units discovery reads: add --aws (or --aws-endpoint), or give each throughput an entry of its own", f.budgets)
		}
	case len(b.Budgets()) == 0 && f.exampleWhenEmpty:
		if specs, err = budgetfile.Parse("example-budgets.json", exampleBudgets, "builtin-example", clock.Now()); err != nil {
			return b, nil, err
		}
		log.Info("no budgets configured: serving the built-in example set; use --budgets FILE for your own")
	}
	if len(specs) > 0 {
		if err := b.SetSpecs(ctx, specs); err != nil {
			return b, nil, err
		}
	}
	var file *pricefile.File
	if f.prices != "" {
		pf, err := pricefile.Load(f.prices)
		if err != nil {
			return b, nil, err
		}
		file = &pf
		// Until (or unless) AWS's prices are read, the file's are all
		// there is.
		prices := pf.Apply(nil)
		b.SetPrices(prices)
		log.Info("prices from file", "file", f.prices, "entries", len(prices), "priced", countPriced(prices), "replace", pf.Replace)
	}
	if f.aws {
		regions := list(cmp.Or(f.regions, f.region))
		aq, err := awsquota.New(awsquota.Config{Regions: regions, Endpoint: f.awsURL, Logger: log, ProvisionedRates: rates})
		if err != nil {
			return b, nil, err
		}
		src = aq
		if file == nil || !file.Replace {
			ps, err := awspricing.New(awspricing.Config{Regions: regions, Endpoint: f.awsURL, Logger: log})
			if err != nil {
				return b, nil, err
			}
			src = pricedSource{QuotaSource: aq, prices: ps, file: file, set: b.SetPrices, log: log}
		}
		b.UseSource(src)
		dctx, cancel := context.WithTimeout(ctx, discoveryTimeout)
		err = b.Refresh(dctx, src)
		cancel()
		if err != nil {
			log.Error("quota discovery failed; serving the stored quotas and retrying in the background", "err", err, "budgets", len(b.Budgets()))
		} else {
			st := b.DiscoveryStatus()
			log.Info("quotas discovered", "regions", strings.Join(regions, ","), "budgets", len(b.Budgets()), "skipped_quotas", len(st.Skipped))
		}
	}
	if f.routes != "" {
		// After discovery: derived routes are built from the budgets it
		// found, and a target without a budget fails start-up here, not a
		// call later. Each refresh derives them again (broker.UseRoutes).
		if err := m.useRoutes(b); err != nil {
			return b, nil, err
		}
		log.Info("routes loaded", "file", f.routes, "routes", len(b.Routes()))
	}
	if f.clients != "" {
		// After the routes: a cap may name one.
		if err := m.setCaps(b, cfg.Caps); err != nil {
			return b, nil, err
		}
	}
	return b, src, nil
}

// setCaps gives a new broker the clients file's caps as the file is now:
// in a cluster each term opens a broker, and a SIGHUP while this replica
// was a standby had no broker to reload. A file broken since keeps the
// caps last in force (start's, or the last good reload's), as a reload
// does.
func (m *Main) setCaps(b *broker.Broker, start broker.Caps) error {
	path := m.flags.clients
	p, err := policyfile.Load(path)
	if err == nil {
		if err = b.SetCaps(p.Caps); err == nil {
			m.caps.Store(&p.Caps)
			return nil
		}
	}
	caps := start
	if c := m.caps.Load(); c != nil {
		caps = *c
	}
	if err := b.SetCaps(caps); err != nil {
		return fmt.Errorf("clients file %s: %w", path, err)
	}
	m.log.Error("clients file unreadable now; the caps and money budgets last in force apply", "file", path, "err", err)
	return nil
}

// reloadCaps reads the clients file again (SIGHUP) for its caps and money
// budgets; a file that fails to parse or names an unknown model keeps the
// caps in force. Weights, max_concurrent, max_waiters, daily_reserve and
// aging take effect at the next start.
func (m *Main) reloadCaps(log *slog.Logger, b *broker.Broker, path string) {
	if path == "" {
		return
	}
	p, err := policyfile.Load(path)
	if err == nil {
		if err = b.SetCaps(p.Caps); err != nil {
			err = fmt.Errorf("%s: %w", path, err)
		}
	}
	if err != nil {
		log.Error("clients file reload failed; the previous caps and money budgets stay in force", "err", err)
		return
	}
	m.caps.Store(&p.Caps)
	log.Info("caps and money budgets reloaded from the clients file (its other policies apply at the next start)",
		"capped_clients", len(p.Caps.Clients))
}

// reloadPolicy reads the routes and clients files again (SIGHUP). They
// depend on each other both ways: a cap may name a route the routes file
// only now adds, and a route may go only once no cap names it. So the
// routes are tried first, then the caps, and the routes again if they
// failed before the caps changed; a file that still fails keeps what is in
// force.
func (m *Main) reloadPolicy(log *slog.Logger, b *broker.Broker, clientsFile, routesFile string) {
	var err error
	if routesFile != "" {
		err = m.reloadRoutes(b, routesFile)
	}
	if clientsFile != "" {
		m.reloadCaps(log, b, clientsFile)
		if err != nil {
			err = m.reloadRoutes(b, routesFile)
		}
	}
	if err != nil {
		log.Error("routes file reload failed; the routes in service stay", "err", err)
		return
	}
	if routesFile != "" {
		log.Info("routes reloaded", "file", routesFile, "routes", len(b.Routes()))
	}
}

// reloadRoutes reads the routes file at path and puts its routes in
// service, all or nothing.
func (m *Main) reloadRoutes(b *broker.Broker, path string) error {
	f, err := routefile.Read(path)
	if err != nil {
		return err
	}
	if err := b.UseRoutes(f); err != nil {
		return routesError(path, err)
	}
	m.routes.Store(f)
	return nil
}

// useRoutes gives a new broker the routes file as it is now: at start-up,
// where a broken file stops the broker, and in a cluster at each term, where
// a file broken since keeps the routes last in force, as a reload does.
func (m *Main) useRoutes(b *broker.Broker) error {
	path := m.flags.routes
	err := m.reloadRoutes(b, path)
	if err == nil {
		return nil
	}
	last := m.routes.Load()
	if last == nil {
		return err
	}
	if lerr := b.UseRoutes(last); lerr != nil {
		return routesError(path, lerr)
	}
	m.log.Error("routes file unusable now; the routes last in force apply", "file", path, "err", err)
	return nil
}

// routesError names the file in a broker's refusal of its routes; the
// file's own errors already name it, its line and its field.
func routesError(path string, err error) error {
	var be *broker.Error
	if errors.As(err, &be) {
		return fmt.Errorf("routes file %s: %w", path, err)
	}
	return err
}
