// Internal to the server (src/server/*.cpp): a connection (Conn), the
// core Sink of a consuming one (ConsumerSink), the core Observer of an
// observing one (ObserverQueue), and the state they share with the accept
// thread (Server::Impl). THREADS and SECURITY are described in server.hpp.
//
// LOCK ORDER (the server's mutexes; the core's below them are described in
// src/core/volume.hpp):
//   Conn::wmu_ -> ConsumerSink::mu_
//   ConsumerSink::mu_ -> Subscription::mu_, then Stream::mu_, one at a
//     time (Subscription::due_ids() and late_renames_pending(), in
//     wait_announced)
//   Conn::kmu_, ObserverQueue::mu_ and Server::Impl::mu are leaves.
// No server mutex is taken under a core lock (the core calls sinks and
// observers with none held), and none is held while the server calls the
// Volume, except ConsumerSink::mu_ as above.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/delivery.hpp"
#include "core/sink.hpp"
#include "proto/codec.hpp"
#include "server/server.hpp"
#include "server/wire.hpp"

namespace capturefs::server {

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
  // each unopened stream, one at a time). No core lock is held when it is
  // taken; nothing else is taken under it.
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
    busy_ = false;  // the last batch is out
    drained_.notify_all();
    cv_.wait(lk, [&] { return stopped_ || !q_.empty(); });
    if (stopped_) return false;
    out.swap(q_);
    bytes_ = 0;
    busy_ = true;
    return true;
  }
  /// Waits (at most `limit`) until every event queued so far is sent: the
  /// daemon's last words to an observer (`capturefs umount` learns which
  /// streams the unmount discarded).
  void drain(std::chrono::milliseconds limit) {
    std::unique_lock lk(mu_);
    drained_.wait_for(lk, limit, [&] { return stopped_ || (q_.empty() && !busy_); });
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
  // Lock order: a leaf. Taken by core Observer callbacks (no core lock
  // held) and the writer thread; released before kill() is called.
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable drained_;  // drain(): the queue is empty and sent
  std::deque<Event> q_;
  std::size_t bytes_ = 0;
  bool stopped_ = false;
  bool overflow_ = false;
  bool busy_ = false;  // the writer thread is sending a batch it popped
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
  /// An observer: waits (at most `limit`) until the events queued so far
  /// are sent. Called before begin_dying() at shutdown.
  void drain_events(std::chrono::milliseconds limit);
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

  // Writing. Lock order: taken with no other lock held (a delivery thread
  // in a sink call, or the reader thread); ConsumerSink::mu_ may be taken
  // under it (send()'s `written`, teardown's unclosed()). Held across the
  // blocking socket write: that is the backpressure on this client only.
  std::mutex wmu_;
  bool broken_ = false;      // guarded by wmu_: a write failed; nothing more is sent
  bool hello_sent_ = false;  // guarded by wmu_
  std::atomic<bool> dying_{false};
  std::atomic<Clock::rep> deadline_{0};

  // Requests from other threads. Lock order: a leaf, held only to set or
  // take these fields (the eventfd is written after unlocking).
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

  // Lock order: a leaf (guards conns, done, next_serial, started, stopped):
  // nothing is called under it but refusing a connection and making a Conn
  // (syscalls, no lock); connections are joined and killed after copying.
  mutable std::mutex mu;
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

}  // namespace capturefs::server
