// Socket delivery: the daemon side of docs/protocol.md.
//
//   std::string err;
//   auto l = server::Listener::open("/run/cap.sock", &err);   // before mounting
//   if (!l) fail(err);                 // e.g. another daemon listens there
//   ...mount, daemonize...
//   server::Server srv(volume, std::move(l));
//   srv.start();                       // accept thread
//   ...serve...
//   srv.stop();                        // before the Volume goes away
//
// FUSE-free: it talks to core::Volume (subscribe, observe, snapshot) and
// uses the proto codec for every byte on the wire. What the daemon knows
// beyond the volume (the commands of `--exec`) comes in through
// ServerOptions::commands, a callback the embedding program sets.
//
// THREADS
// - One accept thread.
// - Per connection one reader thread: handshake (bounded by
//   handshake_timeout), then it decodes client frames (SUBSCRIBE, ACK,
//   STATUS_REQUEST) and answers; it also tears the connection down.
// - A consuming connection has one core::Subscription (manual acks) whose
//   delivery threads encode OPENED/DATA/RENAMED/CLOSED and write them to
//   the socket themselves, under the connection's write mutex. Writes block
//   while the client does not read: that slows the writers of the streams
//   this client holds, nothing else.
// - An observing connection has a writer thread fed by a bounded queue
//   (core::Observer callbacks must not block); a client that lets the queue
//   overflow is dropped with an ERROR.
//
// SECURITY
// The socket is created with mode 0600, and a peer whose uid (SO_PEERCRED)
// is neither the daemon's nor 0 is refused (hello, then ERROR internal).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "proto/codec.hpp"

namespace capturefs::core {
class Volume;
}

namespace capturefs::server {

/// \brief The listening socket, created before the mount so that a path in
/// use fails the mount early. Owns the path: the destructor removes it (if
/// it is still this socket).
class Listener {
 public:
  /// \brief Binds and listens at `path` (made absolute) with mode 0600.
  /// A socket there that nobody listens on (a daemon died) is replaced; a
  /// live one, a non-socket file, or a path too long for sun_path is an
  /// error: nullptr with *error naming the path and the cause.
  static std::unique_ptr<Listener> open(const std::string& path, std::string* error);
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  int fd() const { return fd_; }
  /// The absolute path.
  const std::string& path() const { return path_; }
  /// Closes the socket and removes the path (if it is still ours). Idempotent.
  void close();

 private:
  Listener() = default;
  int fd_ = -1;
  std::string path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

struct ServerOptions {
  unsigned delivery_threads = 2;  ///< per consuming connection (1 for ONCE)
  std::size_t window = 4 << 20;   ///< unacknowledged bytes per stream (>= 1 MiB)
  /// A client must complete its hello within this time.
  std::chrono::milliseconds handshake_timeout{5000};
  /// How long a closing connection may take to finish the frame being
  /// written and send its ERROR.
  std::chrono::milliseconds close_grace{2000};
  /// Encoded events an observer may have queued before it is dropped.
  std::size_t observer_queue_bytes = 8 << 20;
  std::size_t max_connections = 1024;
  /// The commands the daemon runs (`mount --exec`): running ones and the
  /// most recent that ended, in the order to show them. Called on a
  /// connection's thread for each STATUS_REQUEST that asks for them (a
  /// version 2 client), possibly on several threads at once; it must not
  /// block for long. Unset: the daemon runs no commands and sends no
  /// COMMANDS frame. Paths that cannot be sent (over 4096 bytes) are left
  /// out; notes are made UTF-8 and cut to 1024 bytes.
  std::function<std::vector<proto::CommandStatus>()> commands;
};

class Server {
 public:
  Server(core::Volume& vol, std::unique_ptr<Listener> listener, ServerOptions opt = {});
  /// Calls stop().
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  /// Starts accepting. Call after daemonizing (threads do not survive fork).
  void start();
  /// Closes the listener and removes the socket path, ends every
  /// connection (consumers get CLOSED "shutdown" for the streams they hold,
  /// then ERROR shutdown) and waits for all threads. Streams not finished
  /// stay in the volume. Idempotent; must run before the Volume is destroyed.
  void stop();
  const std::string& path() const;
  /// Connections being served now.
  std::size_t connections() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace capturefs::server
