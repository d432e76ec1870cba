package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/awsmetrics"
	"github.com/bedrockqb/quotabroker/server"
)

// cloudWatch gives the server CloudWatch's figures from awsmetrics; the
// server declares its own types so that it sees the domain only.
type cloudWatch struct{ r *awsmetrics.Reader }

// cloudWatchTimeout bounds one read, SDK retries included.
const cloudWatchTimeout = 10 * time.Second

func newCloudWatch(endpoint string, log *slog.Logger) server.CloudWatch {
	return cloudWatch{awsmetrics.New(awsmetrics.Config{Endpoint: endpoint, Logger: log})}
}

func (c cloudWatch) Usage(ctx context.Context, key broker.Key, from time.Time, step time.Duration, n int) (server.CloudWatchUsage, error) {
	// A hung connection must not hold up the broker's own figures.
	ctx, cancel := context.WithTimeout(ctx, cloudWatchTimeout)
	defer cancel()
	u, err := c.r.Usage(ctx, key, from, step, n)
	if err != nil {
		return server.CloudWatchUsage{}, err
	}
	out := server.CloudWatchUsage{ModelIDs: u.ModelIDs, Points: make([]server.CloudWatchPoint, len(u.Points))}
	for i, p := range u.Points {
		out.Points[i] = server.CloudWatchPoint(p)
	}
	return out, nil
}
