#include "core/log.hpp"

#include <unistd.h>

#include <atomic>
#include <string>

namespace capturefs::log {

namespace {
std::atomic<int> g_level{static_cast<int>(Level::Info)};
}

void set_level(Level l) { g_level.store(static_cast<int>(l), std::memory_order_relaxed); }

bool enabled(Level l) { return static_cast<int>(l) >= g_level.load(std::memory_order_relaxed); }

void write(Level l, std::string_view msg) {
  static constexpr const char* names[] = {"debug", "info", "warning", "error"};
  // One write(2) per line so that concurrent threads do not interleave.
  std::string line = fmt::format("capturefs: {}: {}\n", names[static_cast<int>(l)], msg);
  (void)!::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace capturefs::log
