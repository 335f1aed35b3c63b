#!/usr/bin/env bash
# Side-by-side comparison of keel and the real etcd on this machine (see
# benches/README.md): installs Debian's etcd-server if etcd is missing,
# builds release binaries, then runs `keel-bench compare`, which starts etcd
# and keel clusters (1 and 3 members, fsync on, etcd's default timeouts) on
# 127.0.0.1, alternates the two per measurement, and updates
# benches/RESULTS.md (benches/RESULTS.quick.md with --quick).
#
#   benches/compare.sh                          # everything (about 30-40 min)
#   benches/compare.sh --quick                  # smoke run, a few minutes
#   benches/compare.sh --scenario put --sizes 3 # one scenario, one size
#
# Every argument goes to `keel-bench compare` (`--help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

if ! command -v etcd >/dev/null; then
    echo "compare.sh: installing Debian's etcd-server" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
    # The package may start a system etcd (on 127.0.0.1:2379); stop it so it
    # neither shares the machine nor the ports. Only that daemon runs as a bare
    # `/usr/bin/etcd` with no arguments; members started by tests have flags.
    if command -v systemctl >/dev/null; then as_root systemctl stop etcd >/dev/null 2>&1 || true; fi
    for pid in $(pgrep -x etcd || true); do
        if [ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" = "/usr/bin/etcd " ]; then
            as_root kill "$pid" || true
        fi
    done
fi
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && [ -z "${KEEL_BENCH_FONT:-}" ]; then
    # The throughput plot needs a TrueType font; without one it is skipped.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-dejavu-core >/dev/null 2>&1 ||
        echo "compare.sh: no font installed; the plot will be skipped" >&2
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -p keel-server -p keel-ctl -p keel-bench
exec "$CARGO_TARGET_DIR/release/keel-bench" compare "$@"
