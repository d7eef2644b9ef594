// Conn: one client connection and its reader thread (server.hpp, THREADS).
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <exception>
#include <map>
#include <string>
#include <unordered_map>

#include "core/log.hpp"
#include "core/volume.hpp"
#include "server/conn.hpp"
#include "server/text.hpp"

namespace capturefs::server {

// ============================================================== Conn

Conn::Conn(Server::Impl& srv, int fd, const ucred& peer, std::uint64_t serial)
    : srv_(srv), fd_(fd), efd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)), peer_(peer), serial_(serial) {}

Conn::~Conn() {
  if (obs_thread_.joinable()) obs_thread_.join();
  ::close(fd_);
  if (efd_ >= 0) ::close(efd_);
}

std::string Conn::who() const {
  return "connection " + std::to_string(serial_) + " (pid " + std::to_string(peer_.pid) + ", uid " +
         std::to_string(peer_.uid) + ")";
}

void Conn::start() {
  thread_ = std::thread([self = shared_from_this()] { self->run(); });
}

void Conn::drain_events(std::chrono::milliseconds limit) {
  std::shared_ptr<ObserverQueue> obs;
  {
    std::lock_guard lk(kmu_);
    obs = obs_;
  }
  if (obs) obs->drain(limit);
}

void Conn::kill(proto::Error e, bool shutdown) {
  {
    std::lock_guard lk(kmu_);
    if (!killed_) {
      killed_ = true;
      kill_error_ = std::move(e);
      kill_shutdown_ = shutdown;
    }
  }
  const std::uint64_t one = 1;
  (void)!::write(efd_, &one, sizeof one);
}

void Conn::request_once_close() {
  {
    std::lock_guard lk(kmu_);
    once_close_ = true;
  }
  const std::uint64_t one = 1;
  (void)!::write(efd_, &one, sizeof one);
}

void Conn::begin_dying() {
  if (dying_.load()) return;
  deadline_.store((Clock::now() + srv_.opt.close_grace).time_since_epoch().count());
  dying_.store(true, std::memory_order_release);
}

bool Conn::write_locked(iovec* iov, int n) {
  while (n > 0) {
    if (iov->iov_len == 0) {
      ++iov;
      --n;
      continue;
    }
    msghdr m{};
    m.msg_iov = iov;
    m.msg_iovlen = static_cast<std::size_t>(n);
    const ssize_t r = ::sendmsg(fd_, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r >= 0) {
      auto left = static_cast<std::size_t>(r);
      while (n > 0 && left >= iov->iov_len) {
        left -= iov->iov_len;
        ++iov;
        --n;
      }
      if (n > 0) {
        iov->iov_base = static_cast<char*>(iov->iov_base) + left;
        iov->iov_len -= left;
      }
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return false;
    // The client does not read fast enough: wait (that is the backpressure),
    // but not past the grace period once the connection is closing.
    int timeout = 250;
    if (dying()) {
      const auto left = Clock::time_point(Clock::duration(deadline_.load())) - Clock::now();
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(left).count();
      if (ms <= 0) return false;
      timeout = static_cast<int>(std::min<long long>(ms, 250));
    }
    pollfd p{fd_, POLLOUT, 0};
    (void)::poll(&p, 1, timeout);
  }
  return true;
}

bool Conn::send(std::span<const std::byte> frame, std::span<const std::byte> payload, bool force,
                const std::function<void()>& written) {
  if (frame.empty()) return false;
  if (!force && dying()) return false;
  std::lock_guard lk(wmu_);
  if (broken_ || (!force && dying())) return false;
  iovec iov[2] = {{const_cast<std::byte*>(frame.data()), frame.size()},
                  {const_cast<std::byte*>(payload.data()), payload.size()}};
  if (!write_locked(iov, payload.empty() ? 1 : 2)) {
    broken_ = true;  // possibly cut inside a frame: nothing may follow
    return false;
  }
  if (written) written();
  return true;
}

void Conn::run() {
  std::optional<proto::Error> err;
  bool shutdown = false;
  proto::Decoder dec(proto::Peer::client);
  std::vector<std::byte> buf(64 * 1024);
  const auto hello_deadline = Clock::now() + srv_.opt.handshake_timeout;
  bool hello_done = false;
  for (;;) {
    int timeout = -1;
    if (!hello_done) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(hello_deadline - Clock::now()).count();
      if (left <= 0) {
        err = make_error(ErrorCode::truncated, "no complete hello within " +
                                                   std::to_string(srv_.opt.handshake_timeout.count()) + " ms");
        break;
      }
      timeout = static_cast<int>(left);
    }
    pollfd p[2] = {{fd_, POLLIN, 0}, {efd_, POLLIN, 0}};
    const int r = ::poll(p, 2, timeout);
    if (r < 0 && errno != EINTR) {
      err = make_error(ErrorCode::internal, "poll: " + errstr(errno));
      break;
    }
    if (r <= 0) continue;
    if (p[1].revents != 0) {
      std::uint64_t v;
      (void)!::read(efd_, &v, sizeof v);
      bool once = false;
      {
        std::lock_guard lk(kmu_);
        if (killed_) {
          err = kill_error_;
          shutdown = kill_shutdown_;
          break;
        }
        once = std::exchange(once_close_, false);
      }
      if (once) close_subscription();
    }
    if (p[0].revents == 0) continue;
    const ssize_t n = ::recv(fd_, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      log::debug("socket: {}: recv: {}", who(), errstr(errno));
      break;
    }
    if (n == 0) {
      if (const auto& e = dec.finish()) err = *e;
      break;
    }
    dec.feed(std::span<const std::byte>(buf.data(), static_cast<std::size_t>(n)));
    bool stop = false;
    while (auto f = dec.next()) {
      if ((err = handle(*f, &hello_done))) {
        stop = true;
        break;
      }
    }
    if (stop) break;
    if (dec.error()) {
      err = *dec.error();
      break;
    }
  }
  if (err && !shutdown) log::info("socket: {}: {}: {}", who(), proto::to_string(err->code), err->message);
  teardown(err, shutdown);
  srv_.finished(serial_);
}

std::optional<proto::Error> Conn::handle(proto::Frame& f, bool* hello_done) {
  if (auto* h = std::get_if<proto::Hello>(&f)) {
    // The connection speaks min(client's, ours); the decoder (which holds
    // the same number) refuses what that version does not have. No feature
    // flags exist in v1 or v2, so none is granted.
    *hello_done = true;
    version_ = std::min(h->version, proto::kVersion);
    Bytes b = encode_frame(proto::Hello{version_, 0});
    std::lock_guard lk(wmu_);
    if (!broken_) {
      iovec iov{b.data(), b.size()};
      if (!write_locked(&iov, 1)) broken_ = true;
      hello_sent_ = true;
    }
    return std::nullopt;
  }
  if (auto* s = std::get_if<proto::Subscribe>(&f)) return on_subscribe(*s);
  if (auto* a = std::get_if<proto::Ack>(&f)) return on_ack(*a);
  if (auto* r = std::get_if<proto::StatusRequest>(&f)) return on_status(*r);
  if (auto* p = std::get_if<proto::Peek>(&f)) return on_peek(*p);
  // The decoder only returns client frames from a client.
  return make_error(ErrorCode::bad_type, std::string("unexpected ") + std::string(proto::frame_name(f)));
}

std::optional<proto::Error> Conn::on_subscribe(const proto::Subscribe& s) {
  if (subscribed_)
    return make_error(ErrorCode::bad_state, "a second SUBSCRIBE: a connection has at most one subscription");
  subscribed_ = true;
  core::PathFilter filter = make_filter(s);
  auto matches_any = [&](const std::vector<core::StreamStats>& snap) {
    return std::any_of(snap.begin(), snap.end(), [&](const core::StreamStats& st) { return filter(st.info.path); });
  };

  if (s.observe) {
    observing_ = true;
    {
      std::lock_guard lk(kmu_);  // drain_events() reads it from another thread
      obs_ = std::make_shared<ObserverQueue>(weak_from_this(), srv_.opt.observer_queue_bytes);
    }
    srv_.vol.observe(obs_);
    std::vector<core::StreamStats> snap = srv_.vol.snapshot();
    if (s.nowait && !matches_any(snap)) return make_error(ErrorCode::not_found, "no stream matches");
    if (!send(encode_frame(proto::Subscribed{}))) return std::nullopt;
    obs_thread_ = std::thread([this, filter = std::move(filter), snap = std::move(snap)]() mutable {
      observe_run(std::move(filter), std::move(snap));
    });
    return std::nullopt;
  }

  core::SubscriptionOptions so;
  so.threads = s.once ? 1 : std::max(1U, srv_.opt.delivery_threads);
  so.chunk = proto::kMaxChunk;
  so.window = srv_.opt.window;
  so.auto_ack = false;
  so.max_active = s.once ? 1 : 0;
  auto sink = std::make_shared<ConsumerSink>(*this, s.once);
  sink_ = sink;
  sub_ = srv_.vol.subscribe(filter, sink, so);
  // Streams that matched and had no consumer were handed over inside
  // subscribe(): with NOWAIT, none means nothing can be offered now.
  if (s.nowait && sub_->active_ids().empty()) {
    close_subscription();
    if (matches_any(srv_.vol.snapshot()))
      return make_error(ErrorCode::busy, "every matching stream has a consumer");
    return make_error(ErrorCode::not_found, "no stream matches");
  }
  if (send(encode_frame(proto::Subscribed{}))) sink->open_gate();
  return std::nullopt;
}

void Conn::close_subscription() {
  if (!sub_ || sub_closed_) return;
  sub_closed_ = true;
  if (sink_) sink_->cancel_gate();
  sub_->close();  // streams not finished go to the next consumer
}

std::optional<proto::Error> Conn::on_ack(const proto::Ack& a) {
  if (!subscribed_) return make_error(ErrorCode::bad_state, "ACK before SUBSCRIBE: nothing is consumed yet");
  if (observing_) return make_error(ErrorCode::bad_state, "ACK on an observing connection");
  std::uint64_t sent = 0;
  switch (sink_->ack(a.id, a.offset, &sent)) {
    case ConsumerSink::AckResult::ignored:
      break;
    case ConsumerSink::AckResult::beyond:
      return make_error(ErrorCode::bad_ack, "ACK of stream " + std::to_string(a.id) + " up to offset " +
                                                std::to_string(a.offset) + ", beyond the " + std::to_string(sent) +
                                                " bytes sent");
    case ConsumerSink::AckResult::ok:
      if (!sub_closed_) sub_->ack(a.id, a.offset);
      break;
    case ConsumerSink::AckResult::once_finished:
      if (!sub_closed_) sub_->ack(a.id, a.offset);
      close_subscription();  // ONCE: nothing more about streams
      break;
  }
  return std::nullopt;
}

std::optional<proto::Error> Conn::on_status(const proto::StatusRequest& req) {
  // On a consuming connection, the reply comes after the OPENED of every
  // stream the subscription holds now (a client may use it as a barrier).
  // A tool the client saw exit counts as gone: its empty files have ended.
  srv_.vol.sync_exits();
  if (sink_ && sub_ && !sub_closed_) {
    sub_->announce_all();  // also streams with no byte yet: an empty file whose RELEASE is not in
    (void)sink_->wait_announced(*sub_, Clock::now() + srv_.opt.close_grace);
  }
  const std::vector<core::StreamStats> snap = srv_.vol.snapshot();
  std::vector<proto::StreamStatus> recs;
  recs.reserve(snap.size());
  for (const auto& st : snap) {
    if (!encodable_path(st.info.path)) continue;
    proto::StreamStatus r;
    r.id = st.info.id;
    r.pid = static_cast<std::uint32_t>(st.info.writer_pid);
    r.uid = st.info.writer_uid;
    r.time_ns = ns_of(st.info.created);
    r.written = st.written;
    r.delivered = st.delivered;  // handed to the consumer (sent, or read through the mount)
    r.rate = st.rate;
    r.state = state_of(st);
    r.spilled = st.spilled;  // version 3 (encode_status leaves it out before)
    r.wait = static_cast<proto::WaitReason>(st.wait);
    r.path = st.info.path;
    recs.push_back(std::move(r));
  }
  Bytes b;
  // COMMANDS first (version 2, asked for, and the daemon runs commands):
  // the last STATUS part still ends the reply.
  if (req.commands && version_ >= 2 && srv_.opt.commands) {
    std::vector<proto::CommandStatus> cmds;
    try {
      cmds = srv_.opt.commands();
    } catch (const std::exception& e) {
      return make_error(ErrorCode::internal, std::string("COMMANDS: cannot list the commands: ") + e.what());
    }
    std::erase_if(cmds, [](const proto::CommandStatus& c) { return !encodable_path(c.path); });
    for (auto& c : cmds) {
      if (!valid_utf8(c.note)) c.note = printable(c.note);
      c.note = fit_text(std::move(c.note), proto::kMaxText);
    }
    if (auto e = proto::encode_commands(cmds, b)) return make_error(ErrorCode::internal, "COMMANDS: " + e->message);
  }
  if (auto e = proto::encode_status(recs, b, version_)) return make_error(ErrorCode::internal, "STATUS: " + e->message);
  send(b);
  return std::nullopt;
}

std::optional<proto::Error> Conn::on_peek(const proto::Peek& p) {
  // Version 3 (the decoder refuses PEEK before). Consumes nothing: the
  // bytes are read back like a writer reads its own.
  proto::Peeked out;
  auto r = srv_.vol.peek(p.path, p.size);
  if (r) {
    out.id = r->id;
    out.offset = r->offset;
    out.written = r->written;
    out.bytes = std::move(r->bytes);
  } else if (r.error() != ENOENT) {
    return make_error(ErrorCode::internal, "PEEK '" + printable(p.path) + "': " + std::strerror(r.error()));
  }
  send(encode_frame(out));
  return std::nullopt;
}

void Conn::observe_run(core::PathFilter filter, std::vector<core::StreamStats> snap) {
  // Every live stream we know of (matching or not: a rename may make it
  // match), whether this observer was sent its OPENED.
  struct Known {
    core::StreamInfo info;
    bool sent = false;
  };
  std::unordered_map<std::uint64_t, Known> known;
  // Events of one stream may reach us out of order (they are delivered by
  // whichever thread made the change): an end or rename seen before the
  // creation is kept until the creation arrives.
  std::map<std::uint64_t, core::StreamEnd> ended_early;
  std::unordered_map<std::uint64_t, std::string> renamed_early;
  constexpr std::size_t kEarlyLimit = 4096;

  auto opened = [&](Known& k, std::uint64_t offset) {
    if (!encodable_path(k.info.path)) return;
    send(encode_frame(opened_of(k.info, offset)));
    k.sent = true;
  };
  for (auto& st : snap) {
    Known k{st.info, false};
    if (filter(k.info.path)) opened(k, st.written);
    known.emplace(st.info.id, std::move(k));
  }
  snap.clear();

  std::deque<ObserverQueue::Event> batch;
  while (obs_->pop(batch)) {
    for (auto& e : batch) {
      switch (e.kind) {
        case ObserverQueue::Event::created: {
          if (known.contains(e.id)) break;  // already seen in the snapshot
          Known k{std::move(e.info), false};
          if (auto r = renamed_early.find(e.id); r != renamed_early.end()) {
            k.info.path = std::move(r->second);
            renamed_early.erase(r);
          }
          const bool match = filter(k.info.path);
          if (match) opened(k, 0);
          if (auto t = ended_early.find(e.id); t != ended_early.end()) {
            if (k.sent) send(encode_frame(closed_of(e.id, t->second)));
            ended_early.erase(t);
            break;
          }
          known.emplace(e.id, std::move(k));
          break;
        }
        case ObserverQueue::Event::renamed: {
          auto it = known.find(e.id);
          if (it == known.end()) {
            if (renamed_early.size() < kEarlyLimit) renamed_early[e.id] = std::move(e.path);
            break;
          }
          Known& k = it->second;
          const bool same = k.info.path == e.path;
          k.info.path = std::move(e.path);
          if (k.sent) {
            if (!same && encodable_path(k.info.path)) send(encode_frame(proto::Renamed{e.id, k.info.path}));
          } else if (filter(k.info.path)) {
            std::uint64_t written = 0;  // renamed into a match: bytes written so far
            for (const auto& st : srv_.vol.snapshot())
              if (st.info.id == e.id) written = st.written;
            opened(k, written);
          }
          break;
        }
        case ObserverQueue::Event::ended: {
          auto it = known.find(e.id);
          if (it == known.end()) {
            ended_early[e.id] = e.end;
            while (ended_early.size() > kEarlyLimit) ended_early.erase(ended_early.begin());
            break;
          }
          if (it->second.sent) send(encode_frame(closed_of(e.id, e.end)));
          known.erase(it);
          break;
        }
      }
    }
    batch.clear();
  }
}

void Conn::teardown(const std::optional<proto::Error>& err, bool shutdown) {
  begin_dying();
  close_subscription();  // delivery threads stop; unfinished streams go on
  if (obs_) {
    srv_.vol.unobserve(obs_.get());
    obs_->stop();
    if (obs_thread_.joinable()) obs_thread_.join();
  }
  // The last words. A delivery thread may still be finishing a DATA (its
  // write holds wmu_): the totals are read under wmu_, so each is exactly
  // the bytes the client was sent before its CLOSED.
  if (shutdown && sink_) {
    std::lock_guard lk(wmu_);
    for (const auto& [id, wired] : sink_->unclosed()) {
      if (broken_) break;
      const Bytes b = encode_frame(proto::Closed{id, wired, proto::CloseStatus::aborted, "shutdown"});
      iovec iov{const_cast<std::byte*>(b.data()), b.size()};
      if (!write_locked(&iov, 1)) broken_ = true;
    }
  }
  if (err) {
    std::lock_guard lk(wmu_);
    if (!broken_) {
      Bytes b;
      // No hello of ours yet (the client's was bad, late, or not in when
      // the daemon stopped): the lowest version, which every client accepts.
      if (!hello_sent_) (void)proto::encode(proto::Hello{proto::kMinVersion, 0}, b);
      if (auto e = proto::encode(*err, b)) log::error("socket: cannot encode ERROR: {}", e->message);
      iovec iov{b.data(), b.size()};
      if (!write_locked(&iov, 1)) broken_ = true;
    }
  }
  ::shutdown(fd_, SHUT_WR);
  // Unread input would turn the client's EOF into ECONNRESET (Linux
  // AF_UNIX) before it reads our ERROR: drop what is queued.
  char drop[4096];
  for (int i = 0; i < 256 && ::recv(fd_, drop, sizeof drop, MSG_DONTWAIT) > 0; ++i) {
  }
  ::shutdown(fd_, SHUT_RDWR);
  log::debug("socket: {} closed", who());
}

}  // namespace capturefs::server
