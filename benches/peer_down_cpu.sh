#!/usr/bin/env bash
# The leader's CPU while one follower is down, keel against etcd on this
# machine: starts a 3-member cluster of each on 127.0.0.1, kills a
# follower, and reads the leader's CPU time (/proc/<pid>/stat, user+system
# clock ticks) over 5 seconds. Usage: benches/peer_down_cpu.sh KEEL_BINARY
# (etcd and etcdctl from $PATH). Prints one line per system.
set -euo pipefail
keel=${1:?usage: benches/peer_down_cpu.sh KEEL_BINARY}
work=$(mktemp -d)
trap 'pkill -f -- "--data-dir $work" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
ticks_per_second=$(getconf CLK_TCK)

measure() { # system binary base_port
    local system=$1 binary=$2 base=$3 cluster="" i
    for i in 1 2 3; do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 10 * i + 1))"; done
    for i in 1 2 3; do
        "$binary" --name "m$i" --data-dir "$work/$system-m$i" \
            --listen-client-urls "http://127.0.0.1:$((base + 10 * i))" \
            --advertise-client-urls "http://127.0.0.1:$((base + 10 * i))" \
            --listen-peer-urls "http://127.0.0.1:$((base + 10 * i + 1))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 * i + 1))" \
            --initial-cluster "$cluster" --initial-cluster-token "$system-cpu" \
            >"$work/$system-m$i.log" 2>&1 &
    done
    sleep 4
    local endpoints="127.0.0.1:$((base + 10)),127.0.0.1:$((base + 20)),127.0.0.1:$((base + 30))"
    local status leader follower
    status=$(ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint status)
    leader=$(echo "$status" | awk -F', ' '$5 == "true" {print $1}' | sed 's/.*://')
    follower=$(echo "$status" | awk -F', ' '$5 == "false" {print $1}' | head -1 | sed 's/.*://')
    pkill -f -- "--data-dir $work/$system-m$(( (follower - base) / 10 )) " || true
    sleep 2
    local pid before after
    pid=$(pgrep -f -- "--data-dir $work/$system-m$(( (leader - base) / 10 )) ")
    before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    sleep 5
    after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    echo "$system: leader CPU with one follower down: $(( (after - before) * 100 / (5 * ticks_per_second) ))% of one core over 5 s"
    pkill -f -- "--data-dir $work/$system-" || true
    sleep 1
}

measure etcd etcd 24000
measure keel "$keel" 25000
