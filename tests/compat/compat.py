#!/usr/bin/env python3
"""Compatibility suite: real tools writing into a capturefs mount.

Every case in CASES runs one real tool (sh, coreutils, tar, gzip, rsync,
curl, openssl, Python's zipfile, ...) twice:

  reference   into a directory on tmpfs (/dev/shm; a plain temp dir on the
              real filesystem when no tmpfs is writable, said in the output);
  mount       into a live `capturefs mount` (a fresh daemon per case and
              mode, with the case's mount flags and --socket), once per mode:

      after   the tool runs with nobody reading; once it has exited, every
              file it produced is read back by path from the mount (the
              reader drains it; the bytes waited for it);
      live    a socket consumer (capturefs.protocol, the package's codec)
              subscribed to the compared paths before the tool starts takes
              every stream while the tool runs, acknowledges as it goes,
              applies RENAMED, and files each complete stream under its final
              path (several complete streams at one path are concatenated in
              the order they were opened, as a consumer appending per path
              would).

Then the mount's result is compared with the reference: the set of final
paths (regular files, symlinks, directories matching the case's globs),
every file's bytes (first differing offset, sizes), symlink targets, and in
"after" mode st_size before reading. A symlink must never arrive as a stream.

Output is TAP (meson runs it with protocol 'tap'): one test point per case
and mode, "# SKIP" for a tool that is not installed or a mount flag this
build lacks, "# TODO" for a case the table marks as expected to fail (with
the reason). A failing point names the tool, the step and the difference,
with the tool's stderr and the daemon's log.

  compat.py                     run every case (TAP on stdout)
  compat.py -k rsync -k tar     only cases whose name contains one of these
  compat.py --list              the cases, one a line
  compat.py --diagnose          rerun each failure under strace -f -y
                                -e trace=file,desc and print the syscalls
                                that failed on the mount but not on tmpfs
  compat.py --repeat N          run each case and mode N times (a failure in
                                any run fails it, reported with its rate)
  compat.py --table [PATH]      run (with --diagnose, --repeat 5) and write
                                the results table as markdown (default:
                                RESULTS.md beside this file)
  compat.py --keep              keep the temp dirs (printed) for inspection

Environment: CAPTUREFS (the binary; meson sets it), CAPTUREFS_SRC (the
source tree, for python/capturefs; default: two levels up from here),
COMPAT_TOOL_TIMEOUT (seconds per tool run, default 60).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import os
import random
import re
import select
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
SRC_ROOT = os.environ.get("CAPTUREFS_SRC") or os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC_ROOT, "python"))
from capturefs import protocol as P  # noqa: E402
sys.path.insert(0, os.path.join(SRC_ROOT, "tests", "support"))
import capturefs_mount  # noqa: E402  (the mount fixture)

CAPTUREFS = os.environ.get("CAPTUREFS", "")
PY = sys.executable
TOOL_TIMEOUT = float(os.environ.get("COMPAT_TOOL_TIMEOUT", "60"))
WAIT = 20.0          # failure guard for every wait on the daemon or a reader
MTIME = 1700000000   # every input file and directory has this mtime
MODES = ("after", "live")

# ------------------------------------------------------------------ the cases
#
# argv: the command, with placeholders
#   {dir}  the output directory (tmpfs dir, or a directory in the mount)
#   {out}  {dir}/out, for tools with a single output
#   {src}  the inputs (outside the mount; see make_inputs)
#   {tmp}  a scratch directory outside the mount, fresh per run
# flags:   capturefs mount options the case needs
# compare: globs (fnmatch, '*' matches '/') of the paths, relative to {dir},
#          that are compared; also what the live consumer subscribes to
# setup:   shell script run before the tool (same placeholders), e.g. to put
#          an input where a tool writes its output (gzip -k writes beside
#          its input)
# xfail:   mode -> why this case is expected to fail in that mode (reported
#          as TODO; a pass is then reported as an unexpected pass)


@dataclasses.dataclass
class Case:
    name: str
    tool: str
    argv: List[str]
    flags: List[str] = dataclasses.field(default_factory=list)
    compare: List[str] = dataclasses.field(default_factory=lambda: ["*"])
    setup: Optional[str] = None
    modes: Tuple[str, ...] = MODES
    xfail: Dict[str, str] = dataclasses.field(default_factory=dict)
    needs: List[str] = dataclasses.field(default_factory=list)
    shown: Optional[str] = None   # the command as shown in the table (default: argv)

    def command(self) -> str:
        if self.shown:
            return self.shown
        if self.argv[:2] == ["sh", "-c"]:
            return self.argv[2]
        return " ".join(self.argv)

    def programs(self) -> List[str]:
        return self.needs or [self.argv[0]]


def sh(script: str) -> List[str]:
    return ["sh", "-c", script]


def py(script: str) -> List[str]:
    return [PY, "-c", script, "{dir}", "{src}"]


PY_OPEN = r"""
import os, random, sys
d = sys.argv[1]
r = random.Random(5)
with open(d + "/lines.txt", "w") as f:
    for i in range(3000):
        f.write("line %d %r\n" % (i, r.random()))
with open(d + "/blob.bin", "wb") as f:
    for i in range(24):
        f.write(r.randbytes(7000 + 37 * i))
    f.flush()
    os.fsync(f.fileno())
"""

PY_ZIP = r"""
import random, sys, zipfile
d, src = sys.argv[1], sys.argv[2]
r = random.Random(11)
with zipfile.ZipFile(d + "/bundle.zip", "w", zipfile.ZIP_DEFLATED) as z:
    for i in range(4):
        zi = zipfile.ZipInfo("part%d.bin" % i, date_time=(2024, 1, 1, 0, 0, 0))
        zi.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(zi, r.randbytes(20000) + b"x" * 50000)
    z.write(src + "/big.bin", "big.bin")  # streamed, then its local header is patched
"""

PY_WAVE = r"""
import random, sys, wave
r = random.Random(7)
w = wave.open(sys.argv[1] + "/tone.wav", "wb")
w.setnchannels(2)
w.setsampwidth(2)
w.setframerate(44100)
for i in range(40):  # no setnframes: the sizes in the header are patched after each call
    w.writeframes(r.randbytes(4096))
w.close()
"""

WAVE_LIVE = ("without setnframes, wave rewrites the RIFF and data sizes (offsets 4 and 40) "
             "after each writeframes(), after a live consumer took those bytes: EIO by "
             "design (docs/semantics.md: a write at an offset already consumed); see the --hold case")
ZIP_LIVE = ("zipfile seeks back to patch each local header after the member's data, "
            "after a live consumer took it: EIO by design; see the --hold case")

KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
IV = "0102030405060708090a0b0c0d0e0f10"

CASES: List[Case] = [
    Case("sh >", "sh", sh("cat {src}/text.txt > {out}")),
    # A hundred O_APPEND reopens, as a logging loop does (printf is a builtin:
    # no fork between them).
    Case("sh >>", "sh", sh("head -c 20000 {src}/text.txt > {out} && i=0 && "
                           "while [ $i -lt 100 ]; do printf 'append %d\\n' $i >> {out}; i=$((i+1)); done && "
                           "tail -c +20001 {src}/text.txt >> {out}")),
    Case("tee", "tee", sh("tee {dir}/a.bin {dir}/b.bin < {src}/mid.bin > /dev/null"),
         needs=["tee"]),
    Case("dd", "dd", ["dd", "if={src}/big.bin", "of={out}", "bs=64K", "conv=fsync", "status=none"]),
    Case("cp", "cp", ["cp", "{src}/big.bin", "{dir}/big.bin"]),
    Case("cp -a tree with symlink", "cp", ["cp", "-a", "{src}/symtree", "{dir}/tree"]),
    Case("ln -s", "ln", ["ln", "-s", "../elsewhere/file.txt", "{dir}/link"]),
    # after only: a live consumer would take a.txt before ln sees it.
    Case("ln (hard link)", "ln", ["ln", "{dir}/a.txt", "{dir}/b.txt"], setup="cp {src}/text.txt {dir}/a.txt",
         modes=("after",), xfail={"after": "hard links are refused with EPERM by design (docs/semantics.md: link); "
                                           "a stream has one name"}),
    Case("mv from outside", "mv", ["mv", "{tmp}/moved.bin", "{dir}/moved.bin"],
         setup="cp -p {src}/mid.bin {tmp}/moved.bin"),
    Case("gzip -c", "gzip", sh("gzip -c {src}/big.bin > {dir}/big.bin.gz"), needs=["gzip"]),
    # gzip/xz/bzip2 -k write beside their input, so the setup puts the input
    # into {dir} (copied in from {src}); the tool consumes it there (the
    # name leaves the mount once read). Only the outputs are compared.
    Case("gzip -k", "gzip", ["gzip", "-k", "{dir}/big.bin"], compare=["*.gz"],
         setup="cp -p {src}/big.bin {dir}/big.bin"),
    Case("xz -k", "xz", ["xz", "-k", "-T1", "{dir}/mid.bin"], compare=["*.xz"],
         setup="cp -p {src}/mid.bin {dir}/mid.bin"),
    Case("bzip2 -k", "bzip2", ["bzip2", "-k", "{dir}/mid.bin"], compare=["*.bz2"],
         setup="cp -p {src}/mid.bin {dir}/mid.bin"),
    Case("zstd -o", "zstd", ["zstd", "-q", "{src}/big.bin", "-o", "{dir}/big.bin.zst"]),
    Case("tar -cf", "tar", ["tar", "--sort=name", "-cf", "{dir}/tree.tar", "-C", "{src}", "tree"]),
    Case("tar -czf", "tar", ["tar", "--sort=name", "-czf", "{dir}/tree.tgz", "-C", "{src}", "tree"],
         needs=["tar", "gzip"]),
    Case("tar -xf", "tar", ["tar", "-xf", "{src}/tree.tar", "-C", "{dir}"]),
    # rsync writes .NAME.XXXXXX, closes it, then renames it into place: a
    # live consumer that had it all gets RENAMED after CLOSED.
    Case("rsync -a file", "rsync", ["rsync", "-a", "{src}/big.bin", "{dir}/big.bin"]),
    Case("rsync -a tree", "rsync", ["rsync", "-a", "{src}/tree/", "{dir}/tree/"]),
    Case("rsync -a --inplace file", "rsync", ["rsync", "-a", "--inplace", "{src}/big.bin", "{dir}/big.bin"]),
    Case("rsync -a --inplace tree", "rsync", ["rsync", "-a", "--inplace", "{src}/tree/", "{dir}/tree/"]),
    Case("sort -o", "sort", ["sort", "-o", "{dir}/sorted.txt", "{src}/text.txt"]),
    Case("split", "split", ["split", "-b", "100K", "-d", "{src}/big.bin", "{dir}/part-"]),
    Case("curl -o file://", "curl", ["curl", "-sS", "-o", "{dir}/fetched.bin", "file://{src}/mid.bin"]),
    Case("openssl enc -out", "openssl", ["openssl", "enc", "-aes-256-cbc", "-K", KEY, "-iv", IV,
                                          "-in", "{src}/mid.bin", "-out", "{dir}/mid.enc"]),
    Case("python open()", "python3", py(PY_OPEN),
         shown="python3: open(dir/'lines.txt', 'w') + open(dir/'blob.bin', 'wb'), writes, fsync"),
    Case("python zipfile --hold", "python3", py(PY_ZIP), flags=["--hold", "*.zip"],
         shown="python3: zipfile.ZipFile(dir/'bundle.zip', 'w', ZIP_DEFLATED): writestr x4, write(1.5 MiB)"),
    Case("python zipfile", "python3", py(PY_ZIP), xfail={"live": ZIP_LIVE},
         shown="python3: zipfile.ZipFile(dir/'bundle.zip', 'w', ZIP_DEFLATED): writestr x4, write(1.5 MiB)"),
    Case("python wave --hold", "python3", py(PY_WAVE), flags=["--hold", "*.wav"],
         shown="python3: wave.open(dir/'tone.wav', 'wb'), writeframes x40 without setnframes"),
    Case("python wave", "python3", py(PY_WAVE), xfail={"live": WAVE_LIVE},
         shown="python3: wave.open(dir/'tone.wav', 'wb'), writeframes x40 without setnframes"),
]

# ----------------------------------------------------------------- the inputs


def make_inputs(src: str) -> None:
    """Deterministic inputs from a seeded PRNG, all with mtime MTIME:
    text.txt (~48 KiB of lines), mid.bin (200 KiB, > 64 KiB), big.bin
    (1.5 MiB, > 1 MiB), tree/ (nested directories, an empty file),
    symtree/ (tree/ plus a relative symlink), tree.tar (of tree/)."""
    rng = random.Random(20240611)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(600)]

    def text(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += (" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) + "\n").encode()
        return bytes(out[:n - 1]) + b"\n"

    def mixed(n: int) -> bytes:  # half random, half text: compresses about 2:1
        out = bytearray()
        while len(out) < n:
            out += rng.randbytes(4096) if rng.random() < 0.5 else text(4096)
        return bytes(out[:n])

    files = {
        "text.txt": text(48 * 1024),
        "mid.bin": mixed(200 * 1024),
        "big.bin": mixed(1536 * 1024 + 123),
    }
    tree = {
        "top.bin": mixed(70 * 1024),
        "a/one.txt": text(3000),
        "a/b/two.bin": mixed(100 * 1024 + 7),
        "a/b/empty": b"",
        "c/three.txt": text(500),
    }
    for rel, data in files.items():
        write(os.path.join(src, rel), data)
    for root in ("tree", "symtree"):
        for rel, data in tree.items():
            write(os.path.join(src, root, rel), data)
    os.symlink("a/one.txt", os.path.join(src, "symtree", "one-link"))
    for dirpath, dirnames, filenames in os.walk(src, topdown=False):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), (MTIME, MTIME), follow_symlinks=False)

    def norm(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        ti.mtime = MTIME
        return ti

    with tarfile.open(os.path.join(src, "tree.tar"), "w", format=tarfile.GNU_FORMAT) as t:
        t.add(os.path.join(src, "tree"), "tree", filter=norm)
    os.utime(os.path.join(src, "tree.tar"), (MTIME, MTIME))


def write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# -------------------------------------------------------------- environment


def fuse_unavailable() -> Optional[str]:
    return capturefs_mount.fuse_unavailable(CAPTUREFS)


def fs_type(path: str) -> str:
    """The filesystem type of the mount holding path (from /proc/self/mountinfo)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                point = left.split()[4].replace("\\040", " ")
                if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                    best, kind = point, right.split()[0]
    except OSError:
        pass
    return kind


def reference_base() -> Tuple[str, str]:
    """A fresh directory for the reference runs and the inputs, and what it is."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) and fs_type("/dev/shm") == "tmpfs":
        return tempfile.mkdtemp(prefix="capturefs-compat.", dir="/dev/shm"), "tmpfs (/dev/shm)"
    d = tempfile.mkdtemp(prefix="capturefs-compat-ref.")
    return d, "no writable tmpfs: a plain temp dir on %s (%s)" % (fs_type(d), os.path.dirname(d))


_help_cache: Optional[str] = None


def mount_help() -> str:
    global _help_cache
    if _help_cache is None:
        r = subprocess.run([CAPTUREFS, "mount", "--help"], capture_output=True, text=True, timeout=30)
        _help_cache = r.stdout + r.stderr
    return _help_cache


def unsupported_flag(flags: Sequence[str]) -> Optional[str]:
    for f in flags:
        if f.startswith("--") and f not in mount_help():
            return "needs %s, which `capturefs mount --help` does not mention (not in this build)" % f
    return None


# ------------------------------------------------------------------ the daemon


class Daemon(capturefs_mount.Daemon):
    """`capturefs mount MNT -f --ready-fd N --socket SOCK FLAGS...` in a temp
    dir (tests/support/capturefs_mount.py)."""

    def __init__(self, flags: Sequence[str]) -> None:
        super().__init__(CAPTUREFS, *flags, prefix="capturefs-compat.", wait=WAIT)


# ---------------------------------------------------------- the live consumer


@dataclasses.dataclass
class LiveStream:
    id: int
    path: bytes
    start: int
    order: int
    first_path: bytes = b""
    data: bytearray = dataclasses.field(default_factory=bytearray)
    renames: List[bytes] = dataclasses.field(default_factory=list)
    status: Optional[str] = None
    reason: str = ""
    total: int = -1


class LiveCollector:
    """A consuming subscription on the daemon's socket, drained by a thread.

    Built on the package's codec (capturefs.protocol) rather than
    Client.subscribe(): that hands streams out one at a time, and a tool
    such as tee writes several at once, so every stream is taken here as
    its frames arrive. Each DATA is acknowledged at once (the stream then
    finishes, and leaves the mount, as soon as its CLOSED is in)."""

    def __init__(self, sock_path: str, patterns: Sequence[str]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sock_path)
        self.dec = P.Decoder(P.Peer.SERVER)
        self.send_mu = threading.Lock()
        self.cv = threading.Condition()
        self.streams: Dict[int, LiveStream] = {}
        self.problems: List[str] = []
        self.error: Optional[str] = None
        self.ended = False
        self.subscribed = False
        self.frames = 0
        self.status_replies: List[List[P.StreamStatus]] = []
        self._status_parts: List[P.StreamStatus] = []
        self._send(P.encode(P.Hello()) + P.encode(P.Subscribe(patterns=tuple(os.fsencode(p) for p in patterns))))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        with self.cv:
            if not self.cv.wait_for(lambda: self.subscribed or self.ended, WAIT):
                raise RuntimeError("no SUBSCRIBED from the daemon within %s s" % WAIT)
            if not self.subscribed:
                raise RuntimeError("subscribing failed: %s" % self.error)

    def _send(self, data: bytes) -> None:
        with self.send_mu:
            self.sock.sendall(data)

    def _run(self) -> None:
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    self.dec.finish()
                    break
                self.dec.feed(data)
                acks = bytearray()
                with self.cv:
                    n = 0
                    for f in self.dec:
                        self._on_frame(f, acks)
                        n += 1
                # The ACKs go out before anyone is told of these frames: a
                # STATUS asked for after that sees their effect.
                if acks:
                    self._send(bytes(acks))
                with self.cv:
                    self.frames += n
                    self.cv.notify_all()
        except (OSError, P.ProtocolError) as e:
            if not self.ended:
                self.error = self.error or "connection: %s" % e
        finally:
            with self.cv:
                self.ended = True
                self.cv.notify_all()

    def _on_frame(self, f: object, acks: bytearray) -> None:
        if isinstance(f, P.Hello):
            return
        if isinstance(f, P.Subscribed):
            self.subscribed = True
        elif isinstance(f, P.Opened):
            s = LiveStream(f.id, f.path, f.offset, len(self.streams), first_path=f.path)
            self.streams[f.id] = s
            if f.offset != 0:
                self.problems.append("%s: OPENED at offset %d (someone else consumed the start)"
                                     % (show(f.path), f.offset))
        elif isinstance(f, P.Data):
            s = self.streams.get(f.id)
            if s is None:
                self.problems.append("DATA for unknown stream %d" % f.id)
                return
            if f.offset != s.start + len(s.data):
                self.problems.append("%s: DATA at offset %d, expected %d"
                                     % (show(s.path), f.offset, s.start + len(s.data)))
            s.data += f.data
            acks += P.encode(P.Ack(f.id, f.offset + len(f.data)))
        elif isinstance(f, P.Renamed):
            s = self.streams.get(f.id)
            if s is not None:
                s.renames.append(f.path)
                s.path = f.path
        elif isinstance(f, P.Closed):
            s = self.streams.get(f.id)
            if s is None:
                self.problems.append("CLOSED for unknown stream %d" % f.id)
                return
            s.total = f.total
            s.status = "complete" if f.status == P.CloseStatus.COMPLETE else "aborted"
            s.reason = f.reason
            if s.status == "complete":
                if f.total != s.start + len(s.data):
                    self.problems.append("%s: CLOSED total %d, but %d bytes arrived"
                                         % (show(s.path), f.total, s.start + len(s.data)))
                acks += P.encode(P.Ack(f.id, f.total))
        elif isinstance(f, P.StatusReply):
            self._status_parts.extend(f.streams)
            if not f.more:
                self.status_replies.append(self._status_parts)
                self._status_parts = []
        elif isinstance(f, P.Error):
            self.error = "ERROR %s: %s" % (P.code_name(int(f.code)), f.message)

    def status(self) -> List[P.StreamStatus]:
        """A STATUS round trip: a barrier for every OPENED and ACK before it."""
        with self.cv:
            n = len(self.status_replies)
        self._send(P.encode(P.StatusRequest()))
        with self.cv:
            if not self.cv.wait_for(lambda: len(self.status_replies) > n or self.ended, WAIT):
                raise TimeoutError("no STATUS reply within %s s" % WAIT)
            if len(self.status_replies) <= n:
                raise ConnectionError("the connection ended: %s" % self.error)
            return self.status_replies[n]

    def settle(self, patterns: Sequence[str]) -> Optional[str]:
        """After the tool exited: waits until every stream handed to us is
        closed and no stream matching patterns is left in the mount.
        Returns why not, if that did not happen within WAIT seconds."""
        deadline = time.monotonic() + WAIT
        while True:
            live = self.status()
            with self.cv:
                open_ = [s for s in self.streams.values() if s.status is None]
                left = [r for r in live if matches(os.fsdecode(r.path), patterns)]
                if not open_ and not left:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.ended:
                    states = {0: "writing", 1: "streaming", 2: "held", 3: "draining"}
                    why = ["streams not finished %.0f s after the tool exited:" % WAIT]
                    why += ["  handed to us, no CLOSED: %s (%d bytes so far)" % (show(s.path), len(s.data))
                            for s in open_]
                    why += ["  still in the mount: %s (%s, written %d, delivered %d)"
                            % (show(r.path), states.get(int(r.state), r.state), r.written, r.delivered)
                            for r in left]
                    if self.error:
                        why.append("  connection: %s" % self.error)
                    return "\n".join(why)
                frames = self.frames
                # Wait for the next frame (an OPENED of a released stream, a
                # CLOSED); then ask again. Bounded by the deadline.
                self.cv.wait_for(lambda: self.frames != frames or self.ended, min(remaining, 1.0))

    def close(self) -> None:
        self.ended = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(WAIT)


# ------------------------------------------------------------- the snapshots

# An entry: ("file", bytes, st_size or None) | ("link", target, None) | ("dir", b"", None)
Entry = Tuple[str, bytes, Optional[int]]


def show(p: object) -> str:
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    return repr(p) if any(c in str(p) for c in " \n\t'\"") else str(p)


def matches(rel: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, g) for g in globs)


def walk(top: str, globs: Sequence[str]) -> Tuple[Dict[str, Tuple[str, os.stat_result]], List[str]]:
    """Every entry below top matching globs: rel -> (kind, lstat); and errors."""
    found: Dict[str, Tuple[str, os.stat_result]] = {}
    errors: List[str] = []

    def onerror(e: OSError) -> None:
        errors.append("listing %s: %s" % (e.filename, e.strerror))

    for dirpath, dirnames, filenames in os.walk(top, onerror=onerror):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, top)
            try:
                st = os.lstat(full)
            except OSError as e:
                errors.append("lstat %s: %s" % (rel, e.strerror))
                continue
            kind = ("link" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode)
                    else "file" if stat.S_ISREG(st.st_mode) else "other")
            if matches(rel, globs):
                found[rel] = (kind, st)
    return found, errors


def read_guarded(path: str) -> Tuple[Optional[bytes], Optional[str]]:
    """Reads a file to EOF in a thread (a reader of the mount waits while a
    writer is open: a hang becomes an error after WAIT seconds)."""
    box: Dict[str, object] = {}

    def run() -> None:
        try:
            with open(path, "rb") as f:
                box["data"] = f.read()
        except OSError as e:
            box["err"] = "%s (%s)" % (e.strerror, errno_name(e.errno))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(WAIT)
    if t.is_alive():
        return None, "no EOF within %s s (a writer still holds it open?)" % WAIT
    if "err" in box:
        return None, str(box["err"])
    return box["data"], None  # type: ignore[return-value]


def errno_name(n: Optional[int]) -> str:
    import errno
    return errno.errorcode.get(n or 0, str(n))


def snapshot_plain(top: str, globs: Sequence[str]) -> Dict[str, Entry]:
    found, errors = walk(top, globs)
    if errors:
        raise RuntimeError("; ".join(errors))
    snap: Dict[str, Entry] = {}
    for rel, (kind, st) in found.items():
        full = os.path.join(top, rel)
        if kind == "file":
            with open(full, "rb") as f:
                snap[rel] = ("file", f.read(), st.st_size)
        elif kind == "link":
            snap[rel] = ("link", os.fsencode(os.readlink(full)), None)
        else:
            snap[rel] = (kind, b"", None)
    return snap


def snapshot_after(top: str, globs: Sequence[str], problems: List[str]) -> Dict[str, Entry]:
    """The mount after the tool: list first, then drain each file by path."""
    found, errors = walk(top, globs)
    problems.extend(errors)
    snap: Dict[str, Entry] = {}
    for rel, (kind, st) in sorted(found.items()):
        full = os.path.join(top, rel)
        if kind == "file":
            data, err = read_guarded(full)
            if err:
                problems.append("reading %s from the mount: %s" % (rel, err))
                continue
            snap[rel] = ("file", data or b"", st.st_size)
        elif kind == "link":
            try:
                snap[rel] = ("link", os.fsencode(os.readlink(full)), None)
            except OSError as e:
                problems.append("readlink %s: %s" % (rel, e.strerror))
        else:
            snap[rel] = (kind, b"", None)
    return snap


def snapshot_live(col: LiveCollector, top: str, prefix: str, globs: Sequence[str],
                  problems: List[str], notes: List[str]) -> Dict[str, Entry]:
    """What the live consumer collected (complete streams by final path),
    plus the symlinks and directories left in the mount."""
    snap: Dict[str, Entry] = {}
    counts: Dict[str, int] = {}
    for s in sorted(col.streams.values(), key=lambda s: s.order):
        path = os.fsdecode(s.path)
        if s.renames:
            notes.append("stream %d renamed: %s" % (s.id, " -> ".join(show(p) for p in [s.first_path] + s.renames)))
        if s.status != "complete":
            notes.append("stream %d %s: %s (%d bytes arrived, total %d)" % (
                s.id, show(path), "aborted, " + s.reason if s.status == "aborted" else "not closed",
                len(s.data), s.total))
            continue
        if not path.startswith(prefix):
            problems.append("stream %d ended at %s, outside %s" % (s.id, show(path), prefix))
            continue
        rel = path[len(prefix):]
        counts[rel] = counts.get(rel, 0) + 1
        if rel in snap:
            snap[rel] = ("file", snap[rel][1] + bytes(s.data), None)
        else:
            snap[rel] = ("file", bytes(s.data), None)
    for rel, n in counts.items():
        if n > 1:
            totals = [s.total for s in sorted(col.streams.values(), key=lambda s: s.order)
                      if s.status == "complete" and os.fsdecode(s.path) == prefix + rel]
            notes.append("%s arrived as %d complete streams (concatenated), of %s bytes" % (
                rel, n, " + ".join(str(t) for t in totals)))
    found, errors = walk(top, globs)
    problems.extend(errors)
    for rel, (kind, st) in found.items():
        full = os.path.join(top, rel)
        if kind == "file":
            problems.append("%s is still in the mount after the tool exited (%d bytes), "
                            "not delivered to the consumer" % (rel, st.st_size))
        elif kind == "link":
            if rel in snap:
                problems.append("%s is a symlink but was also delivered as a stream" % rel)
            try:
                snap[rel] = ("link", os.fsencode(os.readlink(full)), None)
            except OSError as e:
                problems.append("readlink %s: %s" % (rel, e.strerror))
        elif rel not in snap:
            snap[rel] = (kind, b"", None)
    return snap


def compare(want: Dict[str, Entry], got: Dict[str, Entry], check_size: bool) -> List[str]:
    diffs = []
    for rel in sorted(set(want) - set(got)):
        diffs.append("missing in the mount: %s (%s%s)" % (rel, want[rel][0],
                     ", %d bytes" % len(want[rel][1]) if want[rel][0] == "file" else ""))
    for rel in sorted(set(got) - set(want)):
        diffs.append("not in the tmpfs output: %s (%s%s)" % (rel, got[rel][0],
                     ", %d bytes" % len(got[rel][1]) if got[rel][0] == "file" else ""))
    for rel in sorted(set(want) & set(got)):
        wk, wd, _ = want[rel]
        gk, gd, gsize = got[rel]
        if wk != gk:
            diffs.append("%s: a %s in the mount, a %s on tmpfs" % (rel, gk, wk))
        elif wk == "link" and wd != gd:
            diffs.append("%s: symlink target %r, tmpfs %r" % (rel, os.fsdecode(gd), os.fsdecode(wd)))
        elif wk == "file":
            if wd != gd:
                n = min(len(wd), len(gd))
                at = next((i for i in range(n) if wd[i] != gd[i]), n)
                diffs.append("%s: %d bytes, tmpfs %d bytes; first difference at offset %d%s" % (
                    rel, len(gd), len(wd), at,
                    "" if at >= n else " (mount %s, tmpfs %s)" % (gd[at:at + 8].hex(), wd[at:at + 8].hex())))
            if check_size and gsize is not None and gsize != len(wd):
                diffs.append("%s: stat st_size %d before reading, tmpfs has %d bytes" % (rel, gsize, len(wd)))
    return diffs


# ------------------------------------------------------------------ the runs


@dataclasses.dataclass
class ToolRun:
    argv: List[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False


def expand(s: str, dirs: Dict[str, str]) -> str:
    for k, v in dirs.items():
        s = s.replace("{%s}" % k, v)
    return s


def tool_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.update(LC_ALL="C", TZ="UTC", PYTHONDONTWRITEBYTECODE="1")
    env.pop("GZIP", None)
    env.pop("XZ_OPT", None)
    env.pop("ZSTD_CLEVEL", None)
    return env


def run_tool(argv: List[str], cwd: str, strace_log: Optional[str] = None) -> ToolRun:
    if strace_log:
        argv = ["strace", "-f", "-y", "-qq", "-s", "64", "-e", "trace=file,desc", "-o", strace_log, "--"] + argv
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=cwd, env=tool_env(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=TOOL_TIMEOUT)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, err = p.communicate()
        timed_out = True
    return ToolRun(argv, p.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                   time.monotonic() - t0, timed_out)


def run_setup(case: Case, dirs: Dict[str, str]) -> Optional[str]:
    if not case.setup:
        return None
    r = subprocess.run(["sh", "-c", expand(case.setup, dirs)], capture_output=True, text=True,
                       env=tool_env(), cwd=dirs["tmp"], timeout=TOOL_TIMEOUT)
    if r.returncode != 0:
        return "setup `%s` exited %d: %s" % (case.setup, r.returncode, r.stderr.strip())
    return None


@dataclasses.dataclass
class Outcome:
    ok: bool
    lines: List[str]            # why it failed (step, differences, stderr)
    summary: str = ""           # one line for the table
    notes: List[str] = dataclasses.field(default_factory=list)
    mnt: str = ""               # the mountpoint it ran in (for the strace filter)


class Reference:
    """The tmpfs run of a case (done once, shared by the modes)."""

    def __init__(self, case: Case, base: str, slug: str, src: str) -> None:
        self.dir = os.path.join(base, "ref", slug)
        self.tmp = os.path.join(base, "ref-tmp", slug)
        os.makedirs(self.dir)
        os.makedirs(self.tmp)
        self.dirs = {"dir": self.dir, "out": os.path.join(self.dir, "out"), "src": src, "tmp": self.tmp}
        self.error = run_setup(case, self.dirs)
        self.run: Optional[ToolRun] = None
        self.snap: Dict[str, Entry] = {}
        if self.error:
            return
        self.run = run_tool([expand(a, self.dirs) for a in case.argv], self.tmp)
        if self.run.rc != 0:
            self.error = "the tool failed on tmpfs (exit %d):\n%s" % (self.run.rc, indent(self.run.stderr))
            return
        self.snap = snapshot_plain(self.dir, case.compare)
        if not any(k == "file" or k == "link" for k, _, _ in self.snap.values()):
            self.error = "the tool produced no file matching %s on tmpfs" % case.compare


def run_mode(case: Case, mode: str, ref: Reference, src: str, tmp: str,
             strace_log: Optional[str] = None, keep: bool = False) -> Outcome:
    """One mount run of a case in one mode; a fresh daemon."""
    try:
        d = Daemon(case.flags)
    except RuntimeError as e:
        return Outcome(False, ["step: mount", str(e)], "mount failed")
    lines: List[str] = []
    problems: List[str] = []
    notes: List[str] = []
    run: Optional[ToolRun] = None
    col: Optional[LiveCollector] = None
    hung = False
    try:
        out_dir = os.path.join(d.mnt, mode)
        os.mkdir(out_dir)
        dirs = {"dir": out_dir, "out": os.path.join(out_dir, "out"), "src": src, "tmp": tmp}
        step = "setup"
        err = run_setup(case, dirs)
        if err:
            return Outcome(False, ["step: setup in the mount", err], "setup in the mount failed: " + err,
                           mnt=d.mnt)
        patterns = [mode + "/" + g for g in case.compare]
        if mode == "live":
            step = "subscribe"
            col = LiveCollector(d.sock, patterns)
        step = "tool run"
        run = run_tool([expand(a, dirs) for a in case.argv], tmp, strace_log)
        if mode == "after":
            step = "read back by path (after)"
            got = snapshot_after(out_dir, case.compare, problems)
        else:
            step = "live consumer"
            assert col is not None
            why = col.settle(patterns)
            if why:
                problems.append(why)
            if col.error:
                problems.append("socket: %s" % col.error)
            problems.extend(col.problems)
            col.close()
            got = snapshot_live(col, out_dir, mode + "/", case.compare, problems, notes)
        step = "compare"
        diffs = compare(ref.snap, got, check_size=(mode == "after"))
        # A reader still blocked in the mount would keep it busy: kill instead.
        hung = any("no EOF within" in p for p in problems)
    except Exception as e:  # noqa: BLE001  (a broken step is a failure of this case, with its name)
        hung = isinstance(e, TimeoutError)
        lines.append("step: %s: %s: %s" % (step, type(e).__name__, e))
        diffs = []
    finally:
        if col is not None:
            col.close()
        if hung:
            d.kill()
            stop_problems = ""
        else:
            stop_problems = d.stop(keep=keep)
    failed_tool = run is not None and (run.rc != 0 or run.timed_out)
    if failed_tool and run is not None:
        lines.append("step: tool run: %s %s" % (
            "timed out after %.0f s" % TOOL_TIMEOUT if run.timed_out else "exit status %d" % run.rc,
            "(tmpfs: exit 0)"))
    if problems:
        lines.append("step: %s:" % ("read back by path" if mode == "after" else "live consumer"))
        lines.extend(indent(p) for p in problems)
    if diffs:
        lines.append("step: compare with tmpfs (%s):" % mode)
        lines.extend(indent(x) for x in diffs[:12])
        if len(diffs) > 12:
            lines.append("  ... %d more differences" % (len(diffs) - 12))
    if stop_problems:
        lines.append("step: unmount:")
        lines.append(indent(stop_problems))
    ok = not lines
    if keep:
        lines.append("kept: %s" % d.root)
    summary = ""
    if not ok:
        if failed_tool and run is not None:
            first = first_error_line(run.stderr)
            summary = "%s %s%s" % (case.tool, "timed out" if run.timed_out else "exit %d" % run.rc,
                                   ": " + first if first else "")
            if diffs:
                summary += "; " + diffs[0]
        elif diffs:
            summary = diffs[0]
        elif problems:
            summary = problems[0].splitlines()[0]
        else:
            summary = lines[0]
        summary = sanitize(summary, out_dir, src)
        if run is not None and run.stderr.strip():
            lines.append("tool stderr:")
            lines.append(indent(run.stderr.rstrip()[-3000:]))
        daemon_log = d.stderr().strip()
        if daemon_log and not stop_problems:
            lines.append("daemon stderr:")
            lines.append(indent(daemon_log[-2000:]))
    if notes:
        lines.append("notes:")
        lines.extend(indent(n) for n in notes)
    return Outcome(ok, lines, summary, notes, d.mnt)


def first_error_line(stderr: str) -> str:
    for line in stderr.splitlines():
        if line.strip():
            return line.strip()[:160]
    return ""


def indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line for line in text.splitlines()) if text else by


# ------------------------------------------------------------ strace diagnosis

_FAIL = re.compile(r"^(?:\d+\s+)?(\w+)\((.*)\s+= -1 (E[A-Z0-9]+)")
_UNFINISHED = re.compile(r"^(\d+)\s+(.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$")


def strace_calls(log: str) -> List[str]:
    """The calls of an strace -f log, each on one line: an "<unfinished
    ...>" line is joined with its "<... resumed>" line (same pid)."""
    pending: Dict[str, str] = {}
    calls = []
    try:
        with open(log, errors="replace") as f:
            for raw in f:
                line = raw.rstrip("\n")
                m = _UNFINISHED.match(line)
                if m:
                    pending[m.group(1)] = m.group(1) + "  " + m.group(2)
                    continue
                m = _RESUMED.match(line)
                if m and m.group(1) in pending:
                    calls.append(pending.pop(m.group(1)) + m.group(3))
                    continue
                calls.append(line)
    except OSError:
        pass
    return calls


def failing_syscalls(log: str, path: str) -> List[Tuple[str, str, str]]:
    """(syscall, errno, line) of each failed call in an strace -y log that
    names path (a path argument or an fd shown as N</path...>)."""
    out = []
    for line in strace_calls(log):
        m = _FAIL.match(line)
        if m and path in line:
            out.append((m.group(1), m.group(3), line.strip()))
    return out


def syscall_key(sc: str, err: str, line: str) -> Tuple[str, ...]:
    """What identifies a failed call across the tmpfs and the mount run:
    syscall, errno, and its path arguments (already relative to {dir}),
    with mkstemp-style suffixes (.XXXXXX) masked."""
    head = line.rpartition(" = -1 ")[0]
    paths = re.findall(r'"[^"]*"|<[^>]*>', head)
    return (sc, err) + tuple(re.sub(r"\.[A-Za-z0-9]{6}(?=[\"/>]|$)", ".XXXXXX", p) for p in paths)


def known_fallback(syscall: str, err: str) -> bool:
    """Failures a tool is expected to meet on the mount and to handle:
    reflink/copy offload refused across filesystems, xattrs (ENOTSUP)."""
    if syscall in ("ioctl", "copy_file_range"):
        return err in ("EXDEV", "ENOTTY", "EOPNOTSUPP", "EINVAL", "ENOSYS")
    return syscall.endswith("xattr") and err in ("EOPNOTSUPP", "ENOTSUP", "ENODATA")


def sanitize(text: str, out_dir: str, src: str) -> str:
    """Paths as the table shows them: {dir} for the output directory, {src}."""
    return text.replace(out_dir, "{dir}").replace(src, "{src}")


def compact(line: str, out_dir: str, src: str) -> str:
    line = re.sub(r"^\d+\s+", "", line)
    line = sanitize(line, out_dir, src)
    line = re.sub(r"AT_FDCWD<[^>]*>", "AT_FDCWD", line)
    line = re.sub(r" /\* .*? \*/", "", line)
    line = re.sub(r"\[\{tv_sec=[^\]]*\]", "[times]", line)
    line = re.sub(r"\b0x[0-9a-f]{6,}\b", "0x...", line)
    line = re.sub(r"\)\s+= -1 ", ") = -1 ", line)
    head, sep, tail = line.rpartition(" = -1 ")
    if len(head) > 160:
        head = head[:160] + "..."
    return head + sep + tail


def diagnose(case: Case, mode: str, ref: Reference, base: str, src: str,
             slug: str) -> Tuple[List[str], str, bool]:
    """Reruns the tmpfs and the mount run under strace -f -y -e
    trace=file,desc. Returns the report (the syscalls that failed on the
    mount and whose (syscall, errno) did not fail on tmpfs, grouped, in
    order of first appearance) and the first of them that is not a known
    fallback ("" if none), and whether the run passed under strace (the
    failure is timing-dependent; strace slows the tool down)."""
    if shutil.which("strace") is None:
        return ["(strace is not installed: no diagnosis)"], "", False
    sdir = os.path.join(base, "strace", slug + "-" + mode)
    for sub in ("ref", "tmp-ref", "tmp-mnt"):
        os.makedirs(os.path.join(sdir, sub))
    dirs = {"dir": os.path.join(sdir, "ref"), "out": os.path.join(sdir, "ref", "out"), "src": src,
            "tmp": os.path.join(sdir, "tmp-ref")}
    run_setup(case, dirs)
    ref_log = os.path.join(sdir, "ref.strace")
    run_tool([expand(a, dirs) for a in case.argv], dirs["tmp"], ref_log)
    ref_fails = {syscall_key(sc, err, compact(line, dirs["dir"], src))
                 for sc, err, line in failing_syscalls(ref_log, dirs["dir"])}
    mnt_log = os.path.join(sdir, "mnt.strace")
    outcome = run_mode(case, mode, ref, src, os.path.join(sdir, "tmp-mnt"), strace_log=mnt_log)
    out_dir = os.path.join(outcome.mnt, mode)
    found = failing_syscalls(mnt_log, outcome.mnt) if outcome.mnt else []
    groups: Dict[Tuple[str, str], List[object]] = {}
    for sc, err, line in found:
        line = compact(line, out_dir, src)
        if syscall_key(sc, err, line) in ref_fails:
            continue
        g = groups.setdefault((sc, err), [0, line])
        g[0] = int(g[0]) + 1  # type: ignore[call-overload]
    lines = ["under strace the %s run %s" % (mode, "passed (timing-dependent)" if outcome.ok else "failed again")]
    if outcome.ok:
        return lines, "", True
    if not groups:
        lines.append("no syscall failed on the mount that did not also fail on tmpfs")
    culprit = ""
    ordered = sorted(groups.items(), key=lambda kv: known_fallback(*kv[0]))  # stable: first seen first
    for (sc, err), (count, example) in ordered:
        fallback = known_fallback(sc, err)
        if not fallback and not culprit:
            culprit = str(example)
        lines.append("%s%s%s" % ("known fallback: " if fallback else "failed on the mount only: ", example,
                                 "  [%d calls]" % count if int(count) > 1 else ""))  # type: ignore[call-overload]
    return lines, culprit, False


# ------------------------------------------------------------------ the driver


def slugify(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


@dataclasses.dataclass
class Result:
    case: Case
    mode: str
    status: str          # pass fail xfail xpass skip
    reason: str = ""     # skip / xfail reason, or the failure summary
    culprit: str = ""    # the first syscall that failed on the mount only (--diagnose)
    passes_traced: bool = False  # it passed when rerun under strace (--diagnose)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", action="append", default=[], metavar="TEXT",
                    help="only cases whose name contains TEXT (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the cases")
    ap.add_argument("--diagnose", action="store_true",
                    help="rerun failures under strace and print the syscalls that failed on the mount")
    ap.add_argument("--table", nargs="?", const=os.path.join(HERE, "RESULTS.md"), metavar="PATH",
                    help="write the markdown results table (implies --diagnose)")
    ap.add_argument("--keep", action="store_true", help="keep temp dirs")
    ap.add_argument("--repeat", type=int, default=None, metavar="N",
                    help="run each case and mode N times; a failure in any run fails it, with its "
                         "rate (default 1; 5 with --table)")
    args = ap.parse_args(argv)

    cases = [c for c in CASES if not args.k or any(k in c.name for k in args.k)]
    if args.list:
        for c in CASES:
            print("%-26s %-28s %s" % (c.name, " ".join(c.flags) or "-", c.command()))
        return 0
    if len({c.name for c in CASES}) != len(CASES):
        print("Bail out! duplicate case names")
        return 1
    if not cases:
        print("1..0 # SKIP no case matches %s" % args.k)
        return 0
    diagnose_failures = args.diagnose or args.table is not None
    if args.repeat is None:
        args.repeat = 5 if args.table is not None else 1
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]

    why = fuse_unavailable()
    if why:
        print("1..0 # SKIP %s" % why)
        return 0

    base, ref_kind = reference_base()
    print("TAP version 13")
    print("1..%d" % sum(len(c.modes) for c in cases))
    print("# reference runs: %s, %s" % (ref_kind, base))
    print("# capturefs: %s" % CAPTUREFS)
    src = os.path.join(base, "src")
    make_inputs(src)
    results: List[Result] = []
    n = 0
    t_start = time.monotonic()
    try:
        for case in cases:
            slug = "%02d-%s" % (CASES.index(case), slugify(case.name))
            t0 = time.monotonic()
            missing = [p for p in case.programs() if shutil.which(p) is None]
            skip = ("%s is not installed (scripts/setup-deps.sh installs it)" % ", ".join(missing)
                    if missing else unsupported_flag(case.flags))
            ref = None if skip else Reference(case, base, slug, src)
            for mode in case.modes:
                n += 1
                label = "%s [%s]" % (case.name, mode)
                if skip:
                    print("ok %d - %s # SKIP %s" % (n, label, skip))
                    results.append(Result(case, mode, "skip", skip))
                    continue
                assert ref is not None
                if ref.error:
                    print("not ok %d - %s" % (n, label))
                    print(indent("step: reference run on tmpfs: %s" % ref.error, "#   "))
                    results.append(Result(case, mode, "fail", "reference run: " + ref.error.splitlines()[0]))
                    continue
                # --repeat N: N runs; any failure fails the point, with its
                # rate (a timing-dependent failure shows as such).
                out = None
                failures = 0
                for attempt in range(args.repeat):
                    tmp = os.path.join(base, "tmp", "%s-%s-%d" % (slug, mode, attempt))
                    os.makedirs(tmp)
                    o = run_mode(case, mode, ref, src, tmp, keep=args.keep)
                    if not o.ok:
                        failures += 1
                    if out is None or (out.ok and not o.ok):
                        out = o
                assert out is not None
                if args.repeat > 1 and failures:
                    rate = "failed %d of %d runs" % (failures, args.repeat)
                    out.lines.insert(0, rate)
                    out.summary = "%s (%s)" % (out.summary, rate)
                xfail = case.xfail.get(mode)
                directive = " # TODO %s" % xfail if xfail else ""
                print("%s %d - %s%s" % ("ok" if out.ok else "not ok", n, label, directive))
                body = list(out.lines)
                if not out.ok:
                    body.insert(0, "tool: %s; command: %s; flags: %s" % (
                        case.tool, case.command(), " ".join(case.flags) or "none"))
                culprit = ""
                passes_traced = False
                if not out.ok and diagnose_failures:
                    diag, culprit, passes_traced = diagnose(case, mode, ref, base, src, slug)
                    body.append("strace diagnosis:")
                    body.extend(indent(x) for x in diag)
                if body:
                    print(indent("\n".join(body), "#   "))
                status = ("xpass" if out.ok else "xfail") if xfail else ("pass" if out.ok else "fail")
                results.append(Result(case, mode, status, xfail or out.summary, culprit, passes_traced))
            print("# %s: %.2f s" % (case.name, time.monotonic() - t0))
    finally:
        if args.keep:
            print("# kept: %s" % base)
        else:
            shutil.rmtree(base, ignore_errors=True)
    counts = {k: sum(1 for r in results if r.status == k) for k in ("pass", "fail", "xfail", "xpass", "skip")}
    print("# %d passed, %d failed, %d expected failures, %d unexpected passes, %d skipped in %.1f s" % (
        counts["pass"], counts["fail"], counts["xfail"], counts["xpass"], counts["skip"],
        time.monotonic() - t_start))
    if args.table:
        with open(args.table, "w") as f:
            f.write(render_table(results, ref_kind))
        print("# table written to %s" % args.table)
    return 0


def md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(results: List[Result], ref_kind: str) -> str:
    by_case: Dict[str, List[Result]] = {}
    order: List[Case] = []
    for r in results:
        if r.case.name not in by_case:
            order.append(r.case)
        by_case.setdefault(r.case.name, []).append(r)
    lines = [
        "<!-- generated by tests/compat/compat.py --table; do not edit by hand -->",
        "",
        "Each tool ran once into %s and once into a capturefs mount, the mount's"
        % ("tmpfs" if ref_kind.startswith("tmpfs") else "a plain directory (%s)" % ref_kind),
        "output consumed two ways: **after** (read back by path once the tool exited) and",
        "**live** (a socket consumer subscribed while the tool ran, applying renames).",
        "`{dir}` is the output directory, `{src}` the inputs outside the mount.",
        "",
        "| tool | command | flags needed | result |",
        "| --- | --- | --- | --- |",
    ]
    for case in order:
        rs = by_case[case.name]
        flags = " ".join(case.flags)
        statuses = {r.status for r in rs}
        if statuses <= {"pass"}:
            result = "works with flags" if flags else "works"
        elif statuses == {"skip"}:
            result = "not tested: " + rs[0].reason
        else:
            parts: List[Tuple[List[str], str]] = []  # (modes, text), equal texts merged
            for r in rs:
                if r.status == "pass":
                    text = "works"
                elif r.status == "xfail":
                    text = "fails (expected): %s" % r.reason
                elif r.status == "xpass":
                    text = "works (marked expected to fail: %s)" % r.reason
                elif r.status == "skip":
                    text = "not tested: %s" % r.reason
                else:
                    text = "**fails**: %s" % r.reason
                    if r.culprit:
                        text += "; first syscall failing on the mount only: `%s`" % r.culprit
                    if r.passes_traced:
                        text += "; passes under strace (timing-dependent)"
                same = [p for p in parts if p[1] == text]
                if same:
                    same[0][0].append(r.mode)
                else:
                    parts.append(([r.mode], text))
            result = "; ".join("%s: %s" % (" and ".join(m), t) for m, t in parts)
        lines.append("| %s | `%s` | %s | %s |" % (md(case.tool), md(case.command()),
                                                  "`%s`" % md(flags) if flags else "-", md(result)))
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
