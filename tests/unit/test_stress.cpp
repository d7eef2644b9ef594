// Concurrency stress: writer and reader threads per stream through a small
// memory budget, with every byte checked, and namespace churn alongside.
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace capturefs::test {
namespace {

using namespace std::chrono_literals;

// Deadlock guard only: a healthy run never comes close.
constexpr auto kGuard = 30s;

// A write that waits for its completion if it parks.
Result<std::size_t> blocking_write(Volume& v, Handle& h, std::uint64_t off,
                                   std::span<const std::byte> data, WaitKey key) {
  auto p = std::make_shared<std::promise<Result<std::size_t>>>();
  auto f = p->get_future();
  auto out = v.write(h, off, data, key, [p](Result<std::size_t> r) { p->set_value(r); });
  if (!is_parked(out)) return std::get<0>(std::move(out));
  if (key != 0) v.arm(key);
  if (f.wait_for(kGuard) != std::future_status::ready) return Errno{ETIMEDOUT};
  return f.get();
}

// A read at `off` that waits for its completion if it parks; returns a copy.
Result<std::string> blocking_read(Volume& v, Handle& h, std::uint64_t off, std::size_t n,
                                  WaitKey key) {
  auto p = std::make_shared<std::promise<Result<std::string>>>();
  auto f = p->get_future();
  auto out = v.read(h, off, n, key, [p](Result<std::span<const std::byte>> r) {
    if (r) {
      p->set_value(to_string(r.value()));
    } else {
      p->set_value(Errno{r.error()});
    }
  });
  if (!is_parked(out)) {
    auto& r = std::get<0>(out);
    if (!r) return Errno{r.error()};
    return to_string(r.value());
  }
  if (key != 0) v.arm(key);
  if (f.wait_for(kGuard) != std::future_status::ready) return Errno{ETIMEDOUT};
  return f.get();
}

struct StreamRun {
  std::uint64_t written = 0;
  std::uint64_t read = 0;
};

// Runs kStreams writer/reader pairs; optional extra work runs on the main
// thread until they finish.
void run_pipes(Volume& v, int streams, std::uint64_t bytes, std::size_t max_write,
               std::size_t max_read, const std::function<void(const std::atomic<bool>&)>& extra) {
  const std::uint64_t cap =
      std::min(v.limits().max_memory, v.limits().max_stream * static_cast<std::uint64_t>(streams));
  std::atomic<WaitKey> next_key{1};
  std::vector<std::unique_ptr<Handle>> ws;
  std::vector<Consumer> rs;
  for (int i = 0; i < streams; ++i) {
    const std::string name = "pipe" + std::to_string(i);
    ws.push_back(writer(v, name));
    rs.push_back(reader(v, name));
  }
  std::vector<StreamRun> runs(static_cast<std::size_t>(streams));
  std::vector<std::thread> threads;
  for (int i = 0; i < streams; ++i) {
    const auto id = static_cast<std::uint64_t>(i);
    StreamRun& run = runs[static_cast<std::size_t>(i)];
    threads.emplace_back([&, id, w = std::move(ws[id])]() mutable {
      std::mt19937 rng(static_cast<unsigned>(id * 7 + 1));
      std::uniform_int_distribution<std::size_t> size(1, max_write);
      std::uint64_t off = 0;
      bool keyed = false;
      while (off < bytes) {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(size(rng), bytes - off));
        const auto data = pattern_bytes(id, off, n);
        keyed = !keyed;
        const auto r = blocking_write(v, *w, off, data, keyed ? next_key.fetch_add(1) : 0);
        if (!r || r.value() != n) {
          ADD_FAILURE() << "stream " << id << ": write at " << off << " -> errno " << r.error();
          break;
        }
        off += n;
      }
      run.written = off;
      v.release(std::move(w));
    });
    threads.emplace_back([&, id, r = std::move(rs[id].h)]() mutable {
      std::mt19937 rng(static_cast<unsigned>(id * 13 + 5));
      std::uniform_int_distribution<std::size_t> size(1, max_read);
      std::uint64_t got = 0;
      bool keyed = false;
      for (;;) {
        keyed = !keyed;
        // Sequential: the file offset is what was received so far.
        const auto res = blocking_read(v, *r, got, size(rng), keyed ? next_key.fetch_add(1) : 0);
        if (!res) {
          ADD_FAILURE() << "stream " << id << ": read at " << got << " -> errno " << res.error();
          break;
        }
        if (res->empty()) break;  // EOF
        const std::size_t bad = first_mismatch(id, got, *res);
        if (bad != std::string::npos) {
          ADD_FAILURE() << "stream " << id << ": wrong byte at offset " << got + bad;
          break;
        }
        got += res->size();
        const std::size_t used = v.memory_used();
        if (used > cap) ADD_FAILURE() << "memory_used " << used << " > cap " << cap;
      }
      run.read = got;
      v.release(std::move(r));
    });
  }
  std::atomic<bool> done{false};
  std::thread waiter([&] {
    for (auto& t : threads) t.join();
    done = true;
  });
  if (extra) {
    try {
      extra(done);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "exception in the side work: " << e.what();
    }
  }
  waiter.join();
  for (int i = 0; i < streams; ++i) {
    const auto& run = runs[static_cast<std::size_t>(i)];
    EXPECT_EQ(run.written, bytes) << "stream " << i;
    EXPECT_EQ(run.read, bytes) << "stream " << i;
    EXPECT_EQ(v.lookup(kRootIno, "pipe" + std::to_string(i)).error(), ENOENT)
        << "delivered stream " << i << " kept its name";
  }
}

TEST(Stress, PipesThroughASmallGlobalBudget) {
  const Limits limits{512 * KiB, 512 * KiB};
  Volume v(limits);
  run_pipes(v, 4, 8 * MiB, 32 * KiB, 64 * KiB, nullptr);
  EXPECT_EQ(v.memory_used(), 0u);
  EXPECT_LE(v.memory_peak(), limits.max_memory);
  EXPECT_TRUE(v.list(kRootIno)->empty());
}

TEST(Stress, PipesThroughSmallPerStreamCaps) {
  const Limits limits{64 * MiB, 512 * KiB};
  Volume v(limits);
  run_pipes(v, 6, 4 * MiB, 64 * KiB, 16 * KiB, nullptr);
  EXPECT_EQ(v.memory_used(), 0u);
  EXPECT_LE(v.memory_peak(), 6 * limits.max_stream);
  EXPECT_TRUE(v.list(kRootIno)->empty());
}

TEST(Stress, TinyReadsAndWrites) {
  const Limits limits{256 * KiB, 256 * KiB};
  Volume v(limits);
  run_pipes(v, 4, 256 * KiB, 97, 61, nullptr);
  EXPECT_EQ(v.memory_used(), 0u);
  EXPECT_LE(v.memory_peak(), limits.max_memory);
}

// Namespace operations (which take the tree lock, then stream locks) run
// alongside the I/O (stream locks, budget, callbacks).
TEST(Stress, NamespaceChurnDuringIO) {
  const Limits limits{1 * MiB, 512 * KiB};
  Volume v(limits);
  const Ino churn = must(v.mkdir(kRootIno, "churn", 0755, Caller{}), "mkdir").ino;
  int rounds = 0;
  run_pipes(v, 4, 4 * MiB, 32 * KiB, 32 * KiB, [&](const std::atomic<bool>& done) {
    core::SetAttr chmod;
    chmod.set_mode = true;
    while (!done || rounds < 50) {
      const std::string k = std::to_string(rounds);
      auto d = v.mkdir(churn, "d" + k, 0755, Caller{});
      ASSERT_TRUE(d);
      auto w = writer(v, "s" + k, churn);
      // The pipes may hold all the memory: this write may park, and then
      // completes (discarded) when the stream is unlinked below.
      // The callback may run later on a pipe's thread (a reader there can let
      // the parked write in and complete it after unlocking), so it owns
      // its counter.
      auto write_done = std::make_shared<std::atomic<int>>(0);
      auto wr = v.write(*w, 0, as_bytes("churn"), 0, [write_done](Result<std::size_t> r) {
        EXPECT_EQ(r.value(), 5u);
        ++*write_done;
      });
      if (!is_parked(wr)) {
        ASSERT_EQ(std::get<0>(wr).value(), 5u);
        ++*write_done;
      }
      ASSERT_TRUE(v.rename(churn, "s" + k, d->ino, "t", 0));  // into d<k>
      auto e = v.mkdir(churn, "e" + k, 0755, Caller{});
      ASSERT_TRUE(e);
      // Swap: churn/e<k> becomes the stream, d<k>/t the directory.
      ASSERT_TRUE(v.rename(churn, "e" + k, d->ino, "t", core::kRenameExchange));
      EXPECT_EQ(v.lookup(churn, "e" + k)->ino, w->ino);
      EXPECT_EQ(v.lookup(d->ino, "t")->ino, e->ino);
      ASSERT_TRUE(v.rmdir(d->ino, "t"));
      ASSERT_TRUE(v.rmdir(churn, "d" + k));
      for (int i = 0; i < 4; ++i) {
        auto a = v.lookup(kRootIno, "pipe" + std::to_string(i));
        if (a) {
          chmod.mode = rounds % 2 ? 0600 : 0644;
          (void)v.setattr(a->ino, chmod);  // may race with the name going away
          (void)v.getattr(a->ino);
          v.forget(a->ino, 1);
        }
      }
      (void)v.list(kRootIno);
      (void)v.statfs();
      ASSERT_TRUE(v.unlink(churn, "e" + k));
      // Completed by now, or being completed by the thread that let it in.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (write_done->load() == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::yield();
      EXPECT_EQ(write_done->load(), 1);
      v.release(std::move(w));
      ++rounds;
    }
  });
  EXPECT_GE(rounds, 50);
  EXPECT_TRUE(v.list(churn)->empty());
  EXPECT_EQ(v.memory_used(), 0u);
  EXPECT_LE(v.memory_peak(), limits.max_memory);
}

// A million files created, written, consumed and gone, in 8 directories,
// by 2 threads: nothing may be left behind (names, nodes, memory).
// CAPTUREFS_MILLION lowers the count for quick runs.
TEST(Stress, AMillionFilesLeaveNothingBehind) {
  const char* env = std::getenv("CAPTUREFS_MILLION");
  const std::size_t total = env != nullptr ? std::strtoull(env, nullptr, 10) : 1000000;
  Volume v(Limits{});
  std::vector<Ino> dirs;
  for (int d = 0; d < 8; ++d)
    dirs.push_back(must(v.mkdir(kRootIno, "d" + std::to_string(d), 0755, Caller{}), "mkdir").ino);
  const std::uint64_t baseline = v.statfs().files;
  std::atomic<std::size_t> delivered{0};
  std::atomic<int> failures{0};
  auto work = [&](std::size_t first, std::size_t n) {
    const std::string data(100, 'x');
    for (std::size_t i = first; i < first + n; ++i) {
      const Ino dir = dirs[i % dirs.size()];
      const std::string name = "f" + std::to_string(i);
      auto c = v.create(dir, name, 0644, O_WRONLY | O_CREAT | O_EXCL, Caller{});
      if (!c || !write_now(v, *c->handle, 0, data)) {
        ++failures;
        return;
      }
      const Ino ino = c->attr.ino;
      v.release(std::move(c->handle));
      auto r = v.open(ino, O_RDONLY);
      if (!r) {
        ++failures;
        return;
      }
      Consumer cons{std::move(r.value()), 0};
      auto got = read_now(v, cons, 4096);
      auto eof = read_now(v, cons, 4096);
      if (!got || got->size() != 100 || !eof || !eof->empty()) {
        ++failures;
        return;
      }
      v.flush(*cons.h);  // close(): the name goes
      v.release(std::move(cons.h));
      v.forget(ino, 1);  // the kernel's reference from create
      delivered += got->size();
    }
  };
  std::thread t1(work, 0, total / 2);
  std::thread t2(work, total / 2, total - total / 2);
  t1.join();
  t2.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(delivered.load(), total * 100);
  EXPECT_EQ(v.statfs().files, baseline);  // every node is gone
  EXPECT_EQ(v.memory_used(), 0u);
  for (Ino d : dirs) EXPECT_TRUE(v.list(d)->empty());
}

}  // namespace
}  // namespace capturefs::test
