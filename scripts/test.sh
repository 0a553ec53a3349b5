#!/usr/bin/env bash
# The whole test suite: host packages, vet, unit tests (fast, no VM), then
# end-to-end tests that boot real guests through the built binary. The last
# line is "N passed, N failed, N skipped".
# Environments are cached in $PYRO_HOME (default ~/.local/share/pyro, outside
# the checkout): a warm machine skips the builds, a cold one does them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
./scripts/host-packages.sh
go vet ./...
./scripts/build.sh bin/pyro
export PYRO_E2E=1 PYRO_BIN="$PWD/bin/pyro"
mkdir -p bin
set +e
go test -json -count=1 -timeout 50m ./... 2>&1 | tee bin/test.json | go run ./tools/testsummary
status=${PIPESTATUS[0]}
set -e
exit "$status"
