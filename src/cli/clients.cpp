#include "cli/clients.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <unordered_map>

#include "proto/codec.hpp"
#include "server/client.hpp"
#include "server/text.hpp"

namespace capturefs::cli {

namespace {

using server::ClientConnection;
using server::ClientError;

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

}  // namespace

// ---------------------------------------------------------------- cat

int run_cat(const CatArgs& a) {
  const std::string name = "'" + server::printable(a.name) + "'";
  if (a.name.empty()) {
    complain("cat", "NAME is empty");
    return 2;
  }
  try {
    ClientConnection c(a.socket);
    proto::Subscribe s;
    s.literal = true;
    s.once = true;
    s.nowait = !a.wait;
    s.patterns = {a.name};
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
        continue;
      }
      if (auto* cl = std::get_if<proto::Closed>(&*f)) {
        if (!opened || cl->id != id) continue;
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

// ---------------------------------------------------------------- watch

int run_watch(const WatchArgs& a) {
  using server::json_path_fields;
  using server::json_string;
  try {
    ClientConnection c(a.socket);
    proto::Subscribe s;
    s.observe = a.observe;
    s.patterns = a.globs.empty() ? std::vector<std::string>{"*"} : a.globs;
    c.queue(s);
    std::unordered_map<std::uint64_t, std::string> paths;  // for "closed" lines
    for (;;) {
      auto f = c.next();
      if (!f) {
        complain("watch", a.socket + ": the daemon closed the connection");
        return 1;
      }
      std::string line;
      if (auto* e = std::get_if<proto::Error>(&*f)) {
        complain("watch", a.socket + ": " + server::describe(*e));
        return e->code == proto::ErrorCode::shutdown ? 0 : 1;
      } else if (auto* o = std::get_if<proto::Opened>(&*f)) {
        paths[o->id] = o->path;
        line = "{\"event\":\"opened\",\"id\":" + num(o->id) + "," + json_path_fields(o->path) +
               ",\"offset\":" + num(o->offset) + ",\"pid\":" + num(o->pid) + ",\"uid\":" + num(o->uid) +
               ",\"time\":\"" + server::iso_time(o->time_ns) + "\"}";
      } else if (auto* d = std::get_if<proto::Data>(&*f)) {
        line = "{\"event\":\"data\",\"id\":" + num(d->id) + ",\"offset\":" + num(d->offset) +
               ",\"length\":" + num(d->bytes.size()) + "}";
        c.queue(proto::Ack{d->id, d->offset + d->bytes.size()});
      } else if (auto* r = std::get_if<proto::Renamed>(&*f)) {
        // (After "closed" too: the creator renamed a delivered file.)
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
        if (!a.observe) c.queue(proto::Ack{cl->id, cl->total});
      } else {
        continue;  // SUBSCRIBED, STATUS
      }
      if (!print_line(std::move(line))) return 1;  // stdout closed: stop (unacknowledged bytes go on)
    }
  } catch (const ClientError& e) {
    complain("watch", e.what());
    return 1;
  }
}

// ---------------------------------------------------------------- status

namespace {

const char* input_name(proto::CommandInput i) {
  switch (i) {
    case proto::CommandInput::feeding: return "feeding";
    case proto::CommandInput::complete: return "complete";
    case proto::CommandInput::cut_short: return "cut_short";
    case proto::CommandInput::incomplete: return "incomplete";
  }
  return "?";
}

const char* command_state_name(proto::CommandState s) {
  switch (s) {
    case proto::CommandState::running: return "running";
    case proto::CommandState::exited: return "exited";
    case proto::CommandState::killed: return "killed";
    case proto::CommandState::not_started: return "not_started";
    case proto::CommandState::unknown: return "unknown";
  }
  return "?";
}

/// "SIGKILL", or "" for a number this system has no name for.
std::string signal_name(unsigned sig) {
  const char* abbrev = sig < 256 ? sigabbrev_np(static_cast<int>(sig)) : nullptr;
  return abbrev ? std::string("SIG") + abbrev : std::string();
}

/// "running", "exited 3", "killed by signal SIGKILL", "not started", "unknown".
std::string command_state_text(const proto::CommandStatus& c) {
  switch (c.state) {
    case proto::CommandState::running: return "running";
    case proto::CommandState::exited: return "exited " + num(c.code);
    case proto::CommandState::killed: {
      const std::string name = signal_name(c.code);
      return "killed by signal " + (name.empty() ? num(c.code) : name);
    }
    case proto::CommandState::not_started: return "not started";
    case proto::CommandState::unknown: return "unknown";
  }
  return "?";
}

std::string stream_json(const proto::StreamStatus& r) {
  return "{\"kind\":\"stream\",\"id\":" + num(r.id) + "," + server::json_path_fields(r.path) + ",\"pid\":" + num(r.pid) +
         ",\"uid\":" + num(r.uid) + ",\"time\":\"" + server::iso_time(r.time_ns) + "\",\"written\":" + num(r.written) +
         ",\"delivered\":" + num(r.delivered) + ",\"rate\":" + num(r.rate) + ",\"state\":\"" + state_name(r.state) +
         "\"}";
}

std::string command_json(const proto::CommandStatus& c) {
  std::string line = "{\"kind\":\"command\",\"id\":" + num(c.id) + "," + server::json_path_fields(c.path) +
                     ",\"pid\":" + num(c.pid) + ",\"state\":\"" + command_state_name(c.state) + "\"";
  if (c.state == proto::CommandState::exited) line += ",\"exit_code\":" + num(c.code);
  if (c.state == proto::CommandState::killed) {
    line += ",\"signal\":" + num(c.code);
    if (const std::string name = signal_name(c.code); !name.empty()) line += ",\"signal_name\":\"" + name + "\"";
  }
  line += ",\"input\":\"" + std::string(input_name(c.input)) + "\",\"bytes\":" + num(c.bytes) + ",\"started\":\"" +
          server::iso_time(c.started_ns) + "\"";
  if (c.state != proto::CommandState::running) line += ",\"ended\":\"" + server::iso_time(c.ended_ns) + "\"";
  if (!c.note.empty()) line += ",\"note\":" + server::json_string(c.note);
  return line + "}";
}

}  // namespace

int run_status(const StatusArgs& a) {
  try {
    ClientConnection c(a.socket);
    // The commands (--exec) are a version 2 feature: ask only a daemon that
    // speaks it (an older one would refuse the request).
    const bool ask_commands = c.version() >= 2;
    c.queue(proto::StatusRequest{.commands = ask_commands});
    std::vector<proto::StreamStatus> all;
    std::vector<proto::CommandStatus> commands;
    bool runs_commands = false;  // a COMMANDS frame came: the daemon runs --exec
    for (;;) {
      auto f = c.next();
      if (!f) {
        complain("status", a.socket + ": the daemon closed the connection before answering");
        return 1;
      }
      if (auto* e = std::get_if<proto::Error>(&*f)) {
        complain("status", a.socket + ": " + server::describe(*e));
        return 1;
      }
      if (auto* cmds = std::get_if<proto::CommandsReply>(&*f)) {
        runs_commands = true;
        commands.insert(commands.end(), cmds->commands.begin(), cmds->commands.end());
        continue;
      }
      auto* part = std::get_if<proto::StatusReply>(&*f);
      if (part == nullptr) continue;
      all.insert(all.end(), part->streams.begin(), part->streams.end());
      if (!part->more) break;
    }
    if (a.json) {
      for (const auto& r : all)
        if (!print_line(stream_json(r))) return 1;
      for (const auto& cmd : commands)
        if (!print_line(command_json(cmd))) return 1;
      return 0;
    }
    char buf[256];
    std::snprintf(buf, sizeof buf, "%-8s %10s %10s %10s  %-9s  %s", "PID", "WRITTEN", "DELIVERED", "RATE", "STATE",
                  "PATH");
    if (!print_line(buf)) return 1;
    for (const auto& r : all) {
      std::snprintf(buf, sizeof buf, "%-8u %10s %10s %10s  %-9s  ", r.pid, server::human_bytes(r.written).c_str(),
                    server::human_bytes(r.delivered).c_str(), (server::human_bytes(r.rate) + "/s").c_str(),
                    state_name(r.state));
      if (!print_line(buf + server::printable(r.path))) return 1;
    }
    if (!runs_commands) return 0;
    // The commands of --exec: those that ended (oldest first), then those running.
    std::snprintf(buf, sizeof buf, "\n%-8s %10s  %-10s  %-24s  %s", "CMD PID", "STDIN", "INPUT", "STATE", "PATH");
    if (!print_line(buf)) return 1;
    for (const auto& cmd : commands) {
      std::string input = input_name(cmd.input);
      std::replace(input.begin(), input.end(), '_', ' ');
      std::snprintf(buf, sizeof buf, "%-8s %10s  %-10s  %-24s  ", cmd.pid != 0 ? num(cmd.pid).c_str() : "-",
                    server::human_bytes(cmd.bytes).c_str(), input.c_str(), command_state_text(cmd).c_str());
      if (!print_line(buf + server::printable(cmd.path))) return 1;
      // Why, when it is not plain from the columns.
      const bool explain = cmd.input == proto::CommandInput::incomplete ||
                           cmd.state == proto::CommandState::not_started || cmd.state == proto::CommandState::unknown;
      if (explain && !cmd.note.empty() && !print_line("         note: " + server::printable(cmd.note))) return 1;
    }
    return 0;
  } catch (const ClientError& e) {
    complain("status", e.what());
    return 1;
  }
}

}  // namespace capturefs::cli
