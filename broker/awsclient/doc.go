// Package awsclient is what every AWS client of the broker is built with:
// the SDK configuration for a Region, an HTTP client that survives a
// request-body race in the SDK, and operator wording for AWS errors.
//
// It exists so that adapters never import each other: awsquota (Service
// Quotas and the Bedrock catalogue), awsmetrics (CloudWatch) and the
// commands that call AWS themselves (increase, probe) all build their
// clients here, and internal/archtest allows this one package, and no
// other adapter, as an import of an adapter. It imports nothing of the
// project's own.
//
// # Configuration
//
// LoadConfig is the one place the SDK configuration is built: the SDK's
// default chain (environment, shared files, SSO, instance role) for a
// Region, or, with an endpoint (--aws-endpoint, the simulator), every client
// pointed at it and dummy credentials when none are configured.
// RegionConfigs loads that once, lazily, and hands out a copy per Region, so
// that constructors make no AWS call and look up no credentials.
//
// # The body workaround
//
// SafeBodies hides io.WriterTo of request bodies from net/http (see its
// comment for the race). Install it as a client option on every SDK client,
// so that the SDK's own HTTP defaults stay.
//
// # Errors
//
// Describe rewords an AWS API error by its code, naming the operation, the
// Region and, for AccessDenied, the IAM action the broker's role lacks; the
// result still unwraps to the SDK's typed error.
package awsclient
