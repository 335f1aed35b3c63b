#!/usr/bin/env bash
# Where one write's wall time goes at 1 client: starts a fresh 3-member
# `keel local-cluster` from the binaries in BIN_DIR (keel and keel-bench),
# runs `keel-bench put` through the leader with 1 client for 8 s, traces the
# three members' socket and disk system calls with `perf trace` for 1.5 s in
# the middle, and prints, for the writes traced, the median time from the
# leader reading a request to each step of the chain (log write and syncs
# on every member, the AppendEntries and its answer on each peer connection,
# the answer to the client): benches/chain_trace.py. `perf trace` slows
# every traced call, so the steps' offsets are longer than untraced; compare
# their shares, not their absolute times. The trace stays in OUT_DIR.
#
#   benches/chain_trace.sh /tmp/bin /tmp/chain
set -euo pipefail
bin_dir=${1:?usage: chain_trace.sh BIN_DIR OUT_DIR}
out=${2:?usage: chain_trace.sh BIN_DIR OUT_DIR}
mkdir -p "$out"
data=$(mktemp -d "${TMPDIR:-/tmp}/keel-chain-trace.XXXXXX")
# shellcheck source=benches/keel_cluster.sh
source "$(dirname "$0")/keel_cluster.sh"
start_keel_cluster "$bin_dir" 14379 "$data"
"$bin_dir/keel-bench" put --endpoints "$endpoints" --target leader --conns 1 --clients 1 --duration 8s \
    --warmup 0s --key-size 8 --val-size 256 --key-space 100000 >"$out/bench.txt" 2>&1 &
bench=$!
sleep 3
for pid in $member_pids; do
    for task in /proc/"$pid"/task/*; do echo "${task##*/} $pid"; done
done >"$out/threads.txt"
ss -tnpH state established >"$out/sockets.txt"
timeout -s INT 1.5 perf trace -p "${member_pids// /,}" \
    -e 'recvfrom,read,writev,write,sendto,fdatasync,pwrite64,sync_file_range' -o "$out/trace.txt" >/dev/null 2>&1 || true
wait $bench
grep -E '^(put|throughput|latency)' "$out/bench.txt"
python3 "$(dirname "$0")/chain_trace.py" "$out"
