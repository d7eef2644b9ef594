"""The capturefs socket delivery protocol: frames, encoder, incremental decoder.

docs/protocol.md is the specification; this module follows it field by field,
as does the C++ codec (src/proto/codec.hpp). Pure: no I/O, no sockets.

Byte order is big-endian. Paths and patterns are raw ``bytes`` (a ``str``
given to a frame is encoded with ``os.fsencode``); text fields (an ERROR
message, a CLOSED reason, a COMMANDS note) are ``str`` and travel as UTF-8.

Versions: the codec speaks protocol versions MIN_VERSION..VERSION. A Decoder
learns the connection's version from the hello it reads (``Decoder.version``)
and rejects what that version does not define: the COMMANDS frame and the
STATUS_REQUEST ``commands`` flag are version 2; PEEK, PEEKED and the STATUS
record's ``spilled`` and ``wait`` are version 3. ``encode`` encodes any frame;
sending only what the connection's version has is the caller's job. STATUS is
the one frame whose layout depends on the version (its records grew in
version 3): ``encode`` and ``encode_status`` take the connection's version.

    dec = Decoder(Peer.SERVER)          # decodes what a server sends
    sock.sendall(encode(Hello()) + encode(Subscribe(patterns=[b"*.log"])))
    while chunk := sock.recv(65536):
        dec.feed(chunk)
        for frame in dec:               # raises ProtocolError on bad input
            ...
    dec.finish()                        # raises if the server stopped mid-frame
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple, Union

__all__ = [
    "MAGIC", "VERSION", "MIN_VERSION", "HELLO_SIZE", "HEADER_SIZE", "MAX_CHUNK", "MAX_BODY",
    "MAX_FRAME", "MAX_PATH", "MAX_PATTERNS", "MAX_TEXT", "MAX_PEEK",
    "Peer", "Type", "CloseStatus", "StreamState", "WaitReason", "CommandState", "CommandInput", "ErrorCode",
    "ProtocolError",
    "Hello", "Subscribe", "Ack", "StatusRequest", "Subscribed", "Opened", "Data",
    "Renamed", "Closed", "StreamStatus", "StatusReply", "Error", "CommandStatus", "CommandsReply",
    "Peek", "Peeked",
    "Frame", "encode", "encode_status", "encode_commands", "Decoder", "decode_all", "code_name",
]

# ----------------------------------------------------------------- limits

MAGIC = b"CAPF"
VERSION = 3        # the highest version spoken
MIN_VERSION = 1    # the lowest
HELLO_SIZE = 8      # magic, version u16, flags u16
HEADER_SIZE = 6     # length u32, type u8, flags u8
MAX_CHUNK = 1 << 20
MAX_BODY = MAX_CHUNK + 16
MAX_FRAME = HEADER_SIZE + MAX_BODY
MAX_PATH = 4096
MAX_PATTERNS = 64
MAX_TEXT = 1024
MAX_PEEK = 65536   # PEEK size, PEEKED payload (version 3)


class Peer(enum.Enum):
    """Who sent the bytes a Decoder reads."""

    CLIENT = "client"
    SERVER = "server"


class Type(enum.IntEnum):
    SUBSCRIBE = 0x01
    ACK = 0x02
    STATUS_REQUEST = 0x03
    PEEK = 0x04       # version 3
    SUBSCRIBED = 0x81
    OPENED = 0x82
    DATA = 0x83
    RENAMED = 0x84
    CLOSED = 0x85
    STATUS = 0x86
    ERROR = 0x87
    COMMANDS = 0x88   # version 2
    PEEKED = 0x89     # version 3


class CloseStatus(enum.IntEnum):
    COMPLETE = 0
    ABORTED = 1


class StreamState(enum.IntEnum):
    WRITING = 0     # a writer is open, no consumer
    STREAMING = 1   # a writer is open, a consumer takes the bytes
    HELD = 2        # writers done, bytes wait for a consumer
    DRAINING = 3    # writers done, a consumer takes the rest


class WaitReason(enum.IntEnum):
    """On what a stream's writer waits (STATUS record, version 3)."""

    NONE = 0          # no writer waits
    CONSUMER = 1      # for its consumer to take bytes
    MEMORY = 2        # for memory (the caps are reached, no spilling)
    SPILL_LIMIT = 3   # for spill space (the spill limit or the disk is full)


class CommandState(enum.IntEnum):
    RUNNING = 0       # started, not yet reaped
    EXITED = 1        # exited; code is its exit status
    KILLED = 2        # killed by signal `code` (not 0)
    NOT_STARTED = 3   # could not be started (note says why)
    UNKNOWN = 4       # no longer waited for, or reaped elsewhere (note says why)


class CommandInput(enum.IntEnum):
    FEEDING = 0       # the stream is still being written to its stdin
    COMPLETE = 1      # it got the whole stream, then EOF
    CUT_SHORT = 2     # it exited (or closed stdin) before reading everything: the writers got EPIPE
    INCOMPLETE = 3    # the stream ended early otherwise: unlinked, daemon stopping, not started, ...


class ErrorCode(enum.IntEnum):
    BAD_MAGIC = 1
    BAD_VERSION = 2
    BAD_TYPE = 3
    BAD_FLAGS = 4
    TOO_LARGE = 5
    TRUNCATED = 6
    TRAILING = 7
    BAD_VALUE = 8
    LIMIT = 9
    BAD_STATE = 16
    BAD_ACK = 17
    NOT_FOUND = 18
    BUSY = 19
    SHUTDOWN = 20
    INTERNAL = 21


def _code(value: int) -> Union[ErrorCode, int]:
    try:
        return ErrorCode(value)
    except ValueError:
        return value  # receivers accept unknown codes


def code_name(code: int) -> str:
    """'bad_magic', 'truncated', ... ('error_N' for an unknown code)."""
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return "error_%d" % code


class ProtocolError(Exception):
    """Bytes or a frame that break the protocol: a code and a message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__("%s: %s" % (code_name(code), message))
        self.code = _code(code)
        self.message = message

    def frame(self) -> "Error":
        """The ERROR frame a server sends for this problem."""
        return Error(self.code, self.message)


# ----------------------------------------------------------------- frames

def _path(value: Union[bytes, str, bytearray, memoryview]) -> bytes:
    if isinstance(value, str):
        return os.fsencode(value)
    return bytes(value)


@dataclass(frozen=True)
class Hello:
    """First 8 bytes each side sends: highest/chosen version, feature flags."""

    version: int = VERSION
    flags: int = 0


@dataclass(frozen=True)
class Subscribe:
    patterns: Tuple[bytes, ...]
    observe: bool = False   # events only (OPENED, RENAMED, CLOSED); consume nothing
    literal: bool = False   # patterns are exact paths, not globs
    once: bool = False      # at most one stream, then the subscription ends
    nowait: bool = False    # nothing matches now: ERROR not_found/busy instead

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", tuple(_path(p) for p in self.patterns))


@dataclass(frozen=True)
class Ack:
    id: int
    offset: int


@dataclass(frozen=True)
class StatusRequest:
    commands: bool = False  # version 2: also list the daemon's commands (COMMANDS frames)


@dataclass(frozen=True)
class Subscribed:
    pass


@dataclass(frozen=True)
class Opened:
    id: int
    offset: int
    time_ns: int
    pid: int
    uid: int
    path: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _path(self.path))


@dataclass(frozen=True)
class Data:
    id: int
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", bytes(self.data))


@dataclass(frozen=True)
class Renamed:
    id: int
    path: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _path(self.path))


@dataclass(frozen=True)
class Closed:
    id: int
    total: int
    status: CloseStatus = CloseStatus.COMPLETE
    reason: str = ""   # empty if complete, non-empty if aborted


@dataclass(frozen=True)
class StreamStatus:
    id: int
    pid: int
    uid: int
    time_ns: int
    written: int
    delivered: int
    rate: int
    state: StreamState
    path: bytes
    spilled: int = 0                      # version 3: bytes of it in the spill file
    wait: WaitReason = WaitReason.NONE    # version 3: on what its writer waits

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _path(self.path))


@dataclass(frozen=True)
class StatusReply:
    streams: Tuple[StreamStatus, ...] = field(default_factory=tuple)
    more: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "streams", tuple(self.streams))


@dataclass(frozen=True)
class Error:
    code: int
    message: str = ""


@dataclass(frozen=True)
class CommandStatus:
    """One command ``capturefs mount --exec`` started for a stream."""

    id: int                  # the stream it was started for
    pid: int                 # 0 if it was never started
    state: CommandState
    code: int                # EXITED: exit status; KILLED: signal number; otherwise 0
    input: CommandInput
    bytes: int               # bytes written to its stdin
    started_ns: int
    ended_ns: int            # 0 while running
    path: bytes              # the stream's path when the command started
    note: str = ""           # why the input or the start failed; may be empty

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _path(self.path))


@dataclass(frozen=True)
class CommandsReply:
    """Version 2: commands, before the STATUS parts of a reply."""

    commands: Tuple[CommandStatus, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "commands", tuple(self.commands))


@dataclass(frozen=True)
class Peek:
    """Version 3, client: the first bytes of the stream at ``path``, not consumed."""

    size: int      # 1..MAX_PEEK
    path: bytes    # the exact path (no glob)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _path(self.path))


@dataclass(frozen=True)
class Peeked:
    """Version 3, server: the answer to a PEEK. id 0: no live stream has that path."""

    id: int = 0
    offset: int = 0     # stream offset of data[0]: the first byte not yet consumed
    written: int = 0    # bytes written so far
    data: bytes = b""


Frame = Union[Hello, Subscribe, Ack, StatusRequest, Subscribed, Opened, Data,
              Renamed, Closed, StatusReply, Error, CommandsReply, Peek, Peeked]

# ----------------------------------------------------------------- type table

_SUB_OBSERVE, _SUB_LITERAL, _SUB_ONCE, _SUB_NOWAIT = 0x01, 0x02, 0x04, 0x08
_STATUS_MORE = 0x01
_STATUS_REQ_COMMANDS = 0x01  # version 2

_OPENED_FIXED = 8 + 8 + 8 + 4 + 4 + 2
_RENAMED_FIXED = 8 + 2
_CLOSED_FIXED = 8 + 8 + 1 + 2
_ERROR_FIXED = 2 + 2
_DATA_FIXED = 8 + 8
_RECORD_FIXED = 8 + 4 + 4 + 8 + 8 + 8 + 8 + 1 + 2
_COMMAND_FIXED = 8 + 4 + 1 + 1 + 1 + 8 + 8 + 8 + 2 + 2
_RECORD_V3 = 8 + 1          # version 3 records: + spilled, wait
_PEEK_FIXED = 4 + 2
_PEEKED_FIXED = 8 + 8 + 8


class _Info:
    __slots__ = ("type", "name", "sender", "flags", "min_body", "max_body", "since", "flags_v2")

    def __init__(self, type_: Type, sender: Peer, flags: int, min_body: int, max_body: int,
                 since: int = 1, flags_v2: int = 0):
        self.type = type_
        self.name = type_.name
        self.sender = sender
        self.flags = flags          # flag bits defined since version 1
        self.min_body = min_body
        self.max_body = max_body
        self.since = since          # the first version with this frame type
        self.flags_v2 = flags_v2    # flag bits added in version 2

    def defined_flags(self, version: int) -> int:
        return self.flags | (self.flags_v2 if version >= 2 else 0)


_TYPES = {
    i.type: i
    for i in (
        _Info(Type.SUBSCRIBE, Peer.CLIENT, _SUB_OBSERVE | _SUB_LITERAL | _SUB_ONCE | _SUB_NOWAIT,
              2, 2 + MAX_PATTERNS * (2 + MAX_PATH)),
        _Info(Type.ACK, Peer.CLIENT, 0, 16, 16),
        _Info(Type.STATUS_REQUEST, Peer.CLIENT, 0, 0, 0, flags_v2=_STATUS_REQ_COMMANDS),
        _Info(Type.SUBSCRIBED, Peer.SERVER, 0, 0, 0),
        _Info(Type.OPENED, Peer.SERVER, 0, _OPENED_FIXED, _OPENED_FIXED + MAX_PATH),
        _Info(Type.DATA, Peer.SERVER, 0, _DATA_FIXED, _DATA_FIXED + MAX_CHUNK),
        _Info(Type.RENAMED, Peer.SERVER, 0, _RENAMED_FIXED, _RENAMED_FIXED + MAX_PATH),
        _Info(Type.CLOSED, Peer.SERVER, 0, _CLOSED_FIXED, _CLOSED_FIXED + MAX_TEXT),
        _Info(Type.STATUS, Peer.SERVER, _STATUS_MORE, 2, MAX_BODY),
        _Info(Type.ERROR, Peer.SERVER, 0, _ERROR_FIXED, _ERROR_FIXED + MAX_TEXT),
        _Info(Type.COMMANDS, Peer.SERVER, 0, 2, MAX_BODY, since=2),
        _Info(Type.PEEK, Peer.CLIENT, 0, _PEEK_FIXED, _PEEK_FIXED + MAX_PATH, since=3),
        _Info(Type.PEEKED, Peer.SERVER, 0, _PEEKED_FIXED, _PEEKED_FIXED + MAX_PEEK, since=3),
    )
}

# ----------------------------------------------------------------- shared checks


def _fail(code: ErrorCode, message: str) -> "ProtocolError":
    return ProtocolError(code, message)


def _check_path_length(ctx: str, n: int) -> None:
    if n == 0:
        raise _fail(ErrorCode.BAD_VALUE, "%s: empty" % ctx)
    if n > MAX_PATH:
        raise _fail(ErrorCode.LIMIT, "%s: %d bytes, over the limit of %d" % (ctx, n, MAX_PATH))


def _check_path_content(ctx: str, p: bytes) -> None:
    z = p.find(b"\0")
    if z >= 0:
        raise _fail(ErrorCode.BAD_VALUE, "%s: NUL byte at %d" % (ctx, z))


def _check_path(ctx: str, p: bytes) -> None:
    _check_path_length(ctx, len(p))
    _check_path_content(ctx, p)


def _check_text_length(ctx: str, n: int) -> None:
    if n > MAX_TEXT:
        raise _fail(ErrorCode.LIMIT, "%s: %d bytes, over the limit of %d" % (ctx, n, MAX_TEXT))


def _decode_text(ctx: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")  # strict: no overlongs, no surrogates
    except UnicodeDecodeError as e:
        raise _fail(ErrorCode.BAD_VALUE, "%s: invalid UTF-8 at byte %d" % (ctx, e.start)) from None


def _encode_text(ctx: str, text: str) -> bytes:
    # Length first, then validity, as the decoder checks them.
    raw = text.encode("utf-8", "surrogatepass")
    _check_text_length(ctx, len(raw))
    _decode_text(ctx, raw)  # lone surrogates are not UTF-8
    return raw


def _check_closed(ctx: str, status: int, reason: str) -> None:
    if status == CloseStatus.COMPLETE and reason:
        raise _fail(ErrorCode.BAD_VALUE, "%s: reason: must be empty when complete" % ctx)
    if status == CloseStatus.ABORTED and not reason:
        raise _fail(ErrorCode.BAD_VALUE, "%s: reason: must not be empty when aborted" % ctx)


def _check_command_state(ctx: str, state: int) -> None:
    if state > CommandState.UNKNOWN:
        raise _fail(ErrorCode.BAD_VALUE, "%s: state: unknown value %d" % (ctx, state))


def _check_command_code(ctx: str, state: int, code: int) -> None:
    if state == CommandState.KILLED and code == 0:
        raise _fail(ErrorCode.BAD_VALUE, "%s: code: signal 0 is not valid" % ctx)
    if state not in (CommandState.EXITED, CommandState.KILLED) and code != 0:
        raise _fail(ErrorCode.BAD_VALUE, "%s: code: must be 0 when the state is %d (neither exited nor killed)"
                    % (ctx, state))


def _check_command_input(ctx: str, value: int) -> None:
    if value > CommandInput.INCOMPLETE:
        raise _fail(ErrorCode.BAD_VALUE, "%s: input: unknown value %d" % (ctx, value))


# ----------------------------------------------------------------- encoding

def _int(ctx: str, value: int, bits: int, signed: bool = False) -> int:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(ErrorCode.BAD_VALUE, "%s: %r does not fit %s%d"
                    % (ctx, value, "i" if signed else "u", bits))
    return value


def _str16(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def _frame(type_: Type, flags: int, body: bytes) -> bytes:
    info = _TYPES[type_]
    if len(body) > info.max_body:
        raise _fail(ErrorCode.TOO_LARGE, "%s: body of %d bytes, over the maximum of %d"
                    % (info.name, len(body), info.max_body))
    return struct.pack(">IBB", len(body), int(type_), flags) + body


def _record(index: int, r: StreamStatus, version: int) -> bytes:
    ctx = "STATUS: record %d" % index
    state = _int(ctx + ": state", r.state, 8)
    if state > 3:
        raise _fail(ErrorCode.BAD_VALUE, "%s: state: unknown value %d" % (ctx, state))
    wait = _int(ctx + ": wait", r.wait, 8)
    if wait > 3:
        raise _fail(ErrorCode.BAD_VALUE, "%s: wait: unknown value %d" % (ctx, wait))
    _check_path(ctx + ": path", r.path)
    v3 = struct.pack(">QB", _int(ctx + ": spilled", r.spilled, 64), wait) if version >= 3 else b""
    return struct.pack(">QIIqQQQB",
                       _int(ctx + ": id", r.id, 64), _int(ctx + ": pid", r.pid, 32),
                       _int(ctx + ": uid", r.uid, 32), _int(ctx + ": time", r.time_ns, 64, True),
                       _int(ctx + ": written", r.written, 64),
                       _int(ctx + ": delivered", r.delivered, 64),
                       _int(ctx + ": rate", r.rate, 64), state) + v3 + _str16(r.path)


def _command(index: int, c: CommandStatus) -> bytes:
    ctx = "COMMANDS: record %d" % index
    state = _int(ctx + ": state", c.state, 8)
    _check_command_state(ctx, state)
    code = _int(ctx + ": code", c.code, 8)
    _check_command_code(ctx, state, code)
    input_ = _int(ctx + ": input", c.input, 8)
    _check_command_input(ctx, input_)
    _check_path(ctx + ": path", c.path)
    note = _encode_text(ctx + ": note", c.note)
    return struct.pack(">QIBBBQqq",
                       _int(ctx + ": id", c.id, 64), _int(ctx + ": pid", c.pid, 32), state, code, input_,
                       _int(ctx + ": bytes", c.bytes, 64), _int(ctx + ": started", c.started_ns, 64, True),
                       _int(ctx + ": ended", c.ended_ns, 64, True)) + _str16(c.path) + _str16(note)


def encode(frame: Frame, version: int = VERSION) -> bytes:
    """The wire form of one frame (a Hello: the 8 hello bytes).

    ``version`` is the connection's: it sets the STATUS record layout.
    Raises ProtocolError, with the code the decoder would give, for a frame
    the decoder would reject (empty path, oversized chunk, ...)."""
    if isinstance(frame, Hello):
        version = _int("HELLO: version", frame.version, 16)
        if version == 0:
            raise _fail(ErrorCode.BAD_VERSION, "HELLO: version 0 is not valid")
        return MAGIC + struct.pack(">HH", version, _int("HELLO: flags", frame.flags, 16))
    if isinstance(frame, Subscribe):
        if not frame.patterns:
            raise _fail(ErrorCode.BAD_VALUE, "SUBSCRIBE: no patterns")
        if len(frame.patterns) > MAX_PATTERNS:
            raise _fail(ErrorCode.LIMIT, "SUBSCRIBE: %d patterns, over the limit of %d"
                        % (len(frame.patterns), MAX_PATTERNS))
        for i, p in enumerate(frame.patterns):
            _check_path("SUBSCRIBE: pattern %d" % i, p)
        flags = ((_SUB_OBSERVE if frame.observe else 0) | (_SUB_LITERAL if frame.literal else 0)
                 | (_SUB_ONCE if frame.once else 0) | (_SUB_NOWAIT if frame.nowait else 0))
        body = struct.pack(">H", len(frame.patterns)) + b"".join(_str16(p) for p in frame.patterns)
        return _frame(Type.SUBSCRIBE, flags, body)
    if isinstance(frame, Ack):
        return _frame(Type.ACK, 0, struct.pack(">QQ", _int("ACK: id", frame.id, 64),
                                               _int("ACK: offset", frame.offset, 64)))
    if isinstance(frame, StatusRequest):
        return _frame(Type.STATUS_REQUEST, _STATUS_REQ_COMMANDS if frame.commands else 0, b"")
    if isinstance(frame, Subscribed):
        return _frame(Type.SUBSCRIBED, 0, b"")
    if isinstance(frame, Opened):
        _check_path("OPENED: path", frame.path)
        body = struct.pack(">QQqII", _int("OPENED: id", frame.id, 64),
                           _int("OPENED: offset", frame.offset, 64),
                           _int("OPENED: time", frame.time_ns, 64, True),
                           _int("OPENED: pid", frame.pid, 32), _int("OPENED: uid", frame.uid, 32))
        return _frame(Type.OPENED, 0, body + _str16(frame.path))
    if isinstance(frame, Data):
        if len(frame.data) > MAX_CHUNK:
            raise _fail(ErrorCode.TOO_LARGE, "DATA: %d payload bytes, over the maximum of %d"
                        % (len(frame.data), MAX_CHUNK))
        return _frame(Type.DATA, 0, struct.pack(">QQ", _int("DATA: id", frame.id, 64),
                                                _int("DATA: offset", frame.offset, 64)) + frame.data)
    if isinstance(frame, Renamed):
        _check_path("RENAMED: path", frame.path)
        return _frame(Type.RENAMED, 0, struct.pack(">Q", _int("RENAMED: id", frame.id, 64))
                      + _str16(frame.path))
    if isinstance(frame, Closed):
        status = _int("CLOSED: status", frame.status, 8)
        if status > 1:
            raise _fail(ErrorCode.BAD_VALUE, "CLOSED: status: unknown value %d" % status)
        reason = _encode_text("CLOSED: reason", frame.reason)
        _check_closed("CLOSED", status, frame.reason)
        body = struct.pack(">QQB", _int("CLOSED: id", frame.id, 64),
                           _int("CLOSED: total", frame.total, 64), status) + _str16(reason)
        return _frame(Type.CLOSED, 0, body)
    if isinstance(frame, StatusReply):
        if len(frame.streams) > 0xFFFF:
            raise _fail(ErrorCode.LIMIT, "STATUS: %d records, over the limit of 65535"
                        % len(frame.streams))
        body = struct.pack(">H", len(frame.streams)) + b"".join(
            _record(i, r, version) for i, r in enumerate(frame.streams))
        return _frame(Type.STATUS, _STATUS_MORE if frame.more else 0, body)
    if isinstance(frame, CommandsReply):
        if len(frame.commands) > 0xFFFF:
            raise _fail(ErrorCode.LIMIT, "COMMANDS: %d records, over the limit of 65535"
                        % len(frame.commands))
        body = struct.pack(">H", len(frame.commands)) + b"".join(
            _command(i, c) for i, c in enumerate(frame.commands))
        return _frame(Type.COMMANDS, 0, body)
    if isinstance(frame, Peek):
        size = _int("PEEK: size", frame.size, 32)
        _check_peek_size(size)
        _check_path("PEEK: path", frame.path)
        return _frame(Type.PEEK, 0, struct.pack(">I", size) + _str16(frame.path))
    if isinstance(frame, Peeked):
        _check_peeked(frame.id, frame.offset, frame.written, frame.data)
        return _frame(Type.PEEKED, 0, struct.pack(">QQQ", _int("PEEKED: id", frame.id, 64),
                                                  _int("PEEKED: offset", frame.offset, 64),
                                                  _int("PEEKED: written", frame.written, 64)) + bytes(frame.data))
    if isinstance(frame, Error):
        code = _int("ERROR: code", frame.code, 16)
        if code == 0:
            raise _fail(ErrorCode.BAD_VALUE, "ERROR: code 0 is not valid")
        return _frame(Type.ERROR, 0, struct.pack(">H", code)
                      + _str16(_encode_text("ERROR: message", frame.message)))
    raise TypeError("not a frame: %r" % (frame,))


def encode_status(streams: Sequence[StreamStatus], version: int = VERSION) -> bytes:
    """A complete STATUS reply: as many STATUS frames as the records need,
    in the record layout of protocol ``version``."""
    streams = list(streams)
    for i, r in enumerate(streams):
        _record(i, r, version)  # validate all first
    fixed = _RECORD_FIXED + (_RECORD_V3 if version >= 3 else 0)
    out = []
    i = 0
    while True:
        body, j = 2, i
        while (j < len(streams) and j - i < 0xFFFF
               and body + fixed + len(streams[j].path) <= MAX_BODY):
            body += fixed + len(streams[j].path)
            j += 1
        out.append(encode(StatusReply(streams[i:j], more=j < len(streams)), version))
        i = j
        if i >= len(streams):
            return b"".join(out)


def encode_commands(commands: Sequence[CommandStatus]) -> bytes:
    """The COMMANDS frames of a reply (version 2): as many as the records
    need, at least one."""
    commands = list(commands)
    sizes = [len(_command(i, c)) for i, c in enumerate(commands)]  # validates all first
    out = []
    i = 0
    while True:
        body, j = 2, i
        while j < len(commands) and j - i < 0xFFFF and body + sizes[j] <= MAX_BODY:
            body += sizes[j]
            j += 1
        out.append(encode(CommandsReply(commands[i:j])))
        i = j
        if i >= len(commands):
            return b"".join(out)


# ----------------------------------------------------------------- decoding

class _Reader:
    def __init__(self, body: bytes, ctx: str) -> None:
        self.b = body
        self.pos = 0
        self.ctx = ctx

    def need(self, n: int, fieldname: str) -> None:
        left = len(self.b) - self.pos
        if left < n:
            raise _fail(ErrorCode.TRUNCATED, "%s: %s: needs %d bytes, %d left in the frame"
                        % (self.ctx, fieldname, n, left))

    def take(self, fmt: str, size: int, fieldname: str) -> int:
        self.need(size, fieldname)
        (v,) = struct.unpack_from(fmt, self.b, self.pos)
        self.pos += size
        return v

    def u8(self, f: str) -> int:
        return self.take(">B", 1, f)

    def u16(self, f: str) -> int:
        return self.take(">H", 2, f)

    def u32(self, f: str) -> int:
        return self.take(">I", 4, f)

    def u64(self, f: str) -> int:
        return self.take(">Q", 8, f)

    def i64(self, f: str) -> int:
        return self.take(">q", 8, f)

    def raw(self, n: int) -> bytes:
        v = self.b[self.pos:self.pos + n]
        self.pos += n
        return v

    def path(self, what: str) -> bytes:
        ctx = "%s: %s" % (self.ctx, what)
        n = self.u16(what)
        _check_path_length(ctx, n)
        self.need(n, what)
        p = self.raw(n)
        _check_path_content(ctx, p)
        return p

    def text(self, what: str) -> str:
        ctx = "%s: %s" % (self.ctx, what)
        n = self.u16(what)
        _check_text_length(ctx, n)
        self.need(n, what)
        return _decode_text(ctx, self.raw(n))

    def bad(self, code: ErrorCode, what: str) -> "ProtocolError":
        return _fail(code, "%s: %s" % (self.ctx, what))

    def done(self) -> None:
        left = len(self.b) - self.pos
        if left:
            raise _fail(ErrorCode.TRAILING, "%s: %d bytes after the last field" % (self.ctx, left))


def _check_peek_size(size: int) -> None:
    if size == 0:
        raise _fail(ErrorCode.BAD_VALUE, "PEEK: size: 0 is not valid")
    if size > MAX_PEEK:
        raise _fail(ErrorCode.LIMIT, "PEEK: size: %d bytes, over the limit of %d" % (size, MAX_PEEK))


def _check_peeked(id_: int, offset: int, written: int, data: bytes) -> None:
    if id_ == 0 and (offset or written or data):
        raise _fail(ErrorCode.BAD_VALUE, "PEEKED: id 0 (no such stream) with an offset, a size or bytes")


def _parse_body(info: _Info, flags: int, body: bytes, version: int) -> Frame:
    r = _Reader(body, info.name)
    t = info.type
    frame: Frame
    if t == Type.SUBSCRIBE:
        n = r.u16("count")
        if n == 0:
            raise r.bad(ErrorCode.BAD_VALUE, "no patterns")
        if n > MAX_PATTERNS:
            raise r.bad(ErrorCode.LIMIT, "%d patterns, over the limit of %d" % (n, MAX_PATTERNS))
        patterns = [r.path("pattern %d" % i) for i in range(n)]
        frame = Subscribe(patterns, observe=bool(flags & _SUB_OBSERVE),
                          literal=bool(flags & _SUB_LITERAL), once=bool(flags & _SUB_ONCE),
                          nowait=bool(flags & _SUB_NOWAIT))
    elif t == Type.ACK:
        frame = Ack(r.u64("id"), r.u64("offset"))
    elif t == Type.STATUS_REQUEST:
        frame = StatusRequest(commands=bool(flags & _STATUS_REQ_COMMANDS))
    elif t == Type.SUBSCRIBED:
        frame = Subscribed()
    elif t == Type.OPENED:
        frame = Opened(r.u64("id"), r.u64("offset"), r.i64("time"), r.u32("pid"), r.u32("uid"),
                       r.path("path"))
    elif t == Type.DATA:
        id_, offset = r.u64("id"), r.u64("offset")
        frame = Data(id_, offset, r.raw(len(body) - r.pos))
    elif t == Type.RENAMED:
        id_ = r.u64("id")
        frame = Renamed(id_, r.path("path"))
    elif t == Type.CLOSED:
        id_, total, status = r.u64("id"), r.u64("total"), r.u8("status")
        if status > 1:
            raise r.bad(ErrorCode.BAD_VALUE, "status: unknown value %d" % status)
        reason = r.text("reason")
        _check_closed("CLOSED", status, reason)
        frame = Closed(id_, total, CloseStatus(status), reason)
    elif t == Type.STATUS:
        n = r.u16("count")
        streams: List[StreamStatus] = []
        for i in range(n):
            r.ctx = "STATUS: record %d" % i
            id_, pid, uid = r.u64("id"), r.u32("pid"), r.u32("uid")
            time_ns = r.i64("time")
            written, delivered, rate = r.u64("written"), r.u64("delivered"), r.u64("rate")
            state = r.u8("state")
            if state > 3:
                raise r.bad(ErrorCode.BAD_VALUE, "state: unknown value %d" % state)
            spilled, wait = 0, 0
            if version >= 3:
                spilled, wait = r.u64("spilled"), r.u8("wait")
                if wait > 3:
                    raise r.bad(ErrorCode.BAD_VALUE, "wait: unknown value %d" % wait)
            streams.append(StreamStatus(id_, pid, uid, time_ns, written, delivered, rate,
                                        StreamState(state), r.path("path"), spilled, WaitReason(wait)))
        r.ctx = "STATUS"
        frame = StatusReply(streams, more=bool(flags & _STATUS_MORE))
    elif t == Type.COMMANDS:
        n = r.u16("count")
        commands: List[CommandStatus] = []
        for i in range(n):
            ctx = r.ctx = "COMMANDS: record %d" % i
            id_, pid = r.u64("id"), r.u32("pid")
            state = r.u8("state")
            _check_command_state(ctx, state)
            code = r.u8("code")
            _check_command_code(ctx, state, code)
            input_ = r.u8("input")
            _check_command_input(ctx, input_)
            nbytes, started, ended = r.u64("bytes"), r.i64("started"), r.i64("ended")
            path = r.path("path")
            commands.append(CommandStatus(id_, pid, CommandState(state), code, CommandInput(input_), nbytes,
                                          started, ended, path, r.text("note")))
        r.ctx = "COMMANDS"
        frame = CommandsReply(commands)
    elif t == Type.PEEK:
        size = r.u32("size")
        _check_peek_size(size)
        frame = Peek(size, r.path("path"))
    elif t == Type.PEEKED:
        id_, offset, written = r.u64("id"), r.u64("offset"), r.u64("written")
        data = r.raw(len(body) - r.pos)
        _check_peeked(id_, offset, written, data)
        frame = Peeked(id_, offset, written, data)
    else:  # Type.ERROR
        code = r.u16("code")
        if code == 0:
            raise r.bad(ErrorCode.BAD_VALUE, "code 0 is not valid")
        frame = Error(_code(code), r.text("message"))
    r.done()
    return frame


class Decoder:
    """Incremental decoder for the bytes one peer sends: its hello, then frames.

    feed() any slices; next() returns the next complete frame or None when
    more bytes are needed. Bad input raises ProtocolError, as early as the
    bytes allow (a 4-byte length over the maximum is refused at once), and
    the error is final: every later next()/feed()/finish() raises it again.

    ``version`` is the highest version the reading side speaks (a client:
    the one it offered). Reading a client, the connection's version is
    min(client's, version); reading a server, its hello must name a version
    from MIN_VERSION to ``version``. After the hello, ``self.version`` is the
    connection's version (None before); frames and flags of later versions
    are refused (bad_type, bad_flags).
    """

    def __init__(self, sender: Peer, version: int = VERSION) -> None:
        self.sender = sender
        self.max_version = version
        self.version: Optional[int] = None
        self._hello_done = False
        self._buf = bytearray()
        self._pos = 0
        self._consumed = 0
        self._error: Optional[ProtocolError] = None

    @property
    def error(self) -> Optional[ProtocolError]:
        return self._error

    @property
    def buffered(self) -> int:
        """Bytes fed and not yet returned as frames."""
        return len(self._buf) - self._pos

    @property
    def consumed(self) -> int:
        """Bytes returned as frames so far (hello included)."""
        return self._consumed

    def _raise(self, e: ProtocolError) -> "ProtocolError":
        self._error = e
        self._buf = bytearray()
        self._pos = 0
        return e

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> None:
        if self._error is not None:
            raise self._error
        if data:
            self._buf += data
            self._check_head()  # report a bad hello or header as soon as it arrives

    def _check_head(self) -> Optional[int]:
        """Validates the buffered part of the next hello or frame header;
        returns the whole unit's size once its header is complete."""
        b, p, n = self._buf, self._pos, self.buffered
        who = self.sender.value
        if not self._hello_done:
            for i in range(min(n, 4)):
                if b[p + i] != MAGIC[i]:
                    raise self._raise(_fail(
                        ErrorCode.BAD_MAGIC, "%s hello: bad magic: byte %d is 0x%02x, expected 0x%02x ('%s')"
                        % (who, i, b[p + i], MAGIC[i], chr(MAGIC[i]))))
            if n < 6:
                return None
            (version,) = struct.unpack_from(">H", b, p + 4)
            if version == 0:
                raise self._raise(_fail(ErrorCode.BAD_VERSION, "%s hello: version 0 is not valid" % who))
            if self.sender is Peer.SERVER and not MIN_VERSION <= version <= self.max_version:
                raise self._raise(_fail(ErrorCode.BAD_VERSION, "server hello: version %d, this decoder speaks %d to %d"
                                        % (version, MIN_VERSION, self.max_version)))
            if n < HELLO_SIZE:
                return None
            (flags,) = struct.unpack_from(">H", b, p + 6)
            if self.sender is Peer.SERVER and flags:
                raise self._raise(_fail(ErrorCode.BAD_FLAGS, "server hello: flags 0x%04x were not requested"
                                        % flags))
            return HELLO_SIZE
        if n < 4:
            return None
        (length,) = struct.unpack_from(">I", b, p)
        if length > MAX_BODY:
            raise self._raise(_fail(ErrorCode.TOO_LARGE, "frame length %d is over the maximum of %d"
                                    % (length, MAX_BODY)))
        if n < 5:
            return None
        tb = b[p + 4]
        info = _TYPES.get(tb)  # type: ignore[call-overload]
        if info is None:
            raise self._raise(_fail(ErrorCode.BAD_TYPE, "unknown frame type 0x%02x" % tb))
        version = self.version or 0
        if info.since > version:
            raise self._raise(_fail(ErrorCode.BAD_TYPE, "frame type 0x%02x (%s) is not in protocol version %d"
                                    % (tb, info.name, version)))
        if info.sender is not self.sender:
            raise self._raise(_fail(ErrorCode.BAD_TYPE, "frame type 0x%02x (%s) is sent by a %s, not a %s"
                                    % (tb, info.name, info.sender.value, who)))
        if n < HEADER_SIZE:
            return None
        extra = b[p + 5] & ~info.defined_flags(version)
        if extra:
            raise self._raise(_fail(ErrorCode.BAD_FLAGS, "%s: undefined flags 0x%02x in protocol version %d"
                                    % (info.name, extra, version)))
        if length < info.min_body:
            raise self._raise(_fail(ErrorCode.TRUNCATED, "%s: body of %d bytes, needs at least %d"
                                    % (info.name, length, info.min_body)))
        if length > info.max_body:
            raise self._raise(_fail(ErrorCode.TOO_LARGE, "%s: body of %d bytes, over the maximum of %d"
                                    % (info.name, length, info.max_body)))
        return HEADER_SIZE + length

    def next(self) -> Optional[Frame]:
        """The next complete frame (the first is the Hello), or None."""
        if self._error is not None:
            raise self._error
        size = self._check_head()
        if size is None or self.buffered < size:
            return None
        p = self._pos
        frame: Frame
        if not self._hello_done:
            version, flags = struct.unpack_from(">HH", self._buf, p + 4)
            frame = Hello(version, flags)
            self._hello_done = True
            self.version = min(version, self.max_version) if self.sender is Peer.CLIENT else version
        else:
            info = _TYPES[self._buf[p + 4]]  # type: ignore[index]
            body = bytes(self._buf[p + HEADER_SIZE:p + size])
            try:
                frame = _parse_body(info, self._buf[p + 5], body, self.version or 0)
            except ProtocolError as e:
                raise self._raise(e) from None
        self._pos += size
        self._consumed += size
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos >= 65536 and self._pos * 2 >= len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        return frame

    def __iter__(self) -> Iterator[Frame]:
        """Yields the complete frames buffered now."""
        while True:
            f = self.next()
            if f is None:
                return
            yield f

    def finish(self) -> None:
        """The peer closed the connection: raises (truncated) if it stopped
        inside its hello or a frame."""
        if self._error is not None:
            raise self._error
        n = self.buffered
        if n == 0:
            return
        size = self._check_head()
        if size is not None and n >= size:
            return  # complete frames still to take
        if not self._hello_done:
            msg = "connection closed inside the %s hello (%d of %d bytes)" % (self.sender.value, n, HELLO_SIZE)
        elif size is None:
            msg = "connection closed inside a frame header (%d of %d bytes)" % (n, HEADER_SIZE)
        else:
            name = _TYPES[self._buf[self._pos + 4]].name  # type: ignore[index]
            msg = "connection closed inside a %s frame (%d of %d bytes)" % (name, n, size)
        raise self._raise(_fail(ErrorCode.TRUNCATED, msg))


def decode_all(sender: Peer, data: bytes, version: int = VERSION) -> List[Frame]:
    """Every frame in `data`, which must end on a frame boundary."""
    dec = Decoder(sender, version)
    dec.feed(data)
    frames = list(dec)
    dec.finish()
    return frames
