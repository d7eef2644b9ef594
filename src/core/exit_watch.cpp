#include "core/exit_watch.hpp"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/log.hpp"

namespace capturefs::core {

namespace {

int pidfd_open(std::int32_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

// One watched process. The pidfd closes with the last reference, so a
// thread polling or registering it never sees its number reused.
struct Watched {
  Watched(int f, std::function<void()> cb) : fd(f), on_exit(std::move(cb)) {}
  ~Watched() { ::close(fd); }
  Watched(const Watched&) = delete;
  Watched& operator=(const Watched&) = delete;
  const int fd;
  std::function<void()> on_exit;  // moved out by whoever takes the exit
};
using WatchedPtr = std::shared_ptr<Watched>;

class PidfdExitWatch final : public ExitWatch {
 public:
  PidfdExitWatch() = default;
  ~PidfdExitWatch() override {
    if (stop_fd_ >= 0) {
      const std::uint64_t one = 1;
      (void)!::write(stop_fd_, &one, sizeof one);
    }
    if (thread_.joinable()) thread_.join();
    watched_.clear();  // closes the pidfds
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
    if (stop_fd_ >= 0) ::close(stop_fd_);
  }
  PidfdExitWatch(const PidfdExitWatch&) = delete;
  PidfdExitWatch& operator=(const PidfdExitWatch&) = delete;

  void clear() override {
    std::vector<WatchedPtr> drop;
    {
      std::lock_guard lk(mu_);
      for (auto& [id, w] : watched_) drop.push_back(std::move(w));
      watched_.clear();
    }
    forget(drop);
    std::unique_lock lk(mu_);
    idle_.wait(lk, [&] { return running_.empty(); });
  }

  void poll_now() override {
    std::vector<std::pair<std::uint64_t, WatchedPtr>> snap;  // holds the pidfds open while polled
    std::uint64_t before = 0;
    {
      std::lock_guard lk(mu_);
      before = next_seq_;
      snap.assign(watched_.begin(), watched_.end());
    }
    std::vector<pollfd> fds;
    fds.reserve(snap.size());
    for (const auto& [id, w] : snap) fds.push_back(pollfd{w->fd, POLLIN, 0});
    if (!fds.empty() && ::poll(fds.data(), fds.size(), 0) > 0) {  // no lock held
      std::vector<std::uint64_t> ready;
      for (std::size_t i = 0; i < fds.size(); ++i)
        if ((fds[i].revents & POLLIN) != 0) ready.push_back(snap[i].first);
      call_due(ready);
    }
    snap.clear();
    // The watcher thread may have taken an exit before us and be calling
    // its callback now: the caller must see that one's consequences too
    // (a STATUS reply must not show an empty file whose creator is gone as
    // live). Later callbacks are not waited for.
    std::unique_lock lk(mu_);
    idle_.wait(lk, [&] { return running_.empty() || *running_.begin() >= before; });
  }

  bool watch(std::int32_t pid, std::function<void()> on_exit) override {
    if (pid <= 0) return false;
    const int fd = pidfd_open(pid);  // no lock held across the syscalls
    if (fd < 0) {                    // ESRCH: gone; EINVAL: a thread id
      if (errno == ENOSYS && !warned_.exchange(true))
        log::warn("cannot watch processes (pidfd_open: {}; Linux >= 5.3 needed): files closed "
                  "empty end at once, and delivered names go at once",
                  std::strerror(errno));
      return false;
    }
    auto w = std::make_shared<Watched>(fd, std::move(on_exit));
    std::call_once(start_once_, [this] { started_ = start(); });
    if (!started_) return false;
    std::uint64_t id = 0;
    {
      std::lock_guard lk(mu_);
      id = next_id_++;
      watched_.emplace(id, w);
    }
    // Registered after the entry exists: an exit reported at once finds it.
    // poll_now() may take the exit even before this (the entry is then gone,
    // and `w` keeps the pidfd open until the registration is done).
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = id;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {  // (rare: out of memory in the kernel)
      std::lock_guard lk(mu_);
      return watched_.erase(id) == 0;  // already taken: its callback runs or ran
    }
    return true;
  }

 private:
  static constexpr std::uint64_t kStopId = ~std::uint64_t{0};

  // Drops entries already out of watched_: no lock held. The pidfd closes
  // when the last reference (maybe a poll_now snapshot) goes.
  void forget(std::vector<WatchedPtr>& ws) {
    for (const auto& w : ws) epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, w->fd, nullptr);
    ws.clear();
  }

  // Calls the callbacks of the entries in `ready` that are still watched
  // (another thread may have taken some), each once, with no lock held.
  void call_due(const std::vector<std::uint64_t>& ready) {
    std::vector<std::pair<std::uint64_t, std::function<void()>>> due;
    std::vector<WatchedPtr> drop;
    {
      std::lock_guard lk(mu_);
      for (const std::uint64_t id : ready) {
        auto it = watched_.find(id);
        if (it == watched_.end()) continue;
        const std::uint64_t seq = next_seq_++;
        due.emplace_back(seq, std::move(it->second->on_exit));
        running_.insert(seq);
        drop.push_back(std::move(it->second));
        watched_.erase(it);
      }
    }
    forget(drop);
    for (auto& [seq, f] : due) {
      f();
      {
        std::lock_guard lk(mu_);
        running_.erase(seq);
      }
      idle_.notify_all();
    }
  }

  // Once, from watch(), with no lock held.
  bool start() {
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    stop_fd_ = eventfd(0, EFD_CLOEXEC);
    if (epoll_fd_ < 0 || stop_fd_ < 0) {
      log::error("exit watch: cannot start: {}", std::strerror(errno));
      return false;
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kStopId;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, stop_fd_, &ev) != 0) return false;
    thread_ = std::thread([this] { run(); });
    return true;
  }

  void run() {
    std::vector<epoll_event> evs(64);
    for (;;) {
      const int n = epoll_wait(epoll_fd_, evs.data(), static_cast<int>(evs.size()), -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        log::error("exit watch: epoll_wait: {}", std::strerror(errno));
        return;
      }
      std::vector<std::uint64_t> ready;
      for (int i = 0; i < n; ++i) {
        const std::uint64_t id = evs[static_cast<std::size_t>(i)].data.u64;
        if (id == kStopId) return;
        ready.push_back(id);
      }
      call_due(ready);
    }
  }

  // Lock order: a leaf. Guards watched_, running_, next_id_ and next_seq_;
  // never held across a syscall or a callback (only idle_ waits release it).
  std::mutex mu_;
  std::condition_variable idle_;     // a callback returned
  std::set<std::uint64_t> running_;  // callbacks taken and not yet returned, by take order
  std::uint64_t next_seq_ = 0;       // take order of the next callback
  std::uint64_t next_id_ = 0;        // ids are never reused (pidfd numbers are)
  std::unordered_map<std::uint64_t, WatchedPtr> watched_;
  std::once_flag start_once_;
  bool started_ = false;  // written once, inside start_once_
  std::atomic<bool> warned_{false};  // ENOSYS logged once
  int epoll_fd_ = -1;
  int stop_fd_ = -1;
  std::thread thread_;
};

}  // namespace

std::unique_ptr<ExitWatch> make_pidfd_exit_watch() { return std::make_unique<PidfdExitWatch>(); }

}  // namespace capturefs::core
