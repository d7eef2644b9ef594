#include "lib/preflight.hpp"

#include <dirent.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace capturefs::detail {

namespace {
// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      const std::string oct = s.substr(i + 1, 3);
      if (oct.size() == 3 && oct.find_first_not_of("01234567") == std::string::npos) {
        out += static_cast<char>(std::stoi(oct, nullptr, 8));
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

std::string absolute(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof cwd) == nullptr) return path;
  return std::string(cwd) + "/" + path;
}
}  // namespace

std::optional<std::string> mounted_fstype(const std::string& abs) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    // id parent maj:min root mountpoint options [optional...] - fstype source superopts
    std::istringstream ss(line);
    std::string id, parent, dev, root, mp;
    ss >> id >> parent >> dev >> root >> mp;
    if (unescape(mp) != abs) continue;
    std::string tok;
    while (ss >> tok && tok != "-") {
    }
    std::string fstype;
    ss >> fstype;
    return fstype;
  }
  return std::nullopt;
}

std::optional<std::string> check_mountpoint(const std::string& path, std::string* error) {
  if (path.empty()) {
    *error = "no mountpoint given";
    return std::nullopt;
  }
  std::string abs = absolute(path);
  struct stat st{};
  // statfs first: on a dead FUSE mount it fails with ENOTCONN, where stat
  // may still be answered from the kernel's attribute cache.
  struct statfs sfs{};
  const bool dead = ::statfs(abs.c_str(), &sfs) != 0 && errno == ENOTCONN;
  if (dead || stat(abs.c_str(), &st) != 0) {
    const int e = dead ? ENOTCONN : errno;
    if (e == ENOTCONN) {
      *error = path + " is a dead FUSE mount (transport endpoint not connected); "
               "clean it up with 'capturefs umount " + path + "'";
    } else if (e == ENOENT) {
      *error = "mountpoint " + path + " does not exist";
    } else {
      *error = "cannot use mountpoint " + path + ": " + std::strerror(e);
    }
    return std::nullopt;
  }
  if (!S_ISDIR(st.st_mode)) {
    *error = "mountpoint " + path + " is not a directory";
    return std::nullopt;
  }
  char real[PATH_MAX];
  if (realpath(abs.c_str(), real) != nullptr) abs = real;
  if (auto fs = mounted_fstype(abs)) {
    *error = "mountpoint " + path + " is already mounted (" + *fs + "); unmount it first";
    return std::nullopt;
  }
  if (DIR* d = opendir(abs.c_str())) {
    bool empty = true;
    while (dirent* e = readdir(d)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
        empty = false;
        break;
      }
    }
    closedir(d);
    if (!empty) {
      *error = "mountpoint " + path + " is not empty; capturefs mounts only on an empty directory";
      return std::nullopt;
    }
  } else {
    *error = "cannot read mountpoint " + path + ": " + std::strerror(errno);
    return std::nullopt;
  }
  if (access("/dev/fuse", F_OK) != 0) {
    *error = "/dev/fuse is missing: load the kernel module (modprobe fuse), or in a container "
             "pass the device (--device /dev/fuse)";
    return std::nullopt;
  }
  if (access("/dev/fuse", R_OK | W_OK) != 0) {
    *error = std::string("cannot open /dev/fuse: ") + std::strerror(errno);
    return std::nullopt;
  }
  return abs;
}

}  // namespace capturefs::detail
