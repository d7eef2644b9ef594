// Helpers for the mount tests: running real processes, waiting for them
// with a deadline, and observing whether a process sits blocked inside a
// read or write on the mount.
//
// Rules these helpers enforce:
//  * every process started is reaped (Child's destructor SIGKILLs its
//    process group and waits if the test did not);
//  * a timeout is only a failure guard: waits finish as soon as the real
//    condition holds (pidfd readiness, /proc state), never after a sleep;
//  * children inherit no descriptor of the test process except 0-2 and
//    the ones passed explicitly, so a writer fd held by a test never leaks
//    into a reader child (which would keep the stream from ever ending).
#pragma once

#include <sys/types.h>

#include <csignal>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace capturefs::test {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

/// \brief An owned file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  explicit operator bool() const { return fd_ >= 0; }
  /// Closes; returns close()'s errno (0 on success or when empty).
  int reset(int fd = -1);

 private:
  int fd_ = -1;
};

struct SpawnOptions {
  /// Give the parent a pipe to the child's stdin (else stdin is /dev/null,
  /// or stdin_path when set).
  bool pipe_stdin = false;
  std::string stdin_path;
  /// Or this descriptor of the parent (e.g. a memory file) as stdin.
  int stdin_fd = -1;
  /// Give the parent a pipe from the child's stdout (else stdout is
  /// captured in an anonymous memory file, see Child::out()).
  bool pipe_stdout = false;
  /// Redirect stdout / stderr to these files (truncated) instead.
  std::string stdout_path;
  std::string stderr_path;
  /// Put the child in its own process group (default), so that killing it
  /// also kills whatever it started.
  bool new_process_group = true;
  /// Extra descriptors: {fd in the parent, fd number in the child}.
  std::vector<std::pair<int, int>> fds;
  /// Extra environment entries "K=V" (added to the test's environment).
  std::vector<std::string> env;
  /// Signal the child gets when the test process dies (0: none).
  int parent_death_signal = SIGKILL;
};

/// \brief A started process. Move-only; reaped at the latest by the
/// destructor (which SIGKILLs it, and its group, if still running).
class Child {
 public:
  static Child spawn(const std::vector<std::string>& argv, SpawnOptions opts = {});

  Child() = default;
  Child(Child&& o) noexcept;
  Child& operator=(Child&& o) noexcept;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child();

  pid_t pid() const { return pid_; }
  const std::string& describe() const { return desc_; }
  /// Has the process exited? (Reaps it if so.)
  bool exited();
  /// Waits for the exit; the raw wait status, or nullopt on timeout.
  std::optional<int> wait_for(Millis timeout);
  /// Waits; on timeout records a test failure, kills the group and reaps.
  /// Returns the raw wait status (a SIGKILL status after a timeout).
  int wait_or_kill(Millis timeout);
  /// The raw wait status once exited.
  std::optional<int> status() const { return status_; }
  /// Sends sig to the process (not its group).
  void signal(int sig);
  /// Kills the whole group with SIGKILL and reaps.
  void kill_and_reap();

  int stdin_fd() const { return stdin_.get(); }
  void close_stdin() { stdin_.reset(); }
  int stdout_fd() const { return stdout_pipe_.get(); }
  /// Captured stdout / stderr (memory files): everything written so far.
  std::string out() const;
  std::string err() const;

 private:
  void reap_if_exited(bool block);

  pid_t pid_ = -1;
  bool own_group_ = false;
  std::optional<int> status_;
  UniqueFd pidfd_;
  UniqueFd stdin_;
  UniqueFd stdout_pipe_;
  UniqueFd out_mem_;
  UniqueFd err_mem_;
  std::string desc_;
};

struct RunResult {
  int status = -1;  ///< raw wait status
  std::string out;
  std::string err;
  Millis elapsed{0};
  bool timed_out = false;
  bool ok() const;  ///< exited normally with code 0
  int code() const; ///< exit code, or -1 if killed by a signal
  std::string describe() const;
};

/// \brief Runs a process to completion (failure guard: timeout).
RunResult run(const std::vector<std::string>& argv, Millis timeout = 60s, SpawnOptions opts = {});
/// \brief Runs `/bin/sh -c cmd`.
RunResult sh(const std::string& cmd, Millis timeout = 60s, SpawnOptions opts = {});

/// \brief "exited 0", "killed by SIGINT", ...
std::string status_string(int status);
bool exited_with(int status, int code);
bool killed_by(int status, int sig);

/// \brief Polls cond() (a real condition) until true or the deadline.
bool eventually(const std::function<bool()>& cond, Millis timeout, Millis interval = 2ms);

/// \brief Which syscall a process is blocked in.
enum class Io { Read, Write };

struct BlockState {
  bool blocked = false;
  std::string observation;  ///< what /proc said last (for messages)
};
/// \brief One look at /proc/PID: sleeping (state S or D) inside a read-like
/// (or write-like) syscall whose descriptor names a file under `prefix`.
BlockState blocked_in(pid_t pid, Io io, const std::string& prefix);
/// \brief Waits until blocked_in() holds, up to `timeout`.
BlockState wait_blocked_in(pid_t pid, Io io, const std::string& prefix, Millis timeout = 20s);

/// \brief Waits until a writer is *held*: blocked in a write on the mount
/// while the stream at `stream_path` keeps the same st_size, continuously
/// for `window`. A write that merely takes a moment to be answered does not
/// count; one the daemon parked because the buffer is full does.
BlockState wait_writer_held(pid_t pid, const std::string& stream_path, const std::string& prefix,
                            Millis timeout = 30s, Millis window = 100ms);

/// \brief Runs fn in a forked child and waits up to `timeout`: a guard for
/// calls that must not block (lookups, stat, readdir while writers wait).
/// fn returns "" on success or an error message. Returns "" on success,
/// else the message, or a note that the call blocked past the deadline.
std::string run_guarded(const std::function<std::string()>& fn, Millis timeout = 10s);

// ---- small file helpers (test side, real files) ----
std::string errno_string(int err);
/// Writes all of data to fd; returns "" or an error message.
std::string write_all(int fd, std::string_view data);
/// Reads fd to EOF; sets *err on error.
std::string read_to_eof(int fd, int* err = nullptr);
/// Reads up to n bytes from a pipe fd, waiting at most `timeout` overall.
std::string read_exactly(int fd, std::size_t n, Millis timeout);
std::string read_file(const std::string& path);
void write_file(const std::string& path, std::string_view data);
/// Creates a file of `size` random bytes.
void make_random_file(const std::string& path, std::uint64_t size);
/// sha256 of a file by `sha256sum` (a separate process). Empty on failure.
std::string sha256_of(const std::string& path, Millis timeout = 120s);
/// sha256 of a string, via `sha256sum` reading stdin from a memory file.
std::string sha256_of_data(std::string_view data);
/// A deterministic payload: a header line naming `tag`, then filler
/// derived from tag up to `size` bytes.
std::string payload(std::string_view tag, std::size_t size);

/// \brief Is `path` a mountpoint in /proc/self/mounts? Fills fstype.
bool is_mountpoint(const std::string& path, std::string* fstype = nullptr);

/// \brief Reads "VmHWM"/"VmRSS" (bytes) from /proc/PID/status; 0 if gone.
std::uint64_t proc_status_bytes(pid_t pid, std::string_view key);

/// \brief "12.3 MiB"
std::string mib(std::uint64_t bytes);

}  // namespace capturefs::test
