"""capturefs.client against a scripted fake daemon (no mount, no capturefs
binary): frame handling, acknowledgements, errors. The real daemon is
exercised by tests/socket/test_socket.py (meson suite mount)."""

import os
import shutil
import socket
import tempfile
import threading
import unittest

from capturefs import Client, ServerError, capture
from capturefs import protocol as P


class FakeDaemon:
    """Listens on a Unix socket; each connection runs `script(peer)` in a thread."""

    def __init__(self, script):
        self.dir = tempfile.mkdtemp(prefix="capturefs-fake.")
        self.path = os.path.join(self.dir, "s")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.script = script
        self.errors = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.listener.accept()
        peer = Peer(conn)
        try:
            self.script(peer)
        except Exception as e:  # reported by close()
            self.errors.append(e)
        finally:
            conn.close()

    def close(self):
        self.thread.join(timeout=20)
        self.listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.errors:
            raise self.errors[0]


class Peer:
    """The daemon's end of one connection."""

    def __init__(self, conn):
        self.conn = conn
        self.conn.settimeout(20)
        self.dec = P.Decoder(P.Peer.CLIENT)
        self.frames = []

    def send(self, *frames):
        self.conn.sendall(b"".join(P.encode(f) for f in frames))

    def expect(self, kind):
        """The next client frame, which must be a `kind`."""
        while not self.frames:
            data = self.conn.recv(65536)
            if not data:
                raise AssertionError("client closed while waiting for %s" % kind.__name__)
            self.dec.feed(data)
            self.frames.extend(self.dec)
        f = self.frames.pop(0)
        if not isinstance(f, kind):
            raise AssertionError("expected %s, got %r" % (kind.__name__, f))
        return f

    def until_eof(self):
        """Client frames up to its close."""
        out = list(self.frames)
        self.frames = []
        while True:
            data = self.conn.recv(65536)
            if not data:
                return out
            self.dec.feed(data)
            out.extend(self.dec)


def opened(id_, path, offset=0):
    return P.Opened(id=id_, offset=offset, time_ns=1700000000123456789, pid=4242, uid=1000, path=path)


class ClientTest(unittest.TestCase):
    def run_with(self, script, body):
        fake = FakeDaemon(script)
        try:
            body(fake.path)
        finally:
            fake.close()

    def test_a_stream_is_read_in_order_and_acknowledged_chunk_by_chunk(self):
        acks = []

        def script(p):
            p.expect(P.Hello)
            sub = p.expect(P.Subscribe)
            assert sub.patterns == (b"*.log",) and not sub.literal and not sub.observe
            p.send(P.Hello(), P.Subscribed(), opened(7, b"logs/a.log", 3), P.Data(7, 3, b"abc"),
                   P.Data(7, 6, b"def"))
            acks.append(p.expect(P.Ack))  # asked for the second chunk: the first is done
            p.send(P.Renamed(7, b"logs/b\xff.log"), P.Closed(7, 9))
            acks.extend(p.until_eof())

        def body(path):
            with Client(path).subscribe("*.log") as sub:
                s = next(sub)
                self.assertEqual((s.id, s.path, s.writer_pid, s.writer_uid, s.start_offset),
                                 (7, "logs/a.log", 4242, 1000, 3))
                chunks = list(s)
                self.assertEqual(chunks, [b"abc", b"def"])
                self.assertEqual(s.path_bytes, b"logs/b\xff.log")
                self.assertEqual(s.path, os.fsdecode(b"logs/b\xff.log"))
                self.assertTrue(s.complete)
                self.assertEqual(s.total, 9)
                self.assertIsNone(s.reason)

        self.run_with(script, body)
        # Acks are cumulative and coalesced: both chunks were done when more was asked for.
        self.assertEqual(acks, [P.Ack(7, 9)])

    def test_interleaved_streams_are_handed_out_one_at_a_time(self):
        def script(p):
            p.expect(P.Hello)
            p.expect(P.Subscribe)
            p.send(P.Hello(), P.Subscribed(), opened(1, b"one"), opened(2, b"two"), P.Data(2, 0, b"2a"),
                   P.Data(1, 0, b"1a"), P.Data(2, 2, b"2b"), P.Closed(2, 4), P.Data(1, 2, b"1b"),
                   P.Closed(1, 4))
            p.until_eof()

        def body(path):
            with Client(path).subscribe() as sub:
                first, second = next(sub), next(sub)
                self.assertEqual((first.path, second.path), ("one", "two"))
                self.assertEqual(first.read(), b"1a1b")
                self.assertEqual(second.read(), b"2a2b")

        self.run_with(script, body)

    def test_nowait_not_found_raises_server_error(self):
        def script(p):
            p.expect(P.Hello)
            sub = p.expect(P.Subscribe)
            assert sub.literal and sub.once and sub.nowait
            p.send(P.Hello(), P.Error(P.ErrorCode.NOT_FOUND, "no stream matches"))

        def body(path):
            with self.assertRaises(ServerError) as e:
                Client(path).cat("missing")
            self.assertEqual(e.exception.name, "not_found")
            self.assertIn(path, str(e.exception))

        self.run_with(script, body)

    def test_a_connection_lost_mid_stream_aborts_it(self):
        def script(p):
            p.expect(P.Hello)
            p.expect(P.Subscribe)
            p.send(P.Hello(), P.Subscribed(), opened(3, b"x"), P.Data(3, 0, b"part"))

        def body(path):
            sub = Client(path).subscribe("x")
            s = next(sub)
            self.assertEqual(s.read(), b"part")
            self.assertFalse(s.complete)
            self.assertEqual(s.status, "aborted")
            with self.assertRaises(ConnectionError):
                next(sub)
            sub.close()

        self.run_with(script, body)

    def test_shutdown_error_aborts_streams_and_ends_the_iteration(self):
        def script(p):
            p.expect(P.Hello)
            p.expect(P.Subscribe)
            p.send(P.Hello(), P.Subscribed(), opened(3, b"x"), P.Data(3, 0, b"ab"),
                   P.Closed(3, 2, P.CloseStatus.ABORTED, "shutdown"),
                   P.Error(P.ErrorCode.SHUTDOWN, "the daemon is stopping"))

        def body(path):
            sub = Client(path).subscribe("x")
            s = next(sub)
            self.assertEqual(s.read(), b"ab")
            self.assertEqual((s.status, s.reason), ("aborted", "shutdown"))
            with self.assertRaises(ServerError) as e:
                next(sub)
            self.assertEqual(e.exception.name, "shutdown")
            sub.close()

        self.run_with(script, body)

    def test_status_parts_are_joined(self):
        rec = [P.StreamStatus(i, 1, 2, 3, 10 * i, i, 0, P.StreamState.HELD, b"f%d" % i) for i in range(1, 4)]

        def script(p):
            p.expect(P.Hello)
            p.expect(P.StatusRequest)
            p.send(P.Hello(), P.StatusReply(rec[:2], more=True), P.StatusReply(rec[2:]))
            p.until_eof()

        def body(path):
            self.assertEqual(Client(path).status(), rec)

        self.run_with(script, body)

    def test_commands_are_asked_for_and_joined(self):
        cmds = [P.CommandStatus(i, 100 + i, P.CommandState.EXITED, i, P.CommandInput.COMPLETE, 10 * i, 5, 6,
                                b"job%d" % i) for i in range(1, 4)]
        cmds.append(P.CommandStatus(9, 200, P.CommandState.RUNNING, 0, P.CommandInput.FEEDING, 1, 5, 0, b"live"))

        def script(p):
            p.expect(P.Hello)
            p.send(P.Hello())  # the client waits for it before asking for commands
            req = p.expect(P.StatusRequest)
            assert req.commands, req
            p.send(P.CommandsReply(cmds[:2]), P.CommandsReply(cmds[2:]), P.StatusReply([], more=True),
                   P.StatusReply())
            p.until_eof()

        def body(path):
            self.assertEqual(Client(path).commands(), cmds)

        self.run_with(script, body)

    def test_commands_of_a_daemon_without_exec_are_none(self):
        def script(p):
            p.expect(P.Hello)
            p.send(P.Hello())
            assert p.expect(P.StatusRequest).commands
            p.send(P.StatusReply())
            p.until_eof()

        self.run_with(script, lambda path: self.assertIsNone(Client(path).commands()))

    def test_a_version_1_daemon_is_not_asked_for_commands(self):
        def script(p):
            p.expect(P.Hello)
            p.send(P.Hello(1))
            req = p.expect(P.StatusRequest)
            assert not req.commands, "a version 1 daemon would refuse the flag"
            p.send(P.StatusReply())
            p.until_eof()

        self.run_with(script, lambda path: self.assertIsNone(Client(path).commands()))

    def test_observe_yields_events_with_paths(self):
        def script(p):
            p.expect(P.Hello)
            sub = p.expect(P.Subscribe)
            assert sub.observe
            p.send(P.Hello(), P.Subscribed(), opened(5, b"a", 10), P.Renamed(5, b"b"),
                   P.Closed(5, 12, P.CloseStatus.ABORTED, "unlinked"))
            p.until_eof()

        def body(path):
            with Client(path).observe("*") as obs:
                evs = [next(obs) for _ in range(3)]
            self.assertEqual([(e.kind, e.id, e.path) for e in evs],
                             [("opened", 5, "a"), ("renamed", 5, "b"), ("closed", 5, "b")])
            self.assertEqual(evs[0].offset, 10)
            self.assertEqual((evs[2].total, evs[2].status, evs[2].reason), (12, "aborted", "unlinked"))

        self.run_with(script, body)

    def test_capture_without_a_stream_is_never_written(self):
        mount = tempfile.mkdtemp(prefix="capturefs-fakemount.")

        def script(p):
            p.expect(P.Hello)
            sub = p.expect(P.Subscribe)
            assert sub.literal and sub.once and not sub.nowait
            assert sub.patterns[0].startswith(b"capture-")
            p.send(P.Hello(), P.Subscribed())
            p.expect(P.StatusRequest)
            p.send(P.StatusReply([]))
            p.until_eof()

        def body(path):
            with capture(mount, path) as cap:
                self.assertTrue(cap.path.startswith(mount + "/capture-"))
            self.assertFalse(cap.written)
            self.assertIsNone(cap.data)

        try:
            self.run_with(script, body)
        finally:
            shutil.rmtree(mount)

    def test_capture_collects_the_stream(self):
        mount = tempfile.mkdtemp(prefix="capturefs-fakemount.")

        def script(p):
            p.expect(P.Hello)
            sub = p.expect(P.Subscribe)
            p.send(P.Hello(), P.Subscribed())
            p.expect(P.StatusRequest)
            # The barrier: the OPENED comes before the reply.
            p.send(opened(9, sub.patterns[0]), P.Data(9, 0, b"out"), P.StatusReply([]), P.Closed(9, 3))
            assert p.expect(P.Ack) == P.Ack(9, 3)
            p.expect(P.StatusRequest)
            p.send(P.StatusReply([]))
            p.until_eof()

        def body(path):
            with capture(mount, path, suffix=".txt") as cap:
                self.assertTrue(cap.path.endswith(".txt"))
            self.assertEqual(cap.result(), b"out")
            self.assertEqual(cap.stream.writer_pid, 4242)

        try:
            self.run_with(script, body)
        finally:
            shutil.rmtree(mount)


if __name__ == "__main__":
    unittest.main()
