#!/usr/bin/env python3
"""Processes the fault-injection tests (test_faults.cpp) start, kill and
count bytes with (stdlib + python/capturefs/protocol.py only).

Every line of output is one os.write() (so a SIGKILL never leaves half a
line) and is flushed at once: the test reads it while we run, and after a
SIGKILL what was printed is exactly what happened before the kill.

  fault_tool.py consume SOCKET OUTDIR PATTERN... [options]
      A raw-protocol consumer (docs/protocol.md): subscribes to PATTERN
      (globs, or exact names with --literal), and for every DATA frame checks
      that it starts where the previous one of that stream ended, stores the
      bytes at their stream offset in OUTDIR/ID.bin (unless --no-store),
      updates a sha256 of what this connection received, and acknowledges.
      Lines:
        subscribed
        opened ID OFFSET PATHHEX
        data ID OFFSET LEN               (unless --quiet)
        acking ID OFFSET / acked ID OFFSET   (before / after the ACK is sent)
        renamed ID PATHHEX
        closed ID TOTAL STATUS RECEIVED SHA256 BAD REASONHEX PATHHEX
            RECEIVED: bytes this connection got (from OPENED's offset);
            SHA256: of those bytes; BAD: DATA frames out of order, or (with
            --pattern-check) with a byte that is not the expected one
        got N                            (once, when N >= --say-at bytes came)
        disorder ID OFFSET EXPECTED / mismatch ID OFFSET
        error CODE MESSAGE / eof / done
      --ack-lag       acknowledge each chunk only when the next one of its
                      stream arrives (so some bytes are always unacknowledged)
      --rate B        receive at most B bytes/s (a deliberately slow consumer)
      --slow-for S    ... only for the first S seconds (then full speed)
      --pattern-check the stream named .../wN must hold pattern_block(N)
                      repeated (see below); --quiet: no data lines
      --expect N      exit 0 ("done") once N streams have closed

  fault_tool.py write PATH SRC [--chunk N]
      Writes SRC to PATH (O_WRONLY|O_CREAT) in chunks of N bytes, printing
      "wrote TOTAL" after every write that returned, "closed TOTAL" after
      close(), or "error ERRNAME after TOTAL" (exit 1) when a call fails.

  fault_tool.py read PATH [--rate B]
      Reads PATH (O_RDONLY) to EOF, at most B bytes/s, copying to stdout;
      "error ERRNAME after N" on stderr (exit 1) when a read fails.

  fault_tool.py jsonpaths
      Reads JSON lines (capturefs watch / status --json) on stdin. Each must
      be valid JSON; prints "EVENT ID PATHHEX" per line, the path's bytes
      recovered from "path_base64" when present, else from "path" (which
      must then be exact UTF-8). Exit 1 on a line that is not JSON.

pattern_block(n)[j] = (n*31 + j*7 + j//97) % 251 for j < 65521: the soak
writers (C++) write exactly that, tiled from offset 0.
"""
import argparse
import base64
import errno
import hashlib
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from capturefs import protocol as P  # noqa: E402

PATTERN_LEN = 65521


def say(line):
    data = (line + "\n").encode()
    while data:
        n = os.write(1, data)
        data = data[n:]


def pattern_block(n):
    return bytes((n * 31 + j * 7 + j // 97) % 251 for j in range(PATTERN_LEN))


def pattern_ok(block, offset, data):
    pos = offset % PATTERN_LEN
    view = memoryview(data)
    k = 0
    while k < len(view):
        m = min(PATTERN_LEN - pos, len(view) - k)
        if view[k:k + m] != block[pos:pos + m]:
            return False
        k += m
        pos = 0
    return True


class StreamState:
    def __init__(self, opened, outdir, store):
        self.id = opened.id
        self.path = opened.path
        self.start = opened.offset
        self.next = opened.offset
        self.sha = hashlib.sha256()
        self.bad = 0
        self.unacked = None  # end of the last chunk not yet acknowledged (--ack-lag)
        self.block = None
        self.fd = None
        if store:
            self.fd = os.open(os.path.join(outdir, "%d.bin" % opened.id), os.O_WRONLY | os.O_CREAT, 0o644)


def consume(a):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(a.socket)
    patterns = tuple(os.fsencode(p) for p in a.patterns)
    sock.sendall(P.encode(P.Hello()) + P.encode(P.Subscribe(patterns=patterns, literal=a.literal)))
    dec = P.Decoder(P.Peer.SERVER)
    streams = {}
    closed = 0
    received = 0
    said = False
    t0 = time.monotonic()

    def ack(st, offset):
        say("acking %d %d" % (st.id, offset))
        try:
            sock.sendall(P.encode(P.Ack(st.id, offset)))
        except (BrokenPipeError, ConnectionResetError):
            return
        say("acked %d %d" % (st.id, offset))

    while True:
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            say("eof")
            return 0 if a.expect is None else 1
        dec.feed(data)
        for f in dec:
            if isinstance(f, P.Hello):
                continue
            if isinstance(f, P.Subscribed):
                say("subscribed")
            elif isinstance(f, P.Opened):
                st = StreamState(f, a.outdir, not a.no_store)
                if a.pattern_check:
                    st.block = pattern_block(int(os.path.basename(f.path).lstrip(b"w") or b"0"))
                streams[f.id] = st
                say("opened %d %d %s" % (f.id, f.offset, f.path.hex()))
            elif isinstance(f, P.Data):
                st = streams.get(f.id)
                if st is None:
                    continue
                if f.offset != st.next:
                    st.bad += 1
                    say("disorder %d %d %d" % (f.id, f.offset, st.next))
                if st.block is not None and not pattern_ok(st.block, f.offset, f.data):
                    st.bad += 1
                    say("mismatch %d %d" % (f.id, f.offset))
                if st.fd is not None:
                    os.pwrite(st.fd, f.data, f.offset)
                st.sha.update(f.data)
                st.next = f.offset + len(f.data)
                received += len(f.data)
                if not a.quiet:
                    say("data %d %d %d" % (f.id, f.offset, len(f.data)))
                if a.ack_lag:
                    if st.unacked is not None:
                        ack(st, st.unacked)
                    st.unacked = st.next
                else:
                    ack(st, st.next)
                if a.say_at is not None and not said and received >= a.say_at:
                    said = True
                    say("got %d" % received)
                if a.rate and (a.slow_for is None or time.monotonic() - t0 < a.slow_for):
                    ahead = received / a.rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            elif isinstance(f, P.Renamed):
                st = streams.get(f.id)
                if st is not None:
                    st.path = f.path
                say("renamed %d %s" % (f.id, f.path.hex()))
            elif isinstance(f, P.Closed):
                st = streams.pop(f.id, None)
                if st is None:
                    continue
                complete = f.status == P.CloseStatus.COMPLETE
                if complete:
                    ack(st, f.total)  # the final ACK finishes the stream
                if st.fd is not None:
                    os.close(st.fd)
                say("closed %d %d %s %d %s %d %s %s" % (
                    f.id, f.total, "complete" if complete else "aborted", st.next - st.start,
                    st.sha.hexdigest(), st.bad, f.reason.encode().hex() or "-", st.path.hex()))
                closed += 1
                if a.expect is not None and closed >= a.expect:
                    say("done")
                    sock.close()
                    return 0
            elif isinstance(f, P.Error):
                say("error %s %s" % (P.code_name(f.code), f.message.replace("\n", " ")))


def write(a):
    total = 0
    try:
        fd = os.open(a.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        with open(a.src, "rb") as src:
            while True:
                chunk = src.read(a.chunk)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    total += n
                    view = view[n:]
                    say("wrote %d" % total)
        os.close(fd)
    except OSError as e:
        say("error %s after %d" % (errno.errorcode.get(e.errno, str(e.errno)), total))
        return 1
    say("closed %d" % total)
    return 0


def read(a):
    total = 0
    t0 = time.monotonic()
    try:
        fd = os.open(a.path, os.O_RDONLY | os.O_CLOEXEC)
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            view = memoryview(b)
            while view:
                view = view[os.write(1, view):]
            total += len(b)
            if a.rate:
                ahead = total / a.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        os.close(fd)
    except OSError as e:
        sys.stderr.write("error %s after %d\n" % (errno.errorcode.get(e.errno, str(e.errno)), total))
        return 1
    return 0


def jsonpaths(_a):
    rc = 0
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            say("invalid %s" % e)
            rc = 1
            continue
        if "path_base64" in obj:
            raw = base64.b64decode(obj["path_base64"], validate=True)
        elif "path" in obj:
            raw = obj["path"].encode("utf-8")  # raises for lone surrogates: not exact
        else:
            raw = b""
        say("%s %s %s" % (obj.get("event", "status"), obj.get("id", 0), raw.hex() or "-"))
    return rc


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("consume")
    c.add_argument("socket")
    c.add_argument("outdir")
    c.add_argument("patterns", nargs="+")
    c.add_argument("--literal", action="store_true")
    c.add_argument("--ack-lag", action="store_true")
    c.add_argument("--rate", type=float, default=0)
    c.add_argument("--slow-for", type=float, default=None)
    c.add_argument("--pattern-check", action="store_true")
    c.add_argument("--quiet", action="store_true")
    c.add_argument("--no-store", action="store_true")
    c.add_argument("--say-at", type=int, default=None)
    c.add_argument("--expect", type=int, default=None)
    w = sub.add_parser("write")
    w.add_argument("path")
    w.add_argument("src")
    w.add_argument("--chunk", type=int, default=65536)
    r = sub.add_parser("read")
    r.add_argument("path")
    r.add_argument("--rate", type=float, default=0)
    sub.add_parser("jsonpaths")
    a = ap.parse_args()
    if a.cmd == "consume":
        return consume(a)
    if a.cmd == "write":
        return write(a)
    if a.cmd == "read":
        return read(a)
    return jsonpaths(a)


if __name__ == "__main__":
    sys.exit(main())
