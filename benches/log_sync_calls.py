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
import sys

from disk_probe import elapsed_ms, median_and_p99_ms

WRITES = 600
BLOCK = 4096
SYNC_FILE_RANGE_WAIT_BEFORE_WRITE_WAIT_AFTER = 1 | 2 | 4

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]


def sync_file_range(fd, offset, length):
    if libc.sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WAIT_BEFORE_WRITE_WAIT_AFTER) != 0:
        raise OSError(ctypes.get_errno(), "sync_file_range")


def pwrite_sync_file_range_fdatasync(fd, block, offset):
    os.pwrite(fd, block, offset)
    sync_file_range(fd, offset, BLOCK)
    os.fdatasync(fd)


def pwrite_fdatasync(fd, block, offset):
    os.pwrite(fd, block, offset)
    os.fdatasync(fd)


def pwritev2_dsync(fd, block, offset):
    os.pwritev(fd, [block], offset, os.RWF_DSYNC)


CALLS = {
    "pwrite + sync_file_range + fdatasync": pwrite_sync_file_range_fdatasync,
    "pwrite + fdatasync": pwrite_fdatasync,
    "pwritev2 RWF_DSYNC": pwritev2_dsync,
}


def durable_write_ms(path, durable_write):
    def zeros_past_the_tip(fd):
        os.write(fd, b"\0" * (WRITES * BLOCK))
        os.fsync(fd)

    block = os.urandom(BLOCK)
    return median_and_p99_ms(
        path,
        WRITES,
        zeros_past_the_tip,
        lambda fd, index: elapsed_ms(lambda: durable_write(fd, block, index * BLOCK)),
    )


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    path = os.path.join(directory, "keel-log-sync-calls.probe")
    for round_number in range(1, 4):
        for calls, durable_write in CALLS.items():
            p50, p99 = durable_write_ms(path, durable_write)
            print(f"round {round_number}  {calls:38s} p50 {p50:.3f} ms  p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
