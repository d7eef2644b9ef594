// A blocking client connection for the CLI clients (`capturefs cat`,
// `watch`, `status`): connect, send frames, receive decoded frames.
// Only the proto codec underneath; no core, no FUSE.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "proto/codec.hpp"

namespace capturefs::server {

/// \brief A failure talking to the daemon; what() says what, naming the
/// socket path.
class ClientError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ClientConnection {
 public:
  /// \brief Connects to the daemon at `path` and sends the hello (the
  /// server's hello is checked by the first next()). Throws ClientError.
  explicit ClientConnection(const std::string& path);
  ~ClientConnection();
  ClientConnection(const ClientConnection&) = delete;
  ClientConnection& operator=(const ClientConnection&) = delete;

  /// \brief Queues a frame; it is written with the next flush() (or next()).
  void queue(const proto::Frame& f);
  /// \brief Writes what was queued. Throws ClientError.
  void flush();
  /// \brief The next frame from the server, the server's hello excluded
  /// (flushes first). nullopt when the server closed the connection
  /// cleanly. Throws ClientError on a protocol error or a broken connection.
  std::optional<proto::Frame> next();
  /// \brief The protocol version the daemon chose (flushes, then waits for
  /// its hello if it is not in yet): before sending a frame that only a
  /// version 2 daemon knows. Throws ClientError.
  std::uint16_t version();

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  proto::Decoder dec_{proto::Peer::server};
  bool hello_seen_ = false;
  std::vector<std::byte> out_;
  std::vector<std::byte> in_;

  /// Reads once into the decoder; false at EOF. Throws ClientError.
  bool receive();
};

/// \brief "not_found: no stream matches" style text for an ERROR frame.
std::string describe(const proto::Error& e);

}  // namespace capturefs::server
