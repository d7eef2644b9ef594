#include "cli/exec.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "core/log.hpp"

extern char** environ;

namespace capturefs::cli {

namespace {

constexpr std::string_view kEnvPath = "CAPTUREFS_PATH";
constexpr std::string_view kEnvMount = "CAPTUREFS_MOUNT";
constexpr std::string_view kEnvPid = "CAPTUREFS_WRITER_PID";
// The pipe's capacity: one delivery chunk, so a command that reads keeps
// a chunk in flight; what sits in the pipe is outside the memory caps.
constexpr int kPipeSize = 256 * 1024;

timespec now_realtime() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

timespec now_mono() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts;
}

// Milliseconds from now until `deadline` (monotonic), at least 0.
int ms_until(const timespec& deadline) {
  const timespec t = now_mono();
  const long long ms = (deadline.tv_sec - t.tv_sec) * 1000LL + (deadline.tv_nsec - t.tv_nsec) / 1000000LL;
  return static_cast<int>(std::clamp<long long>(ms, 0, 1 << 30));
}

std::string errno_text(int err) { return std::strerror(err); }

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// A descriptor at 3 or above (the child's 0-2 are being set up), close-on-exec.
int lift(int fd) {
  if (fd < 0 || fd > 2) return fd;
  const int up = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  ::close(fd);
  return up;
}

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

bool is_our_variable(std::string_view kv) {
  for (auto name : {kEnvPath, kEnvMount, kEnvPid}) {
    if (kv.size() > name.size() && kv.substr(0, name.size()) == name && kv[name.size()] == '=') return true;
  }
  return false;
}

}  // namespace

unsigned cpu_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return static_cast<unsigned>(n);
  }
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<unsigned>(n) : 1U;
}

std::string describe_wait_status(int status) {
  if (status == -1) return "not started";
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* abbrev = sigabbrev_np(sig);
    return "killed by signal " + std::to_string(sig) + (abbrev ? std::string(" (SIG") + abbrev + ")" : "") +
           (WCOREDUMP(status) ? ", core dumped" : "");
  }
  return "wait status " + std::to_string(status);
}

std::string log_quote(std::string_view path) {
  std::string out;
  out.reserve(path.size());
  for (const char ch : path) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\'': out += "\\'"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
        else out += ch;
    }
  }
  return out;
}

bool ExecExit::ok() const {
  return pid > 0 && status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0 && input_complete;
}

// ---- ExecHistory ----------------------------------------------------------------

void ExecHistory::add(ExecExit e) {
  std::lock_guard lk(mu_);
  ++total_;
  if (!e.ok()) ++failed_;
  recent_.push_back(std::move(e));
  while (recent_.size() > capacity_) recent_.pop_front();
}

std::vector<ExecExit> ExecHistory::recent() const {
  std::lock_guard lk(mu_);
  return {recent_.begin(), recent_.end()};
}

std::uint64_t ExecHistory::total() const {
  std::lock_guard lk(mu_);
  return total_;
}

std::uint64_t ExecHistory::failed() const {
  std::lock_guard lk(mu_);
  return failed_;
}

// ---- ExecRunner -----------------------------------------------------------------

// One command and its stream. While in jobs_, touched only by that stream's
// callbacks (which never overlap); then by the reaper thread, which gets it
// through mu_. `bytes` is also read by running().
struct ExecRunner::Job {
  std::uint64_t id = 0;
  std::string path;
  pid_t pid = 0;
  int pidfd = -1;
  int pipe_w = -1;
  std::atomic<std::uint64_t> bytes{0};
  timespec started{};
  int status = -1;
  bool reaped = false;
  bool aborted = false;   // we gave up on the stream (AbortStream)
  bool epipe = false;     // ... because the command stopped reading
  bool closed = false;    // on_close was seen
  bool complete = false;  // ... with the whole stream
  std::string note;       // final once the job is handed to the reaper
  std::string wait_note;  // the reaper's: why the exit status is unknown

  ExecInput input() const {
    if (closed && complete && !aborted) return ExecInput::complete;
    return epipe ? ExecInput::cut_short : ExecInput::incomplete;
  }

  ~Job() {
    close_fd(pipe_w);
    close_fd(pidfd);
  }
  // waitpid without blocking: true once reaped.
  bool try_reap() {
    if (reaped) return true;
    for (;;) {
      int st = 0;
      const pid_t r = ::waitpid(pid, &st, WNOHANG);
      if (r == pid) {
        status = st;
        reaped = true;
        return true;
      }
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {  // ECHILD: reaped elsewhere (an embedding program's SIGCHLD handler)
        wait_note = "exit status unknown: " + errno_text(errno);
        reaped = true;
        return true;
      }
      return false;
    }
  }
};

ExecRunner::ExecRunner(Mount& mount, ExecOptions opt)
    : opt_(std::move(opt)),
      max_jobs_(opt_.jobs != 0 ? opt_.jobs : cpu_count()),
      mountpoint_(mount.mountpoint()) {
  if (opt_.command.empty()) throw std::system_error(EINVAL, std::generic_category(), "--exec: empty command");

  // A command that exits early must cost an EPIPE, not the daemon: ignore
  // SIGPIPE unless someone handles it already (libfuse installs a no-op
  // handler; either way write() returns EPIPE). Children get defaults back.
  struct sigaction sa{};
  if (::sigaction(SIGPIPE, nullptr, &sa) == 0 && sa.sa_handler == SIG_DFL) ::signal(SIGPIPE, SIG_IGN);
  // waitpid() needs children to stay around until reaped.
  if (::sigaction(SIGCHLD, nullptr, &sa) == 0 &&
      (sa.sa_handler == SIG_IGN || (sa.sa_flags & SA_NOCLDWAIT) != 0)) {
    struct sigaction dfl{};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(SIGCHLD, &dfl, nullptr);
  }

  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    if (!is_our_variable(*e)) base_env_.emplace_back(*e);
  }

  stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  reap_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd_ < 0 || reap_fd_ < 0) {
    const int err = errno;
    close_fd(stop_fd_);
    close_fd(reap_fd_);
    throw std::system_error(err, std::generic_category(), "--exec: eventfd");
  }
  Callbacks cb;
  cb.on_open = [this](const StreamOpen& o) { on_open(o); };
  cb.on_data = [this](const Chunk& c) { on_data(c); };
  cb.on_rename = [this](std::uint64_t id, const std::string& p) {
    if (auto j = find(id)) {
      log::info("exec '{}': renamed to '{}' (CAPTUREFS_PATH stays as it was)", log_quote(j->path),
                log_quote(p));
    }
  };
  cb.on_close = [this](const StreamClose& e) { on_close(e); };
  ConsumeOptions co;
  co.globs = opt_.globs;
  co.threads = max_jobs_;     // see the header: enough for every blocked callback
  co.max_active = max_jobs_;  // more streams wait their turn in the core

  reaper_ = std::thread([this] { reap_loop(); });
  try {
    consumer_ = mount.consume(std::move(cb), std::move(co));
  } catch (...) {
    stop();  // joins the reaper
    close_fd(stop_fd_);
    close_fd(reap_fd_);
    throw;
  }
}

ExecRunner::~ExecRunner() {
  stop();
  close_fd(stop_fd_);
  close_fd(reap_fd_);
}

void ExecRunner::wake(int fd) {
  const std::uint64_t one = 1;
  (void)!::write(fd, &one, sizeof one);
}

std::shared_ptr<ExecRunner::Job> ExecRunner::find(std::uint64_t id) const {
  std::lock_guard lk(mu_);
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second;
}

std::vector<ExecRunning> ExecRunner::running() const {
  std::lock_guard lk(mu_);
  return running_locked();
}

ExecSnapshot ExecRunner::snapshot() const {
  // Under mu_: finish() moves a job from reaping_ to the history under it.
  std::lock_guard lk(mu_);
  return ExecSnapshot{running_locked(), history_.recent()};
}

std::vector<ExecRunning> ExecRunner::running_locked() const {
  std::vector<ExecRunning> out;
  auto add = [&](const Job& j) {
    out.push_back(ExecRunning{j.id, j.path, j.pid, j.bytes.load(std::memory_order_relaxed), j.started,
                              ExecInput::feeding, {}});
  };
  // Jobs being fed: their delivery thread changes them, so only the atomic
  // byte count is read.
  for (const auto& [id, j] : jobs_) add(*j);
  // Handed to the reaper (under mu_): how the input went is settled.
  for (const auto& j : reaping_) {
    add(*j);
    out.back().input = j->input();
    if (out.back().input != ExecInput::complete) out.back().note = j->note;
  }
  std::sort(out.begin(), out.end(),
            [](const ExecRunning& a, const ExecRunning& b) { return a.stream_id < b.stream_id; });
  return out;
}

void ExecRunner::on_open(const StreamOpen& o) {
  const timespec started = now_realtime();
  auto record_failure = [&](const std::string& what) {
    log::warn("exec '{}': cannot start the command: {}; its writers get EPIPE", log_quote(o.path), what);
    ExecExit x;
    x.input = ExecInput::incomplete;
    x.stream_id = o.id;
    x.path = o.path;
    x.note = "cannot start the command: " + what;
    x.started = started;
    x.ended = now_realtime();
    history_.add(std::move(x));
  };
  {
    // A command slot: at most max_jobs_ commands alive (see the header).
    std::unique_lock lk(mu_);
    slot_cv_.wait(lk, [&] { return alive_ < max_jobs_ || stopping_.load(); });
    if (stopping_.load()) throw AbortStream("capturefs stopped before the stream was delivered");
    ++alive_;
  }
  auto j = std::make_shared<Job>();
  j->id = o.id;
  j->path = o.path;
  j->started = started;
  auto fail = [&](const std::string& what) {
    {
      std::lock_guard lk(mu_);
      --alive_;
    }
    slot_cv_.notify_one();
    record_failure(what);
    throw AbortStream("cannot start the command: " + what);
  };

  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) fail("pipe: " + errno_text(errno));
  int rd = lift(p[0]);
  j->pipe_w = lift(p[1]);
  if (rd < 0 || j->pipe_w < 0) {
    const int err = errno;
    close_fd(rd);
    fail("pipe: " + errno_text(err));
  }
  (void)::fcntl(j->pipe_w, F_SETPIPE_SZ, kPipeSize);  // best effort
  (void)::fcntl(j->pipe_w, F_SETFL, ::fcntl(j->pipe_w, F_GETFL) | O_NONBLOCK);

  std::vector<std::string> env_s = base_env_;
  env_s.push_back(std::string(kEnvPath) + "=" + o.path);
  env_s.push_back(std::string(kEnvMount) + "=" + mountpoint_);
  env_s.push_back(std::string(kEnvPid) + "=" + std::to_string(o.writer_pid));
  std::vector<char*> envp;
  envp.reserve(env_s.size() + 1);
  for (auto& s : env_s) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string arg0 = "sh", arg1 = "-c", arg2 = opt_.command;
  char* argv[] = {arg0.data(), arg1.data(), arg2.data(), nullptr};

  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_adddup2(&fa, rd, STDIN_FILENO);
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);  // the FUSE device, other pipes, ...
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);  // SIGPIPE ignored here, default there
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, opt_.shell.c_str(), &fa, &attr, argv, envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  close_fd(rd);
  if (rc != 0) fail(opt_.shell + ": " + errno_text(rc));

  j->pid = pid;
  j->pidfd = pidfd_open(pid);  // -1 on old kernels: the reaper then polls waitpid
  log::debug("exec '{}': started pid {}", log_quote(o.path), pid);
  if (o.start_offset != 0) {
    log::warn("exec '{}': the command gets the file from byte {} on (a reader took the bytes before)",
              log_quote(o.path), o.start_offset);
  }
  std::lock_guard lk(mu_);
  jobs_[o.id] = std::move(j);
}

void ExecRunner::on_data(const Chunk& c) {
  const auto j = find(c.id);
  if (!j || j->aborted || j->pipe_w < 0) return;
  auto give_up = [&](const std::string& reason, bool warn, bool epipe = false) {
    j->aborted = true;
    j->epipe = epipe;
    j->note = reason;
    close_fd(j->pipe_w);
    if (warn) {
      log::warn("exec '{}': {} (it took {} bytes); its writers get EPIPE", log_quote(j->path), reason,
                j->bytes.load(std::memory_order_relaxed));
    }
    throw AbortStream(reason);
  };
  if (stopping_.load()) give_up("capturefs stopped before the stream was fully delivered", false);

  const auto* p = reinterpret_cast<const char*>(c.bytes.data());
  std::size_t left = c.bytes.size();
  while (left > 0) {
    const ssize_t n = ::write(j->pipe_w, p, left);
    if (n > 0) {
      p += n;
      left -= static_cast<std::size_t>(n);
      j->bytes.fetch_add(static_cast<std::uint64_t>(n), std::memory_order_relaxed);
      continue;
    }
    const int err = n < 0 ? errno : EIO;
    if (err == EINTR) continue;
    if (err == EPIPE) give_up("command exited before reading all input", true, /*epipe=*/true);
    if (err != EAGAIN) give_up("writing to the command's stdin failed: " + errno_text(err), true);
    // The pipe is full: wait for the command to read, or for stop().
    pollfd fds[2] = {{j->pipe_w, POLLOUT, 0}, {stop_fd_, POLLIN, 0}};
    const int r = ::poll(fds, 2, -1);
    if (r < 0 && errno != EINTR) give_up("poll: " + errno_text(errno), true);
    if (r > 0 && (fds[1].revents & POLLIN) != 0)
      give_up("capturefs stopped before the stream was fully delivered", false);
    // POLLOUT, or POLLERR (reader gone): the next write() tells which.
  }
}

void ExecRunner::on_close(const StreamClose& e) {
  std::shared_ptr<Job> j;
  {
    std::lock_guard lk(mu_);
    auto it = jobs_.find(e.id);
    if (it == jobs_.end()) return;  // the command could not be started (already recorded)
    j = it->second;
  }
  j->closed = true;
  j->complete = e.complete;
  if (!e.complete && j->note.empty()) j->note = e.reason;
  close_fd(j->pipe_w);  // EOF for the command
  hand_to_reaper(std::move(j));
}

void ExecRunner::hand_to_reaper(std::shared_ptr<Job> j) {
  {
    std::lock_guard lk(mu_);
    jobs_.erase(j->id);
    reaping_.push_back(std::move(j));
  }
  wake(reap_fd_);
}

void ExecRunner::reap_loop() {
  std::vector<std::shared_ptr<Job>> watch;
  std::vector<pollfd> fds;
  for (;;) {
    bool draining = false;
    timespec deadline{};
    {
      std::lock_guard lk(mu_);
      watch = reaping_;
      draining = draining_;
      deadline = drain_deadline_;
    }
    // Reap what has exited (finish() takes it out of reaping_).
    for (auto& j : watch) {
      if (j->try_reap()) finish(j);
    }
    std::erase_if(watch, [](const std::shared_ptr<Job>& j) { return j->reaped; });
    if (draining && watch.empty()) return;
    if (draining && ms_until(deadline) == 0) {
      for (auto& j : watch) finish(j);  // "still running (pid N)": not waited for any longer
      return;
    }
    // Sleep until one of them exits, or news.
    fds.clear();
    fds.push_back({reap_fd_, POLLIN, 0});
    int timeout = -1;
    for (auto& j : watch) {
      if (j->pidfd >= 0) fds.push_back({j->pidfd, POLLIN, 0});
      else timeout = 20;  // no pidfd: poll waitpid
    }
    if (draining) {
      const int left = ms_until(deadline);
      timeout = timeout < 0 ? left : std::min(timeout, left);
    }
    if (::poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR) {
      for (auto& j : watch) close_fd(j->pidfd);  // fall back to polling waitpid
    }
    std::uint64_t v = 0;
    (void)!::read(reap_fd_, &v, sizeof v);
  }
}

void ExecRunner::finish(const std::shared_ptr<Job>& j) {
  ExecExit x;
  x.stream_id = j->id;
  x.path = j->path;
  x.pid = j->pid;
  x.status = j->reaped ? j->status : -1;
  x.bytes = j->bytes.load(std::memory_order_relaxed);
  x.input = j->input();
  x.input_complete = x.input == ExecInput::complete;
  const std::string& why = j->note.empty() ? j->wait_note : j->note;
  x.note = x.input_complete ? std::string() : (why.empty() ? "the stream did not end" : why);
  x.started = j->started;
  x.ended = now_realtime();

  std::string msg = fmt::format("exec '{}': {}", log_quote(x.path),
                                j->reaped ? describe_wait_status(x.status)
                                          : "still running (pid " + std::to_string(x.pid) + "), not waited for");
  if (!x.input_complete) msg += fmt::format(" (input incomplete: {})", x.note);
  const bool ok = x.ok();
  {
    // From running to the history in one step (snapshot() sees one or the
    // other), before the log line: whoever reads the line finds the record.
    std::lock_guard lk(mu_);
    std::erase(reaping_, j);
    --alive_;
    history_.add(std::move(x));
  }
  slot_cv_.notify_one();
  if (ok) log::info("{}", msg);
  else log::warn("{}", msg);
}

void ExecRunner::stop_feeding() {
  std::lock_guard stop_lk(stop_mu_);
  if (feeding_stopped_) return;
  feeding_stopped_ = true;
  {
    std::lock_guard lk(mu_);
    stopping_.store(true);
  }
  slot_cv_.notify_all();  // on_open waiting for a slot gives up
  wake(stop_fd_);         // so does on_data waiting on a full pipe, for good
  consumer_.close();      // joins the delivery threads

  // Commands whose stream did not reach on_close: EOF now.
  std::vector<std::shared_ptr<Job>> left;
  {
    std::lock_guard lk(mu_);
    for (auto& [id, j] : jobs_) left.push_back(j);
  }
  std::sort(left.begin(), left.end(), [](const auto& a, const auto& b) { return a->id < b->id; });
  for (auto& j : left) {
    close_fd(j->pipe_w);
    if (!j->closed && j->note.empty()) j->note = "capturefs stopped before the stream ended";
    hand_to_reaper(j);
  }
}

void ExecRunner::stop() {
  stop_feeding();
  std::lock_guard stop_lk(stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  {
    std::lock_guard lk(mu_);
    draining_ = true;
    timespec d = now_mono();
    const auto grace = opt_.stop_grace.count();
    d.tv_sec += grace / 1000;
    d.tv_nsec += (grace % 1000) * 1000000L;
    if (d.tv_nsec >= 1000000000L) {
      d.tv_sec += 1;
      d.tv_nsec -= 1000000000L;
    }
    drain_deadline_ = d;
  }
  wake(reap_fd_);
  if (reaper_.joinable()) reaper_.join();
}

}  // namespace capturefs::cli
