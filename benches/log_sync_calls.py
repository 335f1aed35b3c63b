#!/usr/bin/env python3
"""What making a 4 KiB log write durable costs by three sequences of system
calls, inside a file already written with zeros (as sled keeps the log past
its tip): pwrite + sync_file_range + fdatasync (what a keel log flush does:
sled's sync_file_range, then keel-storage's fdatasync), pwrite + fdatasync,
and one pwritev2 with RWF_DSYNC. Prints median and p99 per case, 3 rounds.

    python3 benches/log_sync_calls.py [DIR]   # DIR: where the probe file goes (default .)
"""
import ctypes
import os
import statistics
import sys
import time

WRITES = 600
BLOCK = 4096
SYNC_FILE_RANGE_WAIT_BEFORE_WRITE_WAIT_AFTER = 1 | 2 | 4

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]


def sync_file_range(fd, offset, length):
    if libc.sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WAIT_BEFORE_WRITE_WAIT_AFTER) != 0:
        raise OSError(ctypes.get_errno(), "sync_file_range")


def durable_write_ms(path, calls):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"\0" * (WRITES * BLOCK))
        os.fsync(fd)
        block = os.urandom(BLOCK)
        samples = []
        for index in range(WRITES):
            offset = index * BLOCK
            started = time.perf_counter()
            if calls == "pwrite + sync_file_range + fdatasync":
                os.pwrite(fd, block, offset)
                sync_file_range(fd, offset, BLOCK)
                os.fdatasync(fd)
            elif calls == "pwrite + fdatasync":
                os.pwrite(fd, block, offset)
                os.fdatasync(fd)
            else:
                os.pwritev(fd, [block], offset, os.RWF_DSYNC)
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    path = os.path.join(directory, "keel-log-sync-calls.probe")
    for round_number in range(1, 4):
        for calls in ("pwrite + sync_file_range + fdatasync", "pwrite + fdatasync", "pwritev2 RWF_DSYNC"):
            p50, p99 = durable_write_ms(path, calls)
            print(f"round {round_number}  {calls:38s} p50 {p50:.3f} ms  p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
