"""Client for capturefs socket delivery (docs/protocol.md), standard library only.

A daemon started with ``capturefs mount MOUNT --socket SOCK`` hands every
stream created in MOUNT to a subscriber of SOCK, in order, acknowledged by the
client as the program consumes it. Two ways to use it:

``capture()`` replaces the mkfifo "TemporaryPipe" recipe for tools that can
only write to a path::

    from capturefs import capture

    with capture("/run/capture", "/run/capture.sock") as cap:
        subprocess.run(["tool", "--output", cap.path], check=True)
    cap.data        # bytes the tool wrote (None if it never created the path)
    cap.written     # False if the tool never opened cap.path
    cap.result()    # the bytes, or raises NeverWritten / StreamAborted

``Client.subscribe()`` takes every matching stream (several subscribers share
them; each stream goes to exactly one)::

    for stream in Client("/run/capture.sock").subscribe("*.log"):
        for chunk in stream:            # acknowledged once you ask for the next
            sink.write(chunk)
        print(stream.path, stream.complete, stream.reason)

Delivery is at least once: bytes handed out but not acknowledged when a
connection ends go to the next subscriber (its ``Stream.start_offset`` says
where it starts).

Threads: one Subscription (one connection) is used from one thread at a time;
use one Client.subscribe()/capture() per thread.
"""

from __future__ import annotations

import collections
import os
import socket
import uuid
from typing import Deque, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from . import protocol as P

__all__ = [
    "Client", "Subscription", "Stream", "Event", "Observation", "Capture", "capture",
    "CaptureError", "NeverWritten", "StreamAborted", "ServerError",
]

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


class ServerError(Exception):
    """The daemon ended the connection with an ERROR frame.

    ``code`` is a protocol.ErrorCode (or an int for an unknown code),
    ``name`` its name ("not_found", "busy", "shutdown", ...).
    """

    def __init__(self, socket_path: str, code: int, message: str) -> None:
        self.socket_path = socket_path
        self.code = code
        self.name = P.code_name(int(code))
        self.message = message
        super().__init__("%s: %s: %s" % (socket_path, self.name, message))


class CaptureError(Exception):
    """A capture() did not produce the tool's output."""


class NeverWritten(CaptureError):
    """The tool never created (opened for writing) the capture path."""


class StreamAborted(CaptureError):
    """The stream was aborted (unlinked before it was delivered, daemon stopping, ...)."""


def _relpath(pattern: PathLike) -> bytes:
    p = os.fsencode(pattern)
    if not p:
        raise ValueError("empty pattern")
    return p


class _Connection:
    """One socket to the daemon: queued frames out, decoded frames in."""

    def __init__(self, socket_path: PathLike) -> None:
        self.path = os.fsdecode(socket_path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(self.path)
        except OSError as e:
            self.sock.close()
            raise ConnectionError(e.errno, "cannot connect to %s: %s" % (self.path, e.strerror)) from None
        self.dec = P.Decoder(P.Peer.SERVER)
        self.out = bytearray(P.encode(P.Hello()))
        self.server_version: Optional[int] = None  # once the daemon's hello is in
        self.acks: Dict[int, int] = {}  # id -> offset, coalesced until the next flush
        self.eof = False

    def queue(self, frame: P.Frame) -> None:
        self.out += P.encode(frame)

    def ack(self, stream_id: int, offset: int) -> None:
        if offset > self.acks.get(stream_id, -1):
            self.acks[stream_id] = offset

    def flush(self) -> None:
        for sid, off in self.acks.items():
            self.out += P.encode(P.Ack(sid, off))
        self.acks.clear()
        if not self.out:
            return
        data, self.out = bytes(self.out), bytearray()
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon closed: reading tells why

    def receive(self, timeout: Optional[float] = None) -> Optional[List[P.Frame]]:
        """Flushes, then blocks for the next bytes: the frames they complete
        (maybe none), or None at the end of the connection."""
        self.flush()
        if self.eof:
            return None
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            raise TimeoutError("no answer from %s within %s s" % (self.path, timeout)) from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            try:
                self.dec.finish()
            except P.ProtocolError as e:
                raise ConnectionError("%s: the connection ended early: %s" % (self.path, e)) from None
            return None
        self.dec.feed(data)
        frames = []
        for f in self.dec:
            if isinstance(f, P.Hello):
                self.server_version = self.dec.version
            else:
                frames.append(f)
        return frames

    def close(self) -> None:
        try:
            self.flush()
        except OSError:
            pass
        self.sock.close()


class Stream:
    """One stream handed to this subscriber.

    Attributes: ``id``, ``path`` (str; undecodable bytes as surrogate escapes,
    like os.fsdecode), ``path_bytes``, ``writer_pid``, ``writer_uid``,
    ``created_ns``, ``start_offset`` (stream offset of the first byte this
    subscriber gets: > 0 if an earlier subscriber acknowledged the start).
    Once it ended: ``status`` ("complete" or "aborted"), ``complete``,
    ``reason`` (why it was aborted), ``total`` (bytes written in all).

    Iterating yields the bytes in chunks; a chunk is acknowledged when the
    next one is asked for (or at the end), so an exception while processing
    a chunk leaves it unacknowledged, for the next subscriber.
    """

    def __init__(self, sub: "Subscription", opened: P.Opened) -> None:
        self._sub = sub
        self.id = opened.id
        self.path_bytes = opened.path
        self.writer_pid = opened.pid
        self.writer_uid = opened.uid
        self.created_ns = opened.time_ns
        self.start_offset = opened.offset
        self.status: Optional[str] = None
        self.reason: Optional[str] = None
        self.total: Optional[int] = None
        self._chunks: Deque[Tuple[int, bytes]] = collections.deque()
        self._handed = opened.offset  # end of the chunks handed to the user
        self._acked = opened.offset

    @property
    def path(self) -> str:
        return os.fsdecode(self.path_bytes)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def closed(self) -> bool:
        return self.status is not None

    def __repr__(self) -> str:
        return "<Stream %d %r from %d status=%s>" % (self.id, self.path, self.start_offset, self.status)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._sub.auto_ack:
            self._ack_to(self._handed)
        while not self._chunks:
            if self.status is not None:
                self._finish()
                raise StopIteration
            try:
                self._sub._pump()
            except (ServerError, ConnectionError):
                if self.status is None:
                    raise
                # The connection ended: this stream is aborted (see reason);
                # the subscription raises the error on its next stream.
        off, data = self._chunks.popleft()
        self._handed = off + len(data)
        return data

    def read(self) -> bytes:
        """Every remaining byte, up to the end of the stream (check
        ``complete`` afterwards: an aborted stream ends early)."""
        return b"".join(self)

    def ack(self, offset: int) -> None:
        """Acknowledges every byte before ``offset`` (with auto_ack=False).
        At most the end of the chunks handed out so far."""
        if offset > self._handed:
            raise ValueError("offset %d is beyond the %d bytes received" % (offset, self._handed))
        self._ack_to(offset)
        self._sub._conn.flush()

    def _ack_to(self, offset: int) -> None:
        if offset > self._acked and self.status != "aborted":
            self._acked = offset
            self._sub._conn.ack(self.id, offset)

    def _finish(self) -> None:
        # The end: acknowledging the total finishes the stream (its name goes).
        if self.complete and self._sub.auto_ack and self.total is not None:
            self._ack_to(self.total)
            self._sub._conn.flush()


class Event:
    """An observed event: ``kind`` is "opened", "renamed" or "closed"."""

    __slots__ = ("kind", "id", "path_bytes", "offset", "pid", "uid", "time_ns", "total", "status", "reason")

    def __init__(self, kind: str, id: int, path_bytes: Optional[bytes] = None, **kw: object) -> None:
        self.kind = kind
        self.id = id
        self.path_bytes = path_bytes
        for k in ("offset", "pid", "uid", "time_ns", "total", "status", "reason"):
            setattr(self, k, kw.get(k))

    @property
    def path(self) -> Optional[str]:
        return None if self.path_bytes is None else os.fsdecode(self.path_bytes)

    def __repr__(self) -> str:
        return "<Event %s %d %r>" % (self.kind, self.id, self.path)


class _Session:
    """Frames of one connection, dispatched."""

    def __init__(self, socket_path: PathLike, subscribe: Optional[P.Subscribe],
                 timeout: Optional[float] = None) -> None:
        self._conn = _Connection(socket_path)
        self.socket_path = self._conn.path
        self.timeout = timeout  # for every wait on this connection (None: no limit)
        self.error: Optional[ServerError] = None
        self.ended = False
        self._subscribed = subscribe is None
        self._status: Optional[List[P.StreamStatus]] = None
        self._status_parts: List[P.StreamStatus] = []
        self._commands: Optional[List[P.CommandStatus]] = None   # of the last reply; None: no COMMANDS
        self._commands_parts: Optional[List[P.CommandStatus]] = None
        self._peeked: Optional[P.Peeked] = None
        if subscribe is not None:
            try:
                self._conn.queue(subscribe)
                while not self._subscribed:
                    self._pump()
            except BaseException:
                self._conn.close()
                raise

    def _pump(self, timeout: Optional[float] = None) -> None:
        """Reads once and dispatches; raises the daemon's ERROR or a closed
        connection when nothing more can come (TimeoutError after
        ``timeout`` or self.timeout seconds without a byte)."""
        if self.ended:
            self._raise_end()
        frames = self._conn.receive(timeout if timeout is not None else self.timeout)
        if frames is None:
            self.ended = True
            self._on_end("the connection closed")
            self._raise_end()
            return
        for f in frames:
            if isinstance(f, P.Subscribed):
                self._subscribed = True
            elif isinstance(f, P.CommandsReply):  # version 2: before the STATUS parts of the reply
                if self._commands_parts is None:
                    self._commands_parts = []
                self._commands_parts.extend(f.commands)
            elif isinstance(f, P.StatusReply):
                self._status_parts.extend(f.streams)
                if not f.more:
                    self._status, self._status_parts = self._status_parts, []
                    self._commands, self._commands_parts = self._commands_parts, None
            elif isinstance(f, P.Peeked):  # version 3
                self._peeked = f
            elif isinstance(f, P.Error):
                self.error = ServerError(self.socket_path, f.code, f.message)
                self.ended = True
                self._on_end("%s: %s" % (self.error.name, f.message))
            else:
                self._on_frame(f)

    def _raise_end(self) -> None:
        if self.error is not None:
            raise self.error
        raise ConnectionError("%s: the daemon closed the connection" % self.socket_path)

    def _on_frame(self, f: P.Frame) -> None:
        pass

    def _on_end(self, why: str) -> None:
        pass

    def status(self, timeout: Optional[float] = None) -> List[P.StreamStatus]:
        """Every live stream in the mount (protocol.StreamStatus records).
        On a consuming connection the reply comes after the OPENED of every
        stream this subscription holds."""
        self._status = None
        self._conn.queue(P.StatusRequest())
        while self._status is None:
            self._pump(timeout)
        return self._status

    def status_and_commands(self, timeout: Optional[float] = None
                            ) -> Tuple[List[P.StreamStatus], Optional[List[P.CommandStatus]]]:
        """Like status(), and the commands the daemon runs (``--exec``):
        those that ended (the most recent, oldest first), then those
        running. The commands are None if the daemon runs none, or speaks
        only protocol version 1 (then it is not asked: it would refuse)."""
        while self._conn.server_version is None:
            self._pump(timeout)
        ask = self._conn.server_version >= 2
        self._status = None
        self._conn.queue(P.StatusRequest(commands=ask))
        while self._status is None:
            self._pump(timeout)
        return self._status, self._commands

    def peek(self, name: PathLike, size: int = 4096, timeout: Optional[float] = None) -> Optional[P.Peeked]:
        """The first bytes (at most ``size``, up to protocol.MAX_PEEK) of the
        stream at ``name``, not consumed: a protocol.Peeked (``data``,
        ``offset`` of its first byte, ``written``), or None if no live stream
        has that path. Needs a daemon speaking protocol version 3."""
        while self._conn.server_version is None:
            self._pump(timeout)
        if self._conn.server_version < 3:
            raise ServerError(self.socket_path, P.ErrorCode.BAD_VERSION,
                              "the daemon speaks protocol version %d; peek needs version 3"
                              % self._conn.server_version)
        self._peeked = None
        self._conn.queue(P.Peek(min(size, P.MAX_PEEK), _relpath(name)))
        while self._peeked is None:
            self._pump(timeout)
        return self._peeked if self._peeked.id != 0 else None

    def close(self) -> None:
        """Ends the connection; streams not finished go to the next subscriber."""
        self.ended = True
        self._conn.close()

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscription(_Session):
    """The streams handed to one consuming connection, in the order they
    were opened: iterate to get them (``Stream`` objects), one at a time.

    Frames of streams not yet read are kept (at most the daemon's window,
    4 MiB, per stream: it sends no more until they are acknowledged). Read
    each stream to its end before moving on: a stream left unread keeps its
    writers waiting until this subscription is closed, and then goes to the
    next subscriber from its first unacknowledged byte.
    """

    def __init__(self, socket_path: PathLike, patterns: Sequence[PathLike], *, literal: bool = False,
                 once: bool = False, nowait: bool = False, auto_ack: bool = True,
                 timeout: Optional[float] = None) -> None:
        self.auto_ack = auto_ack
        self.once = once
        self._streams: Dict[int, Stream] = {}
        self._ended: Dict[int, Stream] = {}  # closed, kept for a RENAMED after CLOSED (bounded)
        self._new: Deque[Stream] = collections.deque()
        self._yielded = 0
        sub = P.Subscribe(patterns=tuple(_relpath(p) for p in patterns) or (b"*",),
                          literal=literal, once=once, nowait=nowait)
        super().__init__(socket_path, sub, timeout)

    def _on_frame(self, f: P.Frame) -> None:
        if isinstance(f, P.Opened):
            s = Stream(self, f)
            self._streams[f.id] = s
            self._new.append(s)
            return
        s = self._streams.get(getattr(f, "id", 0))
        if s is None:
            # RENAMED may follow CLOSED: the creator renamed the file after
            # its end was delivered (rsync's temp file put into place).
            if isinstance(f, P.Renamed) and f.id in self._ended:
                self._ended[f.id].path_bytes = f.path
            return
        if isinstance(f, P.Data):
            if f.data:
                s._chunks.append((f.offset, f.data))
        elif isinstance(f, P.Renamed):
            s.path_bytes = f.path
        elif isinstance(f, P.Closed):
            s.total = f.total
            s.status = "complete" if f.status == P.CloseStatus.COMPLETE else "aborted"
            s.reason = f.reason or None
            del self._streams[f.id]
            self._ended[f.id] = s
            while len(self._ended) > 4096:
                del self._ended[next(iter(self._ended))]

    def _on_end(self, why: str) -> None:
        for s in self._streams.values():
            s.status, s.reason = "aborted", why
        self._streams.clear()

    def __iter__(self) -> Iterator[Stream]:
        return self

    def __next__(self) -> Stream:
        while not self._new:
            if self.once and self._yielded:
                raise StopIteration
            self._pump()
        self._yielded += 1
        return self._new.popleft()

    def next_stream(self, timeout: Optional[float] = None) -> Optional[Stream]:
        """The next stream, waiting at most ``timeout`` seconds (None: for
        ever); None if none came in time (TimeoutError is not raised)."""
        try:
            while not self._new:
                if self.once and self._yielded:
                    return None
                self._pump(timeout)
        except TimeoutError:
            return None
        self._yielded += 1
        return self._new.popleft()

    def _opened_any(self) -> Optional[Stream]:
        return self._new[0] if self._new else None


class Observation(_Session):
    """Events of the matching streams (``Event``), consuming nothing."""

    def __init__(self, socket_path: PathLike, patterns: Sequence[PathLike]) -> None:
        self._events: Deque[Event] = collections.deque()
        self._paths: Dict[int, bytes] = {}
        sub = P.Subscribe(patterns=tuple(_relpath(p) for p in patterns) or (b"*",), observe=True)
        super().__init__(socket_path, sub)

    def _on_frame(self, f: P.Frame) -> None:
        if isinstance(f, P.Opened):
            self._paths[f.id] = f.path
            self._events.append(Event("opened", f.id, f.path, offset=f.offset, pid=f.pid, uid=f.uid,
                                      time_ns=f.time_ns))
        elif isinstance(f, P.Renamed):
            self._paths[f.id] = f.path
            self._events.append(Event("renamed", f.id, f.path))
        elif isinstance(f, P.Closed):
            self._events.append(Event("closed", f.id, self._paths.pop(f.id, None), total=f.total,
                                      reason=f.reason or None,
                                      status="complete" if f.status == P.CloseStatus.COMPLETE else "aborted"))

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        while not self._events:
            self._pump()
        return self._events.popleft()


SOCKET_XATTR = "user.capturefs.socket"


def socket_of(mount: PathLike) -> str:
    """The socket of the daemon serving the mount at ``mount`` (the mount
    root's extended attribute ``user.capturefs.socket``)."""
    try:
        return os.fsdecode(os.getxattr(mount, SOCKET_XATTR))
    except OSError as e:
        raise OSError(e.errno, "%s: not a capturefs mount that serves a socket (%s)"
                      % (os.fsdecode(mount), e.strerror)) from None


def _socket_path(where: PathLike) -> str:
    """A socket path, or the socket of the mount at a directory."""
    return socket_of(where) if os.path.isdir(where) else os.fsdecode(where)


class Client:
    """The daemon at ``socket_path`` (``capturefs mount ... --socket PATH``),
    or, given the mountpoint, the daemon serving it."""

    def __init__(self, socket_path: PathLike) -> None:
        self.socket_path = _socket_path(socket_path)

    def subscribe(self, *globs: PathLike, literal: bool = False, once: bool = False, nowait: bool = False,
                  auto_ack: bool = True) -> Subscription:
        """Takes the streams whose path (relative to the mount) matches one of
        ``globs`` (fnmatch; ``*`` also matches ``/``; none: every stream).
        Returns once the daemon confirmed: every stream created from then on
        is seen. Raises ServerError (``not_found``/``busy``) with nowait."""
        return Subscription(self.socket_path, globs, literal=literal, once=once, nowait=nowait,
                            auto_ack=auto_ack)

    def observe(self, *globs: PathLike) -> Observation:
        """Opened/renamed/closed events of matching streams; consumes nothing."""
        return Observation(self.socket_path, globs)

    def status(self) -> List[P.StreamStatus]:
        """Every live stream: path, writer, bytes written and delivered, rate, state."""
        with _Session(self.socket_path, None) as s:
            return s.status()

    def commands(self) -> Optional[List[P.CommandStatus]]:
        """The commands of ``capturefs mount --exec`` (protocol.CommandStatus
        records: path, pid, state and exit code or signal, bytes fed,
        whether the input was cut short), those that ended first; None if
        the daemon runs no commands (or is too old to report them)."""
        with _Session(self.socket_path, None) as s:
            return s.status_and_commands()[1]

    def peek(self, name: PathLike, size: int = 4096) -> Optional[bytes]:
        """The first bytes of the stream at ``name`` (relative to the mount)
        without consuming them, like ``capturefs peek``; None if there is no
        such stream."""
        with _Session(self.socket_path, None) as s:
            p = s.peek(name, size)
            return None if p is None else p.data

    def cat(self, name: PathLike, wait: bool = False) -> bytes:
        """The bytes of the stream at ``name`` (relative to the mount), like
        ``capturefs cat``. Raises ServerError (not_found, busy) or
        StreamAborted."""
        with self.subscribe(name, literal=True, once=True, nowait=not wait) as sub:
            stream = next(sub)
            data = stream.read()
            if not stream.complete:
                raise StreamAborted("%s: %s" % (stream.path, stream.reason))
            sub.status()  # the final ACK is processed: the name is gone when we return
            return data


class Capture:
    """See capture()."""

    def __init__(self, mount: PathLike, socket_path: PathLike, name: Optional[str] = None, *,
                 prefix: str = "capture-", suffix: str = "", timeout: Optional[float] = None) -> None:
        self.mount = os.fsdecode(mount)
        self.socket_path = os.fsdecode(socket_path)
        self.name = name if name is not None else "%s%s%s" % (prefix, uuid.uuid4().hex, suffix)
        if self.name.startswith("/") or not self.name:
            raise ValueError("name must be a relative path inside the mount")
        self.path = os.path.join(self.mount, self.name)
        self.timeout = timeout
        self.data: Optional[bytes] = None
        self.written = False
        self.complete: Optional[bool] = None
        self.reason: Optional[str] = None
        self.stream: Optional[Stream] = None
        self._sub: Optional[Subscription] = None

    def __enter__(self) -> "Capture":
        # Subscribed before the caller's tool runs: whatever creates the path
        # from now on is handed to this subscription, synchronously inside
        # the create (or the rename onto the path).
        self._sub = Subscription(self.socket_path, [self.name], literal=True, once=True,
                                 timeout=self.timeout)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        sub = self._sub
        assert sub is not None
        discard = exc_type is not None
        try:
            if exc_type is None:
                self._collect(sub)
        except TimeoutError:
            discard = True
            raise
        finally:
            sub.close()  # anything not finished goes back to the mount
            if discard:
                self._discard()

    def _collect(self, sub: Subscription) -> None:
        # The tool is done. STATUS is a barrier: its reply comes after the
        # OPENED of every stream the subscription holds, so if the tool
        # created the path, the stream is known once the reply is in.
        live = sub.status(self.timeout)
        stream = sub._opened_any()
        if stream is None:
            target = os.fsencode(self.name)
            if any(r.path == target for r in live):
                raise CaptureError("%s: created, but another consumer (a reader of the path?) took it"
                                   % self.path)
            self.written = False  # never created (or created and removed again)
            return
        self.written = True
        self.stream = next(sub)
        self.data = self.stream.read()  # TimeoutError after `timeout` s without a byte
        self.complete = self.stream.complete
        self.reason = self.stream.reason
        if self.complete:
            # The daemon handles our frames in order: once this reply is in,
            # the final ACK was processed and the name is gone from the mount.
            sub.status(self.timeout)

    def _discard(self) -> None:
        # Like the seed recipe's `finally: os.unlink(path)`: leave nothing in the mount.
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def result(self) -> bytes:
        """The bytes written; raises NeverWritten or StreamAborted."""
        if not self.written:
            raise NeverWritten("%s was never written" % self.path)
        if not self.complete:
            raise StreamAborted("%s: aborted: %s" % (self.path, self.reason))
        assert self.data is not None
        return self.data


def capture(mount: PathLike, socket_path: Optional[PathLike] = None, name: Optional[str] = None, *,
            prefix: str = "capture-", suffix: str = "", timeout: Optional[float] = None) -> Capture:
    """A context manager giving a fresh path inside ``mount`` for one tool run.

    ::

        with capture(mount, sock, suffix=".json") as cap:
            subprocess.run(["tool", "-o", cap.path], check=True)
        data = cap.result()   # or cap.data / cap.written / cap.complete

    Entering subscribes to exactly that path (``name``, relative to the mount;
    default ``capture-<uuid><suffix>``). Leaving the block (the tool has
    finished) collects the stream: ``cap.data`` (bytes), ``cap.written``,
    ``cap.complete``, ``cap.reason``. If the tool never created the path,
    leaving returns at once with ``cap.written == False`` and ``cap.data is
    None``; no hang. The output is read only once the block ends: the
    subscription is the stream's consumer from the start, so an output
    larger than ``--max-stream`` makes the tool wait for it, but only for
    the daemon's stall time (``--stall-time``, 2 s): then the stream spills
    to the daemon's spill directory and the tool finishes, so this works at
    any size up to ``--spill-limit``. To avoid the pause and the disk, read
    a ``Client.subscribe()`` stream while the tool runs. ``timeout`` bounds each wait for the daemon
    (TimeoutError; e.g. a background process still holds the file open).
    If the block raises, nothing is collected and the path is removed.
    """
    if socket_path is None:
        socket_path = socket_of(mount)
    return Capture(mount, socket_path, name, prefix=prefix, suffix=suffix, timeout=timeout)
