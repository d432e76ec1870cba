package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/awspricing"
	"github.com/bedrockqb/quotabroker/broker/awsquota"
	"github.com/bedrockqb/quotabroker/broker/pricefile"
)

type discoverFlags struct {
	regions                             []string
	endpoint, fromFile, models, profile string
	output                              string
	timeout                             time.Duration
	// prices adds what each budget's calls cost (AWS's Price List, with
	// pricesFile over it; offline, pricesFile alone).
	prices     bool
	pricesFile string
}

// parseDiscoverFlags reads discover's flags; -h prints the help on out.
func parseDiscoverFlags(args []string, out io.Writer) (discoverFlags, error) {
	var f discoverFlags
	fs := flag.NewFlagSet("discover", flag.ContinueOnError)
	fs.SetOutput(out)
	setSynopsis(fs, `usage: quota-broker discover [flags]

Lists the account's Amazon Bedrock quotas (Service Quotas), matches them to
models and inference profiles (Bedrock control plane) and prints the budgets
the broker would enforce, and every runtime quota it would not, with why.
Offline, --from-file reads a saved
  aws service-quotas list-service-quotas --service-code bedrock
output instead, optionally with saved list-foundation-models and
list-inference-profiles outputs. --prices adds each budget's token prices
from the AWS Price List (pricing:GetProducts), with --prices-file over them.`)
	regions := fs.String("regions", envOr("QUOTA_BROKER_REGIONS", "us-east-1"), "comma-separated AWS Regions to discover (env QUOTA_BROKER_REGIONS)")
	fs.StringVar(regions, "region", *regions, "the same as --regions")
	fs.StringVar(&f.endpoint, "aws-endpoint", envOr("QUOTA_BROKER_AWS_ENDPOINT", ""), "base URL for every AWS client, e.g. the simulator's http://127.0.0.1:8566; without AWS credentials dummy ones are used (env QUOTA_BROKER_AWS_ENDPOINT)")
	fs.StringVar(&f.fromFile, "from-file", envOr("QUOTA_BROKER_QUOTAS_FILE", ""), "offline: saved list-service-quotas JSON of one Region; no AWS call is made (env QUOTA_BROKER_QUOTAS_FILE)")
	fs.StringVar(&f.models, "models-file", envOr("QUOTA_BROKER_MODELS_FILE", ""), "offline: saved list-foundation-models JSON (env QUOTA_BROKER_MODELS_FILE)")
	fs.StringVar(&f.profile, "profiles-file", envOr("QUOTA_BROKER_PROFILES_FILE", ""), "offline: saved list-inference-profiles JSON (env QUOTA_BROKER_PROFILES_FILE)")
	fs.StringVar(&f.output, "output", envOr("QUOTA_BROKER_OUTPUT", "table"), "table or json (env QUOTA_BROKER_OUTPUT)")
	fs.BoolVar(&f.prices, "prices", envOr("QUOTA_BROKER_DISCOVER_PRICES", "") == "1", "add each budget's input and output price per million tokens, from the AWS Price List (env QUOTA_BROKER_DISCOVER_PRICES=1)")
	fs.StringVar(&f.pricesFile, "prices-file", envOr("QUOTA_BROKER_PRICES", ""), "JSON prices file over (or, with \"mode\": \"replace\", instead of) AWS's prices; implies --prices; offline the only prices (env QUOTA_BROKER_PRICES)")
	timeout := envOr("QUOTA_BROKER_DISCOVER_TIMEOUT", "1m")
	d, err := time.ParseDuration(timeout)
	if err != nil {
		return f, fmt.Errorf("QUOTA_BROKER_DISCOVER_TIMEOUT: %w", err)
	}
	fs.DurationVar(&f.timeout, "timeout", d, "give up on AWS after this long (env QUOTA_BROKER_DISCOVER_TIMEOUT)")
	if err := parseFlags(fs, args, fs.Output()); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("discover: unexpected argument %q", fs.Arg(0))
	}
	f.regions = list(*regions)
	if f.pricesFile != "" {
		f.prices = true
	}
	switch {
	case len(f.regions) == 0:
		return f, errors.New("discover: --region names no Region")
	case f.output != "table" && f.output != "json":
		return f, fmt.Errorf("discover: --output %q: want table or json", f.output)
	case f.fromFile == "" && (f.models != "" || f.profile != ""):
		return f, errors.New("discover: --models-file and --profiles-file go with --from-file")
	case f.fromFile != "" && len(f.regions) != 1:
		return f, errors.New("discover: --from-file holds one Region's quotas; give exactly one --region")
	case f.fromFile != "" && f.endpoint != "":
		return f, errors.New("discover: --from-file makes no AWS call; drop --aws-endpoint")
	case f.fromFile != "" && f.prices && f.pricesFile == "":
		return f, errors.New("discover: --from-file makes no AWS call, so prices come from --prices-file only; give one")
	case f.timeout <= 0:
		return f, errors.New("discover: --timeout must be positive")
	}
	return f, nil
}

// discover is the "discover" command.
func discover(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := parseDiscoverFlags(args, stdout)
	if err != nil {
		return err
	}
	var res awsquota.Result
	var file *pricefile.File
	if f.pricesFile != "" {
		pf, err := pricefile.Load(f.pricesFile)
		if err != nil {
			return fmt.Errorf("discover: %w", err)
		}
		file = &pf
	}
	var prices map[broker.PriceKey]broker.Price
	if f.fromFile != "" {
		res, err = awsquota.FromFiles(awsquota.Files{Region: f.regions[0], Quotas: f.fromFile, Models: f.models, Profiles: f.profile})
		if err != nil {
			return fmt.Errorf("discover: %w", err)
		}
	} else {
		// One deadline for everything, config loading included: the SDK's
		// credential chain can wait on an instance metadata service that
		// is not there.
		ctx, cancel := context.WithTimeout(ctx, f.timeout)
		defer cancel()
		src, err := awsquota.New(awsquota.Config{Regions: f.regions, Endpoint: f.endpoint, Timeout: f.timeout})
		if err != nil {
			return fmt.Errorf("discover: %w", err)
		}
		res, err = src.Inspect(ctx)
		switch {
		case errors.Is(err, awsquota.ErrNoCredentials):
			return fmt.Errorf("discover: %w\n(set AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; or --aws-endpoint to ask the Bedrock simulator; or --from-file with a saved listing)", err)
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
			return fmt.Errorf("discover: gave up after --timeout %s: %w", f.timeout, err)
		case err != nil:
			return fmt.Errorf("discover: %w", err)
		}
		if f.prices && (file == nil || !file.Replace) {
			ps, err := awspricing.New(awspricing.Config{Regions: f.regions, Endpoint: f.endpoint, Timeout: f.timeout})
			if err != nil {
				return fmt.Errorf("discover: %w", err)
			}
			pr, err := ps.Inspect(ctx)
			if err != nil {
				return fmt.Errorf("discover: prices (drop --prices to list quotas alone): %w", err)
			}
			prices = pr.Prices
		}
	}
	if f.prices {
		if file != nil {
			prices = file.Apply(prices)
		}
		if prices == nil {
			prices = map[broker.PriceKey]broker.Price{}
		}
	}
	if f.output == "json" {
		return writeDiscoveryJSON(stdout, res, prices)
	}
	return writeDiscoveryTable(stdout, res, prices)
}

// budgetJSON is a broker.Spec as the discover command prints it.
type budgetJSON struct {
	Region      string    `json:"region"`
	Scope       string    `json:"scope"`
	Model       string    `json:"model"`
	RPM         int64     `json:"rpm,omitempty"`
	TPM         int64     `json:"tpm,omitempty"`
	TPD         int64     `json:"tpd,omitempty"`
	Concurrency int64     `json:"concurrency,omitempty"`
	Source      string    `json:"source"`
	SourceTime  time.Time `json:"source_time"`
	// With --prices: the price of the budget's calls, USD per 1,000
	// tokens, or unpriced.
	Price    *priceJSON `json:"price,omitempty"`
	Unpriced bool       `json:"unpriced,omitempty"`
}

// priceJSON is a broker.Price as printed: a rate AWS does not list is
// absent, never 0.
type priceJSON struct {
	Input       *float64 `json:"input_per_1k,omitempty"`
	Output      *float64 `json:"output_per_1k,omitempty"`
	CacheRead   *float64 `json:"cache_read_per_1k,omitempty"`
	CacheWrite  *float64 `json:"cache_write_per_1k,omitempty"`
	BatchInput  *float64 `json:"batch_input_per_1k,omitempty"`
	BatchOutput *float64 `json:"batch_output_per_1k,omitempty"`
	Source      string   `json:"source"`
}

func priceJSONOf(p broker.Price) *priceJSON {
	out := &priceJSON{Source: p.Source}
	for _, r := range []struct {
		rate broker.Rate
		v    float64
		dst  **float64
	}{{broker.RateInput, p.Input, &out.Input}, {broker.RateOutput, p.Output, &out.Output},
		{broker.RateCacheRead, p.CacheRead, &out.CacheRead}, {broker.RateCacheWrite, p.CacheWrite, &out.CacheWrite},
		{broker.RateBatchInput, p.BatchInput, &out.BatchInput}, {broker.RateBatchOutput, p.BatchOutput, &out.BatchOutput}} {
		if p.Has&r.rate != 0 {
			v := r.v
			*r.dst = &v
		}
	}
	return out
}

type discoveryJSON struct {
	At      time.Time        `json:"at"`
	Summary discoverySummary `json:"summary"`
	Budgets []budgetJSON     `json:"budgets"`
	Quotas  []awsquota.Quota `json:"quotas"`
}

type discoverySummary struct {
	Quotas int `json:"quotas"`
	// Runtime quotas became budgets; RuntimeSkipped look like runtime
	// quotas but did not (variant, no match, value 0); NotRuntime are
	// provisioned, batch and other features' quotas.
	Runtime        int `json:"runtime"`
	RuntimeSkipped int `json:"runtime_skipped"`
	NotRuntime     int `json:"not_runtime"`
	Budgets        int `json:"budgets"`
}

func summarise(res awsquota.Result) discoverySummary {
	s := discoverySummary{Quotas: len(res.Quotas), Budgets: len(res.Specs)}
	for _, q := range res.Quotas {
		switch {
		case q.Runtime:
			s.Runtime++
		case runtimeLooking(q):
			s.RuntimeSkipped++
		default:
			s.NotRuntime++
		}
	}
	return s
}

// runtimeLooking reports a quota whose name reads as a runtime budget.
func runtimeLooking(q awsquota.Quota) bool {
	return q.Scope == "on-demand" || q.Scope == "cross-region" || q.Scope == "global"
}

func writeDiscoveryJSON(w io.Writer, res awsquota.Result, prices map[broker.PriceKey]broker.Price) error {
	out := discoveryJSON{At: res.At, Summary: summarise(res), Budgets: []budgetJSON{}, Quotas: res.Quotas}
	if out.Quotas == nil {
		out.Quotas = []awsquota.Quota{}
	}
	for _, s := range res.Specs {
		b := budgetJSON{
			Region: s.Key.Region, Scope: s.Key.Scope.String(), Model: s.Key.Model,
			RPM: s.Quota.RPM, TPM: s.Quota.TPM, TPD: s.Quota.TPD, Concurrency: s.Quota.Concurrency,
			Source: s.Source, SourceTime: s.SourceTime,
		}
		if prices != nil {
			p, ok := priceOfBudget(prices, s.Key)
			if ok {
				b.Price = priceJSONOf(p)
			}
			b.Unpriced = !p.Priced()
		}
		out.Budgets = append(out.Budgets, b)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func writeDiscoveryTable(w io.Writer, res awsquota.Result, prices map[broker.PriceKey]broker.Price) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	num := func(v int64) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprint(v)
	}
	header := "REGION\tSCOPE\tMODEL\tRPM\tTPM\tTPD\tCONCURRENCY"
	if prices != nil {
		header += "\tIN $/1M\tOUT $/1M"
	}
	fmt.Fprintln(tw, header)
	var priced int
	var unpriced []string
	for _, s := range res.Specs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s", s.Key.Region, s.Key.Scope, s.Key.Model,
			num(s.Quota.RPM), num(s.Quota.TPM), num(s.Quota.TPD), num(s.Quota.Concurrency))
		if prices != nil {
			p, _ := priceOfBudget(prices, s.Key)
			fmt.Fprintf(tw, "\t%s\t%s", perMillion(p, broker.RateInput, p.Input), perMillion(p, broker.RateOutput, p.Output))
			if p.Priced() {
				priced++
			} else {
				unpriced = append(unpriced, s.Key.String())
			}
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	sum := summarise(res)
	if sum.RuntimeSkipped > 0 {
		fmt.Fprintf(w, "\nRuntime quotas not brokered (%d):\n", sum.RuntimeSkipped)
		fmt.Fprintln(tw, "REGION\tCODE\tNAME\tREASON")
		for _, q := range res.Quotas {
			if !q.Runtime && runtimeLooking(q) {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", q.Region, q.QuotaCode, q.QuotaName, q.Reason)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintf(w, "\n%d quotas: %d became %d budgets, %d runtime quotas not brokered, %d not runtime quotas (provisioned, batch, other features)\n",
		sum.Quotas, sum.Runtime, sum.Budgets, sum.RuntimeSkipped, sum.NotRuntime)
	if err != nil || prices == nil {
		return err
	}
	_, err = fmt.Fprintf(w, "prices: %d of %d budgets priced", priced, len(res.Specs))
	if err == nil && len(unpriced) > 0 {
		_, err = fmt.Fprintf(w, "; unpriced (no input or output price listed, never counted as free): %s", strings.Join(unpriced, ", "))
	}
	if err == nil {
		_, err = fmt.Fprintln(w)
	}
	return err
}
