# Sourced by ab_put.sh and profile_put.sh: the fresh 3-member `keel
# local-cluster` they measure.
#
# start_keel_cluster BIN_DIR BASE_PORT DATA_DIR [NAME=VALUE ...] starts it
# from BIN_DIR/keel with its data under DATA_DIR (NAME=VALUE arguments go
# into the members' environment), waits until it is up, and sets
# `endpoints` (comma-separated) and `member_pids` (space-separated). On the
# script's exit the cluster is stopped and DATA_DIR removed; if it does not
# come up, the script exits 2 with its output.
start_keel_cluster() {
    local bin_dir=$1 base_port=$2 data=$3
    shift 3
    local log="$data/local-cluster.log"
    env "$@" "$bin_dir/keel" local-cluster --size 3 --base-port "$base_port" --data-dir "$data/members" --quiet \
        >"$log" 2>&1 &
    keel_cluster_pid=$!
    keel_cluster_data=$data
    trap 'kill -TERM $keel_cluster_pid 2>/dev/null || true; wait $keel_cluster_pid 2>/dev/null || true; rm -rf "$keel_cluster_data"' EXIT
    for _ in $(seq 1 100); do grep -q '^export KEELCTL_ENDPOINTS=' "$log" && break; sleep 0.2; done
    endpoints=$(sed -n 's/^export KEELCTL_ENDPOINTS=//p' "$log")
    [ -n "$endpoints" ] || { echo "$(basename "$0"): the cluster did not come up:" >&2; cat "$log" >&2; exit 2; }
    member_pids=$(grep -o 'pid [0-9]*' "$log" | awk '{print $2}' | paste -sd' ' -)
}

# The pid of the member whose client address is 127.0.0.1:PORT.
keel_member_pid() {
    grep "127.0.0.1:$1 " "$keel_cluster_data/local-cluster.log" | grep -o 'pid [0-9]*' | awk '{print $2}'
}
