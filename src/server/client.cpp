#include "server/client.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace capturefs::server {

namespace {
std::string errstr(int e) { return std::strerror(e); }
}  // namespace

std::string describe(const proto::Error& e) { return proto::to_string(e.code) + ": " + e.message; }

ClientConnection::ClientConnection(const std::string& path) : path_(path), in_(1 << 20) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) throw ClientError(path + ": socket path too long");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw ClientError("socket: " + errstr(errno));
  if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    const int e = errno;
    ::close(fd_);
    fd_ = -1;
    std::string why = errstr(e);
    if (e == ECONNREFUSED) why += " (no capturefs daemon is listening there)";
    if (e == ENOENT) why += " (is the mount running with --socket?)";
    throw ClientError(path + ": cannot connect: " + why);
  }
  queue(proto::Hello{});
}

ClientConnection::~ClientConnection() {
  if (fd_ >= 0) ::close(fd_);
}

void ClientConnection::queue(const proto::Frame& f) {
  if (auto e = proto::encode(f, out_)) throw ClientError("cannot encode " + std::string(proto::frame_name(f)) + ": " + e->message);
}

void ClientConnection::flush() {
  std::size_t off = 0;
  while (off < out_.size()) {
    const ssize_t n = ::send(fd_, out_.data() + off, out_.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      // The server may have closed after an ERROR: that is what the caller
      // wants to see, so a failed write is reported only if nothing is to read.
      out_.clear();
      if (e == EPIPE || e == ECONNRESET) return;
      throw ClientError(path_ + ": send: " + errstr(e));
    }
    off += static_cast<std::size_t>(n);
  }
  out_.clear();
}

bool ClientConnection::receive() {
  for (;;) {
    const ssize_t n = ::recv(fd_, in_.data(), in_.size(), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw ClientError(path_ + ": recv: " + errstr(errno));
    }
    if (n == 0) {
      if (const auto& e = dec_.finish()) throw ClientError(path_ + ": the connection ended early: " + describe(*e));
      if (!hello_seen_) throw ClientError(path_ + ": the daemon closed the connection without answering");
      return false;
    }
    dec_.feed(std::span<const std::byte>(in_.data(), static_cast<std::size_t>(n)));
    return true;
  }
}

std::optional<proto::Frame> ClientConnection::next() {
  flush();
  for (;;) {
    while (auto f = dec_.next()) {
      if (std::holds_alternative<proto::Hello>(*f)) {
        hello_seen_ = true;
        continue;
      }
      return f;
    }
    if (const auto& e = dec_.error())
      throw ClientError(path_ + ": the daemon sent bad data: " + describe(*e));
    if (!receive()) return std::nullopt;
  }
}

std::uint16_t ClientConnection::version() {
  flush();
  while (!hello_seen_) {
    if (dec_.next()) {  // the decoder returns the hello first
      hello_seen_ = true;
      break;
    }
    if (const auto& e = dec_.error())
      throw ClientError(path_ + ": the daemon sent bad data: " + describe(*e));
    (void)receive();  // EOF before the hello throws
  }
  return dec_.version();
}

}  // namespace capturefs::server
