#include "server/server.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/delivery.hpp"
#include "core/log.hpp"
#include "core/sink.hpp"
#include "core/volume.hpp"
#include "proto/codec.hpp"
#include "server/text.hpp"

namespace capturefs::server {

namespace {

using Clock = std::chrono::steady_clock;
using Bytes = std::vector<std::byte>;
using proto::ErrorCode;

std::string errstr(int e) { return std::strerror(e); }

std::int64_t ns_of(const timespec& t) {
  return static_cast<std::int64_t>(t.tv_sec) * 1000000000 + static_cast<std::int64_t>(t.tv_nsec);
}

proto::Error make_error(ErrorCode code, std::string message) {
  return proto::Error{code, fit_text(std::move(message), proto::kMaxText)};
}

core::PathFilter make_filter(const proto::Subscribe& s) {
  if (s.literal) {
    return [patterns = s.patterns](std::string_view path) {
      return std::find(patterns.begin(), patterns.end(), path) != patterns.end();
    };
  }
  return core::glob_filter(s.patterns);
}

proto::StreamState state_of(const core::StreamStats& st) {
  if (st.writers > 0) return st.consumer ? proto::StreamState::streaming : proto::StreamState::writing;
  return st.consumer ? proto::StreamState::draining : proto::StreamState::held;
}

bool encodable_path(std::string_view p) {
  return !p.empty() && p.size() <= proto::kMaxPath && p.find('\0') == std::string_view::npos;
}

Bytes encode_frame(const proto::Frame& f) {
  Bytes b;
  if (auto e = proto::encode(f, b)) log::error("socket: cannot encode {}: {}", proto::frame_name(f), e->message);
  return b;
}

proto::Opened opened_of(const core::StreamInfo& i, std::uint64_t offset) {
  proto::Opened o;
  o.id = i.id;
  o.offset = offset;
  o.time_ns = ns_of(i.created);
  o.pid = static_cast<std::uint32_t>(i.writer_pid);
  o.uid = i.writer_uid;
  o.path = i.path;
  return o;
}

proto::Closed closed_of(std::uint64_t id, const core::StreamEnd& end) {
  proto::Closed c;
  c.id = id;
  c.total = end.total;
  c.status = end.complete ? proto::CloseStatus::complete : proto::CloseStatus::aborted;
  if (!end.complete) {
    c.reason = fit_text(printable(end.reason), proto::kMaxText);
    if (c.reason.empty()) c.reason = "aborted";
  }
  return c;
}

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

// ============================================================== Listener

std::unique_ptr<Listener> Listener::open(const std::string& path_in, std::string* error) {
  auto fail = [&](std::string msg) -> std::unique_ptr<Listener> {
    *error = std::move(msg);
    return nullptr;
  };
  if (path_in.empty()) return fail("socket path is empty");
  std::string path = path_in;
  if (path[0] != '/') {
    char cwd[PATH_MAX];
    if (::getcwd(cwd, sizeof cwd) == nullptr) return fail("socket " + path_in + ": getcwd: " + errstr(errno));
    path = std::string(cwd) + "/" + path;
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path)
    return fail("socket " + path + ": path too long (" + std::to_string(path.size()) + " bytes; a Unix socket path has at most " +
                std::to_string(sizeof addr.sun_path - 1) + ")");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);

  struct stat st{};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return fail("socket " + path + ": exists and is not a socket (not replacing it)");
    // A socket file: is a daemon listening on it? (Non-blocking, so that a
    // live daemon with a full backlog cannot make us wait.)
    const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (probe < 0) return fail("socket: " + errstr(errno));
    const int rc = ::connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    const int err = rc == 0 ? 0 : errno;
    ::close(probe);
    if (rc == 0 || err == EAGAIN || err == EINPROGRESS)
      return fail("socket " + path + " is in use: another capturefs daemon is listening there");
    if (err != ECONNREFUSED) return fail("socket " + path + ": cannot check the existing socket: " + errstr(err));
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
      return fail("socket " + path + ": cannot remove the stale socket: " + errstr(errno));
    log::info("socket {}: replaced a stale socket (no daemon was listening)", path);
  } else if (errno != ENOENT) {
    return fail("socket " + path + ": " + errstr(errno));
  }

  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail("socket: " + errstr(errno));
  // Mode 0600 from the start: there is no moment when others may connect.
  const mode_t old = ::umask(0177);
  const int rc = ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int berr = errno;
  ::umask(old);
  if (rc != 0) {
    ::close(fd);
    if (berr == EADDRINUSE) return fail("socket " + path + " is in use (created meanwhile by another process)");
    return fail("socket " + path + ": bind: " + errstr(berr));
  }
  auto l = std::unique_ptr<Listener>(new Listener());
  l->fd_ = fd;
  l->path_ = path;
  if (::lstat(path.c_str(), &st) == 0) {
    l->dev_ = st.st_dev;
    l->ino_ = st.st_ino;
  }
  (void)::chmod(path.c_str(), 0600);
  if (::listen(fd, 128) != 0) {
    const int lerr = errno;
    l->close();
    return fail("socket " + path + ": listen: " + errstr(lerr));
  }
  return l;
}

Listener::~Listener() { close(); }

void Listener::close() {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  // Remove the path only if it is still our socket (not one a newer daemon
  // put there after ours was removed).
  struct stat st{};
  if (::lstat(path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev_ && st.st_ino == ino_)
    ::unlink(path_.c_str());
}

// ============================================================== connections

class Conn;

/// The core Sink of a consuming connection: encodes the stream events as
/// frames and writes them to the socket on the delivery thread that calls it.
class ConsumerSink final : public core::Sink {
 public:
  ConsumerSink(Conn& c, bool once) : c_(c), once_(once) {}

  void on_open(const core::StreamInfo& info) override;
  void on_data(std::uint64_t id, std::uint64_t offset, std::span<const std::byte> bytes) override;
  void on_rename(std::uint64_t id, const std::string& path) override;
  void on_close(std::uint64_t id, const core::StreamEnd& end) override;

  /// SUBSCRIBED is out: stream frames may follow.
  void open_gate() { set_gate(Gate::open); }
  /// Nothing more is sent for streams (the subscription is being closed).
  void cancel_gate() { set_gate(Gate::cancelled); }

  enum class AckResult { ignored, ok, beyond, once_finished };
  AckResult ack(std::uint64_t id, std::uint64_t offset, std::uint64_t* sent);
  /// Waits until every stream `sub` holds has had its OPENED written (or
  /// suppressed), so that a STATUS reply written next comes after them.
  bool wait_announced(core::Subscription& sub, Clock::time_point deadline);
  /// Streams given OPENED and not CLOSED: id -> bytes sent.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> unclosed();

 private:
  enum class Gate { waiting, open, cancelled };
  struct Held {
    std::uint64_t sent = 0;   // end of the last DATA handed to the socket
    std::uint64_t wired = 0;  // end of the last DATA written whole to the socket
    std::uint64_t acked = 0;  // highest ACK (starts at OPENED's offset)
    bool announced = false;   // OPENED written
    bool closed = false;      // CLOSED (complete) written
    std::uint64_t total = 0;
  };
  void set_gate(Gate g) {
    {
      std::lock_guard lk(mu_);
      if (gate_ == Gate::waiting || g == Gate::cancelled) gate_ = g;
    }
    cv_.notify_all();
  }
  bool wait_gate() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return gate_ != Gate::waiting; });
    return gate_ == Gate::open;
  }

  Conn& c_;
  const bool once_;
  // Lock order: Conn::wmu_ before this (a DATA's `wired` is moved under
  // both, and teardown reads it under both). wait_announced calls
  // Subscription::due_ids under it (Subscription::mu_, then Stream::mu_ of
  // each unopened stream).
  std::mutex mu_;
  std::condition_variable cv_;
  Gate gate_ = Gate::waiting;
  std::unordered_map<std::uint64_t, Held> held_;
  std::unordered_set<std::uint64_t> suppressed_;  // given to us, never announced
  // Streams closed complete on this connection, newest last (bounded): a
  // rename by their creator afterwards is still sent as RENAMED.
  static constexpr std::size_t kEndedKept = 4096;
  std::unordered_set<std::uint64_t> ended_;
  std::deque<std::uint64_t> ended_order_;
  bool once_taken_ = false;
  std::uint64_t once_id_ = 0;
};

/// The core Observer of an observing connection: queues the events for the
/// connection's writer thread (callbacks must not block).
class ObserverQueue final : public core::Observer {
 public:
  struct Event {
    enum Kind { created, renamed, ended } kind = created;
    std::uint64_t id = 0;
    core::StreamInfo info;  // created
    std::string path;       // renamed
    core::StreamEnd end;    // ended
  };

  ObserverQueue(std::weak_ptr<Conn> c, std::size_t limit) : conn_(std::move(c)), limit_(limit) {}

  void created(const core::StreamInfo& info) override {
    Event e;
    e.kind = Event::created;
    e.id = info.id;
    e.info = info;
    push(std::move(e), info.path.size());
  }
  void renamed(std::uint64_t id, const std::string& path) override {
    Event e;
    e.kind = Event::renamed;
    e.id = id;
    e.path = path;
    push(std::move(e), path.size());
  }
  void ended(std::uint64_t id, const core::StreamEnd& end) override {
    Event e;
    e.kind = Event::ended;
    e.id = id;
    e.end = end;
    push(std::move(e), end.reason.size());
  }

  /// Waits for events; false once stopped.
  bool pop(std::deque<Event>& out) {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return stopped_ || !q_.empty(); });
    if (stopped_) return false;
    out.swap(q_);
    bytes_ = 0;
    return true;
  }
  void stop() {
    {
      std::lock_guard lk(mu_);
      stopped_ = true;
    }
    cv_.notify_all();
  }

 private:
  void push(Event e, std::size_t size);

  const std::weak_ptr<Conn> conn_;
  const std::size_t limit_;
  std::mutex mu_;  // leaf
  std::condition_variable cv_;
  std::deque<Event> q_;
  std::size_t bytes_ = 0;
  bool stopped_ = false;
  bool overflow_ = false;
};

class Conn : public std::enable_shared_from_this<Conn> {
 public:
  Conn(Server::Impl& srv, int fd, const ucred& peer, std::uint64_t serial);
  ~Conn();
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  void start();
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  std::uint64_t serial() const { return serial_; }

  /// Ends the connection from another thread: the reader thread sends `e`
  /// (after CLOSED "shutdown" for held streams if `shutdown`) and closes.
  /// Never blocks.
  void kill(proto::Error e, bool shutdown = false);
  /// The ONCE stream is finished: the reader thread closes the subscription.
  void request_once_close();
  /// From now on only frames already being written are completed, within
  /// the grace period; nothing new is sent but the final ERROR.
  void begin_dying();
  bool dying() const { return dying_.load(std::memory_order_acquire); }

  /// Writes a whole frame (and `payload` after it) under the write mutex.
  /// False if the connection is closing or broken. `force`: also while
  /// dying (the last words: CLOSED "shutdown", ERROR). `written` runs under
  /// the write mutex once the frame is out whole.
  bool send(std::span<const std::byte> frame, std::span<const std::byte> payload = {}, bool force = false,
            const std::function<void()>& written = {});


 private:
  void run();
  std::optional<proto::Error> handle(proto::Frame& f, bool* hello_done);
  std::optional<proto::Error> on_subscribe(const proto::Subscribe& s);
  std::optional<proto::Error> on_ack(const proto::Ack& a);
  std::optional<proto::Error> on_status(const proto::StatusRequest& r);
  std::optional<proto::Error> on_peek(const proto::Peek& p);
  void observe_run(core::PathFilter filter, std::vector<core::StreamStats> snap);
  void close_subscription();
  void teardown(const std::optional<proto::Error>& err, bool shutdown);
  bool write_locked(iovec* iov, int n);
  std::string who() const;

  Server::Impl& srv_;
  const int fd_;
  const int efd_;  // wakes the reader thread (kill, once-close)
  const ucred peer_;
  const std::uint64_t serial_;
  std::thread thread_;

  // Writing.
  std::mutex wmu_;
  bool broken_ = false;      // guarded by wmu_: a write failed; nothing more is sent
  bool hello_sent_ = false;  // guarded by wmu_
  std::atomic<bool> dying_{false};
  std::atomic<Clock::rep> deadline_{0};

  // Requests from other threads.
  std::mutex kmu_;
  std::optional<proto::Error> kill_error_;
  bool killed_ = false;
  bool kill_shutdown_ = false;
  bool once_close_ = false;

  // Reader thread state.
  std::shared_ptr<ConsumerSink> sink_;
  std::shared_ptr<core::Subscription> sub_;
  bool sub_closed_ = false;
  std::shared_ptr<ObserverQueue> obs_;
  std::thread obs_thread_;
  bool subscribed_ = false;
  bool observing_ = false;
  std::uint16_t version_ = 0;  // the connection's protocol version, once the hello is in
};

// ============================================================== Server::Impl

struct Server::Impl {
  Impl(core::Volume& v, std::unique_ptr<Listener> l, ServerOptions o)
      : vol(v), listener(std::move(l)), opt(o), path(listener->path()) {
    opt.window = std::max<std::size_t>(opt.window, proto::kMaxChunk);
  }

  core::Volume& vol;
  std::unique_ptr<Listener> listener;
  ServerOptions opt;
  const std::string path;
  int wake_fd = -1;
  std::thread acceptor;

  mutable std::mutex mu;  // leaf
  std::unordered_map<std::uint64_t, std::shared_ptr<Conn>> conns;
  std::vector<std::uint64_t> done;
  std::uint64_t next_serial = 1;
  bool started = false;
  bool stopped = false;

  void wake() const {
    const std::uint64_t one = 1;
    (void)!::write(wake_fd, &one, sizeof one);
  }
  void finished(std::uint64_t serial) {
    {
      std::lock_guard lk(mu);
      done.push_back(serial);
    }
    wake();
  }
  void reap() {
    std::vector<std::shared_ptr<Conn>> gone;
    {
      std::lock_guard lk(mu);
      for (std::uint64_t s : done) {
        if (auto it = conns.find(s); it != conns.end()) {
          gone.push_back(it->second);
          conns.erase(it);
        }
      }
      done.clear();
    }
    for (auto& c : gone) c->join();
  }
  void accept_loop();
};

// ============================================================== ConsumerSink

void ConsumerSink::on_open(const core::StreamInfo& info) {
  const bool open = wait_gate();
  {
    std::lock_guard lk(mu_);
    if (!open || c_.dying() || (once_ && once_taken_) || !encodable_path(info.path)) {
      if (!encodable_path(info.path))
        log::warn("socket: stream {} not sent: its path is longer than {} bytes", info.id, proto::kMaxPath);
      suppressed_.insert(info.id);
      cv_.notify_all();
      return;
    }
    once_taken_ = true;
    once_id_ = info.id;
    Held& h = held_[info.id];
    h.sent = h.acked = h.wired = info.start_offset;
  }
  const Bytes b = encode_frame(opened_of(info, info.start_offset));
  c_.send(b);
  {
    std::lock_guard lk(mu_);
    if (auto it = held_.find(info.id); it != held_.end()) it->second.announced = true;
  }
  cv_.notify_all();
}

void ConsumerSink::on_data(std::uint64_t id, std::uint64_t offset, std::span<const std::byte> bytes) {
  {
    std::lock_guard lk(mu_);
    auto it = held_.find(id);
    if (it == held_.end()) return;  // suppressed
    it->second.sent = offset + bytes.size();
  }
  Bytes head;
  if (auto e = proto::encode_data_header(id, offset, bytes.size(), head)) {
    log::error("socket: DATA: {}", e->message);
    return;
  }
  // `sent` moved first, so that an ACK racing the send is never "beyond";
  // a DATA the closing connection refused was not sent after all. `wired`
  // moves once the frame is out: a shutdown CLOSED says what the client got.
  const std::uint64_t end = offset + bytes.size();
  const auto wired = [&] {  // under Conn::wmu_: a shutdown CLOSED after this counts it
    std::lock_guard lk(mu_);
    if (auto it = held_.find(id); it != held_.end()) it->second.wired = end;
  };
  if (!c_.send(head, bytes, /*force=*/false, wired)) {
    std::lock_guard lk(mu_);
    auto it = held_.find(id);
    if (it != held_.end() && it->second.sent == offset + bytes.size()) it->second.sent = offset;
  }
}

void ConsumerSink::on_rename(std::uint64_t id, const std::string& path) {
  {
    std::lock_guard lk(mu_);
    // A stream closed on this connection may be renamed by its creator
    // afterwards (rsync): RENAMED after CLOSED (docs/protocol.md).
    if (!held_.contains(id) && !ended_.contains(id)) return;
  }
  if (!encodable_path(path)) return;
  c_.send(encode_frame(proto::Renamed{id, path}));
}

void ConsumerSink::on_close(std::uint64_t id, const core::StreamEnd& end) {
  {
    std::lock_guard lk(mu_);
    if (suppressed_.erase(id) != 0 || !held_.contains(id)) return;
  }
  c_.send(encode_frame(closed_of(id, end)));
  bool once_end = false;
  {
    std::lock_guard lk(mu_);
    if (end.complete) {
      ended_.insert(id);
      ended_order_.push_back(id);
      if (ended_order_.size() > kEndedKept) {
        ended_.erase(ended_order_.front());
        ended_order_.pop_front();
      }
    }
    auto it = held_.find(id);
    if (it == held_.end()) return;
    bool gone = !end.complete;  // aborted: acks are ignored from now on
    if (end.complete) {
      it->second.closed = true;
      it->second.total = end.total;
      gone = it->second.acked >= end.total;  // acknowledged before CLOSED: finished
    }
    if (gone) held_.erase(it);
    once_end = once_ && id == once_id_ && gone;
  }
  if (once_end) c_.request_once_close();
}

ConsumerSink::AckResult ConsumerSink::ack(std::uint64_t id, std::uint64_t offset, std::uint64_t* sent) {
  std::lock_guard lk(mu_);
  auto it = held_.find(id);
  if (it == held_.end()) return AckResult::ignored;  // finished, aborted, or not ours
  Held& h = it->second;
  *sent = h.sent;
  if (offset > h.sent) return AckResult::beyond;
  if (offset <= h.acked) return AckResult::ignored;
  h.acked = offset;
  if (h.closed && offset >= h.total) {
    held_.erase(it);
    return once_ && id == once_id_ ? AckResult::once_finished : AckResult::ok;
  }
  return AckResult::ok;
}

bool ConsumerSink::wait_announced(core::Subscription& sub, Clock::time_point deadline) {
  std::unique_lock lk(mu_);
  auto done = [&] {
    if (gate_ == Gate::cancelled || c_.dying()) return true;
    for (const std::uint64_t id : sub.due_ids()) {
      if (suppressed_.contains(id)) continue;
      auto it = held_.find(id);
      if (it == held_.end() || !it->second.announced) return false;
    }
    return sub.late_renames_pending() == 0;  // renames after CLOSED are out too
  };
  // on_open notifies; a stream that ended is dropped from held_ in
  // on_close and leaves the subscription right after without telling us,
  // hence the short slices.
  while (!done()) {
    if (Clock::now() >= deadline) return false;
    cv_.wait_until(lk, std::min(deadline, Clock::now() + std::chrono::milliseconds(5)));
  }
  return true;
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> ConsumerSink::unclosed() {
  std::lock_guard lk(mu_);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  for (const auto& [id, h] : held_)
    if (h.announced && !h.closed) out.emplace_back(id, h.wired);
  std::sort(out.begin(), out.end());
  return out;
}

// ============================================================== ObserverQueue

void ObserverQueue::push(Event e, std::size_t size) {
  bool overflow = false;
  {
    std::lock_guard lk(mu_);
    if (stopped_ || overflow_) return;
    const std::size_t cost = size + 64;
    if (bytes_ + cost > limit_) {
      overflow_ = overflow = true;
    } else {
      bytes_ += cost;
      q_.push_back(std::move(e));
    }
  }
  if (overflow) {
    if (auto c = conn_.lock())
      c->kill(make_error(ErrorCode::internal, "observer too slow: more than " + std::to_string(limit_) +
                                                  " bytes of events were waiting to be sent"));
    return;
  }
  cv_.notify_one();
}

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
    obs_ = std::make_shared<ObserverQueue>(weak_from_this(), srv_.opt.observer_queue_bytes);
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
  // First nobody sends anything new (streams handed from one closing
  // consumer to another are not announced), then each ends.
  for (auto& c : all) c->begin_dying();
  for (auto& c : all) c->kill(make_error(ErrorCode::shutdown, "the daemon is stopping"), /*shutdown=*/true);
  for (auto& c : all) c->join();
  std::lock_guard lk(impl_->mu);
  impl_->conns.clear();
  impl_->done.clear();
}

}  // namespace capturefs::server
