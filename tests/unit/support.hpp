// Shared helpers for the unit tests of src/core.
//
// Helpers that need a value to continue throw std::runtime_error on an
// unexpected failure; GoogleTest reports the exception as a test failure.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "core/delivery.hpp"
#include "core/exit_watch.hpp"
#include "core/spill.hpp"
#include "core/stream.hpp"
#include "core/volume.hpp"

namespace capturefs::test {

using core::Attr;
using core::Caller;
using core::Errno;
using core::Handle;
using core::Ino;
using core::kRootIno;
using core::Limits;
using core::Outcome;
using core::Parked;
using core::ReadDone;
using core::Result;
using core::Role;
using core::Volume;
using core::WaitKey;
using core::WriteDone;

inline constexpr std::uint64_t KiB = 1024;
inline constexpr std::uint64_t MiB = 1024 * 1024;

inline std::span<const std::byte> as_bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

inline std::string to_string(std::span<const std::byte> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

template <class T>
T must(Result<T> r, std::string_view what) {
  if (!r) throw std::runtime_error(std::string(what) + " failed with errno " + std::to_string(r.error()));
  return std::move(r).value();
}

template <class T>
bool is_parked(const Outcome<T>& o) {
  return std::holds_alternative<Parked>(o);
}

/// A new stream (or the existing one) opened as a writer.
inline std::unique_ptr<Handle> writer(Volume& v, std::string_view name, Ino parent = kRootIno) {
  return must(v.create(parent, name, 0644, O_WRONLY | O_CREAT, Caller{}), "create").handle;
}

/// The stream's inode number (counts one lookup).
inline Ino ino_of(Volume& v, std::string_view name, Ino parent = kRootIno) {
  return must(v.lookup(parent, name), "lookup").ino;
}

/// The consumer side of a stream: its handle and the file offset of its
/// next sequential read (reads are positional: a read at `off` consumes
/// everything before it, and what it returns stays until a later read).
struct Consumer {
  std::unique_ptr<Handle> h;
  std::uint64_t off = 0;
  Handle& operator*() const { return *h; }
  Handle* operator->() const { return h.get(); }
  explicit operator bool() const { return h != nullptr; }
  // So that `v.release(std::move(consumer))` works like for a plain handle.
  operator std::unique_ptr<Handle>() && { return std::move(h); }  // NOLINT
};

/// Opens an existing stream as its consumer.
inline Consumer reader(Volume& v, std::string_view name, Ino parent = kRootIno,
                       int extra_flags = 0) {
  return Consumer{must(v.open(ino_of(v, name, parent), O_RDONLY | extra_flags), "open"), 0};
}

/// A write that must not park; returns its immediate result.
inline Result<std::size_t> write_now(Volume& v, Handle& h, std::uint64_t off,
                                     std::span<const std::byte> data) {
  auto out = v.write(h, off, data, 0, [](Result<std::size_t>) {
    ADD_FAILURE() << "the callback of an immediate write was called";
  });
  if (is_parked(out)) throw std::runtime_error("write_now: the write parked");
  return std::get<0>(std::move(out));
}
inline Result<std::size_t> write_now(Volume& v, Handle& h, std::uint64_t off, std::string_view s) {
  return write_now(v, h, off, as_bytes(s));
}

/// A read at file offset `off` that must not park; returns a copy of the
/// bytes (empty at EOF).
inline Result<std::string> read_at(Volume& v, Handle& h, std::uint64_t off, std::size_t n) {
  auto out = v.read(h, off, n, 0, [](Result<std::span<const std::byte>>) {
    ADD_FAILURE() << "the callback of an immediate read was called";
  });
  if (is_parked(out)) throw std::runtime_error("read_at: the read parked");
  auto& r = std::get<0>(out);
  if (!r) return Errno{r.error()};
  return to_string(r.value());
}

/// The next sequential read of a consumer, which must not park.
inline Result<std::string> read_now(Volume& v, Consumer& c, std::size_t n) {
  auto r = read_at(v, *c.h, c.off, n);
  if (r) c.off += r->size();
  return r;
}

/// Records the completions of a parked read (single-threaded use).
struct ReadLog {
  int calls = 0;
  int err = 0;
  std::string data;
  /// `advance`: the consumer whose offset moves past the bytes received.
  ReadDone cb(Consumer* advance = nullptr) {
    return [this, advance](Result<std::span<const std::byte>> r) {
      ++calls;
      if (r) {
        data = to_string(r.value());
        err = 0;
        if (advance != nullptr) advance->off += data.size();
      } else {
        err = r.error();
      }
    };
  }
};

/// Starts the next sequential read of `c` through `v.read`, completing into
/// `log` (which also advances c.off) if it parks; an immediate result is
/// recorded in `log` too, so callers look at `log` either way.
inline Outcome<std::span<const std::byte>> read_into(Volume& v, Consumer& c, std::size_t n,
                                                     WaitKey key, ReadLog& log) {
  auto out = v.read(*c.h, c.off, n, key, log.cb(&c));
  if (!is_parked(out)) log.cb(&c)(std::get<0>(out));
  return out;
}

/// Records the completions of a parked write (single-threaded use).
struct WriteLog {
  int calls = 0;
  int err = 0;
  std::size_t n = 0;
  WriteDone cb() {
    return [this](Result<std::size_t> r) {
      ++calls;
      if (r) {
        n = r.value();
        err = 0;
      } else {
        err = r.error();
      }
    };
  }
};

/// The byte at absolute offset `off` of test stream `id`: a sequence that
/// differs per stream and does not repeat with a short period.
inline std::byte pattern(std::uint64_t id, std::uint64_t off) {
  const std::uint64_t x = off ^ (off >> 8) ^ (off >> 16) ^ (id * 0x9E3779B97F4A7C15ULL);
  return static_cast<std::byte>((x * 31 + id + (off >> 24)) & 0xff);
}

inline std::vector<std::byte> pattern_bytes(std::uint64_t id, std::uint64_t off, std::size_t n) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = pattern(id, off + i);
  return v;
}

/// Index of the first byte of `got` that differs from pattern(id, off + i),
/// or npos.
inline std::size_t first_mismatch(std::uint64_t id, std::uint64_t off, std::string_view got) {
  for (std::size_t i = 0; i < got.size(); ++i)
    if (static_cast<std::byte>(got[i]) != pattern(id, off + i)) return i;
  return std::string_view::npos;
}

}  // namespace capturefs::test
