#!/usr/bin/env python3
"""Opens many streams at once on a capturefs mount and checks every byte.

  many_streams.py MOUNTPOINT [--count 1000] [--size 16384]

1. raises RLIMIT_NOFILE so that 2*count descriptors fit in one process
   (when the hard limit forbids it, the streams are shared out among
   several worker processes, which still hold them all at the same time);
2. creates `count` streams (O_CREAT|O_EXCL), writers kept open, and writes
   each one's distinct content in two interleaved rounds;
3. checks readdir lists them all and stat reports each size;
4. opens a reader on every stream (2*count descriptors open at once) and
   reads each stream's content while its writer is still open;
5. closes the writers, then checks every reader gets EOF;
6. closes the readers.

Exits 0 when everything matched; 1 with a message per mismatch.
"""
import argparse
import faulthandler
import hashlib
import math
import multiprocessing
import os
import resource
import stat
import sys
import threading
import time

BARRIER_TIMEOUT = 100


def content(index, size):
    head = f"stream {index:05d}\n".encode()
    out = bytearray(head)
    block = hashlib.sha256(head).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def raise_nofile(need):
    """Raises the soft limit towards `need`; returns the limit obtained."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    try:
        if hard != resource.RLIM_INFINITY and hard < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))  # needs CAP_SYS_RESOURCE
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def read_exactly(fd, n):
    chunks = []
    got = 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def worker(mount, indices, size, barrier, results):
    errors = []
    try:
        paths = {i: os.path.join(mount, f"s{i:05d}") for i in indices}
        data = {i: content(i, size) for i in indices}
        half = size // 2
        writers = {i: os.open(paths[i], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                   for i in indices}
        for i in indices:
            os.write(writers[i], data[i][:half])
        barrier.wait(BARRIER_TIMEOUT)  # every stream exists, half written
        for i in indices:
            os.write(writers[i], data[i][half:])
        barrier.wait(BARRIER_TIMEOUT)  # all written: the main process checks readdir/stat
        barrier.wait(BARRIER_TIMEOUT)
        readers = {i: os.open(paths[i], os.O_RDONLY | os.O_CLOEXEC) for i in indices}
        barrier.wait(BARRIER_TIMEOUT)  # every writer and every reader open at once
        for i in indices:
            got = read_exactly(readers[i], size)
            if got != data[i]:
                errors.append(f"stream {i}: got {len(got)} bytes ({got[:20]!r}...), expected {size}")
        for fd in writers.values():
            os.close(fd)
        for i in indices:
            rest = os.read(readers[i], 65536)  # waits until the writer's release is seen
            if rest != b"":
                errors.append(f"stream {i}: {len(rest)} unexpected bytes after the content, expected EOF")
        for fd in readers.values():
            os.close(fd)
    except Exception as e:  # noqa: BLE001 - reported, not swallowed
        errors.append(f"worker for streams {indices[0]}..{indices[-1]}: {type(e).__name__}: {e}")
        barrier.abort()
    results.put(errors)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mount")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--deadline", type=int, default=150)
    a = ap.parse_args()
    faulthandler.dump_traceback_later(a.deadline, exit=True)
    t0 = time.monotonic()

    limit = raise_nofile(2 * a.count + 64)
    per_worker = max(1, (limit - 64) // 2)
    nworkers = math.ceil(a.count / per_worker)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(nworkers + 1)
    results = ctx.Queue()
    chunks = [list(range(a.count))[k::nworkers] for k in range(nworkers)]
    procs = [ctx.Process(target=worker, args=(a.mount, c, a.size, barrier, results)) for c in chunks]
    for p in procs:
        p.start()

    errors = []
    try:
        barrier.wait(BARRIER_TIMEOUT)
        barrier.wait(BARRIER_TIMEOUT)
        names = set(os.listdir(a.mount))
        wanted = {f"s{i:05d}" for i in range(a.count)}
        if not wanted <= names:
            errors.append(f"readdir misses {len(wanted - names)} streams, e.g. {sorted(wanted - names)[:5]}")
        for i in range(a.count):
            st = os.stat(os.path.join(a.mount, f"s{i:05d}"))
            if not stat.S_ISREG(st.st_mode) or st.st_size != a.size:
                errors.append(f"stat s{i:05d}: mode {oct(st.st_mode)} size {st.st_size}, "
                              f"expected a regular file of {a.size}")
                break
        barrier.wait(BARRIER_TIMEOUT)
        barrier.wait(BARRIER_TIMEOUT)
        print(f"{2 * a.count} descriptors open on the mount at once, in {nworkers} process(es) "
              f"(RLIMIT_NOFILE {limit})", flush=True)
    except threading.BrokenBarrierError:
        errors.append("a worker failed before all streams were open")
    for _ in procs:
        errors += results.get(timeout=BARRIER_TIMEOUT)
    for p in procs:
        p.join(BARRIER_TIMEOUT)
        if p.exitcode != 0:
            errors.append(f"worker exited {p.exitcode}")

    total = a.count * a.size
    print(f"{a.count} streams x {a.size} bytes = {total} bytes checked in {time.monotonic() - t0:.1f} s", flush=True)
    for e in errors[:20]:
        print("MISMATCH: " + e, flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
