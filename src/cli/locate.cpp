#include "cli/locate.hpp"

#include <sys/stat.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cctype>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace capturefs::cli {

namespace {

std::optional<std::string> socket_xattr(const std::string& dir) {
  char buf[PATH_MAX];
  const ssize_t n = ::getxattr(dir.c_str(), kSocketXattr, buf, sizeof buf);
  if (n <= 0) return std::nullopt;
  return std::string(buf, static_cast<std::size_t>(n));
}

std::string parent_of(const std::string& p) {
  const std::size_t slash = p.find_last_of('/');
  if (slash == std::string::npos || slash == 0) return "/";
  return p.substr(0, slash);
}

// Makes `dir` (and its parent if needed) a directory of ours with mode 0700.
bool private_dir(const std::string& dir, std::string* error) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    *error = dir + ": " + std::strerror(errno);
    return false;
  }
  struct stat st{};
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::geteuid()) {
    *error = dir + ": not a directory of this user";
    return false;
  }
  if ((st.st_mode & 077) != 0 && ::chmod(dir.c_str(), 0700) != 0) {
    *error = dir + ": " + std::strerror(errno);
    return false;
  }
  return true;
}

}  // namespace

std::optional<InMount> locate(const std::string& path) {
  std::string p = path.empty() ? "." : path;
  char real[PATH_MAX];
  // The nearest existing ancestor, made absolute (a stream to wait for
  // need not exist yet).
  std::string tail;
  while (::realpath(p.c_str(), real) == nullptr) {
    const std::size_t slash = p.find_last_of('/');
    const std::string name = slash == std::string::npos ? p : p.substr(slash + 1);
    tail = tail.empty() ? name : name + "/" + tail;
    if (slash == std::string::npos) {
      p = ".";
    } else {
      p = slash == 0 ? "/" : p.substr(0, slash);
    }
    if (p == "/" && ::realpath(p.c_str(), real) == nullptr) return std::nullopt;
  }
  std::string at = real;
  std::string rel = tail;
  struct stat st{};
  if (::stat(at.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
    // A stream: its directory is where the root is looked for.
    const std::size_t slash = at.find_last_of('/');
    const std::string name = at.substr(slash + 1);
    rel = rel.empty() ? name : name + "/" + rel;
    at = parent_of(at);
  }
  for (;;) {
    if (auto s = socket_xattr(at)) return InMount{at, *s, rel};
    if (at == "/") return std::nullopt;
    const std::size_t slash = at.find_last_of('/');
    const std::string name = at.substr(slash + 1);
    rel = rel.empty() ? name : name + "/" + rel;
    at = parent_of(at);
  }
}

std::string default_socket(const std::string& mountpoint, std::string* error) {
  std::string dir;
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg != nullptr && *xdg == '/') {
    dir = std::string(xdg) + "/capturefs";
  } else if (::geteuid() == 0) {
    dir = "/run/capturefs";
  } else {
    dir = "/tmp/capturefs-" + std::to_string(::geteuid());
  }
  if (!private_dir(dir, error)) return {};
  // FNV-1a of the whole path: unique per mountpoint, short enough for
  // sun_path whatever the mountpoint's length.
  std::uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : mountpoint) h = (h ^ c) * 1099511628211ULL;
  std::string base = mountpoint.substr(mountpoint.find_last_of('/') + 1);
  for (char& c : base)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) c = '_';
  if (base.size() > 24) base.resize(24);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  std::string path = dir + "/" + (base.empty() ? "root" : base) + "-" + std::string(hex, 8) + ".sock";
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    *error = path + ": too long for a socket path";
    return {};
  }
  return path;
}

}  // namespace capturefs::cli
