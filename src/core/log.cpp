#include "core/log.hpp"

#include <fcntl.h>
#include <syslog.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <string>

namespace capturefs::log {

namespace {
std::atomic<int> g_level{static_cast<int>(Level::Info)};
std::atomic<int> g_fd{STDERR_FILENO};  // where lines go, unless g_syslog
std::atomic<bool> g_syslog{false};
}

void set_level(Level l) { g_level.store(static_cast<int>(l), std::memory_order_relaxed); }

bool enabled(Level l) { return static_cast<int>(l) >= g_level.load(std::memory_order_relaxed); }

void write(Level l, std::string_view msg) {
  static constexpr const char* names[] = {"debug", "info", "warning", "error"};
  if (g_syslog.load(std::memory_order_relaxed)) {
    static constexpr int prio[] = {LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR};
    ::syslog(prio[static_cast<int>(l)], "%s: %.*s", names[static_cast<int>(l)], static_cast<int>(msg.size()),
             msg.data());
    return;
  }
  const int fd = g_fd.load(std::memory_order_relaxed);
  std::string line;
  if (fd != STDERR_FILENO) {
    // A log file: when, and which daemon.
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    ::localtime_r(&t, &tm);
    char when[32];
    std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S%z", &tm);
    line = fmt::format("{} capturefs[{}]: {}: {}\n", when, ::getpid(), names[static_cast<int>(l)], msg);
  } else {
    line = fmt::format("capturefs: {}: {}\n", names[static_cast<int>(l)], msg);
  }
  // One write(2) per line so that concurrent threads do not interleave.
  (void)!::write(fd, line.data(), line.size());
}

bool to_file(const std::string& path, std::string* error) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) {
    *error = "log file " + path + ": " + std::strerror(errno);
    return false;
  }
  const int old = g_fd.exchange(fd);
  if (old != STDERR_FILENO) ::close(old);
  g_syslog = false;
  return true;
}

void to_syslog() {
  ::openlog("capturefs", LOG_PID | LOG_NDELAY, LOG_DAEMON);
  g_syslog = true;
}

}  // namespace capturefs::log
