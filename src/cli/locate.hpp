// Finding a daemon's socket: from a path in its mount (the root's xattr
// `user.capturefs.socket`), and the default socket of a mount started
// without --socket.
#pragma once

#include <optional>
#include <string>

namespace capturefs::cli {

inline constexpr const char* kSocketXattr = "user.capturefs.socket";

/// \brief Where a path in a capturefs mount is.
struct InMount {
  std::string root;    ///< the mountpoint (absolute)
  std::string socket;  ///< its daemon's socket
  std::string rel;     ///< the path relative to the root ("" for the root)
};

/// \brief If `path` (existing or not: its nearest existing ancestor is
/// looked at) lies in a capturefs mount that serves a socket, where.
std::optional<InMount> locate(const std::string& path);

/// \brief The socket a mount at `mountpoint` (absolute) gets without
/// --socket: $XDG_RUNTIME_DIR/capturefs/NAME.sock, else (root)
/// /run/capturefs/NAME.sock, else /tmp/capturefs-UID/NAME.sock; NAME is
/// made of the mountpoint's last component and a hash of the whole path,
/// unique per mountpoint. Creates the directory (mode 0700). "" with
/// *error set if none can be made.
std::string default_socket(const std::string& mountpoint, std::string* error);

}  // namespace capturefs::cli
