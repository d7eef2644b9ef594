// RAII mount of capturefs for the integration tests.
//
//   Mount m;                       // temp dir, daemon started, mount live
//   m.at("x")                      // a path inside the mount
//   m.scratch("src.bin")           // a path next to it, on the real fs
//
// The constructor spawns `$CAPTUREFS mount DIR -f --ready-fd N [extra]`
// and blocks on the ready pipe until the daemon writes "ready\n". EOF
// instead means the mount failed: the constructor throws with the daemon's
// stderr (gtest reports it as the test's failure). The destructor unmounts
// with fusermount3 -u (retrying while busy), reaps the daemon (a non-zero
// exit is a test failure) and removes the temp dir.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fuse.hpp"
#include "proc_util.hpp"
#include "temp_dir.hpp"

namespace capturefs::test {

/// \brief True when this build is instrumented (ASan/TSan/...): the
/// daemon, built the same way, then has inflated memory use (shadow
/// memory, quarantine), so RSS bounds are printed but not enforced.
constexpr bool kSanitizedBuild =
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
    true;
#else
    false;
#endif
#else
    false;
#endif

/// \brief $CAPTUREFS (throws if unset).
std::string capturefs_binary();
/// \brief $CAPTUREFS_SRC/tests/mount/NAME: a helper script.
std::string helper_script(std::string_view name);
/// \brief {"python3", "-B", helper_script(name)}.
std::vector<std::string> python_helper(std::string_view name);

class Mount {
 public:
  /// `with_socket`: also pass `--socket <root>/capturefs.sock` (socket
  /// delivery, docs/protocol.md); the destructor then checks that the
  /// daemon removed the socket when it exited.
  explicit Mount(std::vector<std::string> extra_args = {}, bool with_socket = false);
  ~Mount();
  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;

  /// The mountpoint.
  const std::string& path() const { return mnt_; }
  /// The daemon's socket ("" unless constructed with_socket).
  const std::string& socket_path() const { return socket_; }
  /// path() + "/" + rel
  std::string at(std::string_view rel) const { return mnt_ + "/" + std::string(rel); }
  /// The temp dir holding the mountpoint; room for scratch files.
  const std::string& root() const { return root_.path(); }
  std::string scratch(std::string_view name) const { return root_.at(name); }

  pid_t pid() const { return daemon_.pid(); }
  /// Waits for the daemon to exit: its raw wait status, or nullopt on timeout.
  std::optional<int> wait_exit(Millis timeout);
  bool daemon_exited() { return daemon_.exited(); }
  /// Everything the daemon wrote to stderr so far.
  std::string daemon_stderr() const;
  /// Peak (VmHWM) and current (VmRSS) resident memory of the daemon, bytes.
  std::uint64_t peak_rss() const { return proc_status_bytes(pid(), "VmHWM"); }
  std::uint64_t current_rss() const { return proc_status_bytes(pid(), "VmRSS"); }
  bool is_mounted() const { return is_mountpoint(mnt_); }
  /// fusermount3 -u, retried while the mount is busy. True on success.
  bool unmount(std::string* why = nullptr);
  /// After "ready\n", the daemon must close the ready fd: true once the
  /// pipe reads EOF (false if more text came or nothing within timeout).
  bool ready_fd_closed(Millis timeout);

 private:
  TempDir root_;
  std::string mnt_;
  std::string socket_;
  std::string stderr_path_;
  Child daemon_;
  UniqueFd ready_r_;
  bool status_seen_ = false;  // the test collected the exit status itself
};

// ---- small file-system helpers for the tests ----

/// stat(2): 0 or the errno.
int stat_err(const std::string& path, struct ::stat* st = nullptr);
/// stat(2) from a forked child: what any process but this one sees (the
/// name of a delivered stream stays visible to the process that created
/// it, until it exits).
int stat_err_elsewhere(const std::string& path);
/// open(2) with O_CLOEXEC added (so children never inherit it); on
/// failure the UniqueFd is empty and errno is set.
UniqueFd open_fd(const std::string& path, int flags, mode_t mode = 0644);
/// Names in a directory ("." and ".." left out); *err gets the errno.
std::vector<std::string> list_dir(const std::string& path, int* err = nullptr);
/// The whole content of a stream, read by a `cat` process (a guarded
/// read: a hang fails the test instead of hanging it). Records a failure
/// when cat fails.
std::string cat(const std::string& path, Millis timeout = 60s);

/// \brief A test with a fresh capturefs mount (override mount_args() for
/// options such as memory limits).
class MountTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override { m_.reset(); }
  virtual std::vector<std::string> mount_args() const { return {}; }
  /// Override to return true for a mount with `--socket` (mnt().socket_path()).
  virtual bool with_socket() const { return false; }
  Mount& mnt() { return *m_; }
  /// Shorthand for mnt().at(rel).
  std::string at(std::string_view rel) { return m_->at(rel); }

  std::unique_ptr<Mount> m_;
};

}  // namespace capturefs::test
