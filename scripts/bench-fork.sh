#!/usr/bin/env bash
# bench-fork.sh: live fork (issue #14) of a workspace running a service.
#
#   scripts/bench-fork.sh [ENVIRONMENT] [COUNT]   (default debian:12, 10)
#
# Creates a workspace, starts a python3 http.server service in it, forks it
# COUNT ways with `pyro workspace fork --count COUNT`, then asks each fork's
# service for a file. Prints (no assertion; the goal of #14 is <= 3 s for
# 10 forks, each answering):
#   source paused   how long the source was paused (ms)
#   save            the live save of the source (ms); "agent released"
#                   says whether the source's agent session was let go
#                   of before it (forks then connect at once)
#   fork total      wall time of the fork command (all forks running), and
#                   its ratio to the 3 s goal
#   timeline        the fork command's steps (PYRO_LOG=debug): source
#                   saved, saved RAM split out for the forks to map, every
#                   fork loaded (paused at the gate), all running
#   per fork        each fork's boot, and its restore and identity steps
#                   (from its supervisor log)
#   yielded         how long each fork ran at idle priority after its
#                   identity (internal/vm/forkyield.go), and the CPU its
#                   QEMU took meanwhile
#   fork cpu        each fork's QEMU CPU time (user+system) when the fork
#                   command returned, their sum, and that sum spread over
#                   the host's cores: the floor of the fork total on this
#                   host (TCG: loading the state, then translating the
#                   guest code a fork runs again, in every fork)
#     loading       the part spent starting QEMU and reading the state,
#                   the guest still paused (each fork then waits at the
#                   fork gate, paused, until all have loaded)
#     to identity   the part each fork spent until its identity call ended
#                   (its restore's own work), and the rest: what forks
#                   already running spent idling while the others restored
#   source cpu      the source's QEMU CPU during the fork command (its save,
#                   then its own idling beside the forks)
#   answering       forks whose inherited service answered
#   load            uptime's load averages before and after (a shared
#                   2-core host makes the numbers noisy)
# KEEP_LOGS=DIR keeps every workspace's logs there. Runs in a private PYRO_HOME (sharing environments and caches) and
# deletes everything at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PYRO=${PYRO_BIN:-$PWD/bin/pyro}
ENVNAME=${1:-debian:12}
COUNT=${2:-10}

. scripts/bench-lib.sh
bench_home fork
cleanup() {
  for w in $("$PYRO" workspace list --json 2>/dev/null | jq -r '.workspaces[].workspace_id' 2>/dev/null); do
    "$PYRO" workspace delete "$w" >/dev/null 2>&1 || true
  done
  rm -rf "$home"
}
trap cleanup EXIT
keep_logs() { # KEEP_LOGS=DIR keeps every workspace's logs (supervisor, console, VMM)
  for d in "$home"/workspaces/*/; do
    mkdir -p "$KEEP_LOGS/$(basename "$d")" && cp "$d"*.log "$KEEP_LOGS/$(basename "$d")/" 2>/dev/null || true
  done
}
[ -n "${KEEP_LOGS:-}" ] && trap 'keep_logs; cleanup' EXIT

id=$("$PYRO" workspace create --json "$ENVNAME" | jq -r .workspace_id)
"$PYRO" workspace exec "$id" -- sh -c 'echo ok > /workspace/ping' >/dev/null
"$PYRO" workspace service start "$id" web --ready-tcp 127.0.0.1:8000 -- \
  python3 -m http.server 8000 --directory /workspace >/dev/null
load_before=$(uptime | sed 's/.*load average: //')
tck=$(getconf CLK_TCK)
qcpu() { awk -v t="$tck" '{ sub(/^.*\) /, ""); print int(($12 + $13) * 1000 / t) }' "/proc/$1/stat" 2>/dev/null || echo 0; }
src_pid=$(awk '{print $1}' "$home/workspaces/$id/vmm.pid")
src_cpu0=$(qcpu "$src_pid")
start=$(date +%s%N)
# PYRO_LOG=debug: the fork command's own timeline goes to fork.log.
PYRO_LOG=debug "$PYRO" workspace fork --json --count "$COUNT" "$id" >"$home/fork.json" 2>"$home/fork.log"
total=$(( ($(date +%s%N) - start) / 1000000 ))
# Each fork's QEMU CPU so far (read at once: idle guests keep using some).
src_cpu=$(( $(qcpu "$src_pid") - src_cpu0 ))
cpus=$(for f in $(jq -r '.forks[].workspace_id' "$home/fork.json"); do
  qcpu "$(awk '{print $1}' "$home/workspaces/$f/vmm.pid" 2>/dev/null)"
done | paste -sd, -)
cpu_sum=$(echo "$cpus" | tr , '\n' | awk '{s += $1} END {print s + 0}')
ok=0
for f in $(jq -r '.forks[].workspace_id' "$home/fork.json"); do
  out=$("$PYRO" workspace exec --json "$f" -- python3 -c \
    "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8000/ping').read().decode())" | jq -r .stdout)
  [ "$(echo "$out" | tr -d '\n')" = ok ] && ok=$((ok + 1))
done
load_after=$(uptime | sed 's/.*load average: //')
# The source's supervisor logs whether the save let go of the agent
# session; each fork's, how long its restore and identity steps took.
released=$(grep -ho 'released=[a-z]*' "$home/workspaces/$id/supervisor.log" 2>/dev/null | tail -1 | cut -d= -f2)
steps() { # a log line's value of field ${2:-ms} for a message, per fork
  for f in $(jq -r '.forks[].workspace_id' "$home/fork.json"); do
    grep -h "msg=\"$1\"" "$home/workspaces/$f/supervisor.log" 2>/dev/null | grep -o " ${2:-ms}=[0-9-]*" | head -1 | cut -d= -f2
  done | paste -sd, -
}
printf 'fork %d ways of a workspace running a service (%s)\n' "$COUNT" "$ENVNAME"
printf '  source paused  %6d ms\n' "$(jq .source_paused_ms "$home/fork.json")"
printf '  save           %6d ms   (agent released: %s)\n' "$(jq .save_ms "$home/fork.json")" "${released:-unknown}"
printf '  fork total     %6d ms   (goal: <= 3000 ms for 10; %s x goal)\n' "$total" "$(echo "scale=2; $total / 3000" | bc)"
cli() { grep -h "msg=\"$1\"" "$home/fork.log" 2>/dev/null | grep -o " ${2:-ms}=[0-9-]*" | head -1 | cut -d= -f2; }
printf '  timeline       saved at %s ms, ram split in %s ms (done at %s ms), all forks loaded at %s ms, all running at %s ms\n' \
  "$(cli 'fork saved')" "$(cli 'fork ram split')" "$(cli 'fork ram split' at_ms)" "$(cli 'fork gate full')" "$(cli 'forks running')"
printf '  per fork boot  %s ms\n' "$(jq -c '[.forks[].boot_ms]' "$home/fork.json")"
printf '    loaded       [%s] ms, qemu cpu [%s] ms (QEMU started, state read, guest paused)\n' "$(steps 'fork loaded')" "$(steps 'fork loaded' vmm_cpu_ms)"
printf '    gate wait    [%s] ms (paused until every fork had loaded)\n' "$(steps 'fork released' wait_ms)"
printf '    restore      [%s] ms\n' "$(steps 'fork restored')"
printf '    identity     [%s] ms\n' "$(steps 'fork identity')"
printf '    qemu cpu at restored [%s], at identity [%s] ms\n' "$(steps 'fork restored' vmm_cpu_ms)" "$(steps 'fork identity' vmm_cpu_ms)"
printf '    yielded      [%s] ms, qemu cpu meanwhile [%s] ms (at idle priority after its identity, until every fork ran)\n' "$(steps 'fork yielded')" "$(steps 'fork yielded' vmm_cpu_ms)"
printf '  fork cpu       [%s] ms, sum %d ms = %d ms over %d cores\n' "$cpus" "$cpu_sum" "$((cpu_sum / $(nproc)))" "$(nproc)"
id_sum=$(steps 'fork identity' vmm_cpu_ms | tr , '\n' | awk '{s += $1} END {print s + 0}')
load_sum=$(steps 'fork loaded' vmm_cpu_ms | tr , '\n' | awk '{s += $1} END {print s + 0}')
printf '    loading      sum %d ms (QEMU start and state load)\n' "$load_sum"
printf '    to identity  sum %d ms (of it after the load: %d ms); idling after it while the others restored: %d ms\n' "$id_sum" "$((id_sum - load_sum))" "$((cpu_sum - id_sum))"
printf '  source cpu     %d ms during the fork command\n' "$src_cpu"
printf '  answering      %d/%d\n' "$ok" "$COUNT"
printf '  load           %s before, %s after (%d cores)\n' "$load_before" "$load_after" "$(nproc)"
