#!/usr/bin/env bash
# The test command (README's second command; .ci/run runs it too): builds
# the keel and keelctl binaries the integration tests start, then runs every
# test of the workspace. The tests need the real etcd and etcdctl 3.4
# (Debian's etcd-server and etcd-client) for side-by-side compatibility checks,
# and curl for the HTTP/JSON gateway and the health and metrics endpoints.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null || ! command -v curl >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client curl >/dev/null
    else
        echo "test.sh: the tests need etcd, etcdctl and curl: sudo apt-get install etcd-server etcd-client curl" >&2
        exit 2
    fi
fi

cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi
