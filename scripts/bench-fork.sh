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
#   save            the live save of the source (ms)
#   fork total      wall time of the fork command (all forks running)
#   answering       forks whose inherited service answered
# Runs in a private PYRO_HOME (sharing environments and caches) and
# deletes everything at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PYRO=${PYRO_BIN:-$PWD/bin/pyro}
ENVNAME=${1:-debian:12}
COUNT=${2:-10}

state=${PYRO_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/pyro}
home=$(mktemp -d /tmp/pyro-bench-fork.XXXXXX)
chmod 700 "$home"
ln -s "$state/environments" "$home/environments"
ln -s "$state/cache" "$home/cache"
export PYRO_HOME=$home
cleanup() {
  for w in $("$PYRO" workspace list --json 2>/dev/null | jq -r '.workspaces[].workspace_id' 2>/dev/null); do
    "$PYRO" workspace delete "$w" >/dev/null 2>&1 || true
  done
  rm -rf "$home"
}
trap cleanup EXIT

id=$("$PYRO" workspace create --json "$ENVNAME" | jq -r .workspace_id)
"$PYRO" workspace exec "$id" -- sh -c 'echo ok > /workspace/ping' >/dev/null
"$PYRO" workspace service start "$id" web --ready-tcp 127.0.0.1:8000 -- \
  python3 -m http.server 8000 --directory /workspace >/dev/null
start=$(date +%s%N)
"$PYRO" workspace fork --json --count "$COUNT" "$id" >"$home/fork.json"
total=$(( ($(date +%s%N) - start) / 1000000 ))
ok=0
for f in $(jq -r '.forks[].workspace_id' "$home/fork.json"); do
  out=$("$PYRO" workspace exec --json "$f" -- python3 -c \
    "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8000/ping').read().decode())" | jq -r .stdout)
  [ "$(echo "$out" | tr -d '\n')" = ok ] && ok=$((ok + 1))
done
printf 'fork %d ways of a workspace running a service (%s)\n' "$COUNT" "$ENVNAME"
printf '  source paused  %6d ms\n' "$(jq .source_paused_ms "$home/fork.json")"
printf '  save           %6d ms\n' "$(jq .save_ms "$home/fork.json")"
printf '  fork total     %6d ms   (goal: <= 3000 ms for 10)\n' "$total"
printf '  per fork boot  %s ms\n' "$(jq -c '[.forks[].boot_ms]' "$home/fork.json")"
printf '  answering      %d/%d\n' "$ok" "$COUNT"
