#!/usr/bin/env bash
# Installs the pinned developer tools into .bin/ (kept out of the service's go.mod).
# Idempotent: a tool already at its pinned version is not rebuilt.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export GOBIN="$root/.bin"
mkdir -p "$GOBIN"
tools=(
  "github.com/bufbuild/buf/cmd/buf@v1.75.0"
  "google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12"
  "google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2"
  "github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3"
  "golang.org/x/vuln/cmd/govulncheck@v1.9.0"
)
for t in "${tools[@]}"; do
  name="${t%@*}"; name="${name##*/}"; ver="${t##*@}"
  stamp="$GOBIN/.$name.$ver"
  if [[ -x "$GOBIN/$name" && -f "$stamp" ]]; then continue; fi
  echo "tools: installing $t" >&2
  go install "$t"
  rm -f "$GOBIN/.$name".*; touch "$stamp"
done

# etcd, for the cluster tests and benchmarks, from its own module in .ci/etcd
# (etcd's server module cannot be `go install`ed: see .ci/etcd/main.go). The
# stamp names the pinned version read from that go.mod, so a bump rebuilds.
etcd_ver="$(awk 'NF >= 2 && $(NF-1) == "go.etcd.io/etcd/server/v3" {print $NF}' "$root/.ci/etcd/go.mod")"
stamp="$GOBIN/.etcd.$etcd_ver"
if [[ ! -x "$GOBIN/etcd" || ! -f "$stamp" ]]; then
  echo "tools: building etcd $etcd_ver (about two minutes)" >&2
  (cd "$root/.ci/etcd" && go build -trimpath -o "$GOBIN/etcd" .)
  rm -f "$GOBIN/.etcd".*; touch "$stamp"
fi
