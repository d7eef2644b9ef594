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
//   on_open   pipe + posix_spawn("/bin/sh", "-c", CMD): stdin = the pipe's
//             read end, stdout/stderr = the daemon's, every other descriptor
//             closed, signal dispositions and mask reset to default, the
//             environment = the daemon's + CAPTUREFS_PATH, CAPTUREFS_MOUNT,
//             CAPTUREFS_WRITER_PID. The path is never pasted into CMD.
//   on_data   writes the chunk fully into the pipe (blocking: that is the
//             writers' backpressure). EPIPE (the command exited or closed its
//             stdin) -> AbortStream: the writers get EPIPE from then on.
//   on_close  closes the pipe (the command sees EOF), waits for the command
//             to exit, logs the status and records it in history().
//
// At most `jobs` commands run at once: the consumer holds at most `jobs`
// streams (ConsumeOptions::max_active) and has `jobs` delivery threads, and
// a stream's slot is only given back once its command has been reaped.
//
// THREADING
// Callbacks run on the consumer's delivery threads; history() and running()
// may be called from any thread. SIGPIPE is ignored process-wide (once the
// runner exists) so that a closed pipe is an EPIPE, not the daemon's death;
// SIGCHLD is reset to its default so that waitpid works.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
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

/// \brief One command that has ended (or could not start).
struct ExecExit {
  std::uint64_t stream_id = 0;
  std::string path;              ///< CAPTUREFS_PATH it was started with
  pid_t pid = 0;                 ///< 0: could not be started
  int status = -1;               ///< raw wait status; -1: not started / not waited for
  std::uint64_t bytes = 0;       ///< bytes written to its stdin
  bool input_complete = false;   ///< it got the whole stream, then EOF
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
};

/// \brief A bounded, thread-safe record of the most recent exits (what a
/// `capturefs status` command will report).
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

  /// \brief Stops: deliveries in progress are cut short (the commands get
  /// EOF early, the streams' writers EPIPE), the consumer is closed, then the
  /// commands still running are waited for, up to stop_grace. Call it after
  /// the mount stopped serving (ideally after Mount::unmount()) and before
  /// the Mount is destroyed. Idempotent; not from a callback.
  void stop();

  unsigned jobs() const { return max_jobs_; }
  const ExecHistory& history() const { return history_; }
  std::vector<ExecRunning> running() const;

 private:
  struct Job;
  void on_open(const StreamOpen& o);
  void on_data(const Chunk& c);
  void on_close(const StreamClose& e);
  std::shared_ptr<Job> find(std::uint64_t id) const;
  /// Waits for the job's command; false if stop() interrupted the wait.
  bool wait_exit(Job& j, bool until_stop, const timespec* deadline);
  void finish(const std::shared_ptr<Job>& j);

  const ExecOptions opt_;
  const unsigned max_jobs_;
  const std::string mountpoint_;
  std::vector<std::string> base_env_;  // the daemon's, without our variables
  int stop_fd_ = -1;                   // eventfd; readable once stopping
  std::atomic<bool> stopping_{false};
  bool stopped_ = false;  // guarded by stop_mu_
  std::mutex stop_mu_;

  mutable std::mutex mu_;  // guards jobs_; leaf
  std::unordered_map<std::uint64_t, std::shared_ptr<Job>> jobs_;
  ExecHistory history_;
  Consumer consumer_;  // last: created once everything above is ready
};

}  // namespace capturefs::cli
