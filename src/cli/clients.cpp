#include "cli/clients.hpp"

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

#include "cli/client_util.hpp"
#include "cli/locate.hpp"
#include "proto/codec.hpp"
#include "server/client.hpp"
#include "server/text.hpp"

extern char** environ;

namespace capturefs::cli {

using server::ClientConnection;
using server::ClientError;
using namespace util;

// ---------------------------------------------------------------- cat

int run_cat(const CatArgs& in) {
  CatArgs a = in;
  std::string rel;
  if (!resolve_name("cat", in.socket, in.name, &a.socket, &rel)) return 2;
  const std::string name = "'" + server::printable(rel) + "'";
  const bool progress = a.progress && ::isatty(STDERR_FILENO) == 1;
  std::uint64_t got = 0;
  const double t0 = now_s();
  double shown = t0;
  auto show = [&](bool last) {
    const double t = now_s();
    if (!progress || (!last && t - shown < 0.5)) return;
    shown = t;
    const double rate = t > t0 ? static_cast<double>(got) / (t - t0) : 0;
    std::fprintf(stderr, "\r%s: %s  %s/s   %s", server::printable(rel).c_str(), server::human_bytes(got).c_str(),
                 server::human_bytes(static_cast<std::uint64_t>(rate)).c_str(), last ? "\n" : "");
    std::fflush(stderr);
  };
  try {
    ClientConnection c(a.socket);
    proto::Subscribe s;
    s.literal = true;
    s.once = true;
    s.nowait = !a.wait;
    s.patterns = {rel};
    c.queue(s);
    std::uint64_t id = 0;
    bool opened = false;
    for (;;) {
      auto f = c.next();
      if (!f) {
        complain("cat", a.socket + ": " + name + ": the daemon closed the connection before the stream ended");
        return 1;
      }
      if (auto* e = std::get_if<proto::Error>(&*f)) {
        if (e->code == proto::ErrorCode::not_found)
          complain("cat", a.socket + ": " + name + ": no such stream");
        else if (e->code == proto::ErrorCode::busy)
          complain("cat", a.socket + ": " + name + ": busy (another consumer is reading it)");
        else
          complain("cat", a.socket + ": " + name + ": " + server::describe(*e));
        return 1;
      }
      if (auto* o = std::get_if<proto::Opened>(&*f)) {
        if (!opened) {
          opened = true;
          id = o->id;
        }
        continue;
      }
      if (auto* d = std::get_if<proto::Data>(&*f)) {
        if (!opened || d->id != id) continue;
        if (const int err = write_all(STDOUT_FILENO, d->bytes.data(), d->bytes.size())) {
          complain("cat", std::string("stdout: ") + std::strerror(err));
          return 1;  // not acknowledged: the rest goes to the next consumer
        }
        c.queue(proto::Ack{id, d->offset + d->bytes.size()});
        got += d->bytes.size();
        show(false);
        continue;
      }
      if (auto* cl = std::get_if<proto::Closed>(&*f)) {
        if (!opened || cl->id != id) continue;
        show(true);
        if (cl->status == proto::CloseStatus::complete) {
          // The final ACK finishes the stream. The daemon handles a
          // connection's frames in order, so once the reply to a STATUS
          // request sent after it is in, the name is gone (as after `cat`
          // of the file itself).
          c.queue(proto::Ack{id, cl->total});
          c.queue(proto::StatusRequest{});
          for (;;) {
            auto g = c.next();
            if (!g) break;
            if (auto* st = std::get_if<proto::StatusReply>(&*g); st && !st->more) break;
          }
          return 0;
        }
        complain("cat", a.socket + ": " + name + ": aborted: " + cl->reason);
        return 1;
      }
      // SUBSCRIBED, RENAMED, STATUS: nothing to do.
    }
  } catch (const ClientError& e) {
    complain("cat", e.what());
    return 1;
  }
}

// ---------------------------------------------------------------- peek

int run_peek(const PeekArgs& in) {
  std::string sock, rel;
  if (!resolve_name("peek", in.socket, in.name, &sock, &rel)) return 2;
  try {
    ClientConnection c(sock);
    if (c.version() < 3) {
      complain("peek", sock + ": the daemon speaks protocol version " + num(c.version()) +
                           "; peek needs version 3 (a newer capturefs daemon)");
      return 1;
    }
    c.queue(proto::Peek{in.bytes, rel});
    for (;;) {
      auto f = c.next();
      if (!f) {
        complain("peek", sock + ": the daemon closed the connection before answering");
        return 1;
      }
      if (auto* e = std::get_if<proto::Error>(&*f)) {
        complain("peek", sock + ": '" + server::printable(rel) + "': " + server::describe(*e));
        return 1;
      }
      auto* p = std::get_if<proto::Peeked>(&*f);
      if (p == nullptr) continue;
      if (p->id == 0) {
        complain("peek", sock + ": '" + server::printable(rel) + "': no such stream");
        return 1;
      }
      if (const int err = write_all(STDOUT_FILENO, p->bytes.data(), p->bytes.size())) {
        complain("peek", std::string("stdout: ") + std::strerror(err));
        return 1;
      }
      if (p->offset > 0 && ::isatty(STDERR_FILENO) == 1)
        std::fprintf(stderr, "capturefs peek: (the first %llu bytes were consumed already)\n",
                     static_cast<unsigned long long>(p->offset));
      return 0;
    }
  } catch (const ClientError& e) {
    complain("peek", e.what());
    return 1;
  }
}

// ---------------------------------------------------------------- watch

int run_watch(const WatchArgs& in) {
  using server::json_path_fields;
  using server::json_string;
  std::string sock;
  std::vector<std::string> globs;
  if (!resolve_globs("watch", in.socket, in.globs, &sock, &globs)) return 2;
  try {
    ClientConnection c(sock);
    proto::Subscribe s;
    s.observe = true;  // watching consumes nothing (`capturefs take` does)
    s.patterns = globs;
    c.queue(s);
    std::unordered_map<std::uint64_t, std::string> paths;  // for "closed" lines
    for (;;) {
      auto f = c.next();
      if (!f) {
        complain("watch", sock + ": the daemon closed the connection");
        return 1;
      }
      std::string line;
      if (auto* e = std::get_if<proto::Error>(&*f)) {
        complain("watch", sock + ": " + server::describe(*e));
        return e->code == proto::ErrorCode::shutdown ? 0 : 1;
      } else if (auto* o = std::get_if<proto::Opened>(&*f)) {
        paths[o->id] = o->path;
        line = "{\"event\":\"opened\",\"id\":" + num(o->id) + "," + json_path_fields(o->path) +
               ",\"offset\":" + num(o->offset) + ",\"pid\":" + num(o->pid) + ",\"uid\":" + num(o->uid) +
               ",\"time\":\"" + server::iso_time(o->time_ns) + "\"}";
      } else if (auto* r = std::get_if<proto::Renamed>(&*f)) {
        if (auto it = paths.find(r->id); it != paths.end()) it->second = r->path;
        line = "{\"event\":\"renamed\",\"id\":" + num(r->id) + "," + json_path_fields(r->path) + "}";
      } else if (auto* cl = std::get_if<proto::Closed>(&*f)) {
        line = "{\"event\":\"closed\",\"id\":" + num(cl->id);
        if (auto it = paths.find(cl->id); it != paths.end()) {
          line += "," + json_path_fields(it->second);
          paths.erase(it);
        }
        line += ",\"total\":" + num(cl->total) + ",\"status\":\"" +
                (cl->status == proto::CloseStatus::complete ? "complete\"" : "aborted\",\"reason\":" + json_string(cl->reason)) +
                "}";
      } else {
        continue;  // SUBSCRIBED, STATUS
      }
      if (!print_line(std::move(line))) return 1;  // stdout closed: stop
    }
  } catch (const ClientError& e) {
    complain("watch", e.what());
    return 1;
  }
}

// ---------------------------------------------------------------- take

namespace {

// Where one stream taken goes: a file (DIR/PATH.part, renamed when
// complete) or a command's stdin.
struct Taken {
  std::string path;  // the stream's path (last known)
  std::string file;  // --to: the final file; its ".part" while written
  int fd = -1;
  pid_t pid = 0;     // --exec: the command
  std::uint64_t written = 0;
  bool failed = false;
  std::string why;
};

// A path in the mount as a relative path under --to: no "..", no empty
// components, no leading '/'.
std::string safe_rel(const std::string& p) {
  std::string out;
  std::size_t start = 0;
  while (start <= p.size()) {
    std::size_t slash = p.find('/', start);
    if (slash == std::string::npos) slash = p.size();
    std::string part = p.substr(start, slash - start);
    if (part == "..") part = "__";
    if (!part.empty() && part != ".") out += (out.empty() ? "" : "/") + part;
    start = slash + 1;
  }
  return out.empty() ? "_" : out;
}

bool make_parents(const std::string& file, std::string* why) {
  for (std::size_t at = file.find('/', 1); at != std::string::npos; at = file.find('/', at + 1)) {
    const std::string dir = file.substr(0, at);
    if (::mkdir(dir.c_str(), 0777) != 0 && errno != EEXIST) {
      *why = dir + ": " + std::strerror(errno);
      return false;
    }
  }
  return true;
}

bool start_taken(const TakeArgs& a, const std::string& path, Taken* t) {
  t->path = path;
  if (!a.to_dir.empty()) {
    t->file = a.to_dir + "/" + safe_rel(path);
    if (!make_parents(t->file, &t->why)) return false;
    const std::string part = t->file + ".part";
    t->fd = ::open(part.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (t->fd < 0) {
      t->why = part + ": " + std::strerror(errno);
      return false;
    }
    return true;
  }
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) {
    t->why = std::string("pipe: ") + std::strerror(errno);
    return false;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, p[0], STDIN_FILENO);
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e)
    if (std::strncmp(*e, "CAPTUREFS_PATH=", 15) != 0) env.emplace_back(*e);
  env.push_back("CAPTUREFS_PATH=" + path);
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string sh = "/bin/sh", dash_c = "-c", cmd = a.exec;
  char* argv[] = {sh.data(), dash_c.data(), cmd.data(), nullptr};
  const int rc = posix_spawn(&t->pid, "/bin/sh", &fa, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&fa);
  ::close(p[0]);
  if (rc != 0) {
    ::close(p[1]);
    t->why = std::string("cannot start the command: ") + std::strerror(rc);
    return false;
  }
  t->fd = p[1];
  return true;
}

/// Ends a taken stream: closes its file or pipe; "" if all went well, else why not.
std::string finish_taken(Taken& t, bool complete) {
  std::string why = t.why;
  if (t.fd >= 0 && ::close(t.fd) != 0 && why.empty()) why = std::strerror(errno);
  t.fd = -1;
  if (!t.file.empty()) {
    const std::string part = t.file + ".part";
    if (complete && why.empty()) {
      if (::rename(part.c_str(), t.file.c_str()) != 0) why = t.file + ": " + std::strerror(errno);
    } else {
      ::unlink(part.c_str());
    }
  }
  if (t.pid > 0) {
    int status = 0;
    while (::waitpid(t.pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (why.empty() && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
      why = WIFEXITED(status) ? "the command exited " + num(static_cast<unsigned>(WEXITSTATUS(status)))
                              : "the command was killed by signal " + num(static_cast<unsigned>(WTERMSIG(status)));
  }
  return why;
}

}  // namespace

int run_take(const TakeArgs& in) {
  std::string sock;
  std::vector<std::string> globs;
  if (!resolve_globs("take", in.socket, in.globs, &sock, &globs)) return 2;
  TakeArgs a = in;
  if (!a.to_dir.empty()) {
    struct stat st{};
    if (::stat(a.to_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      complain("take", "--to " + a.to_dir + ": " + (errno == 0 ? "not a directory" : std::strerror(errno)));
      return 2;
    }
  }
  std::signal(SIGPIPE, SIG_IGN);  // a command that stops reading is an EPIPE, not our death
  int failures = 0;
  try {
    ClientConnection c(sock);
    proto::Subscribe s;
    s.once = a.once;
    s.patterns = globs;
    c.queue(s);
    std::unordered_map<std::uint64_t, Taken> taken;
    for (;;) {
      auto f = c.next();
      if (!f) {
        complain("take", sock + ": the daemon closed the connection");
        return 1;
      }
      if (auto* e = std::get_if<proto::Error>(&*f)) {
        for (auto& [id, t] : taken) (void)finish_taken(t, false);
        if (e->code == proto::ErrorCode::shutdown) return failures == 0 ? 0 : 1;
        complain("take", sock + ": " + server::describe(*e));
        return 1;
      }
      if (auto* o = std::get_if<proto::Opened>(&*f)) {
        Taken t;
        if (!start_taken(a, o->path, &t)) t.failed = true;
        taken[o->id] = std::move(t);
        continue;
      }
      if (auto* r = std::get_if<proto::Renamed>(&*f)) {
        if (auto it = taken.find(r->id); it != taken.end()) it->second.path = r->path;
        continue;
      }
      if (auto* d = std::get_if<proto::Data>(&*f)) {
        auto it = taken.find(d->id);
        if (it == taken.end()) continue;
        Taken& t = it->second;
        if (!t.failed) {
          if (const int err = write_all(t.fd, d->bytes.data(), d->bytes.size())) {
            t.failed = true;
            t.why = (t.file.empty() ? std::string("the command's stdin") : t.file + ".part") + ": " +
                    std::strerror(err);
          } else {
            t.written += d->bytes.size();
          }
        }
        // Acknowledged also when it failed: the stream is ours, and its
        // end says what became of it.
        c.queue(proto::Ack{d->id, d->offset + d->bytes.size()});
        continue;
      }
      if (auto* cl = std::get_if<proto::Closed>(&*f)) {
        auto it = taken.find(cl->id);
        if (it == taken.end()) continue;
        const bool complete = cl->status == proto::CloseStatus::complete;
        if (complete) c.queue(proto::Ack{cl->id, cl->total});
        Taken t = std::move(it->second);
        taken.erase(it);
        const std::string why = finish_taken(t, complete);
        std::string line = "{\"event\":\"taken\",\"id\":" + num(cl->id) + "," + server::json_path_fields(t.path) +
                           ",\"total\":" + num(cl->total) + ",\"status\":\"";
        if (!complete) {
          line += "aborted\",\"reason\":" + server::json_string(cl->reason);
          ++failures;
        } else if (!why.empty()) {
          line += "failed\",\"reason\":" + server::json_string(server::printable(why));
          ++failures;
        } else {
          line += "complete\"";
        }
        if (!t.file.empty()) line += ",\"file\":" + server::json_string(server::printable(t.file));
        if (!print_line(line + "}")) return 1;
        if (a.once) {
          // The final ACK finishes the stream; the STATUS reply is the barrier (see cat).
          c.queue(proto::StatusRequest{});
          for (;;) {
            auto g = c.next();
            if (!g) break;
            if (auto* st = std::get_if<proto::StatusReply>(&*g); st && !st->more) break;
          }
          return failures == 0 ? 0 : 1;
        }
      }
    }
  } catch (const ClientError& e) {
    complain("take", e.what());
    return 1;
  }
}

// ---------------------------------------------------------------- status

}  // namespace capturefs::cli
