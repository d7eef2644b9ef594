#!/usr/bin/env python3
"""Small probes the mount tests run as separate processes (stdlib only).

  stream_tool.py read-block PATH
      Opens PATH read-only and calls read(2) once through ctypes, with a
      SIGINT handler installed (no SA_RESTART), so an interrupted read shows
      up as EINTR instead of being retried. Prints "EINTR" and exits 42 when
      the read was interrupted, "read N" and exits 0 when it returned.

  stream_tool.py write-block PATH [--chunk N] [--limit N]
      Opens PATH with O_WRONLY|O_CREAT and writes chunks through ctypes
      until a write fails. Prints "EINTR after N" and exits 42 when a write
      was interrupted by SIGINT; exits 3 if it wrote --limit bytes without
      ever being held back.

  stream_tool.py read-exact PATH N
      Reads exactly N bytes, copies them to stdout and flushes (so the test
      sees them while the writer is still open), then copies the rest to EOF.
"""
import argparse
import ctypes
import errno
import os
import signal
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
libc.read.restype = ctypes.c_ssize_t
libc.write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
libc.write.restype = ctypes.c_ssize_t

interrupted = []


def on_sigint(signum, frame):
    interrupted.append(signum)


def read_block(path):
    signal.signal(signal.SIGINT, on_sigint)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    buf = ctypes.create_string_buffer(65536)
    n = libc.read(fd, buf, len(buf))
    if n < 0:
        err = ctypes.get_errno()
        if err == errno.EINTR:
            print("EINTR", flush=True)
            return 42
        print(f"read failed: {errno.errorcode.get(err, err)}", file=sys.stderr)
        return 1
    print(f"read {n}", flush=True)
    return 0


def write_block(path, chunk, limit):
    signal.signal(signal.SIGINT, on_sigint)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    data = (b"0123456789abcdef" * (chunk // 16 + 1))[:chunk]
    buf = ctypes.create_string_buffer(data, chunk)
    total = 0
    while total < limit:
        n = libc.write(fd, buf, chunk)
        if n < 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                print(f"EINTR after {total}", flush=True)
                return 42
            print(f"write failed after {total}: {errno.errorcode.get(err, err)}", file=sys.stderr)
            return 1
        total += n
    print(f"wrote {total} bytes and was never held back", flush=True)
    return 3


def read_exact(path, n):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    out = sys.stdout.buffer
    got = 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            print(f"EOF after {got} of {n} bytes", file=sys.stderr)
            return 1
        out.write(b)
        got += len(b)
    out.flush()
    while True:
        b = os.read(fd, 65536)
        if not b:
            break
        out.write(b)
    out.flush()
    os.close(fd)
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("read-block")
    p.add_argument("path")
    p = sub.add_parser("write-block")
    p.add_argument("path")
    p.add_argument("--chunk", type=int, default=65536)
    p.add_argument("--limit", type=int, default=1 << 32)
    p = sub.add_parser("read-exact")
    p.add_argument("path")
    p.add_argument("n", type=int)
    a = ap.parse_args()
    if a.cmd == "read-block":
        return read_block(a.path)
    if a.cmd == "write-block":
        return write_block(a.path, a.chunk, a.limit)
    return read_exact(a.path, a.n)


if __name__ == "__main__":
    sys.exit(main())
