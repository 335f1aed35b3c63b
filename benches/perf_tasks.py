#!/usr/bin/env python3
"""The samples of a `perf script -F comm,pid,tid,ip,sym` recording of keel
members (with call graphs), by the task they ran in: each stack is put in
the first category whose pattern matches its thread name or one of its
frames. The member given by pid is "the target" (the one clients write
through); the others are "other members".

    python3 benches/perf_tasks.py TARGET_PID < perf.txt   (see profile_put.sh)

With --crates instead of a pid, each sample goes to the innermost frame's
crate among those named in CRATES (its own code, or the kernel and libc it
called into), whatever task it ran in.

    python3 benches/perf_tasks.py --crates < perf.txt
"""
import collections
import re
import sys

PEER_SERVICE = "peer traffic: a member's peer service"
# (category, pattern over "thread name\nframe\nframe..."), first match wins.
CATEGORIES = [
    ("apply (openraft's state machine worker)", r"sm::worker::Worker"),
    ("  of it: in-memory index searches (B-tree)", None),
    ("log flush thread (keel-log-flush)", r"^keel-log-flush"),
    ("sled IO pool and flusher", r"^sled-io|sled::flusher"),
    ("peer traffic: the leader's streams out", r"H2ClientFuture|ReplicationCore"),
    (PEER_SERVICE, r"stream_append|peer_service|append_stream"),
    ("openraft core", r"RaftCore"),
    ("client gRPC: HTTP/2 connections and request tasks, KV service, write path",
     r"hyper::server::conn::http2|H2Stream|KvServer|kv_service|write_path|write_forwarder"),
    ("tokio and mio polling, parking, other", r"."),
]
# (crate, pattern over one frame), first match wins; frames are read from
# the leaf up and a sample belongs to the first frame that matches one. A
# frame belongs to the crate it starts with: keel's implementation of an
# openraft trait (`<keel_raft::... as openraft::...>`) is keel's.
CRATES = [
    ("HTTP/2 and gRPC (h2, hyper, tonic, http-body, bytes)", r"^<?(h2|hyper|tonic|http_body|bytes)::"),
    ("openraft", r"^<?openraft::"),
    ("sled", r"^<?sled::"),
    ("tokio and mio", r"^<?(tokio|mio|tokio_util)::"),
    ("keel", r"^<?keel_"),
]
INDEX_SEARCH = re.compile(r"btree::search|btree::node::NodeRef.*keys|IndexKey as core::cmp::Ord")


def stacks(lines):
    """(pid, text) per sample: the thread name, then its frames leaf first."""
    pid, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            if pid is not None:
                yield pid, "\n".join(frames)
            pid, frames = None, []
        elif not line.startswith("\t"):
            header = re.match(r"^(.*?)\s+(\d+)/\d+", line)
            if header:
                pid, frames = header.group(2), [header.group(1).strip()]
        else:
            frames.append(line.strip().split(None, 1)[-1])
    if pid is not None:
        yield pid, "\n".join(frames)


def by_crate(lines):
    counts = collections.Counter()
    total = 0
    for _, text in stacks(lines):
        total += 1
        frames = text.split("\n")[1:]
        owner = next((crate for frame in frames for crate, pattern in CRATES if re.search(pattern, frame)),
                     "other (no frame of those crates)")
        counts[owner] += 1
    if total == 0:
        sys.exit("perf_tasks.py: no samples")
    print(f"{total} samples, by the innermost frame's crate")
    for crate, count in counts.most_common():
        print(f"{100 * count / total:5.1f}%  {crate}")


def main():
    if sys.argv[1:] == ["--crates"]:
        by_crate(sys.stdin)
        return
    target_pid = sys.argv[1] if len(sys.argv) > 1 else ""
    counts = collections.Counter()
    total = 0
    for pid, text in stacks(sys.stdin):
        total += 1
        role = "target" if pid == target_pid else "other members"
        for category, pattern in CATEGORIES:
            if pattern and re.search(pattern, text, re.M):
                if category.startswith("client gRPC") and role != "target":
                    # Another member's HTTP/2 server is its peer port's.
                    category = PEER_SERVICE
                counts[(category, role)] += 1
                if category.startswith("apply") and INDEX_SEARCH.search(text):
                    counts[(CATEGORIES[1][0], role)] += 1
                break
    if total == 0:
        sys.exit("perf_tasks.py: no samples")
    print(f"{total} samples; share of all, on the target / on the other members")
    for category, _ in CATEGORIES:
        on_target, on_others = counts[(category, "target")], counts[(category, "other members")]
        print(f"{100 * (on_target + on_others) / total:5.1f}%  ({100 * on_target / total:4.1f} / "
              f"{100 * on_others / total:4.1f})  {category}")


if __name__ == "__main__":
    main()
