#!/usr/bin/env bash
# A/B of keel builds on the write path, for changes too small for a full
# `compare.sh` run: starts a fresh 3-member `keel local-cluster` from the
# binaries in BIN_DIR (keel and keel-bench, e.g. a copy of target/release),
# runs `keel-bench put` through the leader at 1, 16 and 256 clients (5 s each
# after 1 s of warm-up), prints one summary line per case, with the three
# members' CPU time per put (user + system, from /proc/<pid>/stat, over the
# 5 measured seconds) and the bytes the data dir's disk took per put
# (sectors written, from /proc/diskstats: every writer on the machine counts,
# the members are the only one during a run; the members' write_bytes of
# /proc/<pid>/io is no measure here: on this ext4 it grew to 800 KB per put
# at 1 client while the disk took 40 KB), and stops the cluster. Extra NAME=VALUE arguments go into the members' environment.
# AB_TARGET=followers (or all) sends the puts through the followers (or every
# member) instead, AB_CASES="1:1 64:8" picks other CLIENTS:CONNS cases, and
# AB_SECONDS, AB_VALUE_BYTES and AB_KEY_SPACE change the measured time (5),
# the value size (256) and the keys drawn from (100000). Snapshot stalls:
#   AB_TARGET=all AB_CASES=64:8 AB_SECONDS=30 AB_VALUE_BYTES=4096 AB_KEY_SPACE=1000000
# (100,000 puts, one snapshot per member, inside the measured 30 s).
# AB_SYSTEM=etcd runs the same cases against a fresh 3-member etcd (Debian's
# `etcd` on PATH, default flags) instead, with BIN_DIR's keel-bench: the
# same-run etcd figures beside keel's. Each line ends with the machine's idle
# cores over the measured seconds (how far from saturated the 2 cores were).
# AB_MEMBER_PIDS_FILE names a file to write the members' pids into once they
# are up.
# Alternate builds over several rounds; quote medians, never one round.
#
#   benches/ab_put.sh /tmp/bin-before; benches/ab_put.sh /tmp/bin-after
#   AB_SYSTEM=etcd benches/ab_put.sh /tmp/bin-after
set -euo pipefail
bin_dir=${1:?usage: ab_put.sh BIN_DIR [NAME=VALUE ...]}
shift
data=$(mktemp -d "${TMPDIR:-/tmp}/keel-ab-put.XXXXXX")
member_pids=""
trap 'kill -TERM $member_pids 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$data"' EXIT
if [ "${AB_SYSTEM:-keel}" = etcd ]; then
    initial_cluster="e0=http://127.0.0.1:22380,e1=http://127.0.0.1:22381,e2=http://127.0.0.1:22382"
    for i in 0 1 2; do
        env "$@" etcd --name "e$i" --data-dir "$data/e$i" --listen-client-urls "http://127.0.0.1:2237$i" \
            --advertise-client-urls "http://127.0.0.1:2237$i" --listen-peer-urls "http://127.0.0.1:2238$i" \
            --initial-advertise-peer-urls "http://127.0.0.1:2238$i" --initial-cluster "$initial_cluster" \
            --initial-cluster-token ab-put --initial-cluster-state new >"$data/e$i.log" 2>&1 &
        member_pids="$member_pids $!"
    done
    endpoints=127.0.0.1:22370,127.0.0.1:22371,127.0.0.1:22372
    healthy=""
    for _ in $(seq 1 100); do
        ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && healthy=yes && break
        sleep 0.2
    done
    [ -n "$healthy" ] || { echo "ab_put.sh: etcd did not come up:" >&2; tail -n 5 "$data"/e*.log >&2; exit 2; }
else
    # shellcheck source=benches/keel_cluster.sh
    source "$(dirname "$0")/keel_cluster.sh"
    start_keel_cluster "$bin_dir" 12379 "$data" "$@"
fi
# For tools that watch the members while a case runs (member_costs.sh).
if [ -n "${AB_MEMBER_PIDS_FILE:-}" ]; then echo "$member_pids" >"$AB_MEMBER_PIDS_FILE"; fi
# CPU ticks (user + system) the members have used so far.
member_ticks() { for pid in $member_pids; do awk '{print $14 + $15}' "/proc/$pid/stat"; done | awk '{t += $1} END {print t}'; }
# Bytes written to the data dir's disk so far (its sectors written).
data_device=$(basename "$(df --output=source "$data" | tail -n 1)")
disk_bytes() { awk -v device="$data_device" '$3 == device {printf "%.0f", $10 * 512}' /proc/diskstats; }
# The machine's idle ticks (idle + iowait) so far.
idle_ticks() { awk '/^cpu / {print $5 + $6}' /proc/stat; }
put() { # CLIENTS CONNS DURATION
    "$bin_dir/keel-bench" put --endpoints "$endpoints" --target "${AB_TARGET:-leader}" --conns "$2" --clients "$1" \
        --duration "$3" --warmup 0s --key-size 8 --val-size "${AB_VALUE_BYTES:-256}" \
        --key-space "${AB_KEY_SPACE:-100000}" 2>&1 >/dev/null
}
ticks_per_second=$(getconf CLK_TCK)
for case in ${AB_CASES:-1:1 16:4 256:16}; do
    IFS=: read -r clients conns <<<"$case"
    put "$clients" "$conns" 1s >/dev/null # warm-up
    before=$(member_ticks)
    disk_before=$(disk_bytes)
    idle_before=$(idle_ticks)
    summary=$(put "$clients" "$conns" "${AB_SECONDS:-5}s" | grep -E '^(throughput|latency)' | tr -s ' ' | paste -sd' ')
    after=$(member_ticks)
    disk_after=$(disk_bytes)
    idle_after=$(idle_ticks)
    throughput=$(echo "$summary" | awk '{print $2}')
    cpu=$(awk -v t=$((after - before)) -v hz="$ticks_per_second" -v tp="$throughput" \
        'BEGIN {printf "%.0f", t * 1e6 / hz / (tp * '"${AB_SECONDS:-5}"')}')
    idle=$(awk -v t=$((idle_after - idle_before)) -v hz="$ticks_per_second" \
        'BEGIN {printf "%.2f", t / hz / '"${AB_SECONDS:-5}"'}')
    if [ -n "$disk_before" ]; then
        disk=$(awk -v b="$((disk_after - disk_before))" -v tp="$throughput" \
            'BEGIN {printf "%.0f", b / (tp * '"${AB_SECONDS:-5}"')}')
    else
        disk="n/a" # the data dir's device is not in /proc/diskstats (device mapper, overlay, ...)
    fi
    echo "${AB_SYSTEM:-keel} $bin_dir $* target=${AB_TARGET:-leader} clients=$clients $summary server_cpu_us_per_put $cpu disk_bytes_per_put $disk idle_cores $idle"
done
