// When the daemon gives memory back after a burst (core/trim.hpp).
#include <gtest/gtest.h>

#include "core/trim.hpp"

namespace capturefs::core {
namespace {

using Load = TrimPolicy::Load;

TEST(TrimPolicy, AFallToAQuarterOfABurstOfFilesTrimsOnce) {
  TrimPolicy p;
  EXPECT_FALSE(p.observe({100, 0}));
  EXPECT_FALSE(p.observe({1000000, 0}));  // the burst
  EXPECT_FALSE(p.observe({300000, 0}));   // not yet a quarter
  EXPECT_TRUE(p.observe({250000, 0}));
  EXPECT_FALSE(p.observe({250000, 0}));  // the high mark starts again from there
  EXPECT_FALSE(p.observe({70000, 0}));
  EXPECT_TRUE(p.observe({62500, 0}));
}

TEST(TrimPolicy, AFallAfterABacklogOfBytesTrims) {
  TrimPolicy p;
  EXPECT_FALSE(p.observe({10, 1ULL << 30}));
  EXPECT_TRUE(p.observe({10, 0}));
  EXPECT_FALSE(p.observe({10, 0}));  // nothing new since
}

TEST(TrimPolicy, SmallLoadsNeverTrim) {
  TrimPolicy p;
  for (int i = 0; i < 100; ++i) {
    EXPECT_FALSE(p.observe({TrimPolicy::kFiles - 1, TrimPolicy::kBytes - 1}));
    EXPECT_FALSE(p.observe({0, 0}));
  }
}

}  // namespace
}  // namespace capturefs::core
