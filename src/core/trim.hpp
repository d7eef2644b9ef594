// When to give freed memory back to the system.
//
// A burst (a million files alive at once, or a backlog of bytes up to the
// cap) leaves the allocator holding the freed memory: glibc keeps it in its
// arenas, so the daemon's RSS stays at the burst's size. The policy below
// says when a trim is worth it; the caller does the trimming (malloc_trim)
// on a thread of its own, never a FUSE worker.
#pragma once

#include <cstdint>

namespace capturefs::core {

class TrimPolicy {
 public:
  struct Load {
    std::uint64_t files = 0;  ///< nodes in the tree
    std::uint64_t bytes = 0;  ///< stream bytes held in memory
  };
  /// A load this large is a burst worth trimming after.
  static constexpr std::uint64_t kFiles = 4096;
  static constexpr std::uint64_t kBytes = 32ULL << 20;

  /// \brief Feeds a sample of the load. True when the load has fallen to a
  /// quarter or less of its highest sample since the last trim, and that
  /// high was a burst (at least kFiles files or kBytes bytes); the high
  /// mark then starts again from `now`.
  bool observe(Load now) {
    if (now.files > high_.files) high_.files = now.files;
    if (now.bytes > high_.bytes) high_.bytes = now.bytes;
    const bool files_fell = high_.files >= kFiles && now.files * 4 <= high_.files;
    const bool bytes_fell = high_.bytes >= kBytes && now.bytes * 4 <= high_.bytes;
    if (!files_fell && !bytes_fell) return false;
    high_ = now;
    return true;
  }

 private:
  Load high_;
};

}  // namespace capturefs::core
