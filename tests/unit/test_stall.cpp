// The stall rule ("never hang", Stream::check_stall): a write that waited
// the stall time for a consumer that made no room spills as if the stream
// had no consumer; if the spill tier cannot take it, it fails with ENOSPC
// and the stream is aborted; without spilling it keeps waiting. Time is
// passed in by hand (check_stalls(now)), so nothing here sleeps.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cerrno>
#include <filesystem>
#include <memory>
#include <string>

#include "core/spill.hpp"
#include "support.hpp"

namespace capturefs::test {
namespace {

constexpr std::int64_t kStall = 2'000'000'000;  // 2 s, as the default
constexpr std::size_t kChunk = 64 * 1024;

// A private directory for spill files (which have no names).
struct Dir {
  std::string path;
  Dir() {
    std::string t = (std::filesystem::temp_directory_path() / "capturefs-stall-XXXXXX").string();
    if (mkdtemp(t.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path = t;
  }
  ~Dir() { std::filesystem::remove_all(path); }
};

struct Fixture {
  Dir dir;
  std::unique_ptr<Volume> v;
  explicit Fixture(std::uint64_t spill_limit, bool spill = true) {
    core::Policy p;
    if (spill) p.spill = std::make_shared<core::SpillStore>(dir.path, spill_limit);
    p.stall_ns = kStall;
    Limits l;
    l.max_memory = 1 * MiB;
    l.max_stream = 1 * MiB;
    v = std::make_unique<Volume>(l, std::move(p));
  }
};

// Appends pattern(id) from `end` until a write parks; returns the new end
// (the parked write's offset).
std::uint64_t fill(Volume& v, Handle& w, std::uint64_t id, WriteLog& log, std::uint64_t end = 0) {
  for (int i = 0; i < 10000; ++i) {
    auto out = v.write(w, end, pattern_bytes(id, end, kChunk), 0, log.cb());
    if (is_parked(out)) return end;
    auto& r = std::get<0>(out);
    if (!r) throw std::runtime_error("write failed: errno " + std::to_string(r.error()));
    end += kChunk;
  }
  throw std::runtime_error("no write parked");
}

core::StreamStats stats_of(Volume& v) {
  auto all = v.snapshot();
  if (all.size() != 1) throw std::runtime_error("expected one stream");
  return all.front();
}

std::string drain(Volume& v, Consumer& r) {
  std::string out;
  for (;;) {
    auto res = read_now(v, r, 100000);
    if (!res) {
      EXPECT_EQ(res.error(), EAGAIN);
      return out;
    }
    if (res->empty()) return out;
    out += *res;
  }
}

TEST(Stall, AConsumerThatTakesNothingIsTreatedAsNoneAfterTheStallTime) {
  Fixture f(64 * MiB);
  Volume& v = *f.v;
  auto w = writer(v, "slow");
  auto r = reader(v, "slow", kRootIno, O_NONBLOCK);  // attached, reads nothing yet
  WriteLog log;
  std::uint64_t end = fill(v, *w, 1, log);
  EXPECT_EQ(v.spill_used(), 0U) << "a stream with a consumer spilled before the stall time";
  EXPECT_EQ(stats_of(v).wait, core::WaitReason::consumer);

  v.check_stalls(core::mono_ns() + kStall / 2);  // not yet
  EXPECT_EQ(log.calls, 0);
  v.check_stalls(core::mono_ns() + kStall + 1);  // now: it spills
  ASSERT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, 0);
  end += kChunk;
  EXPECT_GT(v.spill_used(), 0U);
  EXPECT_EQ(stats_of(v).wait, core::WaitReason::none);
  EXPECT_GT(stats_of(v).spilled, 0U);
  // Later writes go behind the spilled bytes at once.
  for (int i = 0; i < 32; ++i) {
    ASSERT_TRUE(write_now(v, *w, end, pattern_bytes(1, end, kChunk))) << "at " << end;
    end += kChunk;
  }
  // The consumer reads it all, in order.
  std::string got = drain(v, r);
  v.release(std::move(w));
  got += drain(v, r);
  EXPECT_EQ(got.size(), end);
  EXPECT_EQ(first_mismatch(1, 0, got), std::string::npos);
  EXPECT_EQ(v.spill_used(), 0U);
}

TEST(Stall, AConsumerThatKeepsUpStillHoldsItsWriterBack) {
  Fixture f(64 * MiB);
  Volume& v = *f.v;
  auto w = writer(v, "live");
  auto r = reader(v, "live", kRootIno, O_NONBLOCK);
  WriteLog log;
  std::uint64_t end = fill(v, *w, 2, log);
  std::string got = drain(v, r);  // makes room: the parked write goes in
  EXPECT_EQ(log.calls, 1);
  end += kChunk;
  v.check_stalls(core::mono_ns() + 10 * kStall);  // nothing waits: nothing to do
  end = fill(v, *w, 2, log, end);  // fills memory again and parks
  EXPECT_EQ(v.spill_used(), 0U) << "a keeping-up consumer's stream spilled";
  EXPECT_EQ(log.calls, 1);
  got += drain(v, r);
  EXPECT_EQ(log.calls, 2);
  end += kChunk;
  v.release(std::move(w));
  got += drain(v, r);
  EXPECT_EQ(got.size(), end);
  EXPECT_EQ(first_mismatch(2, 0, got), std::string::npos);
  EXPECT_EQ(v.spill_used(), 0U);
}

TEST(Stall, WhenTheSpillTierIsFullTheWriteFailsWithEnospcAndTheStreamIsAborted) {
  Fixture f(2 * MiB);  // the smallest spill limit
  Volume& v = *f.v;
  auto w = writer(v, "full");
  WriteLog log;
  const std::uint64_t end = fill(v, *w, 3, log);  // memory, then 2 MiB spilled, then waits
  EXPECT_GE(end, 3 * MiB);
  EXPECT_EQ(stats_of(v).wait, core::WaitReason::spill_limit);
  v.check_stalls(core::mono_ns() + kStall / 2);
  EXPECT_EQ(log.calls, 0);
  v.check_stalls(core::mono_ns() + kStall + 1);
  ASSERT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, ENOSPC);
  EXPECT_EQ(write_now(v, *w, end, "more").error(), ENOSPC) << "later writes too";
  // The consumer sees the stream end incomplete: EIO, never a short file.
  auto r = reader(v, "full", kRootIno, O_NONBLOCK);
  EXPECT_EQ(read_now(v, r, 10).error(), EIO);
  EXPECT_EQ(v.spill_used(), 0U);
  EXPECT_EQ(v.memory_used(), 0U);
  v.release(std::move(w));
}

TEST(Stall, APushConsumerIsToldWhyItsStreamEndedIncomplete) {
  Fixture f(2 * MiB);
  Volume& v = *f.v;
  auto w = writer(v, "told");
  auto r = reader(v, "told", kRootIno, O_NONBLOCK);  // takes nothing
  WriteLog log;
  fill(v, *w, 4, log);
  v.check_stalls(core::mono_ns() + kStall + 1);  // spills
  ASSERT_EQ(log.calls, 1);
  WriteLog log2;
  std::uint64_t end = v.getattr(w->ino)->size;
  while (!is_parked(v.write(*w, end, pattern_bytes(4, end, kChunk), 0, log2.cb()))) end += kChunk;
  EXPECT_EQ(stats_of(v).wait, core::WaitReason::spill_limit);
  v.check_stalls(core::mono_ns() + kStall + 1);
  ASSERT_EQ(log2.calls, 1);
  EXPECT_EQ(log2.err, ENOSPC);
  EXPECT_EQ(read_now(v, r, 10).error(), EIO);
  v.release(std::move(w));
}

TEST(Stall, WithoutSpillingAWriteWaitsAsLongAsItTakes) {
  Fixture f(0, /*spill=*/false);
  Volume& v = *f.v;
  auto w = writer(v, "nospill");
  auto r = reader(v, "nospill", kRootIno, O_NONBLOCK);
  WriteLog log;
  const std::uint64_t end = fill(v, *w, 5, log);
  v.check_stalls(core::mono_ns() + 100 * kStall);
  EXPECT_EQ(log.calls, 0);
  EXPECT_EQ(stats_of(v).wait, core::WaitReason::consumer);
  EXPECT_GE(stats_of(v).waited_ns, 0);
  std::string got = drain(v, r);
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, 0);
  v.check_stalls(core::mono_ns() + 100 * kStall);  // reports the resumption (logged)
  v.release(std::move(w));
  got += drain(v, r);
  EXPECT_EQ(got.size(), end + kChunk);
  EXPECT_EQ(first_mismatch(5, 0, got), std::string::npos);
}

TEST(Stall, AZeroStallTimeTurnsTheRuleOff) {
  Dir dir;
  core::Policy p;
  p.spill = std::make_shared<core::SpillStore>(dir.path, 64 * MiB);
  p.stall_ns = 0;
  Limits l;
  l.max_memory = 1 * MiB;
  l.max_stream = 1 * MiB;
  Volume v(l, std::move(p));
  auto w = writer(v, "off");
  auto r = reader(v, "off", kRootIno, O_NONBLOCK);
  WriteLog log;
  fill(v, *w, 6, log);
  v.check_stalls(core::mono_ns() + 1000 * kStall);
  EXPECT_EQ(log.calls, 0);
  EXPECT_EQ(v.spill_used(), 0U);
  drain(v, r);
  EXPECT_EQ(log.calls, 1);
  v.release(std::move(w));
  drain(v, r);
}

}  // namespace
}  // namespace capturefs::test
