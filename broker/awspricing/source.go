package awspricing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/bedrock"
	bedrocktypes "github.com/aws/aws-sdk-go-v2/service/bedrock/types"
	"github.com/aws/aws-sdk-go-v2/service/pricing"
	pricingtypes "github.com/aws/aws-sdk-go-v2/service/pricing/types"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/awsclient"
)

// APIRegions are the Regions that serve the Price List Query API. Its
// prices cover every Region; only the endpoint is in one of these.
var APIRegions = []string{"us-east-1", "eu-central-1", "ap-south-1"}

// Config tunes a Source. Regions is required; the zero value of everything
// else works.
type Config struct {
	// Regions whose prices to read: the Regions the broker's budgets are
	// in (a call is priced at the Region it is sent to).
	Regions []string
	// APIRegion is where the Price List API is called: one of APIRegions.
	// Default us-east-1.
	APIRegion string
	// AWS is the base SDK configuration; nil means awsclient.LoadConfig.
	AWS *aws.Config
	// Endpoint, when set, is the base URL of every AWS client (the
	// simulator, say).
	Endpoint string
	// Timeout bounds one whole Inspect. 0 means 2 minutes.
	Timeout time.Duration
	// Now stamps Result.At; nil means time.Now.
	Now func() time.Time
	// Logger receives a debug line per Region; nil is silent.
	Logger *slog.Logger
}

// The SDK calls the Source makes, one interface each.
type (
	productLister interface {
		GetProducts(context.Context, *pricing.GetProductsInput, ...func(*pricing.Options)) (*pricing.GetProductsOutput, error)
	}
	modelLister interface {
		ListFoundationModels(context.Context, *bedrock.ListFoundationModelsInput, ...func(*bedrock.Options)) (*bedrock.ListFoundationModelsOutput, error)
	}
	profileLister interface {
		ListInferenceProfiles(context.Context, *bedrock.ListInferenceProfilesInput, ...func(*bedrock.Options)) (*bedrock.ListInferenceProfilesOutput, error)
	}
)

// clients are the SDK clients of one Bedrock Region; products calls the
// Price List API in the Source's API Region (New builds one such client
// per Bedrock Region, as it builds the rest).
type clients struct {
	products productLister
	models   modelLister
	profiles profileLister
}

// Source reads Bedrock's token prices from the AWS Price List Query API.
// It is safe for concurrent use.
type Source struct {
	regions   []string
	timeout   time.Duration
	now       func() time.Time
	log       *slog.Logger
	apiRegion string
	connect   func(ctx context.Context, region string) (clients, error)

	mu      sync.Mutex         // guards clients
	clients map[string]clients // by Bedrock Region
}

// New validates cfg and returns a Source. It makes no AWS call.
func New(cfg Config) (*Source, error) {
	configFor := awsclient.RegionConfigs(cfg.AWS, cfg.Endpoint)
	// s is set before connect's first call (from Inspect); its apiRegion
	// is cfg's, defaulted and checked by newSource alone.
	var s *Source
	connect := func(ctx context.Context, region string) (clients, error) {
		bc, err := configFor(ctx, region)
		if err != nil {
			return clients{}, err
		}
		pc, err := configFor(ctx, s.apiRegion)
		if err != nil {
			return clients{}, err
		}
		br := bedrock.NewFromConfig(bc, func(o *bedrock.Options) { o.HTTPClient = awsclient.SafeBodies(o.HTTPClient) })
		pr := pricing.NewFromConfig(pc, func(o *pricing.Options) { o.HTTPClient = awsclient.SafeBodies(o.HTTPClient) })
		return clients{products: pr, models: br, profiles: br}, nil
	}
	var err error
	s, err = newSource(cfg, connect)
	return s, err
}

func newSource(cfg Config, connect func(context.Context, string) (clients, error)) (*Source, error) {
	if len(cfg.Regions) == 0 {
		return nil, errors.New("awspricing: Config.Regions is empty; name at least one AWS Region")
	}
	var regions []string
	for _, r := range cfg.Regions {
		if !broker.ValidRegion(r) {
			return nil, fmt.Errorf("awspricing: Config.Regions: %q is not an AWS Region name", r)
		}
		if !slices.Contains(regions, r) {
			regions = append(regions, r)
		}
	}
	s := &Source{
		regions: regions, timeout: cfg.Timeout, now: cfg.Now, log: cfg.Logger,
		apiRegion: cfg.APIRegion, connect: connect, clients: map[string]clients{},
	}
	if s.apiRegion == "" {
		s.apiRegion = APIRegions[0]
	}
	if !slices.Contains(APIRegions, s.apiRegion) {
		return nil, fmt.Errorf("awspricing: Config.APIRegion %q: the Price List API is served only in %s", s.apiRegion, strings.Join(APIRegions, ", "))
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

// Result is what one Inspect found.
type Result struct {
	At time.Time
	// Prices by (Region, model id as called): every foundation model of a
	// Region's catalogue with at least one listed rate, and every system
	// inference profile of that Region whose model has one.
	Prices map[broker.PriceKey]broker.Price
	// Unpriced are the catalogue's models and profiles that cannot price
	// a call (input or output rate not listed), sorted; some of them may
	// have a partial Price in Prices.
	Unpriced []broker.PriceKey
	// Skipped are the products listed that set no price, each with why.
	Skipped []Skipped
	// Notes are conditions worth a look that did not fail the listing.
	Notes []string
}

// Skipped is one product that set no price.
type Skipped struct {
	ServiceCode, Region, SKU, Name, UsageType, Reason string
}

// Prices returns Inspect's prices only.
func (s *Source) Prices(ctx context.Context) (map[broker.PriceKey]broker.Price, error) {
	r, err := s.Inspect(ctx)
	return r.Prices, err
}

// maxPages stops a listing that never ends.
const maxPages = 1000

// Inspect reads every Region's catalogue and its token prices under both
// service codes. Any failure (an API error, a document of an unexpected
// shape) fails the whole Inspect, so that the caller keeps its last good
// prices instead of a set that silently lacks a Region or a model.
func (s *Source) Inspect(ctx context.Context) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	res := Result{At: s.now(), Prices: map[broker.PriceKey]broker.Price{}}
	for _, region := range s.regions {
		c, err := s.clientsFor(ctx, region)
		if err != nil {
			return Result{}, err
		}
		cat, err := fetchCatalogue(ctx, c, region)
		if err != nil {
			return Result{}, err
		}
		var products []product
		for _, code := range []string{ServiceCodeBedrock, ServiceCodeFoundationModels} {
			ps, skipped, err := s.listProducts(ctx, c, code, region)
			if err != nil {
				return Result{}, err
			}
			products = append(products, ps...)
			res.Skipped = append(res.Skipped, skipped...)
		}
		r := assemble(region, cat, products)
		for k, p := range r.Prices {
			res.Prices[k] = p
		}
		res.Unpriced = append(res.Unpriced, r.Unpriced...)
		res.Skipped = append(res.Skipped, r.Skipped...)
		res.Notes = append(res.Notes, r.Notes...)
		s.log.Debug("read prices", "region", region, "products", len(products), "prices", len(r.Prices), "unpriced", len(r.Unpriced))
	}
	return res, nil
}

// clientsFor returns region's clients, building them on first use. The
// lock is not held while building: loading the SDK configuration may wait
// on a credential provider.
func (s *Source) clientsFor(ctx context.Context, region string) (clients, error) {
	s.mu.Lock()
	c, ok := s.clients[region]
	s.mu.Unlock()
	if ok {
		return c, nil
	}
	c, err := s.connect(ctx, region)
	if err != nil {
		return clients{}, err
	}
	s.mu.Lock()
	s.clients[region] = c
	s.mu.Unlock()
	return c, nil
}

// listProducts lists every page of code's products in region and reads
// each document.
func (s *Source) listProducts(ctx context.Context, c clients, code, region string) ([]product, []Skipped, error) {
	var out []product
	var skipped []Skipped
	var token *string
	n := 0
	for page := 0; ; page++ {
		resp, err := c.products.GetProducts(ctx, &pricing.GetProductsInput{
			ServiceCode:   aws.String(code),
			FormatVersion: aws.String("aws_v1"),
			Filters: []pricingtypes.Filter{{
				Type: pricingtypes.FilterTypeTermMatch, Field: aws.String("regionCode"), Value: aws.String(region),
			}},
			MaxResults: aws.Int32(100),
			NextToken:  token,
		})
		if err != nil {
			return nil, nil, awsclient.Describe("list "+code+" prices for "+region+" (Price List API)", "pricing:GetProducts", s.apiRegion, err)
		}
		for _, text := range resp.PriceList {
			p, reason, err := readDocument(code, region, n, text)
			n++
			if err != nil {
				return nil, nil, err
			}
			if reason != "" {
				skipped = append(skipped, Skipped{ServiceCode: code, Region: region, SKU: p.sku, Name: p.name, UsageType: p.usagetype, Reason: reason})
				continue
			}
			out = append(out, p)
		}
		next := resp.NextToken
		if next == nil || *next == "" {
			return out, skipped, nil
		}
		if token != nil && *token == *next {
			return nil, nil, fmt.Errorf("list %s prices for %s: the Price List API returned the same NextToken twice; stopping", code, region)
		}
		if page+1 >= maxPages {
			return nil, nil, fmt.Errorf("list %s prices for %s: more than %d pages; stopping", code, region, maxPages)
		}
		token = next
	}
}

// model is one foundation model of a Region's catalogue.
type model struct{ id, name, provider string }

// catalogue is a Region's foundation models and its system profiles (id ->
// the model ids they route to).
type catalogue struct {
	models   []model
	profiles map[string][]string
}

func fetchCatalogue(ctx context.Context, c clients, region string) (catalogue, error) {
	cat := catalogue{profiles: map[string][]string{}}
	out, err := c.models.ListFoundationModels(ctx, &bedrock.ListFoundationModelsInput{})
	if err != nil {
		return cat, awsclient.Describe("list foundation models", "bedrock:ListFoundationModels", region, err)
	}
	for _, m := range out.ModelSummaries {
		cat.models = append(cat.models, model{id: aws.ToString(m.ModelId), name: aws.ToString(m.ModelName), provider: aws.ToString(m.ProviderName)})
	}
	var token *string
	for page := 0; page < maxPages; page++ {
		out, err := c.profiles.ListInferenceProfiles(ctx, &bedrock.ListInferenceProfilesInput{
			TypeEquals: bedrocktypes.InferenceProfileTypeSystemDefined, NextToken: token, MaxResults: aws.Int32(1000),
		})
		if err != nil {
			return cat, awsclient.Describe("list inference profiles", "bedrock:ListInferenceProfiles", region, err)
		}
		for _, p := range out.InferenceProfileSummaries {
			id := aws.ToString(p.InferenceProfileId)
			for _, m := range p.Models {
				// arn:aws:bedrock:REGION::foundation-model/MODEL
				if _, mid, ok := strings.Cut(aws.ToString(m.ModelArn), "foundation-model/"); ok && !slices.Contains(cat.profiles[id], mid) {
					cat.profiles[id] = append(cat.profiles[id], mid)
				}
			}
		}
		if token = out.NextToken; token == nil || *token == "" {
			break
		}
	}
	return cat, nil
}

// assembled is one Region's prices.
type assembled struct {
	Prices   map[broker.PriceKey]broker.Price
	Unpriced []broker.PriceKey
	Skipped  []Skipped
	Notes    []string
}

// assemble matches products to the catalogue's models by display name and
// keys the prices by model id and by profile id. A global profile takes
// the rates listed for global profiles where there are any, else the
// model's own: AWS lists a separate global rate only where it differs.
func assemble(region string, cat catalogue, products []product) assembled {
	res := assembled{Prices: map[broker.PriceKey]broker.Price{}}
	regional := map[string]*broker.Price{}
	global := map[string]*broker.Price{}
	set := func(m map[string]*broker.Price, id string, p product) {
		pr := m[id]
		if pr == nil {
			pr = &broker.Price{Source: source(p)}
			m[id] = pr
		}
		field := rateField(pr, p.kind.rate)
		if pr.Has&p.kind.rate != 0 && *field != p.perK {
			// Two products for one rate: keep the higher, which can only
			// overstate spend, and say so.
			res.Notes = append(res.Notes, fmt.Sprintf("%s %s: two listed %s rates (%g and %g per 1K tokens); using the higher", region, id, rateName(p.kind.rate), *field, p.perK))
			*field = max(*field, p.perK)
			return
		}
		*field = p.perK
		pr.Has |= p.kind.rate
	}
	for _, p := range products {
		ids := matchModels(cat, p)
		if len(ids) == 0 {
			res.Skipped = append(res.Skipped, Skipped{Region: region, SKU: p.sku, Name: p.name, UsageType: p.usagetype,
				Reason: fmt.Sprintf("no foundation model in %s's catalogue is named %q", region, p.name)})
			continue
		}
		for _, id := range ids {
			if p.kind.global {
				set(global, id, p)
			} else {
				set(regional, id, p)
			}
		}
	}
	priced := func(key broker.PriceKey, p *broker.Price) {
		if p != nil && p.Has != 0 {
			res.Prices[key] = *p
		}
		if p == nil || !p.Priced() {
			res.Unpriced = append(res.Unpriced, key)
		}
	}
	for _, m := range cat.models {
		priced(broker.PriceKey{Region: region, Model: m.id}, regional[m.id])
	}
	profiles := make([]string, 0, len(cat.profiles))
	for id := range cat.profiles {
		profiles = append(profiles, id)
	}
	slices.Sort(profiles)
	for _, id := range profiles {
		models := cat.profiles[id]
		if len(models) == 0 {
			continue
		}
		base := models[0] // a profile's destinations are one model in several Regions
		var p *broker.Price
		if r := regional[base]; r != nil {
			c := *r
			p = &c
		}
		if g := global[base]; g != nil && strings.HasPrefix(id, "global.") {
			if p == nil {
				p = &broker.Price{Source: g.Source}
			}
			for _, r := range []broker.Rate{broker.RateInput, broker.RateOutput, broker.RateCacheRead, broker.RateCacheWrite} {
				if g.Has&r != 0 {
					*rateField(p, r) = *rateField(g, r)
					p.Has |= r
				}
			}
		}
		priced(broker.PriceKey{Region: region, Model: id}, p)
	}
	slices.SortFunc(res.Unpriced, func(a, b broker.PriceKey) int { return strings.Compare(a.Model, b.Model) })
	return res
}

// matchModels returns the ids of the catalogue's models whose display name
// is the product's: equal when folded, or equal once the catalogue's
// trailing "Instruct" is dropped (the price list names "Llama 3.1 8B" what
// the catalogue names "Llama 3.1 8B Instruct"). A product of the
// AmazonBedrock list must also agree on the provider where it names one.
func matchModels(cat catalogue, p product) []string {
	want := normName(p.name)
	var ids []string
	for _, m := range cat.models {
		if p.provider != "" && !strings.EqualFold(p.provider, m.provider) {
			continue
		}
		n := normName(m.name)
		if n == want || strings.TrimSuffix(n, " instruct") == want {
			ids = append(ids, m.id)
		}
	}
	return ids
}

func source(p product) string {
	code := p.service
	date := p.published
	if len(date) >= 10 {
		date = date[:10]
	}
	if date == "" {
		return "aws pricing (" + code + ")"
	}
	return "aws pricing (" + code + ", " + date + ")"
}

func rateField(p *broker.Price, r broker.Rate) *float64 {
	switch r {
	case broker.RateInput:
		return &p.Input
	case broker.RateOutput:
		return &p.Output
	case broker.RateCacheRead:
		return &p.CacheRead
	case broker.RateCacheWrite:
		return &p.CacheWrite
	case broker.RateBatchInput:
		return &p.BatchInput
	case broker.RateBatchOutput:
		return &p.BatchOutput
	}
	panic(fmt.Sprintf("awspricing: rate %d", r))
}

func rateName(r broker.Rate) string {
	return map[broker.Rate]string{
		broker.RateInput: "input", broker.RateOutput: "output", broker.RateCacheRead: "cache read",
		broker.RateCacheWrite: "cache write", broker.RateBatchInput: "batch input", broker.RateBatchOutput: "batch output",
	}[r]
}
