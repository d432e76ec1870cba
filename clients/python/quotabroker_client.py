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

A refusal raises grpc.RpcError with code RESOURCE_EXHAUSTED; ``Refusal.from_error``
reads its google.rpc.RetryInfo and google.rpc.ErrorInfo.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Dict, Optional

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


class QuotaBrokerClient:
    """A QuotaBroker client; every call carries the x-quotabroker-client header.

    Messages are the generated protobuf classes (``pb``): leases have
    ``lease_id``, ``reserved_tokens``, ... Enums may be given by name
    (``"PRIORITY_INTERACTIVE"``, ``"OUTCOME_SUCCESS"``) or value.
    """

    def __init__(self, address: str, client_name: str = "", channel: Optional[grpc.Channel] = None,
                 timeout: float = 30.0):
        self._channel = channel or grpc.insecure_channel(address)
        self._stub = pb_grpc.QuotaBrokerStub(self._channel)
        self._metadata = ((CLIENT_HEADER, client_name),) if client_name else ()
        self.timeout = timeout

    def close(self):
        self._channel.close()

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
        req = pb.AcquireLeaseRequest(
            model_id=model_id, region=region, input_tokens=input_tokens,
            max_output_tokens=max_output_tokens, cache_write_tokens=cache_write_tokens,
            priority=priority, route=route, affinity_key=affinity_key,
        )
        req.wait.FromNanoseconds(int(wait * 1e9))
        return self._stub.AcquireLease(req, metadata=self._metadata, timeout=wait + self.timeout)

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
        return self._stub.CompleteLease(req, metadata=self._metadata, timeout=self.timeout)

    def renew_lease(self, lease_id: str, extend: float = 0.0):
        req = pb.RenewLeaseRequest(lease_id=lease_id)
        req.extend.FromNanoseconds(int(extend * 1e9))
        return self._stub.RenewLease(req, metadata=self._metadata, timeout=self.timeout)

    def get_quota_report(self, *, region: str = "", model: str = ""):
        """GetQuotaReport, optionally filtered; returns GetQuotaReportResponse."""
        return self._stub.GetQuotaReport(pb.GetQuotaReportRequest(region=region, model=model),
                                         metadata=self._metadata, timeout=self.timeout)

    def list_budgets(self):
        return self._stub.ListBudgets(pb.ListBudgetsRequest(), metadata=self._metadata,
                                      timeout=self.timeout)
