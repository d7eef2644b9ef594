// Budget: the global cap, waiter registration and peak.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "core/budget.hpp"
#include "core/stream.hpp"

namespace {

using capturefs::core::Budget;
using capturefs::core::Meta;
using capturefs::core::Parking;
using capturefs::core::Stream;

std::vector<std::shared_ptr<Stream>> locked(const std::vector<std::weak_ptr<Stream>>& w) {
  std::vector<std::shared_ptr<Stream>> out;
  for (const auto& x : w) out.push_back(x.lock());
  return out;
}

TEST(Budget, ReservesUpToTheCapAndNotBeyond) {
  Budget b(100);
  EXPECT_EQ(b.cap(), 100u);
  EXPECT_EQ(b.used(), 0u);
  EXPECT_TRUE(b.try_reserve(60, nullptr));
  EXPECT_FALSE(b.try_reserve(41, nullptr));
  EXPECT_EQ(b.used(), 60u);  // a failed reserve takes nothing
  EXPECT_TRUE(b.try_reserve(40, nullptr));
  EXPECT_EQ(b.used(), 100u);
  EXPECT_FALSE(b.try_reserve(1, nullptr));
  EXPECT_TRUE(b.try_reserve(0, nullptr));  // nothing always fits
  EXPECT_EQ(b.used(), 100u);
  EXPECT_TRUE(b.release(30).empty());
  EXPECT_EQ(b.used(), 70u);
  EXPECT_TRUE(b.try_reserve(30, nullptr));
  EXPECT_EQ(b.used(), 100u);
}

TEST(Budget, HugeRequestsFailWithoutOverflow) {
  Budget b(1000);
  ASSERT_TRUE(b.try_reserve(10, nullptr));
  EXPECT_FALSE(b.try_reserve(static_cast<std::size_t>(-1), nullptr));
  EXPECT_FALSE(b.try_reserve(static_cast<std::size_t>(-1) - 5, nullptr));
  EXPECT_EQ(b.used(), 10u);
}

TEST(Budget, PeakIsTheHighWaterMark) {
  Budget b(1000);
  EXPECT_EQ(b.peak(), 0u);
  ASSERT_TRUE(b.try_reserve(300, nullptr));
  ASSERT_TRUE(b.try_reserve(400, nullptr));
  EXPECT_EQ(b.peak(), 700u);
  (void)b.release(600);
  EXPECT_EQ(b.used(), 100u);
  EXPECT_EQ(b.peak(), 700u);
  ASSERT_TRUE(b.try_reserve(200, nullptr));
  EXPECT_EQ(b.peak(), 700u);
  ASSERT_FALSE(b.try_reserve(901, nullptr));  // failures do not move the peak
  EXPECT_EQ(b.peak(), 700u);
  ASSERT_TRUE(b.try_reserve(700, nullptr));
  EXPECT_EQ(b.peak(), 1000u);
  (void)b.release(1000);
}

TEST(Budget, ReleaseHandsBackTheRegisteredWaitersOnce) {
  Budget b(100);
  Parking parking;
  auto s1 = std::make_shared<Stream>(b, parking, 100, Meta{});
  auto s2 = std::make_shared<Stream>(b, parking, 100, Meta{});
  auto s3 = std::make_shared<Stream>(b, parking, 100, Meta{});
  ASSERT_TRUE(b.try_reserve(90, s3));  // a success registers nothing
  EXPECT_FALSE(b.try_reserve(20, s1));
  EXPECT_FALSE(b.try_reserve(50, s1));  // registered only once
  EXPECT_FALSE(b.try_reserve(11, s2));
  EXPECT_FALSE(b.try_reserve(11, nullptr));  // no waiter given: nothing kept

  const auto woken = locked(b.release(10));
  EXPECT_EQ(b.used(), 80u);
  ASSERT_EQ(woken.size(), 2u);
  EXPECT_NE(std::find(woken.begin(), woken.end(), s1), woken.end());
  EXPECT_NE(std::find(woken.begin(), woken.end(), s2), woken.end());

  // The list was handed over: the next release returns nobody.
  EXPECT_TRUE(b.release(10).empty());
  EXPECT_EQ(b.used(), 70u);
  (void)b.release(70);
}

TEST(Budget, WaitersAreHeldWeakly) {
  Budget b(10);
  Parking parking;
  ASSERT_TRUE(b.try_reserve(10, nullptr));
  {
    auto gone = std::make_shared<Stream>(b, parking, 10, Meta{});
    EXPECT_FALSE(b.try_reserve(5, gone));
  }
  const auto woken = b.release(10);
  ASSERT_EQ(woken.size(), 1u);
  EXPECT_TRUE(woken[0].expired());
}

}  // namespace
