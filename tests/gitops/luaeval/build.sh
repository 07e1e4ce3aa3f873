#!/usr/bin/env bash
# Build luaeval (Argo CD's Lua VM, gopher-lua, pinned in go.mod) into a cache
# directory keyed by go.mod, go.sum, main.go and the Go version.
#
# Usage:  tests/gitops/luaeval/build.sh          # build (or reuse); last stdout line: the binary
#         tests/gitops/luaeval/build.sh --check  # exit 0 and print the binary if cached, else 1
# Env: GRPO_CACHE (default ~/.cache/grpo-operator).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${GRPO_CACHE:-$HOME/.cache/grpo-operator}"
GO_VERSION="$(go env GOVERSION 2>/dev/null || echo none)"
KEY="$(cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/main.go" | { cat; echo "$GO_VERSION"; } | sha256sum | cut -c1-12)"
BIN="$CACHE/luaeval-$KEY/luaeval"

if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi
[[ "${1:-}" == "--check" ]] && exit 1
command -v go >/dev/null || { echo "build.sh: go is not installed" >&2; exit 1; }
mkdir -p "$(dirname "$BIN")"
(cd "$HERE" && GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 \
  go build -trimpath -ldflags="-s -w" -o "$BIN.tmp" .)
mv -f "$BIN.tmp" "$BIN"
echo "$BIN"
