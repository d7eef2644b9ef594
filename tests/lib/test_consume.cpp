// libcapturefs in-process: a program mounts through capturefs::Mount and
// consumes with callbacks, while real writer processes write into the mount.
#include <fcntl.h>
#include <sys/stat.h>

#include <atomic>
#include <deque>
#include <random>
#include <sstream>

#include "lib_support.hpp"

namespace capturefs::test {
namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;

// Every name below the mount that is not a directory (recursively).
std::vector<std::string> files_below(const std::string& root, const std::string& rel = "") {
  std::vector<std::string> out;
  const std::string dir = rel.empty() ? root : root + "/" + rel;
  for (const auto& name : list_dir(dir)) {
    const std::string r = rel.empty() ? name : rel + "/" + name;
    struct stat st{};
    if (::lstat((root + "/" + r).c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      auto sub = files_below(root, r);
      out.insert(out.end(), sub.begin(), sub.end());
    } else {
      out.push_back(r);
    }
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

// ---------------------------------------------------------------------------
// 100 files from 8 parallel writer processes: every byte, in order, every
// stream complete, names gone afterwards, clean unmount.
TEST(LibConsume, HundredFilesFromEightWritersArriveCompleteAndInOrder) {
  CAPTUREFS_REQUIRE_DEV_FUSE();
  capturefs::Options opt;
  opt.max_memory = 64 * kMiB;
  opt.max_stream = 16 * kMiB;
  LibMount lm(opt);
  Collector col;
  capturefs::ConsumeOptions co;
  co.threads = 4;
  capturefs::Consumer consumer = lm.mount().consume(col.callbacks(), co);

  // Sizes: edge cases first, then skewed random sizes up to 4 MiB.
  std::mt19937_64 rng(20240611);
  const std::uint64_t fixed[] = {0, 1, 4095, 4096, 4097, 131072, 262144 + 1, kMiB, 2 * kMiB + 3, 4 * kMiB};
  const std::size_t blocks[] = {1000, 4096, 65536, 131072 + 5, kMiB};
  std::vector<std::vector<FileSpec>> per_writer(8);
  std::uint64_t total = 0;
  for (int i = 0; i < 100; ++i) {
    FileSpec f;
    if (i % 10 == 0) f.rel = "deep/er/f" + std::to_string(i) + ".bin";
    else if (i % 2 == 0) f.rel = "w" + std::to_string(i % 8) + "/f" + std::to_string(i) + ".bin";
    else f.rel = "f" + std::to_string(i) + ".bin";
    if (static_cast<std::size_t>(i) < std::size(fixed)) {
      f.size = fixed[i];
    } else {
      const double r = std::uniform_real_distribution<double>(0, 1)(rng);
      f.size = static_cast<std::uint64_t>(r * r * r * 4.0 * kMiB);
    }
    f.seed = 1000 + static_cast<std::uint64_t>(i);
    f.block = blocks[static_cast<std::size_t>(i) % std::size(blocks)];
    total += f.size;
    per_writer[static_cast<std::size_t>(i) % 8].push_back(f);
  }

  std::vector<Child> writers;
  for (const auto& files : per_writer) writers.push_back(start_writer(lm.path(), files));
  std::map<std::string, Written> written;
  for (auto& w : writers) {
    const int st = w.wait_or_kill(60s);
    EXPECT_TRUE(exited_with(st, 0)) << w.describe() << ": " << status_string(st) << "\n" << w.err();
    auto part = parse_written(w.out());
    written.insert(part.begin(), part.end());
  }
  ASSERT_EQ(written.size(), 100U) << "the writers reported fewer files";

  ASSERT_TRUE(col.wait_closed(100, 60s)) << "closed " << col.closed() << " of 100 streams";
  EXPECT_TRUE(col.problems().empty()) << join(col.problems());
  const auto seen = col.by_path();
  EXPECT_EQ(seen.size(), 100U);
  std::uint64_t delivered = 0;
  for (const auto& [rel, w] : written) {
    auto it = seen.find(rel);
    ASSERT_NE(it, seen.end()) << rel << " was never handed to the consumer";
    const auto& s = it->second;
    EXPECT_EQ(s.start_offset, 0U) << rel;
    EXPECT_TRUE(s.in_order) << rel;
    EXPECT_TRUE(s.end.complete) << rel << ": " << s.end.reason;
    EXPECT_EQ(s.end.total, w.size) << rel;
    EXPECT_EQ(s.bytes, w.size) << rel;
    EXPECT_EQ(s.sha256, w.sha256) << rel << " (" << w.size << " bytes)";
    delivered += s.bytes;
  }
  EXPECT_EQ(delivered, total);

  // A stream handed over completely leaves no name and no memory behind.
  EXPECT_TRUE(eventually([&] { return files_below(lm.path()).empty(); }, 10s))
      << "left in the mount: " << join(files_below(lm.path()));
  EXPECT_TRUE(eventually([&] { return lm.mount().memory_used() == 0; }, 10s))
      << "memory_used() = " << lm.mount().memory_used();
  EXPECT_LE(lm.mount().memory_peak(), opt.max_memory);

  consumer.close();
  lm.unmount();
  EXPECT_FALSE(is_mountpoint(lm.path())) << "still mounted after Mount::unmount()";
}

// ---------------------------------------------------------------------------
// A slow consumer (1 ms per 16 KiB chunk) and a fast 64 MiB writer, with
// 8 MiB of memory: memory stays under the cap, nothing is lost, and another
// consumer's streams (20 small files) get through while the slow stream is
// still in progress.
//
// Two configurations. max_stream = max_memory = 8 MiB: the slow stream may
// fill the whole budget, and the small files' writes then only get in when
// the slow consumer frees a block and they win it from the big writer; they
// still finish well before the big stream does (typically when ~50 of its
// 64 MiB are through). max_stream = 4 MiB leaves the other half of the
// budget to other streams: they go through at once (at ~3 MiB).
struct SlowCase {
  const char* name;
  std::uint64_t max_stream;
};

class SlowConsumer : public ::testing::TestWithParam<SlowCase> {};

INSTANTIATE_TEST_SUITE_P(LibConsume, SlowConsumer,
                         ::testing::Values(SlowCase{"stream_cap_equals_memory_cap", 8 * kMiB},
                                           SlowCase{"stream_cap_half_of_memory_cap", 4 * kMiB}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST_P(SlowConsumer, BoundsMemoryAndOtherStreamsKeepFlowing) {
  CAPTUREFS_REQUIRE_DEV_FUSE();
  capturefs::Options opt;
  opt.max_memory = 8 * kMiB;
  opt.max_stream = GetParam().max_stream;
  LibMount lm(opt);

  Collector slow;
  std::atomic<std::uint64_t> slow_chunks{0};
  slow.before_data = [&](const capturefs::Chunk&) {
    ++slow_chunks;
    std::this_thread::sleep_for(1ms);  // the consumer under test is slow; not a synchronisation
  };
  capturefs::ConsumeOptions so;
  so.globs = {"big.bin"};
  so.threads = 1;
  so.chunk = 16 * 1024;
  capturefs::Consumer slow_c = lm.mount().consume(slow.callbacks(), so);

  Collector fast;
  capturefs::ConsumeOptions fo;
  fo.globs = {"small/*"};
  fo.threads = 2;
  capturefs::Consumer fast_c = lm.mount().consume(fast.callbacks(), fo);

  const std::uint64_t big = 64 * kMiB;
  Child big_writer = start_writer(lm.path(), {{"big.bin", big, 7, kMiB}});
  ASSERT_TRUE(slow.wait_bytes("big.bin", kMiB, 30s)) << "the slow consumer got nothing";

  std::vector<FileSpec> smalls;
  for (int i = 0; i < 20; ++i)
    smalls.push_back({"small/s" + std::to_string(i), 1000 + static_cast<std::uint64_t>(i) * 9000,
                      100 + static_cast<std::uint64_t>(i), 64 * 1024});
  Child small_writer = start_writer(lm.path(), smalls);
  ASSERT_TRUE(fast.wait_closed(20, 30s)) << "small streams closed: " << fast.closed() << " of 20";
  // Still in the middle of the big stream when all small ones are through.
  const std::uint64_t big_bytes_then = slow.bytes_of("big.bin");
  const bool big_closed_then = slow.is_closed("big.bin");
  const bool big_writer_done_then = big_writer.exited();
  RecordProperty("big_bytes_when_small_done", std::to_string(big_bytes_then));
  EXPECT_FALSE(big_closed_then) << "the slow stream ended before the small ones: nothing shows they flowed meanwhile";
  EXPECT_LT(big_bytes_then, big);
  // With 8 MiB buffered at most, a writer cannot be more than the cap (and
  // one pending 1 MiB write) ahead of its consumer.
  if (big_bytes_then + 9 * kMiB < big) {
    EXPECT_FALSE(big_writer_done_then) << "the writer finished 64 MiB while the consumer had only "
                                       << mib(big_bytes_then) << ": not held back";
  }
  const int small_st = small_writer.wait_or_kill(30s);
  EXPECT_TRUE(exited_with(small_st, 0)) << small_writer.err();
  const auto small_written = parse_written(small_writer.out());
  const auto small_seen = fast.by_path();
  ASSERT_EQ(small_written.size(), 20U);
  for (const auto& [rel, w] : small_written) {
    auto it = small_seen.find(rel);
    ASSERT_NE(it, small_seen.end()) << rel;
    EXPECT_TRUE(it->second.end.complete) << rel;
    EXPECT_EQ(it->second.sha256, w.sha256) << rel;
  }
  EXPECT_EQ(slow.paths(), std::set<std::string>{"big.bin"}) << "the slow consumer got other streams";

  ASSERT_TRUE(slow.wait_closed(1, 60s)) << "big.bin: " << mib(slow.bytes_of("big.bin")) << " delivered";
  const int big_st = big_writer.wait_or_kill(30s);
  EXPECT_TRUE(exited_with(big_st, 0)) << big_writer.err();
  const auto big_written = parse_written(big_writer.out());
  const auto big_seen = slow.by_path().at("big.bin");
  ASSERT_EQ(big_written.count("big.bin"), 1U);
  EXPECT_TRUE(big_seen.end.complete) << big_seen.end.reason;
  EXPECT_EQ(big_seen.bytes, big);
  EXPECT_EQ(big_seen.sha256, big_written.at("big.bin").sha256);
  EXPECT_TRUE(big_seen.in_order);
  EXPECT_GE(slow_chunks.load(), big / so.chunk);
  EXPECT_LE(lm.mount().memory_peak(), opt.max_memory) << "peak " << mib(lm.mount().memory_peak());
  EXPECT_TRUE(slow.problems().empty()) << join(slow.problems());
  EXPECT_TRUE(fast.problems().empty()) << join(fast.problems());
}

// ---------------------------------------------------------------------------
// on_data_async: chunks are acknowledged later by another thread; until
// then they count against the limits and hold the writer back.
TEST(LibConsume, AsyncAckFromAnotherThreadAppliesBackpressureUntilAcked) {
  CAPTUREFS_REQUIRE_DEV_FUSE();
  capturefs::Options opt;
  opt.max_memory = 4 * kMiB;
  opt.max_stream = 4 * kMiB;
  LibMount lm(opt);

  struct Pending {
    std::uint64_t id;
    std::uint64_t offset;
    std::string bytes;
    capturefs::Ack ack;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Pending> queue;
  std::uint64_t handed = 0;  // bytes given to on_data_async
  std::uint64_t acked = 0;
  bool gate_open = false;
  bool quit = false;
  std::set<std::thread::id> delivery_threads;
  Sha256 hash;
  std::uint64_t next = 0;
  bool in_order = true;
  bool closed = false;
  capturefs::StreamClose end;

  capturefs::Callbacks cb;
  cb.on_data_async = [&](const capturefs::Chunk& c, capturefs::Ack ack) {
    std::lock_guard lk(mu);
    delivery_threads.insert(std::this_thread::get_id());
    queue.push_back({c.id, c.offset, std::string(reinterpret_cast<const char*>(c.bytes.data()), c.bytes.size()),
                     std::move(ack)});
    handed += c.bytes.size();
    cv.notify_all();
  };
  cb.on_close = [&](const capturefs::StreamClose& e) {
    std::lock_guard lk(mu);
    closed = true;
    end = e;
    cv.notify_all();
  };
  std::thread::id acker_id;
  std::thread acker([&] {
    std::unique_lock lk(mu);
    acker_id = std::this_thread::get_id();
    for (;;) {
      cv.wait(lk, [&] { return quit || (gate_open && !queue.empty()); });
      if (quit) return;
      Pending p = std::move(queue.front());
      queue.pop_front();
      if (p.offset != next) in_order = false;
      next = p.offset + p.bytes.size();
      hash.update(p.bytes);
      acked += p.bytes.size();
      lk.unlock();
      p.ack();  // from this thread, long after on_data_async returned
      lk.lock();
      cv.notify_all();
    }
  });
  struct Joiner {
    std::thread& t;
    std::mutex& mu;
    std::condition_variable& cv;
    bool& quit;
    ~Joiner() {
      {
        std::lock_guard lk(mu);
        quit = true;
      }
      cv.notify_all();
      t.join();
    }
  } joiner{acker, mu, cv, quit};

  capturefs::Consumer consumer = lm.mount().consume(cb);
  const std::uint64_t size = 24 * kMiB;
  Child writer = start_writer(lm.path(), {{"async.bin", size, 42, 256 * 1024}});

  // Nothing is acknowledged: the writer must end up held in a write.
  const BlockState held = wait_writer_held(writer.pid(), lm.at("async.bin"), lm.path(), 30s);
  ASSERT_TRUE(held.blocked) << "the writer was not held while nothing was acknowledged: " << held.observation;
  {
    std::lock_guard lk(mu);
    EXPECT_GT(handed, 0U);
    EXPECT_EQ(acked, 0U);
    EXPECT_LE(handed, opt.max_stream) << "more unacknowledged bytes handed out than the stream may buffer";
    EXPECT_FALSE(closed);
  }
  EXPECT_FALSE(writer.exited());
  EXPECT_LE(lm.mount().memory_used(), opt.max_memory);

  {
    std::lock_guard lk(mu);
    gate_open = true;
  }
  cv.notify_all();
  {
    std::unique_lock lk(mu);
    // on_close may come before the last acks: it follows the last chunk
    // handed out, not the last one acknowledged.
    ASSERT_TRUE(cv.wait_for(lk, 60s, [&] { return closed && queue.empty() && acked == handed; }))
        << "acked " << acked << " of " << size;
  }
  const int st = writer.wait_or_kill(30s);
  EXPECT_TRUE(exited_with(st, 0)) << writer.err();
  const auto w = parse_written(writer.out());
  ASSERT_EQ(w.count("async.bin"), 1U);
  std::lock_guard lk(mu);
  EXPECT_TRUE(end.complete) << end.reason;
  EXPECT_EQ(end.total, size);
  EXPECT_EQ(acked, size);
  EXPECT_TRUE(in_order);
  EXPECT_EQ(hash.hex(), w.at("async.bin").sha256);
  EXPECT_FALSE(delivery_threads.contains(acker_id)) << "the acks were meant to come from another thread";
  EXPECT_LE(lm.mount().memory_peak(), opt.max_memory);
}

// ---------------------------------------------------------------------------
// AbortStream from on_data: on_close says incomplete, with the reason; the
// writer's later writes fail with EPIPE; the consumer carries on.
TEST(LibConsume, AbortStreamEndsTheStreamAndTheWriterGetsEpipe) {
  CAPTUREFS_REQUIRE_DEV_FUSE();
  capturefs::Options opt;
  opt.max_memory = 4 * kMiB;
  opt.max_stream = 4 * kMiB;
  LibMount lm(opt);

  Collector col;
  col.keep_data = true;
  // Only the big stream gets that far.
  col.before_data = [&](const capturefs::Chunk& c) {
    if (c.offset >= kMiB) throw capturefs::AbortStream("consumer gave up");
  };
  capturefs::Consumer consumer = lm.mount().consume(col.callbacks());

  const std::uint64_t size = 32 * kMiB;
  Child writer = start_writer_until_error(lm.at("doomed.bin"), size, 64 * 1024);
  const int st = writer.wait_or_kill(30s);
  EXPECT_TRUE(exited_with(st, 0)) << "the writer never saw an error: " << writer.out() << writer.err();
  std::istringstream out(writer.out());
  std::string word, ename;
  std::uint64_t before = 0;
  out >> word >> ename >> before;
  EXPECT_EQ(word, "ERROR") << writer.out();
  EXPECT_EQ(ename, "EPIPE") << writer.out();
  EXPECT_LT(before, size);

  ASSERT_TRUE(col.wait_closed(1, 10s));
  auto seen = col.by_path();
  ASSERT_EQ(seen.count("doomed.bin"), 1U);
  const auto& s = seen.at("doomed.bin");
  EXPECT_FALSE(s.end.complete);
  EXPECT_EQ(s.end.reason, "consumer gave up");
  EXPECT_GE(s.bytes, kMiB) << "the chunks before the abort";
  EXPECT_LT(s.bytes, kMiB + 256 * 1024) << "chunks after the abort";
  // The aborted stream's name is gone, and its memory with it.
  EXPECT_TRUE(eventually([&] { return stat_err(lm.at("doomed.bin")) == ENOENT; }, 10s));
  EXPECT_TRUE(eventually([&] { return lm.mount().memory_used() == 0; }, 10s))
      << "memory_used() = " << lm.mount().memory_used();

  // The consumer is still in business.
  Child next = start_writer(lm.path(), {{"after.txt", 5000, 9, 1000}});
  EXPECT_TRUE(exited_with(next.wait_or_kill(30s), 0)) << next.err();
  ASSERT_TRUE(col.wait_closed(2, 10s));
  seen = col.by_path();
  ASSERT_EQ(seen.count("after.txt"), 1U);
  EXPECT_TRUE(seen.at("after.txt").end.complete);
  EXPECT_EQ(seen.at("after.txt").sha256, parse_written(next.out()).at("after.txt").sha256);
  EXPECT_TRUE(col.problems().empty()) << join(col.problems());
}

// ---------------------------------------------------------------------------
// Globs and a predicate choose the streams; the others stay for a reader.
TEST(LibConsume, GlobAndPredicateFiltersLeaveOtherFilesToReaders) {
  CAPTUREFS_REQUIRE_DEV_FUSE();
  LibMount lm;
  Collector logs;
  logs.keep_data = true;
  capturefs::ConsumeOptions lo;
  lo.globs = {"*.log", "*.LOG"};
  capturefs::Consumer logs_c = lm.mount().consume(logs.callbacks(), lo);

  Collector dats;
  dats.keep_data = true;
  capturefs::ConsumeOptions po;
  po.globs = {"*"};  // ignored: the predicate decides
  po.filter = [](std::string_view p) { return p.starts_with("pred/") && p.ends_with(".dat"); };
  capturefs::Consumer dats_c = lm.mount().consume(dats.callbacks(), po);

  ASSERT_EQ(::mkdir(lm.at("sub").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(lm.at("pred").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(lm.at("sub/pred").c_str(), 0755), 0);
  const std::map<std::string, std::string> files = {
      {"a.log", payload("a.log", 3000)},       {"sub/c.log", payload("c", 70000)},
      {"UP.LOG", payload("UP", 10)},           {"b.txt", payload("b", 5000)},
      {"log.txt", payload("log.txt", 100)},    {"pred/x.dat", payload("x", 200000)},
      {"pred/y.txt", payload("y", 1234)},      {"other.dat", payload("other", 4321)},
      {"sub/pred/z.dat", payload("z", 999)},
  };
  for (const auto& [rel, data] : files) {
    UniqueFd fd = open_fd(lm.at(rel), O_WRONLY | O_CREAT | O_EXCL);
    ASSERT_TRUE(fd) << rel << ": " << errno_string(errno);
    ASSERT_EQ(write_all(fd.get(), data), "") << rel;
  }
  ASSERT_TRUE(logs.wait_closed(3, 10s)) << logs.closed();
  ASSERT_TRUE(dats.wait_closed(1, 10s)) << dats.closed();

  // The files no consumer takes are still there, whole, for a reader.
  for (const char* rel : {"b.txt", "log.txt", "pred/y.txt", "other.dat", "sub/pred/z.dat"}) {
    EXPECT_EQ(cat_file(lm.at(rel)), files.at(rel)) << rel;
  }
  EXPECT_EQ(logs.paths(), (std::set<std::string>{"a.log", "sub/c.log", "UP.LOG"}));
  EXPECT_EQ(dats.paths(), (std::set<std::string>{"pred/x.dat"}));
  for (const auto& [rel, s] : logs.by_path()) {
    EXPECT_EQ(s.data, files.at(rel)) << rel;
    EXPECT_TRUE(s.end.complete) << rel;
  }
  EXPECT_EQ(dats.by_path().at("pred/x.dat").data, files.at("pred/x.dat"));
  EXPECT_EQ(logs.closed(), 3U);
  EXPECT_EQ(dats.closed(), 1U);
}

}  // namespace
}  // namespace capturefs::test
