// Listener: the listening socket (server.hpp).
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "core/log.hpp"
#include "server/server.hpp"
#include "server/wire.hpp"

namespace capturefs::server {

// ============================================================== Listener

std::unique_ptr<Listener> Listener::open(const std::string& path_in, std::string* error) {
  auto fail = [&](std::string msg) -> std::unique_ptr<Listener> {
    *error = std::move(msg);
    return nullptr;
  };
  if (path_in.empty()) return fail("socket path is empty");
  std::string path = path_in;
  if (path[0] != '/') {
    char cwd[PATH_MAX];
    if (::getcwd(cwd, sizeof cwd) == nullptr) return fail("socket " + path_in + ": getcwd: " + errstr(errno));
    path = std::string(cwd) + "/" + path;
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path)
    return fail("socket " + path + ": path too long (" + std::to_string(path.size()) + " bytes; a Unix socket path has at most " +
                std::to_string(sizeof addr.sun_path - 1) + ")");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);

  struct stat st{};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return fail("socket " + path + ": exists and is not a socket (not replacing it)");
    // A socket file: is a daemon listening on it? (Non-blocking, so that a
    // live daemon with a full backlog cannot make us wait.)
    const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (probe < 0) return fail("socket: " + errstr(errno));
    const int rc = ::connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    const int err = rc == 0 ? 0 : errno;
    ::close(probe);
    if (rc == 0 || err == EAGAIN || err == EINPROGRESS)
      return fail("socket " + path + " is in use: another capturefs daemon is listening there");
    if (err != ECONNREFUSED) return fail("socket " + path + ": cannot check the existing socket: " + errstr(err));
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
      return fail("socket " + path + ": cannot remove the stale socket: " + errstr(errno));
    log::info("socket {}: replaced a stale socket (no daemon was listening)", path);
  } else if (errno != ENOENT) {
    return fail("socket " + path + ": " + errstr(errno));
  }

  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail("socket: " + errstr(errno));
  // Mode 0600 from the start: there is no moment when others may connect.
  const mode_t old = ::umask(0177);
  const int rc = ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int berr = errno;
  ::umask(old);
  if (rc != 0) {
    ::close(fd);
    if (berr == EADDRINUSE) return fail("socket " + path + " is in use (created meanwhile by another process)");
    return fail("socket " + path + ": bind: " + errstr(berr));
  }
  auto l = std::unique_ptr<Listener>(new Listener());
  l->fd_ = fd;
  l->path_ = path;
  if (::lstat(path.c_str(), &st) == 0) {
    l->dev_ = st.st_dev;
    l->ino_ = st.st_ino;
  }
  (void)::chmod(path.c_str(), 0600);
  if (::listen(fd, 128) != 0) {
    const int lerr = errno;
    l->close();
    return fail("socket " + path + ": listen: " + errstr(lerr));
  }
  return l;
}

Listener::~Listener() { close(); }

void Listener::close() {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  // Remove the path only if it is still our socket (not one a newer daemon
  // put there after ours was removed).
  struct stat st{};
  if (::lstat(path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev_ && st.st_ino == ino_)
    ::unlink(path_.c_str());
}

}  // namespace capturefs::server
