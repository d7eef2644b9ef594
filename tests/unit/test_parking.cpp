// The parking protocol: arm(), cancel(), fail_parked(), and completions
// racing cancellation.
#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <cerrno>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace capturefs::test {
namespace {

constexpr WaitKey kKey = 0x1000;

class Parking : public ::testing::Test {
 protected:
  Volume v{Limits{}};
  std::unique_ptr<Handle> w = writer(v, "s");
  Consumer r = reader(v, "s");

  void TearDown() override {
    if (w) v.release(std::move(w));
    if (r) v.release(std::move(r));
  }
};

TEST_F(Parking, CancelAfterArmCompletesWithEINTRExactlyOnce) {
  ReadLog log;
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 100, kKey, log.cb(&r))));
  v.arm(kKey);
  EXPECT_EQ(log.calls, 0);  // armed, still waiting
  v.cancel(kKey);
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, EINTR);
  v.cancel(kKey);  // again: the key is gone
  v.arm(kKey);
  EXPECT_EQ(log.calls, 1);
  // The cancelled read does not take later bytes.
  ASSERT_EQ(write_now(v, *w, 0, "x").value(), 1u);
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(read_now(v, r, 10).value(), "x");
}

TEST_F(Parking, CancelBeforeArmIsDeferredAndArmCompletesWithEINTR) {
  ReadLog log;
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 100, kKey, log.cb(&r))));
  v.cancel(kKey);
  EXPECT_EQ(log.calls, 0);  // not armed: nobody may answer yet
  v.arm(kKey);
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, EINTR);
  v.cancel(kKey);
  v.arm(kKey);
  EXPECT_EQ(log.calls, 1);
}

TEST_F(Parking, UnarmedReadIsSkippedByCompletersUntilArmed) {
  ReadLog log;
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 100, kKey, log.cb(&r))));
  ASSERT_EQ(write_now(v, *w, 0, "abc").value(), 3u);
  EXPECT_EQ(log.calls, 0);
  v.arm(kKey);
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, 0);
  EXPECT_EQ(log.data, "abc");
}

TEST_F(Parking, UnarmedReadSeesEOFOnlyOnceArmed) {
  ReadLog log;
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 100, kKey, log.cb(&r))));
  v.release(std::move(w));
  EXPECT_EQ(log.calls, 0);
  v.arm(kKey);
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, 0);
  EXPECT_EQ(log.data, "");
}

TEST_F(Parking, KeyZeroIsArmedImmediately) {
  ReadLog log;
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 100, 0, log.cb(&r))));
  ASSERT_EQ(write_now(v, *w, 0, "now").value(), 3u);
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.data, "now");
  v.cancel(0);  // not cancellable, and nothing parked
  EXPECT_EQ(log.calls, 1);
}

TEST_F(Parking, CancelOrArmOfAnUnknownKeyIsANoOp) {
  ReadLog log;
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 100, kKey, log.cb(&r))));
  v.arm(kKey);
  v.cancel(0xdead);
  v.arm(0xbeef);
  v.cancel(0);
  EXPECT_EQ(log.calls, 0);
  ASSERT_EQ(write_now(v, *w, 0, "ok").value(), 2u);
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.data, "ok");
}

TEST_F(Parking, KeysCanBeReusedAfterCompletion) {
  ReadLog a, b;
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 100, kKey, a.cb(&r))));
  v.arm(kKey);
  ASSERT_EQ(write_now(v, *w, 0, "1").value(), 1u);
  ASSERT_EQ(a.calls, 1);
  v.cancel(kKey);  // too late: nothing happens
  EXPECT_EQ(a.calls, 1);
  EXPECT_EQ(a.data, "1");
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 100, kKey, b.cb(&r))));
  v.arm(kKey);
  v.cancel(kKey);
  EXPECT_EQ(a.calls, 1);
  EXPECT_EQ(b.calls, 1);
  EXPECT_EQ(b.err, EINTR);
}

// Parks a write of `n` bytes at `off` that does not fit: the stream already
// holds a full block of max_stream bytes.
class ParkedWrites : public ::testing::Test {
 protected:
  static constexpr std::size_t kCap = 256 * KiB;
  Volume v{Limits{8 * MiB, kCap}};
  std::unique_ptr<Handle> w = writer(v, "s");
  Consumer r = reader(v, "s", kRootIno, O_NONBLOCK);

  void SetUp() override {
    const std::string full(kCap, 'f');
    ASSERT_EQ(write_now(v, *w, 0, full).value(), kCap);
  }
  void TearDown() override {
    if (w) v.release(std::move(w));
    if (r) v.release(std::move(r));
  }
};

TEST_F(ParkedWrites, ArmedWriteCancelledCompletesWithEINTRAndIsNotApplied) {
  WriteLog log;
  ASSERT_TRUE(is_parked(v.write(*w, kCap, as_bytes("late"), kKey, log.cb())));
  v.arm(kKey);
  EXPECT_EQ(log.calls, 0);
  v.cancel(kKey);
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, EINTR);
  EXPECT_EQ(v.getattr(w->ino)->size, kCap);
  EXPECT_EQ(read_now(v, r, 2 * kCap).value(), std::string(kCap, 'f'));
  EXPECT_EQ(read_now(v, r, 10).error(), EAGAIN);
  EXPECT_EQ(log.calls, 1);
  // The stream keeps working.
  ASSERT_EQ(write_now(v, *w, kCap, "next").value(), 4u);
  EXPECT_EQ(read_now(v, r, 10).value(), "next");
}

TEST_F(ParkedWrites, UnarmedWriteHoldsBackTheWritesQueuedBehindIt) {
  WriteLog first, second;
  ASSERT_TRUE(is_parked(v.write(*w, kCap, as_bytes("AB"), kKey, first.cb())));
  ASSERT_TRUE(is_parked(v.write(*w, kCap + 2, as_bytes("CD"), 0, second.cb())));
  EXPECT_EQ(read_now(v, r, kCap).value().size(), kCap);
  EXPECT_EQ(read_now(v, r, 10).error(), EAGAIN);  // reading on frees the block
  EXPECT_EQ(v.memory_used(), 0u);
  EXPECT_EQ(first.calls, 0);
  EXPECT_EQ(second.calls, 0);  // FIFO: waits for the unarmed head
  v.arm(kKey);
  EXPECT_EQ(first.calls, 1);
  EXPECT_EQ(first.n, 2u);
  EXPECT_EQ(second.calls, 1);
  EXPECT_EQ(second.n, 2u);
  EXPECT_EQ(read_now(v, r, 10).value(), "ABCD");
}

TEST_F(ParkedWrites, CancellingTheMiddleOfThreeKeepsTheOthersInOrder) {
  std::vector<int> order;
  WriteLog logs[3];
  for (int i = 0; i < 3; ++i) {
    const std::string data(2, static_cast<char>('a' + i));
    auto cb = [&, i](Result<std::size_t> res) {
      order.push_back(i);
      logs[i].cb()(res);
    };
    ASSERT_TRUE(is_parked(v.write(*w, kCap + 2 * static_cast<std::uint64_t>(i), as_bytes(data),
                                  kKey + static_cast<WaitKey>(i), cb)));
    v.arm(kKey + static_cast<WaitKey>(i));
  }
  v.cancel(kKey + 1);
  EXPECT_EQ(order, std::vector<int>{1});
  EXPECT_EQ(logs[1].err, EINTR);
  EXPECT_EQ(read_now(v, r, kCap).value().size(), kCap);
  (void)read_at(v, *r, r.off, 10);  // reads on: frees the block
  EXPECT_EQ(order, (std::vector<int>{1, 0, 2}));
  EXPECT_EQ(logs[0].n, 2u);
  EXPECT_EQ(logs[2].n, 2u);
  // The cancelled write's range reads as a gap.
  EXPECT_EQ(read_now(v, r, 10).value(), std::string("aa\0\0cc", 6));
}

TEST_F(ParkedWrites, CancelBeforeArmIsDeferredForWritesToo) {
  WriteLog log;
  ASSERT_TRUE(is_parked(v.write(*w, kCap, as_bytes("x"), kKey, log.cb())));
  v.cancel(kKey);
  EXPECT_EQ(log.calls, 0);
  EXPECT_EQ(read_now(v, r, kCap).value().size(), kCap);
  EXPECT_EQ(read_now(v, r, 10).error(), EAGAIN);  // room now, but not armed
  EXPECT_EQ(log.calls, 0);
  v.arm(kKey);
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, EINTR);
  EXPECT_EQ(read_now(v, r, 10).error(), EAGAIN);
}

TEST(FailParked, CompletesEveryKeyedParkedOpWithTheError) {
  Volume v(Limits{8 * MiB, 256 * KiB});
  auto wa = writer(v, "a");
  auto ra = reader(v, "a");
  auto wb = writer(v, "b");
  auto wc = writer(v, "c");
  auto rc = reader(v, "c");
  ReadLog read_armed, read_unarmed;
  WriteLog write_armed, write_queued;
  ASSERT_TRUE(is_parked(v.read(*ra, ra.off, 10, 1, read_armed.cb(&ra))));
  v.arm(1);
  const std::string full(256 * KiB, 'f');
  ASSERT_EQ(write_now(v, *wb, 0, full).value(), full.size());
  ASSERT_TRUE(is_parked(v.write(*wb, full.size(), as_bytes("x"), 2, write_armed.cb())));
  v.arm(2);
  ASSERT_TRUE(is_parked(v.write(*wb, full.size() + 1, as_bytes("y"), 3, write_queued.cb())));
  v.arm(3);
  ASSERT_TRUE(is_parked(v.read(*rc, rc.off, 10, 4, read_unarmed.cb(&rc))));  // never armed

  v.fail_parked(EIO);
  EXPECT_EQ(read_armed.calls, 1);
  EXPECT_EQ(read_armed.err, EIO);
  EXPECT_EQ(write_armed.calls, 1);
  EXPECT_EQ(write_armed.err, EIO);
  EXPECT_EQ(write_queued.calls, 1);
  EXPECT_EQ(write_queued.err, EIO);
  EXPECT_EQ(read_unarmed.calls, 1);
  EXPECT_EQ(read_unarmed.err, EIO);

  // Nothing is completed twice.
  for (WaitKey k = 1; k <= 4; ++k) {
    v.arm(k);
    v.cancel(k);
  }
  v.fail_parked(EIO);
  ASSERT_EQ(write_now(v, *wa, 0, "later").value(), 5u);
  EXPECT_EQ(read_armed.calls, 1);
  EXPECT_EQ(write_armed.calls, 1);
  EXPECT_EQ(write_queued.calls, 1);
  EXPECT_EQ(read_unarmed.calls, 1);
  EXPECT_EQ(v.getattr(wb->ino)->size, full.size());  // failed writes were not applied

  v.release(std::move(wa));
  v.release(std::move(ra));
  v.release(std::move(wb));
  v.release(std::move(wc));
  v.release(std::move(rc));
}

// Key 0 means "not cancellable", not "cannot be failed": fail_parked() is
// documented to end every parked operation (it runs at unmount, after which
// the callbacks would dangle).
TEST(FailParked, CompletesOpsParkedWithKeyZero) {
  Volume v(Limits{8 * MiB, 256 * KiB});
  auto wa = writer(v, "a");
  auto ra = reader(v, "a");
  auto wb = writer(v, "b");
  ReadLog rlog;
  WriteLog wlog;
  ASSERT_TRUE(is_parked(v.read(*ra, ra.off, 10, 0, rlog.cb(&ra))));
  const std::string full(256 * KiB, 'f');
  ASSERT_EQ(write_now(v, *wb, 0, full).value(), full.size());
  ASSERT_TRUE(is_parked(v.write(*wb, full.size(), as_bytes("x"), 0, wlog.cb())));

  v.fail_parked(EIO);
  EXPECT_EQ(rlog.calls, 1) << "a read parked with key 0 was not failed";
  EXPECT_EQ(rlog.err, EIO);
  EXPECT_EQ(wlog.calls, 1) << "a write parked with key 0 was not failed";
  EXPECT_EQ(wlog.err, EIO);

  // Clean up; nothing completes twice.
  v.release(std::move(wa));  // EOF to the read if it is still parked
  v.release(std::move(wb));
  auto rb = reader(v, "b");
  EXPECT_EQ(read_now(v, rb, 2 * full.size()).value().size(), full.size());
  (void)read_now(v, rb, 10);
  EXPECT_EQ(rlog.calls, 1);
  EXPECT_LE(wlog.calls, 1);
  v.release(std::move(ra));
  v.release(std::move(rb));
}

// ---- Races -----------------------------------------------------------------

// Runs `rounds` rounds on `threads` threads in lock step: before each round
// thread 0 runs setup(round); then every thread t runs race(t, round) at
// the same time; then thread 0 runs check(round).
void lockstep(int threads, int rounds, const std::function<void(int)>& setup,
              const std::function<void(int, int)>& race, const std::function<void(int)>& check) {
  // Helpers throw on unexpected failures; keep the threads in step.
  auto guarded = [](const auto& f) {
    try {
      f();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "exception: " << e.what();
    }
  };
  std::barrier sync(threads);
  auto body = [&](int t) {
    for (int round = 0; round < rounds; ++round) {
      if (t == 0) guarded([&] { setup(round); });
      sync.arrive_and_wait();
      guarded([&] { race(t, round); });
      sync.arrive_and_wait();
      if (t == 0) guarded([&] { check(round); });
      sync.arrive_and_wait();
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(body, t);
  body(0);
  for (auto& th : pool) th.join();
}

struct Outcome1 {
  std::atomic<int> calls{0};
  std::atomic<int> err{-1};  // 0: completed normally
  std::atomic<std::size_t> n{0};
};

// A parked read is completed by a write on one thread while another thread
// cancels it: exactly one callback, and the byte is either delivered or
// still queued. Several groups run at once on one volume.
TEST(ParkingRace, ReadCompletionRacingCancelIsDeliveredExactlyOnce) {
  constexpr int kGroups = 4, kRounds = 1500;
  Volume v(Limits{});
  std::atomic<int> delivered{0}, interrupted{0};
  std::vector<std::thread> groups;
  for (int g = 0; g < kGroups; ++g) {
    groups.emplace_back([&, g] {
      std::unique_ptr<Handle> w;
      Consumer r;
      Outcome1 out;
      WaitKey key = 0;
      lockstep(
          2, kRounds,
          [&](int round) {
            const std::string name = "g" + std::to_string(g) + "r" + std::to_string(round);
            w = writer(v, name);
            r = reader(v, name, kRootIno, O_NONBLOCK);
            r->nonblock = false;  // park, but let the check below peek without waiting
            out.calls = 0;
            out.err = -1;
            key = (static_cast<WaitKey>(g + 1) << 32) | static_cast<WaitKey>(round + 1);
            auto p = v.read(*r, 0, 10, key, [&out](Result<std::span<const std::byte>> res) {
              out.err = res ? 0 : res.error();
              out.n = res ? res.value().size() : 0;
              out.calls.fetch_add(1);
            });
            if (!is_parked(p)) ADD_FAILURE() << "read did not park";
            v.arm(key);
          },
          [&](int t, int) {
            if (t == 0) {
              auto res = write_now(v, *w, 0, "x");
              if (!res) ADD_FAILURE() << "write failed: " << res.error();
            } else {
              v.cancel(key);
            }
          },
          [&](int) {
            EXPECT_EQ(out.calls.load(), 1);
            r->nonblock = true;
            if (out.err == EINTR) {
              ++interrupted;
              EXPECT_EQ(read_at(v, *r, 0, 10).value(), "x");  // not delivered: still queued
            } else {
              ++delivered;
              EXPECT_EQ(out.err.load(), 0);
              EXPECT_EQ(out.n.load(), 1u);
              EXPECT_EQ(read_at(v, *r, 1, 10).error(), EAGAIN);  // nothing after it
            }
            v.release(std::move(w));
            EXPECT_EQ(read_at(v, *r, 1, 10).value(), "");
            v.release(std::move(r));
            EXPECT_EQ(out.calls.load(), 1);
          });
    });
  }
  for (auto& t : groups) t.join();
  EXPECT_EQ(delivered + interrupted, kGroups * kRounds);
  EXPECT_EQ(v.memory_used(), 0u);
  EXPECT_TRUE(v.list(kRootIno)->empty());
  std::printf("read race: %d delivered, %d interrupted\n", delivered.load(), interrupted.load());
}

// A parked write is completed by a read that makes room while another
// thread cancels it.
TEST(ParkingRace, WriteCompletionRacingCancelIsDeliveredExactlyOnce) {
  constexpr int kGroups = 4, kRounds = 600;
  constexpr std::size_t kCap = 256 * KiB;
  Volume v(Limits{64 * MiB, kCap});
  const std::string full(kCap, 'f');
  std::atomic<int> applied{0}, interrupted{0};
  std::vector<std::thread> groups;
  for (int g = 0; g < kGroups; ++g) {
    groups.emplace_back([&, g] {
      std::unique_ptr<Handle> w;
      Consumer r;
      Outcome1 out;
      WaitKey key = 0;
      lockstep(
          2, kRounds,
          [&](int round) {
            const std::string name = "g" + std::to_string(g) + "r" + std::to_string(round);
            w = writer(v, name);
            r = reader(v, name, kRootIno, O_NONBLOCK);
            if (write_now(v, *w, 0, full).value() != kCap) ADD_FAILURE() << "fill";
            out.calls = 0;
            out.err = -1;
            key = (static_cast<WaitKey>(g + 1) << 32) | static_cast<WaitKey>(round + 1);
            auto p = v.write(*w, kCap, as_bytes("y"), key, [&out](Result<std::size_t> res) {
              out.err = res ? 0 : res.error();
              out.n = res ? res.value() : 0;
              out.calls.fetch_add(1);
            });
            if (!is_parked(p)) ADD_FAILURE() << "write did not park";
            v.arm(key);
          },
          [&](int t, int) {
            if (t == 0) {
              auto got = read_at(v, *r, 0, kCap);
              if (!got || got.value() != full) ADD_FAILURE() << "drain";
              // Reading on frees the block; that lets the parked write in
              // unless the cancel won, so this read sees "y" or nothing.
              auto next = read_at(v, *r, kCap, 10);
              if (next ? next.value() != "y" : next.error() != EAGAIN)
                ADD_FAILURE() << "read after the block";
            } else {
              v.cancel(key);
            }
          },
          [&](int) {
            EXPECT_EQ(out.calls.load(), 1);
            auto left = read_at(v, *r, kCap, 10);
            if (out.err == EINTR) {
              ++interrupted;
              EXPECT_EQ(left.error(), EAGAIN);  // never applied
            } else {
              ++applied;
              EXPECT_EQ(out.err.load(), 0);
              EXPECT_EQ(out.n.load(), 1u);
              EXPECT_EQ(left.value(), "y");
            }
            v.release(std::move(w));
            EXPECT_EQ(read_at(v, *r, kCap + (out.err == EINTR ? 0 : 1), 10).value(), "");
            v.release(std::move(r));
            EXPECT_EQ(out.calls.load(), 1);
          });
    });
  }
  for (auto& t : groups) t.join();
  EXPECT_EQ(applied + interrupted, kGroups * kRounds);
  EXPECT_EQ(v.memory_used(), 0u);
  EXPECT_LE(v.memory_peak(), 64 * MiB);
  std::printf("write race: %d applied, %d interrupted\n", applied.load(), interrupted.load());
}

// arm(), cancel() and a completing write all race on a freshly parked,
// unarmed read (the FUSE interrupt may arrive while the op is being armed).
TEST(ParkingRace, ArmCancelAndCompletionRacingDeliverExactlyOnce) {
  constexpr int kGroups = 3, kRounds = 1000;
  Volume v(Limits{});
  std::atomic<int> total{0};
  std::vector<std::thread> groups;
  for (int g = 0; g < kGroups; ++g) {
    groups.emplace_back([&, g] {
      std::unique_ptr<Handle> w;
      Consumer r;
      Outcome1 out;
      WaitKey key = 0;
      lockstep(
          3, kRounds,
          [&](int round) {
            const std::string name = "g" + std::to_string(g) + "r" + std::to_string(round);
            w = writer(v, name);
            r = reader(v, name);
            out.calls = 0;
            out.err = -1;
            key = (static_cast<WaitKey>(g + 1) << 32) | static_cast<WaitKey>(round + 1);
            auto p = v.read(*r, 0, 10, key, [&out](Result<std::span<const std::byte>> res) {
              out.err = res ? 0 : res.error();
              out.n = res ? res.value().size() : 0;
              out.calls.fetch_add(1);
            });
            if (!is_parked(p)) ADD_FAILURE() << "read did not park";
          },
          [&](int t, int) {
            if (t == 0) v.arm(key);
            if (t == 1) v.cancel(key);
            if (t == 2) (void)write_now(v, *w, 0, "z");
          },
          [&](int) {
            EXPECT_EQ(out.calls.load(), 1);
            if (out.err != EINTR) {
              EXPECT_EQ(out.err.load(), 0);
              EXPECT_EQ(out.n.load(), 1u);
            }
            ++total;
            // Interrupted: the byte is still queued; delivered: only EOF is left.
            v.release(std::move(w));
            if (out.err == EINTR) {
              EXPECT_EQ(read_at(v, *r, 0, 10).value(), "z");
            }
            EXPECT_EQ(read_at(v, *r, 1, 10).value(), "");
            v.release(std::move(r));
            EXPECT_EQ(out.calls.load(), 1);
          });
    });
  }
  for (auto& t : groups) t.join();
  EXPECT_EQ(total.load(), kGroups * kRounds);
  EXPECT_EQ(v.memory_used(), 0u);
}

}  // namespace
}  // namespace capturefs::test
