// Tells when a process exits.
//
// Used for streams closed empty: their end waits for the creating process,
// which may reopen the file (see Stream::release). The interface is small so
// that unit tests can drive exits by hand.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

namespace capturefs::core {

class ExitWatch {
 public:
  virtual ~ExitWatch() = default;
  /// \brief Calls `on_exit` once, from another thread, when process `pid`
  /// has exited. Returns false (and never calls it) if the process cannot
  /// be watched: already gone, not a process leader, or no pid at all.
  virtual bool watch(std::int32_t pid, std::function<void()> on_exit) = 0;
  /// \brief Forgets every pending callback; when it returns, none is
  /// running or will run. Call with no lock that a callback takes.
  virtual void clear() = 0;
  /// \brief Runs, in the calling thread, the callbacks of processes that
  /// have exited by now, so that a caller who knows a process is gone (it
  /// reaped it) sees the consequences before it goes on. Also waits for
  /// callbacks another thread began before this call. Not from a callback.
  virtual void poll_now() {}
};

/// \brief The Linux implementation: one pidfd per watched process and one
/// thread waiting on all of them. The thread starts with the first watch;
/// destroying the watcher stops it without calling pending callbacks.
std::unique_ptr<ExitWatch> make_pidfd_exit_watch();

}  // namespace capturefs::core
