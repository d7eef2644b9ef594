// Parking: the registry of parked operations (stream.hpp, CONCURRENCY
// MODEL): which stream holds the op of a wait key (for a cancel from the
// front end) and which streams hold any (for fail_parked() at shutdown).
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/types.hpp"

namespace capturefs::core {

class Stream;

/// \brief Knows every parked op: its stream by key (for cancel()), and the
/// streams that hold any (for fail_parked() at shutdown).
class Parking {
 public:
  void add(WaitKey key, const std::shared_ptr<Stream>& s);
  void remove(WaitKey key, const Stream* s);
  std::shared_ptr<Stream> find(WaitKey key) const;
  std::vector<std::shared_ptr<Stream>> all() const;

 private:
  // Lock order: innermost (taken under Stream::mu_). Calls nothing.
  mutable std::mutex mu_;
  std::unordered_map<WaitKey, std::weak_ptr<Stream>> keys_;  // key != 0 only
  struct Held {
    std::weak_ptr<Stream> stream;
    std::size_t ops = 0;
  };
  std::unordered_map<const Stream*, Held> streams_;
};

}  // namespace capturefs::core
