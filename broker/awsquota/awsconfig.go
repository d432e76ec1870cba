package awsquota

import (
	"context"
	"fmt"
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

// LoadAWSConfig loads the SDK's default configuration (environment, shared
// files, SSO, instance role) for region. With endpoint set, every client
// built from the result talks to endpoint instead of AWS, and when no
// credentials are configured it signs with fixed dummy ones: the simulator
// reads the Region from the signature but checks nothing, so a laptop
// without AWS credentials can use it. Without endpoint, missing credentials
// stay an error, reported by the first call that needs them.
func LoadAWSConfig(ctx context.Context, region, endpoint string) (aws.Config, error) {
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
