"""Python client for the Bedrock Quota Broker (quotabroker.v1), on grpcio.

The message and stub modules are generated from the repository's proto, never
committed: ``bash clients/python/generate.sh [OUTDIR]`` writes them (default
``clients/python/_gen``, gitignored). This module finds them on ``sys.path``,
else in ``$QUOTA_BROKER_PY_GEN``, else in ``_gen`` next to this file.

    from quotabroker_client import QuotaBrokerClient, Refusal

    with QuotaBrokerClient("127.0.0.1:50051", client_name="checkout-svc") as qb:
        lease = qb.acquire_lease("us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                                 input_tokens=1200, max_output_tokens=1024, wait=5.0).lease
        ...  # call Bedrock
        qb.complete_lease(lease.lease_id, input_tokens=1180, output_tokens=312)

A broker cluster: ``QuotaBrokerClient("broker-1:50051,broker-2:50051,broker-3:50051")`` sends
calls to the replica that answers and moves on to the next on UNAVAILABLE (a standby, a replica
that is down), within each call's deadline (see QuotaBrokerClient).

A refusal raises grpc.RpcError with code RESOURCE_EXHAUSTED; ``Refusal.from_error``
reads its google.rpc.RetryInfo and google.rpc.ErrorInfo.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import sys
import threading
import time
from typing import Dict, List, Optional

import grpc


def _import_stubs():
    try:
        from quotabroker.v1 import broker_pb2, broker_pb2_grpc  # noqa: F401
        from google.rpc import error_details_pb2, status_pb2  # noqa: F401
    except ImportError:
        here = os.path.dirname(os.path.abspath(__file__))
        for d in (os.environ.get("QUOTA_BROKER_PY_GEN"), os.path.join(here, "_gen")):
            if d and os.path.isdir(d) and d not in sys.path:
                sys.path.insert(0, d)
        try:
            from quotabroker.v1 import broker_pb2, broker_pb2_grpc  # noqa: F401,F811
            from google.rpc import error_details_pb2, status_pb2  # noqa: F401,F811
        except ImportError as e:
            raise ImportError(
                "quotabroker.v1 / google.rpc stubs not found: run "
                "`bash clients/python/generate.sh` (or set QUOTA_BROKER_PY_GEN) first"
            ) from e
    return broker_pb2, broker_pb2_grpc, status_pb2, error_details_pb2


pb, pb_grpc, status_pb2, error_details_pb2 = _import_stubs()

CLIENT_HEADER = "x-quotabroker-client"
ERROR_DOMAIN = "quotabroker.v1"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclasses.dataclass
class Refusal:
    """What a RESOURCE_EXHAUSTED refusal says."""

    retry_delay: float  # seconds, from google.rpc.RetryInfo
    reason: str  # google.rpc.ErrorInfo.reason: LIMIT_RPM, LIMIT_TPM, LIMIT_TPD, LIMIT_CONCURRENCY
    domain: str
    metadata: Dict[str, str]
    message: str

    @classmethod
    def from_error(cls, err: grpc.RpcError) -> Optional["Refusal"]:
        """The refusal in err, or None when err is not a RESOURCE_EXHAUSTED with details."""
        if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            return None
        status = status_from_error(err)
        if status is None:
            return None
        retry = error_details_pb2.RetryInfo()
        info = error_details_pb2.ErrorInfo()
        has_retry = has_info = False
        for any_ in status.details:
            if any_.Is(retry.DESCRIPTOR):
                has_retry = any_.Unpack(retry)
            elif any_.Is(info.DESCRIPTOR):
                has_info = any_.Unpack(info)
        return cls(
            retry_delay=retry.retry_delay.ToTimedelta().total_seconds() if has_retry else 0.0,
            reason=info.reason if has_info else "",
            domain=info.domain if has_info else "",
            metadata=dict(info.metadata) if has_info else {},
            message=status.message,
        )


def status_from_error(err: grpc.RpcError):
    """The google.rpc.Status in err's grpc-status-details-bin trailer, or None."""
    for key, value in err.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return None


FAILOVER_BASE = 0.02  # seconds: full-jitter backoff after a round of the replicas, doubling...
FAILOVER_CAP = 1.0  # ...up to this


# A channel over several addresses that a gRPC resolver lists ("dns:///brokers:50051",
# "ipv4:10.0.0.1:50051,10.0.0.2:50051") picks only the replicas whose standard health service
# reports SERVING for the QuotaBroker service: gRPC C-core's client-side health checking under
# round_robin. (A list of host names has no such resolver: one channel each, see _call.)
SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": "quotabroker.v1.QuotaBroker"},
})
_RESOLVER_TARGET = re.compile(r"^(dns|ipv4|ipv6|unix|unix-abstract):")


def parse_addresses(address) -> List[str]:
    """The addresses of 'h:p', 'h1:p,h2:p' or ['h1:p', 'h2:p']."""
    items = address.split(",") if isinstance(address, str) else list(address)
    addrs = [a.strip() for a in items]
    if not addrs or any(not a for a in addrs):
        raise ValueError(f"broker addresses {address!r}: an empty address in the list")
    if len(set(addrs)) != len(addrs):
        raise ValueError(f"broker addresses {address!r}: an address twice")
    return addrs


class QuotaBrokerClient:
    """A QuotaBroker client; every call carries the x-quotabroker-client header.

    Messages are the generated protobuf classes (``pb``): leases have
    ``lease_id``, ``reserved_tokens``, ... Enums may be given by name
    (``"PRIORITY_INTERACTIVE"``, ``"OUTCOME_SUCCESS"``) or value.

    A broker cluster: give every replica's address (``"broker-1:50051,broker-2:50051,broker-3:50051"``
    or a list). The client keeps one channel per replica and sends calls to the one that last
    answered; a call answered UNAVAILABLE (a standby, whose message names the leader; a replica
    that is down; a leader stepping down) moves on to the next replica at once, and after a whole
    round without an answer it backs off (full jitter, 20 ms doubling to 1 s) and goes round again,
    until the call's deadline (an acquire's wait + timeout, else timeout). A retried acquire asks
    the broker to queue only for what is left of its wait; completing and renewing are idempotent,
    so their retries are safe. ``failover`` defaults to True with several addresses.

    A gRPC resolver target instead (``"dns:///brokers.internal:50051"``, or
    ``"ipv4:10.0.0.1:50051,10.0.0.2:50051,10.0.0.3:50051"``) makes one channel over every address
    it lists, with client-side health checking (SERVICE_CONFIG): calls go only to the replica whose
    health reports SERVING, and an UNAVAILABLE is retried on the same channel as above.
    """

    def __init__(self, address, client_name: str = "", channel: Optional[grpc.Channel] = None,
                 timeout: float = 30.0, failover: Optional[bool] = None,
                 credentials: Optional[grpc.ChannelCredentials] = None):
        if channel is not None:
            self.addresses = [address]
            self._channels = [channel]
        elif isinstance(address, str) and _RESOLVER_TARGET.match(address.strip()):
            self.addresses = [address.strip()]
            options = [("grpc.service_config", SERVICE_CONFIG)]
            self._channels = [grpc.secure_channel(self.addresses[0], credentials, options) if credentials
                              else grpc.insecure_channel(self.addresses[0], options)]
            if failover is None:
                failover = True  # several replicas behind one channel
        else:
            self.addresses = parse_addresses(address)
            self._channels = [grpc.secure_channel(a, credentials) if credentials else grpc.insecure_channel(a)
                              for a in self.addresses]
        self._stubs = [pb_grpc.QuotaBrokerStub(c) for c in self._channels]
        self.current = 0  # the replica calls go to first: the last one that answered
        self._lock = threading.Lock()  # guards current
        self.failover = len(self._stubs) > 1 if failover is None else failover
        self._metadata = ((CLIENT_HEADER, client_name),) if client_name else ()
        self.timeout = timeout

    def _call(self, method: str, request, timeout: float, wait: float = 0.0):
        """One call with failover; request is the message, or a function of the seconds left of
        wait that builds it (a retried acquire queues only for the rest of its wait)."""
        start = time.monotonic()
        deadline = start + timeout
        build = request if callable(request) else (lambda _left: request)
        backoff = FAILOVER_BASE
        failed = 0  # replicas that answered UNAVAILABLE in this round
        while True:
            with self._lock:
                i = self.current
            now = time.monotonic()
            try:
                return getattr(self._stubs[i], method)(build(max(0.0, start + wait - now)),
                                                       metadata=self._metadata, timeout=max(0.0, deadline - now))
            except grpc.RpcError as err:
                if not self.failover or err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                with self._lock:
                    if self.current == i:  # unless another call moved on already
                        self.current = (i + 1) % len(self._stubs)
                failed += 1
                if failed < len(self._stubs):
                    continue
                failed = 0
                sleep = 0.001 + random.random() * backoff
                if time.monotonic() + sleep >= deadline:
                    raise  # the last replica's answer
                time.sleep(sleep)
                backoff = min(2 * backoff, FAILOVER_CAP)

    def close(self):
        for c in self._channels:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def acquire_lease(self, model_id: str = "", *, region: str = "", input_tokens: int = 0,
                      max_output_tokens: int = 0, cache_write_tokens: int = 0,
                      priority="PRIORITY_UNSPECIFIED", wait: float = 0.0,
                      route: str = "", affinity_key: str = ""):
        """AcquireLease; wait is seconds the caller will queue for capacity.

        Name a model (model_id, region) or a route (route, affinity_key). Call Bedrock
        in lease.region with lease.model_id: for a route, the target granted (the
        response's route field says which and why).

        Returns AcquireLeaseResponse; raises grpc.RpcError (see Refusal.from_error)."""
        def build(left: float):
            req = pb.AcquireLeaseRequest(
                model_id=model_id, region=region, input_tokens=input_tokens,
                max_output_tokens=max_output_tokens, cache_write_tokens=cache_write_tokens,
                priority=priority, route=route, affinity_key=affinity_key,
            )
            req.wait.FromNanoseconds(int(left * 1e9))
            return req

        return self._call("AcquireLease", build, wait + self.timeout, wait)

    def complete_lease(self, lease_id: str, outcome="OUTCOME_SUCCESS", *, input_tokens: int = 0,
                       output_tokens: int = 0, cache_read_input_tokens: int = 0,
                       cache_write_input_tokens: int = 0):
        """CompleteLease with the usage Bedrock reported; returns CompleteLeaseResponse."""
        req = pb.CompleteLeaseRequest(
            lease_id=lease_id, outcome=outcome,
            usage=pb.Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                           cache_read_input_tokens=cache_read_input_tokens,
                           cache_write_input_tokens=cache_write_input_tokens),
        )
        return self._call("CompleteLease", req, self.timeout)

    def renew_lease(self, lease_id: str, extend: float = 0.0):
        req = pb.RenewLeaseRequest(lease_id=lease_id)
        req.extend.FromNanoseconds(int(extend * 1e9))
        return self._call("RenewLease", req, self.timeout)

    def get_quota_report(self, *, region: str = "", model: str = ""):
        """GetQuotaReport, optionally filtered; returns GetQuotaReportResponse."""
        return self._call("GetQuotaReport", pb.GetQuotaReportRequest(region=region, model=model), self.timeout)

    def list_budgets(self):
        return self._call("ListBudgets", pb.ListBudgetsRequest(), self.timeout)
