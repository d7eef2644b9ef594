#include "server/server.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/log.hpp"
#include "proto/codec.hpp"
#include "server/conn.hpp"
#include "server/wire.hpp"

namespace capturefs::server {

namespace {

/// Sends what fits without waiting and closes: for refusals right after
/// accept (the socket buffer of a fresh connection has room for a few
/// small frames).
void refuse(int fd, const proto::Error& e) {
  Bytes b;
  // The client's hello is not read: answer with the lowest version, which
  // every client accepts (the ERROR frame is the same in every version).
  (void)proto::encode(proto::Hello{proto::kMinVersion, 0}, b);
  (void)proto::encode(e, b);
  (void)::send(fd, b.data(), b.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  ::shutdown(fd, SHUT_WR);
  // Unread bytes in our receive queue would turn the peer's EOF into
  // ECONNRESET (Linux AF_UNIX) before it reads the ERROR: drop them first.
  char sink[4096];
  for (int i = 0; i < 64 && ::recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; ++i) {
  }
  ::close(fd);
}

}  // namespace

// ============================================================== accepting

void Server::Impl::accept_loop() {
  const int lfd = listener->fd();
  for (;;) {
    pollfd p[2] = {{lfd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    if (::poll(p, 2, -1) < 0 && errno != EINTR) {
      log::error("socket {}: poll: {}", path, errstr(errno));
      return;
    }
    if (p[1].revents != 0) {
      std::uint64_t v;
      (void)!::read(wake_fd, &v, sizeof v);
      reap();
      std::lock_guard lk(mu);
      if (stopped) return;
    }
    if (p[0].revents == 0) continue;
    const int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      const int e = errno;
      if (e == EINTR || e == EAGAIN || e == ECONNABORTED) continue;
      log::error("socket {}: accept: {}", path, errstr(e));
      if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
        // Out of descriptors: give connections a moment to close.
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      return;
    }
    // A send buffer that holds a whole DATA frame: with the default
    // (~208 KiB here) a 1 MiB frame took five or more hand-offs between
    // the delivery thread and the client. The kernel caps it at
    // net.core.wmem_max; the bytes in it are still counted in the memory
    // budget (the stream keeps them until they are acknowledged).
    const int sndbuf = static_cast<int>(proto::kMaxChunk + 64 * 1024);
    (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      log::warn("socket {}: refused a connection: SO_PEERCRED: {}", path, errstr(errno));
      refuse(fd, make_error(ErrorCode::internal, "cannot identify the peer"));
      continue;
    }
    if (cred.uid != ::geteuid() && cred.uid != 0) {
      log::warn("socket {}: refused a connection from uid {} (pid {}): only uid {} and root may connect", path,
                cred.uid, cred.pid, ::geteuid());
      refuse(fd, make_error(ErrorCode::internal, "permission denied: uid " + std::to_string(cred.uid) +
                                                     " may not use this daemon (only uid " +
                                                     std::to_string(::geteuid()) + " and root)"));
      continue;
    }
    std::shared_ptr<Conn> c;
    {
      std::lock_guard lk(mu);
      if (conns.size() >= opt.max_connections) {
        log::warn("socket {}: refused a connection: {} connections already", path, conns.size());
        refuse(fd, make_error(ErrorCode::internal, "too many connections"));
        continue;
      }
      c = std::make_shared<Conn>(*this, fd, cred, next_serial++);
      conns.emplace(c->serial(), c);
    }
    log::debug("socket {}: connection {} from pid {} uid {}", path, c->serial(), cred.pid, cred.uid);
    c->start();
  }
}

// ============================================================== Server

Server::Server(core::Volume& vol, std::unique_ptr<Listener> listener, ServerOptions opt)
    : impl_(std::make_shared<Impl>(vol, std::move(listener), opt)) {
  impl_->wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

Server::~Server() {
  stop();
  if (impl_->wake_fd >= 0) ::close(impl_->wake_fd);
}

const std::string& Server::path() const { return impl_->path; }

std::size_t Server::connections() const {
  std::lock_guard lk(impl_->mu);
  return impl_->conns.size() - impl_->done.size();
}

void Server::start() {
  std::lock_guard lk(impl_->mu);
  if (impl_->started || impl_->stopped) return;
  impl_->started = true;
  impl_->acceptor = std::thread([i = impl_.get()] { i->accept_loop(); });
}

void Server::stop() {
  {
    std::lock_guard lk(impl_->mu);
    if (impl_->stopped) return;
    impl_->stopped = true;
  }
  impl_->wake();
  if (impl_->acceptor.joinable()) impl_->acceptor.join();
  impl_->listener->close();  // new clients get ECONNREFUSED/ENOENT from here on
  std::vector<std::shared_ptr<Conn>> all;
  {
    std::lock_guard lk(impl_->mu);
    for (auto& [s, c] : impl_->conns) all.push_back(c);
  }
  // Observers get the events already queued (the streams an unmount
  // discarded, for `capturefs umount`), then nobody sends anything new
  // (streams handed from one closing consumer to another are not
  // announced), then each ends.
  for (auto& c : all) c->drain_events(std::chrono::seconds(2));
  for (auto& c : all) c->begin_dying();
  for (auto& c : all) c->kill(make_error(ErrorCode::shutdown, "the daemon is stopping"), /*shutdown=*/true);
  for (auto& c : all) c->join();
  std::lock_guard lk(impl_->mu);
  impl_->conns.clear();
  impl_->done.clear();
}

}  // namespace capturefs::server
