package server

import (
	"github.com/bedrockqb/quotabroker/broker"
	pb "github.com/bedrockqb/quotabroker/gen/quotabroker/v1"
)

// limitOf is the one table between the domain's limits and the wire's: the
// ErrorInfo reason of a refusal is the name of the proto value (LIMIT_RPM),
// so clients in any language decode it from the published contract. A limit
// kind added to the domain or to the proto without a row here fails
// TestLimitTableCoversDomainAndProto.
var limitOf = map[broker.Limit]pb.Limit{
	broker.LimitRPM:           pb.Limit_LIMIT_RPM,
	broker.LimitTPM:           pb.Limit_LIMIT_TPM,
	broker.LimitTPD:           pb.Limit_LIMIT_TPD,
	broker.LimitConcurrency:   pb.Limit_LIMIT_CONCURRENCY,
	broker.LimitClientWaiters: pb.Limit_LIMIT_CLIENT_WAITERS,
	broker.LimitWaiters:       pb.Limit_LIMIT_WAITERS,
	broker.LimitClientLeases:  pb.Limit_LIMIT_CLIENT_LEASES,
	broker.LimitClientCap:     pb.Limit_LIMIT_CLIENT_CAP,
	broker.LimitMoney:         pb.Limit_LIMIT_MONEY,
}

// limitReason is the ErrorInfo reason of a refusal on l. A limit missing
// from the table (LimitNone: no refusal names it) goes out as
// LIMIT_UNSPECIFIED, which clients treat as an unknown limit.
func limitReason(l broker.Limit) string {
	return limitOf[l].String()
}
