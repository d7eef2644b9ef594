// Spilling: the bytes of a stream that do not fit the memory caps, kept in
// an unnamed temporary file while nobody is there to read them.
//
// A stream's storage has two tiers (stream.hpp, SPILLING): its front in
// memory (ByteQueue), and behind it, once memory is full and the stream has
// no consumer, a *spill tier*: stream offsets mapped to runs of the stream's
// own spill file. The file is opened with O_TMPFILE | O_EXCL, so it never
// has a name: nothing is left on disk however the daemon ends (SIGKILL
// included), and nobody else can open it.
//
// The pieces here are deliberately separate:
//   SpillFile   the file: plain syscalls on a descriptor, no state, no lock;
//   SpillMap    where the tier's bytes are: pure bookkeeping, no I/O;
//   SpillStore  the directory, the shared byte limit (a Budget) and the
//               opener, shared by every stream of a volume.
//
// The spill file is log-structured: every write goes to fresh file space
// (a stream's file offsets only grow), and a patch of spilled bytes maps
// the patched stream range to the new run instead of overwriting the old
// one. So a run a reader is copying from never changes under it, and the
// I/O can run with no lock held (see stream.hpp for the protocol). Runs no
// longer mapped are given back with fallocate(PUNCH_HOLE).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/budget.hpp"
#include "core/result.hpp"

namespace capturefs::core {

/// \brief A run of a spill file: [off, off + len).
struct FileRun {
  std::uint64_t off = 0;
  std::uint64_t len = 0;
};

/// \brief One stream's spill file. Holds only the descriptor: every method
/// is one or a few syscalls, safe from any thread, and is never called with
/// a core lock held. The destructor closes it (the space goes with it).
/// Virtual so that tests can inject failures and delays.
class SpillFile {
 public:
  explicit SpillFile(int fd) : fd_(fd) {}
  virtual ~SpillFile();
  SpillFile(const SpillFile&) = delete;
  SpillFile& operator=(const SpillFile&) = delete;

  /// \brief Writes all of `data` at `off`. 0 or an errno.
  virtual int write_at(std::uint64_t off, std::span<const std::byte> data);
  /// \brief Reads exactly out.size() bytes at `off`. 0 or an errno (EIO for
  /// an unexpected end of file).
  virtual int read_at(std::uint64_t off, std::span<std::byte> out);
  /// \brief Frees the blocks of [off, off + len). 0 or an errno.
  virtual int punch(std::uint64_t off, std::uint64_t len);

  int fd() const { return fd_; }

 protected:
  SpillFile() = default;

 private:
  int fd_ = -1;
};

/// \brief Where spilled bytes go, and how many may be there at once; shared
/// by the streams of a volume. Thread-safe.
class SpillStore {
 public:
  using Opener = std::function<Result<std::shared_ptr<SpillFile>>()>;

  /// \brief Spills into unnamed files in `dir`, at most `limit` bytes at
  /// once (all streams together).
  SpillStore(std::string dir, std::uint64_t limit);
  /// \brief The same with another way to open files (tests).
  SpillStore(std::string dir, std::uint64_t limit, Opener open);
  SpillStore(const SpillStore&) = delete;
  SpillStore& operator=(const SpillStore&) = delete;

  /// \brief Checks that `dir` takes O_TMPFILE files (creates one and closes
  /// it). 0 if it does, else the errno, and *error names the directory and
  /// what failed (without the errno's text).
  static int probe(const std::string& dir, std::string* error);

  /// \brief A new unnamed file in the directory. A syscall: never call it
  /// with a core lock held. Logs the first failure.
  Result<std::shared_ptr<SpillFile>> open();

  const std::string& dir() const { return dir_; }
  /// \brief The spill byte limit, as a budget: streams reserve before they
  /// map bytes into their tier and give back when the bytes leave it.
  Budget& budget() { return budget_; }
  std::uint64_t limit() const { return budget_.cap(); }

  /// \brief Whether punching holes still works here (it is given up, with
  /// one warning, after the first failure: then space comes back only when
  /// a stream's tier is empty and its file is closed).
  bool punching() const { return punch_ok_.load(std::memory_order_relaxed); }
  void punch_failed(int err);
  /// \brief The file system said ENOSPC or EDQUOT before the limit was
  /// reached: logged once; writers wait as if the limit were reached.
  void disk_full(int err);
  /// \brief Counts events that freed spill space (bytes left a tier): a
  /// stream whose file write or open failed tries again only after one.
  void note_freed() { freed_.fetch_add(1, std::memory_order_relaxed); }
  std::uint64_t freed() const { return freed_.load(std::memory_order_relaxed); }

 private:
  const std::string dir_;
  Budget budget_;
  Opener open_;
  std::atomic<bool> punch_ok_{true};
  std::atomic<bool> warned_open_{false};
  std::atomic<bool> warned_full_{false};
  std::atomic<std::uint64_t> freed_{0};
};

/// \brief Where a stream's spilled bytes are: stream offsets [begin, end)
/// as a sequence of extents, each a run of the spill file or zeros (a gap
/// left by a write past the end, or a truncate that grew the stream: they
/// take no disk). Not thread-safe: the owning Stream's mutex guards it.
class SpillMap {
 public:
  static constexpr std::uint64_t kZeros = ~std::uint64_t{0};

  /// \brief A part of a requested range: stream offset, length, and file
  /// offset (kZeros: zero bytes, nothing to read).
  struct Piece {
    std::uint64_t off = 0;
    std::uint64_t len = 0;
    std::uint64_t foff = 0;
  };

  bool empty() const { return begin_ == end_; }
  std::uint64_t begin() const { return begin_; }
  std::uint64_t end() const { return end_; }
  std::uint64_t size() const { return end_ - begin_; }
  std::size_t extents() const { return ext_.size(); }

  /// \brief Starts an empty tier at stream offset `at`. Requires empty().
  void reset(std::uint64_t at);
  /// \brief Appends `len` bytes at file offset `foff` (or kZeros).
  void append(std::uint64_t len, std::uint64_t foff);
  /// \brief Maps [off, off + len), inside [begin, end), to the file run at
  /// `foff`; the runs it was mapped to before go to *dead.
  void assign(std::uint64_t off, std::uint64_t len, std::uint64_t foff, std::vector<FileRun>* dead);
  /// \brief Forgets everything before `upto` (clamped to [begin, end]).
  void drop_front(std::uint64_t upto, std::vector<FileRun>* dead);
  /// \brief Keeps [begin, size) (size clamped to [begin, end]).
  void truncate(std::uint64_t size, std::vector<FileRun>* dead);
  /// \brief Forgets everything; empty at end().
  void clear(std::vector<FileRun>* dead);
  /// \brief The pieces of [off, off + len), which must be inside [begin, end), in order.
  void pieces(std::uint64_t off, std::uint64_t len, std::vector<Piece>* out) const;

 private:
  struct Extent {
    std::uint64_t len = 0;
    std::uint64_t foff = 0;  // kZeros: zero bytes
  };
  using Map = std::map<std::uint64_t, Extent>;  // by stream offset; contiguous
  // Makes an extent start at `at` (begin < at < end) and returns it.
  Map::iterator split(std::uint64_t at);
  static void bury(const Extent& x, std::vector<FileRun>* dead);

  Map ext_;
  std::uint64_t begin_ = 0;
  std::uint64_t end_ = 0;
};

}  // namespace capturefs::core
