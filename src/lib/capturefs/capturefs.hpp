// libcapturefs: mount a capture directory from your own program and receive
// every file written into it as a stream of callbacks.
//
//   capturefs::Options opt;
//   opt.mountpoint = "/tmp/cap";
//   capturefs::Mount m(opt);                   // mounted and serving on return
//   capturefs::ConsumeOptions co;
//   co.globs = {"*.tbl"};                      // streams matching *.tbl
//   capturefs::Consumer c = m.consume(callbacks, co);
//   ...                                        // run tools writing into /tmp/cap
//   // ~Consumer stops delivery, ~Mount unmounts
//
// A complete program: docs/examples/library_example.cpp (docs/library.md).
// What a stream does (writes, renames, aborts, spilling): docs/semantics.md.
//
// THREADING
// - Callbacks run on the consumer's delivery threads (ConsumeOptions::
//   threads), never on FUSE worker threads and never with a capturefs lock
//   held. Calls for one stream are ordered (open, data..., close) and never
//   overlap; calls for different streams may run concurrently.
// - A callback may block: that slows the writers of that stream only (once
//   its unacknowledged bytes reach the memory limits), never lookups or other
//   streams, as long as fewer streams block than there are delivery threads.
// - From a callback you may call Ack, and Consumer/Mount methods other than
//   ~Consumer, Consumer::close, ~Mount and Mount::unmount (those wait for the
//   delivery threads and would deadlock).
//
// ERRORS
// Constructors and methods throw std::system_error whose what() names the
// path and the cause (missing or non-empty mountpoint, /dev/fuse missing,
// mount refused). An exception thrown by a callback is logged to stderr and
// the stream continues; throw AbortStream to end a stream instead.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace capturefs {

/// \brief How to mount.
struct Options {
  std::string mountpoint;                    ///< an existing, empty directory
  std::uint64_t max_memory = 1ULL << 30;     ///< bytes buffered, all streams
  std::uint64_t max_stream = 256ULL << 20;   ///< bytes buffered, one stream
  std::vector<std::string> fuse_options;     ///< "-o" options, e.g. "allow_other"
  /// Globs (fnmatch, `*` matches `/`) of paths *held* while written: random
  /// writes, read-back and truncate work, and the file is delivered whole
  /// once its last writer closes it. Held bytes count against max_memory,
  /// and beyond it spill (see `spill`); a held write that fits neither
  /// fails with ENOSPC (or EFBIG past max_stream without spilling) instead
  /// of waiting.
  std::vector<std::string> hold;
  unsigned fuse_threads = 16;                ///< FUSE worker threads
  bool debug = false;                        ///< log every FUSE request
  /// Spilling. A stream that has no consumer yet (no reader, no push
  /// consumer) and whose next write does not fit max_memory / max_stream
  /// continues in an unnamed temporary file (open(O_TMPFILE | O_EXCL)) in
  /// spill_dir instead of making its writer wait; so does a held stream.
  /// Nothing named is ever created there, and the space comes back as the
  /// bytes are consumed, and when the process ends in any way. Writers
  /// wait only when memory and spill_limit are both used up. false: never
  /// spill (writers wait for a consumer, as before).
  bool spill = true;
  /// Where spill files go. "": $TMPDIR if set, else /tmp; a default that
  /// cannot take O_TMPFILE files only logs a warning and turns spilling
  /// off, a spill_dir given here that cannot makes the constructor throw.
  std::string spill_dir;
  std::uint64_t spill_limit = 8ULL << 30;    ///< bytes in spill files, all streams (>= 2 MiB)
  /// The stall time ("never hang"): a write that has waited this long for
  /// its consumer to make room stops waiting. The stream spills as if it
  /// had no consumer (the consumer reads the spilled bytes later, in
  /// order); if the spill tier cannot take the bytes either (spill_limit
  /// reached, disk full), the write fails with ENOSPC and the stream is
  /// aborted with the reason. Without spilling, writes wait as long as it
  /// takes. 0: no stall rule. A waiting write holds the file's inode lock
  /// in the kernel, so unlink, rename and chmod of that file wait with it.
  std::chrono::milliseconds stall_time{2000};
  /// Socket delivery (docs/protocol.md: `capturefs cat/watch/status/peek`
  /// and the Python client): a Unix socket at this path, mode 0600, created
  /// before mounting (a path another daemon listens on makes the
  /// constructor throw) and removed at unmount. Its path is also what
  /// getxattr("user.capturefs.socket") of the mountpoint answers, so that
  /// clients find the daemon from the mount. "": no socket.
  std::string socket;
};

/// \brief A command the embedding program runs for a stream (the CLI's
/// `--exec`), as socket clients are shown it (`capturefs status`).
struct CommandStatus {
  enum class State : std::uint8_t { running, exited, killed, not_started, unknown };
  enum class Input : std::uint8_t { feeding, complete, cut_short, incomplete };
  std::uint64_t stream_id = 0;
  pid_t pid = 0;                 ///< 0 if it was never started
  State state = State::running;
  int code = 0;                  ///< exited: exit status; killed: signal number
  Input input = Input::feeding;  ///< how far it got with its stdin
  std::uint64_t bytes = 0;       ///< bytes written to its stdin
  timespec started{};
  timespec ended{};              ///< zero while running
  std::string path;              ///< the stream's path when it started
  std::string note;              ///< why, when not plain from the rest
};

/// \brief A stream handed to a consumer.
struct StreamOpen {
  std::uint64_t id = 0;            ///< unique for the life of the mount
  std::string path;                ///< relative to the mountpoint
  pid_t writer_pid = 0;            ///< the process that created the file
  uid_t writer_uid = 0;
  timespec created{};
  std::uint64_t start_offset = 0;  ///< > 0 if an earlier consumer took the start
};

/// \brief Bytes of a stream, at `offset`. Valid only during the callback.
struct Chunk {
  std::uint64_t id = 0;
  std::uint64_t offset = 0;
  std::span<const std::byte> bytes;
};

/// \brief The end of a stream.
struct StreamClose {
  std::uint64_t id = 0;
  std::uint64_t total = 0;  ///< bytes written in all
  bool complete = true;     ///< false: aborted (e.g. unlinked), see reason
  std::string reason;
};

/// \brief Finishes an asynchronously handled chunk: until called, the
/// chunk's bytes count against the memory limits (backpressure). Call once,
/// from any thread; copyable, so it fits in std::function.
class Ack {
 public:
  Ack() = default;
  explicit Ack(std::function<void()> fn) : fn_(std::move(fn)) {}
  void operator()() const;

 private:
  std::function<void()> fn_;
};

/// \brief What a consumer is told. Set on_data or on_data_async, not both.
struct Callbacks {
  std::function<void(const StreamOpen&)> on_open;
  /// The chunk is done when this returns.
  std::function<void(const Chunk&)> on_data;
  /// The chunk is done when `ack` is called (possibly later, elsewhere).
  std::function<void(const Chunk&, Ack ack)> on_data_async;
  /// The stream was renamed. Also after on_close, when the process that
  /// created it renames it once it was delivered (rsync's temp file).
  std::function<void(std::uint64_t id, const std::string& new_path)> on_rename;
  std::function<void(const StreamClose&)> on_close;
};

/// \brief Throw from on_open or on_data to give up on a stream (e.g. the
/// program it was piped to exited): the consumer then gets on_close with
/// complete == false and this reason, and the stream's writers get EPIPE
/// from their next write on.
class AbortStream : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// \brief Which streams a consumer takes, and how it is fed.
struct ConsumeOptions {
  std::vector<std::string> globs;  ///< fnmatch(3) patterns on the relative path; `*` matches '/'
  std::function<bool(std::string_view path)> filter;  ///< used instead of globs if set
  unsigned threads = 2;            ///< delivery threads
  std::size_t chunk = 256 * 1024;  ///< largest chunk
  std::size_t max_active = 0;      ///< streams held at once (0: no limit); more wait their turn
};

/// \brief A stream left behind at unmount (Mount::finish).
struct Leftover {
  std::string path;         ///< relative to the mountpoint
  std::uint64_t bytes = 0;  ///< not delivered
};

/// \brief What an unmount did not deliver (Mount::finish).
struct FinishReport {
  std::vector<Leftover> discarded;  ///< nobody would read them: discarded, oldest first
  std::vector<Leftover> cut;        ///< given up on before they were delivered
};

class Mount;

/// \brief A registered consumer. Destroying it (or close()) stops delivery;
/// streams not finished go to the next matching consumer or reader, from
/// their first byte not yet done.
class Consumer {
 public:
  Consumer() = default;
  Consumer(Consumer&&) noexcept;
  Consumer& operator=(Consumer&&) noexcept;
  ~Consumer();
  void close();

 private:
  friend class Mount;
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

/// \brief A mounted capture directory (RAII: the destructor unmounts).
class Mount {
 public:
  /// \brief Mounts. Unless `serve_now` is false, requests are served at once
  /// by background threads. Throws std::system_error naming the cause.
  explicit Mount(const Options& opt, bool serve_now = true);
  ~Mount();
  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;

  /// \brief Takes the streams that match `opt` (existing unconsumed ones
  /// and future ones). Several consumers with overlapping filters share the
  /// streams; a reader opening the same path is another possible consumer.
  Consumer consume(Callbacks cb, ConsumeOptions opt = {});

  /// \brief The absolute mountpoint.
  const std::string& mountpoint() const;
  /// \brief Bytes currently buffered, and the peak so far.
  std::size_t memory_used() const;
  std::size_t memory_peak() const;
  /// \brief Bytes currently in spill files, and the peak so far.
  std::size_t spill_used() const;
  std::size_t spill_peak() const;
  /// \brief The absolute spill directory, or "" when not spilling.
  const std::string& spill_dir() const;
  /// \brief The absolute socket path (Options::socket), or "".
  const std::string& socket() const;

  /// \brief What socket clients are shown as the commands the program runs
  /// (`capturefs status`). Called on a socket connection's thread, possibly
  /// on several at once; must not block for long. Unset (the default): no
  /// commands are listed. The socket server reads whether it is set when it
  /// starts (with serving): set it before serve(), or, to replace it, at
  /// any time.
  void set_status_commands(std::function<std::vector<CommandStatus>()> fn);

  /// \brief Unmounts now (also done by the destructor). Writers still
  /// waiting get EIO.
  void unmount();
  /// \brief Ends the mount without losing what was promised: unmounts (if
  /// still mounted: nothing new can be opened; a stream still open for
  /// writing ends aborted), discards the streams nobody will read (no
  /// consumer has them and none takes their path) and reports them, then
  /// waits until the consumers have delivered every other stream, those
  /// waiting their turn included. `keep_going(streams, bytes)` is called
  /// about every 100 ms with what is left; returning false gives up on the
  /// rest (reported as cut: a consumer is told the stream was aborted).
  /// The consumers must stay alive meanwhile.
  FinishReport finish(const std::function<bool(std::size_t streams, std::uint64_t bytes)>& keep_going = {});

  // ---- For a daemon (the capturefs CLI): mount with serve_now = false,
  // optionally daemonize(), then serve() in the main thread.
  /// \brief Forks into the background; returns in the child only.
  void daemonize();
  /// \brief Serves until SIGINT/SIGTERM/SIGHUP or an external unmount.
  /// Returns 0 on such a clean end.
  int serve();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace capturefs
