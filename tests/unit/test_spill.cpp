// Spilling (stream.hpp, SPILLING): bytes of a stream nobody reads yet that
// do not fit the memory caps go to an unnamed temporary file instead of
// making the writer wait; reads, read-back, patches and truncate work
// across both tiers; consumption gives the space back; only when memory
// and the spill limit are both used up does a writer wait.
//
// Every volume here spills into a private directory, which must stay empty
// (O_TMPFILE files have no name). Fault injection goes through a SpillFile
// subclass; its gates (a write or read held inside the "syscall") show
// that no stream lock is held across the file I/O.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/delivery.hpp"
#include "core/spill.hpp"
#include "recorder.hpp"
#include "support.hpp"

namespace capturefs::test {
namespace {

using namespace std::chrono_literals;
using core::SpillFile;
using core::SpillStore;

constexpr auto kGuard = 20s;  // deadlock guard only

// ---- helpers -------------------------------------------------------------------

// A private spill directory; it must be empty when the test ends.
class SpillDir {
 public:
  SpillDir() {
    std::string t = (std::filesystem::temp_directory_path() / "capturefs-spill-XXXXXX").string();
    if (mkdtemp(t.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = t;
  }
  ~SpillDir() {
    EXPECT_EQ(names().size(), 0U) << "something named was left in the spill directory";
    std::filesystem::remove_all(path_);
  }
  SpillDir(const SpillDir&) = delete;
  SpillDir& operator=(const SpillDir&) = delete;
  const std::string& path() const { return path_; }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path_)) out.push_back(e.path().filename());
    return out;
  }

 private:
  std::string path_;
};

// Descriptors of this process open on files in `dir` (spill files show as
// "DIR/#12345 (deleted)").
std::vector<int> spill_fds(const std::string& dir) {
  std::vector<int> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const auto target = std::filesystem::read_symlink(e.path(), ec).string();
    if (!ec && target.rfind(dir + "/", 0) == 0) out.push_back(std::stoi(e.path().filename()));
  }
  return out;
}

// Disk space allocated to the (only) spill file in `dir`, bytes.
std::uint64_t spill_file_blocks(const std::string& dir) {
  const auto fds = spill_fds(dir);
  if (fds.size() != 1) throw std::runtime_error("expected one spill file, found " + std::to_string(fds.size()));
  struct stat st{};
  if (::fstat(fds[0], &st) != 0) throw std::runtime_error("fstat failed");
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

// Fault injection for spill files: errors, and gates that hold a write or a
// read inside the "syscall" until released.
struct Faults {
  std::mutex mu;
  std::condition_variable cv;
  int open_err = 0;
  int write_err = 0;
  int read_err = 0;
  bool hold_writes = false;
  bool hold_reads = false;
  int writes_held = 0;
  int reads_held = 0;
  int writes = 0;  // write_at calls

  void pass(bool Faults::*hold, int Faults::*held) {
    std::unique_lock lk(mu);
    if (!(this->*hold)) return;
    ++(this->*held);
    cv.notify_all();
    cv.wait_for(lk, kGuard, [&] { return !(this->*hold); });
    --(this->*held);
  }
  bool wait_held(int Faults::*held, int n) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, kGuard, [&] { return this->*held >= n; });
  }
  void open_gate(bool Faults::*hold) {
    std::lock_guard lk(mu);
    this->*hold = false;
    cv.notify_all();
  }
  void set(int Faults::*what, int value) {
    std::lock_guard lk(mu);
    this->*what = value;
  }
  int get(int Faults::*what) {
    std::lock_guard lk(mu);
    return this->*what;
  }
};

class FaultFile : public SpillFile {
 public:
  FaultFile(int fd, std::shared_ptr<Faults> f) : SpillFile(fd), f_(std::move(f)) {}
  int write_at(std::uint64_t off, std::span<const std::byte> data) override {
    {
      std::lock_guard lk(f_->mu);
      ++f_->writes;
      if (f_->write_err != 0) return f_->write_err;
    }
    f_->pass(&Faults::hold_writes, &Faults::writes_held);
    return SpillFile::write_at(off, data);
  }
  int read_at(std::uint64_t off, std::span<std::byte> out) override {
    {
      std::lock_guard lk(f_->mu);
      if (f_->read_err != 0) return f_->read_err;
    }
    f_->pass(&Faults::hold_reads, &Faults::reads_held);
    return SpillFile::read_at(off, out);
  }

 private:
  std::shared_ptr<Faults> f_;
};

// A volume that spills into a private directory.
struct SpillVolume {
  SpillDir dir;
  std::shared_ptr<Faults> faults = std::make_shared<Faults>();
  std::shared_ptr<SpillStore> store;
  std::unique_ptr<Volume> v;

  explicit SpillVolume(Limits limits, std::uint64_t spill_limit, core::Policy policy = {}) {
    store = std::make_shared<SpillStore>(
        dir.path(), spill_limit, [d = dir.path(), f = faults]() -> Result<std::shared_ptr<SpillFile>> {
          if (const int err = f->get(&Faults::open_err); err != 0) return Errno{err};
          const int fd = ::open(d.c_str(), O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
          if (fd < 0) return Errno{errno};
          return std::shared_ptr<SpillFile>(std::make_shared<FaultFile>(fd, f));
        });
    policy.spill = store;
    v = std::make_unique<Volume>(limits, std::move(policy));
  }
  ~SpillVolume() {
    v.reset();
    EXPECT_TRUE(spill_fds(dir.path()).empty()) << "spill files left open after the volume is gone";
  }
  Volume& operator*() { return *v; }
  Volume* operator->() { return v.get(); }
};

Limits limits(std::uint64_t memory, std::uint64_t stream) {
  Limits l;
  l.max_memory = memory;
  l.max_stream = stream;
  return l;
}

std::unique_ptr<Handle> rdwr(Volume& v, std::string_view name) {
  return must(v.create(kRootIno, name, 0644, O_RDWR | O_CREAT, Caller{}), "create").handle;
}

// Appends pattern(id) in `chunk` pieces from `from` up to `to`; every write
// must be accepted at once. Returns the new end.
std::uint64_t append_pattern(Volume& v, Handle& w, std::uint64_t id, std::uint64_t from,
                             std::uint64_t to, std::size_t chunk = 64 * KiB) {
  while (from < to) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, to - from));
    auto r = write_now(v, w, from, pattern_bytes(id, from, n));
    if (!r || *r != n) throw std::runtime_error("append failed at " + std::to_string(from));
    from += n;
  }
  return from;
}

// Reads a nonblocking consumer until EAGAIN or EOF; returns what it got.
std::string drain(Volume& v, Consumer& r, std::size_t piece = 100 * 1000) {
  std::string out;
  for (;;) {
    auto res = read_now(v, r, piece);
    if (!res) {
      EXPECT_EQ(res.error(), EAGAIN);
      return out;
    }
    if (res->empty()) return out;
    out += *res;
  }
}

std::uint64_t fnv1a(std::string_view s) {
  std::uint64_t h = 1469598103934665603ULL;
  for (const char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ULL;
  }
  return h;
}

core::SetAttr size_attr(std::uint64_t size) {
  core::SetAttr sa;
  sa.set_size = true;
  sa.size = size;
  return sa;
}

// ---- the map (pure bookkeeping) ------------------------------------------------

TEST(SpillMap, AssignDropAndTruncateKeepTheMappingAndReportDeadRuns) {
  core::SpillMap m;
  std::vector<core::FileRun> dead;
  m.reset(100);
  m.append(50, 0);    // [100,150) -> file [0,50)
  m.append(50, 50);   // contiguous: merged
  EXPECT_EQ(m.extents(), 1U);
  m.append(10, core::SpillMap::kZeros);  // [200,210) zeros
  m.append(30, 100);                     // [210,240) -> [100,130)
  EXPECT_EQ(m.size(), 140U);
  // Patch [140,160) with file run [500,520): the old [40,60) dies.
  m.assign(140, 20, 500, &dead);
  ASSERT_EQ(dead.size(), 1U);
  EXPECT_EQ(dead[0].off, 40U);
  EXPECT_EQ(dead[0].len, 20U);
  std::vector<core::SpillMap::Piece> p;
  m.pieces(130, 100, &p);
  ASSERT_EQ(p.size(), 5U);
  EXPECT_EQ(p[0].off, 130U);
  EXPECT_EQ(p[0].foff, 30U);
  EXPECT_EQ(p[1].foff, 500U);
  EXPECT_EQ(p[2].foff, 60U);
  EXPECT_EQ(p[2].len, 40U);
  EXPECT_EQ(p[3].foff, core::SpillMap::kZeros);
  EXPECT_EQ(p[4].len, 20U);
  // Consume into the patched run; zeros die without a file run.
  dead.clear();
  m.drop_front(150, &dead);
  EXPECT_EQ(m.begin(), 150U);
  std::uint64_t dead_bytes = 0;
  for (const auto& r : dead) dead_bytes += r.len;
  EXPECT_EQ(dead_bytes, 50U);  // [0,40) and [500,510)
  dead.clear();
  m.truncate(205, &dead);
  EXPECT_EQ(m.end(), 205U);
  dead_bytes = 0;
  for (const auto& r : dead) dead_bytes += r.len;
  EXPECT_EQ(dead_bytes, 30U);  // the run [100,130); the cut zeros take no file
  dead.clear();
  m.clear(&dead);
  EXPECT_TRUE(m.empty());
  EXPECT_EQ(m.begin(), 205U);
}

// ---- spilling ------------------------------------------------------------------

TEST(Spill, NothingReadsAndMemoryIsFullSoBytesGoToTheFile) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB);
  Volume& v = *sv;
  auto w = writer(v, "out");
  // 8 MiB with nobody reading: every write is taken at once.
  append_pattern(v, *w, 1, 0, 8 * MiB);
  EXPECT_LE(v.memory_used(), 1 * MiB);
  EXPECT_GE(v.spill_used(), 7 * MiB);
  EXPECT_LE(v.spill_used(), 8 * MiB);
  EXPECT_EQ(w->stream->spilled() + 0, v.spill_used());
  EXPECT_EQ(must(v.getattr(w->ino), "getattr").size, 8 * MiB);
  EXPECT_EQ(spill_fds(sv.dir.path()).size(), 1U);
  EXPECT_TRUE(sv.dir.names().empty()) << "a spill file has a name";
  v.release(std::move(w));

  auto r = reader(v, "out");
  const std::string all = drain(v, r, 128 * KiB);
  EXPECT_EQ(all.size(), 8 * MiB);
  EXPECT_EQ(first_mismatch(1, 0, all), std::string::npos);
  v.flush(*r);
  v.release(std::move(r));
  EXPECT_EQ(v.spill_used(), 0U);
  EXPECT_EQ(v.memory_used(), 0U);
  EXPECT_TRUE(spill_fds(sv.dir.path()).empty()) << "the spill file was not closed once read";
  EXPECT_EQ(v.lookup(kRootIno, "out").error(), ENOENT);
}

TEST(Spill, ReadBackAndReadsCrossTheTierBoundary) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB);
  Volume& v = *sv;
  auto w = rdwr(v, "rb");
  append_pattern(v, *w, 2, 0, 3 * MiB, 100000);
  ASSERT_GT(v.spill_used(), 0U);
  // Read-back in odd pieces over the whole stream (both tiers and the seam).
  for (std::uint64_t pos = 0; pos < 3 * MiB; pos += 77777) {
    auto got = read_at(v, *w, pos, 99999);
    ASSERT_TRUE(got) << "read-back at " << pos << ": errno " << got.error();
    EXPECT_EQ(got->size(), std::min<std::uint64_t>(99999, 3 * MiB - pos));
    EXPECT_EQ(first_mismatch(2, pos, *got), std::string::npos) << "read-back at " << pos;
  }
  EXPECT_EQ(read_at(v, *w, 3 * MiB, 10).value(), "") << "the end reads as EOF";
  // A consumer reads in other odd pieces; read-back of what it consumed fails.
  auto r = reader(v, "rb", kRootIno, O_NONBLOCK);
  std::string got;
  while (got.size() < 2 * MiB) {
    auto res = read_now(v, r, 65537);
    ASSERT_TRUE(res);
    got += *res;
  }
  EXPECT_EQ(read_at(v, *w, 0, 10).error(), EIO);
  got += drain(v, r, 65537);
  EXPECT_EQ(got.size(), 3 * MiB);
  EXPECT_EQ(first_mismatch(2, 0, got), std::string::npos);
  EXPECT_EQ(v.spill_used(), 0U) << "everything was read";
}

TEST(Spill, PatchesInBothTiersAndAcrossTheSeam) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB);
  Volume& v = *sv;
  auto w = rdwr(v, "p");
  const std::uint64_t size = 4 * MiB;
  append_pattern(v, *w, 3, 0, size);
  std::string model = to_string(pattern_bytes(3, 0, size));
  ASSERT_GT(v.spill_used(), 2 * MiB);
  std::mt19937_64 rng(7);
  auto patch = [&](std::uint64_t off, std::size_t n) {
    std::string data(n, '\0');
    for (auto& c : data) c = static_cast<char>(rng());
    auto r = write_now(v, *w, off, data);
    ASSERT_TRUE(r) << "patch at " << off << ": errno " << r.error();
    if (model.size() < off + n) model.resize(off + n);
    model.replace(off, n, data);
  };
  patch(0, 1000);                   // memory
  patch(size - 5000, 3000);         // spill
  for (std::uint64_t at = 0; at < size; at += 64 * KiB) patch(at + 65000, 1500);  // every 64 KiB: seams of both
  patch(size - 100, 300);           // over the end: patch and append
  patch(2 * MiB, 1);                // a patch of a patch
  patch(2 * MiB - 10, 20);
  EXPECT_EQ(must(v.getattr(w->ino), "getattr").size, model.size());
  auto back = read_at(v, *w, 0, model.size());
  ASSERT_TRUE(back);
  EXPECT_TRUE(*back == model) << "read-back differs after patches";
  v.release(std::move(w));
  auto r = reader(v, "p");
  const std::string got = drain(v, r, 300000);
  EXPECT_EQ(fnv1a(got), fnv1a(model));
  EXPECT_TRUE(got == model) << "delivered bytes differ after patches";
}

TEST(Spill, ConsumptionGivesTheSpaceBack) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB);
  Volume& v = *sv;
  auto w = writer(v, "c");
  append_pattern(v, *w, 4, 0, 32 * MiB, 1 * MiB);
  const std::uint64_t used = v.spill_used();
  const std::uint64_t blocks = spill_file_blocks(sv.dir.path());
  EXPECT_GE(used, 31 * MiB);
  EXPECT_GE(blocks, 31 * MiB) << "the spill file should hold the bytes";
  auto r = reader(v, "c", kRootIno, O_NONBLOCK);
  std::string got;
  while (got.size() < 16 * MiB) got += read_now(v, r, 1 * MiB).value();
  got += read_now(v, r, 1).value();  // frees the last read's bytes
  const std::uint64_t half = v.spill_used();
  EXPECT_LE(half, used - 14 * MiB) << "consumed spill bytes still counted";
  EXPECT_LE(spill_file_blocks(sv.dir.path()), blocks - 14 * MiB) << "consumed spill bytes still take disk space";
  // Writes behind a spill tier go there, even with a consumer attached.
  append_pattern(v, *w, 4, 32 * MiB, 33 * MiB, 1 * MiB);
  EXPECT_GT(v.spill_used(), half);
  v.release(std::move(w));
  got += drain(v, r, 1 * MiB);
  ASSERT_EQ(got.size(), 33 * MiB);
  EXPECT_EQ(first_mismatch(4, 0, got), std::string::npos);
  EXPECT_EQ(v.spill_used(), 0U);
  EXPECT_TRUE(spill_fds(sv.dir.path()).empty());
}

TEST(Spill, WhenMemoryAndTheSpillLimitAreFullTheWriterWaits) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 2 * MiB);
  Volume& v = *sv;
  auto w = writer(v, "full");
  std::uint64_t end = 0;
  WriteLog log;
  for (;;) {
    auto out = v.write(*w, end, pattern_bytes(5, end, 64 * KiB), 0, log.cb());
    if (is_parked(out)) break;
    ASSERT_TRUE(std::get<0>(out));
    end += 64 * KiB;
    ASSERT_LT(end, 8 * MiB) << "never waited";
  }
  EXPECT_GE(end, 2 * MiB + 512 * KiB);
  EXPECT_LE(v.spill_used(), 2 * MiB);
  EXPECT_LE(v.memory_used(), 1 * MiB);
  EXPECT_EQ(log.calls, 0);
  // Reading the memory tier frees memory, but the writer is behind the
  // spilled bytes: it waits for spill space.
  auto r = reader(v, "full", kRootIno, O_NONBLOCK);
  std::string got;
  while (got.size() + 64 * KiB <= end - v.spill_used()) got += read_now(v, r, 64 * KiB).value();
  EXPECT_EQ(log.calls, 0) << "a write got ahead of the spilled bytes";
  // Reading into the spill tier lets it in.
  got += read_now(v, r, 512 * KiB).value();
  got += read_now(v, r, 512 * KiB).value();
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, 0);
  end += 64 * KiB;
  v.release(std::move(w));
  got += drain(v, r);
  EXPECT_EQ(got.size(), end);
  EXPECT_EQ(first_mismatch(5, 0, got), std::string::npos);
}

TEST(Spill, WithoutASpillStoreWritersWaitAsBefore) {
  Volume v(limits(1 * MiB, 1 * MiB));
  auto w = writer(v, "ns");
  std::uint64_t end = 0;
  WriteLog log;
  for (;;) {
    auto out = v.write(*w, end, pattern_bytes(6, end, 64 * KiB), 0, log.cb());
    if (is_parked(out)) break;
    end += 64 * KiB;
    ASSERT_LE(end, 1 * MiB);
  }
  EXPECT_EQ(v.spill_used(), 0U);
  EXPECT_LE(v.memory_used(), 1 * MiB);
  auto r = reader(v, "ns", kRootIno, O_NONBLOCK);
  std::string got = drain(v, r);
  EXPECT_EQ(log.calls, 1);
  v.release(std::move(w));
  got += drain(v, r);
  EXPECT_EQ(got.size(), end + 64 * KiB);
  EXPECT_EQ(first_mismatch(6, 0, got), std::string::npos);
}

TEST(Spill, AStreamWithAConsumerDoesNotStartSpilling) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB);
  Volume& v = *sv;
  auto w = writer(v, "live");
  auto r = reader(v, "live", kRootIno, O_NONBLOCK);
  std::uint64_t end = 0;
  WriteLog log;
  for (;;) {
    auto out = v.write(*w, end, pattern_bytes(7, end, 64 * KiB), 0, log.cb());
    if (is_parked(out)) break;
    end += 64 * KiB;
    ASSERT_LE(end, 1 * MiB);
  }
  EXPECT_EQ(v.spill_used(), 0U) << "a stream with a reader spilled";
  std::string got = drain(v, r);
  EXPECT_EQ(log.calls, 1);
  v.release(std::move(w));
  got += drain(v, r);
  EXPECT_EQ(first_mismatch(7, 0, got), std::string::npos);
  EXPECT_EQ(got.size(), end + 64 * KiB);
}

TEST(Spill, TruncateCutsAndGrowsAcrossTiers) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB);
  Volume& v = *sv;
  auto w = rdwr(v, "t");
  append_pattern(v, *w, 8, 0, 4 * MiB);
  std::string model = to_string(pattern_bytes(8, 0, 4 * MiB));
  auto truncate = [&](std::uint64_t size) {
    auto a = v.setattr(w->ino, size_attr(size));
    ASSERT_TRUE(a) << "truncate to " << size << ": errno " << a.error();
    EXPECT_EQ(a->size, size);
    model.resize(size);
  };
  truncate(3 * MiB + 123);  // inside the spill tier
  truncate(5 * MiB);        // grows: zeros, in the tier, no disk
  append_pattern(v, *w, 8, 5 * MiB, 5 * MiB + 1000);
  model += to_string(pattern_bytes(8, 5 * MiB, 1000));
  truncate(100000);  // into memory: the tier goes
  EXPECT_EQ(v.spill_used(), 0U);
  append_pattern(v, *w, 9, 100000, 3 * MiB);  // spills again
  model += to_string(pattern_bytes(9, 100000, 3 * MiB - 100000));
  EXPECT_GT(v.spill_used(), 0U);
  auto back = read_at(v, *w, 0, model.size());
  ASSERT_TRUE(back);
  EXPECT_TRUE(*back == model);
  v.release(std::move(w));
  auto r = reader(v, "t");
  const std::string got = drain(v, r, 1 * MiB);
  EXPECT_EQ(fnv1a(got), fnv1a(model));
  EXPECT_TRUE(got == model);
}

TEST(Spill, UnlinkDropsTheSpilledBytesAndClosesTheFile) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB);
  Volume& v = *sv;
  auto w = writer(v, "gone");
  append_pattern(v, *w, 10, 0, 6 * MiB);
  ASSERT_GT(v.spill_used(), 0U);
  ASSERT_TRUE(v.unlink(kRootIno, "gone"));
  EXPECT_EQ(v.spill_used(), 0U);
  EXPECT_EQ(v.memory_used(), 0U);
  EXPECT_TRUE(spill_fds(sv.dir.path()).empty());
  // Later writes are accepted and dropped.
  EXPECT_EQ(write_now(v, *w, 6 * MiB, "more").value(), 4U);
  EXPECT_EQ(v.spill_used(), 0U);
  v.release(std::move(w));
}

TEST(Spill, AHeldStreamSpillsAndIsDeliveredWhole) {
  core::Policy policy;
  policy.hold = core::glob_filter({"*.zip"});
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB, std::move(policy));
  Volume& v = *sv;
  auto w = rdwr(v, "a.zip");
  append_pattern(v, *w, 11, 0, 5 * MiB);
  std::string model = to_string(pattern_bytes(11, 0, 5 * MiB));
  // The zip-style patch of an early header, and of a late one.
  ASSERT_EQ(write_now(v, *w, 10, "HEADER").value(), 6U);
  model.replace(10, 6, "HEADER");
  ASSERT_EQ(write_now(v, *w, 4 * MiB, "LATE").value(), 4U);
  model.replace(4 * MiB, 4, "LATE");
  auto r = reader(v, "a.zip", kRootIno, O_NONBLOCK);
  EXPECT_EQ(read_now(v, r, 10).error(), EAGAIN) << "a held stream showed bytes";
  v.release(std::move(w));
  const std::string got = drain(v, r, 1 * MiB);
  EXPECT_TRUE(got == model);
  // Past the spill limit a held write fails instead of waiting.
  SpillVolume small(limits(2 * MiB, 2 * MiB), 2 * MiB, [] {
    core::Policy p;
    p.hold = core::glob_filter({"*.zip"});
    return p;
  }());
  auto h = rdwr(*small, "b.zip");
  std::uint64_t end = 0;
  Result<std::size_t> res = 0;
  while ((res = write_now(*small, *h, end, pattern_bytes(12, end, 64 * KiB)))) end += 64 * KiB;
  EXPECT_EQ(res.error(), ENOSPC);
  EXPECT_GE(end, 3 * MiB);
  small->release(std::move(h));
}

TEST(Spill, APushConsumerGetsBothTiers) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB);
  Volume& v = *sv;
  auto w = writer(v, "push");
  append_pattern(v, *w, 13, 0, 6 * MiB, 100000);
  v.release(std::move(w));
  auto rec = std::make_shared<Recorder>();
  auto sub = v.subscribe(core::glob_filter({}), rec);
  ASSERT_TRUE(rec->wait_closed(1, kGuard));
  auto seen = rec->seen();
  ASSERT_EQ(seen.size(), 1U);
  const auto& s = seen.begin()->second;
  EXPECT_TRUE(s.in_order);
  EXPECT_TRUE(s.end.complete) << s.end.reason;
  EXPECT_EQ(s.bytes.size(), 6 * MiB);
  EXPECT_EQ(first_mismatch(13, 0, s.bytes), std::string::npos);
  sub->close();
  EXPECT_EQ(v.spill_used(), 0U);
}

// ---- failures ------------------------------------------------------------------

TEST(SpillFaults, AFailedFileWriteFailsThatWriteAndLeavesTheStreamIntact) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB);
  Volume& v = *sv;
  auto w = writer(v, "eio");
  std::uint64_t end = append_pattern(v, *w, 14, 0, 2 * MiB);
  sv.faults->set(&Faults::write_err, EIO);
  EXPECT_EQ(write_now(v, *w, end, pattern_bytes(14, end, 64 * KiB)).error(), EIO);
  EXPECT_EQ(must(v.getattr(w->ino), "getattr").size, end) << "a failed write changed the stream";
  sv.faults->set(&Faults::write_err, 0);
  end = append_pattern(v, *w, 14, end, 3 * MiB);
  v.release(std::move(w));
  auto r = reader(v, "eio");
  const std::string got = drain(v, r);
  EXPECT_EQ(got.size(), 3 * MiB);
  EXPECT_EQ(first_mismatch(14, 0, got), std::string::npos);
}

TEST(SpillFaults, AFullDiskMakesTheWriterWaitUntilSpaceComesBack) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB);
  Volume& v = *sv;
  auto w = writer(v, "nospc");
  std::uint64_t end = append_pattern(v, *w, 15, 0, 3 * MiB);
  sv.faults->set(&Faults::write_err, ENOSPC);
  WriteLog log;
  ASSERT_TRUE(is_parked(v.write(*w, end, pattern_bytes(15, end, 64 * KiB), 0, log.cb())));
  // A release retries it (once, not in a loop); still full: it waits on.
  auto r = reader(v, "nospc", kRootIno, O_NONBLOCK);
  const int before = sv.faults->get(&Faults::writes);
  std::string got = read_now(v, r, 512 * KiB).value();
  got += read_now(v, r, 512 * KiB).value();
  EXPECT_EQ(log.calls, 0);
  EXPECT_LE(sv.faults->get(&Faults::writes) - before, 4) << "the full disk was retried in a loop";
  // Space again: the next release lets it in.
  sv.faults->set(&Faults::write_err, 0);
  got += read_now(v, r, 512 * KiB).value();
  got += read_now(v, r, 512 * KiB).value();
  got += read_now(v, r, 512 * KiB).value();
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, 0);
  v.release(std::move(w));
  got += drain(v, r);
  EXPECT_EQ(got.size(), end + 64 * KiB);
  EXPECT_EQ(first_mismatch(15, 0, got), std::string::npos);
}

TEST(SpillFaults, AFailedFileReadAbortsTheStream) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB);
  Volume& v = *sv;
  auto w = writer(v, "rerr");
  append_pattern(v, *w, 16, 0, 3 * MiB);
  sv.faults->set(&Faults::read_err, EIO);
  auto r = reader(v, "rerr", kRootIno, O_NONBLOCK);
  std::string got;
  Result<std::string> res = std::string();
  while ((res = read_now(v, r, 64 * KiB))) got += *res;
  EXPECT_EQ(res.error(), EIO);
  EXPECT_LT(got.size(), 3 * MiB);
  EXPECT_EQ(first_mismatch(16, 0, got), std::string::npos);
  EXPECT_EQ(write_now(v, *w, 3 * MiB, "x").error(), EIO) << "the stream was not aborted";
  EXPECT_EQ(v.spill_used(), 0U);
  v.release(std::move(w));
}

TEST(SpillFaults, NoSpillFileMeansWaitingForAReader) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB);
  Volume& v = *sv;
  sv.faults->set(&Faults::open_err, EMFILE);
  auto w = writer(v, "nofile");
  std::uint64_t end = 0;
  WriteLog log;
  for (;;) {
    auto out = v.write(*w, end, pattern_bytes(17, end, 64 * KiB), 0, log.cb());
    if (is_parked(out)) break;
    end += 64 * KiB;
    ASSERT_LE(end, 1 * MiB);
  }
  auto r = reader(v, "nofile", kRootIno, O_NONBLOCK);
  std::string got = drain(v, r);
  EXPECT_EQ(log.calls, 1);
  v.release(std::move(w));
  got += drain(v, r);
  EXPECT_EQ(got.size(), end + 64 * KiB);
  EXPECT_EQ(first_mismatch(17, 0, got), std::string::npos);
}

// ---- no lock across the file I/O ---------------------------------------------------

// Runs fn on another thread; true if it returned within 5 s. If it did
// not (it waits for the held I/O: a lock is held across it), `unblock`
// lets it finish before the failure is reported.
bool returns(const std::function<void()>& fn, const std::function<void()>& unblock) {
  auto f = std::async(std::launch::async, fn);
  const bool ok = f.wait_for(5s) == std::future_status::ready;
  if (!ok) unblock();
  f.wait();
  return ok;
}

TEST(SpillLocking, AWriteInsideTheFileDoesNotHoldTheStream) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB);
  Volume& v = *sv;
  auto w = rdwr(v, "slow");
  std::uint64_t end = append_pattern(v, *w, 18, 0, 2 * MiB);
  {
    std::lock_guard lk(sv.faults->mu);
    sv.faults->hold_writes = true;
  }
  const auto unblock = [&] { sv.faults->open_gate(&Faults::hold_writes); };
  std::thread t([&] { EXPECT_TRUE(write_now(v, *w, end, pattern_bytes(18, end, 64 * KiB))); });
  ASSERT_TRUE(sv.faults->wait_held(&Faults::writes_held, 1));
  // The write sits in pwrite(): the stream answers everything else.
  EXPECT_TRUE(returns([&] { EXPECT_EQ(must(v.getattr(w->ino), "getattr").size, end); }, unblock));
  EXPECT_TRUE(returns([&] { EXPECT_EQ(read_at(v, *w, 0, 5).value(), to_string(pattern_bytes(18, 0, 5))); }, unblock));
  EXPECT_TRUE(returns([&] { EXPECT_TRUE(write_now(v, *w, 0, to_string(pattern_bytes(18, 0, 100)))); }, unblock));
  EXPECT_TRUE(returns([&] { (void)v.snapshot(); (void)v.statfs(); }, unblock));
  sv.faults->open_gate(&Faults::hold_writes);
  t.join();
  end += 64 * KiB;
  v.release(std::move(w));
  auto r = reader(v, "slow");
  const std::string got = drain(v, r);
  EXPECT_EQ(got.size(), end);
  EXPECT_EQ(first_mismatch(18, 0, got), std::string::npos);
}

TEST(SpillLocking, AReadInsideTheFileDoesNotHoldTheStream) {
  SpillVolume sv(limits(1 * MiB, 1 * MiB), 64 * MiB);
  Volume& v = *sv;
  auto w = writer(v, "slowread");
  std::uint64_t end = append_pattern(v, *w, 19, 0, 3 * MiB);
  auto r = reader(v, "slowread", kRootIno, O_NONBLOCK);
  std::string got;
  while (got.size() < 1 * MiB) got += read_now(v, r, 64 * KiB).value();  // memory tier gone
  {
    std::lock_guard lk(sv.faults->mu);
    sv.faults->hold_reads = true;
  }
  const auto unblock = [&] { sv.faults->open_gate(&Faults::hold_reads); };
  std::thread t([&] {
    auto res = read_now(v, r, 1 * MiB);
    EXPECT_TRUE(res);
    if (res) got += *res;
  });
  ASSERT_TRUE(sv.faults->wait_held(&Faults::reads_held, 1));
  EXPECT_TRUE(returns([&] { EXPECT_EQ(must(v.getattr(w->ino), "getattr").size, end); }, unblock));
  EXPECT_TRUE(returns([&] { EXPECT_TRUE(write_now(v, *w, end, pattern_bytes(19, end, 64 * KiB))); }, unblock));
  sv.faults->open_gate(&Faults::hold_reads);
  t.join();
  end += 64 * KiB;
  v.release(std::move(w));
  got += drain(v, r);
  EXPECT_EQ(got.size(), end);
  EXPECT_EQ(first_mismatch(19, 0, got), std::string::npos);
}

// ---- randomized --------------------------------------------------------------------

// Random appends (some past the end), patches, read-backs, truncates and
// reads, against a model of the file: every byte read or read back must
// match, and the whole delivered stream must hash like the model. Small
// caps make the tiers change often; the consumer comes only after a while
// (before that the stream spills); later, writes that find memory full
// with the consumer there wait and are let in by reads.
// CAPTUREFS_SPILL_SEEDS lowers the number of seeds (the sanitizer builds).
TEST(SpillRandom, InterleavingsAreByteExact) {
  unsigned seeds = 16;
  if (const char* e = std::getenv("CAPTUREFS_SPILL_SEEDS"); e != nullptr && *e != '\0')
    seeds = static_cast<unsigned>(std::max(1, std::atoi(e)));
  for (unsigned seed = 1; seed <= seeds; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    SpillVolume sv(limits(256 * KiB, 256 * KiB), 64 * MiB);
    Volume& v = *sv;
    auto w = rdwr(v, "r");
    std::string model;
    std::optional<Consumer> rd;
    std::string got;                // everything the consumer read, in order
    std::uint64_t consumed = 0;     // the consumer's last read started here
    std::uint64_t delivered = 0;    // ... and ended here
    std::uint64_t max_spilled = 0;
    auto random_bytes = [&](std::size_t n) {
      std::string s(n, '\0');
      for (auto& c : s) c = static_cast<char>(rng());
      return s;
    };
    // (While a write waits, the model holds its bytes and the stream not
    // yet: reads are measured against the stream's size before the read.)
    auto read_some = [&](std::size_t n) -> bool {
      const std::uint64_t at = rd->off;
      const std::uint64_t size = must(v.getattr(w->ino), "getattr").size;
      auto res = read_now(v, *rd, n);
      if (!res) {
        EXPECT_EQ(res.error(), EAGAIN);
        EXPECT_EQ(at, size);
        consumed = delivered = at;
        return false;
      }
      // At least what was there; more if the read let a waiting write in.
      EXPECT_GE(res->size(), std::min<std::uint64_t>(n, size - at));
      EXPECT_LE(res->size(), std::min<std::uint64_t>(n, model.size() - at));
      EXPECT_TRUE(*res == model.substr(at, res->size())) << "read at " << at;
      got += *res;
      consumed = at;
      delivered = at + res->size();
      return true;
    };
    auto write = [&](std::uint64_t off, const std::string& data) {
      WriteLog log;
      auto out = v.write(*w, off, as_bytes(data), 0, log.cb());
      if (model.size() < off + data.size()) model.resize(off + data.size());
      model.replace(off, data.size(), data);
      if (!is_parked(out)) {
        auto& r = std::get<0>(out);
        ASSERT_TRUE(r) << "write at " << off << ": errno " << r.error();
        return;
      }
      ASSERT_TRUE(rd) << "a write waited with no consumer to drain";
      for (int i = 0; i < 10000 && log.calls == 0; ++i) (void)read_some(1 + rng() % (128 * KiB));
      ASSERT_EQ(log.calls, 1) << "a waiting write was never let in";
      ASSERT_EQ(log.err, 0);
    };
    for (int step = 0; step < 500 && !::testing::Test::HasFatalFailure(); ++step) {
      if (step == 200) rd = reader(v, "r", kRootIno, O_NONBLOCK);
      max_spilled = std::max<std::uint64_t>(max_spilled, v.spill_used());
      const int op = static_cast<int>(rng() % 12);
      if (op < 4) {  // append, sometimes past the end
        const std::uint64_t gap = rng() % 6 == 0 ? rng() % 5000 : 0;
        write(model.size() + gap, random_bytes(1 + rng() % (96 * KiB)));
      } else if (op < 6) {  // patch unconsumed bytes; without a consumer also over the end
        if (model.size() <= delivered) continue;
        const std::uint64_t off = delivered + rng() % (model.size() - delivered);
        std::size_t n = 1 + rng() % (48 * KiB);
        if (rd) n = static_cast<std::size_t>(std::min<std::uint64_t>(n, model.size() - off));
        write(off, random_bytes(n));
      } else if (op < 7) {  // read back
        if (consumed > 0 && rng() % 4 == 0) {
          EXPECT_EQ(read_at(v, *w, rng() % consumed, 10).error(), EIO);
          continue;
        }
        if (model.size() <= consumed) continue;
        const std::uint64_t pos = consumed + rng() % (model.size() - consumed);
        const std::size_t n = 1 + rng() % (160 * KiB);
        auto back = read_at(v, *w, pos, n);
        ASSERT_TRUE(back) << "read-back at " << pos << ": errno " << back.error();
        EXPECT_TRUE(*back == model.substr(pos, n)) << "read-back at " << pos;
      } else if (op < 8) {  // truncate
        const std::uint64_t size = delivered + rng() % (model.size() - delivered + 64 * KiB);
        auto a = v.setattr(w->ino, size_attr(size));
        if (a) {
          model.resize(size);
        } else {
          EXPECT_TRUE(a.error() == ENOSPC || a.error() == EFBIG) << "errno " << a.error();
          EXPECT_TRUE(rd.has_value()) << "truncate failed with no consumer";
          EXPECT_GT(size, model.size());
        }
      } else if (rd) {  // read
        (void)read_some(1 + rng() % (128 * KiB));
      }
      ASSERT_EQ(must(v.getattr(w->ino), "getattr").size, model.size()) << "step " << step;
      ASSERT_LE(v.memory_used(), 256 * KiB);
    }
    EXPECT_GT(max_spilled, 0U) << "the stream never spilled";
    v.release(std::move(w));
    if (!rd) rd = reader(v, "r", kRootIno, O_NONBLOCK);
    got += drain(v, *rd, 100000);
    EXPECT_EQ(got.size(), model.size());
    EXPECT_EQ(fnv1a(got), fnv1a(model));
    EXPECT_TRUE(got == model);
    v.flush(**rd);
    v.release(std::move(*rd));
    EXPECT_EQ(v.spill_used(), 0U);
    EXPECT_EQ(v.memory_used(), 0U);
  }
}

// A writer thread and a reader thread (the reader starts late, so the
// stream spills first), with a third thread reading back and stat'ing:
// every byte arrives, in order (and TSan sees the locking).
TEST(SpillRandom, ConcurrentWriterReaderAndReadBack) {
  SpillVolume sv(limits(512 * KiB, 512 * KiB), 64 * MiB);
  Volume& v = *sv;
  auto w = rdwr(v, "mt");
  const std::uint64_t total = 24 * MiB;
  std::atomic<std::uint64_t> written{0};
  std::atomic<bool> stop{false};
  std::thread writer_thread([&] {
    std::mt19937_64 rng(99);
    std::uint64_t off = 0;
    while (off < total) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(1 + rng() % (256 * KiB), total - off));
      auto p = std::make_shared<std::promise<Result<std::size_t>>>();
      auto fut = p->get_future();
      auto out = v.write(*w, off, pattern_bytes(20, off, n), 0, [p](Result<std::size_t> r) { p->set_value(r); });
      Result<std::size_t> r = is_parked(out) ? (fut.wait_for(kGuard) == std::future_status::ready ? fut.get() : Errno{ETIMEDOUT})
                                             : std::get<0>(out);
      ASSERT_TRUE(r) << "write at " << off << ": errno " << r.error();
      off += n;
      written = off;
    }
  });
  std::thread back_thread([&] {
    std::mt19937_64 rng(5);
    while (!stop) {
      const std::uint64_t end = written;
      if (end == 0) continue;
      const std::uint64_t pos = rng() % end;
      auto res = read_at(v, *w, pos, 4096);
      if (res) EXPECT_EQ(first_mismatch(20, pos, *res), std::string::npos) << "read-back at " << pos;
      else EXPECT_EQ(res.error(), EIO);  // consumed meanwhile
      (void)v.getattr(w->ino);
    }
  });
  while (written < 8 * MiB) std::this_thread::yield();
  EXPECT_GT(v.spill_used(), 0U);
  auto r = reader(v, "mt");
  std::string got;
  got.reserve(total);
  std::mt19937_64 rng(3);
  while (got.size() < total) {
    auto p = std::make_shared<std::promise<Result<std::string>>>();
    auto fut = p->get_future();
    const std::uint64_t at = r.off;
    auto out = v.read(*r, at, 1 + rng() % (200 * KiB), 0, [p](Result<std::span<const std::byte>> res) {
      if (res) p->set_value(to_string(res.value()));
      else p->set_value(Errno{res.error()});
    });
    Result<std::string> res = std::string();
    if (is_parked(out)) {
      ASSERT_EQ(fut.wait_for(kGuard), std::future_status::ready) << "read at " << at << " never completed";
      res = fut.get();
    } else if (auto& x = std::get<0>(out)) {
      res = to_string(x.value());
    } else {
      res = Errno{x.error()};
    }
    ASSERT_TRUE(res) << "read at " << at << ": errno " << res.error();
    ASSERT_FALSE(res->empty()) << "EOF at " << at;
    got += *res;
    r.off += res->size();
  }
  writer_thread.join();
  stop = true;
  back_thread.join();
  EXPECT_EQ(first_mismatch(20, 0, got), std::string::npos);
  v.release(std::move(w));
  EXPECT_EQ(read_now(v, r, 10).value(), "");
  v.flush(*r);
  v.release(std::move(r));
  EXPECT_EQ(v.spill_used(), 0U);
}

}  // namespace
}  // namespace capturefs::test
