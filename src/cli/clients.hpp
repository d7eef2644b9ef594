// The socket clients of the capturefs command line: `capturefs cat`,
// `capturefs watch` and `capturefs status` (docs/protocol.md §12). Thin:
// server::ClientConnection and the proto codec do the talking.
#pragma once

#include <string>
#include <vector>

namespace capturefs::cli {

struct CatArgs {
  std::string socket;
  std::string name;   ///< the stream's path relative to the mount root
  bool wait = false;  ///< wait for NAME to appear instead of failing
};
/// \brief Writes one stream's bytes to stdout. 0 if it was complete; 1 if
/// it was aborted, not found, busy, or the connection failed (message on
/// stderr naming the socket and the reason).
int run_cat(const CatArgs& a);

struct WatchArgs {
  std::string socket;
  bool observe = false;            ///< only watch (OBSERVE); else consume
  std::vector<std::string> globs;  ///< none: "*"
};
/// \brief One JSON line per event on stdout until the daemon goes away.
int run_watch(const WatchArgs& a);

struct StatusArgs {
  std::string socket;
  bool json = false;
};
/// \brief A table (or JSON lines) of every live stream.
int run_status(const StatusArgs& a);

}  // namespace capturefs::cli
