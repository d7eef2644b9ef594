// The socket delivery protocol: frame types, encoder and incremental decoder.
//
// docs/protocol.md is the specification; this file follows it field by
// field. The codec is pure: bytes in, frames or a precise error out. It does
// no I/O, starts no thread and keeps no state beyond a Decoder's buffer, so
// the same code serves the daemon, the clients, the tests and the fuzzer.
//
// Byte order is big-endian throughout. Paths and patterns are raw bytes
// (std::string used as a byte string; no UTF-8 requirement); the text
// fields (an ERROR message, a CLOSED reason, a COMMANDS note) must be UTF-8.
//
// Versions: the codec speaks protocol versions kMinVersion..kVersion. A
// Decoder learns the connection's version from the hello it reads and
// rejects what that version does not define (the COMMANDS frame and the
// STATUS_REQUEST COMMANDS flag are version 2; PEEK, PEEKED and the STATUS
// record's `spilled` and `wait` are version 3). The encoder encodes any
// frame: sending only what the connection's version has is the caller's
// job. The one frame whose layout depends on the version is STATUS (its
// records grew in version 3): encode() and encode_status() take the
// connection's version for it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace capturefs::proto {

// ---------------------------------------------------------------- limits

inline constexpr char kMagic[4] = {'C', 'A', 'P', 'F'};
inline constexpr std::uint16_t kVersion = 3;     ///< the highest version spoken
inline constexpr std::uint16_t kMinVersion = 1;  ///< the lowest version spoken
inline constexpr std::size_t kHelloSize = 8;    ///< magic, version, flags
inline constexpr std::size_t kHeaderSize = 6;   ///< length u32, type u8, flags u8
inline constexpr std::size_t kMaxChunk = 1 << 20;           ///< DATA payload
inline constexpr std::size_t kMaxBody = kMaxChunk + 16;     ///< any frame body
inline constexpr std::size_t kMaxFrame = kHeaderSize + kMaxBody;
inline constexpr std::size_t kMaxPath = 4096;    ///< PATH_MAX; paths and patterns
inline constexpr std::size_t kMaxPatterns = 64;  ///< per SUBSCRIBE
inline constexpr std::size_t kMaxText = 1024;    ///< ERROR message, CLOSED reason, COMMANDS note
inline constexpr std::size_t kMaxPeek = 65536;   ///< PEEK size, PEEKED payload (version 3)

// ---------------------------------------------------------------- frames

/// \brief Who sent the bytes a Decoder reads.
enum class Peer : std::uint8_t { client, server };

/// \brief Frame type byte. Client frames have the high bit clear, server
/// frames have it set.
enum class Type : std::uint8_t {
  subscribe = 0x01,
  ack = 0x02,
  status_request = 0x03,
  peek = 0x04,  ///< version 3
  subscribed = 0x81,
  opened = 0x82,
  data = 0x83,
  renamed = 0x84,
  closed = 0x85,
  status = 0x86,
  error = 0x87,
  commands = 0x88,  ///< version 2
  peeked = 0x89,    ///< version 3
};

/// \brief The first 8 bytes each side sends. A client states the highest
/// version it speaks and the optional features it asks for; the server
/// answers with the version the connection uses and the features granted.
struct Hello {
  std::uint16_t version = kVersion;
  std::uint16_t flags = 0;  ///< v1 and v2 define none
  friend bool operator==(const Hello&, const Hello&) = default;
};

/// \brief Client: which streams to take (or, with `observe`, to watch).
struct Subscribe {
  bool observe = false;  ///< events only (OPENED, RENAMED, CLOSED); consume nothing
  bool literal = false;  ///< patterns are exact paths, not globs
  bool once = false;     ///< at most one stream, then the subscription ends
  bool nowait = false;   ///< nothing matches now: ERROR not_found/busy instead
  std::vector<std::string> patterns;  ///< 1..kMaxPatterns, each 1..kMaxPath bytes, no NUL
  friend bool operator==(const Subscribe&, const Subscribe&) = default;
};

/// \brief Client: the bytes of stream `id` before `offset` are processed.
struct Ack {
  std::uint64_t id = 0;
  std::uint64_t offset = 0;
  friend bool operator==(const Ack&, const Ack&) = default;
};

/// \brief Client: asks for a STATUS reply listing every live stream.
struct StatusRequest {
  /// Version 2 (flag COMMANDS): the reply also lists the commands the
  /// daemon runs (`--exec`), in COMMANDS frames before the STATUS parts.
  bool commands = false;
  friend bool operator==(const StatusRequest&, const StatusRequest&) = default;
};

/// \brief Client, version 3: the first bytes of the stream at `path`,
/// without consuming them (`capturefs peek`).
struct Peek {
  std::uint32_t size = 0;  ///< 1..kMaxPeek: at most this many bytes
  std::string path;        ///< the stream's exact path (no glob)
  friend bool operator==(const Peek&, const Peek&) = default;
};

/// \brief Server: the SUBSCRIBE was accepted.
struct Subscribed {
  friend bool operator==(const Subscribed&, const Subscribed&) = default;
};

/// \brief Server: stream `id` is handed to (or, for an observer, seen by)
/// this connection. DATA for it starts at `offset`.
struct Opened {
  std::uint64_t id = 0;
  std::uint64_t offset = 0;
  std::int64_t time_ns = 0;  ///< creation time, ns since the Unix epoch
  std::uint32_t pid = 0;     ///< the writer that created it (0: unknown)
  std::uint32_t uid = 0;
  std::string path;          ///< relative to the mount
  friend bool operator==(const Opened&, const Opened&) = default;
};

/// \brief Server: bytes of stream `id` at stream offset `offset`.
struct Data {
  std::uint64_t id = 0;
  std::uint64_t offset = 0;
  std::vector<std::byte> bytes;  ///< at most kMaxChunk
  friend bool operator==(const Data&, const Data&) = default;
};

/// \brief Server: stream `id` now has this path.
struct Renamed {
  std::uint64_t id = 0;
  std::string path;
  friend bool operator==(const Renamed&, const Renamed&) = default;
};

enum class CloseStatus : std::uint8_t { complete = 0, aborted = 1 };

/// \brief Server: stream `id` ended; `total` bytes were written in all.
struct Closed {
  std::uint64_t id = 0;
  std::uint64_t total = 0;
  CloseStatus status = CloseStatus::complete;
  std::string reason;  ///< UTF-8; empty if complete, non-empty if aborted
  friend bool operator==(const Closed&, const Closed&) = default;
};

/// \brief Server, version 3: the answer to a PEEK. `id` 0: no live stream
/// has that path (then every other field is 0 and `bytes` is empty).
struct Peeked {
  std::uint64_t id = 0;
  std::uint64_t offset = 0;   ///< stream offset of bytes[0]: the first byte not yet consumed
  std::uint64_t written = 0;  ///< bytes written to the stream so far
  std::vector<std::byte> bytes;  ///< at most the size asked (and kMaxPeek)
  friend bool operator==(const Peeked&, const Peeked&) = default;
};

enum class StreamState : std::uint8_t {
  writing = 0,    ///< a writer is open, no consumer
  streaming = 1,  ///< a writer is open, a consumer takes the bytes
  held = 2,       ///< writers done, bytes wait for a consumer
  draining = 3,   ///< writers done, a consumer takes the rest
};

/// \brief On what a stream's writer waits (STATUS record, version 3).
enum class WaitReason : std::uint8_t {
  none = 0,         ///< no writer waits
  consumer = 1,     ///< for its consumer to take bytes
  memory = 2,       ///< for memory (the memory caps are reached, no spilling)
  spill_limit = 3,  ///< for spill space (the spill limit or the disk is full)
};

/// \brief One record of a STATUS reply.
struct StreamStatus {
  std::uint64_t id = 0;
  std::uint32_t pid = 0;
  std::uint32_t uid = 0;
  std::int64_t time_ns = 0;
  std::uint64_t written = 0;    ///< bytes written so far
  std::uint64_t delivered = 0;  ///< bytes handed to consumers (socket or read)
  std::uint64_t rate = 0;       ///< bytes/s written recently
  StreamState state = StreamState::writing;
  std::string path;
  // Version 3 (on the wire between `state` and `path`; last here so that
  // older aggregate initializers stay valid).
  std::uint64_t spilled = 0;  ///< of the bytes not yet consumed, those in the spill file
  WaitReason wait = WaitReason::none;  ///< on what its writer waits
  friend bool operator==(const StreamStatus&, const StreamStatus&) = default;
};

/// \brief Server: part of the answer to a STATUS_REQUEST; `more` is set on
/// every part but the last.
struct StatusReply {
  bool more = false;
  std::vector<StreamStatus> streams;
  friend bool operator==(const StatusReply&, const StatusReply&) = default;
};

/// \brief What became of a command (COMMANDS record, version 2).
enum class CommandState : std::uint8_t {
  running = 0,      ///< started, not yet reaped
  exited = 1,       ///< exited; `code` is its exit status
  killed = 2,       ///< killed by signal `code` (not 0)
  not_started = 3,  ///< could not be started (`note` says why)
  unknown = 4,      ///< no longer waited for, or reaped elsewhere (`note` says why)
};

/// \brief How far a command got with its input (COMMANDS record).
enum class CommandInput : std::uint8_t {
  feeding = 0,     ///< the stream is still being written to its stdin
  complete = 1,    ///< it got the whole stream, then EOF
  cut_short = 2,   ///< it exited (or closed stdin) before reading everything: the writers got EPIPE
  incomplete = 3,  ///< the stream ended early otherwise: unlinked, daemon stopping, not started ...
};

/// \brief One record of a COMMANDS frame: a command `capturefs mount --exec`
/// started for a stream (running, or among the most recent that ended).
struct CommandStatus {
  std::uint64_t id = 0;   ///< the stream it was started for
  std::uint32_t pid = 0;  ///< 0 if it was never started
  CommandState state = CommandState::running;
  std::uint8_t code = 0;  ///< exited: exit status; killed: signal number; otherwise 0
  CommandInput input = CommandInput::feeding;
  std::uint64_t bytes = 0;      ///< bytes written to its stdin
  std::int64_t started_ns = 0;  ///< ns since the epoch
  std::int64_t ended_ns = 0;    ///< when it ended; 0 while running
  std::string path;             ///< the stream's path when it started (CAPTUREFS_PATH)
  std::string note;             ///< UTF-8, at most kMaxText: why the input or start failed; may be empty
  friend bool operator==(const CommandStatus&, const CommandStatus&) = default;
};

/// \brief Server, version 2: commands, part of the answer to a
/// STATUS_REQUEST with `commands` set. Sent only by a daemon that runs
/// commands, before the STATUS parts (the last STATUS part ends the reply).
struct CommandsReply {
  std::vector<CommandStatus> commands;
  friend bool operator==(const CommandsReply&, const CommandsReply&) = default;
};

enum class ErrorCode : std::uint16_t {
  // Decoding errors (the Decoder reports these).
  bad_magic = 1,    ///< the hello does not start with "CAPF"
  bad_version = 2,  ///< version 0, or one the receiver does not speak
  bad_type = 3,     ///< unknown frame type, or not one this peer sends
  bad_flags = 4,    ///< undefined flag bits set
  too_large = 5,    ///< length over kMaxBody or over the type's maximum
  truncated = 6,    ///< a field runs past the end of the frame (or of the input)
  trailing = 7,     ///< bytes left in the frame after its last field
  bad_value = 8,    ///< a value out of range: empty path, NUL, bad UTF-8, ...
  limit = 9,        ///< a count or length over its limit (patterns, path, text)
  // Session errors (the server reports these).
  bad_state = 16,  ///< a frame not allowed now (a second SUBSCRIBE, ...)
  bad_ack = 17,    ///< an ACK beyond the bytes sent
  not_found = 18,  ///< nowait: no stream matches
  busy = 19,       ///< nowait: every matching stream has a consumer
  shutdown = 20,   ///< the daemon is stopping
  internal = 21,   ///< the server failed (out of memory, ...)
};

/// \brief A problem with the bytes or the session. Decoding errors come out
/// of a Decoder; sent as a frame, it is the last thing the server says.
/// Receivers accept any non-zero code (show unknown ones by number).
struct Error {
  ErrorCode code = ErrorCode::internal;
  std::string message;  ///< UTF-8, at most kMaxText bytes
  friend bool operator==(const Error&, const Error&) = default;
};

using Frame = std::variant<Hello, Subscribe, Ack, StatusRequest, Subscribed, Opened, Data, Renamed,
                           Closed, StatusReply, Error, CommandsReply, Peek, Peeked>;

/// \brief Length of the strict UTF-8 sequence (RFC 3629: no overlong
/// forms, no surrogates, at most U+10FFFF) starting at s[i], or 0 if none
/// starts there.
std::size_t utf8_sequence(std::string_view s, std::size_t i);

/// \brief "bad_magic", "truncated", ... ("error_N" for an unknown code).
std::string to_string(ErrorCode code);
/// \brief "SUBSCRIBE", "DATA", "COMMANDS", ... ("HELLO" for a Hello).
std::string_view frame_name(const Frame& frame);

// ---------------------------------------------------------------- encoding

/// \brief Appends the wire form of `frame` to `out`. A frame the decoder
/// would reject (empty path, too many patterns, oversized chunk, bad UTF-8
/// text, ...) is not encoded: `out` is left as it was and the error, with
/// the code the decoder would give, is returned. `version`: the
/// connection's, for the STATUS record layout (version 1 and 2 records have
/// no `spilled` and `wait`: those fields are not sent).
[[nodiscard]] std::optional<Error> encode(const Frame& frame, std::vector<std::byte>& out,
                                          std::uint16_t version = kVersion);

/// \brief Appends only the header and fixed fields of a DATA frame whose
/// `size` payload bytes the caller sends next (writev without a copy).
[[nodiscard]] std::optional<Error> encode_data_header(std::uint64_t id, std::uint64_t offset,
                                                      std::size_t size,
                                                      std::vector<std::byte>& out);

/// \brief Appends a complete STATUS reply: as many STATUS frames as the
/// records need (at least one), `more` set on all but the last, in the
/// record layout of protocol `version`.
[[nodiscard]] std::optional<Error> encode_status(std::span<const StreamStatus> streams,
                                                 std::vector<std::byte>& out,
                                                 std::uint16_t version = kVersion);

/// \brief Appends the COMMANDS frames of a reply (version 2): as many as the
/// records need, at least one. Nothing is appended on an error.
[[nodiscard]] std::optional<Error> encode_commands(std::span<const CommandStatus> commands,
                                                   std::vector<std::byte>& out);

// ---------------------------------------------------------------- decoding

/// \brief Incremental decoder for the bytes one peer sends: its hello, then
/// frames. Feed it any slices; take complete frames with next().
///
///   dec.feed(bytes_read);
///   while (auto f = dec.next()) handle(*f);
///   if (dec.error()) { send ERROR(*dec.error()); disconnect; }
///
/// The hello or header of the next frame to return is checked as its bytes
/// arrive, before any body byte: a wrong magic byte, a length over the
/// maximum (on the 4 length bytes alone: nothing is allocated for it), an
/// unknown type or flag. Frames before a bad one are still returned. An
/// error is final: later input is ignored and next() returns nothing.
/// Memory: the bytes fed and not yet returned as frames.
///
/// Versions: `version` is the highest version the reading side speaks (a
/// client: the one it offered). Reading a client, the connection's version
/// is min(client's, `version`); reading a server, its hello must name a
/// version from kMinVersion to `version`, and that is the connection's.
/// Frames and flags of later versions are refused (bad_type, bad_flags).
class Decoder {
 public:
  explicit Decoder(Peer sender, std::uint16_t version = kVersion) : sender_(sender), max_version_(version) {}

  void feed(std::span<const std::byte> bytes);
  /// \brief The next complete frame (the first is always the Hello), or
  /// nullopt if more bytes are needed or an error was found.
  std::optional<Frame> next();
  const std::optional<Error>& error() const { return error_; }
  /// \brief The peer closed the connection: an error (truncated) if it
  /// stopped inside its hello or a frame. Returns error().
  const std::optional<Error>& finish();

  /// \brief Bytes fed and not yet returned as frames.
  std::size_t buffered() const { return buf_.size() - pos_; }
  /// \brief Bytes returned as frames so far (hello included).
  std::uint64_t consumed() const { return consumed_; }
  /// \brief The connection's protocol version once the hello was returned
  /// by next(); 0 before.
  std::uint16_t version() const { return version_; }

 private:
  std::optional<std::size_t> check_head();
  void fail(Error e);

  Peer sender_;
  std::uint16_t max_version_;
  std::uint16_t version_ = 0;
  bool hello_done_ = false;
  std::vector<std::byte> buf_;
  std::size_t pos_ = 0;
  std::uint64_t consumed_ = 0;
  std::optional<Error> error_;
};

}  // namespace capturefs::proto
