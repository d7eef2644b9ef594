#include "mount_fixture.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace capturefs::test {

namespace fs = std::filesystem;

namespace {

constexpr int kReadyFd = 5;  // not 3: catches a daemon that assumes the first free fd

std::string tail(const std::string& s, std::size_t n = 6000) {
  return s.size() > n ? "..." + s.substr(s.size() - n) : s;
}

}  // namespace

std::string capturefs_binary() {
  const char* b = std::getenv("CAPTUREFS");
  if (b == nullptr || *b == '\0') {
    throw std::runtime_error("CAPTUREFS is not set (run through `meson test`, which sets it)");
  }
  if (::access(b, X_OK) != 0) {
    throw std::runtime_error(std::string("CAPTUREFS=") + b + " is not executable: " + errno_string(errno));
  }
  return b;
}

std::string helper_script(std::string_view name) {
  const char* src = std::getenv("CAPTUREFS_SRC");
  if (src == nullptr || *src == '\0') throw std::runtime_error("CAPTUREFS_SRC is not set");
  return std::string(src) + "/tests/mount/" + std::string(name);
}

std::vector<std::string> python_helper(std::string_view name) {
  // -B: never write __pycache__ into the source tree.
  return {"python3", "-B", helper_script(name)};
}

// ---------------------------------------------------------------- Mount

Mount::Mount(std::vector<std::string> extra_args, bool with_socket) : root_("capturefs-mount") {
  mnt_ = root_.at("mnt");
  if (with_socket) {
    socket_ = root_.at("capturefs.sock");
    extra_args.insert(extra_args.begin(), {"--socket", socket_});
  }
  if (::mkdir(mnt_.c_str(), 0755) != 0) throw std::runtime_error("mkdir " + mnt_ + ": " + errno_string(errno));
  stderr_path_ = root_.at("daemon.stderr");

  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw std::runtime_error("pipe2: " + errno_string(errno));
  UniqueFd ready_r(p[0]);
  UniqueFd ready_w(p[1]);

  std::vector<std::string> argv = {capturefs_binary(), "mount", mnt_, "-f", "--ready-fd",
                                   std::to_string(kReadyFd)};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  // CAPTUREFS_DAEMON_WRAPPER="valgrind --error-exitcode=99 ..." runs the
  // daemon under a checker; its findings fail the test through the exit
  // status checked at unmount.
  if (const char* w = std::getenv("CAPTUREFS_DAEMON_WRAPPER"); w != nullptr && *w != '\0') {
    std::vector<std::string> words;
    std::istringstream in(w);
    for (std::string word; in >> word;) words.push_back(word);
    argv.insert(argv.begin(), words.begin(), words.end());
  }
  SpawnOptions o;
  o.stdout_path = root_.at("daemon.stdout");
  o.stderr_path = stderr_path_;
  o.fds = {{ready_w.get(), kReadyFd}};
  o.new_process_group = false;        // a ^C or a runner's kill of our group reaches it too
  o.parent_death_signal = SIGTERM;    // if this test process dies, the daemon unmounts
  daemon_ = Child::spawn(argv, o);
  ready_w.reset();  // only the daemon holds the write end now

  // Block until the daemon says the mount is live (or closes the pipe).
  std::string got;
  bool timed_out = false;
  const auto deadline = Clock::now() + 30s;
  while (got.find('\n') == std::string::npos) {
    auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd pf{ready_r.get(), POLLIN, 0};
    int r = ::poll(&pf, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) break;
    if (r == 0) continue;
    char buf[64];
    ssize_t n = ::read(ready_r.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF: the daemon gave up
    got.append(buf, static_cast<std::size_t>(n));
  }
  if (got == "ready\n") {
    ready_r_ = std::move(ready_r);
    return;
  }

  std::string why = timed_out  ? "no answer on --ready-fd within 30 s"
                    : got.empty() ? "--ready-fd closed without \"ready\""
                                  : "unexpected text on --ready-fd: \"" + got + "\"";
  auto st = daemon_.wait_for(10s);
  if (!st) daemon_.kill_and_reap();
  if (is_mountpoint(mnt_)) (void)run({"fusermount3", "-u", "-z", mnt_}, 20s);
  throw std::runtime_error("capturefs mount failed: " + why + "; daemon " +
                           status_string(daemon_.status().value_or(-1)) + "; command: " +
                           daemon_.describe() + "\ndaemon stderr:\n" + tail(read_file(stderr_path_)));
}

Mount::~Mount() {
  if (daemon_.exited()) {
    if (!status_seen_ && !exited_with(*daemon_.status(), 0)) {
      ADD_FAILURE() << "the capturefs daemon died during the test: " << status_string(*daemon_.status())
                    << "\ndaemon stderr:\n" << tail(daemon_stderr());
    }
  } else {
    std::string why;
    if (!unmount(&why)) ADD_FAILURE() << "unmounting " << mnt_ << " failed: " << why;
    auto st = daemon_.wait_for(20s);
    if (!st) {
      ADD_FAILURE() << "the daemon did not exit within 20 s of fusermount3 -u; stderr:\n"
                    << tail(daemon_stderr());
      daemon_.signal(SIGTERM);
      if (!daemon_.wait_for(5s)) daemon_.kill_and_reap();
    } else if (!exited_with(*st, 0)) {
      ADD_FAILURE() << "the daemon " << status_string(*st) << " after fusermount3 -u (expected exit 0)"
                    << "\ndaemon stderr:\n" << tail(daemon_stderr());
    }
  }
  if (!socket_.empty() && daemon_.exited() && exited_with(*daemon_.status(), 0) && stat_err(socket_) != ENOENT)
    ADD_FAILURE() << "the daemon exited but left its socket " << socket_ << " behind";
  if (is_mountpoint(mnt_)) {
    // The daemon is gone but the mount stayed (crash, kill): detach it.
    ADD_FAILURE() << mnt_ << " was still mounted after the daemon exited";
    (void)run({"fusermount3", "-u", "-z", mnt_}, 20s);
  }
}

std::optional<int> Mount::wait_exit(Millis timeout) {
  auto st = daemon_.wait_for(timeout);
  if (st) status_seen_ = true;
  return st;
}

bool Mount::ready_fd_closed(Millis timeout) {
  if (!ready_r_) return false;
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd pf{ready_r_.get(), POLLIN, 0};
    int r = ::poll(&pf, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    char c;
    ssize_t n = ::read(ready_r_.get(), &c, 1);
    if (n == 0) return true;
    if (n > 0) return false;  // more text after "ready\n"
  }
}

std::string Mount::daemon_stderr() const { return read_file(stderr_path_); }

bool Mount::unmount(std::string* why) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    if (!is_mountpoint(mnt_)) return true;
    RunResult r = run({"fusermount3", "-u", mnt_}, 20s);
    if (r.ok()) return true;
    if (why) *why = r.describe();
    if (r.err.find("busy") == std::string::npos) return false;
    std::this_thread::sleep_for(100ms);  // busy: a closing file may still be releasing
  }
  return false;
}

int stat_err(const std::string& path, struct ::stat* st) {
  struct ::stat tmp{};
  return ::stat(path.c_str(), st ? st : &tmp) == 0 ? 0 : errno;
}

int stat_err_elsewhere(const std::string& path) {
  const char* p = path.c_str();
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    struct ::stat st{};
    _exit(::stat(p, &st) == 0 ? 0 : (errno & 0x7f));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

UniqueFd open_fd(const std::string& path, int flags, mode_t mode) {
  return UniqueFd(::open(path.c_str(), flags | O_CLOEXEC, mode));
}

std::vector<std::string> list_dir(const std::string& path, int* err) {
  std::vector<std::string> names;
  if (err) *err = 0;
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) {
    if (err) *err = errno;
    return names;
  }
  errno = 0;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  if (errno != 0 && err) *err = errno;
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

std::string cat(const std::string& path, Millis timeout) {
  RunResult r = run({"cat", path}, timeout);
  if (!r.ok()) ADD_FAILURE() << "cat " << path << ": " << r.describe();
  return r.out;
}

void MountTest::SetUp() {
  CAPTUREFS_REQUIRE_FUSE();
  m_ = std::make_unique<Mount>(mount_args(), with_socket());
}

}  // namespace capturefs::test
