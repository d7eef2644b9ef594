#include "core/proc.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace capturefs::core {

namespace {

// The whole of a small /proc file, or "" if it cannot be read.
std::string slurp(const char* path) {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string out;
  char buf[1024];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

constexpr unsigned long kPfExiting = 0x00000004;  // PF_EXITING, include/linux/sched.h

}  // namespace

int killed_by_signal(std::int32_t tid) {
  if (tid <= 0) return 0;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(tid));
  const std::string s = slurp(path);
  // Fields after the command name, which is in parentheses and may hold
  // anything: field 3 (state) starts two bytes after the last ')'.
  const std::size_t close = s.rfind(')');
  if (close == std::string::npos) return 0;
  std::string_view rest(s);
  rest.remove_prefix(close + 2);
  unsigned long flags = 0;
  long exit_code = 0;
  int field = 3;
  while (!rest.empty() && field <= 52) {
    const std::size_t sp = rest.find(' ');
    const std::string_view v = rest.substr(0, sp);
    if (field == 9) flags = std::strtoul(std::string(v).c_str(), nullptr, 10);
    if (field == 52) exit_code = std::strtol(std::string(v).c_str(), nullptr, 10);
    if (sp == std::string_view::npos) break;
    rest.remove_prefix(sp + 1);
    ++field;
  }
  if ((flags & kPfExiting) == 0) return 0;
  return static_cast<int>(exit_code & 0x7f);  // waitpid form: a signal in the low 7 bits
}

}  // namespace capturefs::core
