// A finished stream (no writer left) is random-access for its reader:
// reads consume nothing, the reader's close frees up to the highest offset
// it read (docs/semantics.md, `read (consumer)`).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

#include "support.hpp"

namespace capturefs::test {
namespace {

using core::Policy;
using core::SpillFile;
using core::SpillStore;

std::string pattern_string(std::uint64_t id, std::uint64_t off, std::size_t n) {
  const auto b = pattern_bytes(id, off, n);
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

class RandomAccess : public ::testing::Test {
 protected:
  Volume v{Limits{}};
};

TEST_F(RandomAccess, SeekToTheEndAndBackReadsTheSameBytes) {
  auto w = writer(v, "a.zip");
  const std::string data = pattern_string(1, 0, 100 * KiB);
  ASSERT_EQ(write_now(v, *w, 0, data).value(), data.size());
  v.release(std::move(w));
  auto r = reader(v, "a.zip");
  // The trailer first (unzip, samtools), then EOF, then from the start.
  EXPECT_EQ(read_at(v, *r, data.size() - 28, 28).value(), data.substr(data.size() - 28));
  EXPECT_EQ(read_at(v, *r, data.size(), 4096).value(), "");
  std::string all;
  for (std::uint64_t off = 0;;) {
    auto got = read_at(v, *r, off, 8 * KiB).value();
    if (got.empty()) break;
    off += got.size();
    all += got;
  }
  EXPECT_EQ(all, data);
  // And again: nothing was consumed.
  EXPECT_EQ(read_at(v, *r, 0, 10).value(), data.substr(0, 10));
  EXPECT_GE(v.memory_used(), data.size());  // held until the reader leaves
  v.release(std::move(r));
  // It read to the end and left: the stream is over, as before.
  EXPECT_EQ(v.lookup(kRootIno, "a.zip").error(), ENOENT);
  EXPECT_EQ(v.memory_used(), 0u);
}

TEST_F(RandomAccess, PreadAtRandomOffsets) {
  auto w = writer(v, "s");
  const std::string data = pattern_string(2, 0, 256 * KiB);
  ASSERT_EQ(write_now(v, *w, 0, data).value(), data.size());
  v.release(std::move(w));
  auto r = reader(v, "s");
  std::mt19937_64 rng(7);
  for (int i = 0; i < 500; ++i) {
    const std::uint64_t off = rng() % (data.size() + 100);
    const std::size_t n = 1 + rng() % (16 * KiB);
    const auto got = read_at(v, *r, off, n).value();
    const std::string want = off >= data.size() ? std::string() : data.substr(off, n);
    ASSERT_EQ(got, want) << "at " << off << ", " << n << " bytes";
  }
  v.release(std::move(r));
}

TEST_F(RandomAccess, ReadsWhileWritingStillConsume) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "hello world").value(), 11u);
  auto r = reader(v, "s");
  EXPECT_EQ(read_at(v, *r, 0, 5).value(), "hello");
  EXPECT_EQ(read_at(v, *r, 6, 5).value(), "world");
  EXPECT_EQ(read_at(v, *r, 0, 5).error(), EIO);  // consumed by the read at 6
  // The last writer leaves: what is still held is random-access now.
  v.release(std::move(w));
  EXPECT_EQ(read_at(v, *r, 6, 5).value(), "world");
  EXPECT_EQ(read_at(v, *r, 11, 5).value(), "");
  EXPECT_EQ(read_at(v, *r, 6, 2).value(), "wo");
  EXPECT_EQ(read_at(v, *r, 5, 5).error(), EIO);  // still gone
  v.release(std::move(r));
}

TEST_F(RandomAccess, AReadWaitingAtTheLastCloseGetsEof) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "abcdef").value(), 6u);
  auto r = reader(v, "s");
  EXPECT_EQ(read_now(v, r, 100).value(), "abcdef");
  ReadLog log;
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 100, 0, log.cb(&r))));
  v.release(std::move(w));
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.data, "");  // EOF
  // Waiting at 6 while the writer was there moved past [0, 6): gone.
  EXPECT_EQ(read_at(v, *r, 0, 3).error(), EIO);
  EXPECT_EQ(read_at(v, *r, 6, 3).value(), "");
  v.release(std::move(r));
  EXPECT_EQ(v.lookup(kRootIno, "s").error(), ENOENT);
}

TEST_F(RandomAccess, AReaderThatLeavesEarlyFreesUpToTheHighestOffsetItRead) {
  auto w = writer(v, "s");
  const std::string data = pattern_string(3, 0, 64 * KiB);
  ASSERT_EQ(write_now(v, *w, 0, data).value(), data.size());
  v.release(std::move(w));
  auto r = reader(v, "s");
  EXPECT_EQ(read_at(v, *r, 40 * KiB, 1000).value(), data.substr(40 * KiB, 1000));
  EXPECT_EQ(read_at(v, *r, 0, 1000).value(), data.substr(0, 1000));  // back: still there
  v.release(std::move(r));
  // The name stays (not read to the end); the next reader starts where the
  // first one's highest read ended.
  auto r2 = reader(v, "s");
  const std::uint64_t from = 40 * KiB + 1000;
  EXPECT_EQ(read_at(v, *r2, 0, 100).value(), data.substr(from, 100));
  EXPECT_EQ(read_at(v, *r2, 0, data.size()).value(), data.substr(from));
  EXPECT_EQ(read_at(v, *r2, data.size() - from, 10).value(), "");
  v.release(std::move(r2));
  EXPECT_EQ(v.lookup(kRootIno, "s").error(), ENOENT);
}

TEST_F(RandomAccess, BeforeTheFirstByteHeldIsEIO) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "0123456789").value(), 10u);
  auto r = reader(v, "s");
  EXPECT_EQ(read_at(v, *r, 4, 2).value(), "45");  // consumes [0, 4)
  v.release(std::move(w));
  EXPECT_EQ(read_at(v, *r, 3, 2).error(), EIO);
  EXPECT_EQ(read_at(v, *r, 0, 10).error(), EIO);
  EXPECT_EQ(read_at(v, *r, 8, 10).value(), "89");
  EXPECT_EQ(read_at(v, *r, 4, 10).value(), "456789");
  v.release(std::move(r));
}

TEST_F(RandomAccess, AWriterComingBackMakesReadsConsumeAgain) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "abcdef").value(), 6u);
  v.release(std::move(w));
  auto r = reader(v, "s");
  EXPECT_EQ(read_at(v, *r, 3, 3).value(), "def");
  EXPECT_EQ(read_at(v, *r, 0, 3).value(), "abc");
  auto w2 = must(v.open(r->ino, O_WRONLY), "open");
  ASSERT_EQ(write_now(v, *w2, 6, "gh").value(), 2u);
  EXPECT_EQ(read_at(v, *r, 4, 4).value(), "efgh");  // consumes [0, 4)
  EXPECT_EQ(read_at(v, *r, 0, 3).error(), EIO);
  v.release(std::move(w2));
  v.release(std::move(r));
}

TEST(RandomAccessHold, AHeldFileOnceDelivered) {
  Policy p;
  p.hold = core::glob_filter({"*.zip"});
  Volume v(Limits{}, std::move(p));
  auto w = writer(v, "s.zip");
  ASSERT_TRUE(w->stream->holds());
  ASSERT_EQ(write_now(v, *w, 0, "trailer-first").value(), 13u);
  v.release(std::move(w));
  auto r = reader(v, "s.zip");
  EXPECT_EQ(read_at(v, *r, 8, 100).value(), "first");
  EXPECT_EQ(read_at(v, *r, 0, 7).value(), "trailer");
  v.release(std::move(r));
}

// The spill tier counts the same: a finished stream mostly on disk.
class SpillDir {
 public:
  SpillDir() {
    std::string t = (std::filesystem::temp_directory_path() / "capturefs-ra-XXXXXX").string();
    if (::mkdtemp(t.data()) == nullptr) throw std::runtime_error("mkdtemp");
    path_ = t;
  }
  ~SpillDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(RandomAccessSpill, SpilledBytesAreRandomAccessToo) {
  SpillDir dir;
  auto store = std::make_shared<SpillStore>(
      dir.path(), 64 * MiB, [d = dir.path()]() -> Result<std::shared_ptr<SpillFile>> {
        const int fd = ::open(d.c_str(), O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) return Errno{errno};
        return std::make_shared<SpillFile>(fd);
      });
  Limits l;
  l.max_memory = 1 * MiB;
  l.max_stream = 1 * MiB;
  Policy p;
  p.spill = store;
  {
    Volume v(l, std::move(p));
    auto w = writer(v, "big");
    const std::uint64_t size = 6 * MiB;
    for (std::uint64_t off = 0; off < size; off += 64 * KiB)
      ASSERT_EQ(write_now(v, *w, off, pattern_bytes(4, off, 64 * KiB)).value(), 64 * KiB);
    ASSERT_GE(v.spill_used(), 4 * MiB);
    v.release(std::move(w));
    auto r = reader(v, "big");
    // The end (spilled), the start (memory), a read across the tiers.
    auto tail = read_at(v, *r, size - 28, 100).value();
    EXPECT_EQ(tail.size(), 28u);
    EXPECT_EQ(first_mismatch(4, size - 28, tail), std::string::npos);
    auto head = read_at(v, *r, 0, 4096).value();
    EXPECT_EQ(first_mismatch(4, 0, head), std::string::npos);
    auto across = read_at(v, *r, 1 * MiB - 1000, 8192).value();
    EXPECT_EQ(across.size(), 8192u);
    EXPECT_EQ(first_mismatch(4, 1 * MiB - 1000, across), std::string::npos);
    std::mt19937_64 rng(11);
    for (int i = 0; i < 200; ++i) {
      const std::uint64_t off = rng() % size;
      auto got = read_at(v, *r, off, 32 * KiB).value();
      ASSERT_EQ(got.size(), std::min<std::uint64_t>(32 * KiB, size - off));
      ASSERT_EQ(first_mismatch(4, off, got), std::string::npos) << "at " << off;
    }
    EXPECT_GE(v.spill_used(), 4 * MiB);  // nothing consumed yet
    // Leaving at 3 MiB frees both tiers up to there.
    EXPECT_EQ(read_at(v, *r, 3 * MiB - 10, 10).value().size(), 10u);
    auto r2 = std::move(r);
    v.release(std::move(r2.h));
    auto r3 = reader(v, "big");
    auto next = read_at(v, *r3, 0, 4096).value();
    EXPECT_EQ(first_mismatch(4, 3 * MiB, next), std::string::npos);
    EXPECT_LE(v.spill_used(), 3 * MiB);
    EXPECT_EQ(read_at(v, *r3, 3 * MiB, 10).value(), "");
    v.release(std::move(r3.h));
    EXPECT_EQ(v.lookup(kRootIno, "big").error(), ENOENT);
    EXPECT_EQ(v.spill_used(), 0u);
    EXPECT_EQ(v.memory_used(), 0u);
  }
}

}  // namespace
}  // namespace capturefs::test
