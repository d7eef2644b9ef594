// A mounted FUSE session serving a core::Volume: mount, serve, unmount.
//
// This header is FUSE-free so that the CLI (and, later, an embedding
// library) can drive a mount without including libfuse.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/volume.hpp"

namespace capturefs::fuse {

struct SessionOptions {
  std::string mountpoint;             ///< absolute path
  bool debug = false;                 ///< libfuse request tracing
  std::vector<std::string> options;   ///< -o options, each "name[=value]"
  unsigned max_threads = 16;
  /// Install SIGINT/SIGTERM/SIGHUP handlers that end serve() (the CLI); an
  /// embedding program keeps its own handlers and calls stop().
  bool handle_signals = true;
  /// Extended attributes of the mount root, name and value (the socket
  /// path, "user.capturefs.socket"): getxattr and listxattr of the root
  /// answer them; every other xattr call stays ENOTSUP.
  std::vector<std::pair<std::string, std::string>> root_xattrs;
};

class Session {
 public:
  /// \brief Mounts. On failure returns nullptr and sets *error to a message
  /// naming the cause.
  static std::unique_ptr<Session> mount(core::Volume& vol, const SessionOptions& opt,
                                        std::string* error);
  ~Session();  ///< ends parked requests, then unmounts
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  /// \brief Detaches into the background (fuse_daemonize): the parent exits
  /// 0, so it returns only in the child. Call before serve().
  void daemonize();
  /// \brief Serves requests until SIGINT/SIGTERM/SIGHUP or an external
  /// unmount. Returns 0 on such a clean end, else a negative errno.
  int serve();
  /// \brief Makes a running serve() return soon. Any thread but a FUSE
  /// worker. Then destroy the session, which unmounts.
  void stop();

 private:
  struct Impl;
  explicit Session(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace capturefs::fuse
