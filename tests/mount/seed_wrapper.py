#!/usr/bin/env python3
"""The seed recipe, redone on capturefs.

The classic recipe hands a tool a FIFO made by a `TemporaryPipe` context
manager (mkfifo in a temp dir) and reads the tool's output from it. That
deadlocks as soon as the caller waits for the tool before reading (the
tool blocks once the 64 KiB pipe buffer is full), and a tool that dies
before opening its output leaves the reader blocked in open() forever.

`CapturePath` is the same context manager with the path being a unique
name inside a capturefs mount. Both usages are exercised here:

  * concurrent: start the tool, read its output while it runs;
  * wait-then-read: run the tool to completion, then read (what deadlocks
    with mkfifo).

Each call writes distinct content (its index in a header, then ~70 KiB
derived from it, more than a pipe buffer). 200 calls of each kind run 16 at
a time. Exit status 0 when every output is exactly right; otherwise 1 with
one line per mismatch.

Usage: seed_wrapper.py MOUNTPOINT [--calls 200] [--jobs 16] [--size 71680]
(internally also: seed_wrapper.py --write PATH|- INDEX SIZE)
"""
import argparse
import contextlib
import faulthandler
import hashlib
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor


def content(index, size):
    """Distinct, deterministic bytes for call `index`."""
    head = f"call {index:05d} of the seed recipe\n".encode()
    seed = hashlib.sha256(head).digest()
    body = bytearray(head)
    block = seed
    while len(body) < size:
        block = hashlib.sha256(block).digest()
        body += block
    return bytes(body[:size])


def write_main(path, index, size):
    """The 'tool': writes its output in several chunks, like a real one."""
    data = content(index, size)
    f = sys.stdout.buffer if path == "-" else open(path, "wb")
    with f:
        for off in range(0, len(data), 8192):
            f.write(data[off:off + 8192])
            f.flush()
    return 0


class CapturePath:
    """Like TemporaryPipe, but a unique name inside a capturefs mount.

    With hold=True the name is created on entry and a writer reference is
    held until release(): a reader opening the path blocks for data instead
    of racing the tool's open() (ENOENT) or its close (early EOF). Release
    it once the tool has exited. On exit the name is removed if the reader
    did not consume it.
    """

    def __init__(self, mount, hold=True):
        self.path = os.path.join(mount, f"seed-{uuid.uuid4().hex}")
        self.hold = hold
        self._guard = None

    def __enter__(self):
        if self.hold:
            # Not inherited by the tool (non-inheritable fds, close_fds).
            self._guard = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        return self

    def release(self):
        if self._guard is not None:
            os.close(self._guard)
            self._guard = None

    def __exit__(self, *exc):
        self.release()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        return False


def tool_argv(path, index, size):
    return [sys.executable, "-B", os.path.abspath(__file__), "--write", path, str(index), str(size)]


def call_concurrent(mount, index, size):
    """Start the tool, read the path while it runs."""
    expected = content(index, size)
    with CapturePath(mount) as cp:
        proc = subprocess.Popen(tool_argv(cp.path, index, size), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        result = {}

        def waiter():
            result["stderr"] = proc.communicate()[1]
            cp.release()  # the tool is done: let the reader see EOF

        t = threading.Thread(target=waiter)
        t.start()
        with open(cp.path, "rb") as f:
            data = f.read()
        t.join()
    if proc.returncode != 0:
        return f"concurrent call {index}: tool exited {proc.returncode}: {result.get('stderr', b'')[-500:]!r}"
    if data != expected:
        return f"concurrent call {index}: got {len(data)} bytes, expected {len(expected)}; " \
               f"header {data[:40]!r}"
    return None


def call_wait_then_read(mount, index, size):
    """Run the tool to completion, THEN read (deadlocks with mkfifo)."""
    expected = content(index, size)
    with CapturePath(mount, hold=False) as cp:
        if index % 2 == 0:
            argv = tool_argv(cp.path, index, size)  # the tool opens the path itself
        else:  # sh's `>` redirection creates the stream
            argv = ["/bin/sh", "-c", 'exec "$@" > "$0"', cp.path] + tool_argv("-", index, size)
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        if r.returncode != 0:
            return f"wait-then-read call {index}: tool exited {r.returncode}: {r.stderr[-500:]!r}"
        with open(cp.path, "rb") as f:
            data = f.read()
    if data != expected:
        return f"wait-then-read call {index}: got {len(data)} bytes, expected {len(expected)}; " \
               f"header {data[:40]!r}"
    return None


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--write":
        return write_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    ap = argparse.ArgumentParser()
    ap.add_argument("mount")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--size", type=int, default=70 * 1024 + 123)
    ap.add_argument("--deadline", type=int, default=100,
                    help="dump every thread's stack and exit after this many seconds")
    a = ap.parse_args()
    faulthandler.dump_traceback_later(a.deadline, exit=True)

    errors = []
    for name, fn in (("concurrent", call_concurrent), ("wait-then-read", call_wait_then_read)):
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            futures = [pool.submit(fn, a.mount, i, a.size) for i in range(a.calls)]
            failed = [f.result() for f in futures]
        failed = [e for e in failed if e]
        errors += failed
        print(f"{name}: {a.calls - len(failed)}/{a.calls} calls correct "
              f"({a.jobs} in parallel, {a.size} bytes each) in {time.monotonic() - t0:.1f} s", flush=True)

    left = sorted(os.listdir(a.mount))
    if left:
        errors.append(f"names left in the mount after every call finished: {left[:10]}")
    for e in errors[:20]:
        print("MISMATCH: " + e, flush=True)
    if errors:
        print(f"{len(errors)} mismatches", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
