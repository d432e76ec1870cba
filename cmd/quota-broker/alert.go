package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bedrockqb/quotabroker/internal/alert"
	"github.com/bedrockqb/quotabroker/server/dashboard"
)

// alertFlags configure alerting: always to the log, and to a webhook when
// one is named.
type alertFlags struct {
	webhook, webhookToken                    string
	utilisation, throttleRate, refusalRate   float64
	moneyShare                               float64
	utilisationFor, window, interval, repeat time.Duration
	minCalls                                 int64
}

// register adds the --alert-* flags to fs, with their environment
// fallbacks.
func (a *alertFlags) register(fs *flag.FlagSet) error {
	fs.StringVar(&a.webhook, "alert-webhook", envOr("QUOTA_BROKER_ALERT_WEBHOOK", ""), "URL that alerts are POSTed to as JSON (Slack-compatible \"text\" included); empty: alerts go to the log only (env QUOTA_BROKER_ALERT_WEBHOOK)")
	fs.StringVar(&a.webhookToken, "alert-webhook-token", envOr("QUOTA_BROKER_ALERT_WEBHOOK_TOKEN", ""), "sent as \"Authorization: Bearer TOKEN\" to the webhook; prefer the env QUOTA_BROKER_ALERT_WEBHOOK_TOKEN, which ps does not show")
	for _, v := range []struct {
		p         *float64
		name, env string
		def       float64
		help      string
	}{
		{&a.utilisation, "alert-utilisation", "QUOTA_BROKER_ALERT_UTILISATION", 0.8, "alert when a budget's utilisation stays at or above this for --alert-utilisation-for; 0: off"},
		{&a.throttleRate, "alert-throttle-rate", "QUOTA_BROKER_ALERT_THROTTLE_RATE", 0.01, "alert when throttles / calls over --alert-window is above this; 0: off"},
		{&a.refusalRate, "alert-refusal-rate", "QUOTA_BROKER_ALERT_REFUSAL_RATE", 0, "alert when refusals / lease requests over --alert-window is above this; 0: off"},
		{&a.moneyShare, "alert-money-share", "QUOTA_BROKER_ALERT_MONEY_SHARE", 0.8, "alert when a money budget of the clients file is spent to this share (day or month); 0: off"},
	} {
		def := v.def
		if s := envOr(v.env, ""); s != "" {
			var err error
			if def, err = strconv.ParseFloat(s, 64); err != nil {
				return fmt.Errorf("%s: %w", v.env, err)
			}
		}
		fs.Float64Var(v.p, v.name, def, v.help+" (env "+v.env+")")
	}
	for _, d := range []struct {
		p         *time.Duration
		name, env string
		def       time.Duration
		help      string
	}{
		{&a.utilisationFor, "alert-utilisation-for", "QUOTA_BROKER_ALERT_UTILISATION_FOR", 5 * time.Minute, "how long utilisation must hold before it alerts"},
		{&a.window, "alert-window", "QUOTA_BROKER_ALERT_WINDOW", 5 * time.Minute, "span of the throttle and refusal rates"},
		{&a.interval, "alert-interval", "QUOTA_BROKER_ALERT_INTERVAL", 15 * time.Second, "how often alert rules are evaluated; 0: no alerts at all"},
		{&a.repeat, "alert-repeat", "QUOTA_BROKER_ALERT_REPEAT", 0, "re-send a still-firing alert this often; 0: never"},
	} {
		def := d.def
		if s := envOr(d.env, ""); s != "" {
			var err error
			if def, err = time.ParseDuration(s); err != nil {
				return fmt.Errorf("%s: %w", d.env, err)
			}
		}
		fs.DurationVar(d.p, d.name, def, d.help+" (env "+d.env+")")
	}
	minCalls := int64(20)
	if s := envOr("QUOTA_BROKER_ALERT_MIN_CALLS", ""); s != "" {
		var err error
		if minCalls, err = strconv.ParseInt(s, 10, 64); err != nil {
			return fmt.Errorf("QUOTA_BROKER_ALERT_MIN_CALLS: %w", err)
		}
	}
	fs.Int64Var(&a.minCalls, "alert-min-calls", minCalls, "fewest calls in --alert-window for a rate to alert (env QUOTA_BROKER_ALERT_MIN_CALLS)")
	return nil
}

// alerting is the running alert machinery: the alerter and its webhook.
type alerting struct {
	alerter *alert.Alerter
	webhook *alert.Webhook // nil without --alert-webhook
}

// newAlerting builds the alerter on src (nil, nil when --alert-interval is
// 0).
func newAlerting(a alertFlags, src alert.Source, log *slog.Logger) (*alerting, error) {
	if a.interval == 0 {
		return nil, nil
	}
	off := func(v float64) float64 {
		if v == 0 {
			return alert.Off
		}
		return v
	}
	log = log.With("component", "alert")
	sinks := []alert.Sink{alert.LogSink{Logger: log}}
	var wh *alert.Webhook
	if a.webhook != "" {
		var err error
		if wh, err = alert.NewWebhook(a.webhook, alert.WebhookConfig{Bearer: a.webhookToken, Logger: log}); err != nil {
			return nil, fmt.Errorf("--alert-webhook: %w", err)
		}
		sinks = append(sinks, wh)
	}
	al, err := alert.New(src, sinks, alert.Config{
		Utilisation: off(a.utilisation), UtilisationFor: a.utilisationFor, ThrottleRate: off(a.throttleRate),
		RefusalRate: a.refusalRate, Window: a.window, MinCalls: a.minCalls, Interval: a.interval, Repeat: a.repeat,
		MoneyShare: off(a.moneyShare),
	})
	if err != nil {
		return nil, fmt.Errorf("--alert-* flags: %w", err)
	}
	return &alerting{alerter: al, webhook: wh}, nil
}

// register adds the alert state to reg (quotabroker_alert_firing).
func (a *alerting) register(reg *prometheus.Registry) {
	if a != nil {
		reg.MustRegister(a.alerter.Collector())
	}
}

// Firing adapts the alerter to the dashboard: the alerts firing now.
func (a *alerting) Firing() []dashboard.Firing {
	var out []dashboard.Firing
	for _, al := range a.alerter.Alerts() {
		if al.Firing {
			out = append(out, dashboard.Firing{Region: al.Budget.Region, Scope: al.Budget.Scope, Model: al.Budget.Model, Rule: string(al.Rule)})
		}
	}
	return out
}

// start runs the alerter and the webhook worker in wg until ctx ends.
func (a *alerting) start(ctx context.Context, wg *sync.WaitGroup) {
	if a == nil {
		return
	}
	wg.Go(func() { a.alerter.Run(ctx) })
	if a.webhook != nil {
		wg.Go(func() { a.webhook.Run(ctx) })
	}
}
