// The socket clients of the capturefs command line: `capturefs cat`,
// `peek`, `watch`, `take` and `status` (docs/protocol.md §12). Thin:
// server::ClientConnection and the proto codec do the talking. The daemon
// is found from a path in its mount (the root's xattr, cli/locate.hpp) or
// from --socket / $CAPTUREFS_SOCKET.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace capturefs::cli {

struct CatArgs {
  std::string socket;
  std::string name;       ///< MOUNT/PATH, or (with a socket) the path relative to the mount root
  bool wait = false;      ///< wait for NAME to appear instead of failing
  bool progress = false;  ///< bytes and rate on stderr, if it is a terminal
};
/// \brief Writes one stream's bytes to stdout. 0 if it was complete; 1 if
/// it was aborted, not found, busy, or the connection failed (message on
/// stderr naming the socket and the reason).
int run_cat(const CatArgs& a);

struct PeekArgs {
  std::string socket;
  std::string name;
  unsigned bytes = 4096;
};
/// \brief Writes the first bytes of a stream (not consumed) to stdout.
int run_peek(const PeekArgs& a);

struct WatchArgs {
  std::string socket;
  bool observe = true;             ///< kept for compatibility: watch always observes
  std::vector<std::string> globs;  ///< [MOUNT] GLOB...; none: "*"
};
/// \brief One JSON line per event on stdout until the daemon goes away.
/// Consumes nothing.
int run_watch(const WatchArgs& a);

struct TakeArgs {
  std::string socket;
  std::vector<std::string> globs;  ///< [MOUNT] GLOB...; none: "*"
  std::string to_dir;              ///< write each stream to DIR/PATH
  std::string exec;                ///< or pipe it to /bin/sh -c CMD
  bool once = false;
};
/// \brief Consumes the matching streams, one JSON line per stream taken.
int run_take(const TakeArgs& a);

struct StatusArgs {
  std::string socket;
  std::string mount;
  bool json = false;
  bool watching = false;  ///< --watch given
  std::string watch;      ///< its SECONDS ("" : 2)
};
/// \brief A table (or JSON lines) of every live stream.
int run_status(const StatusArgs& a);

/// \brief What a daemon still has to deliver (at unmount): streams, the
/// bytes written and not yet handed to consumers, commands running. None
/// if it cannot be asked (gone, or going).
struct Pending {
  std::size_t streams = 0;
  std::uint64_t bytes = 0;
  std::size_t commands = 0;
};
std::optional<Pending> pending_deliveries(const std::string& sock);

/// \brief Observes a daemon from before its unmount until it exits, and
/// collects the streams it discards (nobody would read them), for
/// `capturefs umount` to name.
class DiscardWatch {
 public:
  explicit DiscardWatch(const std::string& sock);
  ~DiscardWatch();
  DiscardWatch(const DiscardWatch&) = delete;
  DiscardWatch& operator=(const DiscardWatch&) = delete;
  /// Once the daemon has exited: the discarded streams (path, bytes).
  std::vector<std::pair<std::string, std::uint64_t>> finish();

 private:
  struct State {
    std::mutex mu;  // guards discarded; lock order: a leaf
    std::vector<std::pair<std::string, std::uint64_t>> discarded;
  };
  // Shared with the thread: a detached one (finish() never called) keeps it.
  std::shared_ptr<State> state_ = std::make_shared<State>();
  std::thread thread_;
};

}  // namespace capturefs::cli
