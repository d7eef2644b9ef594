#include "fuse.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <sstream>

#include "proc_util.hpp"

namespace capturefs::test {

namespace {

bool in_path(const std::string& exe) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "/usr/bin:/bin");
  std::string d;
  while (std::getline(dirs, d, ':')) {
    if (!d.empty() && ::access((d + "/" + exe).c_str(), X_OK) == 0) return true;
  }
  return false;
}

}  // namespace

std::optional<std::string> dev_fuse_missing() {
  struct stat st{};
  if (::stat("/dev/fuse", &st) != 0) return "skipped: /dev/fuse is missing (" + errno_string(errno) + ")";
  return std::nullopt;
}

std::optional<std::string> fuse_unavailable_reason() {
  if (auto why = dev_fuse_missing()) return why;
  if (!in_path("fusermount3")) return std::string("skipped: fusermount3 is not installed (package fuse3)");
  return std::nullopt;
}

}  // namespace capturefs::test
