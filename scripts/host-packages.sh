#!/usr/bin/env bash
# Installs the host packages pyro needs (Debian 12, as root). Idempotent.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils mmdebstrap debootstrap e2fsprogs lz4 kmod cpio ca-certificates python3 python3-pytest iproute2 procps)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# npm (which fetches Node 22 for the MCP conformance suite) only when no npm
# is on PATH: a machine whose nodejs comes from elsewhere (NodeSource bundles
# npm and conflicts with Debian's npm package) already has one.
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
  echo "==> installing host packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -e /dev/net/tun ]; then mkdir -p /dev/net && mknod /dev/net/tun c 10 200 || true; fi
