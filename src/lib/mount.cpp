// libcapturefs: the Mount and Consumer facade over the core volume, the
// FUSE session and push delivery. The capturefs CLI is built on it too.
#include <malloc.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <system_error>
#include <thread>

#include "capturefs/capturefs.hpp"
#include "core/delivery.hpp"
#include "core/exit_watch.hpp"
#include "core/log.hpp"
#include "core/spill.hpp"
#include "core/trim.hpp"
#include "core/volume.hpp"
#include "fuse/session.hpp"
#include "lib/preflight.hpp"
#include "server/server.hpp"

namespace capturefs {

void Ack::operator()() const {
  if (fn_) fn_();
}

namespace {

// Adapts the public callbacks to the core's Sink.
class CallbackSink : public core::Sink {
 public:
  explicit CallbackSink(Callbacks cb) : cb_(std::move(cb)) {}

  void on_subscribed(const std::shared_ptr<core::Subscription>& s) override { sub_ = s; }
  void on_open(const core::StreamInfo& i) override {
    if (!cb_.on_open) return;
    StreamOpen o;
    o.id = i.id;
    o.path = i.path;
    o.writer_pid = i.writer_pid;
    o.writer_uid = i.writer_uid;
    o.created = i.created;
    o.start_offset = i.start_offset;
    try {
      cb_.on_open(o);
    } catch (const AbortStream& e) {
      abort(i.id, e.what());
    }
  }
  void on_data(std::uint64_t id, std::uint64_t off, std::span<const std::byte> b) override {
    const Chunk c{id, off, b};
    try {
      if (cb_.on_data_async) {
        const std::uint64_t upto = off + b.size();
        cb_.on_data_async(c, Ack([w = sub_, id, upto] {
          if (auto s = w.lock()) s->ack(id, upto);
        }));
      } else if (cb_.on_data) {
        cb_.on_data(c);
      }
    } catch (const AbortStream& e) {
      abort(id, e.what());
    }
  }
  void on_rename(std::uint64_t id, const std::string& path) override {
    if (cb_.on_rename) cb_.on_rename(id, path);
  }
  void on_close(std::uint64_t id, const core::StreamEnd& e) override {
    if (cb_.on_close) cb_.on_close(StreamClose{id, e.total, e.complete, e.reason});
  }
  bool async() const { return static_cast<bool>(cb_.on_data_async); }

 private:
  void abort(std::uint64_t id, const std::string& reason) {
    if (auto s = sub_.lock()) s->abort(id, reason, EPIPE);
  }

  const Callbacks cb_;
  std::weak_ptr<core::Subscription> sub_;
};

// std::system_error whose what() is exactly the message given: the
// standard one appends the errno text, which is wrong or doubled for
// messages that already say why ("mountpoint /x does not exist").
class Failure : public std::system_error {
 public:
  Failure(int err, std::string what) : std::system_error(err, std::generic_category()), what_(std::move(what)) {}
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  std::string what_;
};

/// Throws `what` as it is (`errno_text`: followed by ": " and err's text).
[[noreturn]] void fail(int err, const std::string& what, bool errno_text = false) {
  throw Failure(err, errno_text ? what + ": " + std::strerror(err) : what);
}

// The spill store for `opt`, or null when not spilling. An explicit
// spill_dir that cannot take O_TMPFILE files is an error; the default one
// only turns spilling off, with a warning.
std::shared_ptr<core::SpillStore> make_spill(const Options& opt, std::string* dir_out) {
  if (!opt.spill) return nullptr;
  if (opt.spill_limit < (2ULL << 20)) fail(EINVAL, "spill_limit must be at least 2 MiB");
  const bool given = !opt.spill_dir.empty();
  std::string dir = opt.spill_dir;
  if (!given) {
    const char* tmp = std::getenv("TMPDIR");
    dir = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  std::string error;
  int err = 0;
  // Absolute: a daemon changes to / when it goes to the background.
  if (char real[PATH_MAX]; realpath(dir.c_str(), real) != nullptr) {
    dir = real;
    err = core::SpillStore::probe(dir, &error);
  } else {
    err = errno;
    error = dir;
  }
  if (err != 0) {
    if (given) fail(err, "spill directory " + error, /*errno_text=*/true);
    log::warn("spill directory {}: {}; not spilling: writers of streams nobody reads wait for a "
              "reader once the memory caps are reached (choose a directory with --spill-dir, or "
              "--no-spill to silence this)",
              error, std::strerror(err));
    return nullptr;
  }
  *dir_out = dir;
  return std::make_shared<core::SpillStore>(dir, opt.spill_limit);
}

}  // namespace

// ---- Consumer -------------------------------------------------------------------

struct Consumer::Impl {
  std::shared_ptr<core::Subscription> sub;
  ~Impl() {
    if (sub) sub->close();
  }
};

Consumer::Consumer(Consumer&&) noexcept = default;
Consumer& Consumer::operator=(Consumer&&) noexcept = default;
Consumer::~Consumer() = default;

void Consumer::close() { impl_.reset(); }

// ---- Mount ----------------------------------------------------------------------

// The volume's housekeeping, on its own thread: the stall rule every tick
// (core::Volume::check_stalls), and a sample of the load once a second to
// give memory freed after a burst back to the system (core/trim.hpp).
class Housekeeper {
 public:
  Housekeeper(core::Volume& v, std::chrono::milliseconds stall)
      : vol_(v),
        tick_(stall.count() == 0 ? std::chrono::milliseconds(250)
                                 : std::clamp(stall / 8, std::chrono::milliseconds(10),
                                              std::chrono::milliseconds(250))),
        thread_([this] { run(); }) {}
  ~Housekeeper() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Housekeeper(const Housekeeper&) = delete;
  Housekeeper& operator=(const Housekeeper&) = delete;

 private:
  void run() {
    core::TrimPolicy policy;
    auto next_trim = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    std::unique_lock lk(mu_);
    while (!cv_.wait_for(lk, tick_, [&] { return stop_; })) {
      lk.unlock();  // no lock of ours across the volume or malloc_trim
      vol_.check_stalls(core::mono_ns());
      if (std::chrono::steady_clock::now() >= next_trim) {
        next_trim += std::chrono::seconds(1);
        const core::TrimPolicy::Load now{vol_.statfs().files, vol_.memory_used()};
        if (policy.observe(now)) {
          const int gave = ::malloc_trim(0);
          log::debug("memory: load fell to {} files, {} bytes: malloc_trim {}", now.files, now.bytes,
                     gave != 0 ? "gave memory back" : "found nothing to give back");
        }
      }
      lk.lock();
    }
  }
  core::Volume& vol_;
  const std::chrono::milliseconds tick_;
  std::mutex mu_;  // guards stop_; lock order: a leaf, never held across a Volume call
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;  // last: starts once the rest is set up
};

struct Mount::Impl {
  // Declaration order is teardown order, reversed: consumers stop before
  // the session unmounts, and the volume outlives both.
  std::string mountpoint;
  std::string spill_dir;  // "" when not spilling
  std::chrono::milliseconds stall_time{0};
  std::unique_ptr<core::Volume> vol;
  std::unique_ptr<fuse::Session> session;
  std::unique_ptr<Housekeeper> housekeeper;  // started with serving (after a daemonize's fork)
  // Socket delivery: the listener is opened before mounting, the server
  // started with serving (threads do not survive a daemonize's fork).
  std::unique_ptr<server::Listener> listener;
  std::unique_ptr<server::Server> sockets;
  std::string socket_path;
  std::mutex commands_mu;  // guards `commands`; leaf, never held across a call of it
  std::shared_ptr<const std::function<std::vector<CommandStatus>()>> commands;
  std::thread server;
  std::mutex mu;  // guards `unmounted`; lock order: a leaf, released before stopping anything
  bool unmounted = false;

  void start_sockets();
  // Unmounts: parked requests are answered, a stream still open for
  // writing ends aborted ("unmounted while a writer had it open", never as
  // complete), and nothing new can be opened. The volume, its consumers and
  // the socket server stay, so that finish() can deliver what they hold.
  void unmount_only() {
    {
      std::lock_guard lk(mu);
      if (unmounted) return;
      unmounted = true;
    }
    if (server.joinable()) {
      session->stop();
      server.join();
    }
    housekeeper.reset();
    session.reset();
  }
  // Unmounts, then ends socket delivery: socket consumers get CLOSED
  // "shutdown" for what they still hold, the socket path is removed.
  void stop() {
    unmount_only();
    if (sockets) sockets->stop();
    sockets.reset();
    listener.reset();
  }
};

namespace {

proto::CommandStatus wire_of(const CommandStatus& c) {
  auto ns = [](const timespec& t) {
    return static_cast<std::int64_t>(t.tv_sec) * 1000000000 + static_cast<std::int64_t>(t.tv_nsec);
  };
  proto::CommandStatus w;
  w.id = c.stream_id;
  w.pid = c.pid > 0 ? static_cast<std::uint32_t>(c.pid) : 0;
  w.state = static_cast<proto::CommandState>(c.state);
  if (c.state == CommandStatus::State::exited || c.state == CommandStatus::State::killed)
    w.code = static_cast<std::uint8_t>(c.code);
  w.input = static_cast<proto::CommandInput>(c.input);
  w.bytes = c.bytes;
  w.started_ns = ns(c.started);
  w.ended_ns = c.state == CommandStatus::State::running ? 0 : ns(c.ended);
  w.path = c.path;
  w.note = c.note;
  return w;
}

}  // namespace

void Mount::Impl::start_sockets() {
  if (!listener || sockets) return;
  server::ServerOptions so;
  bool listed = false;
  {
    std::lock_guard lk(commands_mu);
    listed = commands != nullptr;
  }
  // Without a commands callback the server sends no COMMANDS frame, which
  // tells clients "this daemon runs no commands".
  if (listed) so.commands = [this]() -> std::vector<proto::CommandStatus> {
    std::shared_ptr<const std::function<std::vector<CommandStatus>()>> fn;
    {
      std::lock_guard lk(commands_mu);
      fn = commands;
    }
    std::vector<proto::CommandStatus> out;
    if (!fn || !*fn) return out;
    for (const auto& c : (*fn)()) out.push_back(wire_of(c));
    return out;
  };
  sockets = std::make_unique<server::Server>(*vol, std::move(listener), so);
  sockets->start();
  log::info("socket: serving {}", socket_path);
}

Mount::Mount(const Options& opt, bool serve_now) : impl_(std::make_unique<Impl>()) {
  std::string error;
  auto abs = detail::check_mountpoint(opt.mountpoint, &error);
  if (!abs) fail(EINVAL, error);
  if (opt.max_stream < (2ULL << 20) || opt.max_memory < (2ULL << 20))
    fail(EINVAL, "max_memory and max_stream must be at least 2 MiB");
  core::Limits limits;
  limits.max_memory = opt.max_memory;
  limits.max_stream = std::min(opt.max_stream, opt.max_memory);
  impl_->mountpoint = *abs;
  core::Policy policy;
  if (!opt.hold.empty()) policy.hold = core::glob_filter(opt.hold);
  policy.exits = core::make_pidfd_exit_watch();
  policy.spill = make_spill(opt, &impl_->spill_dir);
  policy.stall_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(opt.stall_time).count();
  impl_->stall_time = opt.stall_time;
  impl_->vol = std::make_unique<core::Volume>(limits, std::move(policy));
  // The socket before the mount: a path in use fails before anything is mounted.
  if (!opt.socket.empty()) {
    impl_->listener = server::Listener::open(opt.socket, &error);
    if (!impl_->listener) fail(EADDRINUSE, "socket " + error, /*errno_text=*/false);
    impl_->socket_path = impl_->listener->path();
  }
  fuse::SessionOptions so;
  if (!impl_->socket_path.empty()) so.root_xattrs.emplace_back("user.capturefs.socket", impl_->socket_path);
  so.mountpoint = *abs;
  so.debug = opt.debug;
  so.options = opt.fuse_options;
  so.max_threads = opt.fuse_threads;
  so.handle_signals = !serve_now;  // a daemon serving in main() wants them
  impl_->session = fuse::Session::mount(*impl_->vol, so, &error);
  if (!impl_->session) fail(EIO, error);
  if (serve_now) {
    impl_->start_sockets();
    impl_->housekeeper = std::make_unique<Housekeeper>(*impl_->vol, opt.stall_time);
    impl_->server = std::thread([s = impl_->session.get()] { s->serve(); });
  }
}

Mount::~Mount() {
  if (impl_) impl_->stop();
}

Consumer Mount::consume(Callbacks cb, ConsumeOptions opt) {
  auto sink = std::make_shared<CallbackSink>(std::move(cb));
  core::SubscriptionOptions so;
  so.threads = opt.threads;
  so.chunk = opt.chunk;
  so.auto_ack = !sink->async();
  so.max_active = opt.max_active;
  core::PathFilter filter = opt.filter ? core::PathFilter(opt.filter) : core::glob_filter(opt.globs);
  Consumer c;
  c.impl_ = std::make_shared<Consumer::Impl>();
  c.impl_->sub = impl_->vol->subscribe(std::move(filter), std::move(sink), so);
  return c;
}

const std::string& Mount::mountpoint() const { return impl_->mountpoint; }
std::size_t Mount::memory_used() const { return impl_->vol->memory_used(); }
std::size_t Mount::memory_peak() const { return impl_->vol->memory_peak(); }
std::size_t Mount::spill_used() const { return impl_->vol->spill_used(); }
std::size_t Mount::spill_peak() const { return impl_->vol->spill_peak(); }
const std::string& Mount::spill_dir() const { return impl_->spill_dir; }
const std::string& Mount::socket() const { return impl_->socket_path; }
void Mount::set_status_commands(std::function<std::vector<CommandStatus>()> fn) {
  auto p = std::make_shared<const std::function<std::vector<CommandStatus>()>>(std::move(fn));
  std::lock_guard lk(impl_->commands_mu);
  impl_->commands = std::move(p);
}
void Mount::unmount() { impl_->stop(); }

FinishReport Mount::finish(const std::function<bool(std::size_t, std::uint64_t)>& keep_going) {
  impl_->unmount_only();
  FinishReport report;
  auto convert = [](const std::vector<core::Volume::Leftover>& from, std::vector<Leftover>* to) {
    for (const auto& l : from) to->push_back(Leftover{l.path, l.bytes});
  };
  convert(impl_->vol->discard_unread(), &report.discarded);
  for (;;) {
    const auto left = impl_->vol->undelivered();
    if (left.empty()) break;
    std::uint64_t bytes = 0;
    for (const auto& l : left) bytes += l.bytes;
    if (keep_going && !keep_going(left.size(), bytes)) {
      convert(impl_->vol->cut_undelivered("capturefs was stopped before the stream was delivered"),
              &report.cut);
      break;
    }
    // The deliveries run on the consumers' threads; this only watches them.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  impl_->stop();  // socket delivery ends: nothing is left to deliver
  return report;
}
void Mount::daemonize() { impl_->session->daemonize(); }
int Mount::serve() {
  impl_->start_sockets();
  if (!impl_->housekeeper)
    impl_->housekeeper = std::make_unique<Housekeeper>(*impl_->vol, impl_->stall_time);
  return impl_->session->serve();
}

}  // namespace capturefs
