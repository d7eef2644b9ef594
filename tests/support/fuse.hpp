// Whether FUSE works on this machine, and the skips of the tests that
// need it (they skip, saying why, without it).
#pragma once

#include <gtest/gtest.h>

#include <optional>
#include <string>

namespace capturefs::test {

/// \brief Why `capturefs mount` cannot work here (no /dev/fuse, or no
/// fusermount3), or nullopt if it can.
std::optional<std::string> fuse_unavailable_reason();

/// \brief Why a library mount cannot work here, or nullopt if it can. Only
/// /dev/fuse is needed: the tests run as root, and libfuse then mounts and
/// unmounts by itself.
std::optional<std::string> dev_fuse_missing();

}  // namespace capturefs::test

/// Skips the current test when `capturefs mount` cannot work here.
#define CAPTUREFS_REQUIRE_FUSE()                                                   \
  do {                                                                             \
    if (auto why_ = ::capturefs::test::fuse_unavailable_reason()) GTEST_SKIP() << *why_; \
  } while (0)

/// Skips the current test when a library mount cannot work here.
#define CAPTUREFS_REQUIRE_DEV_FUSE()                                                \
  do {                                                                              \
    if (auto why_ = ::capturefs::test::dev_fuse_missing()) GTEST_SKIP() << *why_;   \
  } while (0)
