// Fault injection on real mounts: consumers, commands, writers and the
// daemon itself killed at awkward moments, a soak with 200 writers, hostile
// names, rename cycles, and the socket's and mount's access checks.
//
// Every test counts bytes: what each consumer received is compared with
// what was written (content and sha256), and what was lost, if anything,
// is stated. Processes are real (python3 -B fault_tool.py, capturefs
// cat/watch/status, dd, sh, forked writers); waits end on real conditions
// (pidfd, --ready-fd, a line printed by a process); where there is no event
// to wait for (a line appended to a log file, a count in /proc) a bounded
// poll on the condition is used, never a sleep.
//
// Environment: CAPTUREFS_SOAK_SECONDS (default 10): how long the soak's
// writers write; `CAPTUREFS_SOAK_SECONDS=60 meson test -C build --suite
// faults` is the long run.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <iostream>
#include <map>
#include <set>
#include <new>
#include <sstream>
#include <thread>

#include "mount_fixture.hpp"
#include "socket_client.hpp"

namespace capturefs::test {
namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;
constexpr uid_t kNobody = 65534;

bool contains(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

std::string tail(const std::string& s, std::size_t n = 4000) {
  return s.size() > n ? "..." + s.substr(s.size() - n) : s;
}

std::string hex(std::string_view s) {
  static const char d[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += d[c >> 4];
    out += d[c & 15];
  }
  return out;
}

std::vector<std::string> tool(std::vector<std::string> args) {
  auto argv = python_helper("fault_tool.py");
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

std::vector<std::string> words(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> w;
  for (std::string x; in >> x;) w.push_back(x);
  return w;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

/// Waits until the file at `path` has a line for which pred() holds (the
/// process writing it prints whole lines; there is no event to wait on).
bool wait_line(const std::string& path, const std::function<bool(const std::vector<std::string>&)>& pred,
               Millis timeout = 30s) {
  return eventually(
      [&] {
        for (const auto& l : lines_of(read_file(path)))
          if (pred(words(l))) return true;
        return false;
      },
      timeout, 5ms);
}

bool has_word0(const std::vector<std::string>& w, const std::string& first) { return !w.empty() && w[0] == first; }

/// What a `fault_tool.py consume` process reported (its stdout).
struct ConsumerLog {
  struct Stream {
    std::uint64_t id = 0;
    std::uint64_t start = 0;     // OPENED offset
    std::uint64_t end = 0;       // end of the last DATA received
    std::uint64_t acking = 0;    // last ACK about to be sent
    std::uint64_t acked = 0;     // last ACK sent
    std::string path;            // current path (raw bytes)
    bool closed = false;
    std::uint64_t total = 0;
    std::string status;          // complete / aborted
    std::uint64_t received = 0;  // bytes this connection received
    std::string sha;
    int bad = 0;
    std::string reason;
    std::vector<std::string> renames;
  };
  std::map<std::uint64_t, Stream> streams;
  std::vector<std::string> errors;  // "error CODE MESSAGE"
  std::vector<std::string> problems;  // disorder / mismatch lines
  bool subscribed = false, eof = false, done = false;

  static std::string unhex(const std::string& h) {
    std::string out;
    if (h == "-") return out;
    for (std::size_t i = 0; i + 1 < h.size(); i += 2) out += static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16));
    return out;
  }

  static ConsumerLog parse(const std::string& text) {
    ConsumerLog c;
    for (const auto& line : lines_of(text)) {
      auto w = words(line);
      if (w.empty()) continue;
      auto u = [&](std::size_t i) { return i < w.size() ? std::stoull(w[i]) : 0ULL; };
      const std::string& k = w[0];
      if (k == "subscribed") c.subscribed = true;
      else if (k == "eof") c.eof = true;
      else if (k == "done") c.done = true;
      else if (k == "error") c.errors.push_back(line);
      else if (k == "disorder" || k == "mismatch") c.problems.push_back(line);
      else if (k == "opened" && w.size() >= 4) {
        Stream& s = c.streams[u(1)];
        s.id = u(1);
        s.start = s.end = s.acking = s.acked = u(2);
        s.path = unhex(w[3]);
      } else if (k == "data" && w.size() >= 4) {
        c.streams[u(1)].end = u(2) + u(3);
      } else if (k == "acking" && w.size() >= 3) {
        c.streams[u(1)].acking = u(2);
      } else if (k == "acked" && w.size() >= 3) {
        c.streams[u(1)].acked = u(2);
      } else if (k == "renamed" && w.size() >= 3) {
        Stream& s = c.streams[u(1)];
        s.path = unhex(w[2]);
        s.renames.push_back(s.path);
      } else if (k == "closed" && w.size() >= 9) {
        Stream& s = c.streams[u(1)];
        s.closed = true;
        s.total = u(2);
        s.status = w[3];
        s.received = u(4);
        s.sha = w[5];
        s.bad = std::stoi(w[6]);
        s.reason = unhex(w[7]);
        s.path = unhex(w[8]);
      }
    }
    return c;
  }
  const Stream* by_path(const std::string& p) const {
    for (const auto& [id, s] : streams)
      if (s.path == p) return &s;
    return nullptr;
  }
};

/// A `fault_tool.py consume` process with its stdout in a file.
struct Consumer {
  std::string log_path;
  std::string outdir;
  Child proc;

  Consumer(const Mount& m, const std::string& tag, std::vector<std::string> patterns, std::vector<std::string> opts = {}) {
    log_path = m.scratch(tag + ".log");
    outdir = m.scratch(tag + ".out");
    ::mkdir(outdir.c_str(), 0755);
    std::vector<std::string> args = {"consume", m.socket_path(), outdir};
    args.insert(args.end(), patterns.begin(), patterns.end());
    args.insert(args.end(), opts.begin(), opts.end());
    SpawnOptions o;
    o.stdout_path = log_path;
    proc = Child::spawn(tool(args), o);
  }
  std::string text() const { return read_file(log_path); }
  ConsumerLog log() const { return ConsumerLog::parse(text()); }
  bool wait(const std::function<bool(const std::vector<std::string>&)>& pred, Millis timeout = 30s) const {
    return wait_line(log_path, pred, timeout);
  }
  /// The bytes it stored for stream `id` in [from, to).
  std::string stored(std::uint64_t id, std::uint64_t from, std::uint64_t to) const {
    std::string all = read_file(outdir + "/" + std::to_string(id) + ".bin");
    if (all.size() < to) return all.size() > from ? all.substr(from) : std::string();
    return all.substr(from, to - from);
  }
};

/// The last "wrote N" of a `fault_tool.py write` process, and how it ended.
struct WriterLog {
  std::uint64_t wrote = 0;
  bool closed = false;
  std::string error;  // errno name
  static WriterLog parse(const std::string& text) {
    WriterLog w;
    for (const auto& line : lines_of(text)) {
      auto x = words(line);
      if (x.size() >= 2 && x[0] == "wrote") w.wrote = std::stoull(x[1]);
      if (x.size() >= 2 && x[0] == "closed") w.closed = true;
      if (x.size() >= 4 && x[0] == "error") w.error = x[1];
    }
    return w;
  }
};

Child spawn_writer(const Mount& m, const std::string& rel, const std::string& src, const std::string& log,
                   std::size_t chunk = 65536) {
  SpawnOptions o;
  o.stdout_path = log;
  return Child::spawn(tool({"write", m.at(rel), src, "--chunk", std::to_string(chunk)}), o);
}

/// Runs fn in a forked child as uid/gid nobody; its result string (see run_guarded).
std::string as_nobody(const std::function<std::string()>& fn) {
  return run_guarded([&]() -> std::string {
    if (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0)
      return "setuid: " + errno_string(errno);
    std::string r = fn();
    return r.empty() ? "ok" : r;
  });
}

std::string errno_name(int e) {
  const char* n = strerrorname_np(e);
  return n ? n : std::to_string(e);
}

std::size_t count_dir(const std::string& path) { return list_dir(path).size(); }

// =====================================================================
// 1. A socket consumer SIGKILLed mid-stream, four times over.
// =====================================================================

TEST(Faults, KilledSocketConsumersHandTheUnacknowledgedRestOnAndNothingIsLost) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m({"--max-memory", "64M", "--max-stream", "16M"}, /*with_socket=*/true);
  const std::uint64_t size = 40 * kMiB;
  const std::string src_path = m.scratch("src.bin");
  make_random_file(src_path, size);
  const std::string src = read_file(src_path);
  Child writer = Child::spawn({"sh", "-c", "cat \"$0\" > \"$1\"", src_path, m.at("big.bin")});

  // Each run: [start, end) received, the offset the next one must start at
  // at the earliest / latest (acknowledged before the kill / about to be).
  struct Run {
    std::string who;
    std::uint64_t start, end, ack_lo, ack_hi;
  };
  std::vector<Run> runs;
  std::string rebuilt(size, '\0');
  std::uint64_t redelivered = 0;
  auto check_and_record = [&](const std::string& who, std::uint64_t start, const std::string& bytes,
                              std::uint64_t ack_lo, std::uint64_t ack_hi) {
    ASSERT_LE(start + bytes.size(), size) << who;
    EXPECT_TRUE(bytes == src.substr(start, bytes.size()))
        << who << ": the bytes at [" << start << ", " << start + bytes.size() << ") differ from what was written";
    if (!runs.empty()) {
      const Run& prev = runs.back();
      // Redelivery starts at the first byte the previous consumer did not
      // acknowledge: at least what it had sent an ACK for, at most what it
      // was about to acknowledge when it died, never past what it received.
      EXPECT_GE(start, prev.ack_lo) << who << " started before what " << prev.who << " acknowledged";
      EXPECT_LE(start, prev.ack_hi) << who << " started after what " << prev.who << " had acknowledged";
      EXPECT_LE(start, prev.end) << who << ": a gap after " << prev.who;
      if (prev.end > start) redelivered += prev.end - start;
    }
    bytes.copy(rebuilt.data() + start, bytes.size());
    runs.push_back({who, start, start + bytes.size(), ack_lo, ack_hi});
  };

  // A python consumer (raw protocol, acknowledging one chunk late),
  // killed once it has `n` bytes.
  auto python_run = [&](const std::string& tag, std::uint64_t n) {
    Consumer c(m, tag, {"big.bin"}, {"--literal", "--ack-lag", "--say-at", std::to_string(n)});
    ASSERT_TRUE(c.wait([](auto& w) { return has_word0(w, "got"); }, 60s)) << tag << ":\n" << tail(c.text());
    c.proc.signal(SIGKILL);
    ASSERT_TRUE(killed_by(c.proc.wait_or_kill(10s), SIGKILL));
    auto log = c.log();
    ASSERT_EQ(log.streams.size(), 1u) << c.text();
    const auto& s = log.streams.begin()->second;
    EXPECT_TRUE(log.problems.empty()) << log.problems[0];
    EXPECT_GT(s.end, s.acked) << tag << ": it had unacknowledged bytes when killed (--ack-lag)";
    check_and_record(tag, s.start, c.stored(s.id, s.start, s.end), s.acked, s.acking);
  };
  // `capturefs cat` (acknowledges what it has written to stdout), killed
  // once its stdout has `n` bytes.
  auto cat_run = [&](const std::string& tag, std::optional<std::uint64_t> n) {
    const std::string out = m.scratch(tag + ".bin");
    SpawnOptions o;
    o.stdout_path = out;
    Child cat = Child::spawn({capturefs_binary(), "cat", "--socket", m.socket_path(), "--wait", "big.bin"}, o);
    if (n) {
      struct stat st{};
      ASSERT_TRUE(eventually([&] { return ::stat(out.c_str(), &st) == 0 && static_cast<std::uint64_t>(st.st_size) >= *n; },
                             60s))
          << tag << " never got " << *n << " bytes: " << cat.err();
      cat.signal(SIGKILL);
      ASSERT_TRUE(killed_by(cat.wait_or_kill(10s), SIGKILL));
    } else {
      ASSERT_TRUE(exited_with(cat.wait_or_kill(60s), 0)) << cat.err();
    }
    const std::string got = read_file(out);
    // cat prints no offsets. The final one ends at the end; a killed one
    // started where the previous run's acknowledgements ended: at its last
    // ACK sent, or at the one it was sending when killed (the daemon got
    // it or not). The (random) content says which.
    std::uint64_t start = size - got.size();
    if (n) {
      start = runs.back().ack_lo;
      if (src.compare(start, got.size(), got) != 0) start = runs.back().ack_hi;
    }
    // cat acknowledges after writing: everything it wrote may be unacknowledged.
    check_and_record(tag, start, got, start, start + got.size());
  };

  python_run("first", 3 * kMiB);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  python_run("second", 11 * kMiB + 12345);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  cat_run("third-cat", 8 * kMiB);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  python_run("fourth", 9 * kMiB);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  cat_run("final-cat", std::nullopt);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());

  EXPECT_TRUE(exited_with(writer.wait_or_kill(60s), 0)) << writer.err();
  ASSERT_EQ(runs.back().end, size) << "the last consumer did not get to the end";
  EXPECT_EQ(sha256_of_data(rebuilt), sha256_of(src_path)) << "the union of what the consumers got is not what was written";
  EXPECT_GT(redelivered, 0u) << "no byte was redelivered: the kills did not happen with bytes unacknowledged";
  EXPECT_EQ(stat_err(m.at("big.bin")), ENOENT) << "delivered to the end: the name must be gone";
  std::ostringstream report;
  report << "[faults] consumer kills: 4; " << size << " bytes written, every one delivered; redelivered " << redelivered
         << " bytes:";
  for (const auto& r : runs) report << " " << r.who << "[" << r.start << "," << r.end << ")";
  std::cout << report.str() << std::endl;
}

// =====================================================================
// 2. --exec commands crashing mid-stream.
// =====================================================================

TEST(Faults, CrashingExecCommandsFailTheirWritersAndLeaveOtherStreamsIntact) {
  CAPTUREFS_REQUIRE_FUSE();
  TempDir out("capturefs-faults-exec");
  const std::string cmd = "case \"$CAPTUREFS_PATH\" in "
                          "crash1*) head -c 1000 > /dev/null; ulimit -c 0; kill -SEGV $$;; "
                          "crash2*) head -c 3000000 > /dev/null; ulimit -c 0; kill -SEGV $$;; "
                          "*) exec cat > " + out.path() + "/\"$CAPTUREFS_PATH\";; esac";
  Mount m({"-v", "--max-memory", "24M", "--max-stream", "4M", "--exec-jobs", "6", "--exec", cmd});
  const std::uint64_t size = 16 * kMiB;
  const std::vector<std::string> crash = {"crash1.bin", "crash2.bin"};
  const std::vector<std::string> ok = {"ok1.bin", "ok2.bin", "ok3.bin"};
  std::map<std::string, std::string> src;
  std::map<std::string, Child> writers;
  for (const auto& name : {"crash1.bin", "ok1.bin", "crash2.bin", "ok2.bin", "ok3.bin"}) {
    src[name] = m.scratch(std::string(name) + ".src");
    make_random_file(src[name], size);
  }
  const auto t0 = Clock::now();
  for (const auto& [name, path] : src) writers[name] = spawn_writer(m, name, path, m.scratch(name + ".wlog"));
  for (auto& [name, w] : writers) {
    const int st = w.wait_or_kill(60s);
    const auto log = WriterLog::parse(read_file(m.scratch(name + ".wlog")));
    if (name.rfind("crash", 0) == 0) {
      EXPECT_TRUE(exited_with(st, 1)) << name << ": " << status_string(st);
      EXPECT_TRUE(log.error == "EPIPE" || log.error == "EIO") << name << ": the writer got " << log.error;
      EXPECT_LT(log.wrote, size) << name;
      std::cout << "[faults] " << name << ": the writer got " << log.error << " after " << log.wrote << " of "
                << size << " bytes" << std::endl;
    } else {
      EXPECT_TRUE(exited_with(st, 0)) << name << ": " << status_string(st) << " " << log.error;
      EXPECT_TRUE(log.closed) << name;
    }
  }
  EXPECT_LT(Clock::now() - t0, 30s) << "a writer of a crashed command hung";
  for (const auto& name : ok) {
    ASSERT_TRUE(eventually([&] { return contains(m.daemon_stderr(), "exec '" + name + "': exit 0"); }, 30s))
        << tail(m.daemon_stderr());
    EXPECT_EQ(sha256_of(out.at(name)), sha256_of(src[name])) << name << ": the command did not get the bytes written";
  }
  for (const auto& name : crash) {
    ASSERT_TRUE(eventually([&] { return contains(m.daemon_stderr(), "exec '" + name + "': killed by signal 11 (SIGSEGV)"); },
                           30s))
        << tail(m.daemon_stderr());
    EXPECT_TRUE(contains(m.daemon_stderr(), "exec '" + name + "': command exited before reading all input"))
        << tail(m.daemon_stderr());
  }
  // Still serving: a file the command takes, and one read back through the mount.
  write_file(m.at("ok4.bin"), payload("after", 300000));
  ASSERT_TRUE(eventually([&] { return contains(m.daemon_stderr(), "exec 'ok4.bin': exit 0"); }, 30s));
  EXPECT_EQ(read_file(out.at("ok4.bin")), payload("after", 300000));
  std::cout << "[faults] exec: 2 commands crashed (SIGSEGV) mid-stream; 4 concurrent streams, " << 3 * size + 300000
            << " bytes, arrived intact" << std::endl;
}

// =====================================================================
// 3. Writers SIGKILLed: one parked on backpressure, one in the middle of
//    its loop; other streams and the mount carry on.
// =====================================================================

TEST(Faults, KilledWritersCloseTheirStreamsWithTheBytesWrittenBeforeTheKill) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m({"--no-spill", "--max-memory", "32M", "--max-stream", "4M"}, /*with_socket=*/true);
  const std::string src_path = m.scratch("src.bin");
  make_random_file(src_path, 64 * kMiB);
  const std::string src = read_file(src_path);

  // An unrelated stream, written and read the whole time.
  const std::string other_src = m.scratch("other.src");
  make_random_file(other_src, 24 * kMiB);
  Child other_writer = Child::spawn({"dd", "if=" + other_src, "of=" + m.at("other.bin"), "bs=128K", "status=none"});
  ASSERT_TRUE(eventually([&] { return stat_err(m.at("other.bin")) == 0; }, 10s));
  SpawnOptions oo;
  oo.stdout_path = m.scratch("other.out");
  Child other_reader = Child::spawn({"cat", m.at("other.bin")}, oo);

  // (a) Parked: nobody reads, the stream is at its cap, the write waits.
  Child held = Child::spawn({"dd", "if=" + src_path, "of=" + m.at("held.bin"), "bs=64K", "status=none"});
  const BlockState b = wait_writer_held(held.pid(), m.at("held.bin"), m.path());
  ASSERT_TRUE(b.blocked) << b.observation;
  struct stat st{};
  ASSERT_EQ(stat_err(m.at("held.bin"), &st), 0);
  const auto size_held = static_cast<std::uint64_t>(st.st_size);
  held.signal(SIGKILL);
  const auto t0 = Clock::now();
  EXPECT_TRUE(killed_by(held.wait_or_kill(10s), SIGKILL));
  EXPECT_LT(Clock::now() - t0, 5s) << "a writer parked in the daemon did not die promptly on SIGKILL";

  // The stream is closed (the kernel released the dead writer's handle):
  // status says "held", and a reader gets exactly the bytes written, then EOF.
  ASSERT_TRUE(eventually(
      [&] {
        RunResult r = run({capturefs_binary(), "status", "--socket", m.socket_path(), "--json"}, 20s);
        for (const auto& l : lines_of(r.out))
          if (contains(l, "\"path\":\"held.bin\"") && contains(l, "\"state\":\"held\"")) return true;
        return false;
      },
      10s))
      << "the killed writer's stream is not closed";
  ASSERT_EQ(stat_err(m.at("held.bin"), &st), 0);
  const auto size_after = static_cast<std::uint64_t>(st.st_size);
  EXPECT_EQ(size_after, size_held) << "the interrupted write must not have added bytes";
  const std::string got_held = cat(m.at("held.bin"));
  EXPECT_EQ(got_held.size(), size_after);
  EXPECT_TRUE(got_held == src.substr(0, got_held.size())) << "the parked writer's stream is not a prefix of its input";

  // (b) Mid-loop: a writer writing as fast as a socket consumer takes it.
  Consumer c(m, "loop", {"loop.bin"}, {"--literal", "--quiet"});
  ASSERT_TRUE(c.wait([](auto& w) { return has_word0(w, "subscribed"); }));
  const std::string wlog = m.scratch("loop.wlog");
  Child loop = spawn_writer(m, "loop.bin", src_path, wlog);
  ASSERT_TRUE(wait_line(wlog, [](auto& w) { return w.size() == 2 && w[0] == "wrote" && std::stoull(w[1]) >= 8 * kMiB; }, 60s))
      << read_file(wlog).substr(0, 200);
  loop.signal(SIGKILL);
  EXPECT_TRUE(killed_by(loop.wait_or_kill(10s), SIGKILL));
  const std::uint64_t reported = WriterLog::parse(read_file(wlog)).wrote;
  ASSERT_TRUE(c.wait([](auto& w) { return has_word0(w, "closed"); })) << tail(c.text());
  auto log = c.log();
  const auto* s = log.by_path("loop.bin");
  ASSERT_NE(s, nullptr) << c.text();
  // The consumer cannot tell: the stream ends "complete", with the bytes
  // written before the kill (those the writer saw accepted, and at most
  // the one write it did not live to report).
  EXPECT_EQ(s->status, "complete");
  EXPECT_GE(s->total, reported);
  EXPECT_LE(s->total, reported + 65536);
  EXPECT_EQ(s->received, s->total);
  EXPECT_EQ(s->bad, 0);
  EXPECT_EQ(s->sha, sha256_of_data(src.substr(0, s->total)));
  EXPECT_TRUE(eventually([&] { return stat_err(m.at("loop.bin")) == ENOENT; }, 10s));

  // Nothing else disturbed.
  EXPECT_TRUE(exited_with(other_writer.wait_or_kill(60s), 0)) << other_writer.err();
  EXPECT_TRUE(exited_with(other_reader.wait_or_kill(60s), 0)) << other_reader.err();
  EXPECT_EQ(sha256_of(m.scratch("other.out")), sha256_of(other_src));
  write_file(m.at("after.txt"), "still serving\n");
  EXPECT_EQ(cat(m.at("after.txt")), "still serving\n");
  EXPECT_FALSE(m.daemon_exited());
  std::cout << "[faults] writer kills: 2; parked writer: " << size_after << " bytes kept (" << size_held
            << " seen before the kill); looping writer: reported " << reported << ", consumer got " << s->total
            << " (status complete); other stream " << 24 * kMiB << " bytes intact" << std::endl;
}

// =====================================================================
// 4. The daemon SIGKILLed: errors, not hangs; umount; mount again.
// =====================================================================

TEST(Faults, KilledDaemonGivesErrorsAndTheDeadMountIsCleanedUpAndReusable) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m({"--no-spill", "--max-memory", "4M", "--max-stream", "2M"}, /*with_socket=*/true);
  UniqueFd w = open_fd(m.at("held-open"), O_WRONLY | O_CREAT);
  ASSERT_TRUE(w);
  ASSERT_EQ(write_all(w.get(), "before"), "");
  // A socket consumer in the middle of a stream.
  Consumer c(m, "sock", {"sock.bin"}, {"--literal"});
  UniqueFd ws = open_fd(m.at("sock.bin"), O_WRONLY | O_CREAT);
  ASSERT_TRUE(ws);
  const std::string sock_part = payload("socket part", 300000);
  ASSERT_EQ(write_all(ws.get(), sock_part), "");
  ASSERT_TRUE(c.wait([&](auto& x) { return x.size() == 3 && x[0] == "acked" && x[2] == std::to_string(sock_part.size()); }))
      << c.text();
  Child dd = Child::spawn({"dd", "if=/dev/zero", "of=" + m.at("big"), "bs=64K", "count=256"});
  ASSERT_TRUE(wait_writer_held(dd.pid(), m.at("big"), m.path()).blocked);
  UniqueFd s = open_fd(m.at("s"), O_WRONLY | O_CREAT);
  ASSERT_TRUE(s);
  auto argv = python_helper("stream_tool.py");
  argv.insert(argv.end(), {"read-block", m.at("s")});
  Child reader = Child::spawn(argv);
  ASSERT_TRUE(wait_blocked_in(reader.pid(), Io::Read, m.path()).blocked);

  ASSERT_EQ(::kill(m.pid(), SIGKILL), 0);
  auto st = m.wait_exit(10s);
  ASSERT_TRUE(st);
  EXPECT_TRUE(killed_by(*st, SIGKILL));

  // Everyone waiting gets an error at once.
  const int ds = dd.wait_or_kill(10s);
  EXPECT_TRUE(exited_with(ds, 1)) << status_string(ds);
  EXPECT_TRUE(contains(dd.err(), "Software caused connection abort") ||
              contains(dd.err(), "Transport endpoint is not connected"))
      << dd.err();
  const int rs = reader.wait_or_kill(10s);
  EXPECT_TRUE(exited_with(rs, 1)) << status_string(rs);
  EXPECT_TRUE(contains(reader.err(), "ECONNABORTED") || contains(reader.err(), "ENOTCONN")) << reader.err();
  errno = 0;
  EXPECT_EQ(::write(w.get(), "x", 1), -1);
  EXPECT_EQ(errno, ENOTCONN) << errno_string(errno);
  // The root's attributes may still be cached (for up to a second), so
  // stat of the root itself is not asked; statfs always reaches the daemon,
  // and a name inside needs a lookup.
  struct statfs sfs{};
  errno = 0;
  EXPECT_EQ(::statfs(m.path().c_str(), &sfs), -1);
  EXPECT_EQ(errno, ENOTCONN) << errno_string(errno);
  EXPECT_EQ(stat_err(m.at("held-open")), ENOTCONN);
  EXPECT_TRUE(m.is_mounted());
  // The socket consumer: the connection just ends (no CLOSED, no ERROR);
  // it got what was written before the kill.
  EXPECT_TRUE(exited_with(c.proc.wait_or_kill(10s), 0)) << c.text();
  {
    const auto log = c.log();
    const auto* sk = log.by_path("sock.bin");
    ASSERT_NE(sk, nullptr) << c.text();
    EXPECT_TRUE(log.eof);
    EXPECT_FALSE(sk->closed);
    EXPECT_TRUE(log.errors.empty()) << log.errors[0];
    EXPECT_EQ(c.stored(sk->id, 0, sk->end), sock_part);
  }
  EXPECT_EQ(connect_unix(m.socket_path()), -1);
  EXPECT_EQ(errno, ECONNREFUSED) << "the socket file stays (stale; the next daemon replaces it)";

  // Mounting on it again is refused with a message saying what to do.
  RunResult again = run({capturefs_binary(), "mount", m.path(), "-f"}, 20s);
  EXPECT_EQ(again.code(), 1) << again.describe();
  EXPECT_TRUE(contains(again.err, "dead FUSE mount") && contains(again.err, "capturefs umount")) << again.err;

  // `capturefs umount` cleans it up, even with descriptors of the dead
  // mount still open (ours: w, s), and given a relative path.
  RunResult um = run({"/bin/sh", "-c", "cd \"$0\" && exec \"$1\" umount mnt", m.root(), capturefs_binary()}, 30s);
  EXPECT_TRUE(um.ok()) << um.describe();
  EXPECT_FALSE(m.is_mounted());
  EXPECT_EQ(stat_err(m.path()), 0);
  w.reset();
  s.reset();
  ws.reset();

  // A new daemon on the same directory works.
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd rd(p[0]), wr(p[1]);
  SpawnOptions o;
  o.fds = {{wr.get(), 5}};
  o.parent_death_signal = SIGTERM;
  Child d2 = Child::spawn({capturefs_binary(), "mount", m.path(), "-f", "--ready-fd", "5"}, o);
  wr.reset();
  ASSERT_EQ(read_exactly(rd.get(), 6, 30s), "ready\n") << d2.err();
  const std::string data = payload("second life", 3 * kMiB);
  write_file(m.at("x"), data);
  EXPECT_EQ(sha256_of_data(cat(m.at("x"))), sha256_of_data(data));
  RunResult u = run({capturefs_binary(), "umount", m.path()}, 30s);
  EXPECT_TRUE(u.ok()) << u.describe();
  const int d2s = d2.wait_or_kill(20s);
  EXPECT_TRUE(exited_with(d2s, 0)) << status_string(d2s) << d2.err();
  std::cout << "[faults] daemon SIGKILL: parked writer, blocked reader and an open writer got errors; umount of the "
               "dead mount ok; remount carried "
            << data.size() << " bytes" << std::endl;
}

// =====================================================================
// 5. SIGTERM under load: consumers told "shutdown", writers get errors.
// =====================================================================

TEST(Faults, SigtermUnderLoadEndsStreamsWithShutdownAndExitsZero) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m({"--no-spill", "--max-memory", "32M", "--max-stream", "4M"}, /*with_socket=*/true);
  const std::uint64_t size = 32 * kMiB;
  std::vector<std::string> names = {"load0.bin", "load1.bin", "load2.bin", "load3.bin"};
  std::map<std::string, std::string> src;
  for (const auto& n : names) {
    src[n] = m.scratch(n + ".src");
    make_random_file(src[n], size);
  }
  src["plain.bin"] = m.scratch("plain.src");
  make_random_file(src["plain.bin"], size);

  Consumer c(m, "slow", {"load*"}, {"--rate", std::to_string(2 * kMiB)});
  ASSERT_TRUE(c.wait([](auto& w) { return has_word0(w, "subscribed"); }));
  std::map<std::string, Child> writers;
  for (const auto& [n, path] : src) writers[n] = spawn_writer(m, n, path, m.scratch(n + ".wlog"));
  // A reader through the mount too, on a stream the subscriber does not match.
  ASSERT_TRUE(eventually([&] { return stat_err(m.at("plain.bin")) == 0; }, 10s));
  SpawnOptions ro;
  ro.stdout_path = m.scratch("plain.out");
  ro.stderr_path = m.scratch("plain.err");
  Child reader = Child::spawn(tool({"read", m.at("plain.bin"), "--rate", std::to_string(kMiB)}), ro);
  // The consumer takes the frames in the order they come: it may not have
  // reached every stream's OPENED yet (the others wait for it).
  ASSERT_TRUE(eventually([&] { return c.log().streams.size() >= 2; }, 20s)) << c.text();
  // Under load: every writer has written something, the mount reader has
  // read something, and at least one writer waits.
  ASSERT_TRUE(eventually(
      [&] {
        for (const auto& n : names)
          if (WriterLog::parse(read_file(m.scratch(n + ".wlog"))).wrote == 0) return false;
        struct stat rs{};
        return ::stat(m.scratch("plain.out").c_str(), &rs) == 0 && rs.st_size > 0;
      },
      20s));
  ASSERT_TRUE(eventually(
      [&] {
        for (const auto& n : names)
          if (blocked_in(writers[n].pid(), Io::Write, m.path()).blocked) return true;
        return false;
      },
      10s))
      << "no writer is held back by the slow consumer";

  ASSERT_EQ(::kill(m.pid(), SIGTERM), 0);
  const auto t0 = Clock::now();
  auto st = m.wait_exit(20s);
  ASSERT_TRUE(st) << "the daemon did not exit within 20 s of SIGTERM\n" << tail(m.daemon_stderr());
  EXPECT_TRUE(exited_with(*st, 0)) << status_string(*st) << "\n" << tail(m.daemon_stderr());
  std::cout << "[faults] SIGTERM under load: daemon " << status_string(*st) << " after "
            << std::chrono::duration_cast<Millis>(Clock::now() - t0).count() << " ms" << std::endl;
  EXPECT_FALSE(m.is_mounted());
  EXPECT_EQ(stat_err(m.socket_path()), ENOENT);

  // The consumer: CLOSED aborted "shutdown" for each stream, holding a
  // prefix of what was written, then ERROR shutdown.
  EXPECT_TRUE(exited_with(c.proc.wait_or_kill(20s), 0)) << c.text();
  auto log = c.log();
  EXPECT_TRUE(log.eof);
  ASSERT_EQ(log.errors.size(), 1u) << c.text();
  EXPECT_TRUE(contains(log.errors[0], "error SHUTDOWN") || contains(log.errors[0], "shutdown")) << log.errors[0];
  EXPECT_GE(log.streams.size(), 2u);
  for (const auto& n : names) {
    const auto* s = log.by_path(n);
    if (s == nullptr) {  // never announced to it: nothing to tell
      std::cout << "[faults]   " << n << ": not yet announced to the consumer at SIGTERM" << std::endl;
      continue;
    }
    if (!s->closed) {
      // Known race (docs/semantics.md, Known limits): a stream cut by the
      // unmount while its consumer's socket is full may end with the
      // connection's ERROR shutdown only, without its CLOSED. Never as
      // complete: the client sees the shutdown.
      std::cout << "[faults]   " << n << ": no CLOSED before ERROR shutdown (known race)" << std::endl;
      continue;
    }
    EXPECT_EQ(s->status, "aborted") << n;
    // Its writer was still open at the unmount: the stream ends aborted
    // with that reason (total: the bytes written), or the daemon's stop
    // ends it with "shutdown" (total: the bytes sent).
    EXPECT_TRUE(s->reason == "shutdown" || s->reason == "unmounted while a writer had it open") << n << s->reason;
    if (s->reason == "shutdown") EXPECT_EQ(s->total, s->start + s->received) << n << ": CLOSED's total is not the bytes sent";
    else EXPECT_GE(s->total, s->start + s->received) << n;
    EXPECT_EQ(s->bad, 0) << n;
    EXPECT_LT(s->received, size) << n;
    EXPECT_EQ(s->sha, sha256_of_data(read_file(src[n]).substr(0, s->received))) << n << ": not a prefix of the input";
    std::cout << "[faults]   " << n << ": consumer got " << s->received << " bytes, CLOSED aborted \"" << s->reason
              << "\"" << std::endl;
  }
  // Writers: an error, not a hang.
  for (auto& [n, wchild] : writers) {
    const int ws = wchild.wait_or_kill(20s);
    const auto wl = WriterLog::parse(read_file(m.scratch(n + ".wlog")));
    EXPECT_TRUE(exited_with(ws, 1)) << n << ": " << status_string(ws);
    EXPECT_FALSE(wl.error.empty()) << n;
    std::cout << "[faults]   writer " << n << ": " << wl.error << " after " << wl.wrote << " bytes" << std::endl;
  }
  // The reader through the mount gets an error too, never a clean EOF of a
  // stream cut short; what it got is a prefix.
  const int rst = reader.wait_or_kill(20s);
  EXPECT_FALSE(exited_with(rst, 0)) << "the mount reader took a stream cut short by SIGTERM for complete";
  const std::string plain = read_file(m.scratch("plain.out"));
  EXPECT_TRUE(plain == read_file(src["plain.bin"]).substr(0, plain.size()));
  std::cout << "[faults]   mount reader: " << status_string(rst) << " after " << plain.size() << " bytes: "
            << read_file(m.scratch("plain.err")).substr(0, 200) << std::endl;
}

// The `total` of a CLOSED "shutdown" must be the bytes sent on this
// connection (docs/protocol.md, Shutdown), so a client knows where its
// stream was cut.
TEST(Faults, SigtermClosedTotalIsTheBytesSent) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m({"--max-memory", "32M", "--max-stream", "8M"}, /*with_socket=*/true);
  const std::string src = m.scratch("t.src");
  make_random_file(src, 32 * kMiB);
  Consumer c(m, "t", {"t.bin"}, {"--literal", "--rate", std::to_string(kMiB), "--say-at", std::to_string(kMiB)});
  ASSERT_TRUE(c.wait([](auto& w) { return has_word0(w, "subscribed"); }));
  Child writer = spawn_writer(m, "t.bin", src, m.scratch("t.wlog"));
  ASSERT_TRUE(c.wait([](auto& w) { return has_word0(w, "got"); })) << c.text();
  ASSERT_EQ(::kill(m.pid(), SIGTERM), 0);
  auto st = m.wait_exit(20s);
  ASSERT_TRUE(st);
  EXPECT_TRUE(exited_with(*st, 0)) << status_string(*st);
  EXPECT_TRUE(exited_with(c.proc.wait_or_kill(20s), 0)) << c.text();
  EXPECT_TRUE(exited_with(writer.wait_or_kill(20s), 1));
  const auto log = c.log();
  const auto* s = log.by_path("t.bin");
  ASSERT_NE(s, nullptr) << c.text();
  if (!s->closed) {
    // Known race, as above: the connection ended with ERROR shutdown only.
    EXPECT_FALSE(log.errors.empty()) << c.text();
    std::cout << "[faults] t.bin: no CLOSED before ERROR shutdown (known race)" << std::endl;
    return;
  }
  EXPECT_EQ(s->status, "aborted");
  EXPECT_TRUE(s->reason == "shutdown" || s->reason == "unmounted while a writer had it open") << s->reason;
  EXPECT_EQ(s->sha, sha256_of_data(read_file(src).substr(s->start, s->received)));
  // "shutdown" (the daemon stopped with the stream still held): the bytes
  // sent; the unmount's abort: the bytes written, at least those sent.
  if (s->reason == "shutdown") EXPECT_EQ(s->total, s->start + s->received);
  else EXPECT_GE(s->total, s->start + s->received);
}

// =====================================================================
// 6. Soak: 200 concurrent writers, a deliberately slow consumer.
// =====================================================================

constexpr std::size_t kPatternLen = 65521;  // fault_tool.py PATTERN_LEN

unsigned char pattern_byte(unsigned n, std::uint64_t j) {
  j %= kPatternLen;
  return static_cast<unsigned char>((n * 31 + j * 7 + j / 97) % 251);
}

std::string pattern_data(unsigned n, std::uint64_t size) {
  std::string s(size, '\0');
  for (std::uint64_t j = 0; j < size; ++j) s[j] = static_cast<char>(pattern_byte(n, j));
  return s;
}

struct SoakShared {
  std::atomic<std::uint64_t> total[200];
  std::atomic<int> err[200];
};

TEST(Faults, Soak200WritersSlowConsumerEveryByteInOrderMemoryBounded) {
  CAPTUREFS_REQUIRE_FUSE();
  int seconds = 10;
  if (const char* e = std::getenv("CAPTUREFS_SOAK_SECONDS"); e && *e) seconds = std::max(1, std::atoi(e));
  constexpr unsigned kWriters = 200;
  const std::uint64_t max_memory = 16 * kMiB;
  Mount m({"--max-memory", "16M", "--max-stream", "2M"}, /*with_socket=*/true);
  const std::uint64_t baseline = m.peak_rss();
  ASSERT_EQ(::mkdir(m.at("soak").c_str(), 0755), 0);

  const double rate = 4.0 * kMiB;  // the consumer's speed while the writers run
  Consumer c(m, "soak", {"soak/*"},
             {"--no-store", "--quiet", "--pattern-check", "--rate", std::to_string(static_cast<std::uint64_t>(rate)),
              "--slow-for", std::to_string(seconds), "--expect", std::to_string(kWriters)});
  ASSERT_TRUE(c.wait([](auto& w) { return has_word0(w, "subscribed"); }));

  auto* shared = static_cast<SoakShared*>(
      ::mmap(nullptr, sizeof(SoakShared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(shared, MAP_FAILED);
  new (shared) SoakShared{};
  static const std::size_t kSizes[] = {4096, 65536, 100003, 1, 131072, 7777, 262144};
  const std::size_t buflen = kPatternLen + 262144;
  std::vector<char> buf(buflen);
  std::vector<std::string> paths;
  for (unsigned i = 0; i < kWriters; ++i) paths.push_back(m.at("soak/w" + std::to_string(i)));
  timespec deadline{};
  ::clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_sec += seconds;

  // Forked writers: real processes, each with its own stream; no
  // allocation after fork.
  std::vector<pid_t> pids;
  struct Reaper {
    std::vector<pid_t>& pids;
    ~Reaper() {
      for (pid_t p : pids) ::kill(p, SIGKILL);
      for (pid_t p : pids)
        while (::waitpid(p, nullptr, 0) < 0 && errno == EINTR) {
        }
    }
  } reaper{pids};
  const pid_t parent = ::getpid();
  for (unsigned i = 0; i < kWriters; ++i) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0) << errno_string(errno);
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      for (std::size_t j = 0; j < buflen; ++j) buf[j] = static_cast<char>(pattern_byte(i, j));
      const int fd = ::open(paths[i].c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0) {
        shared->err[i] = errno;
        ::_exit(1);
      }
      std::uint64_t pos = 0;
      for (unsigned k = i;; ++k) {
        timespec now{};
        ::clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > deadline.tv_sec || (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec)) break;
        const std::size_t n = kSizes[k % (sizeof kSizes / sizeof kSizes[0])];
        const ssize_t w = ::write(fd, buf.data() + pos % kPatternLen, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
          shared->err[i] = w < 0 ? errno : EIO;
          ::_exit(1);
        }
        pos += static_cast<std::uint64_t>(w);
        shared->total[i] = pos;
      }
      if (::close(fd) != 0) {
        shared->err[i] = errno;
        ::_exit(1);
      }
      ::_exit(0);
    }
    pids.push_back(pid);
  }
  std::uint64_t peak_during = 0;
  {
    // Sample the daemon's current RSS while the writers run (VmHWM is the
    // real bound; this shows how it evolves).
    std::vector<pid_t>& left = pids;
    const auto limit = Clock::now() + std::chrono::seconds(seconds) + 120s;
    while (!left.empty() && Clock::now() < limit) {
      peak_during = std::max(peak_during, m.current_rss());
      std::erase_if(left, [&](pid_t p) {
        int wst = 0;
        const pid_t r = ::waitpid(p, &wst, WNOHANG);
        if (r == p) {
          EXPECT_TRUE(exited_with(wst, 0)) << "writer " << p << " " << status_string(wst);
          return true;
        }
        return false;
      });
      if (!left.empty()) std::this_thread::sleep_for(50ms);
    }
    ASSERT_TRUE(left.empty()) << left.size() << " writers still running long after their deadline";
  }
  const int cs = c.proc.wait_or_kill(120s);
  EXPECT_TRUE(exited_with(cs, 0)) << status_string(cs) << "\n" << tail(c.text());
  const auto log = c.log();
  EXPECT_TRUE(log.problems.empty()) << log.problems.size() << " chunks out of order or wrong, e.g. " << log.problems[0];
  std::uint64_t total = 0;
  unsigned checked = 0;
  for (unsigned i = 0; i < kWriters; ++i) {
    EXPECT_EQ(shared->err[i].load(), 0) << "writer " << i << ": " << errno_string(shared->err[i].load());
    const auto* s = log.by_path("soak/w" + std::to_string(i));
    if (s == nullptr) {
      ADD_FAILURE() << "stream soak/w" << i << " never reached the consumer";
      continue;
    }
    const std::uint64_t written = shared->total[i].load();
    EXPECT_EQ(s->status, "complete") << i;
    EXPECT_EQ(s->total, written) << "w" << i;
    EXPECT_EQ(s->received, written) << "w" << i;
    EXPECT_EQ(s->start, 0u) << "w" << i;
    EXPECT_EQ(s->bad, 0) << "w" << i;
    if (i % 10 == 0) {  // sha256 of every tenth, recomputed here (all were checked byte by byte)
      EXPECT_EQ(s->sha, sha256_of_data(pattern_data(i, written))) << "w" << i;
      ++checked;
    }
    total += written;
  }
  ::munmap(shared, sizeof(SoakShared));
  EXPECT_TRUE(eventually([&] { return count_dir(m.at("soak")) == 0; }, 20s)) << "delivered streams left names";
  const std::uint64_t hwm = m.peak_rss();
  // Overhead over the cap, measured on this workload (2 cores, Debian 12):
  //  - fixed: ~23 MiB (idle daemon ~5 MiB, plus thread stacks, FUSE request
  //    buffers, socket frames and allocator slack under 200 writers) with
  //    writes of at most 8 KiB; bound: 40 MiB (margin for slower machines);
  //  - parked writes keep their request data outside the caps
  //    (docs/semantics.md, Known limits): at most one write per writer, 256 KiB here. With
  //    them the total measured 53-69 MiB (10 s and 60 s runs).
  const std::uint64_t overhead = 40 * kMiB + kWriters * 262144ULL;
  std::cout << "[faults] soak: " << seconds << " s, " << kWriters << " writers, " << total << " bytes ("
            << mib(total) << ") delivered in order, checked byte by byte (" << checked
            << " also by sha256); daemon VmHWM " << mib(hwm) << " (idle " << mib(baseline) << ", peak VmRSS sampled "
            << mib(peak_during) << "), i.e. --max-memory " << mib(max_memory) << " + "
            << mib(hwm > max_memory ? hwm - max_memory : 0) << " (bound: + " << mib(overhead) << ")" << std::endl;
  if (!kSanitizedBuild) {
    EXPECT_LE(hwm, max_memory + overhead) << "daemon peak RSS " << mib(hwm);
  }
  EXPECT_GT(total, 0u);
}

// =====================================================================
// 7. Hostile names.
// =====================================================================

/// Runs fault_tool.py jsonpaths on `jsonl`; the decoded lines.
std::vector<std::string> decode_json_lines(const Mount& m, const std::string& tag, const std::string& jsonl) {
  const std::string path = m.scratch(tag + ".jsonl");
  write_file(path, jsonl);
  SpawnOptions o;
  o.stdin_path = path;
  RunResult r = run(tool({"jsonpaths"}), 30s, o);
  EXPECT_TRUE(r.ok()) << tag << ": not valid JSON lines:\n" << r.describe();
  return lines_of(r.out);
}

TEST(Faults, HostileNamesWorkOrFailClearlyAndShowEscapedInWatchAndStatus) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m({}, /*with_socket=*/true);
  SpawnOptions wo;
  wo.stdout_path = m.scratch("watch.jsonl");
  Child watch = Child::spawn({capturefs_binary(), "watch", "--socket", m.socket_path(), "--observe"}, wo);
  write_file(m.at("marker"), "m");
  ASSERT_TRUE(eventually([&] { return contains(read_file(m.scratch("watch.jsonl")), "\"marker\""); }, 20s));

  std::string euro;
  for (int i = 0; i < 85; ++i) euro += "\xe2\x82\xac";  // 255 bytes of valid UTF-8
  const std::vector<std::string> names = {
      std::string(255, 'a'),
      euro,
      "line1\nline2",
      "\n",
      "\xff\xfe\x80",
      "over\xc0\xaflong",
      "surrogate\xed\xa0\x80",
      "tab\tesc\x1b[31mred\x7f",
      "quote\"back\\slash'",
      "\xc3\xbc\xc3\xb1 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80",
      " lead and trail ",
      "-dash",
      "\\u00ff",
  };
  for (const auto& n : names) {
    UniqueFd fd = open_fd(m.at(n), O_WRONLY | O_CREAT | O_EXCL);
    ASSERT_TRUE(fd) << hex(n) << ": " << errno_string(errno);
    ASSERT_EQ(write_all(fd.get(), "content of " + n), "") << hex(n);
  }
  // One byte too long: ENAMETOOLONG for every way of making it.
  const std::string too_long(256, 'b');
  EXPECT_FALSE(open_fd(m.at(too_long), O_WRONLY | O_CREAT));
  EXPECT_EQ(errno, ENAMETOOLONG) << errno_string(errno);
  EXPECT_EQ(::mkdir(m.at(too_long).c_str(), 0755), -1);
  EXPECT_EQ(errno, ENAMETOOLONG) << errno_string(errno);
  EXPECT_EQ(::mknod(m.at(too_long).c_str(), S_IFREG | 0644, 0), -1);
  EXPECT_EQ(errno, ENAMETOOLONG) << errno_string(errno);
  EXPECT_EQ(::rename(m.at(names[0]).c_str(), m.at(too_long).c_str()), -1);
  EXPECT_EQ(errno, ENAMETOOLONG) << errno_string(errno);
  EXPECT_EQ(stat_err(m.at(too_long)), ENAMETOOLONG);

  // Deep directories: a path of PATH_MAX - 1 bytes works; PATH_MAX is the
  // kernel's ENAMETOOLONG; past PATH_MAX relative to a directory descriptor
  // it works too, but socket clients cannot see it (4096-byte path limit).
  std::string rel;
  int depth = 0;
  // Whole path = mount + "/" + rel + "/" + last name = PATH_MAX - 1 bytes,
  // with the last name at most 255.
  while (PATH_MAX - 2 - (m.path().size() + 1 + rel.size()) > 255) {
    rel += (rel.empty() ? "" : "/") + std::string(250, static_cast<char>('a' + depth % 26));
    ASSERT_EQ(::mkdir(m.at(rel).c_str(), 0755), 0) << rel.size() << ": " << errno_string(errno);
    ++depth;
  }
  const std::size_t room = PATH_MAX - 1 - (m.path().size() + 1 + rel.size() + 1);
  const std::string deep = rel + "/" + std::string(room, 'z');
  ASSERT_EQ(m.at(deep).size(), static_cast<std::size_t>(PATH_MAX - 1));
  write_file(m.at(deep), "deep");
  struct stat st{};
  EXPECT_EQ(stat_err(m.at(deep), &st), 0);
  EXPECT_EQ(st.st_size, 4);
  EXPECT_EQ(stat_err(m.at(deep + "y")), ENAMETOOLONG) << "PATH_MAX bytes";
  UniqueFd dir(::open(m.at(rel).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(dir);
  const std::string beyond_dirs = std::string(250, '1') + "/" + std::string(250, '2');
  ASSERT_EQ(::mkdirat(dir.get(), std::string(250, '1').c_str(), 0755), 0);
  ASSERT_EQ(::mkdirat(dir.get(), beyond_dirs.c_str(), 0755), 0);
  const std::string beyond = beyond_dirs + "/far";
  {
    UniqueFd f(::openat(dir.get(), beyond.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
    ASSERT_TRUE(f) << errno_string(errno);
    ASSERT_EQ(write_all(f.get(), "far away"), "");
  }
  const std::string beyond_rel = rel + "/" + beyond;
  ASSERT_GT(beyond_rel.size(), 4096u);

  // status --json: valid JSON, every name recoverable byte for byte.
  RunResult status = run({capturefs_binary(), "status", "--socket", m.socket_path(), "--json"}, 20s);
  ASSERT_TRUE(status.ok()) << status.describe();
  std::set<std::string> status_hex;
  for (const auto& l : decode_json_lines(m, "status", status.out)) status_hex.insert(words(l).at(2));
  for (const auto& n : names) EXPECT_TRUE(status_hex.count(hex(n))) << "status --json lost " << hex(n) << "\n" << status.out;
  EXPECT_TRUE(status_hex.count(hex(deep))) << "status --json lost the PATH_MAX path";
  EXPECT_FALSE(status_hex.count(hex(beyond_rel))) << "a path over 4096 bytes cannot be sent";
  // The table: one line per stream whatever the name holds.
  RunResult table = run({capturefs_binary(), "status", "--socket", m.socket_path()}, 20s);
  ASSERT_TRUE(table.ok()) << table.describe();
  EXPECT_EQ(lines_of(table.out).size(), 1 + status_hex.size()) << table.out;
  EXPECT_TRUE(contains(table.out, "line1\\nline2")) << table.out;
  EXPECT_TRUE(contains(table.out, "\\xff\\xfe\\x80")) << table.out;

  // `capturefs cat` takes a name with a newline and invalid UTF-8 exactly.
  RunResult got = run({capturefs_binary(), "cat", "--socket", m.socket_path(), names[4]}, 20s);
  EXPECT_TRUE(got.ok()) << got.describe();
  EXPECT_EQ(got.out, "content of " + names[4]);
  // The others: read through the mount (the name leaves after EOF).
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i == 4) continue;
    EXPECT_EQ(cat(m.at(names[i])), "content of " + names[i]) << hex(names[i]);
  }
  EXPECT_EQ(cat(m.at(deep)), "deep");
  {
    UniqueFd f(::openat(dir.get(), beyond.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(f);
    EXPECT_EQ(read_to_eof(f.get()), "far away");
  }
  dir.reset();

  // watch: an opened and a closed line for each, valid JSON, exact bytes.
  std::map<std::string, std::set<std::string>> events;  // hex -> events
  ASSERT_TRUE(eventually(
      [&] {
        events.clear();
        std::string text = read_file(m.scratch("watch.jsonl"));
        text = text.substr(0, text.rfind('\n') + 1);  // whole lines only
        write_file(m.scratch("watch.snapshot"), text);
        SpawnOptions o;
        o.stdin_path = m.scratch("watch.snapshot");
        RunResult r = run(tool({"jsonpaths"}), 30s, o);
        if (!r.ok()) return false;
        for (const auto& l : lines_of(r.out)) {
          auto w = words(l);
          if (w.size() == 3) events[w[2]].insert(w[0]);
        }
        for (const auto& n : names)
          if (events[hex(n)].size() != 2) return false;
        return events[hex(deep)].size() == 2;
      },
      20s))
      << tail(read_file(m.scratch("watch.jsonl")));
  for (const auto& n : names) EXPECT_EQ(events[hex(n)], (std::set<std::string>{"opened", "closed"})) << hex(n);
  EXPECT_EQ(events.count(hex(beyond_rel)), 0u);
  const std::string wj = read_file(m.scratch("watch.jsonl"));
  EXPECT_TRUE(contains(wj, "\"path\":\"line1\\nline2\"")) << wj;
  EXPECT_TRUE(contains(wj, "\"path\":\"\\u00ff\\u00fe\\u0080\",\"path_base64\":\"//6A\"")) << wj;
  EXPECT_TRUE(contains(wj, "\"path\":\"\\\\u00ff\"")) << "a literal backslash-u name must stay distinguishable";
  watch.kill_and_reap();
  std::cout << "[faults] hostile names: " << names.size() << " names + a PATH_MAX-1 path + a " << beyond_rel.size()
            << "-byte path (hidden from socket clients); 256-byte names: ENAMETOOLONG (open, mkdir, mknod, rename)"
            << std::endl;
}

// =====================================================================
// 8. Rename cycles and renamed directories with open streams.
// =====================================================================

TEST(Faults, RenameCyclesAndDirectoryRenamesKeepDataFlowingToTheFinalPath) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m({}, /*with_socket=*/true);
  ASSERT_EQ(::mkdir(m.at("cyc").c_str(), 0755), 0);
  Consumer c(m, "renames", {"cyc/s*", "*x"}, {"--quiet"});
  ASSERT_TRUE(c.wait([](auto& w) { return has_word0(w, "subscribed"); }));

  // (a) a→b→c→a, three rounds, writing between renames; socket consumer.
  std::string written;
  UniqueFd w = open_fd(m.at("cyc/sa"), O_WRONLY | O_CREAT | O_EXCL);
  ASSERT_TRUE(w);
  ASSERT_EQ(write_all(w.get(), "0"), "");  // OPENED comes with the first bytes
  written += "0";
  ASSERT_TRUE(c.wait([](auto& x) { return has_word0(x, "opened"); }));
  const std::vector<std::string> cycle = {"cyc/sa", "cyc/sb", "cyc/sc", "cyc/sa"};
  int renames = 0;
  for (int round = 0; round < 3; ++round) {
    for (std::size_t i = 0; i + 1 < cycle.size(); ++i) {
      const std::string chunk = payload("round " + std::to_string(round) + " step " + std::to_string(i), 200000 + i);
      ASSERT_EQ(write_all(w.get(), chunk), "");
      written += chunk;
      ASSERT_EQ(::rename(m.at(cycle[i]).c_str(), m.at(cycle[i + 1]).c_str()), 0) << errno_string(errno);
      ++renames;
      EXPECT_EQ(stat_err(m.at(cycle[i])), cycle[i] == cycle[i + 1] ? 0 : ENOENT);
    }
  }
  ASSERT_EQ(::rename(m.at("cyc/sa").c_str(), m.at("cyc/sfinal").c_str()), 0);
  ++renames;
  const std::string last = payload("after the last rename", 123457);
  ASSERT_EQ(write_all(w.get(), last), "");
  written += last;
  w.reset();

  // (b) the same with a reader through the mount holding its descriptor.
  std::string written_r;
  UniqueFd wr = open_fd(m.at("cyc/ra"), O_WRONLY | O_CREAT | O_EXCL);
  ASSERT_TRUE(wr);
  SpawnOptions ro;
  ro.stdout_path = m.scratch("ra.out");
  Child reader = Child::spawn({"cat", m.at("cyc/ra")}, ro);
  // It has the file open once it waits for the first byte.
  ASSERT_TRUE(wait_blocked_in(reader.pid(), Io::Read, m.path()).blocked);
  const std::vector<std::string> rcycle = {"cyc/ra", "cyc/rb", "cyc/rc", "cyc/ra", "cyc/rb"};
  for (std::size_t i = 0; i + 1 < rcycle.size(); ++i) {
    const std::string chunk = payload("reader step " + std::to_string(i), 150000);
    ASSERT_EQ(write_all(wr.get(), chunk), "");
    written_r += chunk;
    ASSERT_EQ(::rename(m.at(rcycle[i]).c_str(), m.at(rcycle[i + 1]).c_str()), 0);
  }
  wr.reset();
  EXPECT_TRUE(exited_with(reader.wait_or_kill(30s), 0)) << reader.err();
  EXPECT_EQ(sha256_of(m.scratch("ra.out")), sha256_of_data(written_r));
  EXPECT_TRUE(eventually([&] { return stat_err_elsewhere(m.at("cyc/rb")) == ENOENT; }, 10s)) << "read to EOF: the final name goes";

  // (c) a directory holding open streams is renamed twice, into another one.
  ASSERT_EQ(::mkdir(m.at("d1").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(m.at("d1/sub").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(m.at("d3").c_str(), 0755), 0);
  UniqueFd wx = open_fd(m.at("d1/x"), O_WRONLY | O_CREAT | O_EXCL);
  UniqueFd wy = open_fd(m.at("d1/sub/y"), O_WRONLY | O_CREAT | O_EXCL);
  ASSERT_TRUE(wx && wy);
  SpawnOptions yo;
  yo.stdout_path = m.scratch("y.out");
  Child ycat = Child::spawn({"cat", m.at("d1/sub/y")}, yo);
  ASSERT_TRUE(wait_blocked_in(ycat.pid(), Io::Read, m.path()).blocked);
  std::string wrote_x, wrote_y;
  auto more = [&](const std::string& tag) {
    const std::string a = payload("x " + tag, 300001), b = payload("y " + tag, 250003);
    ASSERT_EQ(write_all(wx.get(), a), "");
    ASSERT_EQ(write_all(wy.get(), b), "");
    wrote_x += a;
    wrote_y += b;
  };
  more("in d1");
  ASSERT_EQ(::rename(m.at("d1").c_str(), m.at("d2").c_str()), 0);
  EXPECT_EQ(stat_err(m.at("d1/x")), ENOENT);
  more("in d2");
  ASSERT_EQ(::rename(m.at("d2").c_str(), m.at("d3/inner").c_str()), 0);
  more("in d3/inner");
  struct stat st{};
  ASSERT_EQ(stat_err(m.at("d3/inner/x"), &st), 0);
  EXPECT_EQ(static_cast<std::size_t>(st.st_size), wrote_x.size());
  EXPECT_EQ(::rmdir(m.at("d3/inner").c_str()), -1);
  EXPECT_EQ(errno, ENOTEMPTY);
  wx.reset();
  wy.reset();
  EXPECT_TRUE(exited_with(ycat.wait_or_kill(30s), 0)) << ycat.err();
  EXPECT_EQ(sha256_of(m.scratch("y.out")), sha256_of_data(wrote_y));

  ASSERT_TRUE(eventually(
      [&] {
        auto l = c.log();
        int closed = 0;
        for (const auto& [id, s] : l.streams) closed += s.closed ? 1 : 0;
        return closed == 2;
      },
      30s))
      << c.text();
  const auto log = c.log();
  const auto* s = log.by_path("cyc/sfinal");
  ASSERT_NE(s, nullptr) << c.text();
  EXPECT_EQ(s->status, "complete");
  EXPECT_EQ(s->total, written.size());
  EXPECT_EQ(s->sha, sha256_of_data(written));
  EXPECT_EQ(s->renames.size(), static_cast<std::size_t>(renames)) << c.text();
  const auto* x = log.by_path("d3/inner/x");
  ASSERT_NE(x, nullptr) << "the consumer of d1/x was not told its final path:\n" << c.text();
  EXPECT_EQ(x->status, "complete");
  EXPECT_EQ(x->sha, sha256_of_data(wrote_x));
  EXPECT_EQ(x->renames, (std::vector<std::string>{"d2/x", "d3/inner/x"}));
  EXPECT_TRUE(eventually([&] { return stat_err_elsewhere(m.at("d3/inner/x")) == ENOENT && stat_err_elsewhere(m.at("cyc/sfinal")) == ENOENT; },
                         10s));
  c.proc.kill_and_reap();
  std::cout << "[faults] renames: " << renames << " renames of a consumed stream (" << written.size()
            << " bytes), 4 of a read one (" << written_r.size() << "), 2 of a directory with 2 open streams ("
            << wrote_x.size() + wrote_y.size() << " bytes); all intact" << std::endl;
}

// =====================================================================
// 9. The socket: other uids, idle clients.
// =====================================================================

std::size_t fds_of(pid_t pid) { return count_dir("/proc/" + std::to_string(pid) + "/fd"); }
std::size_t threads_of(pid_t pid) { return count_dir("/proc/" + std::to_string(pid) + "/task"); }

/// connect(2) to a Unix socket: the fd, or -errno.
int try_connect(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    const int e = errno;
    ::close(fd);
    return -e;
  }
  return fd;
}

TEST(Faults, SocketRefusesOtherUidsAndDropsClientsThatNeverSayHello) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m({}, /*with_socket=*/true);
  ASSERT_EQ(::chmod(m.root().c_str(), 0755), 0);  // nobody may reach the socket's directory
  write_file(m.at("secret"), "not for nobody");
  // A stream delivered while its creator (this process) lives starts the
  // daemon's process-exit watcher (one thread, a few fds): start it before
  // the baseline is taken.
  write_file(m.at("warm-up"), "x");
  ASSERT_EQ(cat(m.at("warm-up")), "x");
  const std::size_t base_fds = fds_of(m.pid());
  const std::size_t base_threads = threads_of(m.pid());

  // Idle clients first (they take the handshake timeout, 5 s, to drop):
  // 20 that send nothing, and one that says hello and then nothing.
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 20; ++i) {
    const int fd = try_connect(m.socket_path());
    ASSERT_GE(fd, 0) << errno_string(-fd);
    idle.emplace_back(fd);
  }
  ProtoClient hello_only(m.socket_path());
  // Each connection holds its socket and an eventfd.
  ASSERT_TRUE(eventually([&] { return fds_of(m.pid()) >= base_fds + 2 * 21; }, 10s))
      << "connections not accepted: " << fds_of(m.pid()) << " fds, base " << base_fds;
  const auto t_idle = Clock::now();
  // Meanwhile the daemon serves everyone else.
  RunResult s = run({capturefs_binary(), "status", "--socket", m.socket_path()}, 20s);
  EXPECT_TRUE(s.ok()) << s.describe();

  // Another uid: the socket's mode keeps it out ...
  EXPECT_EQ(as_nobody([&] {
              const int fd = try_connect(m.socket_path());
              if (fd >= 0) ::close(fd);
              return fd >= 0 ? std::string("connected") : errno_name(-fd);
            }),
            "EACCES");
  // ... and with the mode opened up, the daemon's SO_PEERCRED check does.
  ASSERT_EQ(::chmod(m.socket_path().c_str(), 0666), 0);
  const std::string refused = as_nobody([&]() -> std::string {
    const int fd = try_connect(m.socket_path());
    if (fd < 0) return "connect: " + errno_name(-fd);
    std::string got;
    const std::string hello("CAPF\x00\x01\x00\x00", 8);
    (void)!::send(fd, hello.data(), hello.size(), MSG_NOSIGNAL);  // it may be closed already
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 10000) <= 0) return "no answer: " + hex(got);
      char b[4096];
      const ssize_t n = ::read(fd, b, sizeof b);
      if (n <= 0) break;
      got.append(b, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return got;
  });
  ASSERT_EQ(::chmod(m.socket_path().c_str(), 0600), 0);
  EXPECT_EQ(refused.rfind("CAPF", 0), 0u) << hex(refused);
  EXPECT_TRUE(contains(refused, "permission denied: uid 65534")) << refused;
  EXPECT_FALSE(contains(refused, "secret")) << "another uid saw a stream";
  EXPECT_TRUE(eventually([&] { return contains(m.daemon_stderr(), "refused a connection from uid 65534"); }, 10s))
      << m.daemon_stderr();

  // The silent ones get hello + ERROR truncated and EOF after 5 s; their
  // descriptors and threads are released.
  for (auto& fd : idle) {
    std::string got;
    const auto deadline = Clock::now() + 15s;
    for (;;) {
      pollfd p{fd.get(), POLLIN, 0};
      const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
      ASSERT_GT(left, 0) << "an idle client was not dropped within 15 s";
      if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char b[4096];
      const ssize_t n = ::read(fd.get(), b, sizeof b);
      if (n <= 0) break;
      got.append(b, static_cast<std::size_t>(n));
    }
    EXPECT_EQ(got.rfind("CAPF", 0), 0u);
    EXPECT_TRUE(contains(got, "no complete hello within 5000 ms")) << got;
  }
  const auto idle_ms = std::chrono::duration_cast<Millis>(Clock::now() - t_idle).count();
  EXPECT_GE(idle_ms, 3000) << "dropped too early";
  idle.clear();
  EXPECT_TRUE(eventually([&] { return fds_of(m.pid()) <= base_fds + 2 && threads_of(m.pid()) <= base_threads + 1; }, 10s))
      << "fds " << fds_of(m.pid()) << " (base " << base_fds << "), threads " << threads_of(m.pid()) << " (base "
      << base_threads << ")";
  // After its hello a client may stay idle (documented): it is still served.
  hello_only.send(proto::StatusRequest{});
  auto reply = hello_only.expect<proto::StatusReply>();
  EXPECT_EQ(reply.streams.size(), 1u);
  EXPECT_EQ(cat(m.at("secret")), "not for nobody");
  std::cout << "[faults] socket: 20 silent clients dropped after " << idle_ms << " ms, fds/threads back to "
            << base_fds << "/" << base_threads << " (+1 for the idle client after hello); uid 65534 refused twice"
            << std::endl;
}

// =====================================================================
// 10. allow_other and default_permissions.
// =====================================================================

TEST(Faults, OtherUsersAreKeptOutWithoutAllowOtherAndByModeWithIt) {
  CAPTUREFS_REQUIRE_FUSE();
  {
    Mount m;
    ASSERT_EQ(::chmod(m.root().c_str(), 0755), 0);
    write_file(m.at("pub"), "public");
    ASSERT_EQ(::chmod(m.at("pub").c_str(), 0644), 0);
    EXPECT_EQ(as_nobody([&] { return errno_name(stat_err(m.path())); }), "EACCES");
    EXPECT_EQ(as_nobody([&] {
                UniqueFd f = open_fd(m.at("pub"), O_RDONLY);
                return f ? std::string("opened") : errno_name(errno);
              }),
              "EACCES");
    EXPECT_EQ(cat(m.at("pub")), "public") << "root was kept out too";
  }
  Mount m({"-o", "allow_other"});
  ASSERT_EQ(::chmod(m.root().c_str(), 0755), 0);
  std::string opts;
  ASSERT_TRUE(is_mountpoint(m.path()));
  for (const auto& l : lines_of(read_file("/proc/self/mounts")))
    if (contains(l, " " + m.path() + " ")) opts = l;
  EXPECT_TRUE(contains(opts, "allow_other")) << opts;
  EXPECT_TRUE(contains(opts, "default_permissions")) << opts;
  {
    UniqueFd f = open_fd(m.at("private"), O_WRONLY | O_CREAT | O_EXCL, 0600);
    ASSERT_TRUE(f);
    ASSERT_EQ(write_all(f.get(), "private bytes"), "");
  }
  {
    UniqueFd f = open_fd(m.at("public"), O_WRONLY | O_CREAT | O_EXCL, 0644);
    ASSERT_TRUE(f);
    ASSERT_EQ(write_all(f.get(), "public bytes"), "");
  }
  struct stat st{};
  ASSERT_EQ(stat_err(m.at("private"), &st), 0);
  ASSERT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(as_nobody([&] {
              const int e = stat_err(m.at("private"));
              return e == 0 ? std::string("ok") : errno_name(e);
            }),
            "ok")
      << "stat is allowed (the root is 0755)";
  EXPECT_EQ(as_nobody([&] {
              UniqueFd f = open_fd(m.at("private"), O_RDONLY);
              return f ? "read: " + read_to_eof(f.get()) : errno_name(errno);
            }),
            "EACCES");
  EXPECT_EQ(as_nobody([&] {
              UniqueFd f = open_fd(m.at("public"), O_WRONLY | O_APPEND);
              return f ? std::string("opened for writing") : errno_name(errno);
            }),
            "EACCES");
  EXPECT_EQ(as_nobody([&] {
              UniqueFd f = open_fd(m.at("theirs"), O_WRONLY | O_CREAT, 0644);
              return f ? std::string("created") : errno_name(errno);
            }),
            "EACCES")
      << "the mount root must not be writable by others";
  EXPECT_EQ(as_nobody([&] {
              UniqueFd f = open_fd(m.at("public"), O_RDONLY);
              return f ? "read: " + read_to_eof(f.get()) : errno_name(errno);
            }),
            "read: public bytes");
  EXPECT_EQ(stat_err_elsewhere(m.at("public")), ENOENT) << "nobody read it to EOF: the name goes";
  EXPECT_EQ(cat(m.at("private")), "private bytes");
}

}  // namespace
}  // namespace capturefs::test
