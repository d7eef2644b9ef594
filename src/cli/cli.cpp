#include "cli/cli.hpp"

#include <poll.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "capturefs/capturefs.hpp"
#include "cli/clients.hpp"
#include "cli/exec.hpp"
#include "cli/locate.hpp"
#include "cli/mount_opts.hpp"
#include "cli/umount.hpp"
#include "core/log.hpp"
#include "core/size.hpp"
#include "lib/preflight.hpp"

extern char** environ;

namespace capturefs::cli {

namespace {

constexpr const char* kAbout = R"(capturefs - a capture directory: every file created in it is a stream.

Tools that can only write their results to a file path write into the mount;
the bytes are delivered, in order, to a reader that opens the same path.
No FIFO is created, nothing named is written to disk, and memory is bounded
(what does not fit and has no reader yet spills to an unnamed temp file).

  capturefs mount /tmp/cap                # returns once the mount is live
  some-tool --output /tmp/cap/result.txt  # the tool writes a "regular file"
  capturefs peek /tmp/cap/result.txt      # look at its first bytes (consumes nothing)
  cat /tmp/cap/result.txt                 # read it: READING CONSUMES the stream
  capturefs umount /tmp/cap               # or: fusermount3 -u /tmp/cap

Also a mount helper: `mount -t fuse.capturefs none /tmp/cap -o max_memory=64M`
and fstab lines of type fuse.capturefs run `capturefs none /tmp/cap -o ...`.
See capturefs(1).
)";

constexpr const char* kMountFooter = R"footer(
Every file created in the mount is a stream: a reader that opens the same
path gets its bytes in order, while or after they are written (--exec,
--socket and the library are the other consumers). What each operation does,
when bytes spill, what each fault does, and the known limits are in
docs/semantics.md, installed as )footer" CAPTUREFS_DOCDIR R"footer(/semantics.md
(--exec: exec.md, the socket: socket.md, every option: cli.md, there too).
)footer";

struct MountArgs {
  std::string mountpoint;
  bool foreground = false;
  bool debug = false;
  bool verbose = false;
  std::vector<std::string> options;
  std::string max_memory = "1G";
  std::string max_stream = "256M";
  std::string spill_dir;  // "": $TMPDIR or /tmp
  std::string spill_limit = "8G";
  bool no_spill = false;
  double stall_time = 2.0;  // seconds; 0: writes wait as long as it takes
  int ready_fd = -1;
  unsigned threads = 16;
  std::string exec;
  std::vector<std::string> exec_globs;
  std::vector<std::string> hold;  // --hold GLOB
  std::string socket;  // --socket PATH: serve docs/protocol.md there ("": the default one)
  bool no_socket = false;
  std::string log_file;
  unsigned exec_jobs = 0;  // 0: the number of CPUs
  bool exec_given = false;
};

// ---- `capturefs status` shows the commands (docs/protocol.md, COMMANDS)

CommandStatus::Input input_of(ExecInput i) {
  switch (i) {
    case ExecInput::feeding: return CommandStatus::Input::feeding;
    case ExecInput::complete: return CommandStatus::Input::complete;
    case ExecInput::cut_short: return CommandStatus::Input::cut_short;
    case ExecInput::incomplete: break;
  }
  return CommandStatus::Input::incomplete;
}

CommandStatus record_of(const ExecExit& x) {
  CommandStatus c;
  c.stream_id = x.stream_id;
  c.pid = x.pid > 0 ? x.pid : 0;
  c.input = input_of(x.input);
  c.bytes = x.bytes;
  c.started = x.started;
  c.ended = x.ended;
  c.path = x.path;
  c.note = x.note;
  if (x.pid <= 0) {
    c.state = CommandStatus::State::not_started;
  } else if (x.status != -1 && WIFEXITED(x.status)) {
    c.state = CommandStatus::State::exited;
    c.code = WEXITSTATUS(x.status);
  } else if (x.status != -1 && WIFSIGNALED(x.status)) {
    c.state = CommandStatus::State::killed;
    c.code = WTERMSIG(x.status);
  } else {
    c.state = CommandStatus::State::unknown;
    if (c.note.empty()) c.note = x.status == -1 ? "not waited for" : describe_wait_status(x.status);
  }
  return c;
}

CommandStatus record_of(const ExecRunning& r) {
  CommandStatus c;
  c.stream_id = r.stream_id;
  c.pid = r.pid;
  c.state = CommandStatus::State::running;
  c.input = input_of(r.input);
  c.bytes = r.bytes;
  c.started = r.started;
  c.path = r.path;
  c.note = r.note;
  return c;
}

/// Those that ended (oldest first), then those running.
std::vector<CommandStatus> command_records(const ExecRunner& runner) {
  const ExecSnapshot snap = runner.snapshot();
  std::vector<CommandStatus> out;
  out.reserve(snap.recent.size() + snap.running.size());
  for (const auto& x : snap.recent) out.push_back(record_of(x));
  for (const auto& r : snap.running) out.push_back(record_of(r));
  return out;
}

// A size option, checked at parse time so the message names the option.
std::uint64_t size_or_throw(const std::string& name, const std::string& v) {
  auto n = core::parse_size(v);
  if (!n) throw CLI::ValidationError(name, "'" + v + "' is not a size (examples: 4096, 64K, 64M, 1G)");
  return *n;
}

int run_mount(const MountArgs& a) {
  if (a.debug) log::set_level(log::Level::Debug);
  else if (a.verbose) log::set_level(log::Level::Info);
  else log::set_level(log::Level::Warn);

  Options opt;
  opt.mountpoint = a.mountpoint;
  opt.max_memory = size_or_throw("--max-memory", a.max_memory);
  opt.max_stream = size_or_throw("--max-stream", a.max_stream);
  opt.spill = !a.no_spill;
  opt.spill_dir = a.spill_dir;
  opt.spill_limit = size_or_throw("--spill-limit", a.spill_limit);
  opt.stall_time = std::chrono::milliseconds(static_cast<std::int64_t>(a.stall_time * 1000.0 + 0.5));
  opt.debug = a.debug;
  opt.fuse_threads = a.threads;
  opt.hold = a.hold;
  for (const auto& o : a.options) {
    std::size_t start = 0;
    for (;;) {
      const std::size_t comma = o.find(',', start);
      std::string one = o.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      if (!one.empty()) opt.fuse_options.push_back(one);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  if (opt.max_memory < (2ULL << 20) || opt.max_stream < (2ULL << 20)) {
    log::error("--max-memory and --max-stream must be at least 2M");
    return 2;
  }
  if (opt.spill && opt.spill_limit < (2ULL << 20)) {
    log::error("--spill-limit must be at least 2M (--no-spill turns spilling off)");
    return 2;
  }
  // The log file before the fork (a relative path means the caller's
  // directory; the daemon changes to /).
  if (!a.log_file.empty()) {
    std::string error;
    if (!log::to_file(a.log_file, &error)) {
      log::error("cannot mount {}: --log-file: {}", a.mountpoint, error);
      return 1;
    }
  }
  // The socket: --socket PATH, else a default one for `capturefs status
  // DIR` and friends (found through the mount root's xattr).
  if (!a.socket.empty()) {
    opt.socket = a.socket;
  } else if (!a.no_socket) {
    char real[PATH_MAX];
    if (realpath(a.mountpoint.c_str(), real) != nullptr) {
      std::string error;
      opt.socket = default_socket(real, &error);
      if (opt.socket.empty())
        log::warn("no socket for {} ({}): `capturefs status/cat/watch/peek` will not find it; "
                  "give --socket PATH",
                  a.mountpoint, error);
    }
  }
  std::unique_ptr<Mount> m;
  try {
    m = std::make_unique<Mount>(opt, /*serve_now=*/false);
  } catch (const std::system_error& e) {
    log::error("cannot mount {}: {}", a.mountpoint, e.what());
    return 1;
  }
  const bool background = !a.foreground && !a.debug;
  if (background) {
    m->daemonize();
    // stdout and stderr are /dev/null from here: without a log file, the
    // log goes to syslog (journald).
    if (a.log_file.empty()) log::to_syslog();
  }
  log::info("mounted {} (max-memory {}, max-stream {}, {}{})", m->mountpoint(),
            core::format_size(opt.max_memory), core::format_size(std::min(opt.max_stream, opt.max_memory)),
            m->spill_dir().empty() ? std::string("no spilling")
                                   : "spilling up to " + core::format_size(opt.spill_limit) + " to " +
                                         m->spill_dir(),
            m->socket().empty() ? std::string() : ", socket " + m->socket());
  // After daemonize(): the runner starts threads, which a fork would lose.
  std::unique_ptr<ExecRunner> runner;
  if (a.exec_given) {
    ExecOptions eo;
    eo.command = a.exec;
    eo.globs = a.exec_globs;
    eo.jobs = a.exec_jobs;
    try {
      runner = std::make_unique<ExecRunner>(*m, eo);
    } catch (const std::system_error& e) {
      log::error("--exec: {}", e.what());
      return 1;
    }
    std::string which = "every file";
    if (!eo.globs.empty()) {
      which = "files matching";
      for (const auto& g : eo.globs) which += " '" + log_quote(g) + "'";
    }
    log::info("exec: running '{}' for {}, at most {} at once", log_quote(eo.command), which, runner->jobs());
    // `capturefs status` lists the commands too. The runner outlives the
    // socket server (it is stopped after the unmount, below).
    m->set_status_commands([r = runner.get()] { return command_records(*r); });
  }
  if (a.ready_fd >= 0) {
    static constexpr char kReady[] = "ready\n";
    (void)!::write(a.ready_fd, kReady, sizeof kReady - 1);
    ::close(a.ready_fd);
  }
  const int rc = m->serve();  // also serves the socket
  const std::string mp = m->mountpoint();
  // Unmounted (fusermount3 -u, capturefs umount, or a signal): nothing new
  // can be opened. What a push consumer has or will take is delivered to
  // the end first; what nobody will read is discarded and named. A second
  // SIGINT, SIGTERM or SIGHUP cuts the rest. The signals are blocked here
  // (the other threads have them blocked already) and taken with
  // sigtimedwait, so no handler runs while the volume is being finished.
  sigset_t stop_set;
  sigemptyset(&stop_set);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&stop_set, sig);
  pthread_sigmask(SIG_BLOCK, &stop_set, nullptr);
  auto second_signal = [&stop_set](int wait_ms) {
    timespec t{wait_ms / 1000, static_cast<long>(wait_ms % 1000) * 1000000L};
    const int sig = sigtimedwait(&stop_set, nullptr, &t);
    return sig > 0 ? sig : 0;
  };
  int cut_by = 0;
  auto last_note = std::chrono::steady_clock::now() - std::chrono::seconds(10);
  bool announced = false;
  const FinishReport report = m->finish([&](std::size_t streams, std::uint64_t bytes) {
    if (const int sig = second_signal(0); sig != 0) {
      cut_by = sig;
      return false;
    }
    const auto t = std::chrono::steady_clock::now();
    if (!announced) {
      log::warn("unmounted {}: delivering {} stream{} ({}) before exiting; SIGTERM again cuts them",
                mp, streams, streams == 1 ? "" : "s", core::format_size(bytes));
      announced = true;
      last_note = t;
    } else if (t - last_note >= std::chrono::seconds(5)) {
      log::info("unmount: {} stream{} ({}) left to deliver", streams, streams == 1 ? "" : "s",
                core::format_size(bytes));
      last_note = t;
    }
    return true;
  });
  auto list = [](const std::vector<Leftover>& v) {
    std::uint64_t total = 0;
    std::string names;
    for (std::size_t i = 0; i < v.size(); ++i) {
      total += v[i].bytes;
      if (i < 20) names += (i == 0 ? "" : ", ") + log_quote(v[i].path);
    }
    if (v.size() > 20) names += fmt::format(" and {} more", v.size() - 20);
    return std::make_pair(core::format_size(total), names);
  };
  if (!report.discarded.empty()) {
    const auto [size, names] = list(report.discarded);
    log::warn("{} unread stream{} ({}) discarded at unmount: {}", report.discarded.size(),
              report.discarded.size() == 1 ? "" : "s", size, names);
  }
  if (!report.cut.empty()) {
    const auto [size, names] = list(report.cut);
    const char* sig = sigabbrev_np(cut_by);
    log::error("{} stream{} ({} not delivered) cut by a second SIG{}: {}", report.cut.size(),
               report.cut.size() == 1 ? "" : "s", size, sig != nullptr ? sig : "NAL", names);
  }
  if (runner) {
    // Every stream was fed (or cut); the commands finish their work. A
    // second signal stops waiting for them.
    bool noted = false;
    while (cut_by == 0 && !runner->running().empty()) {
      if (!noted) {
        log::info("unmount: waiting for {} command(s) to finish", runner->running().size());
        noted = true;
      }
      cut_by = second_signal(100);
    }
    runner->stop();
    runner.reset();
  }
  m.reset();
  log::info("unmounted {}", mp);
  return rc == 0 ? 0 : 1;
}

}  // namespace

int tool_main(int argc, char** argv) {
  CLI::App app{kAbout, "capturefs"};
  app.set_version_flag("-V,--version", std::string("capturefs ") + CAPTUREFS_VERSION);
  app.require_subcommand(1);

  MountArgs m;
  auto* mount = app.add_subcommand("mount", "Mount a capture directory on MOUNTPOINT");
  mount->add_option("MOUNTPOINT", m.mountpoint, "An existing, empty directory")->required();
  mount->add_flag("-f,--foreground", m.foreground, "Stay in the foreground (default: return once mounted and run in the background)");
  mount->add_flag("-d,--debug", m.debug, "Log every FUSE request (implies -f)");
  mount->add_flag("-v,--verbose", m.verbose, "Log mounts, unmounts and other events");
  mount->add_option("-o", m.options,
                    "Mount options, comma-separated, repeatable: FUSE ones (allow_other, fsname=NAME, ...) "
                    "and every long option below as name=value, dashes as underscores "
                    "(max_memory=64M, no_spill, hold=*.zip, socket=PATH, log_file=PATH)")
      ->type_name("OPT[,OPT...]");
  mount->add_option("--max-memory", m.max_memory, "Cap on bytes buffered in all streams together (K/M/G suffixes)")
      ->capture_default_str()->type_name("SIZE");
  mount->add_option("--max-stream", m.max_stream, "Cap on bytes buffered in one stream (K/M/G suffixes)")
      ->capture_default_str()->type_name("SIZE");
  auto* spill_dir = mount->add_option(
      "--spill-dir", m.spill_dir,
      "Where the bytes of streams nobody reads yet go once --max-memory or --max-stream is full, "
      "instead of making their writers wait: one unnamed temporary file per stream "
      "(O_TMPFILE, mode 0600), so nothing named is ever created there and the space comes back "
      "as the bytes are read, and when the daemon ends, even by SIGKILL. A stream keeps appending "
      "there, reader or not, until its reader has caught up. Default: $TMPDIR, else /tmp (on tmpfs "
      "that is RAM and swap). Its file system must support O_TMPFILE (ext4, xfs, btrfs, tmpfs): "
      "mounting fails if it does not (for the default directory: a warning, and no spilling)")
                        ->type_name("DIR");
  auto* spill_limit = mount->add_option(
      "--spill-limit", m.spill_limit,
      "Cap on spilled bytes, all streams together (K/M/G suffixes; at least 2M). When it is "
      "reached too (or the disk is full), a write waits at most --stall-time for a reader to make "
      "room, then fails with ENOSPC")
                          ->capture_default_str()->type_name("SIZE");
  mount->add_option("--stall-time", m.stall_time,
                    "Seconds a write may wait for its consumer to make room (0.1 steps; 0: no limit). "
                    "After it the stream spills as if it had no consumer, which reads the spilled bytes "
                    "later, in order; if the spill tier cannot take them (--spill-limit reached, disk "
                    "full) the write fails with ENOSPC and the stream is aborted, logged with its path. "
                    "A waiting write holds its file's inode lock in the kernel: rm, mv and chmod of that "
                    "file by any process wait with it")
      ->capture_default_str()
      ->type_name("SECONDS")
      ->check(CLI::Range(0.0, 3600.0));
  mount->add_flag("--no-spill", m.no_spill,
                  "Never spill: once the memory caps are reached, writers wait until a reader drains, "
                  "however long (a tool whose output nobody reads before it exits then never finishes, "
                  "and rm, mv and chmod of a file whose writer waits wait with it, uninterruptibly)")
      ->excludes(spill_dir)
      ->excludes(spill_limit);
  mount->add_option("--ready-fd", m.ready_fd, "Write \"ready\\n\" to this file descriptor once the mount is live, then close it")
      ->type_name("FD");
  mount->add_option("--threads", m.threads, "Maximum FUSE worker threads")->capture_default_str()
      ->check(CLI::Range(1U, 256U));
  auto* exec = mount->add_option("--exec", m.exec,
                                 "Run /bin/sh -c CMD for every new file, with the file's bytes on its stdin "
                                 "(environment: CAPTUREFS_PATH, CAPTUREFS_MOUNT, CAPTUREFS_WRITER_PID)")
                    ->type_name("CMD");
  mount->add_option("--exec-glob", m.exec_globs,
                    "Only files whose path in the mount matches GLOB (fnmatch, '*' matches '/'); repeatable")
      ->type_name("GLOB")
      ->needs(exec);
  mount->add_option("--exec-jobs", m.exec_jobs, "At most N commands at once (default: the number of CPUs)")
      ->type_name("N")
      ->check(CLI::Range(1U, 4096U))
      ->needs(exec);
  mount->add_option("--hold", m.hold,
                    "Hold files whose path matches GLOB while they are written: random writes, "
                    "read-back and truncate work, and the file is delivered whole when its last "
                    "writer closes it (mp4, zip, wav; counts against --max-memory, then spills); repeatable")
      ->type_name("GLOB");
  auto* socket_opt = mount->add_option(
      "--socket", m.socket,
      "Serve socket delivery (docs/protocol.md) on a Unix socket at PATH (mode 0600) for "
      "`capturefs cat/watch/take/status/peek` and the Python client. Default: a socket in "
      "$XDG_RUNTIME_DIR/capturefs/ (root: /run/capturefs/), found by the clients from the mountpoint")
                        ->type_name("PATH");
  mount->add_flag("--no-socket", m.no_socket, "Serve no socket at all")->excludes(socket_opt);
  mount->add_option("--log-file", m.log_file,
                    "Append the daemon's log to FILE (default: stderr in the foreground, syslog/journald "
                    "in the background)")
      ->type_name("FILE");
  mount->footer(kMountFooter);

  std::string umount_point;
  bool lazy = false;
  bool no_wait = false;
  auto* umount = app.add_subcommand("umount", "Unmount a capture directory (same as fusermount3 -u)");
  umount->alias("unmount");
  umount->add_option("MOUNTPOINT", umount_point, "The mounted directory")->required();
  umount->add_flag("-z,--lazy", lazy, "Detach now even if files are still open");
  umount->add_flag("--no-wait", no_wait,
                   "Return once unmounted, without waiting for the daemon to deliver what its "
                   "consumers (--exec, socket, callbacks) hold");
  umount->footer("\nOnce unmounted, nothing new can be opened. The daemon then delivers to the end\n"
                 "every stream a push consumer (--exec, socket subscriber, callback) has or will take,\n"
                 "commands waiting their turn included, and discards the streams nobody will read,\n"
                 "naming them in its log; umount waits for it unless --no-wait. A second SIGTERM to\n"
                 "the daemon cuts the deliveries left, and its log names them.\n"
                 "A mount whose daemon has died (transport endpoint is not connected) is always\n"
                 "detached, even with files still open on it (they can only fail).");

  // Socket clients: the daemon is found from a path in its mount, or --socket.
  auto add_socket_option = [](CLI::App& sub, std::string& target) {
    sub.add_option("-s,--socket", target,
                   "The daemon's socket (default: $CAPTUREFS_SOCKET, else found from the mount path given)")
        ->envname("CAPTUREFS_SOCKET")->type_name("PATH");
  };
  CatArgs cat_args;
  auto* cat = app.add_subcommand("cat", "Write one stream's bytes to stdout, taking (consuming) it");
  add_socket_option(*cat, cat_args.socket);
  cat->add_flag("-w,--wait", cat_args.wait, "Wait for NAME to appear (default: fail at once if it does not exist)");
  cat->add_flag("-p,--progress", cat_args.progress, "Show bytes and rate on stderr (when it is a terminal)");
  cat->add_option("NAME", cat_args.name, "MOUNT/PATH, or with --socket the stream's path relative to the mount root")
      ->required();
  cat->footer("\nExits 0 once the stream is complete; 1 (with a message) if it was aborted, does not exist,\n"
              "or another consumer has it. The bytes are acknowledged as they are written to stdout;\n"
              "if cat dies, the rest goes to the next consumer. To look without consuming: capturefs peek.");

  PeekArgs peek_args;
  auto* peek = app.add_subcommand("peek", "Show the first bytes of a stream without consuming them");
  add_socket_option(*peek, peek_args.socket);
  peek->add_option("NAME", peek_args.name, "MOUNT/PATH, or with --socket the stream's path relative to the mount root")
      ->required();
  peek->add_option("-n,--bytes", peek_args.bytes, "How many bytes (at most 65536)")
      ->capture_default_str()->check(CLI::Range(1U, 65536U));
  peek->footer("\nThe bytes shown are the first ones not yet consumed; nothing is taken from the stream\n"
               "(reading the file through the mount, by contrast, consumes it).");

  WatchArgs watch_args;
  auto* watch = app.add_subcommand("watch", "Print one JSON line per stream event; consumes nothing");
  add_socket_option(*watch, watch_args.socket);
  watch->add_flag("--observe", watch_args.observe, "(the default; kept for compatibility)")->group("");
  watch->add_option("ARGS", watch_args.globs, "[MOUNT] [GLOB...]: paths to watch (fnmatch, '*' matches '/'); default: *");
  watch->footer("\nLines: {\"event\":\"opened\",\"id\":1,\"path\":\"build.log\",\"offset\":0,\"pid\":4242,\"uid\":1000,\"time\":\"...Z\"}\n"
                "       {\"event\":\"renamed\",\"id\":1,\"path\":\"archive/build.log\"}\n"
                "       {\"event\":\"closed\",\"id\":1,\"path\":\"...\",\"total\":6,\"status\":\"complete\"}\n"
                "Control characters are escaped; a byte that is not valid UTF-8 is written as \\u00XX,\n"
                "and such a path also comes exactly as \"path_base64\". To consume: capturefs take.");

  TakeArgs take_args;
  auto* take = app.add_subcommand("take", "Consume matching streams: write each to a directory or pipe it to a command");
  add_socket_option(*take, take_args.socket);
  take->add_option("ARGS", take_args.globs, "[MOUNT] [GLOB...]: the streams to take (fnmatch, '*' matches '/'); default: *");
  auto* take_to = take->add_option("-t,--to", take_args.to_dir, "Write each stream to DIR/PATH (made when complete)")
                      ->type_name("DIR");
  auto* take_exec = take->add_option("-x,--exec", take_args.exec,
                                     "Pipe each stream to /bin/sh -c CMD (environment: CAPTUREFS_PATH)")
                        ->type_name("CMD");
  take_to->excludes(take_exec);
  take->add_flag("-1,--once", take_args.once, "Take one stream, then exit");
  take->footer("\nPrints one JSON line per stream taken: {\"event\":\"taken\",\"id\":1,\"path\":\"a.log\",\"total\":6,\n"
               "\"status\":\"complete\",...}. A stream that ends aborted leaves no file. Runs until the daemon stops.");

  StatusArgs status_args;
  auto* status = app.add_subcommand(
      "status", "List every live stream (writer, bytes written, delivered and spilled, rate, state, waits) and the commands of --exec");
  add_socket_option(*status, status_args.socket);
  status->add_option("MOUNT", status_args.mount, "The mountpoint (instead of --socket)");
  status->add_flag("--json", status_args.json, "One JSON object per line instead of a table");
  status->add_option("-W,--watch", status_args.watch, "Refresh every SECONDS (default 2) until interrupted")
      ->expected(0, 1)->type_name("[SECONDS]");
  status->footer("\nWAIT says on what a writer waits: consumer (its consumer is slow), memory (the memory caps,\n"
                 "no spilling) or spill-limit; SPILLED is the bytes of the stream in its spill file.\n"
                 "With a daemon that runs --exec, a second table lists its commands: those that ended (the\n"
                 "last 256, oldest first), then those running, each with its pid, the bytes fed to its stdin,\n"
                 "INPUT (feeding, complete, cut short: it exited before reading everything and the writer\n"
                 "got EPIPE, incomplete: the stream ended early) and STATE (running, exited N, killed by\n"
                 "signal NAME, not started). JSON lines have \"kind\":\"stream\" or \"kind\":\"command\".");

  // ---- Before parsing: the mount helper's form, unknown subcommands, -o.
  std::vector<std::string> args(argv, argv + argc);
  std::vector<std::string> subcommands;
  for (const auto* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    subcommands.push_back(sub->get_name());
    for (const auto& al : sub->get_aliases()) subcommands.push_back(al);
  }
  if (auto helper = helper_argv(args, subcommands)) args = std::move(*helper);
  if (args.size() > 1 && !args[1].empty() && args[1][0] != '-' &&
      std::find(subcommands.begin(), subcommands.end(), args[1]) == subcommands.end()) {
    std::string msg = "capturefs: error: unknown command '" + args[1] + "'";
    if (const std::string near = did_you_mean(args[1], subcommands); !near.empty())
      msg += "; did you mean '" + near + "'?";
    else
      msg += " (commands: mount, umount, status, peek, cat, watch, take; see capturefs --help)";
    std::fprintf(stderr, "%s\n", msg.c_str());
    return 2;
  }
  if (args.size() > 1 && args[1] == "mount") {
    std::vector<MountOptionSpec> specs;
    for (const CLI::Option* o : mount->get_options()) {
      if (o->get_lnames().empty() || o->get_lnames().front() == "help") continue;
      specs.push_back({o->get_lnames().front(), o->get_expected_max() != 0});
    }
    std::string error;
    auto expanded = expand_o(args, specs, &error);
    if (!expanded) {
      std::fprintf(stderr, "capturefs: error: -o: %s\n", error.c_str());
      return 2;
    }
    args = std::move(*expanded);
  }
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());

  try {
    app.parse(static_cast<int>(cargs.size()), cargs.data());
    m.exec_given = exec->count() > 0;
    if (m.exec_given && m.exec.find_first_not_of(" \t\n") == std::string::npos)
      throw CLI::ValidationError("--exec", "the command is empty");
    if (*take && take_args.to_dir.empty() && take_args.exec.empty())
      throw CLI::ValidationError("take", "say where the streams go: --to DIR or --exec CMD");
    status_args.watching = status->count("--watch") > 0;
    if (*mount) return run_mount(m);
    if (*umount) return run_umount(umount_point, lazy, no_wait);
    if (*cat) return run_cat(cat_args);
    if (*peek) return run_peek(peek_args);
    if (*watch) return run_watch(watch_args);
    if (*take) return run_take(take_args);
    if (*status) return run_status(status_args);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return 2;
}

}  // namespace capturefs::cli
