#!/usr/bin/env python3
"""Writes the fuzzer's seed corpus, tests/proto/corpus/, from vectors.txt
plus a few longer sessions and deterministic garbage.

    python3 tests/proto/make_corpus.py      # rewrites tests/proto/corpus/

Each file is a connection's raw bytes (the sender does not matter: the
fuzz target decodes every input as a client's and as a server's).
"""

import os
import random
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))

from capturefs.protocol import (  # noqa: E402
    Ack, Closed, CloseStatus, Data, Error, ErrorCode, Hello, Opened, Renamed, StatusReply,
    StatusRequest, StreamState, StreamStatus, Subscribe, Subscribed, encode)


def vectors():
    with open(os.path.join(HERE, "vectors.txt")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, _sender, expect, *hexparts = line.split()
                yield name, expect, bytes.fromhex("".join(hexparts))


def extras():
    t0 = 1700000000123456789
    client = [Hello(), Subscribe([b"*.log", b"build/*"], observe=True), StatusRequest()]
    client += [Ack(1, n * 4096) for n in range(1, 6)]
    yield "session_client_long", b"".join(encode(f) for f in client)
    server = [Hello(), Subscribed(), Opened(1, 0, t0, 4242, 1000, b"build.log")]
    server += [Data(1, n * 64, bytes(range(n, n + 64))) for n in range(8)]
    server += [Renamed(1, b"old/build.log"), Closed(1, 512),
               Opened(2, 100, t0, 7, 0, b"x"), Closed(2, 100, CloseStatus.ABORTED, "shutdown"),
               StatusReply([StreamStatus(3, 1, 2, t0, 10, 5, 1, StreamState.DRAINING, b"a/b")], more=True),
               StatusReply([]), Error(ErrorCode.SHUTDOWN, "daemon stopping")]
    yield "session_server_long", b"".join(encode(f) for f in server)
    yield "data_4k", encode(Hello()) + encode(Data(5, 1 << 32, bytes(4096)))
    rng = random.Random(20261126)
    for i in range(3):
        yield "garbage_random_%d" % i, bytes(rng.randrange(256) for _ in range(64 + 64 * i))
    yield "garbage_after_hello", encode(Hello()) + bytes(rng.randrange(256) for _ in range(100))
    yield "empty", b""


def main():
    out = os.path.join(HERE, "corpus")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    n = 0
    for name, expect, data in vectors():
        with open(os.path.join(out, "%s_%s" % ("ok" if expect == "ok" else "err", name)), "wb") as f:
            f.write(data)
        n += 1
    for name, data in extras():
        with open(os.path.join(out, "x_" + name), "wb") as f:
            f.write(data)
        n += 1
    print("wrote %d files to %s" % (n, out))


if __name__ == "__main__":
    main()
