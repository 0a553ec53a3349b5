#!/usr/bin/env bash
# bench-warm.sh: warm starts (issue #14) against cold boots and Docker, all
# measured in this one run so the ratios compare like with like.
#
#   scripts/bench-warm.sh [ENVIRONMENT]     (default debian:12; N=5 runs each)
#   POOL=0 scripts/bench-warm.sh             skips the two pool rows
#   COLD=0 scripts/bench-warm.sh             skips the cold run row
#
# Prints medians of wall time (ms) of:
#   pyro run ENV -- true            warm (restored from the golden snapshot)
#   pyro run ENV -- true            cold (PYRO_WARM=0)
#   pyro run ENV -- true            served by a warm pool (`pyro pool start
#                                   --size 1`, ready before each run: the
#                                   refill after a run is not timed)
#   pyro workspace create ENV       warm
#   pyro workspace create ENV       served by a workspace pool (`pyro pool
#                                   start --workspace --size 1`, ready before
#                                   each create; the delete is not timed)
#   docker run --rm --network none IMG true      (IMG = ENV's rootfs, docker import)
#   docker run -d --network none IMG sleep 600
# and the ratios the issue asks for. Docker is used when a daemon answers
# (`docker info`); otherwise the script says so and prints pyro's figures.
# Needs root for the loop mount of the rootfs (docker import).
# No row hangs: each pyro command is killed after STEP_S seconds (default
# 180), a pool gets POOL_READY_S seconds (default 120) to have a guest
# ready, and a pool row that fails says why (the pool's failures and last
# error) in its results line; the other rows go on.
set -euo pipefail
cd "$(dirname "$0")/.."
PYRO=${PYRO_BIN:-$PWD/bin/pyro}
ENVNAME=${1:-debian:12}
N=${N:-5}
POOL=${POOL:-1}
COLD=${COLD:-1}
STEP_S=${STEP_S:-180}
POOL_READY_S=${POOL_READY_S:-120}

. scripts/bench-lib.sh
bench_home warm
mnt="" poolpid=""
# stop_pool: ^C to the pool in the background, SIGKILL after 30 s.
stop_pool() {
  [ -n "$poolpid" ] || return 0
  kill -INT "$poolpid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$poolpid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$poolpid" 2>/dev/null || true
  wait "$poolpid" 2>/dev/null || true
  poolpid=""
}
cleanup() {
  stop_pool
  for id in $("$PYRO" workspace list --json 2>/dev/null | grep -o '"workspace_id": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/'); do
    "$PYRO" workspace delete "$id" >/dev/null 2>&1 || true
  done
  [ -n "$mnt" ] && { umount "$mnt" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true; }
  rm -rf "$home"
}
trap cleanup EXIT
# b CMD...: CMD, killed after STEP_S seconds.
b() { timeout -k 5 "$STEP_S" "$@"; }

b "$PYRO" env pull "$ENVNAME" >/dev/null
echo "==> preparing golden snapshots of $ENVNAME (run and workspace configurations)"
b "$PYRO" prepare "$ENVNAME"
b "$PYRO" prepare --workspace "$ENVNAME"

# time_pyro_run COLD(0|1): prints one wall time and checks the start mode.
time_pyro_run() {
  local want=warm extra=()
  [ "$1" = 1 ] && want=cold && extra=(env PYRO_WARM=0)
  local t0 t1 out
  t0=$(now_ms)
  out=$(b "${extra[@]}" "$PYRO" run --json "$ENVNAME" -- true)
  t1=$(now_ms)
  echo "$out" | grep -q "\"start\": *\"$want\"" || { echo "bench-warm: expected start $want: $out" >&2; exit 1; }
  echo $((t1 - t0))
}

echo "==> pyro run $ENVNAME -- true, warm and cold, $N runs each (interleaved)"
warm=() cold=()
for _ in $(seq "$N"); do
  warm+=("$(time_pyro_run 0)")
  if [ "$COLD" = 1 ]; then cold+=("$(time_pyro_run 1)"); fi
done
warm_ms=$(printf '%s\n' "${warm[@]}" | median)
cold_ms=skipped
if [ "$COLD" = 1 ]; then cold_ms=$(printf '%s\n' "${cold[@]}" | median); fi

pool_ms=skipped handout_ms=skipped wsp_ms=skipped wsp_handout_ms=skipped
pool_fail="" pool_n=0 wsp_fail="" wsp_n=0
if [ "$POOL" = 1 ]; then
echo "==> pyro run $ENVNAME -- true through a warm pool (pyro pool start --size 1), $N runs"
"$PYRO" pool start --size 1 "$ENVNAME" >/dev/null 2>&1 &
poolpid=$!
# pool_ready SERVED: until the pool has a ready guest and SERVED hand-outs
# (a run then finds a guest, and no refill competes with it for the CPU),
# at most POOL_READY_S seconds; on failure pool_why says why.
pool_ready() {
  local st="" t0
  t0=$(now_ms)
  while [ $(($(now_ms) - t0)) -lt $((POOL_READY_S * 1000)) ]; do
    st=$(b "$PYRO" pool status --json 2>&1) || true
    if grep -q '"ready": *1' <<<"$st" && grep -q "\"served\": *$1," <<<"$st"; then return 0; fi
    sleep 0.2
  done
  pool_why="no guest ready within ${POOL_READY_S}s ($(grep -o '"failures": *[0-9]*' <<<"$st" | tr -d '"'); $(grep -o '"last_error": *"[^"]*"' <<<"$st" | tr -d '"' | cut -c1-300))"
  echo "bench-warm: the pool did not get ready: $pool_why" >&2
  return 1
}
# rowmedian VALUES...: their median, n/a without any.
rowmedian() { if [ $# -eq 0 ]; then echo n/a; else printf '%s\n' "$@" | median; fi; }
# pool_row WHAT CMD...: runs CMD (a pyro command with --json) N times, each
# after the pool is ready, into rowms/rowhandout; pool_why says why it
# stopped early. The caller starts and stops the pool.
pool_row() {
  local what=$1 i t0 t1 out id
  shift
  rowms=() rowhandout=() pool_why=""
  for i in $(seq "$N"); do
    pool_ready $((i - 1)) || return 0
    t0=$(now_ms); out=$(b "$@" 2>&1) || { pool_why="$what failed: $(tail -c 300 <<<"$out")"; return 0; }; t1=$(now_ms)
    grep -q '"start": *"pool"' <<<"$out" || { pool_why="$what did not start from the pool: $(tail -c 300 <<<"$out")"; return 0; }
    rowms+=($((t1 - t0)))
    rowhandout+=("$(sed -n 's/.*"boot_ms": *\([0-9]*\).*/\1/p' <<<"$out" | sed -n 1p)")
    id=$(echo "$out" | grep -o '"workspace_id": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/') || true
    [ -z "$id" ] || b "$PYRO" workspace delete "$id" >/dev/null || true
  done
}
pool_row "pyro run" "$PYRO" run --json "$ENVNAME" -- true
stop_pool
pool_fail=$pool_why pool_n=${#rowms[@]}
pool_ms=$(rowmedian "${rowms[@]}")
handout_ms=$(rowmedian "${rowhandout[@]}")
fi

echo "==> pyro workspace create $ENVNAME, warm, $N runs"
ws=()
for _ in $(seq "$N"); do
  t0=$(now_ms)
  out=$(b "$PYRO" workspace create --json "$ENVNAME")
  t1=$(now_ms)
  ws+=($((t1 - t0)))
  echo "$out" | grep -q '"start": *"warm"' || echo "bench-warm: workspace create was not warm: $out" >&2
  id=$(echo "$out" | grep -o '"workspace_id": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/')
  b "$PYRO" workspace delete "$id" >/dev/null
done
ws_ms=$(printf '%s\n' "${ws[@]}" | median)

if [ "$POOL" = 1 ]; then
echo "==> pyro workspace create $ENVNAME through a workspace pool (pyro pool start --workspace --size 1), $N runs"
"$PYRO" pool start --workspace --size 1 "$ENVNAME" >/dev/null 2>&1 &
poolpid=$!
pool_row "pyro workspace create" "$PYRO" workspace create --json "$ENVNAME"
stop_pool
wsp_fail=$pool_why wsp_n=${#rowms[@]}
wsp_ms=$(rowmedian "${rowms[@]}")
wsp_handout_ms=$(rowmedian "${rowhandout[@]}")
fi

docker_run_ms="" docker_d_ms="" docker_note=""
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  img="pyro-bench-warm:$(echo "$ENVNAME" | tr ':' '-')"
  if ! docker image inspect "$img" >/dev/null 2>&1; then
    rootfs=$("$PYRO" env inspect --json "$ENVNAME" | grep -o '"path": *"[^"]*"' | head -1 | sed 's/.*"\([^"]*\)"$/\1/')/rootfs.ext4
    mnt=$(mktemp -d /tmp/pyro-bench-rootfs.XXXXXX)
    mount -o loop,ro,noload "$rootfs" "$mnt"
    tar -C "$mnt" -c . | docker import - "$img" >/dev/null
    umount "$mnt"; rmdir "$mnt"; mnt=""
  fi
  docker run --rm --network none "$img" true >/dev/null # first start outside the figures
  echo "==> docker run --rm --network none $img true, $N runs"
  dr=()
  for _ in $(seq "$N"); do
    t0=$(now_ms); docker run --rm --network none "$img" true; t1=$(now_ms)
    dr+=($((t1 - t0)))
  done
  docker_run_ms=$(printf '%s\n' "${dr[@]}" | median)
  echo "==> docker run -d --network none $img sleep 600, $N runs"
  dd=()
  for _ in $(seq "$N"); do
    t0=$(now_ms); cid=$(docker run -d --network none "$img" sleep 600); t1=$(now_ms)
    dd+=($((t1 - t0)))
    docker rm -f "$cid" >/dev/null
  done
  docker_d_ms=$(printf '%s\n' "${dd[@]}" | median)
else
  docker_note="docker: no daemon answers here (docker info failed), Docker figures skipped"
fi

echo
echo "== results (median wall ms, $N runs, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%-44s %8s\n' "pyro run $ENVNAME -- true (warm)" "$warm_ms"
printf '%-44s %8s\n' "pyro run $ENVNAME -- true (cold)" "$cold_ms"
printf '%-44s %8s\n' "pyro run $ENVNAME -- true (pool)" "$pool_ms"
printf '%-44s %8s\n' "  of which the pool's hand-out (boot_ms)" "$handout_ms"
[ -z "$pool_fail" ] || echo "  FAILED after $pool_n of $N runs: $pool_fail"
printf '%-44s %8s\n' "pyro workspace create $ENVNAME (warm)" "$ws_ms"
printf '%-44s %8s\n' "pyro workspace create $ENVNAME (pool)" "$wsp_ms"
printf '%-44s %8s\n' "  of which the pool's hand-out (boot_ms)" "$wsp_handout_ms"
[ -z "$wsp_fail" ] || echo "  FAILED after $wsp_n of $N creates: $wsp_fail"
if [ -n "$docker_run_ms" ]; then
  printf '%-44s %8s\n' "docker run --rm --network none IMG true" "$docker_run_ms"
  printf '%-44s %8s\n' "docker run -d --network none IMG sleep" "$docker_d_ms"
fi
echo
# rowratio A B: ratio, or "skipped" for a row left out (POOL=0, COLD=0).
rowratio() { if [ "$1" = skipped ] || [ "$2" = skipped ]; then echo skipped; else ratio "$1" "$2"; fi; }
echo "== ratios (goal in brackets)"
echo "warm run / cold run:                 $(rowratio "$warm_ms" "$cold_ms")  [<= 0.20x]"
echo "pool hand-out:                       ${handout_ms} ms  [<= 50 ms]"
if [ -n "$docker_run_ms" ]; then
  echo "warm run / docker run --rm:          $(rowratio "$warm_ms" "$docker_run_ms")  [<= 1.5x]"
  echo "pool run / docker run --rm:          $(rowratio "$pool_ms" "$docker_run_ms")  [<= 1.5x]"
  echo "warm workspace create / docker -d:   $(rowratio "$ws_ms" "$docker_d_ms")  [<= 1.5x]"
  echo "pool workspace create / docker -d:   $(rowratio "$wsp_ms" "$docker_d_ms")  [<= 1.5x]"
else
  echo "$docker_note"
fi
