#!/usr/bin/env bash
# Where a put's CPU goes, by task: starts a fresh 3-member `keel local-cluster`
# from the binaries in BIN_DIR (keel and keel-bench, e.g. a copy of
# target/release built with debug symbols, as the release profile is), runs
# `keel-bench put` (8-byte keys from 100,000, 256-byte values, 9 s) through
# the leader with CLIENTS over CONNS, records the three members with
# `perf record -F 499 --call-graph dwarf` for 4 s in the middle of the load,
# and prints the bench's summary, the members' and the bench's CPU over the
# recorded seconds, and the samples by task (benches/perf_tasks.py). The
# recording stays in OUT_DIR (perf.data, perf.txt) for `perf report`.
# PROFILE_WORKLOAD names another `keel-bench` load with the same flags
# (e.g. lease-grant-revoke, put-with-lease) in place of put.
# PROFILE_TARGET=followers (or all) sends the puts through the followers
# (or every member) instead; PROFILE_VAL_SIZE and PROFILE_KEY_SPACE change
# the 256-byte values and the 100,000 keys (the kube scenario's shape:
# PROFILE_TARGET=all PROFILE_VAL_SIZE=4096 PROFILE_KEY_SPACE=1000000).
# PROFILE_EXTRA adds flags to the load, e.g. put with one lease per key as
# the lease compare runs it: PROFILE_WORKLOAD=put-with-lease
# PROFILE_KEY_SPACE=1000 PROFILE_EXTRA="--prefix /lease/put/ --leases 0
# --lease-ttl 300".
#
#   benches/profile_put.sh /tmp/bin 256 16 /tmp/profile-256
set -euo pipefail
usage="usage: profile_put.sh BIN_DIR CLIENTS CONNS OUT_DIR"
bin_dir=${1:?$usage}; clients=${2:?$usage}; conns=${3:?$usage}; out=${4:?$usage}
mkdir -p "$out"
# shellcheck source=benches/keel_cluster.sh
source "$(dirname "$0")/keel_cluster.sh"
start_keel_cluster "$bin_dir" 14379 "$(mktemp -d "${TMPDIR:-/tmp}/keel-profile-put.XXXXXX")"
# PROFILE_EXTRA is split into its flags on purpose.
# shellcheck disable=SC2086
"$bin_dir/keel-bench" "${PROFILE_WORKLOAD:-put}" --endpoints "$endpoints" --target "${PROFILE_TARGET:-leader}" --conns "$conns" \
    --clients "$clients" --duration 9s --warmup 1s --key-size 8 --val-size "${PROFILE_VAL_SIZE:-256}" --key-space "${PROFILE_KEY_SPACE:-100000}" ${PROFILE_EXTRA:-} >"$out/bench.txt" 2>&1 &
bench=$!
sleep 3
# CPU ticks (user + system) of each member and of the bench so far.
ticks() { for pid in $member_pids $bench; do echo "$pid $(awk '{print $14 + $15}' "/proc/$pid/stat")"; done; }
ticks >"$out/ticks-before"
started=$(date +%s.%N)
perf record -F 499 --call-graph dwarf,16384 -p "${member_pids// /,}" -o "$out/perf.data" -- sleep 4 >/dev/null 2>&1
ticks >"$out/ticks-after"
seconds=$(awk -v from="$started" -v to="$(date +%s.%N)" 'BEGIN {printf "%.1f", to - from}')
wait $bench
grep -E "^(${PROFILE_WORKLOAD:-put}|throughput|latency|client CPU)" "$out/bench.txt"
echo "cores used while recording ($seconds s; perf's own work included): pid, the bench last"
join "$out/ticks-before" "$out/ticks-after" |
    awk -v s="$seconds" -v hz="$(getconf CLK_TCK)" '{printf "  %s %.2f\n", $1, ($3 - $2) / hz / s}'
# The member the bench wrote through (the leader, when PROFILE_TARGET is unset).
target_port=$(sed -n 's/^[a-z-]* via [a-z]* (127\.0\.0\.1:\([0-9]*\)).*/\1/p' "$out/bench.txt")
target_pid=$(keel_member_pid "$target_port" || true)
perf script -i "$out/perf.data" -F comm,pid,tid,ip,sym 2>/dev/null >"$out/perf.txt"
python3 "$(dirname "$0")/perf_tasks.py" "${target_pid:-0}" <"$out/perf.txt"
