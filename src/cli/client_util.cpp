#include "cli/client_util.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <csignal>
#include <ctime>
#include <string>
#include <thread>
#include <unordered_map>

#include "cli/locate.hpp"
#include "proto/codec.hpp"
#include "server/client.hpp"
#include "server/text.hpp"

namespace capturefs::cli::util {

/// Writes all of `data` to fd; errno on failure, 0 on success.
int write_all(int fd, const void* data, std::size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return 0;
}

void complain(const char* cmd, const std::string& msg) { std::fprintf(stderr, "capturefs %s: %s\n", cmd, msg.c_str()); }

/// One line on stdout, flushed (so that a pipe reader sees each event now).
/// False if stdout is gone.
bool print_line(std::string line) {
  line += '\n';
  return write_all(STDOUT_FILENO, line.data(), line.size()) == 0;
}

const char* state_name(proto::StreamState s) {
  switch (s) {
    case proto::StreamState::writing: return "writing";
    case proto::StreamState::streaming: return "streaming";
    case proto::StreamState::held: return "held";
    case proto::StreamState::draining: return "draining";
  }
  return "?";
}

std::string num(std::uint64_t v) { return std::to_string(v); }

const char* wait_name(proto::WaitReason w) {
  switch (w) {
    case proto::WaitReason::none: return "none";
    case proto::WaitReason::consumer: return "consumer";
    case proto::WaitReason::memory: return "memory";
    case proto::WaitReason::spill_limit: return "spill_limit";
  }
  return "?";
}

bool is_explicit_path(const std::string& n) {
  return n == "." || n == ".." || n.rfind('/', 0) == 0 || n.rfind("./", 0) == 0 || n.rfind("../", 0) == 0;
}

/// The socket and the stream path for NAME (`cat`, `peek`): a path in a
/// mount, or, with a socket given, a path relative to its mount root.
bool resolve_name(const char* cmd, const std::string& socket, const std::string& name, std::string* sock,
                  std::string* rel) {
  if (name.empty()) {
    complain(cmd, "NAME is empty");
    return false;
  }
  if (!socket.empty() && !is_explicit_path(name)) {
    *sock = socket;
    *rel = name;
    return true;
  }
  if (auto at = locate(name)) {
    if (at->rel.empty()) {
      complain(cmd, "'" + server::printable(name) + "' is the root of the mount " + at->root + ", not a stream");
      return false;
    }
    *sock = socket.empty() ? at->socket : socket;
    *rel = at->rel;
    return true;
  }
  if (!socket.empty()) {
    *sock = socket;
    *rel = name.rfind("./", 0) == 0 ? name.substr(2) : name;
    return true;
  }
  complain(cmd, "'" + server::printable(name) +
                    "' is not in a capturefs mount that serves a socket (give MOUNT/PATH, or --socket PATH and "
                    "the path relative to the mount)");
  return false;
}

/// The socket and globs for `watch`/`take` ARGS: [MOUNT] [GLOB...].
bool resolve_globs(const char* cmd, const std::string& socket, const std::vector<std::string>& args,
                   std::string* sock, std::vector<std::string>* globs) {
  std::vector<std::string> rest = args;
  std::string prefix;
  *sock = socket;
  struct stat st{};
  if (!rest.empty() && ::stat(rest.front().c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    auto at = locate(rest.front());
    if (!at) {
      if (socket.empty()) {
        complain(cmd, rest.front() + " is not a capturefs mount that serves a socket");
        return false;
      }
    } else {
      if (socket.empty()) *sock = at->socket;
      prefix = at->rel.empty() ? "" : at->rel + "/";
      rest.erase(rest.begin());
    }
  }
  if (sock->empty()) {
    if (auto here = locate(".")) {
      *sock = here->socket;
    } else {
      complain(cmd, "which daemon? name its mountpoint (capturefs " + std::string(cmd) +
                        " MOUNT) or give --socket PATH");
      return false;
    }
  }
  if (rest.empty()) rest.push_back("*");
  globs->clear();
  for (const auto& g : rest) globs->push_back(prefix + g);
  return true;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace capturefs::cli::util
