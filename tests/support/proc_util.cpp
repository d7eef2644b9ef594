#include "proc_util.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace capturefs::test {

namespace {

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

std::string join_argv(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) {
    if (!s.empty()) s += ' ';
    bool quote = a.empty() || a.find_first_of(" \t'\"$;|&<>") != std::string::npos;
    s += quote ? "'" + a + "'" : a;
  }
  return s.size() > 400 ? s.substr(0, 400) + "..." : s;
}

std::string read_fd_from_start(int fd) {
  std::string s;
  if (fd < 0) return s;
  char buf[65536];
  off_t off = 0;
  for (;;) {
    ssize_t n = ::pread(fd, buf, sizeof buf, off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    s.append(buf, static_cast<std::size_t>(n));
    off += n;
  }
  return s;
}

int memfd(const char* name) {
  int fd = ::memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) throw std::runtime_error(std::string("memfd_create: ") + std::strerror(errno));
  return fd;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

}  // namespace

// ---------------------------------------------------------------- UniqueFd

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
  if (this != &o) reset(o.release());
  return *this;
}

int UniqueFd::reset(int fd) {
  int err = 0;
  if (fd_ >= 0 && ::close(fd_) != 0) err = errno;
  fd_ = fd;
  return err;
}

// ---------------------------------------------------------------- Child

Child Child::spawn(const std::vector<std::string>& argv, SpawnOptions opts) {
  if (argv.empty()) throw std::invalid_argument("spawn: empty argv");
  Child c;
  c.desc_ = join_argv(argv);

  // Everything the child needs is prepared before fork().
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view kv(*e);
    auto key = kv.substr(0, kv.find('='));
    bool overridden = std::any_of(opts.env.begin(), opts.env.end(), [&](const std::string& o) {
      return std::string_view(o).substr(0, o.find('=')) == key;
    });
    if (!overridden) env_strings.emplace_back(kv);
  }
  for (const auto& o : opts.env) env_strings.push_back(o);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  std::vector<UniqueFd> keep;  // child-side ends, closed in the parent after fork
  std::vector<std::pair<int, int>> plan;  // {source fd, target fd} for the child

  // stdin
  if (opts.pipe_stdin) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
    keep.emplace_back(p[0]);
    c.stdin_.reset(p[1]);
    plan.emplace_back(p[0], 0);
  } else if (opts.stdin_fd >= 0) {
    plan.emplace_back(opts.stdin_fd, 0);
  } else {
    const char* in = opts.stdin_path.empty() ? "/dev/null" : opts.stdin_path.c_str();
    int fd = ::open(in, O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error(std::string("open stdin ") + in + ": " + std::strerror(errno));
    keep.emplace_back(fd);
    plan.emplace_back(fd, 0);
  }
  // stdout
  if (opts.pipe_stdout) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
    c.stdout_pipe_.reset(p[0]);
    keep.emplace_back(p[1]);
    plan.emplace_back(p[1], 1);
  } else if (!opts.stdout_path.empty()) {
    int fd = ::open(opts.stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error("open " + opts.stdout_path + ": " + std::strerror(errno));
    keep.emplace_back(fd);
    plan.emplace_back(fd, 1);
  } else {
    c.out_mem_.reset(memfd("stdout"));
    plan.emplace_back(c.out_mem_.get(), 1);
  }
  // stderr
  if (!opts.stderr_path.empty()) {
    int fd = ::open(opts.stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error("open " + opts.stderr_path + ": " + std::strerror(errno));
    keep.emplace_back(fd);
    plan.emplace_back(fd, 2);
  } else {
    c.err_mem_.reset(memfd("stderr"));
    plan.emplace_back(c.err_mem_.get(), 2);
  }
  for (const auto& p : opts.fds) plan.push_back(p);

  int max_target = 2;
  for (const auto& p : plan) max_target = std::max(max_target, p.second);
  std::vector<int> tmp(plan.size(), -1);
  std::vector<char> is_target(static_cast<std::size_t>(max_target) + 1, 0);
  for (const auto& p : plan) is_target[static_cast<std::size_t>(p.second)] = 1;

  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    if (opts.parent_death_signal != 0) {
      ::prctl(PR_SET_PDEATHSIG, opts.parent_death_signal);
      if (::getppid() != parent) ::_exit(127);
    }
    if (opts.new_process_group) ::setpgid(0, 0);
    // Default signal state: the test runner may ignore SIGINT (background
    // jobs do), and an inherited SIG_IGN would change what the tools do.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int s : {SIGINT, SIGTERM, SIGPIPE, SIGQUIT, SIGHUP, SIGCHLD}) ::signal(s, SIG_DFL);
    // Move sources out of the way, then onto their targets.
    for (std::size_t i = 0; i < plan.size(); ++i) tmp[i] = ::fcntl(plan[i].first, F_DUPFD, max_target + 1);
    for (std::size_t i = 0; i < plan.size(); ++i) {
      if (tmp[i] < 0 || ::dup2(tmp[i], plan[i].second) < 0) ::_exit(126);
    }
    for (int fd = 3; fd <= max_target; ++fd) {
      if (!is_target[static_cast<std::size_t>(fd)]) ::close(fd);
    }
    ::close_range(static_cast<unsigned>(max_target) + 1, ~0U, 0);
    ::execvpe(args[0], args.data(), envp.data());
    const char* msg = "spawn: exec failed: ";
    (void)!::write(2, msg, std::strlen(msg));
    (void)!::write(2, args[0], std::strlen(args[0]));
    (void)!::write(2, "\n", 1);
    ::_exit(127);
  }
  c.pid_ = pid;
  c.own_group_ = opts.new_process_group;
  if (opts.new_process_group) ::setpgid(pid, pid);  // no race with the child's own call
  c.pidfd_.reset(pidfd_open(pid));
  return c;
}

Child::Child(Child&& o) noexcept { *this = std::move(o); }

Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) {
    if (pid_ > 0 && !status_) kill_and_reap();
    pid_ = std::exchange(o.pid_, -1);
    own_group_ = o.own_group_;
    status_ = std::exchange(o.status_, std::nullopt);
    pidfd_ = std::move(o.pidfd_);
    stdin_ = std::move(o.stdin_);
    stdout_pipe_ = std::move(o.stdout_pipe_);
    out_mem_ = std::move(o.out_mem_);
    err_mem_ = std::move(o.err_mem_);
    desc_ = std::move(o.desc_);
  }
  return *this;
}

Child::~Child() {
  if (pid_ > 0 && !status_) kill_and_reap();
}

void Child::reap_if_exited(bool block) {
  if (pid_ <= 0 || status_) return;
  int st = 0;
  for (;;) {
    pid_t r = ::waitpid(pid_, &st, block ? 0 : WNOHANG);
    if (r < 0 && errno == EINTR) continue;
    if (r == pid_) status_ = st;
    return;
  }
}

bool Child::exited() {
  reap_if_exited(false);
  return status_.has_value();
}

std::optional<int> Child::wait_for(Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    reap_if_exited(false);
    if (status_) return status_;
    auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    if (left.count() <= 0) return std::nullopt;
    if (pidfd_) {
      pollfd p{pidfd_.get(), POLLIN, 0};
      int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
      if (r < 0 && errno != EINTR) pidfd_.reset();  // fall back to polling waitpid
    } else {
      std::this_thread::sleep_for(2ms);
    }
  }
}

int Child::wait_or_kill(Millis timeout) {
  if (auto st = wait_for(timeout)) return *st;
  ADD_FAILURE() << "process did not exit within " << timeout.count() << " ms, killing it: " << desc_
                << "\nstderr so far: " << err();
  kill_and_reap();
  return status_.value_or(-1);
}

void Child::signal(int sig) {
  if (pid_ > 0 && !status_) ::kill(pid_, sig);
}

void Child::kill_and_reap() {
  if (pid_ <= 0) return;
  if (!status_) {
    if (own_group_) ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);
    reap_if_exited(true);
  }
}

std::string Child::out() const { return read_fd_from_start(out_mem_.get()); }
std::string Child::err() const { return read_fd_from_start(err_mem_.get()); }

// ---------------------------------------------------------------- run

bool RunResult::ok() const { return !timed_out && exited_with(status, 0); }

int RunResult::code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

std::string RunResult::describe() const {
  std::ostringstream s;
  s << (timed_out ? "TIMED OUT, " : "") << status_string(status) << " after " << elapsed.count()
    << " ms\n--- stdout ---\n"
    << (out.size() > 4000 ? out.substr(0, 4000) + "...(truncated)" : out) << "\n--- stderr ---\n"
    << (err.size() > 4000 ? err.substr(0, 4000) + "...(truncated)" : err);
  return s.str();
}

RunResult run(const std::vector<std::string>& argv, Millis timeout, SpawnOptions opts) {
  RunResult r;
  const auto t0 = Clock::now();
  Child c = Child::spawn(argv, std::move(opts));
  auto st = c.wait_for(timeout);
  if (!st) {
    r.timed_out = true;
    ADD_FAILURE() << "timed out after " << timeout.count() << " ms: " << c.describe();
    c.kill_and_reap();
    st = c.status();
  }
  r.status = st.value_or(-1);
  r.elapsed = std::chrono::duration_cast<Millis>(Clock::now() - t0);
  r.out = c.out();
  r.err = c.err();
  return r;
}

RunResult sh(const std::string& cmd, Millis timeout, SpawnOptions opts) {
  return run({"/bin/sh", "-c", cmd}, timeout, std::move(opts));
}

std::string status_string(int status) {
  if (status == -1) return "not reaped";
  if (WIFEXITED(status)) return "exited " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* name = sigabbrev_np(WTERMSIG(status));
    return std::string("killed by SIG") + (name ? name : std::to_string(WTERMSIG(status)).c_str());
  }
  return "status " + std::to_string(status);
}

bool exited_with(int status, int code) { return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == code; }

bool killed_by(int status, int sig) { return status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == sig; }

bool eventually(const std::function<bool()>& cond, Millis timeout, Millis interval) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (cond()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(interval);
  }
}

// ---------------------------------------------------------------- blocked_in

namespace {

// Index of the descriptor argument a syscall reads from / writes to, or -1.
int fd_arg(long nr, Io io) {
  if (io == Io::Read) {
    switch (nr) {
      case SYS_read: case SYS_readv: case SYS_pread64: case SYS_preadv: case SYS_preadv2:
      case SYS_copy_file_range: case SYS_splice:
        return 0;
      case SYS_sendfile:
        return 1;
      default:
        return -1;
    }
  }
  switch (nr) {
    case SYS_write: case SYS_writev: case SYS_pwrite64: case SYS_pwritev: case SYS_pwritev2:
      return 0;
    case SYS_copy_file_range: case SYS_splice:
      return 2;
    case SYS_sendfile:
      return 0;
    default:
      return -1;
  }
}

char proc_state(pid_t pid) {
  std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return '?';
  return stat[close + 2];
}

}  // namespace

BlockState blocked_in(pid_t pid, Io io, const std::string& prefix) {
  BlockState b;
  const std::string proc = "/proc/" + std::to_string(pid);
  const char state1 = proc_state(pid);
  std::string sc = trim(slurp(proc + "/syscall"));
  const char state2 = proc_state(pid);
  std::string wchan = trim(slurp(proc + "/wchan"));
  std::ostringstream obs;
  obs << "state=" << state1 << "/" << state2 << " syscall=[" << sc << "] wchan=" << wchan;
  if (sc.empty() || sc == "running" || !std::isdigit(static_cast<unsigned char>(sc[0]))) {
    b.observation = obs.str();
    return b;
  }
  std::istringstream in(sc);
  long nr = -1;
  in >> nr;
  std::vector<unsigned long> args;
  std::string a;
  while (in >> a && args.size() < 6) args.push_back(std::stoul(a, nullptr, 16));
  int idx = fd_arg(nr, io);
  std::string target;
  if (idx >= 0 && static_cast<std::size_t>(idx) < args.size()) {
    char link[4096];
    ssize_t n = ::readlink((proc + "/fd/" + std::to_string(args[static_cast<std::size_t>(idx)])).c_str(),
                           link, sizeof link - 1);
    if (n > 0) target.assign(link, static_cast<std::size_t>(n));
    obs << " fd=" << args[static_cast<std::size_t>(idx)] << " -> " << target;
  }
  b.observation = obs.str();
  const bool on_mount = !target.empty() && (target == prefix || target.rfind(prefix + "/", 0) == 0);
  const bool sleeping = (state1 == 'S' || state1 == 'D') && (state2 == 'S' || state2 == 'D');
  b.blocked = idx >= 0 && on_mount && sleeping;
  return b;
}

BlockState wait_blocked_in(pid_t pid, Io io, const std::string& prefix, Millis timeout) {
  BlockState last;
  eventually([&] { return (last = blocked_in(pid, io, prefix)).blocked; }, timeout);
  return last;
}

BlockState wait_writer_held(pid_t pid, const std::string& stream_path, const std::string& prefix,
                            Millis timeout, Millis window) {
  BlockState last;
  std::optional<Clock::time_point> since;
  off_t since_size = -1;
  eventually(
      [&] {
        last = blocked_in(pid, Io::Write, prefix);
        struct stat st{};
        off_t size = ::stat(stream_path.c_str(), &st) == 0 ? st.st_size : -1;
        if (!last.blocked || size < 0) {  // not waiting now: start over
          since.reset();
          since_size = -1;
          return false;
        }
        if (!since || size != since_size) {  // (re)start the window
          since = Clock::now();
          since_size = size;
          return false;
        }
        return Clock::now() - *since >= window;
      },
      timeout);
  bool held = since && last.blocked && Clock::now() - *since >= window;
  last.blocked = held;
  last.observation += " st_size=" + std::to_string(since_size);
  return last;
}

// ---------------------------------------------------------------- run_guarded

std::string run_guarded(const std::function<std::string()>& fn, Millis timeout) {
  UniqueFd mem(memfd("guarded"));
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return std::string("fork: ") + std::strerror(errno);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    std::string msg;
    try {
      msg = fn();
    } catch (const std::exception& e) {
      msg = std::string("exception: ") + e.what();
    }
    (void)!::write(mem.get(), msg.data(), msg.size());
    ::_exit(msg.empty() ? 0 : 1);
  }
  UniqueFd pidfd(pidfd_open(pid));
  const auto deadline = Clock::now() + timeout;
  int st = 0;
  bool done = false;
  while (!done) {
    pid_t r = ::waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      done = true;
      break;
    }
    auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    if (left.count() <= 0) break;
    if (pidfd) {
      pollfd p{pidfd.get(), POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
    } else {
      std::this_thread::sleep_for(2ms);
    }
  }
  if (!done) {
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return "the call was still blocked after " + std::to_string(timeout.count()) +
           " ms (it must not block)";
  }
  std::string msg = read_fd_from_start(mem.get());
  if (exited_with(st, 0)) return "";
  if (msg.empty()) msg = "guarded child " + status_string(st);
  return msg;
}

// ---------------------------------------------------------------- files

std::string errno_string(int err) {
  const char* name = strerrorname_np(err);
  return std::string(name ? name : "E?") + " (" + std::strerror(err) + ")";
}

std::string write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return "write: " + errno_string(errno);
    if (n == 0) return "write returned 0";
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return "";
}

std::string read_to_eof(int fd, int* err) {
  std::string s;
  char buf[65536];
  if (err) *err = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      if (err) *err = errno;
      break;
    }
    if (n == 0) break;
    s.append(buf, static_cast<std::size_t>(n));
  }
  return s;
}

std::string read_exactly(int fd, std::size_t n, Millis timeout) {
  std::string s;
  const auto deadline = Clock::now() + timeout;
  while (s.size() < n) {
    auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    char buf[65536];
    ssize_t got = ::read(fd, buf, std::min(sizeof buf, n - s.size()));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    s.append(buf, static_cast<std::size_t>(got));
  }
  return s;
}

std::string read_file(const std::string& path) { return slurp(path); }

void write_file(const std::string& path, std::string_view data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

void make_random_file(const std::string& path, std::uint64_t size) {
  UniqueFd in(::open("/dev/urandom", O_RDONLY | O_CLOEXEC));
  UniqueFd out(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!in || !out) throw std::runtime_error("make_random_file " + path + ": " + std::strerror(errno));
  std::vector<char> buf(1 << 20);
  while (size > 0) {
    std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(size, buf.size()));
    ssize_t n = ::read(in.get(), buf.data(), want);
    if (n <= 0) throw std::runtime_error("read /dev/urandom failed");
    auto err = write_all(out.get(), std::string_view(buf.data(), static_cast<std::size_t>(n)));
    if (!err.empty()) throw std::runtime_error(err);
    size -= static_cast<std::uint64_t>(n);
  }
}

std::string sha256_of(const std::string& path, Millis timeout) {
  RunResult r = run({"sha256sum", path}, timeout);
  if (!r.ok()) {
    ADD_FAILURE() << "sha256sum " << path << ": " << r.describe();
    return "";
  }
  return r.out.substr(0, 64);
}

std::string sha256_of_data(std::string_view data) {
  UniqueFd mem(memfd("data"));
  (void)write_all(mem.get(), data);
  ::lseek(mem.get(), 0, SEEK_SET);
  SpawnOptions o;
  o.stdin_fd = mem.get();
  RunResult r = run({"sha256sum"}, 60s, o);
  return r.ok() ? r.out.substr(0, 64) : "";
}

std::string payload(std::string_view tag, std::size_t size) {
  std::string s = "payload " + std::string(tag) + "\n";
  std::uint64_t x = 1469598103934665603ULL;
  for (char ch : tag) x = (x ^ static_cast<unsigned char>(ch)) * 1099511628211ULL;
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n";
  while (s.size() < size) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s += alphabet[x % (sizeof alphabet - 1)];
  }
  s.resize(size);
  return s;
}

bool is_mountpoint(const std::string& path, std::string* fstype) {
  std::ifstream f("/proc/self/mounts");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string dev, mp, type;
    in >> dev >> mp >> type;
    std::string un;  // undo the octal escapes (\040 for a space ...)
    for (std::size_t i = 0; i < mp.size(); ++i) {
      if (mp[i] == '\\' && i + 3 < mp.size() + 0 && std::isdigit(static_cast<unsigned char>(mp[i + 1]))) {
        un += static_cast<char>(std::stoi(mp.substr(i + 1, 3), nullptr, 8));
        i += 3;
      } else {
        un += mp[i];
      }
    }
    if (un == path) {
      if (fstype) *fstype = type;
      return true;
    }
  }
  return false;
}

std::uint64_t proc_status_bytes(pid_t pid, std::string_view key) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(std::string(key) + ":", 0) == 0) {
      std::istringstream in(line.substr(key.size() + 1));
      std::uint64_t kb = 0;
      in >> kb;
      return kb * 1024;
    }
  }
  return 0;
}

std::string mib(std::uint64_t bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

}  // namespace capturefs::test
