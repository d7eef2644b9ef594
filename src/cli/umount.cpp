// `capturefs umount`: unmounts, then waits for the daemon to deliver what
// it holds (showing what is left) and names what it discarded.
#include <poll.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cli/clients.hpp"
#include "cli/exec.hpp"
#include "cli/locate.hpp"
#include "cli/umount.hpp"
#include "core/log.hpp"
#include "core/size.hpp"
#include "lib/preflight.hpp"

extern char** environ;

namespace capturefs::cli {

namespace {

// A FUSE mount whose daemon is gone (killed, crashed): statfs answers
// ENOTCONN (stat may not: the root's attributes are cached for a second).
// Asked in a child with a deadline, so that a live but hung daemon cannot
// hang `umount` here.
bool is_dead_fuse_mount(const std::string& abs) {
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    struct statfs st{};
    _exit(::statfs(abs.c_str(), &st) != 0 && errno == ENOTCONN ? 0 : 1);
  }
  for (int i = 0; i < 200; ++i) {  // 2 s
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (r < 0 && errno != EINTR) return false;
    usleep(10000);
  }
  kill(pid, SIGKILL);
  while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
  return false;
}

// The daemon serving `abs` (the root's user.capturefs.pid), as a pidfd to
// wait on; -1 if it cannot be told (an older daemon, not capturefs).
int daemon_pidfd(const std::string& abs, pid_t* pid) {
  char buf[32] = {};
  const ssize_t n = ::getxattr(abs.c_str(), "user.capturefs.pid", buf, sizeof buf - 1);
  if (n <= 0) return -1;
  *pid = static_cast<pid_t>(std::strtol(buf, nullptr, 10));
  if (*pid <= 0) return -1;
  return static_cast<int>(::syscall(SYS_pidfd_open, *pid, 0));
}

// Waits for the daemon to exit once unmounted: it delivers what push
// consumers have or will take first (see run_mount).
// Progress (streams and bytes left, from the daemon's socket) once a
// second, on one line when stderr is a terminal.
void wait_for_daemon(int pidfd, pid_t pid, const std::string& mountpoint, const std::string& sock) {
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  bool said = false;
  for (;;) {
    pollfd p{pidfd, POLLIN, 0};
    const int r = ::poll(&p, 1, 1000);
    if (r > 0 || (r < 0 && errno != EINTR)) break;
    if (!said) {
      std::fprintf(stderr,
                   "capturefs umount: %s is unmounted; its daemon (pid %d) delivers what its consumers "
                   "hold (kill -TERM %d cuts it short; --no-wait does not wait)\n",
                   mountpoint.c_str(), static_cast<int>(pid), static_cast<int>(pid));
      said = true;
    }
    if (sock.empty()) continue;
    if (const auto left = pending_deliveries(sock)) {
      std::fprintf(stderr, "%scapturefs umount: %zu stream%s (%s) left to deliver, %zu command%s running%s",
                   tty ? "\r" : "", left->streams, left->streams == 1 ? "" : "s",
                   core::format_size(left->bytes).c_str(), left->commands, left->commands == 1 ? "" : "s",
                   tty ? "   " : "\n");
    }
  }
  if (said && tty) std::fputc('\n', stderr);
  ::close(pidfd);
}

}  // namespace

int run_umount(const std::string& mountpoint, bool lazy, bool no_wait) {
  std::string abs = mountpoint;
  if (char real[PATH_MAX]; realpath(mountpoint.c_str(), real) != nullptr) abs = real;
  const auto fs = detail::mounted_fstype(abs);
  if (!fs) {
    log::error("{} is not mounted", mountpoint);
    return 1;
  }
  // A dead mount serves nothing, and descriptors still open on it (they
  // only get ENOTCONN) would make a plain unmount fail with EBUSY: detach it.
  if (!lazy && fs->rfind("fuse", 0) == 0 && is_dead_fuse_mount(abs)) {
    log::warn("{}: its daemon is gone (transport endpoint is not connected); detaching the dead mount", mountpoint);
    lazy = true;
  }
  // fusermount3 works for root and for the user who mounted, and cleans up
  // dead mounts (ENOTCONN) too.
  pid_t daemon = 0;
  const int pidfd = no_wait ? -1 : daemon_pidfd(abs, &daemon);
  std::string sock;  // for progress, if the daemon serves one
  if (pidfd >= 0) {
    if (const auto where = locate(abs)) sock = where->socket;
  }
  // Observed from before the unmount: the streams the daemon discards.
  std::unique_ptr<DiscardWatch> discards;
  if (!sock.empty()) discards = std::make_unique<DiscardWatch>(sock);
  auto done = [&] {
    if (pidfd < 0) return 0;
    wait_for_daemon(pidfd, daemon, mountpoint, sock);
    if (!discards) return 0;
    const auto gone = discards->finish();
    if (gone.empty()) return 0;
    std::uint64_t total = 0;
    std::string names;
    for (std::size_t i = 0; i < gone.size(); ++i) {
      total += gone[i].second;
      if (i < 20) names += (i == 0 ? "" : ", ") + log_quote(gone[i].first);
    }
    if (gone.size() > 20) names += fmt::format(" and {} more", gone.size() - 20);
    std::fprintf(stderr, "capturefs umount: %zu unread stream%s (%s) discarded: %s\n", gone.size(),
                 gone.size() == 1 ? "" : "s", core::format_size(total).c_str(), names.c_str());
    return 0;
  };
  std::vector<std::string> args = {"fusermount3", lazy ? "-uz" : "-u", "--", abs};
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, "fusermount3", nullptr, nullptr, argv.data(), environ);
  if (rc == 0) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return done();
  }
  // Without fusermount3 (or if it failed), root can still detach the mount.
  if (geteuid() == 0 && umount2(abs.c_str(), lazy ? MNT_DETACH : 0) == 0) return done();
  if (pidfd >= 0) ::close(pidfd);
  log::error("cannot unmount {}: {}", mountpoint,
             rc != 0 ? "fusermount3 not found" : "see the message above (busy? try --lazy)");
  return 1;
}

}  // namespace capturefs::cli
