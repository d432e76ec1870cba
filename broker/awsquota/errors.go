package awsquota

import "github.com/bedrockqb/quotabroker/broker/awsclient"

// operation names an AWS call for error messages: what it does, in words,
// and the IAM action it needs.
type operation struct{ verb, action string }

var (
	opListQuotas      = operation{"list service quotas", "servicequotas:ListServiceQuotas"}
	opListDefaults    = operation{"list default service quotas", "servicequotas:ListAWSDefaultServiceQuotas"}
	opListModels      = operation{"list foundation models", "bedrock:ListFoundationModels"}
	opListProfiles    = operation{"list inference profiles", "bedrock:ListInferenceProfiles"}
	opListProvisioned = operation{"list provisioned throughputs", "bedrock:ListProvisionedModelThroughputs"}
)

// describe words err from op in region (awsclient.Describe).
func describe(op operation, region string, err error) error {
	return awsclient.Describe(op.verb, op.action, region, err)
}
