#!/usr/bin/env python3
"""What an fdatasync costs after a 4 KiB write that grows the file, against
one inside blocks already written (zeros) and one inside a posix_fallocate'd
range; the measurement behind sled's zero fill past the log's tip
(third_party/sled/KEEL-PATCH.md). Prints median and p99 per case, 2 rounds.

    python3 benches/fdatasync_growth.py [DIR]   # DIR: where the probe file goes (default .)
"""
import os
import statistics
import sys
import time

ROUNDS = 400
BLOCK = 4096


def fdatasync_ms(path, layout):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if layout == "inside written zeros":
            os.write(fd, b"\0" * (ROUNDS + 2) * BLOCK)
            os.fsync(fd)
        elif layout == "inside posix_fallocate":
            os.posix_fallocate(fd, 0, (ROUNDS + 2) * BLOCK)
            os.fsync(fd)
        block = b"x" * BLOCK
        samples = []
        for i in range(ROUNDS):
            os.pwrite(fd, block, i * BLOCK)
            started = time.perf_counter()
            os.fdatasync(fd)
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


def main():
    path = os.path.join(sys.argv[1] if len(sys.argv) > 1 else ".", "fdatasync_growth.probe")
    for _ in range(2):
        for layout in ["growing the file", "inside written zeros", "inside posix_fallocate"]:
            p50, p99 = fdatasync_ms(path, layout)
            print(f"{layout:24} fdatasync p50 {p50:.3f} ms p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
