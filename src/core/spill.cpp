#include "core/spill.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cassert>
#include <cerrno>
#include <cstring>
#include <iterator>

#include "core/log.hpp"

namespace capturefs::core {

// ---- SpillFile -----------------------------------------------------------------

SpillFile::~SpillFile() {
  if (fd_ >= 0) ::close(fd_);
}

int SpillFile::write_at(std::uint64_t off, std::span<const std::byte> data) {
  while (!data.empty()) {
    const ssize_t n = ::pwrite(fd_, data.data(), data.size(), static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    data = data.subspan(static_cast<std::size_t>(n));
    off += static_cast<std::uint64_t>(n);
  }
  return 0;
}

int SpillFile::read_at(std::uint64_t off, std::span<std::byte> out) {
  while (!out.empty()) {
    const ssize_t n = ::pread(fd_, out.data(), out.size(), static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;  // every run read was written completely first
    out = out.subspan(static_cast<std::size_t>(n));
    off += static_cast<std::uint64_t>(n);
  }
  return 0;
}

int SpillFile::punch(std::uint64_t off, std::uint64_t len) {
  if (len == 0) return 0;
  if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                  static_cast<off_t>(len)) != 0)
    return errno;
  return 0;
}

// ---- SpillStore ----------------------------------------------------------------

namespace {

int open_tmpfile(const std::string& dir) {
  // O_EXCL: the file can never be given a name (linkat) either.
  return ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
}

// Names the directory and what failed; the errno's text is the caller's.
std::string describe_open_error(const std::string& dir, int err) {
  if (err == EOPNOTSUPP || err == EISDIR)  // EISDIR: a kernel without O_TMPFILE
    return fmt::format("{}: its file system does not support unnamed temporary files (O_TMPFILE)", dir);
  return fmt::format("{}: cannot create an unnamed temporary file (O_TMPFILE) there", dir);
}

}  // namespace

SpillStore::SpillStore(std::string dir, std::uint64_t limit)
    : dir_(std::move(dir)), budget_(limit), open_([this]() -> Result<std::shared_ptr<SpillFile>> {
        const int fd = open_tmpfile(dir_);
        if (fd < 0) return Errno{errno};
        return std::make_shared<SpillFile>(fd);
      }) {}

SpillStore::SpillStore(std::string dir, std::uint64_t limit, Opener open)
    : dir_(std::move(dir)), budget_(limit), open_(std::move(open)) {}

int SpillStore::probe(const std::string& dir, std::string* error) {
  const int fd = open_tmpfile(dir);
  if (fd < 0) {
    const int err = errno;
    *error = describe_open_error(dir, err);
    return err;
  }
  ::close(fd);
  return 0;
}

Result<std::shared_ptr<SpillFile>> SpillStore::open() {
  auto f = open_();
  if (!f && !warned_open_.exchange(true))
    log::warn("cannot spill: {}: {}; writers of streams nobody reads wait for a reader instead",
              describe_open_error(dir_, f.error()), std::strerror(f.error()));
  return f;
}

void SpillStore::punch_failed(int err) {
  if (punch_ok_.exchange(false))
    log::warn("spill directory {}: cannot punch holes ({}); spilled bytes already read take disk "
              "space until their stream's spilled part is read completely",
              dir_, std::strerror(err));
}

void SpillStore::disk_full(int err) {
  if (!warned_full_.exchange(true))
    log::warn("spill directory {} is full ({}) before --spill-limit; writers of streams nobody "
              "reads wait for a reader",
              dir_, std::strerror(err));
}

// ---- SpillMap ------------------------------------------------------------------

namespace {
// Whether an extent at file offset `b` can continue one of `len` bytes at `a`.
bool continues(std::uint64_t a, std::uint64_t len, std::uint64_t b) {
  constexpr std::uint64_t z = SpillMap::kZeros;
  return (a == z && b == z) || (a != z && b != z && a + len == b);
}
}  // namespace

void SpillMap::bury(const Extent& x, std::vector<FileRun>* dead) {
  if (x.foff != kZeros && x.len != 0) dead->push_back(FileRun{x.foff, x.len});
}

void SpillMap::reset(std::uint64_t at) {
  assert(empty());
  ext_.clear();
  begin_ = end_ = at;
}

void SpillMap::append(std::uint64_t len, std::uint64_t foff) {
  if (len == 0) return;
  if (!ext_.empty()) {
    Extent& last = std::prev(ext_.end())->second;
    if (continues(last.foff, last.len, foff)) {
      last.len += len;
      end_ += len;
      return;
    }
  }
  ext_.emplace_hint(ext_.end(), end_, Extent{len, foff});
  end_ += len;
}

SpillMap::Map::iterator SpillMap::split(std::uint64_t at) {
  assert(at > begin_ && at < end_);
  auto it = std::prev(ext_.upper_bound(at));  // the extent holding `at`
  if (it->first == at) return it;
  Extent& x = it->second;
  const std::uint64_t head = at - it->first;
  const Extent rest{x.len - head, x.foff == kZeros ? kZeros : x.foff + head};
  x.len = head;
  return ext_.emplace_hint(std::next(it), at, rest);
}

void SpillMap::assign(std::uint64_t off, std::uint64_t len, std::uint64_t foff,
                      std::vector<FileRun>* dead) {
  assert(off >= begin_ && off + len <= end_);
  if (len == 0) return;
  auto first = off == begin_ ? ext_.begin() : split(off);
  auto last = off + len == end_ ? ext_.end() : split(off + len);
  for (auto it = first; it != last; ++it) bury(it->second, dead);
  auto at = ext_.erase(first, last);
  at = ext_.emplace_hint(at, off, Extent{len, foff});
  // Merge with a neighbour that continues it (keeps the map small when a
  // writer patches a gap it left, then writes on).
  if (at != ext_.begin()) {
    auto prev = std::prev(at);
    Extent& p = prev->second;
    if (continues(p.foff, p.len, foff)) {
      p.len += len;
      ext_.erase(at);
      at = prev;
    }
  }
  auto next = std::next(at);
  if (next != ext_.end()) {
    Extent& a = at->second;
    const Extent& n = next->second;
    if (continues(a.foff, a.len, n.foff)) {
      a.len += n.len;
      ext_.erase(next);
    }
  }
}

void SpillMap::drop_front(std::uint64_t upto, std::vector<FileRun>* dead) {
  if (upto <= begin_) return;
  if (upto >= end_) {
    clear(dead);
    return;
  }
  auto keep = split(upto);
  for (auto it = ext_.begin(); it != keep; ++it) bury(it->second, dead);
  ext_.erase(ext_.begin(), keep);
  begin_ = upto;
}

void SpillMap::truncate(std::uint64_t size, std::vector<FileRun>* dead) {
  if (size >= end_) return;
  if (size <= begin_) {
    for (const auto& [off, x] : ext_) bury(x, dead);
    ext_.clear();
    end_ = begin_;
    return;
  }
  auto cut = split(size);
  for (auto it = cut; it != ext_.end(); ++it) bury(it->second, dead);
  ext_.erase(cut, ext_.end());
  end_ = size;
}

void SpillMap::clear(std::vector<FileRun>* dead) {
  for (const auto& [off, x] : ext_) bury(x, dead);
  ext_.clear();
  begin_ = end_;
}

void SpillMap::pieces(std::uint64_t off, std::uint64_t len, std::vector<Piece>* out) const {
  assert(off >= begin_ && off + len <= end_);
  if (len == 0) return;
  auto it = std::prev(ext_.upper_bound(off));
  const std::uint64_t stop = off + len;
  while (off < stop) {
    const std::uint64_t x_off = it->first;
    const Extent& x = it->second;
    const std::uint64_t skip = off - x_off;
    const std::uint64_t n = std::min(x.len - skip, stop - off);
    out->push_back(Piece{off, n, x.foff == kZeros ? kZeros : x.foff + skip});
    off += n;
    ++it;
  }
}

}  // namespace capturefs::core
