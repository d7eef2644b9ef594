// A raw protocol client for the socket tests: connect, send frames or raw
// bytes, receive decoded frames with a deadline (a hang fails the test
// instead of hanging it).
#pragma once

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "proto/codec.hpp"

namespace capturefs::test {

using namespace std::chrono_literals;

/// Connects to a Unix socket; -1 with errno set on failure.
inline int connect_unix(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), std::min(path.size() + 1, sizeof addr.sun_path - 1));
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    const int e = errno;
    ::close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

class ProtoClient {
 public:
  /// `version`: the protocol version the client offers (and speaks).
  explicit ProtoClient(const std::string& path, bool hello = true, std::uint16_t version = proto::kVersion)
      : dec_(proto::Peer::server, version) {
    fd_ = connect_unix(path);
    if (fd_ < 0) throw std::runtime_error("connect " + path + ": " + std::strerror(errno));
    if (hello) send(proto::Hello{version, 0});
  }
  ~ProtoClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  ProtoClient(const ProtoClient&) = delete;
  ProtoClient& operator=(const ProtoClient&) = delete;

  int fd() const { return fd_; }

  void send_raw(std::string_view bytes) {
    std::size_t off = 0;
    while (off < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw std::runtime_error(std::string("send: ") + std::strerror(errno));
      off += static_cast<std::size_t>(n);
    }
  }
  void send(const proto::Frame& f) {
    std::vector<std::byte> b;
    if (auto e = proto::encode(f, b)) throw std::runtime_error("encode: " + e->message);
    send_raw(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
  }
  void shut_wr() { ::shutdown(fd_, SHUT_WR); }

  /// The next frame (the server's hello included), nullopt at EOF. Throws
  /// on a timeout or bad bytes.
  std::optional<proto::Frame> next(std::chrono::milliseconds timeout = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (auto f = dec_.next()) return f;
      if (dec_.error()) throw std::runtime_error("client decoder: " + dec_.error()->message);
      if (eof_) {
        if (auto& e = dec_.finish()) throw std::runtime_error("client decoder at EOF: " + e->message);
        return std::nullopt;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) throw std::runtime_error("no frame from the server in time");
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[1 << 16];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == ECONNRESET) {
        eof_ = true;
        continue;
      }
      if (n < 0) throw std::runtime_error(std::string("recv: ") + std::strerror(errno));
      if (n == 0) {
        eof_ = true;
        continue;
      }
      dec_.feed(std::span<const std::byte>(reinterpret_cast<const std::byte*>(buf), static_cast<std::size_t>(n)));
    }
  }

  /// The next frame that is not a hello; it must be a T.
  template <class T>
  T expect(std::chrono::milliseconds timeout = 20s) {
    for (;;) {
      auto f = next(timeout);
      if (!f) throw std::runtime_error("EOF while waiting for a frame");
      if (std::holds_alternative<proto::Hello>(*f)) continue;
      if (auto* t = std::get_if<T>(&*f)) return std::move(*t);
      std::string what = std::string(proto::frame_name(*f));
      if (auto* e = std::get_if<proto::Error>(&*f)) what += " " + proto::to_string(e->code) + ": " + e->message;
      throw std::runtime_error("unexpected frame: " + what);
    }
  }

  /// Reads frames up to and including the ERROR that ends the connection,
  /// and the EOF after it.
  proto::Error expect_error(std::chrono::milliseconds timeout = 20s) {
    for (;;) {
      auto f = next(timeout);
      if (!f) throw std::runtime_error("EOF without an ERROR frame");
      if (auto* e = std::get_if<proto::Error>(&*f)) {
        proto::Error out = *e;
        if (next(timeout)) throw std::runtime_error("a frame after ERROR");
        return out;
      }
    }
  }

 private:
  int fd_ = -1;
  proto::Decoder dec_;
  bool eof_ = false;
};

}  // namespace capturefs::test
