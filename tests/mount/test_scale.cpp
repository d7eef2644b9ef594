// Volume: the seed recipe at 200 x 16, 100 MiB with no reader, 1,000
// streams open at once, and memory given back after a burst of files.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>

#include "mount_fixture.hpp"

namespace capturefs::test {
namespace {

constexpr std::uint64_t MiB = 1024 * 1024;

using Scale = MountTest;

// CAPTUREFS_SEED_CALLS lowers the count (the sanitizer builds in CI).
TEST_F(Scale, SeedRecipe200CallsSixteenInParallel) {
  std::string calls = "200";
  if (const char* e = std::getenv("CAPTUREFS_SEED_CALLS"); e != nullptr && *e != '\0') calls = e;
  auto argv = python_helper("seed_wrapper.py");
  argv.insert(argv.end(), {mnt().path(), "--calls", calls, "--jobs", "16", "--deadline", "110"});
  RunResult r = run(argv, 130s);
  std::cout << r.out;
  EXPECT_TRUE(r.ok()) << r.describe();
  const std::string all = calls + "/" + calls + " calls correct";
  EXPECT_NE(r.out.find("concurrent: " + all), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("wait-then-read: " + all), std::string::npos) << r.out;
  std::cout << "daemon peak RSS (VmHWM) after the seed recipe: " << mib(mnt().peak_rss()) << std::endl;
}

TEST_F(Scale, HundredMiBWithNoReaderThenReadBackIntact) {
  const auto src = mnt().scratch("src.bin");
  make_random_file(src, 100 * MiB);
  const auto want = sha256_of(src);
  ASSERT_EQ(want.size(), 64u);

  // Nobody reads while the tools write: they must finish anyway.
  RunResult dd = run({"dd", "if=" + src, "of=" + at("dd.bin"), "bs=1M"}, 120s);
  ASSERT_TRUE(dd.ok()) << dd.describe();
  RunResult cp = run({"cp", src, at("cp.bin")}, 120s);
  ASSERT_TRUE(cp.ok()) << cp.describe();
  for (const char* n : {"dd.bin", "cp.bin"}) {
    struct stat st{};
    ASSERT_EQ(stat_err(at(n), &st), 0) << n;
    EXPECT_EQ(static_cast<std::uint64_t>(st.st_size), 100 * MiB) << n;
  }
  const std::uint64_t peak_held = mnt().peak_rss();
  EXPECT_EQ(sha256_of(at("dd.bin")), want) << "dd's copy differs";
  EXPECT_EQ(sha256_of(at("cp.bin")), want) << "cp's copy differs";
  std::cout << "daemon peak RSS (VmHWM) holding 2 x 100 MiB unread: " << mib(peak_held) << std::endl;
  RecordProperty("daemon_peak_rss_kib_200MiB_unread", static_cast<int>(peak_held / 1024));
  // Consumed and closed: both names go (exactly when is the semantics
  // suite's business; here only that they do).
  EXPECT_TRUE(eventually([&] { return list_dir(mnt().path()).empty(); }, 10s))
      << "names left: " << ::testing::PrintToString(list_dir(mnt().path()));
}

TEST_F(Scale, ThousandStreamsOpenAtOnce) {
  auto argv = python_helper("many_streams.py");
  argv.insert(argv.end(), {mnt().path(), "--count", "1000", "--size", "16384", "--deadline", "110"});
  RunResult r = run(argv, 130s);
  std::cout << r.out;
  EXPECT_TRUE(r.ok()) << r.describe();
  const std::uint64_t peak = mnt().peak_rss();
  std::cout << "daemon peak RSS (VmHWM) with 1,000 streams open (2,000 fds, 16 KiB each): " << mib(peak)
            << std::endl;
  RecordProperty("daemon_peak_rss_kib_1000_streams", static_cast<int>(peak / 1024));
  EXPECT_GT(peak, 0u);
}

// 10,000 files alive at once (written, not yet read), then all consumed:
// the daemon's memory returns to where it was before (it trims after a
// burst; glibc would otherwise keep the freed memory in its arenas).
TEST_F(Scale, MemoryReturnsToItsBaselineAfterABurstOfFiles) {
  std::ifstream maps("/proc/" + std::to_string(mnt().pid()) + "/maps");
  const std::string all((std::istreambuf_iterator<char>(maps)), std::istreambuf_iterator<char>());
  if (all.find("libasan") != std::string::npos || all.find("libtsan") != std::string::npos)
    GTEST_SKIP() << "a sanitizer's allocator keeps freed memory in its quarantine: RSS says nothing here";
  // The writers are shell processes that exit: a delivered name is kept
  // for its creator while that process lives.
  const std::string dir = at("burst");
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  auto write_files = [&](int n) {
    const std::string make =
        "i=0; while [ $i -lt $2 ]; do printf '%0100d' $i > \"$1/f$i\"; i=$((i+1)); done";
    RunResult w = run({"sh", "-c", make, "make", dir, std::to_string(n)}, 120s);
    ASSERT_TRUE(w.ok()) << w.describe();
  };
  auto read_files = [&](int n) {
    RunResult r = run({"sh", "-c", "find \"$1\" -type f -exec cat {} + | wc -c", "read", dir}, 120s);
    ASSERT_TRUE(r.ok()) << r.describe();
    EXPECT_EQ(std::stoll(r.out), 100LL * n);
    EXPECT_TRUE(eventually([&] { return list_dir(dir).empty(); }, 20s)) << "names left";
  };
  ASSERT_NO_FATAL_FAILURE(write_files(1000));  // warm-up: threads, arenas, the first blocks
  ASSERT_NO_FATAL_FAILURE(read_files(1000));
  const std::uint64_t baseline = mnt().current_rss();
  constexpr int kFiles = 10000;
  ASSERT_NO_FATAL_FAILURE(write_files(kFiles));
  const std::uint64_t held = mnt().current_rss();
  ASSERT_NO_FATAL_FAILURE(read_files(kFiles));
  // The daemon samples its load once a second and trims after a fall.
  const std::uint64_t slack = 8 * MiB;
  const bool back = eventually([&] { return mnt().current_rss() <= baseline + slack; }, 15s, 50ms);
  const std::uint64_t after = mnt().current_rss();
  std::cout << "daemon RSS: " << mib(baseline) << " before, " << mib(held) << " holding " << kFiles
            << " files, " << mib(after) << " after they were consumed" << std::endl;
  EXPECT_TRUE(back) << "RSS " << mib(after) << " after the burst, baseline " << mib(baseline);
}

}  // namespace
}  // namespace capturefs::test
