// `capturefs status` and what `capturefs umount` asks of a daemon at unmount.
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
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>

#include "cli/client_util.hpp"
#include "cli/locate.hpp"
#include "proto/codec.hpp"
#include "server/client.hpp"
#include "server/text.hpp"

namespace capturefs::cli {

using server::ClientConnection;
using server::ClientError;
using namespace util;

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
         ",\"delivered\":" + num(r.delivered) + ",\"spilled\":" + num(r.spilled) + ",\"rate\":" + num(r.rate) +
         ",\"state\":\"" + state_name(r.state) + "\",\"wait\":\"" + wait_name(r.wait) + "\"}";
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

DiscardWatch::DiscardWatch(const std::string& sock) {
  try {
    auto c = std::make_shared<ClientConnection>(sock);
    proto::Subscribe s;
    s.observe = true;
    s.patterns = {"*"};
    c->queue(s);
    c->flush();
    // The thread owns what it fills (state_), so that it never outlives it.
    thread_ = std::thread([st = state_, c] {
      std::unordered_map<std::uint64_t, std::string> paths;
      try {
        while (auto f = c->next()) {
          if (auto* o = std::get_if<proto::Opened>(&*f)) {
            paths[o->id] = o->path;
          } else if (auto* r = std::get_if<proto::Renamed>(&*f)) {
            paths[r->id] = r->path;
          } else if (auto* cl = std::get_if<proto::Closed>(&*f)) {
            if (cl->status == proto::CloseStatus::aborted && cl->reason.rfind("discarded at unmount", 0) == 0) {
              std::lock_guard lk(st->mu);
              st->discarded.push_back({paths[cl->id], cl->total});
            }
            paths.erase(cl->id);
          } else if (std::holds_alternative<proto::Error>(*f)) {
            break;  // the daemon stops
          }
        }
      } catch (const std::exception&) {
        // the daemon is gone: what was seen is all there is
      }
    });
  } catch (const std::exception&) {
    // no daemon to watch
  }
}

DiscardWatch::~DiscardWatch() {
  if (thread_.joinable()) thread_.detach();
}

std::vector<std::pair<std::string, std::uint64_t>> DiscardWatch::finish() {
  if (thread_.joinable()) thread_.join();
  std::lock_guard lk(state_->mu);
  return state_->discarded;
}

std::optional<Pending> pending_deliveries(const std::string& sock) {
  try {
    ClientConnection c(sock);
    c.queue(proto::StatusRequest{.commands = c.version() >= 2});
    Pending p;
    for (;;) {
      auto f = c.next();
      if (!f || std::holds_alternative<proto::Error>(*f)) return std::nullopt;
      if (auto* cmds = std::get_if<proto::CommandsReply>(&*f)) {
        for (const auto& cmd : cmds->commands)
          if (cmd.state == proto::CommandState::running) ++p.commands;
        continue;
      }
      auto* part = std::get_if<proto::StatusReply>(&*f);
      if (part == nullptr) continue;
      for (const auto& r : part->streams) {
        ++p.streams;
        p.bytes += r.written > r.delivered ? r.written - r.delivered : 0;
      }
      if (!part->more) return p;
    }
  } catch (const std::exception&) {
    return std::nullopt;  // gone, or going
  }
}

namespace {

/// One status listing of the daemon at `sock`, as lines; false (with a
/// message printed) if it could not be had.
bool status_lines(const std::string& sock, bool json, std::vector<std::string>* out) {
  ClientConnection c(sock);
  // The commands (--exec) are a version 2 feature: ask only a daemon that
  // speaks it (an older one would refuse the request).
  const bool ask_commands = c.version() >= 2;
  const bool has_waits = c.version() >= 3;
  c.queue(proto::StatusRequest{.commands = ask_commands});
  std::vector<proto::StreamStatus> all;
  std::vector<proto::CommandStatus> commands;
  bool runs_commands = false;  // a COMMANDS frame came: the daemon runs --exec
  for (;;) {
    auto f = c.next();
    if (!f) {
      complain("status", sock + ": the daemon closed the connection before answering");
      return false;
    }
    if (auto* e = std::get_if<proto::Error>(&*f)) {
      complain("status", sock + ": " + server::describe(*e));
      return false;
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
  if (json) {
    for (const auto& r : all) out->push_back(stream_json(r));
    for (const auto& cmd : commands) out->push_back(command_json(cmd));
    return true;
  }
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-8s %10s %10s %10s %10s  %-9s  %-11s  %s", "PID", "WRITTEN", "DELIVERED",
                "SPILLED", "RATE", "STATE", "WAIT", "PATH");
  out->push_back(buf);
  for (const auto& r : all) {
    std::string wait = has_waits ? wait_name(r.wait) : "?";
    if (wait == "none") wait = "-";
    std::replace(wait.begin(), wait.end(), '_', '-');
    std::snprintf(buf, sizeof buf, "%-8u %10s %10s %10s %10s  %-9s  %-11s  ", r.pid, server::human_bytes(r.written).c_str(),
                  server::human_bytes(r.delivered).c_str(), has_waits ? server::human_bytes(r.spilled).c_str() : "?",
                  (server::human_bytes(r.rate) + "/s").c_str(), state_name(r.state), wait.c_str());
    out->push_back(buf + server::printable(r.path));
  }
  if (!runs_commands) return true;
  // The commands of --exec: those that ended (oldest first), then those running.
  out->push_back("");
  std::snprintf(buf, sizeof buf, "%-8s %10s  %-10s  %-24s  %s", "CMD PID", "STDIN", "INPUT", "STATE", "PATH");
  out->push_back(buf);
  for (const auto& cmd : commands) {
    std::string input = input_name(cmd.input);
    std::replace(input.begin(), input.end(), '_', ' ');
    std::snprintf(buf, sizeof buf, "%-8s %10s  %-10s  %-24s  ", cmd.pid != 0 ? num(cmd.pid).c_str() : "-",
                  server::human_bytes(cmd.bytes).c_str(), input.c_str(), command_state_text(cmd).c_str());
    out->push_back(buf + server::printable(cmd.path));
    // Why, when it is not plain from the columns.
    const bool explain = cmd.input == proto::CommandInput::incomplete ||
                         cmd.state == proto::CommandState::not_started || cmd.state == proto::CommandState::unknown;
    if (explain && !cmd.note.empty()) out->push_back("         note: " + server::printable(cmd.note));
  }
  return true;
}

}  // namespace

int run_status(const StatusArgs& a) {
  std::string sock = a.socket;
  if (!a.mount.empty()) {
    auto at = locate(a.mount);
    if (!at) {
      complain("status", a.mount + " is not a capturefs mount that serves a socket");
      return 2;
    }
    if (sock.empty()) sock = at->socket;
  } else if (sock.empty()) {
    if (auto here = locate(".")) {
      sock = here->socket;
    } else {
      complain("status", "which daemon? name its mountpoint (capturefs status MOUNT) or give --socket PATH");
      return 2;
    }
  }
  double every = 0;
  if (a.watching) {
    every = 2;
    if (!a.watch.empty()) {
      char* end = nullptr;
      every = std::strtod(a.watch.c_str(), &end);
      if (end == a.watch.c_str() || *end != '\0' || !(every >= 0.1 && every <= 86400)) {
        complain("status", "--watch: '" + a.watch + "' is not a number of seconds from 0.1 to 86400");
        return 2;
      }
    }
  }
  const bool tty = ::isatty(STDOUT_FILENO) == 1;
  for (;;) {
    std::vector<std::string> lines;
    try {
      if (!status_lines(sock, a.json, &lines)) return 1;
    } catch (const ClientError& e) {
      complain("status", e.what());
      return 1;
    }
    std::string text;
    if (every > 0 && tty) {
      // Redraw in place: home, clear, a heading with the time.
      const std::time_t t = std::time(nullptr);
      char when[64];
      std::strftime(when, sizeof when, "%H:%M:%S", std::localtime(&t));
      text = "\033[H\033[2J" + std::string("capturefs status ") + sock + "  (every " + a.watch +
             (a.watch.empty() ? "2" : "") + " s, " + when + ")\n\n";
    }
    for (const auto& l : lines) text += l + "\n";
    if (write_all(STDOUT_FILENO, text.data(), text.size()) != 0) return 1;
    if (every <= 0) return 0;
    if (!tty && !print_line("")) return 1;  // a blank line between listings in a pipe
    std::this_thread::sleep_for(std::chrono::duration<double>(every));
  }
}

}  // namespace capturefs::cli
