// Result type of the core: a value or a positive errno.
//
// The core reports failures as errno values because every front end needs
// one in the end (FUSE replies, socket error frames, callback statuses), and
// translating once here keeps them consistent. It never throws for expected
// failures; std::bad_alloc may still escape and is mapped by the front end.
#pragma once

#include <cassert>
#include <utility>
#include <variant>

namespace capturefs::core {

/// \brief A positive errno value describing why an operation failed.
struct Errno {
  int value;
  friend bool operator==(Errno, Errno) = default;
};

/// \brief Either a T or an Errno.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T v) : v_(std::move(v)) {}            // NOLINT: implicit by design
  Result(Errno e) : v_(e) { assert(e.value > 0); }  // NOLINT
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  int error() const { return ok() ? 0 : std::get<1>(v_).value; }

 private:
  std::variant<T, Errno> v_;
};

/// \brief Result of an operation with no value.
struct Ok {};
using Status = Result<Ok>;

}  // namespace capturefs::core
