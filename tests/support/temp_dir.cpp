#include "temp_dir.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "proc_util.hpp"

namespace capturefs::test {

TempDir::TempDir(std::string_view prefix) {
  std::string tmpl = "/tmp/" + std::string(prefix) + ".XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    throw std::runtime_error("mkdtemp " + tmpl + ": " + errno_string(errno));
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  // Never recurse into a live mount: that would empty it, or hang on a
  // broken one.
  std::ifstream mounts("/proc/self/mounts");
  std::string line;
  while (std::getline(mounts, line)) {
    if (line.find(" " + path_ + "/") != std::string::npos || line.find(" " + path_ + " ") != std::string::npos) {
      ADD_FAILURE() << "not removing " << path_ << ": still mounted below it: " << line;
      return;
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  if (ec) ADD_FAILURE() << "removing " << path_ << ": " << ec.message();
}

}  // namespace capturefs::test
