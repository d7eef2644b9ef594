#include "fuse/session.hpp"

#include <fuse_lowlevel.h>

#include <sys/stat.h>

#include <csignal>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "core/log.hpp"
#include "fuse/adapter.hpp"

namespace capturefs::fuse {

namespace {

// Tells the kernel of names the volume removed on its own (a delivered
// stream's name going), so that it drops its cached entry and then forgets
// the inode: without it, the node (and its memory) stays until the kernel
// reclaims its caches. Its own thread: a notification waits for the
// directory's lock, which a request being served in that directory holds.
class Notifier {
 public:
  explicit Notifier(fuse_session* se) : se_(se), thread_([this] { run(); }) {}
  ~Notifier() { stop(); }
  // After this, gone() does nothing (the session may be gone).
  void stop() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  // Never blocks (called by the volume with effects being settled).
  void gone(core::Ino parent, core::Ino ino, const std::string& name) {
    {
      std::lock_guard lk(mu_);
      if (stop_) return;
      q_.push_back(Item{parent, ino, name});
    }
    cv_.notify_one();
  }

 private:
  struct Item {
    core::Ino parent;
    core::Ino ino;
    std::string name;
  };
  void run() {
    std::unique_lock lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || !q_.empty(); });
      if (stop_) return;
      Item it = std::move(q_.front());
      q_.pop_front();
      lk.unlock();  // no lock across the notification
      // Deletes the entry only if it still names that inode (a new file of
      // the same name is left alone).
      const int rc = fuse_lowlevel_notify_delete(se_, it.parent, it.ino, it.name.data(), it.name.size());
      if (rc != 0 && rc != -ENOENT && rc != -ENOTDIR && rc != -ENOTCONN && rc != -ENODEV)
        log::debug("notify_delete '{}' (in {}): {}", it.name, it.parent, std::strerror(-rc));
      lk.lock();
    }
  }
  fuse_session* const se_;
  // Guards q_ and stop_. Lock order: a leaf; taken with no other lock held
  // (the Volume's name-gone callback runs unlocked), and dropped around
  // fuse_lowlevel_notify_delete.
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> q_;
  bool stop_ = false;
  std::thread thread_;  // last: starts once the rest is set up
};

}  // namespace

struct Session::Impl {
  core::Volume& vol;
  Adapter adapter;
  std::string mountpoint;
  unsigned max_threads = 16;
  fuse_session* se = nullptr;
  bool mounted = false;
  bool signals = false;
  std::thread waker;  // see stop()
  std::shared_ptr<Notifier> notifier;  // while serving (the volume's hook shares it)

  Impl(core::Volume& v, std::vector<std::pair<std::string, std::string>> xattrs)
      : vol(v), adapter(v, std::move(xattrs)) {}
  ~Impl() {
    if (se == nullptr) return;
    if (notifier) {  // before the channel closes; a hook call still under way finds it stopped
      vol.on_name_gone(nullptr);
      notifier->stop();
    }
    // Requests still parked (a reader waiting, a writer waiting for memory)
    // must be answered while the channel is open; after unmount the kernel
    // would fail them anyway, but then the core's callbacks would dangle.
    vol.fail_parked(EIO);
    if (mounted) fuse_session_unmount(se);
    if (signals) fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    if (waker.joinable()) waker.join();
  }
};

namespace {
// The signals libfuse's handlers stop the daemon on.
sigset_t stop_signals() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGINT);
  sigaddset(&s, SIGTERM);
  sigaddset(&s, SIGHUP);
  return s;
}
}  // namespace

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::~Session() = default;

std::unique_ptr<Session> Session::mount(core::Volume& vol, const SessionOptions& opt,
                                        std::string* error) {
  auto impl = std::make_unique<Impl>(vol, opt.root_xattrs);
  impl->mountpoint = opt.mountpoint;
  impl->max_threads = opt.max_threads;

  // The kernel enforces permission bits (we keep them per node); with
  // allow_other this is what stops other users from reading streams.
  std::string o = "default_permissions,fsname=capturefs,subtype=capturefs";
  for (const auto& x : opt.options) o += "," + x;
  std::vector<std::string> argv_s = {"capturefs", "-o", o};
  if (opt.debug) argv_s.emplace_back("-d");
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());

  impl->se = fuse_session_new(&args, &Adapter::ops(), sizeof(fuse_lowlevel_ops), &impl->adapter);
  fuse_opt_free_args(&args);
  if (impl->se == nullptr) {
    *error = "cannot start a FUSE session with options '" + o + "' (see the message above)";
    return nullptr;
  }
  if (opt.handle_signals) {
    // libfuse's handlers only set the exit flag; the loop notices it when
    // its main thread's wait is interrupted. A SIGTERM delivered to any
    // other thread (socket server, delivery, exit watch: all started after
    // this, from this thread) would leave the daemon running until the next
    // request. So they block these signals (inherited), and serve()
    // unblocks them on the thread that runs the loop.
    const sigset_t stop = stop_signals();
    pthread_sigmask(SIG_BLOCK, &stop, nullptr);
    if (fuse_set_signal_handlers(impl->se) != 0) {
      *error = "cannot install signal handlers";
      return nullptr;
    }
    impl->signals = true;
  }
  if (fuse_session_mount(impl->se, impl->mountpoint.c_str()) != 0) {
    *error = "mounting " + impl->mountpoint + " failed (see the message above)";
    return nullptr;
  }
  impl->mounted = true;
  return std::unique_ptr<Session>(new Session(std::move(impl)));
}

void Session::daemonize() { fuse_daemonize(0); }

void Session::stop() {
  fuse_session_exit(impl_->se);
  // Workers notice the exit flag only once a request arrives, so send one:
  // a stat of a name in the root (a LOOKUP: names are never cached; the
  // root's own attributes may be). libfuse drops that request unanswered
  // once exited, so the stat returns only when the connection closes (in
  // ~Impl): it runs on its own thread, joined there.
  impl_->waker = std::thread([mp = impl_->mountpoint] {
    struct stat st{};
    (void)::stat((mp + "/.capturefs-stop").c_str(), &st);
  });
}

int Session::serve() {
  if (impl_->signals) {
    const sigset_t stop = stop_signals();
    pthread_sigmask(SIG_UNBLOCK, &stop, nullptr);
  }
  // Started here, after a daemonize()'s fork (threads do not survive it).
  impl_->notifier = std::make_shared<Notifier>(impl_->se);
  impl_->vol.on_name_gone([n = impl_->notifier](core::Ino parent, core::Ino ino, const std::string& name) {
    n->gone(parent, ino, name);
  });
  fuse_loop_config* cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(cfg, impl_->max_threads);
  const int rc = fuse_session_loop_mt(impl_->se, cfg);
  fuse_loop_cfg_destroy(cfg);
  if (rc < 0) {
    log::error("serving {} failed: {}", impl_->mountpoint, std::strerror(-rc));
    return rc;
  }
  return 0;
}

}  // namespace capturefs::fuse
