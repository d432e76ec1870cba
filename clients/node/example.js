'use strict';
// Example: one Bedrock call's worth of quota through the broker.
//
//   cd clients/node && npm ci
//   node example.js [host:port]        (default $QUOTA_BROKER_ADDR or 127.0.0.1:50051)
//
// Against the built-in example budgets (go run ./cmd/quota-broker serve) it
// leases for Claude Sonnet 4.5, settles the lease, prints the budget's report,
// then asks the tiny Claude 3 Haiku budget until it refuses and prints the
// refusal's retry delay and reason.
//
// For a broker cluster give every replica: host1:port,host2:port,host3:port.
// Calls go to the replica that answers; one answered UNAVAILABLE (a standby
// naming the leader, a replica that is down) moves on to the next within the
// call's deadline.

const { QuotaBrokerClient, refusalFromError, grpc } = require('./quotabroker.js');

const addr = process.argv[2] || process.env.QUOTA_BROKER_ADDR || '127.0.0.1:50051';
const region = process.env.QUOTA_BROKER_REGION || undefined; // the broker's default Region

async function main() {
  const qb = new QuotaBrokerClient(addr, { clientName: 'node-example' });
  try {
    const model = 'us.anthropic.claude-sonnet-4-5-20250929-v1:0';
    const { lease, waited } = await qb.acquireLease({
      modelId: model, region, inputTokens: 1200, maxOutputTokens: 1024,
      priority: 'PRIORITY_INTERACTIVE', waitMs: 5000,
    });
    console.log(`lease ${lease.leaseId}: ${lease.reservedTokens} tokens reserved ` +
      `(1200 + 1024 x ${lease.outputBurndown}) on ${lease.budget.region}/${lease.budget.model}, waited ${waited.seconds}s`);

    // ... call Bedrock here, then settle with the usage it reported ...
    const done = await qb.completeLease({
      leaseId: lease.leaseId, outcome: 'OUTCOME_SUCCESS', usage: { inputTokens: 1180, outputTokens: 312 },
    });
    console.log(`completed: charged ${done.chargedTokens}, returned ${done.returnedTokens}`);

    const report = await qb.getQuotaReport({ model: 'sonnet-4-5' });
    for (const b of report.budgets) {
      const k = b.budget.key;
      console.log(`budget ${k.region}/${k.scope}/${k.model}: ${b.usage.requestsLastMinute} req and ` +
        `${b.usage.tokensLastMinute} tokens in the last minute, utilisation ${b.utilisation.toFixed(4)}`);
    }

    // A route (serve --routes): the broker picks the target, the lease says
    // where to call it.
    if (process.env.QUOTA_BROKER_ROUTE) {
      const res = await qb.acquireLease({ route: process.env.QUOTA_BROKER_ROUTE, affinityKey: 'conversation-42', inputTokens: 1200, maxOutputTokens: 1024 });
      console.log(`route ${res.route.route}: call ${res.lease.modelId} in ${res.lease.region} ` +
        `(target ${res.route.targetIndex}, ${res.route.reason})`);
      await qb.completeLease({ leaseId: res.lease.leaseId, outcome: 'OUTCOME_SUCCESS', usage: { inputTokens: 1180, outputTokens: 312 } });
    }

    // A refusal: RESOURCE_EXHAUSTED with RetryInfo and ErrorInfo.
    for (let i = 0; i < 5; i++) {
      try {
        const r = await qb.acquireLease({ modelId: 'anthropic.claude-3-haiku-20240307-v1:0', region, maxOutputTokens: 1000 });
        await qb.completeLease({ leaseId: r.lease.leaseId, outcome: 'OUTCOME_SUCCESS', usage: { inputTokens: 20, outputTokens: 50 } });
        console.log('claude-3-haiku: granted');
      } catch (err) {
        const refusal = refusalFromError(err);
        if (!refusal) throw err;
        console.log(`claude-3-haiku: refused (${grpc.status[err.code]}): ${refusal.reason}, ` +
          `retry in ${(refusal.retryDelayMs / 1000).toFixed(1)}s; metadata ${JSON.stringify(refusal.metadata)}`);
        break;
      }
    }
  } finally {
    qb.close();
  }
}

main().catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
