// A private temp dir for a test, removed with everything in it at the end.
#pragma once

#include <string>
#include <string_view>

namespace capturefs::test {

/// \brief A private temp dir (mkdtemp under /tmp, named PREFIX.XXXXXX),
/// removed recursively on destruction unless something is still mounted
/// below it (that would empty a live mount, or hang on a broken one): then
/// it is left, and the test fails.
class TempDir {
 public:
  explicit TempDir(std::string_view prefix = "capturefs-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string at(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

}  // namespace capturefs::test
