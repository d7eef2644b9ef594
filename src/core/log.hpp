// Minimal leveled logging, shared by every layer.
//
// The sink is process-wide by nature (one stderr, one syslog connection):
// stderr by default, or a file (`--log-file`), or syslog (a daemon in the
// background, where stderr is /dev/null). The level and the sink are set
// once at start-up by the CLI. Messages are formatted with fmt by the caller.
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace capturefs::log {

enum class Level : int { Debug = 0, Info = 1, Warn = 2, Error = 3 };

void set_level(Level l);
bool enabled(Level l);
void write(Level l, std::string_view msg);

/// \brief Appends lines to the file at `path` (created mode 0640), each
/// with a local timestamp and the pid, instead of writing to stderr.
/// False, with *error naming the path and the cause, if it cannot be opened.
bool to_file(const std::string& path, std::string* error);
/// \brief Sends lines to syslog(3) (journald), ident "capturefs", facility
/// daemon, with the level as the priority.
void to_syslog();

template <class... A>
void debug(fmt::format_string<A...> f, A&&... a) {
  if (enabled(Level::Debug)) write(Level::Debug, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void info(fmt::format_string<A...> f, A&&... a) {
  if (enabled(Level::Info)) write(Level::Info, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void warn(fmt::format_string<A...> f, A&&... a) {
  if (enabled(Level::Warn)) write(Level::Warn, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void error(fmt::format_string<A...> f, A&&... a) {
  if (enabled(Level::Error)) write(Level::Error, fmt::format(f, std::forward<A>(a)...));
}

}  // namespace capturefs::log
