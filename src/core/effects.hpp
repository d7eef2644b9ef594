// Effects: what a state change of the core leaves to do once no lock is
// held (stream.hpp, CONCURRENCY MODEL). Every function that changes a
// stream under a lock takes an `Effects&` and only *adds* to it: completion
// callbacks of parked operations (which reply to FUSE or wake a consumer),
// spill-file syscalls (write, punch, open, close by dropping the last
// reference), and streams to pump because memory or spill space was
// released. The caller unlocks, then calls settle(). A callback run by
// settle() may take core locks and settle effects of its own: those are
// appended to the running settle(), so chains of completions loop instead
// of nesting.
#pragma once

#include <functional>
#include <memory>
#include <vector>

namespace capturefs::core {

class Stream;

/// \brief Work to do once no lock is held: callbacks to run and streams
/// to pump because memory was released.
struct Effects {
  std::vector<std::function<void()>> calls;
  std::vector<std::weak_ptr<Stream>> woken;
  void merge_woken(std::vector<std::weak_ptr<Stream>> w);
};

/// \brief Runs the callbacks and pumps woken streams until nothing is left.
/// Call with no core lock held.
void settle(Effects&& fx);

/// \brief This thread is inside settle(): effects settled now run only
/// after the callback that settles them has returned.
bool settling();

}  // namespace capturefs::core
