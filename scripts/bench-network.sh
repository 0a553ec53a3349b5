#!/bin/sh
# bench-network.sh: guest -> server HTTP throughput (a 100 MiB download) and
# TCP connection setup latency, pyro's policed userspace network (netstack)
# against QEMU's slirp, on the same machine in the same run. Prints both and
# the ratios (goal: netstack >= 0.8x slirp's throughput).
#
# The server runs in a network namespace this script creates (veth pair,
# 10.213.9.0/24), so no guest traffic leaves the machine. slirp is reached
# through PYRO_BENCH_SLIRP=1, which exists only for this reference.
#
# Usage (root): scripts/bench-network.sh [PYRO_BIN]   (default bin/pyro)
# Env: BENCH_ENV (debian:12, needs curl), BENCH_ROUNDS (connections, 20).
set -eu

PYRO=${1:-bin/pyro}
ENVNAME=${BENCH_ENV:-debian:12}
ROUNDS=${BENCH_ROUNDS:-20}
NS=pyro-bench-$$
VH=pybh$$
VN=pybn$$
DIR=$(mktemp -d)

cleanup() {
	[ -n "${SRV:-}" ] && kill "$SRV" 2>/dev/null || true
	ip netns del "$NS" 2>/dev/null || true
	ip link del "$VH" 2>/dev/null || true
	rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

ip netns add "$NS"
ip link add "$VH" type veth peer name "$VN"
ip link set "$VN" netns "$NS"
ip addr add 10.213.9.1/24 dev "$VH"
ip link set "$VH" up
ip -n "$NS" addr add 10.213.9.2/24 dev "$VN"
ip -n "$NS" link set "$VN" up
ip -n "$NS" link set lo up
# Refuse to send anything unless the server's address routes into the namespace.
ip route get 10.213.9.2 | grep -q "dev $VH" || { echo "10.213.9.2 does not route into $NS" >&2; exit 1; }

head -c $((100 << 20)) /dev/zero >"$DIR/100M"
echo hi >"$DIR/small"
ip netns exec "$NS" python3 -m http.server 80 --bind 10.213.9.2 --directory "$DIR" >/dev/null 2>&1 &
SRV=$!
for _ in $(seq 50); do
	curl -s -o /dev/null http://10.213.9.2/small && break
	sleep 0.1
done

# One guest per measurement: the download, then ROUNDS connections, each
# timed from SYN to established by curl. Each network is measured twice,
# alternating, and the best kept: TCG guests on a shared host are noisy.
GUEST='
curl -s -m 300 -o /dev/null -w "dl %{speed_download}\n" http://10.213.9.2/100M
for i in $(seq '"$ROUNDS"'); do curl -s -o /dev/null -w "conn %{time_connect}\n" http://10.213.9.2/small; done'

measure() { # label, PYRO_BENCH_SLIRP value, pyro run arguments; prints "label MBps connect_ms"
	label=$1 slirp=$2
	shift 2
	out=$(PYRO_BENCH_SLIRP=$slirp flock /tmp/pyro-e2e.lock "$PYRO" run --json --timeout-seconds 600 "$@" "$ENVNAME" -- sh -c "$GUEST")
	printf '%s\n' "$out" | python3 -c '
import json, statistics, sys
r = json.load(sys.stdin)
if r["exit_code"] != 0:
    sys.exit("guest failed: " + r["stderr"])
dl = [float(l.split()[1]) for l in r["stdout"].splitlines() if l.startswith("dl ")]
conn = [float(l.split()[1]) for l in r["stdout"].splitlines() if l.startswith("conn ")]
print(sys.argv[1], "%.1f" % (max(dl) / 1e6), "%.2f" % (statistics.median(conn) * 1000))
' "$label"
}

best() { # keeps the higher throughput, the lower latency
	echo "$1
$2" | awk '{ if (NR == 1 || $2 > t) t = $2; if (NR == 1 || $3 < c) c = $3; l = $1 } END { print l, t, c }'
}
N1=$(measure netstack 0 --network-policy egress --allow-host 10.213.9.0/24)
S1=$(measure slirp 1 --network)
N2=$(measure netstack 0 --network-policy egress --allow-host 10.213.9.0/24)
S2=$(measure slirp 1 --network)
printf '%s\n' "$N1" "$S1" "$N2" "$S2"
NET=$(best "$N1" "$N2")
SLIRP=$(best "$S1" "$S2")
echo "$NET $SLIRP" | awk '{
	printf "throughput (100 MiB download): netstack %s MB/s, slirp %s MB/s, ratio %.2fx\n", $2, $5, $2 / $5
	printf "connection setup (median of '"$ROUNDS"', lower is better): netstack %s ms, slirp %s ms, ratio %.2fx\n", $3, $6, $3 / $6
}'
