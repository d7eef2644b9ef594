"""Tests of capturefs.protocol: the golden vectors shared with the C++ codec
(tests/proto/vectors.txt), round trips, splitting, errors, garbage."""

import os
import random
import unittest

from capturefs.protocol import (
    HEADER_SIZE, HELLO_SIZE, MAX_CHUNK, MAX_FRAME, MAX_PATH, MAX_PATTERNS, MAX_PEEK, MAX_TEXT, VERSION,
    Ack, Closed, CloseStatus, CommandInput, CommandState, CommandStatus, CommandsReply, Data, Decoder,
    Error, ErrorCode, Hello, Opened, Peek, Peeked, Peer, ProtocolError, Renamed, StatusReply, StatusRequest,
    StreamState, StreamStatus, Subscribe, Subscribed, WaitReason, code_name, decode_all, encode,
    encode_commands, encode_status)

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("CAPTUREFS_SRC") or os.path.join(HERE, "..", "..")
VECTORS = os.path.join(SRC, "tests", "proto", "vectors.txt")
CORPUS = os.path.join(SRC, "tests", "proto", "corpus")

T0 = 1700000000123456789
DECODING_CODES = set(range(1, 10))


SECOND = 1000000000


def session(*frames):
    """A version 1 connection: the hello, then the frames."""
    return [Hello(1)] + list(frames)


def session2(*frames):
    """A version 2 connection."""
    return [Hello(2)] + list(frames)


def session3(*frames):
    """A version 3 connection."""
    return [Hello(3)] + list(frames)


def encode_session(frames):
    """The frames of one connection, each in the version of the last hello
    before it (the STATUS record layout depends on it)."""
    version, out = VERSION, []
    for f in frames:
        if isinstance(f, Hello):
            version = min(f.version, VERSION)
        out.append(encode(f, version))
    return b"".join(out)


def command(id_, pid, state, code, input_, nbytes, started, ended, path, note=""):
    return CommandStatus(id_, pid, state, code, input_, nbytes, started, ended, path, note)



EXPECTED = {
    "hello_client": session(),
    "hello_client_future": [Hello(7, 0x8001)],
    "subscribe_glob": session(Subscribe([b"*.log"])),
    "subscribe_all_flags": session(Subscribe([b"logs/\xff\xfe.txt", b"[a-c]?/**"], observe=True,
                                             literal=True, once=True, nowait=True)),
    "subscribe_cat": session(Subscribe([b"out/result.bin"], literal=True, once=True)),
    "subscribe_observe": session(Subscribe([b"*"], observe=True)),
    "ack": session(Ack(7, 0x1000)),
    "ack_max": session(Ack(2**64 - 1, 2**64 - 1)),
    "status_request": session(StatusRequest()),
    "client_session": session(Subscribe([b"*.log"]), Ack(1, 6), StatusRequest()),
    "hello_server": session(),
    "subscribed": session(Subscribed()),
    "opened": session(Opened(1, 0, T0, 4242, 1000, b"build.log")),
    "opened_reoffer": session(Opened(9, 65536, -1000000000, 0, 0, b"dir/\x80\xff raw")),
    "data": session(Data(1, 0, b"hello\n")),
    "data_empty": session(Data(3, 12345, b"")),
    "renamed": session(Renamed(1, b"archive/build.log")),
    "closed_complete": session(Closed(1, 6)),
    "closed_aborted": session(Closed(2, 1234, CloseStatus.ABORTED,
                                     "unlinked before it was fully delivered")),
    "status_empty": session(StatusReply()),
    "status_two": session(StatusReply([
        StreamStatus(1, 4242, 1000, T0, 1048576, 65536, 250000, StreamState.STREAMING, b"build.log"),
        StreamStatus(5, 77, 0, T0 + 5, 10, 0, 0, StreamState.HELD, b"out/\xffbin")], more=True)),
    "error": session(Error(ErrorCode.BAD_MAGIC, "client hello: bad magic \u2014 \u00e9")),
    "error_unknown_code": session(Error(999, "")),
    "server_session": session(Subscribed(), Opened(1, 0, T0, 4242, 1000, b"build.log"),
                              Data(1, 0, b"hello\n"), Closed(1, 6)),
    # Version 2.
    "hello_server_v2": session2(),
    "status_request_commands": session2(StatusRequest(commands=True)),
    "status_request_commands_future": [Hello(7, 0), StatusRequest(commands=True)],
    "commands_empty": session2(CommandsReply()),
    "commands_four": session2(CommandsReply([
        command(1, 4242, CommandState.EXITED, 3, CommandInput.COMPLETE, 5000, T0, T0 + SECOND, b"dir/st.txt"),
        command(2, 4243, CommandState.KILLED, 9, CommandInput.CUT_SHORT, 262144, T0, T0 + 2 * SECOND, b"big.bin",
                "command exited before reading all input"),
        command(7, 0, CommandState.NOT_STARTED, 0, CommandInput.INCOMPLETE, 0, T0, T0, b"x\xff.bin",
                "cannot start the command: pipe: Too many open files"),
        command(9, 4250, CommandState.RUNNING, 0, CommandInput.FEEDING, 65536, T0, 0, b"live.txt")])),
    "server_session_v2": session2(
        CommandsReply([command(1, 4242, CommandState.EXITED, 0, CommandInput.COMPLETE, 6, T0, T0 + 1, b"a.txt")]),
        StatusReply()),
    # Version 3.
    "hello_server_v3": session3(),
    "status_v3": session3(StatusReply([
        StreamStatus(1, 4242, 1000, T0, 3 << 20, 1 << 20, 250000, StreamState.STREAMING, b"build.log",
                     1 << 20, WaitReason.CONSUMER),
        StreamStatus(5, 77, 0, T0 + 5, 10, 0, 0, StreamState.WRITING, b"out/\xffbin", 0, WaitReason.SPILL_LIMIT)])),
    "peek": session3(Peek(4096, b"logs/build.log")),
    "peeked": session3(Peeked(1, 4, 10, b"o\nwor")),
    "peeked_none": session3(Peeked()),
}


def load_vectors():
    out = []
    with open(VECTORS) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            name, sender, expect, *hexparts = line.split()
            out.append((name, Peer.CLIENT if sender == "c" else Peer.SERVER, expect,
                        bytes.fromhex("".join(hexparts))))
    return out


def decode(sender, data, sizes=None):
    """(frames, error, consumed): data fed in slices of the given sizes
    (cycled; default: whole), then finish()."""
    dec = Decoder(sender)
    frames, error = [], None
    sizes = sizes or [len(data) or 1]
    at, i = 0, 0
    try:
        while at < len(data):
            n = max(1, sizes[i % len(sizes)])
            dec.feed(data[at:at + n])
            at += n
            i += 1
            frames.extend(dec)
        dec.finish()
    except ProtocolError as e:
        error = e
    return frames, error, dec.consumed


def random_sizes(seed):
    rng = random.Random(seed)
    return [rng.randrange(0, 40) for _ in range(64)]


class Vectors(unittest.TestCase):
    def test_ok_vectors(self):
        vectors = [v for v in load_vectors() if v[2] == "ok"]
        self.assertGreater(len(vectors), 20)
        self.assertEqual(sorted(name for name, *_ in vectors), sorted(EXPECTED))
        for name, sender, _, data in vectors:
            with self.subTest(name):
                frames = EXPECTED[name]
                self.assertEqual(encode_session(frames).hex(), data.hex())
                for sizes in (None, [1], random_sizes(7)):
                    got, err, consumed = decode(sender, data, sizes)
                    self.assertIsNone(err)
                    self.assertEqual(got, frames)
                    self.assertEqual(consumed, len(data))

    def test_error_vectors(self):
        vectors = [v for v in load_vectors() if v[2] != "ok"]
        self.assertGreater(len(vectors), 50)
        for name, sender, expect, data in vectors:
            with self.subTest(name):
                for sizes in (None, [1], random_sizes(11)):
                    _, err, _ = decode(sender, data, sizes)
                    self.assertIsNotNone(err, "decoded without error")
                    self.assertEqual(code_name(err.code), expect, err.message)
                    encode(err.frame())  # sendable as an ERROR frame


def big_path(n, fill=b"p"):
    return b"\xff" + fill * (n - 1)


CLIENT_SAMPLES = [
    Subscribe(["*"]),
    Subscribe([b"a", b"b/*", b"[!x]?"], observe=True),
    Subscribe([b"exact name with spaces"], literal=True, once=True, nowait=True),
    Subscribe([big_path(MAX_PATH, bytes([97 + i % 26])) for i in range(MAX_PATTERNS)]),
    Ack(0, 0), Ack(1, 1 << 40), Ack(2**64 - 1, 2**64 - 1),
    StatusRequest(), StatusRequest(commands=True),
    Peek(1, b"a"), Peek(MAX_PEEK, big_path(MAX_PATH)),
]

SERVER_SAMPLES = [
    Subscribed(),
    Opened(1, 0, 0, 0, 0, b"a"),
    Opened(2**64 - 1, 2**64 - 1, -2**63, 2**32 - 1, 2**32 - 1, big_path(MAX_PATH)),
    Opened(2, 4096, 2**63 - 1, 1, 2, "dir/sub/file.txt"),
    Data(1, 0, b""), Data(1, 5, b"x"),
    Data(2**64 - 1, 1 << 50, bytes((i * 31 + 7) & 0xFF for i in range(MAX_CHUNK))),
    Renamed(1, b"new/name"), Renamed(2, big_path(MAX_PATH)),
    Closed(1, 0), Closed(1, 2**64 - 1, CloseStatus.ABORTED, "shutdown"),
    Closed(1, 10, CloseStatus.ABORTED, "\u00e9" * (MAX_TEXT // 2)),
    StatusReply(),
    StatusReply([StreamStatus(i + 1, 100 + i, 1000, T0 + i, 1 << 33, 1 << 32, 12345, StreamState(i),
                              "s%d" % i) for i in range(4)], more=True),
    StatusReply([StreamStatus(9, 1, 1, 1, 1, 1, 1, StreamState.DRAINING, big_path(MAX_PATH))]),
    StatusReply([StreamStatus(9, 1, 1, 1, 1, 1, 1, StreamState.HELD, b"v3", 2**64 - 1, WaitReason.MEMORY)]),
    Peeked(), Peeked(1, 0, 0, b""), Peeked(2**64 - 1, 1 << 40, 2**64 - 1, b"\x5a" * MAX_PEEK),
    Error(ErrorCode.TRUNCATED, ""), Error(ErrorCode.INTERNAL, "m" * MAX_TEXT),
    Error(0xFFFF, "future code"),
    CommandsReply(),
    CommandsReply([
        command(1, 2, CommandState.EXITED, 255, CommandInput.COMPLETE, 2**64 - 1, -2**63, 2**63 - 1, b"a"),
        command(2**64 - 1, 2**32 - 1, CommandState.KILLED, 255, CommandInput.CUT_SHORT, 0, 0, 0,
                big_path(MAX_PATH), "\u00e9" * (MAX_TEXT // 2)),
        command(3, 0, CommandState.NOT_STARTED, 0, CommandInput.INCOMPLETE, 0, 1, 2, b"n", "why"),
        command(4, 9, CommandState.UNKNOWN, 0, CommandInput.INCOMPLETE, 7, 1, 2, b"u", "ECHILD"),
        command(5, 9, CommandState.RUNNING, 0, CommandInput.FEEDING, 7, 1, 0, "r")]),
]


class RoundTrip(unittest.TestCase):
    def check(self, sender, samples):
        for f in samples:
            with self.subTest(type(f).__name__):
                wire = encode(f)
                self.assertLessEqual(len(wire), MAX_FRAME)
                self.assertEqual(int.from_bytes(wire[:4], "big") + HEADER_SIZE, len(wire))
                data = encode(Hello()) + wire
                for sizes in (None, random_sizes(3)):
                    got, err, _ = decode(sender, data, sizes)
                    self.assertIsNone(err)
                    self.assertEqual(got, [Hello(), f])

    def test_client_frames(self):
        self.check(Peer.CLIENT, CLIENT_SAMPLES)

    def test_server_frames(self):
        self.check(Peer.SERVER, SERVER_SAMPLES)

    def test_hello(self):
        for h in (Hello(1, 0), Hello(2, 0xFFFF), Hello(0xFFFF, 1)):
            self.assertEqual(decode_all(Peer.CLIENT, encode(h)), [h])
        for h in (Hello(1, 0), Hello(2, 0)):
            self.assertEqual(decode_all(Peer.SERVER, encode(h)), [h])
        self.assertEqual(len(encode(Hello())), HELLO_SIZE)
        self.assertEqual(Hello().version, VERSION)

    def test_str_paths_become_bytes(self):
        self.assertEqual(Subscribe(["a"]).patterns, (b"a",))
        self.assertEqual(Opened(1, 0, 0, 0, 0, "caf\u00e9").path, "caf\u00e9".encode())


class Version3(unittest.TestCase):
    def test_status_records_have_spilled_and_wait_from_version_3_only(self):
        r = StreamStatus(1, 2, 3, T0, 100, 50, 10, StreamState.WRITING, b"x", 40, WaitReason.MEMORY)
        for v in (1, 2, 3):
            got = decode_all(Peer.SERVER, encode(Hello(v)) + encode_status([r], v))[1:]
            want = r if v >= 3 else StreamStatus(1, 2, 3, T0, 100, 50, 10, StreamState.WRITING, b"x")
            self.assertEqual(got, [StatusReply([want])], v)

    def test_peek_is_refused_before_version_3(self):
        _, err, _ = decode(Peer.CLIENT, encode(Hello(2)) + encode(Peek(1, b"a")))
        self.assertEqual(err.code, ErrorCode.BAD_TYPE)
        for bad, code in ((Peek(0, b"a"), ErrorCode.BAD_VALUE), (Peek(MAX_PEEK + 1, b"a"), ErrorCode.LIMIT),
                          (Peeked(0, 1), ErrorCode.BAD_VALUE), (Peeked(1, 0, 0, bytes(MAX_PEEK + 1)),
                                                                ErrorCode.TOO_LARGE)):
            with self.assertRaises(ProtocolError) as cm:
                encode(bad)
            self.assertEqual(cm.exception.code, code)


class Splitting(unittest.TestCase):
    def test_every_two_way_split(self):
        frames = session(Subscribed(), Opened(1, 0, T0, 1, 2, b"p"), Data(1, 0, b"abc"),
                         Renamed(1, b"q"), Closed(1, 3))
        data = encode_session(frames)
        for cut in range(len(data) + 1):
            dec = Decoder(Peer.SERVER)
            dec.feed(data[:cut])
            got = list(dec)
            dec.feed(data[cut:])
            got += list(dec)
            dec.finish()
            self.assertEqual(got, frames, cut)
            self.assertEqual(dec.buffered, 0)

    def test_long_session_in_random_slices(self):
        for sender, samples in ((Peer.CLIENT, CLIENT_SAMPLES[:3]), (Peer.SERVER, SERVER_SAMPLES[:6])):
            frames = [Hello()] + samples * 3
            data = encode_session(frames)
            for seed in range(10):
                got, err, consumed = decode(sender, data, random_sizes(seed))
                self.assertIsNone(err)
                self.assertEqual(got, frames)
                self.assertEqual(consumed, len(data))

    def test_no_frame_before_complete(self):
        data = encode(Hello()) + encode(Data(1, 0, bytes(300)))
        dec = Decoder(Peer.SERVER)
        dec.feed(data[:HELLO_SIZE])
        self.assertEqual(dec.next(), Hello())
        for i in range(HELLO_SIZE, len(data) - 1):
            dec.feed(data[i:i + 1])
            self.assertIsNone(dec.next())
        dec.feed(data[-1:])
        self.assertEqual(dec.next(), Data(1, 0, bytes(300)))


class Errors(unittest.TestCase):
    def test_gigabyte_length_rejected_on_its_four_bytes(self):
        dec = Decoder(Peer.CLIENT)
        dec.feed(encode(Hello()))
        self.assertEqual(dec.next(), Hello())
        with self.assertRaises(ProtocolError) as cm:
            dec.feed(bytes.fromhex("40000000"))
        self.assertEqual(cm.exception.code, ErrorCode.TOO_LARGE)
        self.assertIn("1073741824", cm.exception.message)
        self.assertEqual(dec.buffered, 0)

    def test_bad_magic_on_first_wrong_byte(self):
        dec = Decoder(Peer.SERVER)
        dec.feed(b"CA")
        with self.assertRaises(ProtocolError) as cm:
            dec.feed(b"X")
        self.assertEqual(cm.exception.code, ErrorCode.BAD_MAGIC)
        self.assertIn("byte 2", cm.exception.message)

    def test_error_is_final(self):
        dec = Decoder(Peer.CLIENT)
        with self.assertRaises(ProtocolError) as cm:
            dec.feed(b"nope")
        first = cm.exception
        for call in (lambda: dec.feed(encode(Hello())), dec.next, dec.finish):
            with self.assertRaises(ProtocolError) as again:
                call()
            self.assertIs(again.exception, first)
        self.assertIs(dec.error, first)

    def test_good_frames_before_an_error_are_kept(self):
        good = b"".join(encode(f) for f in session(Ack(1, 2), Ack(1, 4)))
        frames, err, consumed = decode(Peer.CLIENT, good + bytes.fromhex("00000000 55"))
        self.assertEqual(frames, session(Ack(1, 2), Ack(1, 4)))
        self.assertEqual(err.code, ErrorCode.BAD_TYPE)
        self.assertEqual(consumed, len(good))

    def test_finish(self):
        hello = encode(Hello())
        frame = hello + encode(Data(1, 0, b"abcdef"))
        for data, text in ((hello[:3], "hello (3 of 8 bytes)"), (hello + b"\0", "frame header (1 of 6 bytes)"),
                           (frame[:-1], "DATA frame (27 of 28 bytes)")):
            dec = Decoder(Peer.SERVER)
            dec.feed(data)
            list(dec)
            with self.assertRaises(ProtocolError) as cm:
                dec.finish()
            self.assertEqual(cm.exception.code, ErrorCode.TRUNCATED)
            self.assertIn(text, cm.exception.message)
        Decoder(Peer.CLIENT).finish()
        pending = Decoder(Peer.CLIENT)
        pending.feed(hello)
        pending.finish()  # a complete hello is not truncated
        self.assertEqual(pending.next(), Hello())

    def test_encoder_refuses_what_the_decoder_would_reject(self):
        big = [StreamStatus(0, 0, 0, 0, 0, 0, 0, StreamState.WRITING, big_path(MAX_PATH))] * 300
        cases = [
            (Hello(0, 0), ErrorCode.BAD_VERSION),
            (Hello(1 << 16, 0), ErrorCode.BAD_VALUE),
            (Subscribe([]), ErrorCode.BAD_VALUE),
            (Subscribe([b"x"] * (MAX_PATTERNS + 1)), ErrorCode.LIMIT),
            (Subscribe([b"ok", b""]), ErrorCode.BAD_VALUE),
            (Subscribe([b"a\0b"]), ErrorCode.BAD_VALUE),
            (Subscribe([b"a" * (MAX_PATH + 1)]), ErrorCode.LIMIT),
            (Ack(-1, 0), ErrorCode.BAD_VALUE),
            (Ack(0, 2**64), ErrorCode.BAD_VALUE),
            (Opened(1, 0, 0, 0, 0, b""), ErrorCode.BAD_VALUE),
            (Opened(1, 0, 2**63, 0, 0, b"a"), ErrorCode.BAD_VALUE),
            (Opened(1, 0, 0, 0, 0, b"a" * (MAX_PATH + 1)), ErrorCode.LIMIT),
            (Renamed(1, b"\0"), ErrorCode.BAD_VALUE),
            (Data(1, 0, bytes(MAX_CHUNK + 1)), ErrorCode.TOO_LARGE),
            (Closed(1, 0, CloseStatus.COMPLETE, "why"), ErrorCode.BAD_VALUE),
            (Closed(1, 0, CloseStatus.ABORTED, ""), ErrorCode.BAD_VALUE),
            (Closed(1, 0, CloseStatus.ABORTED, "\ud800"), ErrorCode.BAD_VALUE),
            (Closed(1, 0, CloseStatus.ABORTED, "r" * (MAX_TEXT + 1)), ErrorCode.LIMIT),
            (Closed(1, 0, 7, ""), ErrorCode.BAD_VALUE),
            (StatusReply([StreamStatus(0, 0, 0, 0, 0, 0, 0, 4, b"a")]), ErrorCode.BAD_VALUE),
            (StatusReply([StreamStatus(0, 0, 0, 0, 0, 0, 0, 0, b"")]), ErrorCode.BAD_VALUE),
            (StatusReply(big), ErrorCode.TOO_LARGE),
            (Error(0, "x"), ErrorCode.BAD_VALUE),
            (Error(ErrorCode.BUSY, "e" * (MAX_TEXT + 1)), ErrorCode.LIMIT),
            (CommandsReply([command(1, 1, 5, 0, 0, 0, 0, 0, b"a")]), ErrorCode.BAD_VALUE),
            (CommandsReply([command(1, 1, CommandState.RUNNING, 1, 0, 0, 0, 0, b"a")]), ErrorCode.BAD_VALUE),
            (CommandsReply([command(1, 0, CommandState.NOT_STARTED, 127, 3, 0, 0, 0, b"a")]), ErrorCode.BAD_VALUE),
            (CommandsReply([command(1, 1, CommandState.KILLED, 0, 2, 0, 0, 0, b"a")]), ErrorCode.BAD_VALUE),
            (CommandsReply([command(1, 1, CommandState.EXITED, 256, 1, 0, 0, 0, b"a")]), ErrorCode.BAD_VALUE),
            (CommandsReply([command(1, 1, CommandState.EXITED, 0, 4, 0, 0, 0, b"a")]), ErrorCode.BAD_VALUE),
            (CommandsReply([command(1, 1, CommandState.EXITED, 0, 1, 0, 0, 0, b"")]), ErrorCode.BAD_VALUE),
            (CommandsReply([command(1, 1, CommandState.EXITED, 0, 1, 0, 0, 0, b"a" * (MAX_PATH + 1))]),
             ErrorCode.LIMIT),
            (CommandsReply([command(1, 1, CommandState.EXITED, 0, 1, 0, 0, 0, b"a", "\ud800")]),
             ErrorCode.BAD_VALUE),
            (CommandsReply([command(1, 1, CommandState.EXITED, 0, 1, 0, 0, 0, b"a", "n" * (MAX_TEXT + 1))]),
             ErrorCode.LIMIT),
            (CommandsReply([command(0, 0, CommandState.EXITED, 0, 1, 0, 0, 0, big_path(MAX_PATH), "n" * MAX_TEXT)]
                           * 250), ErrorCode.TOO_LARGE),
        ]
        for frame, code in cases:
            with self.subTest(frame=repr(frame)[:60]):
                with self.assertRaises(ProtocolError) as cm:
                    encode(frame)
                self.assertEqual(cm.exception.code, code, cm.exception.message)


class StatusReplies(unittest.TestCase):
    def test_split_across_frames(self):
        recs = [StreamStatus(i + 1, 10, 20, T0, i, i // 2, 7, StreamState.WRITING,
                             big_path(MAX_PATH, bytes([97 + i % 26]))) for i in range(700)]
        frames = decode_all(Peer.SERVER, encode(Hello()) + encode_status(recs))[1:]
        self.assertGreater(len(frames), 2)
        self.assertEqual([f.more for f in frames], [True] * (len(frames) - 1) + [False])
        self.assertEqual([r for f in frames for r in f.streams], recs)

    def test_empty(self):
        self.assertEqual(encode_status([]).hex(), "000000028600" "0000")


class CommandsReplies(unittest.TestCase):
    def test_split_across_frames(self):
        recs = [command(i + 1, 100 + i, CommandState.EXITED, i % 256, CommandInput.COMPLETE, i * 1000, T0, T0 + 1,
                        big_path(MAX_PATH, bytes([97 + i % 26])), "x" * (i % 700)) for i in range(400)]
        frames = decode_all(Peer.SERVER, encode(Hello()) + encode_commands(recs))[1:]
        self.assertGreater(len(frames), 1)
        self.assertTrue(all(isinstance(f, CommandsReply) and f.commands for f in frames))
        self.assertEqual([c for f in frames for c in f.commands], recs)

    def test_empty_and_invalid(self):
        self.assertEqual(encode_commands([]).hex(), "000000028800" "0000")
        recs = [command(1, 1, CommandState.EXITED, 0, CommandInput.COMPLETE, 0, 0, 0, b"ok")] * 3
        recs[1] = command(1, 1, CommandState.KILLED, 0, CommandInput.COMPLETE, 0, 0, 0, b"ok")
        with self.assertRaises(ProtocolError) as cm:
            encode_commands(recs)
        self.assertEqual(cm.exception.code, ErrorCode.BAD_VALUE)
        self.assertIn("record 1", cm.exception.message)


class Versions(unittest.TestCase):
    def test_connection_version_comes_from_the_hello(self):
        for sender, speaks, hello, connection in ((Peer.CLIENT, 2, 1, 1), (Peer.CLIENT, 2, 2, 2),
                                                  (Peer.CLIENT, 2, 7, 2), (Peer.CLIENT, 1, 7, 1),
                                                  (Peer.SERVER, 2, 1, 1), (Peer.SERVER, 2, 2, 2)):
            dec = Decoder(sender, speaks)
            self.assertIsNone(dec.version)
            dec.feed(encode(Hello(hello)))
            self.assertEqual(dec.next(), Hello(hello))
            self.assertEqual(dec.version, connection, (sender, speaks, hello))

    def test_a_version_1_client_refuses_a_version_2_server(self):
        dec = Decoder(Peer.SERVER, 1)
        with self.assertRaises(ProtocolError) as cm:
            dec.feed(encode(Hello(2)))
        self.assertEqual(cm.exception.code, ErrorCode.BAD_VERSION)
        self.assertIn("speaks 1 to 1", cm.exception.message)

    def test_version_2_frames_and_flags_are_refused_on_version_1(self):
        _, err, _ = decode(Peer.SERVER, encode(Hello(1)) + encode(CommandsReply()))
        self.assertEqual(err.code, ErrorCode.BAD_TYPE)
        self.assertIn("not in protocol version 1", err.message)
        dec = Decoder(Peer.CLIENT, 1)  # a version 1 server reading a version 2 client
        dec.feed(encode(Hello(2)))
        self.assertEqual(dec.next(), Hello(2))
        with self.assertRaises(ProtocolError) as cm:
            dec.feed(encode(StatusRequest(commands=True)))
        self.assertEqual(cm.exception.code, ErrorCode.BAD_FLAGS)
        self.assertEqual(decode_all(Peer.CLIENT, encode(Hello(2)) + encode(StatusRequest(commands=True))),
                         session2(StatusRequest(commands=True)))


def check_invariants(test, data):
    """The fuzz target's invariants (tests/proto/fuzz_decoder.cpp)."""
    for sender in (Peer.CLIENT, Peer.SERVER):
        for prefix in (b"", encode(Hello(1)), encode(Hello(2)), encode(Hello(3))):
            wire = prefix + data
            whole = decode(sender, wire)
            for sizes in ([1], random_sizes(len(wire))):
                other = decode(sender, wire, sizes)
                test.assertEqual(whole[0], other[0])
                test.assertEqual(repr(whole[1]), repr(other[1]))
                test.assertEqual(whole[2], other[2])
            frames, err, consumed = whole
            test.assertEqual(encode_session(frames), wire[:consumed])
            if err is not None:
                test.assertIn(int(err.code), DECODING_CODES)
                encode(err.frame())
            else:
                test.assertEqual(consumed, len(wire))


class Garbage(unittest.TestCase):
    def test_random_bytes(self):
        rng = random.Random(1234)
        for i in range(300):
            n = rng.randrange(200)
            data = bytes(rng.randrange(256 if i % 5 else 8) for _ in range(n))
            check_invariants(self, data)

    def test_fuzz_corpus(self):
        files = sorted(os.listdir(CORPUS))
        self.assertGreater(len(files), 30)
        for name in files:
            with self.subTest(name):
                with open(os.path.join(CORPUS, name), "rb") as f:
                    check_invariants(self, f.read())


if __name__ == "__main__":
    unittest.main()
