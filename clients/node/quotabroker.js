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

/**
 * A QuotaBroker client. Every call carries the x-quotabroker-client header.
 *
 *   const qb = new QuotaBrokerClient('127.0.0.1:50051', { clientName: 'checkout-svc' });
 *   const { lease } = await qb.acquireLease({ modelId, inputTokens: 1200, maxOutputTokens: 1024, waitMs: 5000 });
 *   ... call Bedrock ...
 *   await qb.completeLease({ leaseId: lease.leaseId, outcome: 'OUTCOME_SUCCESS', usage: { inputTokens, outputTokens } });
 */
class QuotaBrokerClient {
  /**
   * @param {string} address host:port of the broker
   * @param {object} [opts]
   * @param {string} [opts.clientName] value of the x-quotabroker-client header
   * @param {grpc.ChannelCredentials} [opts.credentials] default: insecure (plaintext)
   * @param {number} [opts.timeoutMs] default RPC deadline, added to an acquire's wait (default 30s)
   */
  constructor(address, opts = {}) {
    const Service = loadService();
    this.stub = new Service(address, opts.credentials || grpc.credentials.createInsecure());
    this.clientName = opts.clientName || '';
    this.timeoutMs = opts.timeoutMs || 30000;
  }

  _call(method, request, timeoutMs) {
    const md = new grpc.Metadata();
    if (this.clientName) md.set(CLIENT_HEADER, this.clientName);
    const deadline = new Date(Date.now() + (timeoutMs || this.timeoutMs));
    return new Promise((resolve, reject) => {
      this.stub[method](request, md, { deadline }, (err, res) => (err ? reject(err) : resolve(res)));
    });
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
    const request = { ...rest, wait: durationFromMs(waitMs) };
    return this._call('AcquireLease', request, waitMs + this.timeoutMs);
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
    this.stub.close();
  }
}

module.exports = {
  QuotaBrokerClient,
  CLIENT_HEADER,
  ERROR_DOMAIN,
  decodeStatus,
  decodeStatusDetails,
  refusalFromError,
  durationToMs,
  grpc,
};
