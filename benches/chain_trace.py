#!/usr/bin/env python3
"""Reads what benches/chain_trace.sh left in OUT_DIR (threads.txt: member
threads as `tid pid`; sockets.txt: `ss -tnpH`; trace.txt: `perf trace`) and
prints, over the traced writes, the median offset of each step of a write's
chain from the leader reading the client's request: the first matching
system call of each kind after that read (for the answers the leader reads
from its followers, the last before it answers the client).

A write is the span from a read on the leader's client connection to its
next write on that connection; at 1 client they do not overlap. The
members are told apart by their sockets: the leader owns the bench's
connection, and a follower owns the far end of each connection the leader
opened to a peer port (the leader's replication streams).
"""
import collections
import re
import statistics
import sys

out = sys.argv[1]

tid_to_pid = {}
for line in open(f"{out}/threads.txt"):
    tid, pid = line.split()
    tid_to_pid[int(tid)] = int(pid)

# ss -tnpH: state recv-q send-q local peer users:(("name",pid=P,fd=F))
Socket = collections.namedtuple("Socket", "local peer name pid fd")
sockets = []
for line in open(f"{out}/sockets.txt"):
    m = re.search(r"(\S+:\d+)\s+(\S+:\d+)\s+users:\(\(\"([^\"]+)\",pid=(\d+),fd=(\d+)\)", line)
    if m:
        sockets.append(Socket(m.group(1), m.group(2), m.group(3), int(m.group(4)), int(m.group(5))))
members = set(tid_to_pid.values())
bench = next((s for s in sockets if s.name == "keel-bench"), None)
client_end = bench and next((s for s in sockets if s.local == bench.peer and s.peer == bench.local), None)
if client_end is None:
    sys.exit("chain_trace.py: no connection from keel-bench to a member in sockets.txt")
leader, client_fd = client_end.pid, client_end.fd
peer_port = int(client_end.local.rsplit(":", 1)[1]) + 1
# (pid, fd) -> role of the socket
roles = {(leader, client_fd): "client"}
names = {}
for s in sockets:
    if s.pid != leader or int(s.local.rsplit(":", 1)[1]) == peer_port:
        continue
    far = next((f for f in sockets if f.local == s.peer and f.peer == s.local and f.pid in members), None)
    if far is None or far.pid == leader:
        continue
    name = names.setdefault(far.pid, f"F{len(names) + 1}")
    roles[(leader, s.fd)] = f"L->{name}"
    roles[(far.pid, far.fd)] = f"{name} peer"

line_re = re.compile(
    r"^\s*([\d.]+) \(\s*([\d.]*)\s*(?:ms)?\s*\): (\S+)/(\d+) (\w+)\((?:fd: (\d+))?.*?\)\s*(?:=\s*(-?\d+)|\.\.\.)"
)
continued_re = re.compile(r"^\s*([\d.]+) \(\s*([\d.]+) ms\): (\S+)/(\d+)\s+\.\.\. \[continued\]: (\w+)\(")
durations = {}
for line in open(f"{out}/trace.txt"):
    m = continued_re.match(line)
    if m:
        durations[(m.group(1), int(m.group(4)), m.group(5))] = float(m.group(2))

READS = {"recvfrom", "read"}
WRITES = {"writev", "write", "sendto"}
DISK = {"pwrite64", "sync_file_range", "fdatasync"}
events = []  # (start ms, end ms, step)
for line in open(f"{out}/trace.txt"):
    m = line_re.match(line)
    if not m:
        continue
    start, dur, _comm, tid, call, fd, ret = m.groups()
    pid = tid_to_pid.get(int(tid))
    if pid is None:
        continue
    dur = float(dur) if dur else durations.get((start, int(tid), call), 0.0)
    who = "L" if pid == leader else names.get(pid)
    if who is None:
        continue
    if call in DISK:
        step = f"{who} {call}"
    else:
        role = roles.get((pid, int(fd))) if fd else None
        moved = ret is None or int(ret) > 0
        if role is None or not moved or call not in READS | WRITES:
            continue
        step = f"{role} {'read' if call in READS else 'write'}"
        if role == "client":
            step = "L client " + step.split()[-1]
    events.append((float(start), float(start) + dur, step))
events.sort()

writes = []
begun = None
for start, end, step in events:
    if step == "L client read" and begun is None:
        begun = start
    elif step == "L client write" and begun is not None:
        writes.append((begun, end))
        begun = None
if not writes:
    sys.exit("chain_trace.py: no write traced")

starts = collections.defaultdict(list)
ends = collections.defaultdict(list)
i = 0
for begun, answered in writes:
    while i < len(events) and events[i][0] < begun:
        i += 1
    seen = {}
    j = i
    while j < len(events) and events[j][0] <= answered:
        start, end, step = events[j]
        last_wins = step.startswith("L->") and step.endswith("read")
        if step not in seen or last_wins:
            seen[step] = (start, end)
        j += 1
    for step, (start, end) in seen.items():
        starts[step].append((start - begun) * 1000)
        ends[step].append((end - begun) * 1000)

spans = [(answered - begun) * 1000 for begun, answered in writes]
print(f"{len(writes)} writes traced; median from the leader's read of a request to the end of its answer: "
      f"{statistics.median(spans):.0f} µs")
print(f"{'step':24s} {'writes':>6s} {'start p50 µs':>13s} {'end p50 µs':>11s}")
for step in sorted(starts, key=lambda s: statistics.median(starts[s])):
    if len(starts[step]) < len(writes) / 2:
        continue
    print(f"{step:24s} {len(starts[step]):6d} {statistics.median(starts[step]):13.0f} "
          f"{statistics.median(ends[step]):11.0f}")
