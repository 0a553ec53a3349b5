#!/usr/bin/env bash
# Builds the static pyro binary (it is also the guest agent, so no cgo).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: Go is not installed (expected at /usr/local/go); install Go >= 1.26 from https://go.dev/dl" >&2
  exit 1
fi
out=${1:-bin/pyro}
mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 go build -trimpath -o "$out" ./cmd/pyro
echo "==> built $out"
