"""The Python client (python/capturefs/client.py) against a real mount.

Run by meson (suite mount) with CAPTUREFS=<binary> and PYTHONPATH=python:

    meson test -C build socket_python

Each test class mounts its own capturefs daemon with --socket and unmounts it
afterwards (the daemon must exit 0 and remove its socket). Waits are bounded
failure guards on real conditions (a line from a process, a frame, an exit);
nothing sleeps to synchronise.
"""
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from capturefs import Client, NeverWritten, ServerError, StreamAborted, Subscription, capture
from capturefs import protocol as P

CAPTUREFS = os.environ.get("CAPTUREFS", "")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "support"))
import capturefs_mount  # noqa: E402  (tests/support: the mount fixture)


def fuse_unavailable():
    return capturefs_mount.fuse_unavailable(CAPTUREFS)


class Daemon(capturefs_mount.Daemon):
    """`capturefs mount MNT -f --socket SOCK` in a private temp dir that
    another user can reach (tests/support/capturefs_mount.py)."""

    def __init__(self, *extra):
        super().__init__(CAPTUREFS, *extra, prefix="capturefs-pysock.", world_reachable=True)


class MountCase(unittest.TestCase):
    daemon = None
    daemon_args = ()  # extra `capturefs mount` options

    @classmethod
    def setUpClass(cls):
        why = fuse_unavailable()
        if why:
            raise unittest.SkipTest(why)
        cls.daemon = Daemon(*cls.daemon_args)

    @classmethod
    def tearDownClass(cls):
        if cls.daemon is not None:
            problems = cls.daemon.stop()
            cls.daemon = None
            if problems:
                raise AssertionError(problems)

    @property
    def d(self):
        return self.daemon


_buffers = {}


def read_line(proc, timeout=30.0):
    """One line of a child's stdout (a failure guard bounds the wait).
    Reads the pipe unbuffered, so that select() sees every line."""
    fd = proc.stdout.fileno()
    buf = _buffers.setdefault(fd, bytearray())
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError("no line from %s within %s s" % (proc.args, timeout))
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError("%s ended: %s" % (proc.args, proc.stderr.read() if proc.stderr else ""))
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode()


def eventually(get, want, timeout=20.0):
    """Polls get() until it returns want (a failure guard bounds the wait);
    for state the daemon reaches after an event the test cannot wait on."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if value == want or time.monotonic() >= deadline:
            return value
        time.sleep(0.002)


def has_line(proc):
    return b"\n" in _buffers.get(proc.stdout.fileno(), b"")


def spawn(*args):
    env = dict(os.environ)
    return subprocess.Popen([sys.executable, "-B", os.path.join(HERE, "subscriber.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


class CaptureTest(MountCase):
    def test_pipeline_16_parallel_runs_of_50_calls_every_capture_byte_exact(self):
        src = os.urandom(1 << 20)
        src_path = os.path.join(self.d.root, "src.bin")
        write_file(src_path, src)
        failures = []
        counts = {"written": 0, "never": 0}
        lock = threading.Lock()

        def worker(w):
            for i in range(50):
                k = (w * 50 + i)
                start = (k * 7919) % (len(src) - 1)
                size = 0 if k % 25 == 3 else (k * 104729) % 300000
                fail = k % 10 == 7  # the tool fails before creating its output
                with capture(self.d.mnt, self.d.sock, suffix=".out") as cap:
                    if fail:
                        rc = subprocess.run(["sh", "-c", "exit 3"]).returncode
                    else:
                        rc = subprocess.run(["sh", "-c", 'tail -c +"$1" "$2" | head -c "$3" > "$4"', "tool",
                                             str(start + 1), src_path, str(size), cap.path]).returncode
                want = src[start:start + size]
                with lock:
                    if fail:
                        counts["never"] += 1
                        if rc != 3 or cap.written or cap.data is not None:
                            failures.append("%d/%d: never-written run: rc %d written %s" % (w, i, rc, cap.written))
                    else:
                        counts["written"] += 1
                        if rc != 0 or not cap.written or not cap.complete or cap.data != want:
                            failures.append("%d/%d: rc %d written %s complete %s: %d bytes, want %d"
                                            % (w, i, rc, cap.written, cap.complete,
                                               -1 if cap.data is None else len(cap.data), len(want)))

        def guarded(w):
            try:
                worker(w)
            except Exception as e:  # a thread's exception would otherwise only be printed
                with lock:
                    failures.append("worker %d: %s: %s" % (w, type(e).__name__, e))

        threads = [threading.Thread(target=guarded, args=(w,)) for w in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
            self.assertFalse(t.is_alive(), "a pipeline thread hung")
        self.assertEqual(failures, [])
        self.assertEqual(counts, {"written": 720, "never": 80})
        self.assertEqual(os.listdir(self.d.mnt), [])  # every capture consumed; nothing left behind

    def test_never_written_returns_at_once_and_result_raises(self):
        t0 = time.monotonic()
        with capture(self.d.mnt, self.d.sock) as cap:
            pass  # the "tool" never opens cap.path
        self.assertLess(time.monotonic() - t0, 10)
        self.assertFalse(cap.written)
        self.assertIsNone(cap.data)
        with self.assertRaises(NeverWritten):
            cap.result()

    def test_output_renamed_onto_the_path_is_captured(self):
        with capture(self.d.mnt, self.d.sock) as cap:
            subprocess.run(["sh", "-c", 'printf tmp-then-move > "$1.tmp" && mv "$1.tmp" "$1"', "t", cap.path],
                           check=True)
        self.assertEqual(cap.result(), b"tmp-then-move")

    def test_output_removed_by_the_tool_is_aborted(self):
        with capture(self.d.mnt, self.d.sock) as cap:
            # Removed while still open for writing: aborted before it was complete.
            subprocess.run(["sh", "-c", 'exec 3>"$1"; printf partial >&3; rm "$1"; exec 3>&-', "t", cap.path],
                           check=True)
        self.assertTrue(cap.written)
        self.assertFalse(cap.complete)
        with self.assertRaises(StreamAborted):
            cap.result()

    def test_a_failing_block_removes_the_path(self):
        with self.assertRaises(RuntimeError):
            with capture(self.d.mnt, self.d.sock) as cap:
                write_file(cap.path, b"half")
                raise RuntimeError("the caller failed")
        self.assertFalse(os.path.exists(cap.path))


class NeverHangTest(MountCase):
    """capture() around a tool whose output is far above --max-stream: the
    subscription reads nothing until the tool exits, so after the stall
    time the stream spills and the tool finishes (docs/semantics.md)."""
    daemon_args = ("--max-stream", "32M", "--max-memory", "64M")

    def test_capture_of_an_output_far_above_max_stream_returns_every_byte(self):
        mib = int(os.environ.get("CAPTUREFS_CAPTURE_MIB", "200"))
        src = os.path.join(self.d.root, "big.bin")
        with open(src, "wb") as out:
            subprocess.run(["head", "-c", str(mib << 20), "/dev/urandom"], stdout=out, check=True)
        with open(src, "rb") as f:
            want = hashlib.sha256(f.read()).hexdigest()
        t0 = time.monotonic()
        with capture(self.d.mnt, self.d.sock, suffix=".bin", timeout=120) as cap:
            r = subprocess.run(["dd", "if=" + src, "of=" + cap.path, "bs=1M", "status=none"], timeout=240)
        took = time.monotonic() - t0
        self.assertEqual(r.returncode, 0)
        self.assertTrue(cap.complete, cap.reason)
        self.assertEqual(len(cap.data), mib << 20)
        self.assertEqual(hashlib.sha256(cap.data).hexdigest(), want)
        print("capture() of %d MiB with --max-stream 32M: %.1f s" % (mib, took), file=sys.stderr)

    def test_rm_and_ls_return_while_a_subscriber_reads_nothing(self):
        path = self.d.at("unread.bin")
        c = Subscription(self.d.sock, [os.path.basename(path)], literal=True)
        try:
            dd = subprocess.Popen(["dd", "if=/dev/zero", "of=" + path, "bs=1M", "count=200", "status=none"])
            # The writer waits once the subscription's window and the stream cap are full.
            eventually(lambda: os.path.exists(path) and os.stat(path).st_size >= 32 << 20, True, timeout=60)
            for argv in (["ls", "-l", self.d.mnt], ["rm", path]):
                t0 = time.monotonic()
                subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=60)
                self.assertLess(time.monotonic() - t0, 5.0 + (10 if os.environ.get("ASAN_OPTIONS") else 0),
                                "%s waited behind the writer" % argv[0])
            self.assertEqual(dd.wait(timeout=120), 0)
        finally:
            c.close()


class ProgressTest(MountCase):
    """`capturefs status --watch` refreshes; `capturefs cat --progress`
    shows bytes and a rate on a terminal."""

    def test_status_watch_refreshes_the_table(self):
        write_file(self.d.at("seen.txt"), b"x" * 1000)
        p = subprocess.Popen([CAPTUREFS, "status", self.d.mnt, "--watch", "0.1"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        out = b""
        deadline = time.monotonic() + 30
        while out.count(b"seen.txt") < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([p.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
        p.terminate()
        p.wait(timeout=10)
        self.assertGreaterEqual(out.count(b"seen.txt"), 3, out[-2000:])  # one table per refresh
        self.assertIn(b"WAIT", out)
        with open(self.d.at("seen.txt"), "rb") as f:
            self.assertEqual(f.read(), b"x" * 1000)

    def test_cat_progress_on_a_terminal(self):
        import pty
        write_file(self.d.at("big.out"), os.urandom(3 << 20))
        master, slave = pty.openpty()
        try:
            r = subprocess.run([CAPTUREFS, "cat", "--progress", self.d.at("big.out")], stdout=subprocess.PIPE,
                               stderr=slave, timeout=60)
            os.close(slave)
            slave = -1
            shown = b""
            while True:
                ready, _, _ = select.select([master], [], [], 0.5)
                if not ready:
                    break
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                shown += chunk
        finally:
            if slave >= 0:
                os.close(slave)
            os.close(master)
        self.assertEqual(r.returncode, 0)
        self.assertEqual(len(r.stdout), 3 << 20)
        self.assertIn(b"big.out: 3.0M", shown, shown)
        self.assertIn(b"/s", shown, shown)


class SharingTest(MountCase):
    def test_two_subscribers_share_the_work_and_no_stream_goes_twice(self):
        subs = [spawn("share", self.d.sock, "job-*") for _ in range(2)]
        try:
            for s in subs:
                self.assertEqual(read_line(s), "ready")
            want = {}
            for i in range(40):
                data = os.urandom(1000 + i * 3001)
                want["job-%02d" % i] = hashlib.sha256(data).hexdigest()
                write_file(self.d.at("job-%02d" % i), data)
            got = {0: [], 1: []}
            pending = {s.stdout.fileno(): n for n, s in enumerate(subs)}
            deadline = time.monotonic() + 60
            while sum(len(v) for v in got.values()) < 40 and time.monotonic() < deadline:
                buffered = [fd for fd, n in pending.items() if has_line(subs[n])]
                ready = buffered or select.select(list(pending), [], [], max(0.0, deadline - time.monotonic()))[0]
                for fd in ready:
                    n = pending[fd]
                    got[n].append(json.loads(read_line(subs[n])))
            names = [r["path"] for v in got.values() for r in v]
            self.assertEqual(sorted(names), sorted(want), "together all, none twice")
            self.assertGreater(len(got[0]), 0)
            self.assertGreater(len(got[1]), 0)
            for r in got[0] + got[1]:
                self.assertTrue(r["complete"])
                self.assertEqual(r["start"], 0)
                self.assertEqual(r["sha256"], want[r["path"]], r["path"])
            # A subscriber reports a stream once CLOSED is in; its final ACK
            # reaches the daemon a little later, and only then does the name go.
            self.assertEqual(eventually(lambda: os.listdir(self.d.mnt), []), [])
        finally:
            for s in subs:
                s.kill()
                s.wait()
                _buffers.pop(s.stdout.fileno(), None)
                s.stdout.close()
                s.stderr.close()

    def test_a_killed_consumer_leaves_the_rest_to_the_next_and_every_byte_is_accounted_for(self):
        size = 48 << 20
        src_path = os.path.join(self.d.root, "big.src")
        write_file(src_path, os.urandom(size))
        acked_path = os.path.join(self.d.root, "first.part")
        after = (9 << 20) + 12345  # inside a chunk
        first = spawn("crash", self.d.sock, "big.bin", str(after), acked_path)
        writer = None
        try:
            self.assertEqual(read_line(first), "ready")
            writer = subprocess.Popen(["sh", "-c", 'cat "$0" > "$1"', src_path, self.d.at("big.bin")])
            acked, start = map(int, read_line(first, 60).split()[1:])
            self.assertEqual((acked, start), (after, 0))
            first.send_signal(signal.SIGKILL)
            first.wait()
            with Client(self.d.sock).subscribe("big.bin", literal=True) as sub:
                stream = next(sub)
                self.assertEqual(stream.start_offset, after, "the rest starts at the first unacknowledged byte")
                rest = stream.read()
                self.assertTrue(stream.complete, stream.reason)
                self.assertEqual(stream.total, size)
            self.assertEqual(writer.wait(timeout=60), 0)
            with open(acked_path, "rb") as f:
                part = f.read()
            whole = hashlib.sha256()
            with open(src_path, "rb") as f:
                whole.update(f.read())
            self.assertEqual(len(part) + len(rest), size)
            self.assertEqual(hashlib.sha256(part + rest).hexdigest(), whole.hexdigest())
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
            _buffers.pop(first.stdout.fileno(), None)
            first.stdout.close()
            first.stderr.close()
            if writer is not None and writer.poll() is None:
                writer.kill()
                writer.wait()

    def test_a_subscriber_attaching_after_the_writers_finished_gets_the_streams(self):
        want = {}
        for i in range(5):
            data = ("late %d\n" % i).encode() * (i * 1000 + 1)
            want["late-%d" % i] = data
            write_file(self.d.at("late-%d" % i), data)
        got = {}
        with Client(self.d.sock).subscribe("late-*") as sub:
            for _ in range(5):
                s = next(sub)
                got[s.path] = s.read()
                self.assertTrue(s.complete)
            sub.status()  # the final acks are processed: the names are gone
        self.assertEqual(got, want)
        self.assertEqual(os.listdir(self.d.mnt), [])

    def test_status_and_observe(self):
        with open(self.d.at("watched.log"), "wb") as w:
            w.write(b"x" * 5000)
            w.flush()
            rows = {r.path: r for r in Client(self.d.sock).status()}
            self.assertEqual(rows[b"watched.log"].written, 5000)
            self.assertEqual(rows[b"watched.log"].state, P.StreamState.WRITING)
            self.assertEqual(rows[b"watched.log"].pid, os.getpid())
            with Client(self.d.sock).observe("*.log") as obs:
                ev = next(obs)
                self.assertEqual((ev.kind, ev.path, ev.offset), ("opened", "watched.log", 5000))
        os.unlink(self.d.at("watched.log"))

    def test_peek_consumes_nothing_and_the_mountpoint_finds_the_daemon(self):
        with open(self.d.at("peeked.txt"), "wb") as w:
            w.write(b"first bytes, then more")
        c = Client(self.d.mnt)  # the mountpoint, not the socket
        self.assertEqual(c.peek("peeked.txt", 11), b"first bytes")
        self.assertEqual(c.peek("peeked.txt"), b"first bytes, then more")
        self.assertIsNone(c.peek("nothing.here"))
        rows = {r.path: r for r in c.status()}
        self.assertEqual(rows[b"peeked.txt"].delivered, 0)
        self.assertEqual(rows[b"peeked.txt"].wait, P.WaitReason.NONE)
        self.assertEqual(rows[b"peeked.txt"].spilled, 0)
        self.assertEqual(c.cat("peeked.txt"), b"first bytes, then more")


class BadInputTest(MountCase):
    def raw(self, payload, shut=False):
        """Sends raw bytes, returns the frames the daemon answered with."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self.d.sock)
        s.sendall(payload)
        if shut:
            s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        return P.decode_all(P.Peer.SERVER, data)

    def assert_error(self, frames, code, text=None):
        self.assertIsInstance(frames[0], P.Hello)
        self.assertIsInstance(frames[-1], P.Error, frames)
        self.assertEqual(frames[-1].code, code, frames[-1])
        if text:
            self.assertIn(text, frames[-1].message)
        self.assertEqual(Client(self.d.sock).status(), [])  # and the daemon serves the next client

    def test_garbage(self):
        self.assert_error(self.raw(b"GARBAGE!" * 4), P.ErrorCode.BAD_MAGIC)

    def test_a_1_gib_length_prefix(self):
        self.assert_error(self.raw(P.encode(P.Hello()) + b"\x40\x00\x00\x00\x01\x00" + b"\0" * 100),
                          P.ErrorCode.TOO_LARGE, "1073741824")

    def test_truncated_frames(self):
        sub = P.encode(P.Subscribe(patterns=[b"*"]))
        self.assert_error(self.raw(P.encode(P.Hello()) + sub[:-3], shut=True), P.ErrorCode.TRUNCATED)
        self.assert_error(self.raw(P.encode(P.Hello())[:5], shut=True), P.ErrorCode.TRUNCATED)

    def test_frames_that_decode_but_break_the_session(self):
        self.assert_error(self.raw(P.encode(P.Hello()) + b"\x00\x00\x00\x00\x7f\x00"), P.ErrorCode.BAD_TYPE)
        self.assert_error(self.raw(P.encode(P.Hello()) + P.encode(P.Ack(1, 1))), P.ErrorCode.BAD_STATE)
        # An ACK beyond the bytes sent.
        write_file(self.d.at("acked"), b"abc")
        sub = Client(self.d.sock).subscribe("acked", literal=True, auto_ack=False)
        stream = next(sub)
        sub._conn.queue(P.Ack(stream.id, 4))
        with self.assertRaises(ServerError) as e:
            while True:
                sub._pump(30)
        self.assertEqual(e.exception.name, "bad_ack")
        sub.close()
        self.assertEqual(Client(self.d.sock).cat("acked"), b"abc")  # and the stream is not lost


@unittest.skipUnless(os.geteuid() == 0, "needs root to act as another user")
@unittest.skipUnless(shutil.which("setpriv"), "needs setpriv (util-linux)")
class OtherUserTest(MountCase):
    CONNECT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
try:
    s.sendall(b"CAPF\x00\x01\x00\x00\x00\x00\x00\x00\x03\x00")  # hello, STATUS_REQUEST
except OSError:
    pass  # refused and closed before we wrote: the answer is still there to read
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break
    if not chunk:
        break
    data += chunk
print(data.hex())
"""

    def as_nobody(self):
        r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            "/usr/bin/python3", "-B", "-c", self.CONNECT, self.d.sock],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.strip()

    def test_another_uid_is_refused(self):
        self.assertEqual(stat.S_IMODE(os.lstat(self.d.sock).st_mode), 0o600)
        self.assertEqual(self.as_nobody(), "EACCES")  # the mode keeps it out
        # With the mode opened up, the daemon's SO_PEERCRED check refuses it.
        os.chmod(self.d.sock, 0o666)
        try:
            frames = P.decode_all(P.Peer.SERVER, bytes.fromhex(self.as_nobody()))
        finally:
            os.chmod(self.d.sock, 0o600)
        self.assertIsInstance(frames[0], P.Hello)
        self.assertIsInstance(frames[-1], P.Error)
        self.assertNotIn(True, [isinstance(f, P.StatusReply) for f in frames], "no data for another user")
        self.assertIn("uid 65534", frames[-1].message)
        self.assertIn("refused a connection from uid 65534", self.d.stderr())
        self.assertEqual(Client(self.d.sock).status(), [])


class ExecCommandsTest(MountCase):
    """A daemon with --exec: Client.commands() lists its commands."""

    daemon_args = ("--exec", 'cat > /dev/null; case "$CAPTUREFS_PATH" in *fail*) exit 3;; esac',
                   "--exec-glob", "*.job")

    def wait_ended(self, paths, timeout=30.0):
        """The commands once every one of `paths` has ended (a bounded poll:
        the daemon announces no exit on the socket)."""
        deadline = time.monotonic() + timeout
        while True:
            cmds = Client(self.d.sock).commands()
            rows = {c.path: c for c in cmds or []}
            if all(p in rows and rows[p].state != P.CommandState.RUNNING for p in paths):
                return rows
            if time.monotonic() > deadline:
                self.fail("commands did not end in time: %r\n%s" % (cmds, self.d.stderr()))
            time.sleep(0.02)

    def test_commands_show_paths_pids_and_exit_statuses(self):
        for name, data in (("a-fail.job", b"x" * 5000), ("b-ok.job", b"y" * 100)):
            with open(self.d.at(name), "wb") as f:
                f.write(data)
        rows = self.wait_ended([b"a-fail.job", b"b-ok.job"])
        fail, ok = rows[b"a-fail.job"], rows[b"b-ok.job"]
        self.assertEqual((fail.state, fail.code, fail.input, fail.bytes),
                         (P.CommandState.EXITED, 3, P.CommandInput.COMPLETE, 5000))
        self.assertEqual((ok.state, ok.code, ok.input, ok.bytes), (P.CommandState.EXITED, 0, P.CommandInput.COMPLETE, 100))
        for c in (fail, ok):
            self.assertGreater(c.pid, 0)
            self.assertGreater(c.ended_ns, c.started_ns)
            self.assertEqual(c.note, "")
        self.assertEqual(Client(self.d.sock).status(), [])  # the streams went to the commands

    def test_a_version_1_client_gets_no_commands(self):
        with open(self.d.at("c.job"), "wb") as f:
            f.write(b"z")
        self.wait_ended([b"c.job"])
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self.d.sock)
        s.sendall(P.encode(P.Hello(1)) + P.encode(P.StatusRequest()))
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        frames = P.decode_all(P.Peer.SERVER, data, version=1)  # a version 1 decoder
        self.assertEqual(frames, [P.Hello(1), P.StatusReply()])


if __name__ == "__main__":
    unittest.main()
