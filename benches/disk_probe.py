"""What the disk-probe scripts (fdatasync_growth.py, log_sync_calls.py)
share: a fresh probe file, a measured step repeated on it, the file removed
even when a step fails, and the median and p99 of the step's times."""
import os
import statistics
import time


def elapsed_ms(action):
    """Runs action() and returns how long it took, in milliseconds."""
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def median_and_p99_ms(path, steps, prepare, step):
    """Creates `path` empty, runs prepare(fd) once, then step(fd, index) for
    index in range(steps); each step returns the milliseconds it measured.
    Returns (median, p99) of those, after closing and removing the file."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        prepare(fd)
        samples = sorted(step(fd, index) for index in range(steps))
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(samples), samples[int(len(samples) * 0.99)]
