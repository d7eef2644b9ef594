#!/usr/bin/env python3
"""Subscribers the socket tests run as separate processes (capturefs.client).

  subscriber.py share SOCKET GLOB
      Subscribes, prints "ready", then one JSON line per stream it finished:
      {"path", "len", "sha256", "start", "complete"}. Runs until killed.

  subscriber.py crash SOCKET NAME AFTER OUT
      Subscribes to the literal NAME with manual acknowledgement, prints
      "ready", reads (acknowledging each chunk) until at least AFTER bytes
      arrived, acknowledges exactly AFTER bytes (usually inside a chunk),
      writes the acknowledged bytes to
      OUT, prints "acked AFTER START" and waits to be SIGKILLed.

Every line is flushed at once: the test reads them while we run.
"""
import hashlib
import json
import sys
import time

from capturefs import Client


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def share(sock: str, glob: str) -> None:
    sub = Client(sock).subscribe(glob)
    say("ready")
    for stream in sub:
        data = stream.read()
        say(json.dumps({"path": stream.path, "len": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                        "start": stream.start_offset, "complete": stream.complete}))


def crash(sock: str, name: str, after: int, out: str) -> None:
    sub = Client(sock).subscribe(name, literal=True, auto_ack=False)
    say("ready")
    stream = next(sub)
    got = bytearray()
    for chunk in stream:
        got += chunk
        end = stream.start_offset + len(got)
        if end >= after:
            break
        stream.ack(end)  # keep the daemon's window open until we have enough
    keep = after - stream.start_offset
    with open(out, "wb") as f:
        f.write(got[:keep])
    stream.ack(after)  # flushed at once; the daemon reads it before our EOF
    say("acked %d %d" % (after, stream.start_offset))
    while True:  # the test kills us (SIGKILL): no goodbye, no more acks
        time.sleep(3600)


def main() -> None:
    mode = sys.argv[1]
    if mode == "share":
        share(sys.argv[2], sys.argv[3])
    elif mode == "crash":
        crash(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        raise SystemExit("unknown mode " + mode)


if __name__ == "__main__":
    main()
