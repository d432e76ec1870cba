"""Tests of the Python client against a real broker (pytest).

QUOTA_BROKER_ADDR (host:port) names the broker; bash clients/test.sh starts one
with budgets in QUOTA_BROKER_TEST_REGION (default us-east-2) for
  us.anthropic.claude-sonnet-4-5-20250929-v1:0   (output burndown 5)
  anthropic.claude-3-haiku-20240307-v1:0         (burndown 1, rpm 2 at margin 1)
and nothing else uses those budgets while these tests run. The stubs come from
clients/python/generate.sh (QUOTA_BROKER_PY_GEN names where they are).
"""

import os
import socket
import threading
import time

import grpc
import pytest

from quotabroker_client import (
    CLIENT_HEADER,
    ERROR_DOMAIN,
    STATUS_DETAILS_KEY,
    QuotaBrokerClient,
    Refusal,
    error_details_pb2,
    pb,
    status_pb2,
)

ADDR = os.environ.get("QUOTA_BROKER_ADDR")
REGION = os.environ.get("QUOTA_BROKER_TEST_REGION", "us-east-2")
SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
SONNET_BASE = "anthropic.claude-sonnet-4-5-20250929-v1:0"
HAIKU3 = "anthropic.claude-3-haiku-20240307-v1:0"

needs_broker = pytest.mark.skipif(not ADDR, reason="QUOTA_BROKER_ADDR is not set (bash clients/test.sh sets it)")


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, trailers):
        self._code, self._trailers = code, trailers

    def code(self):
        return self._code

    def trailing_metadata(self):
        return self._trailers


def test_refusal_from_status_details_offline():
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromMilliseconds(2500)
    info = error_details_pb2.ErrorInfo(reason="LIMIT_TPM", domain=ERROR_DOMAIN, metadata={"limit": "TPM"})
    st = status_pb2.Status(code=8, message="no capacity")
    st.details.add().Pack(retry)
    st.details.add().Pack(info)
    trailers = ((STATUS_DETAILS_KEY, st.SerializeToString()),)

    r = Refusal.from_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, trailers))
    assert r == Refusal(retry_delay=2.5, reason="LIMIT_TPM", domain=ERROR_DOMAIN,
                        metadata={"limit": "TPM"}, message="no capacity")
    assert Refusal.from_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, trailers)) is None
    assert Refusal.from_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, ())) is None
    assert CLIENT_HEADER == "x-quotabroker-client"


@pytest.fixture(scope="module")
def qb():
    with QuotaBrokerClient(ADDR, client_name="python-client-test") as c:
        yield c


def sonnet_report(qb):
    rep = qb.get_quota_report(region=REGION, model=SONNET_BASE)
    for b in rep.budgets:
        if b.budget.key.model == SONNET_BASE and b.budget.key.scope == pb.SCOPE_CROSS_REGION:
            return b
    pytest.fail(f"no Sonnet 4.5 cross-region budget in {REGION}: {rep}")


@needs_broker
def test_acquire_complete_twice_and_report(qb):
    before = sonnet_report(qb)
    res = qb.acquire_lease(SONNET, region=REGION, input_tokens=1200, max_output_tokens=1024,
                           priority="PRIORITY_INTERACTIVE", wait=5.0)
    lease = res.lease
    assert lease.lease_id
    assert lease.reserved_tokens == 1200 + 1024 * 5
    assert lease.output_burndown == 5
    assert lease.max_output_tokens == 1024
    assert lease.budget == pb.BudgetKey(region=REGION, scope=pb.SCOPE_CROSS_REGION, model=SONNET_BASE)
    assert lease.expires_at.ToDatetime() > lease.granted_at.ToDatetime()

    done = qb.complete_lease(lease.lease_id, "OUTCOME_SUCCESS", input_tokens=1180, output_tokens=312)
    assert (done.already_completed, done.charged_tokens, done.returned_tokens) == (False, 1180 + 312 * 5, 6320 - 2740)

    again = qb.complete_lease(lease.lease_id, "OUTCOME_SUCCESS", input_tokens=1180, output_tokens=312)
    assert again.already_completed is True

    after = sonnet_report(qb)
    delta = {f: getattr(after.counters, f) - getattr(before.counters, f)
             for f in ("granted", "completed", "reserved_tokens", "settled_tokens", "returned_tokens")}
    assert delta == {"granted": 1, "completed": 1, "reserved_tokens": 6320,
                     "settled_tokens": 2740, "returned_tokens": 3580}
    assert after.usage.requests_last_minute - before.usage.requests_last_minute == 1
    assert after.usage.tokens_last_minute - before.usage.tokens_last_minute == 2740
    assert after.budget.output_burndown == 5
    assert after.outstanding_leases == before.outstanding_leases


@needs_broker
def test_haiku_burndown_then_refusal_with_retry_info(qb):
    lease = qb.acquire_lease(HAIKU3, region=REGION, input_tokens=100, max_output_tokens=1000).lease
    assert lease.reserved_tokens == 100 + 1000 * 1
    assert lease.output_burndown == 1
    done = qb.complete_lease(lease.lease_id, input_tokens=90, output_tokens=200)
    assert (done.already_completed, done.charged_tokens, done.returned_tokens) == (False, 290, 810)

    # The budget allows 2 requests a minute: ask (without waiting) until refused.
    refusal = None
    for _ in range(5):
        try:
            r = qb.acquire_lease(HAIKU3, region=REGION, input_tokens=10, max_output_tokens=10)
            # (A cancelled call would give its request back: settle as a real one.)
            qb.complete_lease(r.lease.lease_id, input_tokens=10, output_tokens=1)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert any(k == STATUS_DETAILS_KEY for k, _ in err.trailing_metadata())
            refusal = Refusal.from_error(err)
            break
    assert refusal is not None, "refused within 5 requests"
    assert 0 < refusal.retry_delay <= 61
    assert refusal.reason == "LIMIT_RPM"
    assert refusal.domain == ERROR_DOMAIN
    assert refusal.metadata["limit"] == "RPM"
    assert refusal.metadata["model"] == HAIKU3
    assert refusal.metadata["region"] == REGION

    rep = qb.get_quota_report(region=REGION, model=HAIKU3)
    assert len(rep.budgets) == 1
    assert rep.budgets[0].counters.refused >= 1


ROUTE = os.environ.get("QUOTA_BROKER_TEST_ROUTE", "")
ROUTE_REGIONS = os.environ.get("QUOTA_BROKER_TEST_ROUTE_REGIONS", "").split(",")


@needs_broker
@pytest.mark.skipif(not ROUTE, reason="QUOTA_BROKER_TEST_ROUTE is not set")
def test_route_grants_on_first_target_with_room(qb):
    # The route's first target allows one request a minute, its second 100.
    where = []
    for _ in range(2):
        res = qb.acquire_lease(route=ROUTE, affinity_key="py-conv", input_tokens=100, max_output_tokens=100)
        where.append((res.lease.region, res.lease.model_id, pb.RouteReason.Name(res.route.reason), res.route.target_index))
        qb.complete_lease(res.lease.lease_id, input_tokens=100, output_tokens=10)
    model = "eu." + SONNET_BASE
    assert where == [(ROUTE_REGIONS[0], model, "ROUTE_REASON_ROOM", 0),
                     (ROUTE_REGIONS[1], model, "ROUTE_REASON_SPILL", 1)]
    routes = {r.name: r for r in qb.get_quota_report().routes}
    assert routes[ROUTE].targets[0].room == 1
    assert routes[ROUTE].targets[1].spill == 1


@needs_broker
def test_unknown_model_is_not_found(qb):
    with pytest.raises(grpc.RpcError) as ei:
        qb.acquire_lease("anthropic.no-such-model-v1:0", region=REGION, max_output_tokens=10)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    assert Refusal.from_error(ei.value) is None


@needs_broker
def test_unknown_lease_is_not_found(qb):
    with pytest.raises(grpc.RpcError) as ei:
        qb.complete_lease("no-such-lease")
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND


class Standby:
    """A cluster's standby, as the broker runs one: every QuotaBroker call is answered
    UNAVAILABLE with a message naming the leader. It counts the calls."""

    def __init__(self, leader: str):
        import concurrent.futures

        self.calls = 0
        self._lock = threading.Lock()

        def refuse(_request, context):
            with self._lock:
                self.calls += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, f"this replica is a standby; the leader is {leader}")

        # grpc.health.v1.Health by hand (no grpcio-health-checking package needed): a
        # HealthCheckResponse is one field, status = 2 (NOT_SERVING): bytes 08 02.
        not_serving = b"\x08\x02"

        def check(_request, _context):
            return not_serving

        def watch(_request, context):
            yield not_serving
            ended = threading.Event()  # the client went away, or stop() cancelled the call
            context.add_callback(ended.set)
            ended.wait()

        methods = pb.DESCRIPTOR.services_by_name["QuotaBroker"].methods_by_name
        handler = grpc.method_handlers_generic_handler(
            "quotabroker.v1.QuotaBroker", {name: grpc.unary_unary_rpc_method_handler(refuse) for name in methods})
        health = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(check),
            "Watch": grpc.unary_stream_rpc_method_handler(watch),
        })
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8), handlers=(handler, health))
        self.addr = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def stop(self):
        self.server.stop(None)


def dead_address() -> str:
    """An address where nothing listens (a replica that is down): a port bound and released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_address_lists():
    for address, want in [("127.0.0.1:1", (["127.0.0.1:1"], False)),
                          ("127.0.0.1:1, 127.0.0.1:2", (["127.0.0.1:1", "127.0.0.1:2"], True)),
                          (["127.0.0.1:1", "127.0.0.1:2"], (["127.0.0.1:1", "127.0.0.1:2"], True))]:
        with QuotaBrokerClient(address) as c:
            assert (c.addresses, c.failover) == want
    with pytest.raises(ValueError, match="empty address"):
        QuotaBrokerClient("127.0.0.1:1,,127.0.0.1:2")
    with pytest.raises(ValueError, match="an address twice"):
        QuotaBrokerClient("127.0.0.1:1,127.0.0.1:1")


def test_no_replica_serving_gives_up_within_the_deadline():
    standby = Standby("127.0.0.1:1")
    try:
        with QuotaBrokerClient([dead_address(), standby.addr], timeout=0.5) as c:
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as exc:
                c.acquire_lease(HAIKU3, max_output_tokens=10)
            took = time.monotonic() - start
        err = exc.value
        assert (err.code() == grpc.StatusCode.UNAVAILABLE and "the leader is 127.0.0.1:1" in err.details()) or \
            err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
        assert took <= 0.5 + 0.3, f"gave up after {took:.3f}s, deadline 0.5s"
        assert standby.calls >= 2, f"the standby saw {standby.calls} calls: the client went round more than once"
    finally:
        standby.stop()


@needs_broker
def test_failover_past_a_dead_replica_and_a_standby():
    standby = Standby(ADDR)
    try:
        # Without failover the standby's answer is the caller's error, and names the leader.
        with QuotaBrokerClient(standby.addr, client_name="py-failover-test") as plain:
            with pytest.raises(grpc.RpcError) as exc:
                plain.acquire_lease(SONNET, region=REGION, max_output_tokens=10)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"the leader is {ADDR}" in exc.value.details()
        assert standby.calls == 1

        # With the three addresses, calls pass the dead one and the standby and stay on the leader.
        with QuotaBrokerClient(f"{dead_address()},{standby.addr},{ADDR}", client_name="py-failover-test",
                               timeout=10.0) as c:
            for _ in range(3):
                lease = c.acquire_lease(SONNET, region=REGION, input_tokens=10, max_output_tokens=10, wait=1.0).lease
                done = c.complete_lease(lease.lease_id, input_tokens=10, output_tokens=5)
                assert not done.already_completed
            assert c.addresses[c.current] == ADDR, "calls stay on the replica that answered"
        assert standby.calls == 2, "the standby was asked once by the failover client, then never again"
    finally:
        standby.stop()


@needs_broker
def test_resolver_target_calls_only_the_serving_replica():
    standby = Standby(ADDR)
    try:
        # One channel over both, with client-side health checking: the standby reports
        # NOT_SERVING, so no call reaches it (round_robin alone would send it every other one).
        with QuotaBrokerClient(f"ipv4:{standby.addr},{ADDR}", client_name="py-failover-test", timeout=10.0) as c:
            assert c.failover
            for _ in range(6):
                lease = c.acquire_lease(SONNET, region=REGION, input_tokens=10, max_output_tokens=10, wait=1.0).lease
                c.complete_lease(lease.lease_id, input_tokens=10, output_tokens=5)
        assert standby.calls == 0, f"the NOT_SERVING standby received {standby.calls} calls"
    finally:
        standby.stop()
