#!/usr/bin/env bash
# What each member spends per put, keel or etcd alike: runs one
# `benches/ab_put.sh BIN_DIR` case (fresh 3-member cluster, puts through the
# leader, AB_CASES="CLIENTS:CONNS", default 1:1; AB_SYSTEM=etcd for etcd) for
# 10 s, and over 4.2 s in its middle counts, per member process, its context
# switches and system calls (`perf stat`) and its user and system CPU time
# (/proc/<pid>/stat), each divided by the puts of that window (the bench's
# throughput times 4.2 s). The leader is the member with the most system
# calls. NAME=VALUE arguments go into the keel members' environment, as with
# ab_put.sh. Needs `perf`.
#
#   benches/member_costs.sh /tmp/bin; AB_SYSTEM=etcd benches/member_costs.sh /tmp/bin
set -euo pipefail
bin_dir=${1:?usage: member_costs.sh BIN_DIR [NAME=VALUE ...]}
shift
system=${AB_SYSTEM:-keel}
work=$(mktemp -d "${TMPDIR:-/tmp}/member-costs.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$(dirname "$0")/.."
AB_CASES=${AB_CASES:-1:1} AB_SECONDS=10 AB_MEMBER_PIDS_FILE="$work/pids" benches/ab_put.sh "$bin_dir" "$@" \
    >"$work/ab.txt" 2>&1 &
ab=$!
sleep 6 # ab_put.sh's start, its 1 s warm-up, and 3 s of the measured load
pids=$(cat "$work/pids" 2>/dev/null || true)
[ -n "$pids" ] || { echo "member_costs.sh: no $system members found" >&2; wait "$ab" || true; cat "$work/ab.txt" >&2; exit 2; }
counters=()
for pid in $pids; do
    awk '{print $14, $15}' "/proc/$pid/stat" >"$work/$pid.before"
    perf stat -x, -e context-switches,raw_syscalls:sys_enter -p "$pid" -o "$work/$pid.stat" -- sleep 4.2 &
    counters+=("$!")
done
wait "${counters[@]}"
for pid in $pids; do awk '{print $14, $15}' "/proc/$pid/stat" >"$work/$pid.after"; done
wait "$ab"
summary=$(grep throughput "$work/ab.txt")
echo "$summary"
throughput=$(echo "$summary" | awk '{for (i = 1; i < NF; i++) if ($i == "throughput") print $(i + 1)}')
ticks_per_second=$(getconf CLK_TCK)
for pid in $pids; do
    read -r user_before system_before <"$work/$pid.before"
    read -r user_after system_after <"$work/$pid.after"
    grep -v '^#' "$work/$pid.stat" | awk -F, -v puts="$(awk -v t="$throughput" 'BEGIN {print t * 4.2}')" \
        -v user=$((user_after - user_before)) -v kernel=$((system_after - system_before)) \
        -v hz="$ticks_per_second" -v name="$system" -v pid="$pid" '
        $3 == "context-switches" {switches = $1}
        $3 == "raw_syscalls:sys_enter" {calls = $1}
        END {printf "%s member %s per put: context switches %.1f, system calls %.1f, user CPU %.0f us, system CPU %.0f us\n",
            name, pid, switches / puts, calls / puts, user * 1e6 / hz / puts, kernel * 1e6 / hz / puts}'
done
