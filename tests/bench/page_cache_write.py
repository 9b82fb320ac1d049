#!/usr/bin/env python3
"""What dropping synced bytes from the page cache saves on this machine (README "Page cache behind the tail").

Writes SIZE MiB into a file in 256 KiB writes with an fdatasync every 4 MiB, as a busy log segment is
written, once keeping every page cached ("keep") and once dropping the synced bytes more than 8 MiB
behind the end after each sync ("drop", posix_fadvise DONTNEED, as Shale's storage does with
page_cache_keep_bytes). Prints MB/s and the CPU seconds the process used for each.

    python3 tests/bench/page_cache_write.py [--dir DIR] [--mib SIZE] [--rounds N]

On a VM whose host backs guest memory lazily, the first "keep" rounds write into pages the guest
never touched and are slow; once the guest has reused its freed pages the two come closer.
"""
import argparse
import os
import time

KEEP = 8 << 20
SYNC_EVERY = 4 << 20


def write(path, total, drop):
    buf = os.urandom(256 << 10)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    t0, c0 = time.time(), os.times()
    off = last_sync = 0
    try:
        while off < total:
            os.write(fd, buf)
            off += len(buf)
            if off - last_sync >= SYNC_EVERY:
                os.fdatasync(fd)
                if drop and off > KEEP:
                    os.posix_fadvise(fd, 0, off - KEEP, os.POSIX_FADV_DONTNEED)
                last_sync = off
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dt, c1 = time.time() - t0, os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    os.unlink(path)
    return total / dt / 1e6, cpu


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", default="/tmp")
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    for r in range(a.rounds):
        for mode in ("keep", "drop"):
            mbs, cpu = write(os.path.join(a.dir, f"page_cache_write.{os.getpid()}"), a.mib << 20, mode == "drop")
            print(f"round {r + 1} {mode}: {mbs:,.0f} MB/s, {cpu:.2f} CPU-s for {a.mib} MiB")


if __name__ == "__main__":
    main()
