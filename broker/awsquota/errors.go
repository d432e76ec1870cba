package awsquota

import (
	"errors"
	"fmt"

	"github.com/aws/smithy-go"
)

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

// awsError is an AWS API error worded for an operator. It unwraps to the
// SDK's error, so callers can still errors.As it to the typed exception.
type awsError struct {
	msg string
	err error
}

func (e *awsError) Error() string { return e.msg }
func (e *awsError) Unwrap() error { return e.err }

// describe wraps err from op in region. API errors get a plain description
// by their code (the SDK's own text is a long line of protocol detail);
// anything else (credentials, network, timeout) is wrapped as it is.
func describe(op operation, region string, err error) error {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return fmt.Errorf("%s in %s: %w", op.verb, region, err)
	}
	code := ae.ErrorCode()
	var what string
	switch code {
	case "AccessDeniedException", "DependencyAccessDeniedException", "AccessDenied":
		what = "access denied (" + code + "): the broker's role needs " + op.action
	case "TooManyRequestsException", "ThrottlingException":
		what = "throttled (" + code + ") even after the SDK's retries; the next refresh will try again later"
	case "NoSuchResourceException":
		what = "not found (" + code + "): Service Quotas knows no service code \"bedrock\" here; is Bedrock offered in this Region?"
	case "ResourceNotFoundException":
		what = "not found (" + code + ")"
	case "UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException", "ExpiredTokenException", "ExpiredToken":
		what = "credentials rejected (" + code + "): check the AWS credentials and their Region"
	case "ServiceException", "InternalServerException", "ServiceUnavailableException":
		what = "AWS service error (" + code + "); the next refresh will try again"
	case "IllegalArgumentException", "ValidationException", "InvalidPaginationTokenException":
		what = "request rejected (" + code + ")"
	default:
		what = "AWS error " + code
	}
	if m := ae.ErrorMessage(); m != "" {
		what += "; AWS says: " + m
	}
	return &awsError{msg: op.verb + " in " + region + ": " + what, err: err}
}

// Describe words err from an AWS call for an operator, as this package's
// own errors are: verb says what the call does ("request a quota
// increase"), action the IAM action it needs. Other AWS adapters and
// commands use it so that every AWS error reads the same way; the result
// still unwraps to the SDK's error.
func Describe(verb, action, region string, err error) error {
	return describe(operation{verb, action}, region, err)
}
