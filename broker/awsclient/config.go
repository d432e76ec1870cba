package awsclient

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

// credentialProbe bounds the look for real credentials when an endpoint is
// given. Off EC2 the credential chain ends at the instance metadata
// service, which does not answer; waiting longer only delays the fallback.
const credentialProbe = 2 * time.Second

// LoadConfig loads the SDK's default configuration (environment, shared
// files, SSO, instance role) for region. With endpoint set, every client
// built from the result talks to endpoint instead of AWS, and when no
// credentials are configured it signs with fixed dummy ones: the simulator
// reads the Region from the signature but checks nothing, so a laptop
// without AWS credentials can use it. Without endpoint, missing credentials
// stay an error, reported by the first call that needs them.
func LoadConfig(ctx context.Context, region, endpoint string) (aws.Config, error) {
	opts := []func(*config.LoadOptions) error{config.WithRegion(region)}
	if endpoint != "" {
		// Not AWS: the instance metadata service has no business here, and
		// probing it off EC2 only costs seconds and SDK warnings.
		opts = append(opts, config.WithBaseEndpoint(endpoint), config.WithEC2IMDSClientEnableState(imds.ClientDisabled))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("load AWS configuration for %s: %w", region, err)
	}
	if endpoint != "" {
		pctx, cancel := context.WithTimeout(ctx, credentialProbe)
		defer cancel()
		if cfg.Credentials == nil {
			cfg.Credentials = dummyCredentials()
		} else if _, err := cfg.Credentials.Retrieve(pctx); err != nil {
			cfg.Credentials = dummyCredentials()
		}
	}
	return cfg, nil
}

func dummyCredentials() aws.CredentialsProvider {
	return aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider("AKIDSIMULATOR", "simulator-secret", ""))
}

// RegionConfigs returns a function giving the SDK configuration for a
// Region: base (nil: LoadConfig's, loaded once, at the first call) with
// the Region set and, when endpoint is set, every client pointed at it.
// Loading lazily keeps constructors free of AWS calls and credential
// lookups; the function is safe for concurrent use.
func RegionConfigs(base *aws.Config, endpoint string) func(ctx context.Context, region string) (aws.Config, error) {
	var (
		mu     sync.Mutex // guards loaded
		loaded *aws.Config
	)
	if base != nil {
		c := base.Copy()
		loaded = &c
	}
	return func(ctx context.Context, region string) (aws.Config, error) {
		mu.Lock()
		defer mu.Unlock()
		if loaded == nil {
			c, err := LoadConfig(ctx, region, endpoint)
			if err != nil {
				return aws.Config{}, err
			}
			loaded = &c
		}
		c := loaded.Copy()
		c.Region = region
		if endpoint != "" {
			c.BaseEndpoint = aws.String(endpoint)
		}
		return c, nil
	}
}
