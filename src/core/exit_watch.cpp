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

class PidfdExitWatch final : public ExitWatch {
 public:
  PidfdExitWatch() = default;
  ~PidfdExitWatch() override {
    if (stop_fd_ >= 0) {
      const std::uint64_t one = 1;
      (void)!::write(stop_fd_, &one, sizeof one);
    }
    if (thread_.joinable()) thread_.join();
    for (auto& [fd, cb] : watched_) ::close(fd);
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
    if (stop_fd_ >= 0) ::close(stop_fd_);
  }
  PidfdExitWatch(const PidfdExitWatch&) = delete;
  PidfdExitWatch& operator=(const PidfdExitWatch&) = delete;

  void clear() override {
    std::vector<int> drop;
    {
      std::lock_guard lk(mu_);
      for (auto& [fd, cb] : watched_) drop.push_back(fd);
      watched_.clear();
    }
    forget(drop);
    std::unique_lock lk(mu_);
    idle_.wait(lk, [&] { return running_.empty(); });
  }

  void poll_now() override {
    std::vector<pollfd> fds;
    std::uint64_t before = 0;
    {
      std::lock_guard lk(mu_);
      before = next_seq_;
      for (const auto& [fd, cb] : watched_) fds.push_back(pollfd{fd, POLLIN, 0});
    }
    if (!fds.empty() && ::poll(fds.data(), fds.size(), 0) > 0) {  // no lock held
      std::vector<int> ready;
      for (const pollfd& p : fds)
        if ((p.revents & POLLIN) != 0) ready.push_back(p.fd);
      call_due(ready);
    }
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
    std::call_once(start_once_, [this] { started_ = start(); });
    if (!started_) {
      ::close(fd);
      return false;
    }
    {
      std::lock_guard lk(mu_);
      watched_.emplace(fd, std::move(on_exit));
    }
    // Registered after the entry exists: an exit reported at once finds it.
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      std::lock_guard lk(mu_);
      watched_.erase(fd);
      ::close(fd);  // (rare: out of memory in the kernel)
      return false;
    }
    return true;
  }

 private:
  // Drops pidfds whose entries are gone: no lock held.
  void forget(const std::vector<int>& fds) {
    for (const int fd : fds) {
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
      ::close(fd);
    }
  }

  // Calls the callbacks of the pidfds in `ready` that are still watched
  // (another thread may have taken some), each once, with no lock held.
  void call_due(const std::vector<int>& ready) {
    std::vector<std::pair<std::uint64_t, std::function<void()>>> due;
    std::vector<int> drop;
    {
      std::lock_guard lk(mu_);
      for (const int fd : ready) {
        auto it = watched_.find(fd);
        if (it == watched_.end()) continue;
        const std::uint64_t seq = next_seq_++;
        due.emplace_back(seq, std::move(it->second));
        running_.insert(seq);
        watched_.erase(it);
        drop.push_back(fd);
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
    ev.data.fd = stop_fd_;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, stop_fd_, &ev) != 0) return false;
    started_ = true;
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
      std::vector<int> ready;
      for (int i = 0; i < n; ++i) {
        const int fd = evs[static_cast<std::size_t>(i)].data.fd;
        if (fd == stop_fd_) return;
        ready.push_back(fd);
      }
      call_due(ready);
    }
  }

  // Lock order: a leaf. Guards watched_, running_ and next_seq_; never held
  // across a syscall or a callback (only idle_ waits release it).
  std::mutex mu_;
  std::condition_variable idle_;      // a callback returned
  std::set<std::uint64_t> running_;   // callbacks taken and not yet returned, by take order
  std::uint64_t next_seq_ = 0;        // take order of the next callback
  std::once_flag start_once_;
  bool started_ = false;  // written once, inside start_once_
  std::atomic<bool> warned_{false};  // ENOSYS logged once
  int epoll_fd_ = -1;
  int stop_fd_ = -1;
  std::unordered_map<int, std::function<void()>> watched_;  // pidfd -> callback
  std::thread thread_;
};

}  // namespace

std::unique_ptr<ExitWatch> make_pidfd_exit_watch() { return std::make_unique<PidfdExitWatch>(); }

}  // namespace capturefs::core
