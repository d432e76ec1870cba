#!/usr/bin/env bash
# Polyglot client tests: the Node and Python clients against one real broker.
#
#   bash clients/test.sh
#
# Installs what is missing (Debian packages for Python's grpcio, protoc and the
# gRPC Python plugin; npm ci in clients/node), generates the Python stubs into a
# temporary directory (with the pinned buf when .bin/buf is installed, as
# .ci/tools.sh does, else with protoc alone: see clients/python/generate.sh;
# CLIENTS_GEN=--buf forces buf, installing it), builds and starts the
# broker on 127.0.0.1 with a temporary state file and small budgets, runs the
# Node tests, the Python tests and both examples against it, then stops the
# broker (SIGTERM, by PID) and exits non-zero if anything failed. The suites'
# failover tests start their own standby replicas (in-process gRPC servers
# answering UNAVAILABLE) and use a released port as a replica that is down,
# in front of this broker as the leader.
# Non-interactive; runs as root or with sudo; Debian/Ubuntu with Node >= 20 and Go.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
PY=/usr/bin/python3 # Debian's Python: python3-grpcio lives there, not in pyenv/venv Pythons
export PYTHONDONTWRITEBYTECODE=1

log() { echo "clients/test.sh: $*" >&2; }

tmp="$(mktemp -d)"
broker_pid=""
cleanup() {
  local rc=$?
  if [[ -n "$broker_pid" ]] && kill -0 "$broker_pid" 2>/dev/null; then
    kill -TERM "$broker_pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$broker_pid" 2>/dev/null; then
      log "broker $broker_pid did not stop on SIGTERM; killing it"
      kill -KILL "$broker_pid" 2>/dev/null || true
    fi
    wait "$broker_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- prerequisites ----------------------------------------------------------
command -v go >/dev/null || { log "go not found"; exit 1; }
command -v node >/dev/null && command -v npm >/dev/null || { log "node and npm (>= 20) are required"; exit 1; }

need_apt=()
[[ -x "$PY" ]] && "$PY" -c 'import grpc, google.protobuf' 2>/dev/null || need_apt+=(python3 python3-grpcio python3-protobuf)
"$PY" -c 'import pytest' 2>/dev/null || need_apt+=(python3-pytest)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v grpc_python_plugin >/dev/null || need_apt+=(protobuf-compiler-grpc)
if ((${#need_apt[@]})); then
  sudo=""; [[ "$(id -u)" == 0 ]] || sudo="sudo"
  log "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

log "npm ci (clients/node)"
(cd clients/node && npm ci --no-audit --no-fund --loglevel=error)

log "generating Python stubs"
bash clients/python/generate.sh ${CLIENTS_GEN:-} "$tmp/pygen"

log "building the broker"
go build -o "$tmp/quota-broker" ./cmd/quota-broker

# --- the broker ---------------------------------------------------------------
# One Region per suite so their counters and windows do not mix:
#   us-west-2 Node tests, us-east-2 Python tests, us-east-1 (the broker's
#   default Region) the examples. Claude 3 Haiku: 2 requests a minute at
#   --margin 1, so the third request within a minute is refused.
cat >"$tmp/budgets.json" <<'EOF'
{"budgets": [
  {"region": "us-west-2", "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "rpm": 100, "tpm": 1000000, "tpd": 100000000},
  {"region": "us-west-2", "model": "anthropic.claude-3-haiku-20240307-v1:0", "rpm": 2, "tpm": 20000},
  {"region": "us-east-2", "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "rpm": 100, "tpm": 1000000, "tpd": 100000000},
  {"region": "us-east-2", "model": "anthropic.claude-3-haiku-20240307-v1:0", "rpm": 2, "tpm": 20000},
  {"region": "us-east-1", "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "rpm": 100, "tpm": 1000000},
  {"region": "us-east-1", "model": "anthropic.claude-3-haiku-20240307-v1:0", "rpm": 2, "tpm": 20000},
  {"region": "eu-west-1", "model": "eu.anthropic.claude-sonnet-4-5-20250929-v1:0", "rpm": 1, "tpm": 1000000},
  {"region": "eu-west-3", "model": "eu.anthropic.claude-sonnet-4-5-20250929-v1:0", "rpm": 100, "tpm": 1000000},
  {"region": "eu-central-1", "model": "eu.anthropic.claude-sonnet-4-5-20250929-v1:0", "rpm": 1, "tpm": 1000000},
  {"region": "eu-north-1", "model": "eu.anthropic.claude-sonnet-4-5-20250929-v1:0", "rpm": 100, "tpm": 1000000},
  {"region": "ap-southeast-1", "model": "apac.anthropic.claude-sonnet-4-5-20250929-v1:0", "rpm": 100, "tpm": 1000000},
  {"region": "ap-southeast-2", "model": "apac.anthropic.claude-sonnet-4-5-20250929-v1:0", "rpm": 100, "tpm": 1000000}
]}
EOF
# Routes, one per suite again: the first target of each test route allows
# one request a minute, so the second request spills to the next.
cat >"$tmp/routes.json" <<'EOF'
{"routes": [
  {"name": "node-route", "model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "targets": [
    {"region": "eu-west-1", "model": "eu.anthropic.claude-sonnet-4-5-20250929-v1:0"},
    {"region": "eu-west-3", "model": "eu.anthropic.claude-sonnet-4-5-20250929-v1:0"}]},
  {"name": "py-route", "model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "geography": "eu", "regions": ["eu-central-1", "eu-north-1"]},
  {"name": "example-route", "model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "geography": "apac"}
]}
EOF
"$tmp/quota-broker" serve --listen 127.0.0.1:0 --data "$tmp/state.db" --budgets "$tmp/budgets.json" \
  --routes "$tmp/routes.json" --margin 1 >"$tmp/broker.out" 2>"$tmp/broker.err" &
broker_pid=$!

addr=""
for _ in $(seq 1 300); do
  addr="$(sed -n 's/^quota-broker listening on \([^ ]*\) .*/\1/p' "$tmp/broker.out")"
  [[ -n "$addr" ]] && break
  if ! kill -0 "$broker_pid" 2>/dev/null; then
    log "broker exited before listening"; cat "$tmp/broker.out" "$tmp/broker.err" >&2; exit 1
  fi
  sleep 0.1
done
[[ -n "$addr" ]] || { log "broker did not listen within 30s"; cat "$tmp/broker.out" "$tmp/broker.err" >&2; exit 1; }
log "broker $broker_pid listening on $addr"
export QUOTA_BROKER_ADDR="$addr"

# --- the suites -----------------------------------------------------------------
failed=()
run() { # name, command...
  local name="$1"; shift
  log "== $name"
  if "$@"; then log "== $name: ok"; else log "== $name: FAILED"; failed+=("$name"); fi
}
run "node tests" env QUOTA_BROKER_TEST_REGION=us-west-2 \
  QUOTA_BROKER_TEST_ROUTE=node-route QUOTA_BROKER_TEST_ROUTE_REGIONS=eu-west-1,eu-west-3 \
  bash -c 'cd clients/node && node --test test/*.test.js'
run "python tests" env QUOTA_BROKER_TEST_REGION=us-east-2 QUOTA_BROKER_PY_GEN="$tmp/pygen" \
  QUOTA_BROKER_TEST_ROUTE=py-route QUOTA_BROKER_TEST_ROUTE_REGIONS=eu-central-1,eu-north-1 \
  "$PY" -m pytest -p no:cacheprovider -q -rs clients/python/test_client.py
run "node example" env QUOTA_BROKER_ROUTE=example-route node clients/node/example.js "$addr"
run "python example" env QUOTA_BROKER_PY_GEN="$tmp/pygen" QUOTA_BROKER_ROUTE=example-route "$PY" clients/python/example.py "$addr"

# --- stop the broker: SIGTERM must stop it cleanly ------------------------------
kill -TERM "$broker_pid"
if wait "$broker_pid"; then
  grep -q '^quota-broker stopped' "$tmp/broker.out" || failed+=("broker stop message")
else
  log "broker exited with status $? on SIGTERM"; failed+=("broker shutdown")
fi
broker_pid=""

if ((${#failed[@]})); then
  log "FAILED: ${failed[*]}"
  log "broker log:"; cat "$tmp/broker.err" >&2
  exit 1
fi
log "all client tests passed"
