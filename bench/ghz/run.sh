#!/usr/bin/env bash
# Side by side with ghz at the same concurrency, in one run: the broker's
# empty RPC (the health Check), AcquireLease on the same broker (bbolt with
# fsync, metrics listener on: the production configuration; the per-client
# lease cap lifted by a policy file, since ghz never settles), and
# gubernator v2.13.0's GetRateLimits on one key (a single node). Rounds are
# interleaved; the median round of each is printed with its ratios.
#
#   bash bench/ghz/run.sh [-c 50] [-z 10s] [-r 3]
#
# ghz and gubernator are installed at pinned versions into $GHZ_GOBIN
# (default: a cache under the system temp dir), never into the service's
# go.mod. Everything listens on loopback and is stopped by PID on exit.
set -euo pipefail

GHZ_VERSION=v0.120.0
GUBERNATOR_VERSION=v2.13.0
conc=50 dur=10s rounds=3
while getopts c:z:r: o; do
	case $o in
	c) conc=$OPTARG ;;
	z) dur=$OPTARG ;;
	r) rounds=$OPTARG ;;
	*) echo "usage: $0 [-c concurrency] [-z duration] [-r rounds]" >&2; exit 2 ;;
	esac
done

repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${GHZ_GOBIN:-${TMPDIR:-/tmp}/quotabroker-ghz-bin}
mkdir -p "$bin"
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

# From outside the module, so that nothing is added to its go.mod.
[ -x "$bin/ghz" ] || (cd "$work" && GOBIN=$bin go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION")
[ -x "$bin/gubernator" ] || (cd "$work" && GOBIN=$bin go install "github.com/gubernator-io/gubernator/v2/cmd/gubernator@$GUBERNATOR_VERSION")
(cd "$repo" && go build -o "$work/quota-broker" ./cmd/quota-broker)

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "nothing listens on 127.0.0.1:$1" >&2
	return 1
}

model=us.anthropic.claude-sonnet-4-5-20250929-v1:0
cat >"$work/budgets.json" <<JSON
{"budgets": [{"region": "us-east-1", "model": "$model", "rpm": 1000000000000, "tpm": 1000000000000000}]}
JSON
cat >"$work/clients.json" <<'JSON'
{"default": {"max_concurrent": -1}}
JSON
qb=$(port) qbhttp=$(port)
"$work/quota-broker" serve --data "$work/state.db" --budgets "$work/budgets.json" --clients "$work/clients.json" \
	--listen "127.0.0.1:$qb" --http "127.0.0.1:$qbhttp" --log-level warn >"$work/broker.log" 2>&1 &
pids+=($!)

gub=$(port) gubhttp=$(port) gubml=$(port)
GUBER_GRPC_ADDRESS=127.0.0.1:$gub GUBER_HTTP_ADDRESS=127.0.0.1:$gubhttp GUBER_PEER_DISCOVERY_TYPE=member-list \
	GUBER_MEMBERLIST_ADDRESS=127.0.0.1:$gubml GUBER_MEMBERLIST_BIND_ADDRESS=127.0.0.1:$gubml \
	GUBER_MEMBERLIST_KNOWN_NODES=127.0.0.1:$gubml GUBER_LOG_LEVEL=warn OTEL_TRACES_EXPORTER=none \
	"$bin/gubernator" >"$work/gubernator.log" 2>&1 &
pids+=($!)
wait_port "$qb"
wait_port "$gub"

# gubernator serves no reflection: its proto, without the HTTP gateway
# annotations (whose import ghz would have to find), describes the same
# gRPC method.
gubdir=$(cd "$work" && go mod download -json "github.com/gubernator-io/gubernator/v2@$GUBERNATOR_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
perl -0pe 's/import "google\/api\/annotations.proto";//; s/\{\s*option \(google\.api\.http\) = \{[^}]*\};\s*\}/;/g' \
	"$gubdir/gubernator.proto" >"$work/gubernator.proto"

# name, then ghz arguments; prints "name rps p50_ms p99_ms non-OK codes".
# ghz ends the calls in flight when the duration is over: a few of them
# show as Unavailable or Canceled.
run() {
	local name=$1
	shift
	"$bin/ghz" --insecure -c "$conc" -z "$dur" --skipFirst=500 -O json "$@" >"$work/out.json" 2>"$work/ghz.err" || true
	jq -r --arg n "$name" '[$n, .rps, ((.latencyDistribution // [])[] | select(.percentage==50) | .latency/1e6),
		((.latencyDistribution // [])[] | select(.percentage==99) | .latency/1e6),
		((.statusCodeDistribution // {}) | to_entries | map(select(.key != "OK") | "\(.key):\(.value)") | join(",") | if . == "" then "-" else . end)] | @tsv' "$work/out.json"
}

echo "ghz $GHZ_VERSION, $conc concurrent callers on one connection, $dur per run, median of $rounds rounds; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
	run "empty RPC (broker health Check)" --call grpc.health.v1.Health/Check -d '{}' "127.0.0.1:$qb"
	run "AcquireLease" --call quotabroker.v1.QuotaBroker/AcquireLease \
		-d "{\"model_id\": \"$model\", \"input_tokens\": 1000, \"max_output_tokens\": 500}" "127.0.0.1:$qb"
	run "gubernator $GUBERNATOR_VERSION GetRateLimits" --proto "$work/gubernator.proto" --import-paths "$work" \
		--call pb.gubernator.V1/GetRateLimits \
		-d '{"requests": [{"name": "bench", "unique_key": "one", "hits": 1, "limit": 1000000000000, "duration": 60000}]}' "127.0.0.1:$gub"
done >"$work/results.tsv"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# The median round of each (by rate), and ratios to the empty RPC and to
# gubernator.
awk -F'\t' '
	{ n[$1]++; rows[$1, n[$1]] = $0; rate[$1, n[$1]] = $2; if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 } }
	END {
		for (i = 1; i <= k; i++) {
			name = order[i]; m = n[name]
			for (a = 1; a <= m; a++) idx[a] = a
			for (a = 1; a <= m; a++) for (b = a + 1; b <= m; b++) if (rate[name, idx[b]] < rate[name, idx[a]]) { t = idx[a]; idx[a] = idx[b]; idx[b] = t }
			split(rows[name, idx[int((m + 1) / 2)]], f, "\t")
			med[name] = f[2]; p50[name] = f[3]; p99[name] = f[4]; errs[name] = f[5]
			all = ""
			for (a = 1; a <= m; a++) all = all sprintf("%s%.0f", a > 1 ? " " : "", rate[name, a])
			rounds[name] = all
		}
		base = order[1]; gub = order[3]
		printf "%-42s %10s %9s %9s %8s %8s  %-26s %s\n", "call", "calls/s", "p50 ms", "p99 ms", "vs empty", "vs gub", "rounds (calls/s)", "not OK (median round)"
		for (i = 1; i <= k; i++) {
			name = order[i]
			printf "%-42s %10.0f %9.2f %9.2f %7.2fx %7.2fx  %-26s %s\n", name, med[name], p50[name], p99[name], med[name] / med[base], med[name] / med[gub], rounds[name], errs[name]
		}
		printf "AcquireLease p99 / empty RPC p99: %.2fx\n", p99[order[2]] / p99[base]
	}' "$work/results.tsv"
