package quotaclient

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"google.golang.org/grpc"
	_ "google.golang.org/grpc/health" // registers client-side health checking, which the service config below turns on
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// replicaServiceConfig spreads calls over the replicas whose health service
// reports SERVING for the QuotaBroker service, and over no other. A
// cluster's standbys report NOT_SERVING, so their subchannels never become
// READY and no call is picked onto them; when leadership moves, the old
// leader's subchannel leaves READY and the new one's enters it, and calls
// follow without the client knowing who leads. round_robin rather than
// pick_first: grpc-go applies health checking only under a balancer that
// spreads over several subchannels (pick_first alone ignores
// healthCheckConfig), and with one serving replica round_robin sends
// everything to it. A server without the health service (UNIMPLEMENTED)
// counts as serving, so a single-node broker works the same way.
var replicaServiceConfig = fmt.Sprintf(`{
  "loadBalancingConfig": [{"round_robin": {}}],
  "healthCheckConfig": {"serviceName": %q}
}`, pb.QuotaBroker_ServiceDesc.ServiceName)

// replicaScheme is the scheme of the per-connection resolver that holds a
// static replica list; it is registered on that connection only.
const replicaScheme = "quotabroker-replicas"

// NewConn returns a gRPC connection to a broker or to the replicas of a
// broker cluster, for New. target is either a comma-separated list of
// host:port ("broker-1:50051,broker-2:50051,broker-3:50051", or a single
// host:port), each dialled as given, or any gRPC target with a scheme, e.g.
// "dns:///brokers.internal:50051", whose resolver lists the replicas (every
// address a DNS name resolves to is one replica). Either way calls go only
// to a replica whose standard health service (grpc.health.v1) reports
// SERVING for quotabroker.v1.QuotaBroker, and move on their own when
// another one starts serving. opts are the usual dial options:
// credentials are required (grpc.WithTransportCredentials).
//
// Pair it with WithFailover, so that a call which meets a failover (a
// standby that answers UNAVAILABLE, a replica dying, no replica serving for
// a moment) is retried within its wait:
//
//	conn, err := quotaclient.NewConn("broker-1:50051,broker-2:50051,broker-3:50051",
//		grpc.WithTransportCredentials(creds))
//	qc := quotaclient.New(conn, quotaclient.WithFailover())
//
// The connection is the caller's to close. A service config of the caller
// (grpc.WithDefaultServiceConfig in opts) replaces this one.
func NewConn(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	target = strings.TrimSpace(target)
	if target == "" {
		return nil, errors.New("quotaclient: broker address is empty")
	}
	base := []grpc.DialOption{grpc.WithDefaultServiceConfig(replicaServiceConfig)}
	if strings.Contains(target, ":/") {
		// dns:///, passthrough:///, unix:/// and the like: gRPC's own
		// resolver lists the replicas.
		conn, err := grpc.NewClient(target, append(base, opts...)...)
		if err != nil {
			return nil, fmt.Errorf("quotaclient: broker %s: %w", target, err)
		}
		return conn, nil
	}
	var addrs []resolver.Address
	seen := map[string]bool{}
	for a := range strings.SplitSeq(target, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			return nil, fmt.Errorf("quotaclient: broker addresses %q: an empty address in the list", target)
		}
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("quotaclient: broker address %q: %w (want host:port)", a, err)
		}
		if seen[a] {
			return nil, fmt.Errorf("quotaclient: broker addresses %q: %s twice", target, a)
		}
		seen[a] = true
		// ServerName: each replica is verified against its own name under
		// TLS, not against the first one's (the connection's authority).
		addrs = append(addrs, resolver.Address{Addr: a, ServerName: host})
	}
	r := manual.NewBuilderWithScheme(replicaScheme)
	r.InitialState(resolver.State{Addresses: addrs})
	conn, err := grpc.NewClient(replicaScheme+":///"+addrs[0].Addr, append(append(base, grpc.WithResolvers(r)), opts...)...)
	if err != nil {
		return nil, fmt.Errorf("quotaclient: broker %s: %w", target, err)
	}
	return conn, nil
}
