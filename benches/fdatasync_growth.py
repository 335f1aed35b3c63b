#!/usr/bin/env python3
"""What an fdatasync costs after a 4 KiB write that grows the file, against
one inside blocks already written (zeros) and one inside a posix_fallocate'd
range; the measurement behind sled's zero fill past the log's tip
(third_party/sled/KEEL-PATCH.md). Prints median and p99 per case, 2 rounds.

    python3 benches/fdatasync_growth.py [DIR]   # DIR: where the probe file goes (default .)
"""
import os
import sys

from disk_probe import elapsed_ms, median_and_p99_ms

ROUNDS = 400
BLOCK = 4096


def fdatasync_ms(path, layout):
    def lay_out(fd):
        if layout == "inside written zeros":
            os.write(fd, b"\0" * (ROUNDS + 2) * BLOCK)
            os.fsync(fd)
        elif layout == "inside posix_fallocate":
            os.posix_fallocate(fd, 0, (ROUNDS + 2) * BLOCK)
            os.fsync(fd)

    block = b"x" * BLOCK

    def write_then_time_its_fdatasync(fd, index):
        os.pwrite(fd, block, index * BLOCK)
        return elapsed_ms(lambda: os.fdatasync(fd))

    return median_and_p99_ms(path, ROUNDS, lay_out, write_then_time_its_fdatasync)


def main():
    path = os.path.join(sys.argv[1] if len(sys.argv) > 1 else ".", "fdatasync_growth.probe")
    for _ in range(2):
        for layout in ["growing the file", "inside written zeros", "inside posix_fallocate"]:
            p50, p99 = fdatasync_ms(path, layout)
            print(f"{layout:24} fdatasync p50 {p50:.3f} ms p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
