// Plain value types shared by the core and its front ends.
#pragma once

#include <cstdint>
#include <ctime>
#include <functional>
#include <span>
#include <string>
#include <variant>

#include "core/result.hpp"

namespace capturefs::core {

/// Inode number. 1 is the root directory; others come from a counter and
/// are never reused while the volume lives.
using Ino = std::uint64_t;
inline constexpr Ino kRootIno = 1;

enum class Kind : std::uint8_t { Directory, Stream, Symlink };

/// Preferred I/O size reported in st_blksize.
inline constexpr std::uint32_t kBlockSize = 128 * 1024;

/// Linux renameat2() flags, as the core understands them.
inline constexpr unsigned kRenameNoReplace = 1U << 0;
inline constexpr unsigned kRenameExchange = 1U << 1;

/// \brief Limits on buffered memory.
struct Limits {
  std::uint64_t max_memory = 1ULL << 30;  ///< all streams together
  std::uint64_t max_stream = 256ULL << 20;  ///< one stream
};

/// \brief Who asks. Front ends fill it from their request context.
struct Caller {
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
  std::int32_t pid = 0;
};

/// \brief Metadata the user may set: mode bits, owner and times.
struct Meta {
  std::uint32_t mode = 0;  ///< permission bits only (07777)
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
  timespec atime{};
  timespec mtime{};
  timespec ctime{};
};

/// \brief What stat() reports for a node.
struct Attr {
  Ino ino = 0;
  Kind kind = Kind::Stream;
  Meta meta;
  std::uint32_t nlink = 1;
  std::uint64_t size = 0;    ///< streams: bytes written so far
  std::uint64_t blocks = 0;  ///< 512-byte units of memory held
};

/// \brief Requested attribute changes; unset members stay as they are.
struct SetAttr {
  bool set_mode = false, set_uid = false, set_gid = false, set_size = false;
  bool set_atime = false, set_mtime = false;
  std::uint32_t mode = 0, uid = 0, gid = 0;
  std::uint64_t size = 0;
  timespec atime{}, mtime{};
};

struct DirEntry {
  std::string name;
  Ino ino = 0;
  Kind kind = Kind::Stream;
};

/// \brief How an open file uses its stream: writing, or consuming.
enum class Role : std::uint8_t { Writer, Reader };

/// \brief Identifies a parked operation so that a front end can cancel it
/// (FUSE uses the request handle). 0 means "not cancellable".
using WaitKey = std::uintptr_t;

/// \brief Marker: the operation is parked and its callback will be called
/// later, exactly once.
struct Parked {};

template <class T>
using Outcome = std::variant<Result<T>, Parked>;

/// \brief Completion of a parked write: bytes accepted, or an errno.
using WriteDone = std::function<void(Result<std::size_t>)>;
/// \brief Completion of a parked read: the bytes (empty at EOF, valid only
/// during the call), or an errno.
using ReadDone = std::function<void(Result<std::span<const std::byte>>)>;

timespec now();

}  // namespace capturefs::core
