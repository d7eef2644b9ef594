// A FIFO of bytes held in a chain of heap blocks.
//
// The queue is the storage of one stream: bytes enter at the back (appends),
// leave at the front (consumption), and bytes not yet consumed may be
// overwritten in place (patches). Memory is accounted by block *capacity*,
// not by bytes held, so the figure the budget sees is what the allocator
// really handed out. Blocks grow geometrically per queue (4 KiB up to
// 64 KiB) so that thousands of small streams stay small while one large
// stream does few allocations. A drained block is freed at once, so an idle
// stream holds no memory.
//
// Not thread-safe: the owning Stream's mutex guards it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>

namespace capturefs::core {

class ByteQueue {
 public:
  // A stream's first block (and the first after it drained): small, so
  // that a small file costs little memory and budget (a 100 B file held
  // 4 KiB when this was 4 KiB); blocks double from there.
  static constexpr std::size_t kMinBlock = 256;
  // Growth stops here: a small write after a large one (a 1 MiB write from
  // an unaligned buffer reaches us as 1 MiB - 16 B and 16 B) must not cost a
  // large block. A single large append still gets one block of its size.
  static constexpr std::size_t kMaxBlock = 64 * 1024;

  /// \brief Bytes held (not yet consumed).
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  /// \brief Bytes of block capacity currently allocated.
  std::size_t capacity() const { return capacity_; }

  /// \brief Extra capacity that append(n) would allocate. Callers reserve
  /// this much from their budget before appending.
  std::size_t growth_for(std::size_t n) const;

  /// \brief Appends `zeros` zero bytes, then `data`; allocates exactly
  /// growth_for(zeros + data.size()).
  void append(std::span<const std::byte> data, std::size_t zeros = 0);

  /// \brief Overwrites bytes starting `pos` bytes after the front.
  /// Requires pos + data.size() <= size().
  void overwrite(std::size_t pos, std::span<const std::byte> data);

  /// \brief Moves up to out.size() bytes from the front into out.
  /// Returns the number of bytes copied; released capacity is added to
  /// *freed.
  std::size_t pop(std::span<std::byte> out, std::size_t* freed);

  /// \brief Copies out.size() bytes starting `pos` bytes after the front,
  /// without consuming them. Requires pos + out.size() <= size().
  void peek(std::size_t pos, std::span<std::byte> out) const;

  /// \brief Discards n bytes from the front (n <= size()). Returns the
  /// capacity released.
  std::size_t drop(std::size_t n);

  /// \brief Keeps the first n bytes (n <= size()) and drops the rest from
  /// the back. Returns the capacity released.
  std::size_t truncate(std::size_t n);

  /// \brief Drops everything. Returns the capacity released.
  std::size_t clear();

 private:
  struct Block {
    std::unique_ptr<std::byte[]> data;
    std::size_t cap = 0;
    std::size_t begin = 0;  // first unconsumed byte
    std::size_t end = 0;    // one past the last written byte
  };
  std::size_t next_block_size(std::size_t need) const;

  std::deque<Block> blocks_;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
  std::size_t last_block_ = 0;  // capacity of the most recent allocation
};

}  // namespace capturefs::core
