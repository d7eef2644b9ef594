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
    Ack, Closed, CloseStatus, CommandInput, CommandState, CommandStatus, CommandsReply, Data, Error,
    ErrorCode, Hello, Opened, Peek, Peeked, Renamed, StatusReply, StatusRequest, StreamState, StreamStatus,
    Subscribe, Subscribed, WaitReason, encode, encode_commands, encode_status)


def vectors():
    with open(os.path.join(HERE, "vectors.txt")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, _sender, expect, *hexparts = line.split()
                yield name, expect, bytes.fromhex("".join(hexparts))


def extras():
    t0 = 1700000000123456789
    v1 = Hello(1)
    client = [v1, Subscribe([b"*.log", b"build/*"], observe=True), StatusRequest()]
    client += [Ack(1, n * 4096) for n in range(1, 6)]
    yield "session_client_long", b"".join(encode(f) for f in client)
    server = [v1, Subscribed(), Opened(1, 0, t0, 4242, 1000, b"build.log")]
    server += [Data(1, n * 64, bytes(range(n, n + 64))) for n in range(8)]
    server += [Renamed(1, b"old/build.log"), Closed(1, 512),
               Opened(2, 100, t0, 7, 0, b"x"), Closed(2, 100, CloseStatus.ABORTED, "shutdown"),
               StatusReply([StreamStatus(3, 1, 2, t0, 10, 5, 1, StreamState.DRAINING, b"a/b")], more=True),
               StatusReply([]), Error(ErrorCode.SHUTDOWN, "daemon stopping")]
    yield "session_server_long", b"".join(encode(f, 1) for f in server)
    yield "data_4k", encode(v1) + encode(Data(5, 1 << 32, bytes(4096)))
    # Version 2: commands in a status reply, and the request asking for them.
    client2 = [Hello(2), Subscribe([b"*"]), StatusRequest(commands=True), Ack(1, 10), StatusRequest()]
    yield "session_client_v2", b"".join(encode(f) for f in client2)
    cmds = [CommandStatus(1, 4242, CommandState.EXITED, 3, CommandInput.COMPLETE, 5000, t0, t0 + 10, b"a/st.txt"),
            CommandStatus(2, 4243, CommandState.KILLED, 9, CommandInput.CUT_SHORT, 1 << 20, t0, t0 + 20, b"big.bin",
                          "command exited before reading all input"),
            CommandStatus(3, 0, CommandState.NOT_STARTED, 0, CommandInput.INCOMPLETE, 0, t0, t0, b"n\xff",
                          "cannot start the command: pipe: Too many open files"),
            CommandStatus(4, 7, CommandState.UNKNOWN, 0, CommandInput.INCOMPLETE, 1, t0, t0, b"u", "not waited for"),
            CommandStatus(5, 4250, CommandState.RUNNING, 0, CommandInput.FEEDING, 65536, t0, 0, b"live.txt")]
    server2 = (encode(Hello(2)) + encode(Subscribed()) + encode_commands(cmds)
               + encode(StatusReply([StreamStatus(3, 1, 2, t0, 10, 5, 1, StreamState.HELD, b"x")]), 2)
               + encode_commands([]) + encode(StatusReply([])))
    yield "session_server_v2", server2
    # Version 3: peeks, and status records with spilled and wait.
    client3 = [Hello(3), Peek(4096, b"build.log"), StatusRequest(commands=True), Subscribe([b"*"]),
               Peek(1, b"a/\xffb"), Ack(1, 10)]
    yield "session_client_v3", b"".join(encode(f) for f in client3)
    recs = [StreamStatus(3, 1, 2, t0, 10 << 20, 5, 1, StreamState.WRITING, b"x", 8 << 20, WaitReason.SPILL_LIMIT),
            StreamStatus(4, 1, 2, t0, 10, 0, 0, StreamState.STREAMING, b"y", 0, WaitReason.CONSUMER)]
    server3 = (encode(Hello(3)) + encode(Peeked(3, 0, 10 << 20, b"head of x\n")) + encode(Peeked())
               + encode_commands([]) + encode_status(recs, 3) + encode(Subscribed()))
    yield "session_server_v3", server3
    rng = random.Random(20261126)
    for i in range(3):
        yield "garbage_random_%d" % i, bytes(rng.randrange(256) for _ in range(64 + 64 * i))
    yield "garbage_after_hello", encode(v1) + bytes(rng.randrange(256) for _ in range(100))
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
