package awsmetrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	cwtypes "github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/awsclient"
)

// Point is what CloudWatch counted for a budget in one step.
type Point struct {
	Invocations, Throttles, InputTokens, OutputTokens int64
	// EstimatedTPMQuotaUsage is the tokens the calls charged to the TPM
	// quota, as CloudWatch estimates them.
	EstimatedTPMQuotaUsage int64
}

// Usage is a budget's CloudWatch figures: Points[i] covers the step
// starting at from + i x step.
type Usage struct {
	ModelIDs []string // the ModelId dimension values read
	Points   []Point
}

// Config tunes a Reader; the zero value reads from AWS with the default
// credential chain.
type Config struct {
	// AWS is the base SDK configuration; its Region is replaced by each
	// budget's. Nil means awsclient.LoadConfig at the first read.
	AWS *aws.Config
	// Endpoint, when set, is the base URL of the CloudWatch clients (the
	// Bedrock simulator, say).
	Endpoint string
	// CacheTTL is how long an answer is reused; default 30 s, negative
	// disables the cache.
	CacheTTL time.Duration
	// Now is the cache's clock; nil means time.Now.
	Now func() time.Time
	// Logger receives a debug line per read; nil is silent.
	Logger *slog.Logger
}

// metricDataGetter is the one SDK call a Reader makes.
type metricDataGetter interface {
	GetMetricData(context.Context, *cloudwatch.GetMetricDataInput, ...func(*cloudwatch.Options)) (*cloudwatch.GetMetricDataOutput, error)
}

// Reader reads budgets' CloudWatch metrics. It is safe for concurrent use.
type Reader struct {
	ttl     time.Duration
	now     func() time.Time
	log     *slog.Logger
	connect func(ctx context.Context, region string) (metricDataGetter, error)

	mu      sync.Mutex                  // guards clients and cache
	clients map[string]metricDataGetter // by Region
	cache   map[cacheKey]cacheEntry
}

type cacheKey struct {
	key  broker.Key
	from int64 // unix seconds
	step time.Duration
	n    int
}

type cacheEntry struct {
	at time.Time
	u  Usage
}

// cacheMax bounds the cache; beyond it the oldest entry goes.
const cacheMax = 256

// New returns a Reader. It makes no AWS call.
func New(cfg Config) *Reader {
	configFor := awsclient.RegionConfigs(cfg.AWS, cfg.Endpoint)
	connect := func(ctx context.Context, region string) (metricDataGetter, error) {
		c, err := configFor(ctx, region)
		if err != nil {
			return nil, err
		}
		return cloudwatch.NewFromConfig(c, func(o *cloudwatch.Options) { o.HTTPClient = awsclient.SafeBodies(o.HTTPClient) }), nil
	}
	return newReader(cfg, connect)
}

func newReader(cfg Config, connect func(context.Context, string) (metricDataGetter, error)) *Reader {
	r := &Reader{ttl: cfg.CacheTTL, now: cfg.Now, log: cfg.Logger, connect: connect,
		clients: map[string]metricDataGetter{}, cache: map[cacheKey]cacheEntry{}}
	if r.ttl == 0 {
		r.ttl = 30 * time.Second
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return r
}

// geoPrefixes are the cross-region inference profile prefixes AWS uses.
// Asking for one that cannot be called from a Region costs a metric read
// and returns nothing, so all are asked for rather than guessing which
// geographies a Region belongs to.
var geoPrefixes = []string{"us", "eu", "apac", "jp", "au", "ca", "in", "us-gov", "sa", "me", "af"}

// ModelIDs are the ModelId dimension values under which CloudWatch counts
// calls that draw on key's budget.
func ModelIDs(key broker.Key) []string {
	switch key.Scope {
	case broker.ScopeGlobal:
		return []string{"global." + key.Model}
	case broker.ScopeCrossRegion:
		ids := make([]string, len(geoPrefixes))
		for i, g := range geoPrefixes {
			ids[i] = g + "." + key.Model
		}
		return ids
	}
	return []string{key.Model}
}

// metrics are read in this order, one query each per model id.
var metrics = []string{"Invocations", "InvocationThrottles", "InputTokenCount", "OutputTokenCount", "EstimatedTPMQuotaUsage"}

// maxPages bounds a GetMetricData pagination that does not end.
const maxPages = 100

// Usage returns what CloudWatch counted for key in n steps of step (a
// whole number of minutes) from from.
func (r *Reader) Usage(ctx context.Context, key broker.Key, from time.Time, step time.Duration, n int) (Usage, error) {
	if step < time.Minute || step%time.Minute != 0 {
		return Usage{}, fmt.Errorf("awsmetrics: step %v is not a whole number of minutes", step)
	}
	if n <= 0 {
		return Usage{}, fmt.Errorf("awsmetrics: %d steps", n)
	}
	ck := cacheKey{key, from.Unix(), step, n}
	if u, ok := r.cached(ck); ok {
		return u, nil
	}
	c, err := r.client(ctx, key.Region)
	if err != nil {
		return Usage{}, err
	}
	ids := ModelIDs(key)
	var queries []cwtypes.MetricDataQuery
	period := periodFor(step)
	for i, id := range ids {
		for j, m := range metrics {
			queries = append(queries, cwtypes.MetricDataQuery{
				Id: aws.String(fmt.Sprintf("m%d_%d", i, j)),
				MetricStat: &cwtypes.MetricStat{
					Metric: &cwtypes.Metric{Namespace: aws.String("AWS/Bedrock"), MetricName: aws.String(m),
						Dimensions: []cwtypes.Dimension{{Name: aws.String("ModelId"), Value: aws.String(id)}}},
					Period: aws.Int32(int32(period / time.Second)), Stat: aws.String("Sum"),
				},
				ReturnData: aws.Bool(true),
			})
		}
	}
	to := from.Add(time.Duration(n) * step)
	u := Usage{ModelIDs: ids, Points: make([]Point, n)}
	var token *string
	for page := 0; ; page++ {
		out, err := c.GetMetricData(ctx, &cloudwatch.GetMetricDataInput{
			StartTime: aws.Time(from), EndTime: aws.Time(to), MetricDataQueries: queries,
			ScanBy: cwtypes.ScanByTimestampAscending, NextToken: token,
		})
		if err != nil {
			return Usage{}, awsclient.Describe("read CloudWatch metrics", "cloudwatch:GetMetricData", key.Region, err)
		}
		for _, res := range out.MetricDataResults {
			var i, j int
			if _, err := fmt.Sscanf(aws.ToString(res.Id), "m%d_%d", &i, &j); err != nil || j < 0 || j >= len(metrics) {
				continue // not ours
			}
			if res.StatusCode == cwtypes.StatusCodeForbidden || res.StatusCode == cwtypes.StatusCodeInternalError {
				return Usage{}, fmt.Errorf("read CloudWatch metrics in %s: %s of %s: status %s", key.Region, metrics[j], ids[i], res.StatusCode)
			}
			for k, ts := range res.Timestamps {
				if k >= len(res.Values) || ts.Before(from) || !ts.Before(to) {
					continue
				}
				p := &u.Points[int(ts.Sub(from)/step)]
				v := int64(res.Values[k] + 0.5)
				switch j {
				case 0:
					p.Invocations += v
				case 1:
					p.Throttles += v
				case 2:
					p.InputTokens += v
				case 3:
					p.OutputTokens += v
				case 4:
					p.EstimatedTPMQuotaUsage += v
				}
			}
		}
		if out.NextToken == nil || *out.NextToken == "" {
			break
		}
		if (token != nil && *token == *out.NextToken) || page+1 >= maxPages {
			return Usage{}, errors.New("read CloudWatch metrics in " + key.Region + ": GetMetricData pagination does not end")
		}
		token = out.NextToken
	}
	r.log.Debug("read CloudWatch metrics", "budget", key.String(), "from", from, "step", step, "steps", n)
	r.store(ck, u)
	return u, nil
}

// periodFor is the CloudWatch period to read a step at: the coarsest of
// the periods CloudWatch keeps (1 minute for 15 days, 5 minutes for 63, an
// hour after) that divides the step, so that older data can still be read
// at long steps. Datapoints fall in the step their timestamp is in.
func periodFor(step time.Duration) time.Duration {
	for _, p := range []time.Duration{time.Hour, 5 * time.Minute} {
		if step%p == 0 {
			return p
		}
	}
	return time.Minute
}

func (r *Reader) client(ctx context.Context, region string) (metricDataGetter, error) {
	r.mu.Lock()
	c, ok := r.clients[region]
	r.mu.Unlock()
	if ok {
		return c, nil
	}
	c, err := r.connect(ctx, region)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.clients[region] = c
	r.mu.Unlock()
	return c, nil
}

func (r *Reader) cached(k cacheKey) (Usage, bool) {
	if r.ttl < 0 {
		return Usage{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.cache[k]
	if !ok || r.now().Sub(e.at) >= r.ttl {
		return Usage{}, false
	}
	return Usage{ModelIDs: slices.Clone(e.u.ModelIDs), Points: slices.Clone(e.u.Points)}, true
}

func (r *Reader) store(k cacheKey, u Usage) {
	if r.ttl < 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	for ck, e := range r.cache {
		if now.Sub(e.at) >= r.ttl {
			delete(r.cache, ck)
		}
	}
	if len(r.cache) >= cacheMax {
		var oldest cacheKey
		first := true
		for ck, e := range r.cache {
			if first || e.at.Before(r.cache[oldest].at) {
				oldest, first = ck, false
			}
		}
		delete(r.cache, oldest)
	}
	r.cache[k] = cacheEntry{at: now, u: Usage{ModelIDs: slices.Clone(u.ModelIDs), Points: slices.Clone(u.Points)}}
}
