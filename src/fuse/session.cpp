#include "fuse/session.hpp"

#include <fuse_lowlevel.h>

#include <sys/stat.h>

#include <csignal>

#include <cerrno>
#include <cstring>
#include <thread>

#include "core/log.hpp"
#include "fuse/adapter.hpp"

namespace capturefs::fuse {

struct Session::Impl {
  core::Volume& vol;
  Adapter adapter;
  std::string mountpoint;
  unsigned max_threads = 16;
  fuse_session* se = nullptr;
  bool mounted = false;
  bool signals = false;
  std::thread waker;  // see stop()

  explicit Impl(core::Volume& v) : vol(v), adapter(v) {}
  ~Impl() {
    if (se == nullptr) return;
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
  auto impl = std::make_unique<Impl>(vol);
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
  // a stat of the root (attribute timeout 0). libfuse drops that request
  // unanswered once exited, so the stat returns only when the connection
  // closes (in ~Impl): it runs on its own thread, joined there.
  impl_->waker = std::thread([mp = impl_->mountpoint] {
    struct stat st{};
    (void)::stat(mp.c_str(), &st);
  });
}

int Session::serve() {
  if (impl_->signals) {
    const sigset_t stop = stop_signals();
    pthread_sigmask(SIG_UNBLOCK, &stop, nullptr);
  }
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
