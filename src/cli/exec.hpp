// `capturefs mount --exec CMD`: run a command per captured file, fed the
// file's bytes on its stdin.
//
// Built only on the public library API (capturefs::Mount::consume with
// Callbacks), like any embedding program:
//
//   ExecRunner runner(mount, {.command = "gzip -c > /archive/x.gz"});
//   ...                      // serve; every new stream starts one command
//   runner.stop();           // before the Mount is destroyed
//
// PER STREAM
//   on_open   waits for a command slot (at most `jobs` commands alive), then
//             pipe + posix_spawn("/bin/sh", "-c", CMD): stdin = the pipe's
//             read end, stdout/stderr = the daemon's, every other descriptor
//             closed, signal dispositions and mask reset to default, the
//             environment = the daemon's + CAPTUREFS_PATH, CAPTUREFS_MOUNT,
//             CAPTUREFS_WRITER_PID. The path is never pasted into CMD.
//   on_data   writes the chunk fully into the pipe (blocking: that is the
//             writers' backpressure). EPIPE (the command exited or closed its
//             stdin) -> AbortStream: the writers get EPIPE from then on.
//   on_close  closes the pipe (the command sees EOF) and hands the command to
//             the reaper thread, which waits for its exit (pidfd), logs the
//             status, records it in history() and frees the command slot.
//
// At most `jobs` commands are alive (started and not yet reaped) at once.
// The consumer holds at most `jobs` streams (ConsumeOptions::max_active) and
// has `jobs` delivery threads; a stream offered while `jobs` commands are
// still alive waits in on_open for one to be reaped. (The core frees a
// stream's max_active slot before on_close, so max_active alone would let a
// new command start while the previous one is still finishing.) Delivery
// threads only ever block in on_open (waiting for a slot) or on_data (a full
// pipe), each for a stream holding a max_active slot: so `jobs` threads are
// always enough, and a reaped command frees its slot without needing one.
//
// THREADING
// Callbacks run on the consumer's delivery threads; history(), running()
// and snapshot() may be called from any thread (snapshot() is what
// `capturefs status` shows, through the socket server). SIGPIPE is ignored process-wide (once the
// runner exists) so that a closed pipe is an EPIPE, not the daemon's death;
// SIGCHLD is reset to its default so that waitpid works.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "capturefs/capturefs.hpp"

namespace capturefs::cli {

struct ExecOptions {
  std::string command;             ///< run as `/bin/sh -c command`
  std::vector<std::string> globs;  ///< which paths (fnmatch, `*` matches '/'); none: all
  unsigned jobs = 0;               ///< commands at once; 0: the number of CPUs
  std::string shell = "/bin/sh";
  /// How long stop() waits for commands still running (after closing their
  /// stdin) before leaving them behind.
  std::chrono::milliseconds stop_grace{5000};
};

/// \brief The number of CPUs this process may run on (at least 1).
unsigned cpu_count();

/// \brief "exit 3", "killed by signal 9 (SIGKILL)", "not started".
std::string describe_wait_status(int status);

/// \brief A path made safe for a one-line log message: control bytes,
/// backslash and single quote are escaped (\n, \x1b, \\, \').
std::string log_quote(std::string_view path);

/// \brief How far a command got with its input.
enum class ExecInput {
  feeding,     ///< the stream is still being written to its stdin
  complete,    ///< it got the whole stream, then EOF
  cut_short,   ///< it exited (or closed stdin) before reading everything: the writers got EPIPE
  incomplete,  ///< the stream ended early otherwise (unlinked, capturefs stopping, not started, ...)
};

/// \brief One command that has ended (or could not start).
struct ExecExit {
  std::uint64_t stream_id = 0;
  std::string path;              ///< CAPTUREFS_PATH it was started with
  pid_t pid = 0;                 ///< 0: could not be started
  int status = -1;               ///< raw wait status; -1: not started / not waited for
  std::uint64_t bytes = 0;       ///< bytes written to its stdin
  bool input_complete = false;   ///< it got the whole stream, then EOF
  ExecInput input = ExecInput::incomplete;  ///< complete, cut_short or incomplete
  std::string note;              ///< why the input is incomplete, if it is
  timespec started{};
  timespec ended{};
  /// Exited 0 after reading the whole stream.
  bool ok() const;
};

/// \brief One command still running.
struct ExecRunning {
  std::uint64_t stream_id = 0;
  std::string path;
  pid_t pid = 0;
  std::uint64_t bytes = 0;  ///< written to its stdin so far
  timespec started{};
  /// feeding while the stream goes on; once its stdin is closed, how that went.
  ExecInput input = ExecInput::feeding;
  std::string note;  ///< why the input is incomplete (once it is known)
};

/// \brief The commands at one moment: those running and the most recent
/// that ended (oldest first). A command is never in both lists, and one
/// that has ended is never missing from both.
struct ExecSnapshot {
  std::vector<ExecRunning> running;  ///< by stream id
  std::vector<ExecExit> recent;
};

/// \brief A bounded, thread-safe record of the most recent exits (what a
/// `capturefs status` command reports, with the running ones).
class ExecHistory {
 public:
  explicit ExecHistory(std::size_t capacity = 256) : capacity_(capacity == 0 ? 1 : capacity) {}
  void add(ExecExit e);
  /// The most recent exits, oldest first (at most capacity()).
  std::vector<ExecExit> recent() const;
  std::size_t capacity() const { return capacity_; }
  /// Exits recorded since the start, and how many of them were not ok().
  std::uint64_t total() const;
  std::uint64_t failed() const;

 private:
  const std::size_t capacity_;
  // Lock order: a leaf; taken alone or under ExecRunner::mu_ (a finished
  // command moves to the history under both).
  mutable std::mutex mu_;
  std::deque<ExecExit> recent_;
  std::uint64_t total_ = 0;
  std::uint64_t failed_ = 0;
};

class ExecRunner {
 public:
  /// \brief Starts consuming the matching streams of `mount`. Throws
  /// std::system_error if the runner cannot be set up. `mount` must outlive
  /// the runner (or at least stop()).
  ExecRunner(Mount& mount, ExecOptions opt);
  ~ExecRunner();  ///< stop()
  ExecRunner(const ExecRunner&) = delete;
  ExecRunner& operator=(const ExecRunner&) = delete;

  /// \brief Stops taking and feeding streams: deliveries in progress are
  /// cut short (their commands get EOF early, the streams' writers EPIPE),
  /// streams not yet ended go back to the mount, the consumer is closed.
  /// Commands are not waited for. A daemon calls it as soon as serve()
  /// returns, before unmounting (the unmount ends open writers' streams as if
  /// they had closed). Idempotent; not from a callback.
  void stop_feeding();
  /// \brief stop_feeding(), then waits for the commands still running, up
  /// to stop_grace (those left are logged as still running). Call it before
  /// the Mount is destroyed; after Mount::unmount() if the mount was served,
  /// so that a command touching the mount cannot hang. Idempotent; not from
  /// a callback.
  void stop();

  unsigned jobs() const { return max_jobs_; }
  const ExecHistory& history() const { return history_; }
  std::vector<ExecRunning> running() const;
  /// \brief running() and history().recent() taken together (see ExecSnapshot).
  ExecSnapshot snapshot() const;

 private:
  struct Job;
  void on_open(const StreamOpen& o);
  void on_data(const Chunk& c);
  void on_close(const StreamClose& e);
  std::shared_ptr<Job> find(std::uint64_t id) const;
  void hand_to_reaper(std::shared_ptr<Job> j);
  void reap_loop();
  void finish(const std::shared_ptr<Job>& j);
  void wake(int fd);

  const ExecOptions opt_;
  const unsigned max_jobs_;
  const std::string mountpoint_;
  std::vector<std::string> base_env_;  // the daemon's, without our variables
  int stop_fd_ = -1;                   // eventfd; readable for good once stopping
  int reap_fd_ = -1;                   // eventfd; the reaper has news
  std::atomic<bool> stopping_{false};

  // Serialises stop_feeding() and stop(). Lock order: taken first, with no
  // other lock held; mu_ (then history_'s) may be taken under it.
  std::mutex stop_mu_;
  bool feeding_stopped_ = false;
  bool stopped_ = false;

  // Guards everything below. Lock order: stop_mu_ -> mu_ -> history_'s
  // mutex; only history_'s lock is taken under it.
  mutable std::mutex mu_;
  std::condition_variable slot_cv_;
  unsigned alive_ = 0;  // commands started and not yet reaped
  std::unordered_map<std::uint64_t, std::shared_ptr<Job>> jobs_;  // being fed
  std::vector<std::shared_ptr<Job>> reaping_;                     // stdin closed
  bool draining_ = false;      // stop(): nothing more will be handed over
  timespec drain_deadline_{};  // CLOCK_MONOTONIC

  ExecHistory history_;
  std::vector<ExecRunning> running_locked() const;

  std::thread reaper_;
  Consumer consumer_;  // last: created once everything above is ready
};

}  // namespace capturefs::cli
