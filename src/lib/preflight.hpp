// Checks made before mounting, so that a mount that cannot work fails with
// a message naming the path and the cause instead of libfuse's generic one.
#pragma once

#include <optional>
#include <string>

namespace capturefs::detail {

/// \brief Resolves `path` to an absolute mountpoint and checks it: it exists,
/// is a directory, is empty, is not already mounted, and /dev/fuse is usable.
/// Returns the absolute path, or nullopt with *error set.
std::optional<std::string> check_mountpoint(const std::string& path, std::string* error);

/// \brief The filesystem type mounted exactly at `abs` (from
/// /proc/self/mountinfo), or nullopt if nothing is mounted there.
std::optional<std::string> mounted_fstype(const std::string& abs);

}  // namespace capturefs::detail
