package quotaclient

import (
	"context"
	"log/slog"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
)

// Option configures a Client.
type Option func(*options)

type options struct {
	name             string
	priority         Priority
	wait             time.Duration
	region           string
	logger           *slog.Logger
	mode             FailureMode
	fallback         FallbackLimits
	brokerTimeout    time.Duration
	failover         bool
	probeInterval    time.Duration
	throttleAttempts int
	throttleBackoff  time.Duration
	counter          TokenCounter
	inputMargin      float64
	now              func() time.Time
}

func defaultOptions() options {
	return options{
		priority:         PriorityStandard,
		wait:             30 * time.Second,
		logger:           slog.New(slog.DiscardHandler),
		mode:             FailClosed,
		fallback:         FallbackLimits{RequestsPerMinute: 60, TokensPerMinute: 200_000, DefaultMaxOutputTokens: 4096},
		brokerTimeout:    2 * time.Second,
		probeInterval:    time.Second,
		throttleAttempts: 3,
		throttleBackoff:  250 * time.Millisecond,
		inputMargin:      0.1,
		now:              time.Now,
	}
}

// WithName names the calling service (sent as x-quotabroker-client); the
// broker is fair between names and accounts per name.
func WithName(name string) Option { return func(o *options) { o.name = name } }

// WithPriority sets the priority of requests that name none. Default
// PriorityStandard.
func WithPriority(p Priority) Option {
	return func(o *options) {
		if p != PriorityDefault {
			o.priority = p
		}
	}
}

// WithWait sets how long a request that names no wait may queue for
// capacity. Default 30 s; the caller's ctx bounds it as well.
func WithWait(d time.Duration) Option { return func(o *options) { o.wait = max(d, 0) } }

// WithRegion sets the Region of requests that name none. The SDK
// middleware always sends the SDK client's Region.
func WithRegion(region string) Option { return func(o *options) { o.region = region } }

// WithLogger sets the logger; the default discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithFailureMode chooses what happens while the broker is unreachable:
// FailClosed (default) or FailOpen with the fallback limiter.
func WithFailureMode(m FailureMode) Option { return func(o *options) { o.mode = m } }

// FallbackLimits is the local limiter FailOpen uses while the broker is
// unreachable: per model id, a token bucket of RequestsPerMinute requests
// and one of TokensPerMinute tokens (each holding one minute's worth and
// refilling continuously). Zero disables that limit. A reservation is input
// + cache_write + max_tokens (DefaultMaxOutputTokens when unset), without
// burndown. Keep them well below the quota: every client process that
// fails open has its own.
type FallbackLimits struct {
	RequestsPerMinute      int64
	TokensPerMinute        int64
	DefaultMaxOutputTokens int64
}

// WithFallbackLimits sets the FailOpen limiter. Default 60 requests and
// 200,000 tokens per minute per model, 4,096 max tokens when unset.
func WithFallbackLimits(l FallbackLimits) Option {
	return func(o *options) {
		if l.DefaultMaxOutputTokens <= 0 {
			l.DefaultMaxOutputTokens = 4096
		}
		o.fallback = l
	}
}

// WithBrokerTimeout bounds each broker call beyond the time it may queue
// (the request's wait). A broker that does not answer in time counts as
// unreachable. Default 2 s.
func WithBrokerTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.brokerTimeout = d
		}
	}
}

// WithProbeInterval sets how often, while the broker is unreachable, one
// call tries it again (FailOpen; the others use the fallback at once).
// Default 1 s.
func WithProbeInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.probeInterval = d
		}
	}
}

// WithThrottleRetries sets the SDK middleware's policy for Bedrock
// ThrottlingExceptions: at most attempts calls in all (1 disables retries),
// sleeping a full-jitter exponential backoff from base (capped at 10 s)
// before re-acquiring a lease. Default 3 attempts, 250 ms.
func WithThrottleRetries(attempts int, base time.Duration) Option {
	return func(o *options) {
		o.throttleAttempts = max(attempts, 1)
		if base > 0 {
			o.throttleBackoff = base
		}
	}
}

// TokenCounter counts input tokens; *bedrockruntime.Client implements it.
type TokenCounter interface {
	CountTokens(ctx context.Context, in *bedrockruntime.CountTokensInput, optFns ...func(*bedrockruntime.Options)) (*bedrockruntime.CountTokensOutput, error)
}

// WithTokenCounter makes the SDK middleware ask CountTokens for exact input
// tokens before each call (one extra request; on any error it falls back to
// the estimate). Pass a bedrockruntime client built without WithLeases, or
// the same one: CountTokens itself is not leased.
func WithTokenCounter(tc TokenCounter) Option { return func(o *options) { o.counter = tc } }

// WithInputMargin sets the margin added to estimated input tokens
// (ceil(bytes/4) x (1+margin)). Default 0.1.
func WithInputMargin(m float64) Option {
	return func(o *options) {
		if m >= 0 {
			o.inputMargin = m
		}
	}
}

// WithFailover retries broker calls that end UNAVAILABLE (a cluster's
// standby answering, a replica dying, no replica serving for a moment
// during a failover, no answer within the broker timeout) with a jittered
// exponential backoff from 20 ms to 1 s, on whichever replica the
// connection then picks, for as long as the call's wait lasts: an
// Acquire's wait (Request.Wait, else WithWait), and WithWait for Complete
// and Renew, which are idempotent. The caller's ctx bounds it too. Only
// then is the broker unreachable (FailClosed's error, FailOpen's local
// limiter). Use it with a connection from NewConn. Off by default: a
// single broker that is down then fails calls at once.
func WithFailover() Option { return func(o *options) { o.failover = true } }
