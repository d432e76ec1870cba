'use strict';
// Node.js client for the Bedrock Quota Broker (quotabroker.v1).
//
// The service definition is loaded at runtime from the repository's proto
// (proto/quotabroker/v1/broker.proto) with @grpc/proto-loader, so there is no
// generated code to keep in step with the proto. Refusal details (the
// grpc-status-details-bin trailer, a google.rpc.Status) are decoded with
// protobufjs from the google/rpc protos vendored in clients/proto-deps.
//
// Conventions of the loaded messages (proto-loader options below):
//   - field names are lowerCamelCase (leaseId, reservedTokens, ...);
//   - int64 fields are JavaScript numbers (token counts stay far below 2^53);
//   - enums are their names ('PRIORITY_INTERACTIVE', 'OUTCOME_SUCCESS', ...);
//   - unset scalars are filled with their defaults (alreadyCompleted: false).

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const PROTO_DIR = process.env.QUOTA_BROKER_PROTO_DIR || path.join(REPO_ROOT, 'proto');
const PROTO_DEPS_DIR = path.join(REPO_ROOT, 'clients', 'proto-deps');

/** The gRPC metadata header that names the calling client (fairness, accounting). */
const CLIENT_HEADER = 'x-quotabroker-client';
/** The google.rpc.ErrorInfo domain of the broker's errors. */
const ERROR_DOMAIN = 'quotabroker.v1';

const LOADER_OPTIONS = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

let cachedService;
function loadService() {
  if (!cachedService) {
    const def = protoLoader.loadSync('quotabroker/v1/broker.proto', LOADER_OPTIONS);
    cachedService = grpc.loadPackageDefinition(def).quotabroker.v1.QuotaBroker;
  }
  return cachedService;
}

let cachedRpcRoot;
function rpcRoot() {
  if (!cachedRpcRoot) {
    const root = new protobuf.Root();
    // Resolve google/rpc/* from the vendored protos; google/protobuf/* are
    // protobufjs's built-in well-known types.
    root.resolvePath = (origin, target) =>
      target.startsWith('google/rpc/') ? path.join(PROTO_DEPS_DIR, target) : protobuf.util.path.resolve(origin, target);
    root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: false });
    root.resolveAll();
    cachedRpcRoot = root;
  }
  return cachedRpcRoot;
}

function durationFromMs(ms) {
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

/** Milliseconds of a google.protobuf.Duration (as loaded here or by protobufjs). */
function durationToMs(d) {
  if (!d) return 0;
  return Number(d.seconds || 0) * 1000 + Number(d.nanos || 0) / 1e6;
}

/**
 * Decodes the google.rpc.Status in a gRPC error's grpc-status-details-bin
 * trailer. Returns {code, message, details: [{type, value}]} where type is the
 * full message name (e.g. 'google.rpc.RetryInfo') and value the decoded
 * message as a plain object, or null when the error carries no details.
 */
function decodeStatusDetails(err) {
  const raw = err && err.metadata && err.metadata.get('grpc-status-details-bin');
  if (!raw || raw.length === 0) return null;
  return decodeStatus(Buffer.isBuffer(raw[0]) ? raw[0] : Buffer.from(raw[0], 'base64'));
}

/** Decodes serialized google.rpc.Status bytes; see decodeStatusDetails. */
function decodeStatus(bytes) {
  const root = rpcRoot();
  const Status = root.lookupType('google.rpc.Status');
  const status = Status.decode(bytes);
  const details = (status.details || []).map((any) => {
    // protobufjs's bundled google.protobuf.Any keeps the proto field name.
    const typeUrl = any.type_url !== undefined ? any.type_url : any.typeUrl;
    const type = typeUrl.slice(typeUrl.lastIndexOf('/') + 1);
    let T;
    try {
      T = root.lookupType(type);
    } catch {
      return { type, value: null, raw: Buffer.from(any.value) };
    }
    return { type, value: T.toObject(T.decode(any.value), { longs: Number, enums: String, defaults: true }) };
  });
  return { code: status.code, message: status.message, details };
}

/**
 * What a RESOURCE_EXHAUSTED refusal says: how long to wait before retrying
 * (google.rpc.RetryInfo) and which limit blocked (google.rpc.ErrorInfo).
 * Returns null for any other error.
 *   { retryDelayMs, reason, domain, metadata, message }
 */
function refusalFromError(err) {
  if (!err || err.code !== grpc.status.RESOURCE_EXHAUSTED) return null;
  const status = decodeStatusDetails(err);
  if (!status) return null;
  const retry = status.details.find((d) => d.type === 'google.rpc.RetryInfo');
  const info = status.details.find((d) => d.type === 'google.rpc.ErrorInfo');
  return {
    retryDelayMs: retry ? durationToMs(retry.value.retryDelay) : null,
    reason: info ? info.value.reason : '',
    domain: info ? info.value.domain : '',
    metadata: info ? info.value.metadata : {},
    message: status.message,
  };
}

/** Failover backoff (milliseconds): full jitter, doubling from BASE to CAP after each round of the replicas. */
const FAILOVER_BASE_MS = 20;
const FAILOVER_CAP_MS = 1000;

/** The addresses of a constructor's address argument: 'h:p', 'h1:p,h2:p' or ['h1:p', 'h2:p']. */
function parseAddresses(address) {
  const list = (Array.isArray(address) ? address : String(address).split(',')).map((a) => String(a).trim());
  if (list.length === 0 || list.some((a) => a === '')) {
    throw new Error(`quotabroker: broker addresses ${JSON.stringify(address)}: an empty address in the list`);
  }
  if (new Set(list).size !== list.length) {
    throw new Error(`quotabroker: broker addresses ${JSON.stringify(address)}: an address twice`);
  }
  return list;
}

/**
 * A QuotaBroker client. Every call carries the x-quotabroker-client header.
 *
 *   const qb = new QuotaBrokerClient('127.0.0.1:50051', { clientName: 'checkout-svc' });
 *   const { lease } = await qb.acquireLease({ modelId, inputTokens: 1200, maxOutputTokens: 1024, waitMs: 5000 });
 *   ... call Bedrock ...
 *   await qb.completeLease({ leaseId: lease.leaseId, outcome: 'OUTCOME_SUCCESS', usage: { inputTokens, outputTokens } });
 *
 * A broker cluster: give every replica's address ('broker-1:50051,broker-2:50051,broker-3:50051'
 * or an array). The client keeps one channel per replica and sends calls to the one that last
 * answered; a call answered UNAVAILABLE (a standby, which names the leader in its message; a
 * replica that is down; a leader stepping down) moves on to the next replica at once, and after
 * a whole round without an answer it backs off (full jitter, 20 ms doubling to 1 s) and goes
 * round again, until the call's deadline (an acquire's waitMs + timeoutMs, else timeoutMs). A
 * retried acquire asks the broker to queue only for what is left of its waitMs. Completing and
 * renewing are idempotent, so their retries are safe. (No client-side health checking: grpc-js
 * 1.14 does not implement grpc.health.v1 checks, so the first call after a failover may meet a
 * standby and move on.)
 */
class QuotaBrokerClient {
  /**
   * @param {string|string[]} address host:port of the broker, or of every replica of a cluster
   *   (comma-separated, or an array)
   * @param {object} [opts]
   * @param {string} [opts.clientName] value of the x-quotabroker-client header
   * @param {grpc.ChannelCredentials} [opts.credentials] default: insecure (plaintext)
   * @param {number} [opts.timeoutMs] default RPC deadline, added to an acquire's wait (default 30s)
   * @param {boolean} [opts.failover] retry UNAVAILABLE on the other replicas within the deadline
   *   (default: true when there are several addresses; with one address, true retries it)
   */
  constructor(address, opts = {}) {
    const Service = loadService();
    const credentials = opts.credentials || grpc.credentials.createInsecure();
    this.addresses = parseAddresses(address);
    this.stubs = this.addresses.map((a) => new Service(a, credentials));
    this.stub = this.stubs[0];
    this.current = 0; // the replica calls go to first: the last one that answered
    this.failover = opts.failover === undefined ? this.stubs.length > 1 : Boolean(opts.failover);
    this.clientName = opts.clientName || '';
    this.timeoutMs = opts.timeoutMs || 30000;
  }

  _once(stub, method, request, md, deadline) {
    return new Promise((resolve, reject) => {
      stub[method](request, md, { deadline: new Date(deadline) }, (err, res) => (err ? reject(err) : resolve(res)));
    });
  }

  /**
   * One call, with failover: request is the message, or a function of the milliseconds left of
   * waitMs that builds it (so that a retried acquire queues only for the rest of its wait).
   */
  async _call(method, request, timeoutMs, waitMs = 0) {
    const md = new grpc.Metadata();
    if (this.clientName) md.set(CLIENT_HEADER, this.clientName);
    const start = Date.now();
    const deadline = start + (timeoutMs || this.timeoutMs);
    const build = typeof request === 'function' ? request : () => request;
    let backoffMs = FAILOVER_BASE_MS;
    let failed = 0; // replicas that answered UNAVAILABLE in this round
    for (;;) {
      const i = this.current;
      try {
        return await this._once(this.stubs[i], method, build(Math.max(0, start + waitMs - Date.now())), md, deadline);
      } catch (err) {
        if (!this.failover || err.code !== grpc.status.UNAVAILABLE) throw err;
        if (this.current === i) this.current = (i + 1) % this.stubs.length; // unless another call moved on already
        if (++failed < this.stubs.length) continue;
        failed = 0;
        const sleep = 1 + Math.random() * backoffMs;
        if (Date.now() + sleep >= deadline) throw err; // the last replica's answer
        await new Promise((resolve) => setTimeout(resolve, sleep));
        backoffMs = Math.min(2 * backoffMs, FAILOVER_CAP_MS);
      }
    }
  }

  /**
   * AcquireLease. req: { modelId, region?, priority?, inputTokens?, maxOutputTokens?,
   * cacheWriteTokens?, waitMs? }, or { route, affinityKey?, ... } instead of modelId and
   * region. Resolves to { lease, waited, route }: call Bedrock in lease.region with
   * lease.modelId (for a route, the target granted; route says which and why). Rejects
   * with the gRPC error (see refusalFromError for RESOURCE_EXHAUSTED).
   */
  acquireLease(req) {
    const { waitMs = 0, ...rest } = req;
    const request = (leftMs) => ({ ...rest, wait: durationFromMs(leftMs) });
    return this._call('AcquireLease', request, waitMs + this.timeoutMs, waitMs);
  }

  /** CompleteLease. req: { leaseId, outcome, usage: { inputTokens, outputTokens, ... } }. */
  completeLease(req) {
    return this._call('CompleteLease', req);
  }

  /** RenewLease. req: { leaseId, extendMs? }. */
  renewLease({ leaseId, extendMs = 0 }) {
    return this._call('RenewLease', { leaseId, extend: durationFromMs(extendMs) });
  }

  /** GetQuotaReport. filter: { region?, model? }. */
  getQuotaReport(filter = {}) {
    return this._call('GetQuotaReport', filter);
  }

  /** ListBudgets. */
  listBudgets() {
    return this._call('ListBudgets', {});
  }

  close() {
    for (const stub of this.stubs) stub.close();
  }
}

module.exports = {
  QuotaBrokerClient,
  loadService,
  CLIENT_HEADER,
  ERROR_DOMAIN,
  decodeStatus,
  decodeStatusDetails,
  refusalFromError,
  durationToMs,
  grpc,
};
