#!/usr/bin/env bash
# Builds the static pyro binary (it is also the guest agent, so no cgo).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
out=${1:-bin/pyro}
mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 go build -trimpath -o "$out" ./cmd/pyro
echo "==> built $out"
