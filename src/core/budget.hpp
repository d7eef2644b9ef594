// A byte budget shared by all streams: the global memory cap, and (a second
// instance, in SpillStore) the spill limit.
//
// Streams reserve capacity before they allocate and give it back when they
// free. A stream that cannot reserve registers itself as waiting; whoever
// releases memory next gets the waiting streams back and pumps them. The
// check and the registration happen under one lock, so no wake-up is lost.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

namespace capturefs::core {

class Stream;

class Budget {
 public:
  explicit Budget(std::size_t cap) : cap_(cap) {}

  std::size_t cap() const { return cap_; }
  std::size_t used() const;
  std::size_t peak() const;

  /// \brief Takes n bytes if they fit under the cap. On failure, and if
  /// `waiter` is given, remembers it so that a later release() hands it back.
  bool try_reserve(std::size_t n, const std::shared_ptr<Stream>& waiter);

  /// \brief Remembers `waiter` for the next release() without reserving
  /// (a stream that waits for a reason the budget cannot see, such as a
  /// full disk, but should try again when anything is released).
  void wait(const std::shared_ptr<Stream>& waiter);

  /// \brief Gives n bytes back and returns the streams that waited for
  /// memory (the caller pumps them once it holds no lock).
  [[nodiscard]] std::vector<std::weak_ptr<Stream>> release(std::size_t n);

 private:
  void remember(const std::shared_ptr<Stream>& waiter);  // with mu_ held

  const std::size_t cap_;
  // Lock order: Stream::mu_ -> Budget::mu_ (a stream reserves and releases
  // while holding its own lock). Nothing is called while mu_ is held, and
  // no other lock is taken under it: the memory budget and the spill budget
  // are never held at once.
  mutable std::mutex mu_;
  std::size_t used_ = 0;
  std::size_t peak_ = 0;
  std::vector<std::weak_ptr<Stream>> waiting_;
};

}  // namespace capturefs::core
