// `capturefs umount` (umount.cpp).
#pragma once

#include <string>

namespace capturefs::cli {

/// \brief Unmounts `mountpoint` (fusermount3 -u; -uz with `lazy`; a dead
/// mount is always detached), then, unless `no_wait`, waits for its daemon
/// to exit, showing what is left to deliver and naming what it discarded.
int run_umount(const std::string& mountpoint, bool lazy, bool no_wait);

}  // namespace capturefs::cli
