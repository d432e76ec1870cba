'use strict';
// Tests of the Node client against a real broker.
//
// QUOTA_BROKER_ADDR (host:port) names the broker; bash clients/test.sh starts
// one with budgets in QUOTA_BROKER_TEST_REGION (default us-west-2) for
//   us.anthropic.claude-sonnet-4-5-20250929-v1:0   (output burndown 5)
//   anthropic.claude-3-haiku-20240307-v1:0         (burndown 1, rpm 2 at margin 1)
// and nothing else uses those budgets while these tests run. The top-level
// tests of this file run in order, as node:test runs them.

const test = require('node:test');
const assert = require('node:assert/strict');
const protobuf = require('protobufjs');
const path = require('node:path');
const {
  QuotaBrokerClient,
  CLIENT_HEADER,
  ERROR_DOMAIN,
  decodeStatus,
  refusalFromError,
  grpc,
} = require('../quotabroker.js');

const ADDR = process.env.QUOTA_BROKER_ADDR;
const REGION = process.env.QUOTA_BROKER_TEST_REGION || 'us-west-2';
const SONNET = 'us.anthropic.claude-sonnet-4-5-20250929-v1:0';
const SONNET_BASE = 'anthropic.claude-sonnet-4-5-20250929-v1:0';
const HAIKU3 = 'anthropic.claude-3-haiku-20240307-v1:0';
// A route of two targets (QUOTA_BROKER_TEST_ROUTE_REGIONS, the first allowing
// one request a minute) of the EU profile of Sonnet 4.5; clients/test.sh sets them.
const ROUTE = process.env.QUOTA_BROKER_TEST_ROUTE;
const ROUTE_REGIONS = (process.env.QUOTA_BROKER_TEST_ROUTE_REGIONS || '').split(',');
const ROUTE_MODEL = 'eu.' + SONNET_BASE;

// Offline: decoding a google.rpc.Status built here, as the broker sends it.
test('decodeStatus reads RetryInfo and ErrorInfo from google.rpc.Status bytes', () => {
  const root = new protobuf.Root();
  const deps = path.resolve(__dirname, '..', '..', 'proto-deps');
  root.resolvePath = (origin, target) =>
    target.startsWith('google/rpc/') ? path.join(deps, target) : protobuf.util.path.resolve(origin, target);
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
  const RetryInfo = root.lookupType('google.rpc.RetryInfo');
  const ErrorInfo = root.lookupType('google.rpc.ErrorInfo');
  const Status = root.lookupType('google.rpc.Status');
  const bytes = Status.encode({
    code: 8,
    message: 'no capacity',
    details: [
      { type_url: 'type.googleapis.com/google.rpc.RetryInfo', value: RetryInfo.encode({ retryDelay: { seconds: 2, nanos: 500000000 } }).finish() },
      { type_url: 'type.googleapis.com/google.rpc.ErrorInfo', value: ErrorInfo.encode({ reason: 'LIMIT_TPM', domain: ERROR_DOMAIN, metadata: { limit: 'TPM' } }).finish() },
      { type_url: 'type.googleapis.com/example.Unknown', value: Buffer.from([1, 2]) },
    ],
  }).finish();
  const st = decodeStatus(bytes);
  assert.equal(st.code, 8);
  assert.equal(st.message, 'no capacity');
  assert.deepEqual(st.details.map((d) => d.type), ['google.rpc.RetryInfo', 'google.rpc.ErrorInfo', 'example.Unknown']);

  const md = new grpc.Metadata();
  md.set('grpc-status-details-bin', Buffer.from(bytes));
  const refusal = refusalFromError({ code: grpc.status.RESOURCE_EXHAUSTED, metadata: md });
  assert.equal(refusal.retryDelayMs, 2500);
  assert.equal(refusal.reason, 'LIMIT_TPM');
  assert.equal(refusal.domain, ERROR_DOMAIN);
  assert.deepEqual(refusal.metadata, { limit: 'TPM' });
  assert.equal(refusalFromError({ code: grpc.status.NOT_FOUND, metadata: md }), null);
});

test('against a running broker', { skip: ADDR ? false : 'QUOTA_BROKER_ADDR is not set (bash clients/test.sh sets it)' }, async (t) => {
  const qb = new QuotaBrokerClient(ADDR, { clientName: 'node-client-test' });
  t.after(() => qb.close());

  const sonnetReport = async () => {
    const rep = await qb.getQuotaReport({ region: REGION, model: SONNET_BASE });
    const b = rep.budgets.find((x) => x.budget.key.model === SONNET_BASE && x.budget.key.scope === 'SCOPE_CROSS_REGION');
    assert.ok(b, `report has the Sonnet 4.5 cross-region budget in ${REGION}: ${JSON.stringify(rep)}`);
    return b;
  };

  await t.test('acquire, complete, complete again, report', async () => {
    const before = await sonnetReport();
    const res = await qb.acquireLease({
      modelId: SONNET, region: REGION, inputTokens: 1200, maxOutputTokens: 1024,
      priority: 'PRIORITY_INTERACTIVE', waitMs: 5000,
    });
    const { lease } = res;
    assert.ok(lease.leaseId, 'lease id');
    assert.equal(lease.reservedTokens, 1200 + 1024 * 5, 'reserved = input + max_output x 5');
    assert.equal(lease.outputBurndown, 5);
    assert.equal(lease.maxOutputTokens, 1024);
    assert.deepEqual(lease.budget, { region: REGION, scope: 'SCOPE_CROSS_REGION', model: SONNET_BASE });
    assert.ok(Number(lease.expiresAt.seconds) > Number(lease.grantedAt.seconds));

    const done = await qb.completeLease({
      leaseId: lease.leaseId, outcome: 'OUTCOME_SUCCESS', usage: { inputTokens: 1180, outputTokens: 312 },
    });
    assert.deepEqual(done, { alreadyCompleted: false, chargedTokens: 1180 + 312 * 5, returnedTokens: 6320 - 2740 });

    const again = await qb.completeLease({
      leaseId: lease.leaseId, outcome: 'OUTCOME_SUCCESS', usage: { inputTokens: 1180, outputTokens: 312 },
    });
    assert.equal(again.alreadyCompleted, true);

    const after = await sonnetReport();
    const d = (f) => after.counters[f] - before.counters[f];
    assert.equal(d('granted'), 1);
    assert.equal(d('completed'), 1);
    assert.equal(d('reservedTokens'), 6320);
    assert.equal(d('settledTokens'), 2740);
    assert.equal(d('returnedTokens'), 3580);
    assert.equal(after.usage.requestsLastMinute - before.usage.requestsLastMinute, 1);
    assert.equal(after.usage.tokensLastMinute - before.usage.tokensLastMinute, 2740);
    assert.equal(after.budget.outputBurndown, 5);
    assert.equal(after.outstandingLeases, before.outstandingLeases);
  });

  await t.test('Claude 3 Haiku: burndown 1, then a refusal with RetryInfo and ErrorInfo', async () => {
    const { lease } = await qb.acquireLease({ modelId: HAIKU3, region: REGION, inputTokens: 100, maxOutputTokens: 1000 });
    assert.equal(lease.reservedTokens, 100 + 1000 * 1);
    assert.equal(lease.outputBurndown, 1);
    const done = await qb.completeLease({
      leaseId: lease.leaseId, outcome: 'OUTCOME_SUCCESS', usage: { inputTokens: 90, outputTokens: 200 },
    });
    assert.deepEqual(done, { alreadyCompleted: false, chargedTokens: 290, returnedTokens: 810 });

    // The budget allows 2 requests a minute: keep asking (without waiting)
    // until the broker refuses.
    let refusal = null;
    for (let i = 0; i < 5 && !refusal; i++) {
      try {
        const r = await qb.acquireLease({ modelId: HAIKU3, region: REGION, inputTokens: 10, maxOutputTokens: 10 });
        // (A cancelled call would give its request back: settle as a real one.)
        await qb.completeLease({ leaseId: r.lease.leaseId, outcome: 'OUTCOME_SUCCESS', usage: { inputTokens: 10, outputTokens: 1 } });
      } catch (err) {
        assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED, `${err}`);
        assert.ok(err.metadata.get('grpc-status-details-bin').length > 0, 'status details trailer');
        refusal = refusalFromError(err);
      }
    }
    assert.ok(refusal, 'refused within 5 requests');
    assert.ok(refusal.retryDelayMs > 0 && refusal.retryDelayMs <= 61000, `retry delay ${refusal.retryDelayMs}ms`);
    assert.equal(refusal.reason, 'LIMIT_RPM');
    assert.equal(refusal.domain, ERROR_DOMAIN);
    assert.equal(refusal.metadata.limit, 'RPM');
    assert.equal(refusal.metadata.model, HAIKU3);
    assert.equal(refusal.metadata.region, REGION);

    const rep = await qb.getQuotaReport({ region: REGION, model: HAIKU3 });
    assert.equal(rep.budgets.length, 1);
    assert.ok(rep.budgets[0].counters.refused >= 1, 'report counts the refusal');
  });

  await t.test('a route grants on its first target with room and says where to call', { skip: ROUTE ? false : 'QUOTA_BROKER_TEST_ROUTE is not set' }, async () => {
    // The route's first target allows one request a minute, its second 100.
    const where = [];
    for (let i = 0; i < 2; i++) {
      const res = await qb.acquireLease({ route: ROUTE, affinityKey: 'node-conv', inputTokens: 100, maxOutputTokens: 100 });
      where.push(`${res.lease.region} ${res.lease.modelId} ${res.route.reason} ${res.route.targetIndex}`);
      await qb.completeLease({ leaseId: res.lease.leaseId, outcome: 'OUTCOME_SUCCESS', usage: { inputTokens: 100, outputTokens: 10 } });
    }
    assert.deepEqual(where, [
      `${ROUTE_REGIONS[0]} ${ROUTE_MODEL} ROUTE_REASON_ROOM 0`,
      `${ROUTE_REGIONS[1]} ${ROUTE_MODEL} ROUTE_REASON_SPILL 1`,
    ]);
    const rep = await qb.getQuotaReport({});
    const r = rep.routes.find((x) => x.name === ROUTE);
    assert.ok(r, `report lists the route: ${JSON.stringify(rep.routes)}`);
    assert.equal(Number(r.targets[0].room), 1);
    assert.equal(Number(r.targets[1].spill), 1);
  });

  await t.test('unknown model is NOT_FOUND', async () => {
    await assert.rejects(
      qb.acquireLease({ modelId: 'anthropic.no-such-model-v1:0', region: REGION, maxOutputTokens: 10 }),
      (err) => err.code === grpc.status.NOT_FOUND && refusalFromError(err) === null,
    );
  });

  await t.test('completing an unknown lease is NOT_FOUND', async () => {
    await assert.rejects(
      qb.completeLease({ leaseId: 'no-such-lease', outcome: 'OUTCOME_SUCCESS' }),
      (err) => err.code === grpc.status.NOT_FOUND,
    );
  });
});

test('CLIENT_HEADER is the broker header', () => {
  assert.equal(CLIENT_HEADER, 'x-quotabroker-client');
});

// A cluster's standby, as the broker runs one: every QuotaBroker call is
// answered UNAVAILABLE with a message naming the leader. It counts the calls.
async function startStandby(leader) {
  const { loadService } = require('../quotabroker.js');
  const server = new grpc.Server();
  const standby = { calls: 0, server, addr: '' };
  const refuse = (call, callback) => {
    standby.calls++;
    callback({ code: grpc.status.UNAVAILABLE, details: `this replica is a standby; the leader is ${leader}` });
  };
  const handlers = {};
  for (const name of Object.keys(loadService().service)) handlers[name] = refuse;
  server.addService(loadService().service, handlers);
  const port = await new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  standby.addr = `127.0.0.1:${port}`;
  return standby;
}

// An address where nothing listens (a replica that is down): a port that was
// bound and released.
async function deadAddress() {
  const server = new grpc.Server();
  const port = await new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  await new Promise((resolve) => server.tryShutdown(resolve));
  return `127.0.0.1:${port}`;
}

test('address lists: one address, comma-separated, an array; empty or repeated addresses throw', () => {
  const list = (a) => { const qb = new QuotaBrokerClient(a); qb.close(); return [qb.addresses, qb.failover]; };
  assert.deepEqual(list('127.0.0.1:1'), [['127.0.0.1:1'], false]);
  assert.deepEqual(list('127.0.0.1:1, 127.0.0.1:2'), [['127.0.0.1:1', '127.0.0.1:2'], true]);
  assert.deepEqual(list(['127.0.0.1:1', '127.0.0.1:2']), [['127.0.0.1:1', '127.0.0.1:2'], true]);
  assert.throws(() => new QuotaBrokerClient('127.0.0.1:1,,127.0.0.1:2'), /empty address/);
  assert.throws(() => new QuotaBrokerClient('127.0.0.1:1,127.0.0.1:1'), /an address twice/);
});

test('no replica serving: UNAVAILABLE naming the leader, within the deadline', async (t) => {
  const standby = await startStandby('127.0.0.1:1');
  t.after(() => standby.server.forceShutdown());
  const dead = await deadAddress();
  const qb = new QuotaBrokerClient([dead, standby.addr], { timeoutMs: 500 });
  t.after(() => qb.close());
  const start = Date.now();
  await assert.rejects(
    qb.acquireLease({ modelId: HAIKU3, maxOutputTokens: 10 }),
    (err) => (err.code === grpc.status.UNAVAILABLE && /the leader is 127\.0\.0\.1:1/.test(err.details)) ||
      err.code === grpc.status.DEADLINE_EXCEEDED,
  );
  const took = Date.now() - start;
  assert.ok(took <= 500 + 300, `gave up after ${took}ms, deadline 500ms`);
  assert.ok(standby.calls >= 2, `the standby saw ${standby.calls} calls: the client went round more than once`);
});

test('failover: a dead replica and a standby before the leader', { skip: ADDR ? false : 'QUOTA_BROKER_ADDR is not set (bash clients/test.sh sets it)' }, async (t) => {
  const standby = await startStandby(ADDR);
  t.after(() => standby.server.forceShutdown());
  const dead = await deadAddress();

  // Without failover the standby's answer is the caller's error, and names the leader.
  const plain = new QuotaBrokerClient(standby.addr, { clientName: 'node-failover-test' });
  t.after(() => plain.close());
  await assert.rejects(
    plain.acquireLease({ modelId: SONNET, region: REGION, maxOutputTokens: 10 }),
    (err) => err.code === grpc.status.UNAVAILABLE && err.details.includes(`the leader is ${ADDR}`),
  );
  assert.equal(standby.calls, 1);

  // With the three addresses, calls pass the dead one and the standby and
  // stay on the leader.
  const qb = new QuotaBrokerClient(`${dead},${standby.addr},${ADDR}`, { clientName: 'node-failover-test', timeoutMs: 10000 });
  t.after(() => qb.close());
  for (let i = 0; i < 3; i++) {
    const { lease } = await qb.acquireLease({ modelId: SONNET, region: REGION, inputTokens: 10, maxOutputTokens: 10, waitMs: 1000 });
    const done = await qb.completeLease({ leaseId: lease.leaseId, outcome: 'OUTCOME_SUCCESS', usage: { inputTokens: 10, outputTokens: 5 } });
    assert.equal(done.alreadyCompleted, false);
  }
  assert.equal(qb.addresses[qb.current], ADDR, 'calls stay on the replica that answered');
  assert.equal(standby.calls, 2, 'the standby was asked once by the failover client, then never again');
});
