#include "core/byte_queue.hpp"

#include <algorithm>
#include <cassert>
#include <cstring>

namespace capturefs::core {

std::size_t ByteQueue::next_block_size(std::size_t need) const {
  const std::size_t grown = last_block_ == 0 ? kMinBlock : std::min(kMaxBlock, last_block_ * 2);
  return std::max(need, grown);
}

std::size_t ByteQueue::growth_for(std::size_t n) const {
  const std::size_t room = blocks_.empty() ? 0 : blocks_.back().cap - blocks_.back().end;
  if (n <= room) return 0;
  return next_block_size(n - room);
}

namespace {
// Writes bytes [from, from + k) of "zeros then data" to dst.
void fill(std::byte* dst, std::size_t from, std::size_t k, std::size_t zeros,
          std::span<const std::byte> data) {
  if (from < zeros) {
    const std::size_t z = std::min(k, zeros - from);
    std::memset(dst, 0, z);
    dst += z;
    from += z;
    k -= z;
  }
  if (k != 0) std::memcpy(dst, data.data() + (from - zeros), k);
}
}  // namespace

void ByteQueue::append(std::span<const std::byte> data, std::size_t zeros) {
  const std::size_t n = zeros + data.size();
  std::size_t done = 0;
  if (!blocks_.empty()) {
    Block& b = blocks_.back();
    const std::size_t k = std::min(n, b.cap - b.end);
    fill(b.data.get() + b.end, 0, k, zeros, data);
    b.end += k;
    done = k;
  }
  if (done < n) {
    const std::size_t cap = next_block_size(n - done);
    Block b;
    b.data.reset(new std::byte[cap]);
    b.cap = cap;
    fill(b.data.get(), done, n - done, zeros, data);
    b.end = n - done;
    blocks_.push_back(std::move(b));
    capacity_ += cap;
    last_block_ = cap;
  }
  size_ += n;
}

void ByteQueue::overwrite(std::size_t pos, std::span<const std::byte> data) {
  assert(pos + data.size() <= size_);
  if (data.empty()) return;
  std::size_t src = 0;
  for (Block& b : blocks_) {
    const std::size_t len = b.end - b.begin;
    if (pos >= len) {
      pos -= len;
      continue;
    }
    const std::size_t k = std::min(len - pos, data.size() - src);
    std::memcpy(b.data.get() + b.begin + pos, data.data() + src, k);
    src += k;
    pos = 0;
    if (src == data.size()) return;
  }
}

void ByteQueue::peek(std::size_t pos, std::span<std::byte> out) const {
  assert(pos + out.size() <= size_);
  if (out.empty()) return;
  std::size_t done = 0;
  for (const Block& b : blocks_) {
    if (done == out.size()) return;
    const std::size_t len = b.end - b.begin;
    if (pos >= len) {
      pos -= len;
      continue;
    }
    const std::size_t k = std::min(len - pos, out.size() - done);
    std::memcpy(out.data() + done, b.data.get() + b.begin + pos, k);
    done += k;
    pos = 0;
  }
}

std::size_t ByteQueue::drop(std::size_t n) {
  assert(n <= size_);
  std::size_t freed = 0;
  size_ -= n;
  while (n != 0 || (!blocks_.empty() && blocks_.front().begin == blocks_.front().end)) {
    Block& b = blocks_.front();
    const std::size_t k = std::min(n, b.end - b.begin);
    b.begin += k;
    n -= k;
    if (b.begin != b.end) break;
    // A drained block is freed at once, even a tail with room left: memory
    // held by idle streams would otherwise starve writers of other streams.
    freed += b.cap;
    capacity_ -= b.cap;
    blocks_.pop_front();
  }
  if (blocks_.empty()) last_block_ = 0;  // a new burst starts small
  return freed;
}

std::size_t ByteQueue::pop(std::span<std::byte> out, std::size_t* freed) {
  const std::size_t n = std::min(out.size(), size_);
  peek(0, out.first(n));
  *freed += drop(n);
  return n;
}

std::size_t ByteQueue::truncate(std::size_t n) {
  assert(n <= size_);
  if (n == 0) return clear();
  std::size_t freed = 0;
  std::size_t cut = size_ - n;  // bytes to remove from the back
  size_ = n;
  while (cut != 0) {
    Block& b = blocks_.back();
    const std::size_t k = std::min(cut, b.end - b.begin);
    b.end -= k;
    cut -= k;
    if (b.begin == b.end) {
      freed += b.cap;
      capacity_ -= b.cap;
      blocks_.pop_back();
    }
  }
  return freed;
}

std::size_t ByteQueue::clear() {
  const std::size_t freed = capacity_;
  blocks_.clear();
  size_ = 0;
  capacity_ = 0;
  last_block_ = 0;
  return freed;
}

}  // namespace capturefs::core
