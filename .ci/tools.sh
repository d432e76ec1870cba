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
