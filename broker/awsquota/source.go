package awsquota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/bedrock"
	bedrocktypes "github.com/aws/aws-sdk-go-v2/service/bedrock/types"
	"github.com/aws/aws-sdk-go-v2/service/servicequotas"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/awsclient"
	"github.com/bedrockqb/quotabroker/broker/quotaname"
)

var _ broker.QuotaSource = (*Source)(nil)

// Config tunes a Source. Regions is required; the zero value of everything
// else works.
type Config struct {
	// Regions to discover, e.g. ["us-east-1", "eu-central-1"]. Quotas are
	// per Region, so every Region the broker serves must be listed.
	Regions []string
	// AWS is the base SDK configuration (credentials, retryer, HTTP
	// client); its Region is replaced by each of Regions. Nil means
	// awsclient.LoadConfig(ctx, Regions[0], Endpoint) at the first discovery.
	AWS *aws.Config
	// Endpoint, when set, is the base URL of every AWS client (the Bedrock
	// simulator, say). It overrides AWS.BaseEndpoint.
	Endpoint string
	// Timeout bounds one whole discovery (every Region, every page). 0
	// means 2 minutes: long enough for the SDK to retry throttled Service
	// Quotas calls, short enough that a hung connection cannot stall the
	// broker's refresh loop.
	Timeout time.Duration
	// Now is the clock that stamps SourceTime; nil means time.Now.
	Now func() time.Time
	// Logger receives a debug line per Region; nil is silent.
	Logger *slog.Logger
	// ProvisionedRates are the tokens per minute one model unit buys, by
	// base model id (AWS publishes none; the account manager says): each
	// InService Provisioned Throughput of such a model becomes a budget of
	// its model units x the rate. A throughput of a model without a rate
	// gets no budget from discovery (the operator states one per ARN).
	ProvisionedRates map[string]int64
}

// The SDK calls the Source makes, one interface each, so that tests fake
// exactly what is used (and nothing else can creep in unnoticed).
type (
	quotaLister interface {
		ListServiceQuotas(context.Context, *servicequotas.ListServiceQuotasInput, ...func(*servicequotas.Options)) (*servicequotas.ListServiceQuotasOutput, error)
	}
	defaultQuotaLister interface {
		ListAWSDefaultServiceQuotas(context.Context, *servicequotas.ListAWSDefaultServiceQuotasInput, ...func(*servicequotas.Options)) (*servicequotas.ListAWSDefaultServiceQuotasOutput, error)
	}
	modelLister interface {
		ListFoundationModels(context.Context, *bedrock.ListFoundationModelsInput, ...func(*bedrock.Options)) (*bedrock.ListFoundationModelsOutput, error)
	}
	profileLister interface {
		ListInferenceProfiles(context.Context, *bedrock.ListInferenceProfilesInput, ...func(*bedrock.Options)) (*bedrock.ListInferenceProfilesOutput, error)
	}
	provisionedLister interface {
		ListProvisionedModelThroughputs(context.Context, *bedrock.ListProvisionedModelThroughputsInput, ...func(*bedrock.Options)) (*bedrock.ListProvisionedModelThroughputsOutput, error)
	}
)

// clients are one Region's SDK clients.
type clients struct {
	quotas   quotaLister
	defaults defaultQuotaLister
	models   modelLister
	profiles profileLister
	// provisioned is optional: nil lists no Provisioned Throughputs.
	provisioned provisionedLister
	// creds, when set, is asked for credentials before the first call so
	// that "no credentials" reads as such rather than as the first
	// operation failing.
	creds aws.CredentialsProvider
}

// Source discovers Bedrock quotas with the AWS SDK. It implements
// broker.QuotaSource and is safe for concurrent use.
type Source struct {
	regions []string
	rates   map[string]int64
	timeout time.Duration
	now     func() time.Time
	log     *slog.Logger
	connect func(ctx context.Context, region string) (clients, error)

	mu      sync.Mutex         // guards clients
	clients map[string]clients // by Region, built on first use and kept (credential caches live in them)
}

// ErrNoCredentials is returned (wrapped, with the SDK's reason) when the
// credential chain finds nothing usable, so that a command can tell the user
// how to provide credentials rather than show an SDK error alone.
var ErrNoCredentials = errors.New("no usable AWS credentials")

// New validates cfg and returns a Source. It makes no AWS call: clients are
// built, and credentials looked for, at the first Discover.
func New(cfg Config) (*Source, error) {
	configFor := awsclient.RegionConfigs(cfg.AWS, cfg.Endpoint)
	connect := func(ctx context.Context, region string) (clients, error) {
		c, err := configFor(ctx, region)
		if err != nil {
			return clients{}, err
		}
		sq := servicequotas.NewFromConfig(c, func(o *servicequotas.Options) { o.HTTPClient = awsclient.SafeBodies(o.HTTPClient) })
		br := bedrock.NewFromConfig(c, func(o *bedrock.Options) { o.HTTPClient = awsclient.SafeBodies(o.HTTPClient) })
		return clients{quotas: sq, defaults: sq, models: br, profiles: br, provisioned: br, creds: c.Credentials}, nil
	}
	return newSource(cfg, connect)
}

// newSource is New with the SDK clients supplied; tests pass fakes.
func newSource(cfg Config, connect func(context.Context, string) (clients, error)) (*Source, error) {
	if len(cfg.Regions) == 0 {
		return nil, errors.New("awsquota: Config.Regions is empty; name at least one AWS Region")
	}
	seen := map[string]bool{}
	var regions []string
	for _, r := range cfg.Regions {
		if !broker.ValidRegion(r) {
			return nil, fmt.Errorf("awsquota: Config.Regions: %q is not an AWS Region name", r)
		}
		if !seen[r] {
			seen[r] = true
			regions = append(regions, r)
		}
	}
	s := &Source{
		regions: regions,
		rates:   maps.Clone(cfg.ProvisionedRates),
		timeout: cfg.Timeout,
		now:     cfg.Now,
		log:     cfg.Logger,
		connect: connect,
		clients: map[string]clients{},
	}
	if s.timeout <= 0 {
		s.timeout = 2 * time.Minute
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Regions returns the Regions the Source discovers.
func (s *Source) Regions() []string { return slices.Clone(s.regions) }

// Discover lists every Region's quotas and catalogue and returns the
// budgets they make. Any Region failing fails the whole discovery: the
// broker then keeps serving the last known quotas, which is better than a
// discovery that silently lacks a Region.
func (s *Source) Discover(ctx context.Context) (broker.Discovery, error) {
	r, err := s.Inspect(ctx)
	return r.Discovery, err
}

// Inspect is Discover with the per-quota detail: every quota row, what it
// was read as, and what became of it. The discover command prints it.
func (s *Source) Inspect(ctx context.Context) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	at := s.now()
	var res Result
	res.At = at
	for _, region := range s.regions {
		c, err := s.clientsFor(ctx, region)
		if err != nil {
			return Result{}, err
		}
		rows, err := fetchQuotas(ctx, c, region, at)
		if err != nil {
			return Result{}, err
		}
		cat, err := fetchCatalogue(ctx, c, region)
		if err != nil {
			return Result{}, err
		}
		r := build(region, "aws:service-quotas:"+region, at, rows, &cat)
		// Provisioned Throughputs are informational: a denied listing is
		// a note, not a failed discovery.
		if r.Provisioned, err = fetchProvisioned(ctx, c, region); err != nil {
			r.Notes = append(r.Notes, err.Error())
		} else if c.provisioned != nil {
			// Listed: its provisioned budgets can be judged by it.
			r.ProvisionedRegions = append(r.ProvisionedRegions, region)
			specs, notes := provisionedSpecs(r.Provisioned, s.rates, at)
			r.Specs, r.Notes = append(r.Specs, specs...), append(r.Notes, notes...)
		}
		s.log.Debug("discovered quotas", "region", region, "quotas", len(rows),
			"models", len(cat.Models), "profiles", len(cat.Profiles),
			"budgets", len(r.Specs), "skipped", len(r.Skipped))
		res.merge(r)
	}
	return res, nil
}

func (s *Source) clientsFor(ctx context.Context, region string) (clients, error) {
	s.mu.Lock()
	c, ok := s.clients[region]
	s.mu.Unlock()
	if !ok {
		var err error
		if c, err = s.connect(ctx, region); err != nil {
			return clients{}, err
		}
		s.mu.Lock()
		s.clients[region] = c
		s.mu.Unlock()
	}
	if c.creds != nil {
		if _, err := c.creds.Retrieve(ctx); err != nil {
			return clients{}, fmt.Errorf("%w for %s: %w", ErrNoCredentials, region, err)
		}
	}
	return c, nil
}

// maxPages stops a pagination that never ends (a service handing back the
// same token forever) instead of looping until the timeout.
const maxPages = 1000

// fetchQuotas lists the applied and the default quotas and merges them by
// quota code: the applied value wins, the default is kept beside it.
func fetchQuotas(ctx context.Context, c clients, region string, at time.Time) ([]row, error) {
	var applied, defaults []row
	var token *string
	for page := 0; ; page++ {
		out, err := c.quotas.ListServiceQuotas(ctx, &servicequotas.ListServiceQuotasInput{
			ServiceCode: aws.String(serviceCode), NextToken: token, MaxResults: aws.Int32(100),
		})
		if err != nil {
			return nil, describe(opListQuotas, region, err)
		}
		for _, q := range out.Quotas {
			applied = append(applied, rowOf(q, sourceApplied, at))
		}
		// An empty page with a NextToken is not the end: AWS sends them.
		if token, err = nextToken(opListQuotas, region, token, out.NextToken, page); token == nil || err != nil {
			if err != nil {
				return nil, err
			}
			break
		}
	}
	token = nil
	for page := 0; ; page++ {
		out, err := c.defaults.ListAWSDefaultServiceQuotas(ctx, &servicequotas.ListAWSDefaultServiceQuotasInput{
			ServiceCode: aws.String(serviceCode), NextToken: token, MaxResults: aws.Int32(100),
		})
		if err != nil {
			return nil, describe(opListDefaults, region, err)
		}
		for _, q := range out.Quotas {
			defaults = append(defaults, rowOf(q, sourceDefault, at))
		}
		if token, err = nextToken(opListDefaults, region, token, out.NextToken, page); token == nil || err != nil {
			if err != nil {
				return nil, err
			}
			break
		}
	}
	return mergeRows(applied, defaults), nil
}

// nextToken returns the token of the next page, nil at the end, or an error
// when the listing does not progress.
func nextToken(op operation, region string, prev, next *string, page int) (*string, error) {
	if next == nil || *next == "" {
		return nil, nil
	}
	if prev != nil && *prev == *next {
		return nil, fmt.Errorf("%s in %s: the service returned the same NextToken twice; stopping", op.verb, region)
	}
	if page+1 >= maxPages {
		return nil, fmt.Errorf("%s in %s: more than %d pages; stopping", op.verb, region, maxPages)
	}
	return next, nil
}

// fetchProvisioned lists the Region's Provisioned Throughputs.
func fetchProvisioned(ctx context.Context, c clients, region string) ([]broker.ProvisionedThroughput, error) {
	if c.provisioned == nil {
		return nil, nil
	}
	var out []broker.ProvisionedThroughput
	var token *string
	for page := 0; ; page++ {
		res, err := c.provisioned.ListProvisionedModelThroughputs(ctx, &bedrock.ListProvisionedModelThroughputsInput{NextToken: token, MaxResults: aws.Int32(100)})
		if err != nil {
			return nil, describe(opListProvisioned, region, err)
		}
		for _, p := range res.ProvisionedModelSummaries {
			out = append(out, broker.ProvisionedThroughput{
				Region: region, Name: aws.ToString(p.ProvisionedModelName), ARN: aws.ToString(p.ProvisionedModelArn),
				Model: aws.ToString(p.FoundationModelArn), Status: string(p.Status),
				ModelUnits: int64(aws.ToInt32(p.ModelUnits)), Commitment: string(p.CommitmentDuration),
			})
		}
		if token, err = nextToken(opListProvisioned, region, token, res.NextToken, page); token == nil || err != nil {
			return out, err
		}
	}
}

// fetchCatalogue lists the Region's foundation models and system-defined
// inference profiles. ListFoundationModels has no pagination in the API;
// ListInferenceProfiles does.
func fetchCatalogue(ctx context.Context, c clients, region string) (quotaname.Catalogue, error) {
	var cat quotaname.Catalogue
	out, err := c.models.ListFoundationModels(ctx, &bedrock.ListFoundationModelsInput{})
	if err != nil {
		return cat, describe(opListModels, region, err)
	}
	for _, m := range out.ModelSummaries {
		mm := quotaname.Model{ID: aws.ToString(m.ModelId), Name: aws.ToString(m.ModelName), Provider: aws.ToString(m.ProviderName)}
		for _, t := range m.InferenceTypesSupported {
			mm.InferenceTypes = append(mm.InferenceTypes, string(t))
		}
		cat.Models = append(cat.Models, mm)
	}
	var token *string
	for page := 0; ; page++ {
		out, err := c.profiles.ListInferenceProfiles(ctx, &bedrock.ListInferenceProfilesInput{
			TypeEquals: bedrocktypes.InferenceProfileTypeSystemDefined, NextToken: token, MaxResults: aws.Int32(1000),
		})
		if err != nil {
			return cat, describe(opListProfiles, region, err)
		}
		for _, p := range out.InferenceProfileSummaries {
			// Application profiles are the account's own aliases; their
			// traffic draws on the quota of the profile or model they
			// copy, so they add nothing to match against.
			if p.Type != "" && p.Type != bedrocktypes.InferenceProfileTypeSystemDefined {
				continue
			}
			pp := quotaname.Profile{ID: aws.ToString(p.InferenceProfileId), Type: string(p.Type)}
			for _, m := range p.Models {
				pp.Models = append(pp.Models, aws.ToString(m.ModelArn))
			}
			cat.Profiles = append(cat.Profiles, pp)
		}
		if token, err = nextToken(opListProfiles, region, token, out.NextToken, page); token == nil || err != nil {
			if err != nil {
				return cat, err
			}
			break
		}
	}
	return cat, nil
}
