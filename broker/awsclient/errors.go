package awsclient

import (
	"errors"
	"fmt"

	"github.com/aws/smithy-go"
)

// apiError is an AWS API error worded for an operator. It unwraps to the
// SDK's error, so callers can still errors.As it to the typed exception.
type apiError struct {
	msg string
	err error
}

func (e *apiError) Error() string { return e.msg }
func (e *apiError) Unwrap() error { return e.err }

// Describe words err from an AWS call for an operator: verb says what the
// call does ("list service quotas"), action the IAM action it needs
// ("servicequotas:ListServiceQuotas"). API errors get a plain description
// by their code (the SDK's own text is a long line of protocol detail) and
// still unwrap to the SDK's error; anything else (credentials, network,
// timeout) is wrapped as it is. Every AWS adapter and command words its
// errors with it, so that they all read the same way.
func Describe(verb, action, region string, err error) error {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return fmt.Errorf("%s in %s: %w", verb, region, err)
	}
	code := ae.ErrorCode()
	var what string
	switch code {
	case "AccessDeniedException", "DependencyAccessDeniedException", "AccessDenied":
		what = "access denied (" + code + "): the broker's role needs " + action
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
	return &apiError{msg: verb + " in " + region + ": " + what, err: err}
}
