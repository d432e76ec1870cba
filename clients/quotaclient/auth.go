package quotaclient

import (
	"context"

	"google.golang.org/grpc/credentials"
)

// BearerToken returns per-call credentials that send token as
// "authorization: Bearer TOKEN", for a broker started with --tokens:
//
//	conn, err := grpc.NewClient(addr,
//		grpc.WithTransportCredentials(insecure.NewCredentials()),
//		grpc.WithPerRPCCredentials(quotaclient.BearerToken(token)))
//
// The broker takes the client's identity from the token (WithName is then
// ignored by the broker). The token travels in the clear unless the
// connection uses TLS; on anything but a trusted network, use TLS.
func BearerToken(token string) credentials.PerRPCCredentials { return bearer(token) }

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity is false so that loopback and sidecar setups
// work without TLS; the doc above says what that means.
func (bearer) RequireTransportSecurity() bool { return false }
