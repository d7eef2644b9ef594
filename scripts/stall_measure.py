#!/usr/bin/env python3
"""How long a writer waits on a consumer that keeps up: the latency of each
128 KiB write into a capturefs mount whose caps hold the writer back
(mount it with --no-spill --stall-time 0 --max-memory 4M --max-stream 2M),
while CONSUMER reads the stream. docs/performance.md, "The stall time".

Usage: stall_measure.py MOUNTPOINT SOURCE_FILE 'CONSUMER COMMAND'
"""
import os
import subprocess
import sys
import time

mnt, src, consumer = sys.argv[1], sys.argv[2], sys.argv[3]
path = os.path.join(mnt, "m-%d" % os.getpid())
w = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
r = subprocess.Popen(["sh", "-c", consumer + ' < "$0" > /dev/null', path])
# Readiness: the consumer has the stream open (it is then its consumer).
deadline = time.monotonic() + 30
while os.path.realpath("/proc/%d/fd/0" % r.pid) != path:
    if time.monotonic() > deadline:
        sys.exit("the consumer never opened " + path)
    time.sleep(0.001)
lat = []
with open(src, "rb") as f:
    while True:
        b = f.read(128 * 1024)
        if not b:
            break
        t = time.monotonic()
        os.write(w, b)
        lat.append(time.monotonic() - t)
os.close(w)
r.wait()
lat.sort()
n = len(lat)
print("%-14s writes %5d  p50 %.4f s  p99 %.4f s  max %.4f s" % (consumer.split()[0] + " " + " ".join(consumer.split()[1:2]), n, lat[n // 2], lat[int(n * 0.99)], lat[-1]))
