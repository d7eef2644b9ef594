// The library as a user gets it: `meson install` into a staging dir, build
// src/examples/linecount.cpp there with g++ and pkg-config (nothing from
// the source or build tree), run it on a real mount.
#include <signal.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "lib_support.hpp"

namespace capturefs::test {
namespace {

namespace fs = std::filesystem;

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::vector<std::string> split_words(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  std::string w;
  while (in >> w) out.push_back(w);
  return out;
}

// The summary line of `path` in linecount's output: {lines, bytes}.
std::optional<std::pair<std::uint64_t, std::uint64_t>> summary_of(const std::string& out, const std::string& path) {
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream l(line);
    std::string p;
    std::uint64_t lines = 0, bytes = 0;
    if (l >> p >> lines >> bytes && p == path) {
      std::string rest;
      if (l >> rest) return std::nullopt;  // "(incomplete)"
      return std::make_pair(lines, bytes);
    }
  }
  return std::nullopt;
}

TEST(Install, LinecountBuildsAgainstTheInstalledLibraryAndRuns) {
  CAPTUREFS_REQUIRE_DEV_FUSE();
  const std::string build = env_or_empty("CAPTUREFS_BUILD");
  const std::string src = env_or_empty("CAPTUREFS_SRC");
  ASSERT_FALSE(build.empty() || src.empty()) << "run through `meson test` (CAPTUREFS_BUILD, CAPTUREFS_SRC)";
  TempDir dest("capturefs-install");

  // 1. Install.
  const RunResult inst = run({"meson", "install", "-C", build, "--destdir", dest.path(), "--no-rebuild", "--quiet"}, 120s);
  ASSERT_TRUE(inst.ok()) << inst.describe();
  std::string pcdir;
  for (const auto& e : fs::recursive_directory_iterator(dest.path()))
    if (e.path().filename() == "capturefs.pc") pcdir = e.path().parent_path().string();
  ASSERT_FALSE(pcdir.empty()) << "no capturefs.pc installed under " << dest.path();
  bool header = false;
  for (const auto& e : fs::recursive_directory_iterator(dest.path()))
    if (e.path().filename() == "capturefs.hpp" && e.path().parent_path().filename() == "capturefs") header = true;
  EXPECT_TRUE(header) << "capturefs/capturefs.hpp is not installed";

  // 2. pkg-config, pointed into the staging dir. (The .pc has absolute
  // /usr/local paths: the sysroot prefixes them.)
  SpawnOptions pc_env;
  pc_env.env = {"PKG_CONFIG_SYSROOT_DIR=" + dest.path(), "PKG_CONFIG_PATH=" + pcdir};
  const RunResult flags = run({"pkg-config", "--cflags", "--libs", "capturefs"}, 30s, pc_env);
  ASSERT_TRUE(flags.ok()) << flags.describe();
  const RunResult libdir_r = run({"pkg-config", "--variable=libdir", "capturefs"}, 30s, pc_env);
  ASSERT_TRUE(libdir_r.ok()) << libdir_r.describe();
  std::string libdir = split_words(libdir_r.out).at(0);
  if (libdir.rfind(dest.path(), 0) != 0) libdir = dest.path() + libdir;  // pkgconf adds the sysroot itself
  ASSERT_EQ(stat_err(libdir + "/libcapturefs.so"), 0) << libdir;
  for (const auto& w : split_words(flags.out)) {
    if (w.rfind("-I", 0) == 0 || w.rfind("-L", 0) == 0) {
      EXPECT_EQ(w.find(src), std::string::npos) << w << " points into the source tree";
      EXPECT_EQ(w.find(build), std::string::npos) << w << " points into the build tree";
    }
  }
  EXPECT_NE(flags.out.find("-I" + dest.path()), std::string::npos) << flags.out;
  EXPECT_NE(flags.out.find("-lcapturefs"), std::string::npos) << flags.out;

  // 3. Build the example, as a user would.
  const std::string exe = dest.at("linecount");
  std::vector<std::string> gxx = {"g++", "-std=c++20", "-O1", src + "/src/examples/linecount.cpp", "-o", exe};
  const std::string sanitize = env_or_empty("CAPTUREFS_SANITIZE");
  if (!sanitize.empty() && sanitize != "none") gxx.push_back("-fsanitize=" + sanitize);  // the library is instrumented
  for (auto& w : split_words(flags.out)) gxx.push_back(w);
  const RunResult cc = run(gxx, 120s);
  ASSERT_TRUE(cc.ok()) << cc.describe();

  // 4. Run it on a real mount, with the installed library.
  const std::string mnt = dest.at("mnt");
  ASSERT_EQ(::mkdir(mnt.c_str(), 0755), 0);
  // A failed assertion below kills linecount (Child's destructor), which
  // would leave its mount behind, dead, and the temp dir with it: detach
  // it first. Declared before `lc`, so it runs after lc is gone.
  struct DetachIfMounted {
    std::string mp;
    ~DetachIfMounted() {
      try {
        if (is_mountpoint(mp)) (void)run({"fusermount3", "-uz", "--", mp}, 10s);
      } catch (...) {
      }
    }
  } detach{mnt};
  SpawnOptions run_env;
  run_env.env = {"LD_LIBRARY_PATH=" + libdir};
  Child lc = Child::spawn({exe, mnt}, run_env);
  ASSERT_TRUE(eventually([&] { return is_mountpoint(mnt) || lc.exited(); }, 20s)) << "not mounted: " << lc.err();
  ASSERT_TRUE(is_mountpoint(mnt)) << "linecount exited: " << lc.err();
  const std::string maps = read_file("/proc/" + std::to_string(lc.pid()) + "/maps");
  EXPECT_NE(maps.find(libdir + "/libcapturefs.so"), std::string::npos)
      << "linecount does not use the installed library";

  std::string b;
  for (int i = 1; i <= 1000; ++i) b += std::to_string(i) + "\n";
  RunResult w = sh("printf '1\\n2\\n3\\n' > " + mnt + "/a.txt && mkdir " + mnt + "/sub && seq 1 1000 > " + mnt +
                   "/sub/b.txt", 30s);
  ASSERT_TRUE(w.ok()) << w.describe();
  // Taken and counted completely: the names are gone.
  ASSERT_TRUE(eventually([&] { return list_dir(mnt) == std::vector<std::string>{"sub"} && list_dir(mnt + "/sub").empty(); },
                         20s));
  lc.signal(SIGINT);
  const int st = lc.wait_or_kill(30s);
  EXPECT_TRUE(exited_with(st, 0)) << status_string(st) << "\n" << lc.err();
  EXPECT_FALSE(is_mountpoint(mnt));
  const std::string out = lc.out();
  EXPECT_EQ(summary_of(out, "a.txt"), std::make_pair(std::uint64_t{3}, std::uint64_t{6})) << out;
  EXPECT_EQ(summary_of(out, "sub/b.txt"), std::make_pair(std::uint64_t{1000}, std::uint64_t{b.size()})) << out;
  EXPECT_EQ(summary_of(out, "total"), std::make_pair(std::uint64_t{1003}, std::uint64_t{6 + b.size()})) << out;
}

}  // namespace
}  // namespace capturefs::test
