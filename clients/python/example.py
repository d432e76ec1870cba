"""Example: one Bedrock call's worth of quota through the broker.

    bash clients/python/generate.sh                  # stubs into clients/python/_gen
    /usr/bin/python3 clients/python/example.py [host:port]   # default $QUOTA_BROKER_ADDR or 127.0.0.1:50051

Against the built-in example budgets (go run ./cmd/quota-broker serve) it leases
for Claude Sonnet 4.5, settles the lease, prints the budget's report, then asks
the tiny Claude 3 Haiku budget until it refuses and prints the refusal's retry
delay and reason.

For a broker cluster give every replica: host1:port,host2:port,host3:port. Calls
go to the replica that answers; one answered UNAVAILABLE (a standby naming the
leader, a replica that is down) moves on to the next within the call's deadline.
"""

import os
import sys

import grpc

from quotabroker_client import QuotaBrokerClient, Refusal, pb


def main():
    addr = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("QUOTA_BROKER_ADDR", "127.0.0.1:50051")
    region = os.environ.get("QUOTA_BROKER_REGION", "")  # empty: the broker's default Region
    with QuotaBrokerClient(addr, client_name="python-example") as qb:
        res = qb.acquire_lease("us.anthropic.claude-sonnet-4-5-20250929-v1:0", region=region,
                               input_tokens=1200, max_output_tokens=1024,
                               priority="PRIORITY_INTERACTIVE", wait=5.0)
        lease = res.lease
        print(f"lease {lease.lease_id}: {lease.reserved_tokens} tokens reserved "
              f"(1200 + 1024 x {lease.output_burndown:g}) on {lease.budget.region}/{lease.budget.model}, "
              f"waited {res.waited.ToTimedelta().total_seconds():.3f}s")

        # ... call Bedrock here, then settle with the usage it reported ...
        done = qb.complete_lease(lease.lease_id, "OUTCOME_SUCCESS", input_tokens=1180, output_tokens=312)
        print(f"completed: charged {done.charged_tokens}, returned {done.returned_tokens}")

        for b in qb.get_quota_report(model="sonnet-4-5").budgets:
            k = b.budget.key
            print(f"budget {k.region}/{pb.Scope.Name(k.scope)}/{k.model}: {b.usage.requests_last_minute} req and "
                  f"{b.usage.tokens_last_minute} tokens in the last minute, utilisation {b.utilisation:.4f}")

        # A route (serve --routes): the broker picks the target, the lease says
        # where to call it.
        route = os.environ.get("QUOTA_BROKER_ROUTE", "")
        if route:
            res = qb.acquire_lease(route=route, affinity_key="conversation-42",
                                   input_tokens=1200, max_output_tokens=1024)
            print(f"route {res.route.route}: call {res.lease.model_id} in {res.lease.region} "
                  f"(target {res.route.target_index}, {pb.RouteReason.Name(res.route.reason)})")
            qb.complete_lease(res.lease.lease_id, input_tokens=1180, output_tokens=312)

        # A refusal: RESOURCE_EXHAUSTED with RetryInfo and ErrorInfo.
        for _ in range(5):
            try:
                r = qb.acquire_lease("anthropic.claude-3-haiku-20240307-v1:0", region=region, max_output_tokens=1000)
                qb.complete_lease(r.lease.lease_id, input_tokens=20, output_tokens=50)
                print("claude-3-haiku: granted")
            except grpc.RpcError as err:
                refusal = Refusal.from_error(err)
                if refusal is None:
                    raise
                print(f"claude-3-haiku: refused ({err.code().name}): {refusal.reason}, "
                      f"retry in {refusal.retry_delay:.1f}s; metadata {refusal.metadata}")
                break


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        sys.exit(f"error: {e.code().name}: {e.details()}")
