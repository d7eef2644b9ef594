// ByteQueue: FIFO order, growth accounting, patches, freeing.
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <random>
#include <vector>

#include "core/byte_queue.hpp"

namespace {

using capturefs::core::ByteQueue;

constexpr std::size_t kMin = ByteQueue::kMinBlock;
constexpr std::size_t kMax = ByteQueue::kMaxBlock;

// Bytes [from, from + n) of an endless, non-periodic-looking sequence.
std::vector<std::byte> seq(std::size_t n, std::uint64_t from = 0) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t x = from + i;
    v[i] = static_cast<std::byte>((x * 7 + (x >> 8) * 13 + (x >> 16)) & 0xff);
  }
  return v;
}

std::vector<std::byte> pop_n(ByteQueue& q, std::size_t n, std::size_t* freed) {
  std::vector<std::byte> out(n);
  const std::size_t got = q.pop(out, freed);
  EXPECT_EQ(got, n);
  out.resize(got);
  return out;
}

TEST(ByteQueue, StartsEmpty) {
  ByteQueue q;
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.size(), 0u);
  EXPECT_EQ(q.capacity(), 0u);
  EXPECT_EQ(q.growth_for(0), 0u);
  EXPECT_EQ(q.growth_for(1), kMin);
  EXPECT_EQ(q.growth_for(kMin), kMin);
  EXPECT_EQ(q.growth_for(kMin + 1), kMin + 1);  // a large need gets an exact block
  std::size_t freed = 0;
  std::vector<std::byte> out(16);
  EXPECT_EQ(q.pop(out, &freed), 0u);
  EXPECT_EQ(freed, 0u);
}

TEST(ByteQueue, AppendPopOrderAcrossManyBlocks) {
  ByteQueue q;
  std::uint64_t written = 0;
  std::size_t allocated = 0;
  std::mt19937 rng(1);
  // ~3 MiB in pieces of varying size: spans many 4 KiB..64 KiB blocks.
  while (written < 3 * 1024 * 1024) {
    const std::size_t n = std::uniform_int_distribution<std::size_t>(1, 50000)(rng);
    const std::size_t before = q.capacity();
    q.append(seq(n, written));
    allocated += q.capacity() - before;
    written += n;
    ASSERT_EQ(q.size(), written);
  }
  std::uint64_t read = 0;
  std::size_t freed_total = 0;
  while (!q.empty()) {
    const std::size_t n = std::min<std::size_t>(
        q.size(), std::uniform_int_distribution<std::size_t>(1, 70000)(rng));
    const auto got = pop_n(q, n, &freed_total);
    ASSERT_EQ(got, seq(n, read)) << "at offset " << read;
    read += n;
  }
  EXPECT_EQ(read, written);
  // Everything but (possibly) a partly filled tail block went back.
  EXPECT_LE(q.capacity(), kMax);
  EXPECT_EQ(freed_total + q.capacity(), allocated);
}

TEST(ByteQueue, BlocksGrowGeometricallyUpToTheMaximum) {
  ByteQueue q;
  // Fill each block exactly, then add one byte: the next block's size is
  // visible as the capacity step.
  std::vector<std::size_t> steps;
  std::size_t held = 0;
  for (int i = 0; i < 11; ++i) {
    const std::size_t before = q.capacity();
    q.append(seq(1));
    held += 1;
    steps.push_back(q.capacity() - before);
    q.append(seq(q.capacity() - held));
    held = q.capacity();
    ASSERT_EQ(q.size(), held);
  }
  const std::vector<std::size_t> expect = {256,       512,       1024,      2 * 1024,
                                           4 * 1024,  8 * 1024,  16 * 1024, 32 * 1024,
                                           64 * 1024, 64 * 1024, 64 * 1024};
  EXPECT_EQ(steps, expect);
}

TEST(ByteQueue, GrowthForMatchesAllocationForRandomOperations) {
  ByteQueue q;
  std::deque<std::byte> model;
  std::mt19937 rng(42);
  std::uint64_t counter = 0;
  auto pick = [&](std::size_t lo, std::size_t hi) {
    return std::uniform_int_distribution<std::size_t>(lo, hi)(rng);
  };
  int appends = 0, gap_appends = 0, pops = 0, patches = 0, peeks = 0, drops = 0;
  for (int step = 0; step < 4000; ++step) {
    const std::size_t op = pick(0, 11);
    if (op < 5 || model.empty()) {
      // append(data, zeros), including zero-length data and pure gaps
      const std::size_t kind = pick(0, 9);
      std::size_t n = kind < 5 ? pick(0, 5000) : kind < 8 ? pick(0, 70000) : pick(0, 400000);
      std::size_t zeros = pick(0, 2) == 0 ? pick(0, 20000) : 0;
      if (pick(0, 9) == 0) n = 0;  // gap only: append({}, zeros)
      if (pick(0, 19) == 0) zeros = 0;
      const auto data = seq(n, counter);
      counter += n;
      const std::size_t before = q.capacity();
      const std::size_t expect_growth = q.growth_for(zeros + n);
      q.append(data, zeros);
      ASSERT_EQ(q.capacity() - before, expect_growth)
          << "step " << step << ": append(" << n << " bytes, " << zeros << " zeros)";
      model.insert(model.end(), zeros, std::byte{0});
      model.insert(model.end(), data.begin(), data.end());
      ++appends;
      if (zeros != 0) ++gap_appends;
    } else if (op < 8) {
      // pop up to what is held
      const std::size_t k = pick(0, model.size());
      const std::size_t before = q.capacity();
      std::size_t freed = 0;
      std::vector<std::byte> out(k);
      ASSERT_EQ(q.pop(out, &freed), k);
      ASSERT_EQ(before - q.capacity(), freed) << "step " << step;
      ASSERT_TRUE(std::equal(out.begin(), out.end(), model.begin())) << "step " << step;
      model.erase(model.begin(), model.begin() + static_cast<std::ptrdiff_t>(k));
      ++pops;
    } else if (op == 10) {
      // peek a held range: copies, consumes nothing
      const std::size_t pos = pick(0, model.size());
      const std::size_t len = pick(0, std::min<std::size_t>(model.size() - pos, 300000));
      std::vector<std::byte> out(len);
      const std::size_t before = q.capacity();
      q.peek(pos, out);
      ASSERT_EQ(q.capacity(), before);
      ASSERT_TRUE(std::equal(out.begin(), out.end(),
                             model.begin() + static_cast<std::ptrdiff_t>(pos)))
          << "step " << step << ": peek(" << pos << ", " << len << ")";
      ++peeks;
    } else if (op == 11) {
      // drop from the front without copying
      const std::size_t k = pick(0, model.size());
      const std::size_t before = q.capacity();
      const std::size_t freed = q.drop(k);
      ASSERT_EQ(before - q.capacity(), freed) << "step " << step;
      model.erase(model.begin(), model.begin() + static_cast<std::ptrdiff_t>(k));
      ++drops;
    } else {
      // overwrite a held range
      const std::size_t pos = pick(0, model.size() - 1);
      const std::size_t len = pick(0, std::min<std::size_t>(model.size() - pos, 300000));
      const auto data = seq(len, counter * 3 + 11);
      const std::size_t before = q.capacity();
      q.overwrite(pos, data);
      ASSERT_EQ(q.capacity(), before);
      std::copy(data.begin(), data.end(), model.begin() + static_cast<std::ptrdiff_t>(pos));
      ++patches;
    }
    ASSERT_EQ(q.size(), model.size());
    ASSERT_GE(q.capacity(), q.size());
    // Keep the queue from growing without bound.
    if (model.size() > 4 * 1024 * 1024) {
      std::size_t freed = 0;
      const std::size_t before = q.capacity();
      std::vector<std::byte> out(model.size() / 2);
      ASSERT_EQ(q.pop(out, &freed), out.size());
      ASSERT_EQ(before - q.capacity(), freed);
      ASSERT_TRUE(std::equal(out.begin(), out.end(), model.begin()));
      model.erase(model.begin(), model.begin() + static_cast<std::ptrdiff_t>(out.size()));
    }
  }
  EXPECT_GT(appends, 500);
  EXPECT_GT(gap_appends, 100);
  EXPECT_GT(pops, 300);
  EXPECT_GT(patches, 100);
  EXPECT_GT(peeks, 100);
  EXPECT_GT(drops, 100);
  // Drain exactly what is held and compare with the model.
  std::vector<std::byte> rest(model.size());
  std::size_t freed = 0;
  ASSERT_EQ(q.pop(rest, &freed), model.size());
  EXPECT_TRUE(std::equal(rest.begin(), rest.end(), model.begin()));
  EXPECT_TRUE(q.empty());
  const std::size_t cap = q.capacity();
  EXPECT_EQ(q.clear(), cap);
  EXPECT_EQ(q.capacity(), 0u);
}

TEST(ByteQueue, GrowthForEqualsAllocationForGapAppends) {
  ByteQueue q;
  // A pure gap into an empty queue.
  EXPECT_EQ(q.growth_for(5000), 5000u);
  q.append({}, 5000);
  EXPECT_EQ(q.capacity(), 5000u);
  EXPECT_EQ(q.size(), 5000u);
  // A gap that spills over the block: part fills the room, rest is new.
  const std::size_t g = q.growth_for(3 + 10);
  const auto abc = seq(3);
  q.append(abc, 10);
  EXPECT_EQ(q.capacity(), 5000u + g);
  EXPECT_EQ(q.size(), 5013u);
  std::size_t freed = 0;
  const auto out = pop_n(q, 5013, &freed);
  for (std::size_t i = 0; i < 5010; ++i) ASSERT_EQ(out[i], std::byte{0}) << i;
  EXPECT_EQ(out[5010], abc[0]);
  EXPECT_EQ(out[5011], abc[1]);
  EXPECT_EQ(out[5012], abc[2]);
}

TEST(ByteQueue, ZeroLengthAppendAllocatesNothing) {
  ByteQueue q;
  EXPECT_EQ(q.growth_for(0), 0u);
  q.append({});
  q.append({}, 0);
  EXPECT_EQ(q.capacity(), 0u);
  EXPECT_EQ(q.size(), 0u);
}

TEST(ByteQueue, OverwriteAcrossBlockBoundaries) {
  ByteQueue q;
  // Three exactly filled blocks: [0,4K) [4K,12K) [12K,28K).
  q.append(seq(4096, 0));
  q.append(seq(8192, 4096));
  q.append(seq(16384, 12288));
  ASSERT_EQ(q.capacity(), 4096u + 8192u + 16384u);
  std::vector<std::byte> model = seq(28672, 0);

  // Spans all three blocks.
  const auto patch1 = std::vector<std::byte>(10000, std::byte{0xAB});
  q.overwrite(4000, patch1);
  std::copy(patch1.begin(), patch1.end(), model.begin() + 4000);

  // After consuming some, positions count from the new front.
  std::size_t freed = 0;
  auto head = pop_n(q, 4100, &freed);
  EXPECT_EQ(freed, 4096u);  // the first block went back
  EXPECT_TRUE(std::equal(head.begin(), head.end(), model.begin()));
  const auto patch2 = std::vector<std::byte>(300, std::byte{0xCD});
  q.overwrite(8192 - 4 - 100, patch2);  // crosses the 12K boundary (absolute)
  std::copy(patch2.begin(), patch2.end(), model.begin() + 4100 + (8192 - 4 - 100));

  // Overwrite the very last byte and a zero-length patch.
  const std::byte last[] = {std::byte{0x5A}};
  q.overwrite(q.size() - 1, last);
  model.back() = last[0];
  q.overwrite(q.size(), {});

  const auto rest = pop_n(q, q.size(), &freed);
  EXPECT_TRUE(std::equal(rest.begin(), rest.end(), model.begin() + 4100));
}

TEST(ByteQueue, PeekCopiesWithoutConsuming) {
  ByteQueue q;
  q.append(seq(4096, 0));
  q.append(seq(8192, 4096));
  q.append(seq(100, 12288));
  const std::size_t cap = q.capacity();
  std::vector<std::byte> out(5000);
  q.peek(4000, out);  // crosses the first boundary
  EXPECT_EQ(out, seq(5000, 4000));
  std::vector<std::byte> tail(200);
  q.peek(12388 - 200, tail);  // crosses the second, ends at the last byte
  EXPECT_EQ(tail, seq(200, 12188));
  q.peek(q.size(), {});  // empty peek at the end
  EXPECT_EQ(q.size(), 12388u);
  EXPECT_EQ(q.capacity(), cap);
  // Positions count from the current front.
  std::size_t freed = 0;
  (void)pop_n(q, 4100, &freed);
  std::vector<std::byte> after(10);
  q.peek(0, after);
  EXPECT_EQ(after, seq(10, 4100));
}

TEST(ByteQueue, DropDiscardsFromTheFrontAndReportsFreedCapacity) {
  ByteQueue q;
  q.append(seq(4096, 0));  // full 4 KiB block
  q.append(seq(100, 4096));  // 8 KiB block, partly used
  EXPECT_EQ(q.drop(0), 0u);
  EXPECT_EQ(q.drop(4000), 0u);
  EXPECT_EQ(q.size(), 196u);
  EXPECT_EQ(q.drop(96), 4096u);  // the first block is drained
  EXPECT_EQ(q.capacity(), 8192u);
  std::vector<std::byte> out(100);
  q.peek(0, out);
  EXPECT_EQ(out, seq(100, 4096));
  EXPECT_EQ(q.drop(100), 8192u);  // a drained partial tail goes too
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.capacity(), 0u);
  EXPECT_EQ(q.growth_for(100), ByteQueue::kMinBlock);  // growth restarts small
  EXPECT_EQ(q.drop(0), 0u);
  q.append(seq(8192, 7));
  EXPECT_EQ(q.drop(8192), 8192u);
  EXPECT_EQ(q.capacity(), 0u);
  EXPECT_EQ(q.drop(0), 0u);
}

TEST(ByteQueue, PopFreesDrainedBlocks) {
  ByteQueue q;
  q.append(seq(4096));  // exactly one full 4 KiB block
  q.append(seq(8192));  // exactly one full 8 KiB block
  ASSERT_EQ(q.capacity(), 12288u);
  std::size_t freed = 0;
  (void)pop_n(q, 4095, &freed);
  EXPECT_EQ(freed, 0u);  // the block still holds a byte
  (void)pop_n(q, 1, &freed);
  EXPECT_EQ(freed, 4096u);
  EXPECT_EQ(q.capacity(), 8192u);
  (void)pop_n(q, 8192, &freed);
  EXPECT_EQ(freed, 4096u + 8192u);  // a full tail block goes too
  EXPECT_EQ(q.capacity(), 0u);
  EXPECT_TRUE(q.empty());
}

// An idle stream must hold no memory: otherwise drained streams could
// starve the writers of other streams under the global cap.
TEST(ByteQueue, DrainedPartialTailIsFreed) {
  ByteQueue q;
  q.append(seq(10));
  std::size_t freed = 0;
  (void)pop_n(q, 10, &freed);
  EXPECT_EQ(freed, kMin);
  EXPECT_EQ(q.capacity(), 0u);
  EXPECT_EQ(q.growth_for(kMin), kMin);
  q.append(seq(kMin, 10));
  EXPECT_EQ(q.capacity(), kMin);
  const auto out = pop_n(q, kMin, &freed);
  EXPECT_EQ(out, seq(kMin, 10));
  EXPECT_EQ(freed, 2 * kMin);
  EXPECT_EQ(q.capacity(), 0u);
}

TEST(ByteQueue, ClearReleasesEverythingAndRestartsGrowth) {
  ByteQueue q;
  for (int i = 0; i < 6; ++i) q.append(seq(40000));
  const std::size_t cap = q.capacity();
  ASSERT_GT(cap, 0u);
  EXPECT_EQ(q.clear(), cap);
  EXPECT_EQ(q.size(), 0u);
  EXPECT_EQ(q.capacity(), 0u);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.growth_for(1), kMin);  // growth starts over at the minimum
  EXPECT_EQ(q.clear(), 0u);
  q.append(seq(3));
  EXPECT_EQ(q.capacity(), kMin);
  std::size_t freed = 0;
  EXPECT_EQ(pop_n(q, 3, &freed), seq(3));
}

// pop() is documented to move "up to out.size()" bytes; a larger buffer
// than what is held must return size(). Run in a child with a watchdog, as
// a broken pop() may never return.
TEST(ByteQueue, PopWithBufferLargerThanHeldReturnsWhatIsHeld) {
  EXPECT_EXIT(
      {
        alarm(5);
        ByteQueue q;
        q.append(seq(10));
        std::vector<std::byte> out(100);
        std::size_t freed = 0;
        const std::size_t got = q.pop(out, &freed);
        std::_Exit(got == 10 && q.empty() ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(ByteQueue, PopFromDrainedQueueWithKeptTailReturnsZero) {
  EXPECT_EXIT(
      {
        alarm(5);
        ByteQueue q;
        q.append(seq(10));
        std::vector<std::byte> out(10);
        std::size_t freed = 0;
        if (q.pop(out, &freed) != 10) std::_Exit(2);
        // Empty now, but the partly used block is kept for reuse.
        const std::size_t got = q.pop(out, &freed);
        std::_Exit(got == 0 ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
