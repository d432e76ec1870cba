#!/usr/bin/env bash
# Generates the Python stubs of quotabroker.v1 (and google.rpc.Status and error
# details, to read refusals) into OUTDIR (default clients/python/_gen, gitignored),
# offline, with local plugins only:
#   protoc              Debian: protobuf-compiler       (Python generator, via buf's protoc_builtin)
#   grpc_python_plugin  Debian: protobuf-compiler-grpc  (gRPC service stubs)
#
# Usage: bash clients/python/generate.sh [--buf|--protoc] [OUTDIR]
#   --buf     the repository's pinned buf with buf.gen.python.yaml (installs it with
#             .ci/tools.sh if needed)
#   --protoc  protoc alone, same plugins and inputs (no Go tools needed)
#   default   --buf when .bin/buf is installed, else --protoc
# Both give the same modules (buf's also record json_name in the descriptors).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
mode=auto
case "${1:-}" in --buf) mode=buf; shift ;; --protoc) mode=protoc; shift ;; esac
out="$(realpath -m "${1:-$root/clients/python/_gen}")"
for tool in protoc grpc_python_plugin; do
  command -v "$tool" >/dev/null || { echo "generate.sh: $tool not found: apt-get install -y protobuf-compiler protobuf-compiler-grpc" >&2; exit 1; }
done
if [[ "$mode" == auto ]]; then
  if [[ -x "$root/.bin/buf" ]]; then mode=buf; else mode=protoc; fi
fi
cd "$root"
rm -rf "$out"; mkdir -p "$out"
if [[ "$mode" == buf ]]; then
  bash .ci/tools.sh # the pinned buf (idempotent)
  .bin/buf generate --template clients/python/buf.gen.python.yaml -o "$out"
else
  protoc -Iproto -Iclients/proto-deps \
    --python_out="$out" --pyi_out="$out" \
    --plugin=protoc-gen-grpc_python="$(command -v grpc_python_plugin)" --grpc_python_out="$out" \
    $(cd proto && find . -name '*.proto' | sed 's|^\./||' | sort) google/rpc/status.proto google/rpc/error_details.proto
fi
echo "generate.sh: Python stubs in $out (with $mode)" >&2
