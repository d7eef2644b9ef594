// libcapturefs: the Mount and Consumer facade over the core volume, the
// FUSE session and push delivery. The capturefs CLI is built on it too.
#include <malloc.h>

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
#include "lib/internal.hpp"
#include "lib/preflight.hpp"

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

[[noreturn]] void fail(int err, const std::string& what) {
  throw std::system_error(err, std::generic_category(), what);
}

// The spill store for `opt`, or null when not spilling. An explicit
// spill_dir that cannot take O_TMPFILE files is an error; the default one
// only turns spilling off, with a warning.
std::shared_ptr<core::SpillStore> make_spill(const Options& opt, std::string* dir_out) {
  if (!opt.spill) return nullptr;
  if (opt.spill_limit < (2ULL << 20)) fail(EINVAL, "capturefs: spill_limit must be at least 2 MiB");
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
    if (given) fail(err, "capturefs: spill directory " + error);  // what(): ...: <errno text>
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

// Gives memory freed after a burst back to the system (core/trim.hpp):
// samples the volume's load once a second, on its own thread.
class Trimmer {
 public:
  explicit Trimmer(core::Volume& v) : vol_(v), thread_([this] { run(); }) {}
  ~Trimmer() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Trimmer(const Trimmer&) = delete;
  Trimmer& operator=(const Trimmer&) = delete;

 private:
  void run() {
    core::TrimPolicy policy;
    std::unique_lock lk(mu_);
    while (!cv_.wait_for(lk, std::chrono::seconds(1), [&] { return stop_; })) {
      lk.unlock();  // no lock of ours across the volume or malloc_trim
      const core::TrimPolicy::Load now{vol_.statfs().files, vol_.memory_used()};
      if (policy.observe(now)) {
        const int gave = ::malloc_trim(0);
        log::debug("memory: load fell to {} files, {} bytes: malloc_trim {}", now.files, now.bytes,
                         gave != 0 ? "gave memory back" : "found nothing to give back");
      }
      lk.lock();
    }
  }
  core::Volume& vol_;
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
  std::unique_ptr<core::Volume> vol;
  std::unique_ptr<fuse::Session> session;
  std::unique_ptr<Trimmer> trimmer;  // started with serving (after a daemonize's fork)
  std::thread server;
  std::mutex mu;  // guards `unmounted`; lock order: a leaf, released before stopping anything
  bool unmounted = false;

  void stop() {
    {
      std::lock_guard lk(mu);
      if (unmounted) return;
      unmounted = true;
    }
    if (server.joinable()) {
      session->stop();
      server.join();
    }
    trimmer.reset();
    session.reset();  // answers parked requests, unmounts
  }
};

Mount::Mount(const Options& opt, bool serve_now) : impl_(std::make_unique<Impl>()) {
  std::string error;
  auto abs = detail::check_mountpoint(opt.mountpoint, &error);
  if (!abs) fail(EINVAL, error);
  if (opt.max_stream < (2ULL << 20) || opt.max_memory < (2ULL << 20))
    fail(EINVAL, "capturefs: max_memory and max_stream must be at least 2 MiB");
  core::Limits limits;
  limits.max_memory = opt.max_memory;
  limits.max_stream = std::min(opt.max_stream, opt.max_memory);
  impl_->mountpoint = *abs;
  core::Policy policy;
  if (!opt.hold.empty()) policy.hold = core::glob_filter(opt.hold);
  policy.exits = core::make_pidfd_exit_watch();
  policy.spill = make_spill(opt, &impl_->spill_dir);
  impl_->vol = std::make_unique<core::Volume>(limits, std::move(policy));
  fuse::SessionOptions so;
  so.mountpoint = *abs;
  so.debug = opt.debug;
  so.options = opt.fuse_options;
  so.max_threads = opt.fuse_threads;
  so.handle_signals = !serve_now;  // a daemon serving in main() wants them
  impl_->session = fuse::Session::mount(*impl_->vol, so, &error);
  if (!impl_->session) fail(EIO, error);
  if (serve_now) {
    impl_->trimmer = std::make_unique<Trimmer>(*impl_->vol);
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
void Mount::unmount() { impl_->stop(); }
void Mount::daemonize() { impl_->session->daemonize(); }
int Mount::serve() {
  if (!impl_->trimmer) impl_->trimmer = std::make_unique<Trimmer>(*impl_->vol);
  return impl_->session->serve();
}

core::Volume& detail::MountAccess::volume(Mount& m) { return *m.impl_->vol; }

}  // namespace capturefs
