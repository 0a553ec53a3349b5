#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (root) to a command run in a
# fresh microVM: host packages, build, install to /usr/local/bin, pull the
# default environment, run `uname -a` in a guest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/host-packages.sh
./scripts/build.sh bin/pyro
install -m 0755 bin/pyro /usr/local/bin/pyro
echo "==> pyro env pull debian:12 (first time: builds it from Debian packages, a minute or two)"
pyro env pull debian:12
echo "==> pyro run debian:12 -- uname -a"
pyro run debian:12 -- uname -a
