#!/usr/bin/env bash
# bench-pss.sh: host memory of idle restored workspaces (issue #14: 50 idle
# workspaces in <= 8 GiB, PSS summed).
#
#   scripts/bench-pss.sh [N] [ENVIRONMENT]    (default 50 debian:12)
#
# Creates N workspaces one after the other (warm: restored from the golden
# snapshot; the script fails on a cold one), lets them idle, then sums the
# proportional set size (Pss in /proc/PID/smaps_rollup) of every
# workspace's QEMU and supervisor processes. PSS splits each shared page
# among the processes that map it, so the sum is what the N workspaces
# cost the host together. Stops creating early (and says so) when the
# host's MemAvailable falls under $PYRO_BENCH_MIN_FREE_MIB (default 2048).
# Everything it created is deleted on exit, also on failure or ^C.
# MEM_MIB sets the guests' memory (default 1024): pyro admits a guest only when
# its whole memory fits beside what running guests were promised, so a host
# with less than N GiB cannot hold N idle 1024 MiB workspaces at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PYRO=${PYRO_BIN:-$PWD/bin/pyro}
N=${1:-50}
ENVNAME=${2:-debian:12}
MIN_FREE_MIB=${PYRO_BENCH_MIN_FREE_MIB:-2048}
SETTLE=${PYRO_BENCH_SETTLE_SECONDS:-5}
MEM_MIB=${MEM_MIB:-1024}

. scripts/bench-lib.sh
bench_home pss
ids=()
cleanup() {
  # Eight at a time: one by one, 50 deletes beside 49 idle guests took
  # minutes on 2 cores.
  [ ${#ids[@]} -eq 0 ] || printf '%s\n' "${ids[@]}" | xargs -r -P 8 -I{} timeout 120 "$PYRO" workspace delete {} >/dev/null 2>&1 || true
  rm -rf "$home"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

avail_mib() { awk '/^MemAvailable:/ {print int($2/1024)}' /proc/meminfo; }
# pss_kib PID: the process's Pss in KiB (0 when it is gone).
pss_kib() { awk '/^Pss:/ {print $2; found=1} END {if (!found) print 0}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }

t0=$(now_ms)
"$PYRO" env pull "$ENVNAME" >/dev/null
echo "==> preparing the golden snapshot of $ENVNAME (workspace configuration)"
"$PYRO" prepare --workspace --mem-mib "$MEM_MIB" "$ENVNAME" >/dev/null

echo "==> creating $N workspaces of $ENVNAME, $MEM_MIB MiB each (MemAvailable before: $(avail_mib) MiB)"
for i in $(seq "$N"); do
  if [ "$(avail_mib)" -lt "$MIN_FREE_MIB" ]; then
    echo "bench-pss: stopping at $((i - 1)) workspaces: MemAvailable $(avail_mib) MiB < $MIN_FREE_MIB MiB" >&2
    break
  fi
  out=$("$PYRO" workspace create --json --mem-mib "$MEM_MIB" "$ENVNAME")
  id=$(echo "$out" | grep -o '"workspace_id": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/')
  [ -n "$id" ] || { echo "bench-pss: create failed: $out" >&2; exit 1; }
  ids+=("$id")
  echo "$out" | grep -q '"start": *"warm"' || { echo "bench-pss: workspace $id was not restored warm: $out" >&2; exit 1; }
done
n=${#ids[@]}
[ "$n" -gt 0 ] || { echo "bench-pss: no workspace created" >&2; exit 1; }

echo "==> $n workspaces idle for ${SETTLE}s"
sleep "$SETTLE"

total=0 max=0 min=
for id in "${ids[@]}"; do
  dir=$home/workspaces/$id
  vmm=$(cat "$dir/vmm.pid" 2>/dev/null || echo 0)
  sup=$(cut -d' ' -f1 "$dir/supervisor.pid" 2>/dev/null || echo 0)
  [ "$vmm" -gt 0 ] && [ "$sup" -gt 0 ] || { echo "bench-pss: workspace $id has no live processes" >&2; exit 1; }
  q=$(pss_kib "$vmm") s=$(pss_kib "$sup")
  w=$((q + s))
  printf '%-14s qemu %7d KiB  supervisor %6d KiB  = %7d KiB\n' "$id" "$q" "$s" "$w"
  total=$((total + w))
  [ "$w" -gt "$max" ] && max=$w
  [ -z "$min" ] || [ "$w" -lt "$min" ] && min=$w
done

echo
echo "== PSS of $n idle restored workspaces ($ENVNAME, $MEM_MIB MiB each, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), MemAvailable now $(avail_mib) MiB, $(since_s "$t0") s so far)"
awk -v t="$total" -v n="$n" -v mx="$max" -v mn="$min" 'BEGIN {
  per = t / n
  printf "total:          %8.1f MiB\n", t / 1024
  printf "per workspace:  %8.1f MiB (min %.1f, max %.1f)\n", per / 1024, mn / 1024, mx / 1024
  printf "50 at this rate: %7.2f GiB  [goal <= 8 GiB]\n", per * 50 / 1048576
}'
