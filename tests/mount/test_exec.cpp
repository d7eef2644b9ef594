// `capturefs mount --exec CMD`: a command per file, fed the file on stdin.
// Real daemons, real commands (sh, gzip, cat, dd), real writers.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "mount_fixture.hpp"

namespace capturefs::test {
namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;

// Children of `pid` (all its threads'), from /proc: the commands it started
// and has not reaped yet.
std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> out;
  const std::string task = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& tid : list_dir(task)) {
    std::istringstream in(read_file(task + "/" + tid + "/children"));
    pid_t c = 0;
    while (in >> c) out.push_back(c);
  }
  return out;
}

// The daemon's log lines that contain `needle`.
std::vector<std::string> log_lines(const std::string& log, const std::string& needle) {
  std::vector<std::string> out;
  std::istringstream in(log);
  std::string line;
  while (std::getline(in, line))
    if (line.find(needle) != std::string::npos) out.push_back(line);
  return out;
}

std::string tail(const std::string& s, std::size_t n = 4000) {
  return s.size() > n ? "..." + s.substr(s.size() - n) : s;
}

// Waits until the daemon's stderr has `n` lines containing `needle`.
bool wait_log_count(Mount& m, const std::string& needle, std::size_t n, Millis timeout) {
  return eventually([&] { return log_lines(m.daemon_stderr(), needle).size() >= n; }, timeout, 5ms);
}

void write_whole(const std::string& path, const std::string& data) {
  UniqueFd fd = open_fd(path, O_WRONLY | O_CREAT | O_EXCL);
  ASSERT_TRUE(fd) << path << ": " << errno_string(errno);
  ASSERT_EQ(write_all(fd.get(), data), "") << path;
  ASSERT_EQ(fd.reset(), 0) << path;
}

// The example of docs/exec.md: gzip every file into an archive directory, named
// after its path. 50 files, some in subdirectories.
TEST(Exec, GzipEachFileIntoAnArchive) {
  CAPTUREFS_REQUIRE_FUSE();
  TempDir archive("capturefs-exec-archive");
  Mount m({"-v", "--exec", "gzip -c > " + archive.path() + "/\"$(echo \"$CAPTUREFS_PATH\" | tr / _)\".gz"});
  ASSERT_EQ(::mkdir(m.at("d1").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(m.at("d1/d2").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(m.at("logs").c_str(), 0755), 0);

  std::map<std::string, std::string> files;
  for (int i = 0; i < 50; ++i) {
    std::string rel = i % 5 == 0   ? "d1/d2/f" + std::to_string(i) + ".txt"
                      : i % 3 == 0 ? "logs/f" + std::to_string(i) + ".log"
                                   : "f" + std::to_string(i) + ".dat";
    const std::size_t size = i == 0 ? 0 : i == 1 ? 1 : static_cast<std::size_t>(i) * i * 431 % (1 << 20);
    files[rel] = payload(rel, size);
  }
  for (const auto& [rel, data] : files) {
    if (!data.empty()) {
      write_whole(m.at(rel), data);
      continue;
    }
    // An empty file ends when the process that created it is gone (it might
    // reopen it), so a short-lived process creates it, as a tool would.
    RunResult r = run({"/bin/sh", "-c", ": > \"$1\"", "sh", m.at(rel)});
    ASSERT_TRUE(r.ok()) << r.describe();
  }

  ASSERT_TRUE(wait_log_count(m, "': exit 0", files.size(), 60s)) << tail(m.daemon_stderr());
  for (const auto& [rel, data] : files) {
    std::string flat = rel;
    std::replace(flat.begin(), flat.end(), '/', '_');
    const RunResult r = run({"gunzip", "-c", archive.at(flat + ".gz")}, 30s);
    ASSERT_TRUE(r.ok()) << rel << ": " << r.describe();
    EXPECT_EQ(r.out.size(), data.size()) << rel;
    EXPECT_TRUE(r.out == data) << rel << ": the archive does not hold the bytes written";
    EXPECT_EQ(log_lines(m.daemon_stderr(), "capturefs: info: exec '" + rel + "': exit 0").size(), 1U) << rel;
  }
  EXPECT_EQ(list_dir(archive.path()).size(), files.size());
  EXPECT_TRUE(log_lines(m.daemon_stderr(), "warning").empty()) << tail(m.daemon_stderr());
}

// A command that exits without reading: the writer gets EPIPE at once and
// does not hang; the daemon says so, naming the path, and carries on.
TEST(Exec, CommandExitingAtOnceGivesTheWriterEpipe) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m({"--max-memory", "16M", "--max-stream", "4M", "--exec", "exit 0", "--exec-glob", "*.bin"});

  const RunResult dd = run({"dd", "if=/dev/zero", "of=" + m.at("big.bin"), "bs=64K", "count=256"}, 30s);
  EXPECT_EQ(dd.code(), 1) << dd.describe();
  EXPECT_NE(dd.err.find("Broken pipe"), std::string::npos) << dd.describe();
  EXPECT_LT(dd.elapsed, 10s) << "the writer was not told promptly";
  ASSERT_TRUE(wait_log_count(m, "exec 'big.bin': command exited before reading all input", 1, 10s))
      << tail(m.daemon_stderr());
  ASSERT_TRUE(wait_log_count(m, "exec 'big.bin': exit 0 (input incomplete", 1, 10s)) << tail(m.daemon_stderr());

  // Still healthy: a file the command does not take reads back whole ...
  const std::string text = payload("ok", 100000);
  write_whole(m.at("ok.txt"), text);
  EXPECT_EQ(cat(m.at("ok.txt")), text);
  // ... and the next matching one gets the same treatment.
  const RunResult dd2 = run({"dd", "if=/dev/zero", "of=" + m.at("big2.bin"), "bs=64K", "count=256"}, 30s);
  EXPECT_EQ(dd2.code(), 1) << dd2.describe();
  EXPECT_NE(dd2.err.find("Broken pipe"), std::string::npos) << dd2.describe();
  EXPECT_TRUE(wait_log_count(m, "exec 'big2.bin': command exited before reading all input", 1, 10s))
      << tail(m.daemon_stderr());
  EXPECT_FALSE(m.daemon_exited());
}

// Names made to be dangerous when pasted into a shell command. Each would
// create a marker file next to the mountpoint (CAPTUREFS_MOUNT without
// its "mnt") if the daemon ever let a shell parse it.
std::vector<std::string> hostile_names() {
  return {
      "$(touch \"${CAPTUREFS_MOUNT%mnt}pwned1\")",
      "`touch \"${CAPTUREFS_MOUNT%mnt}pwned2\"`",
      "x; touch \"${CAPTUREFS_MOUNT%mnt}pwned3\"; y",
      "'\"; touch ${CAPTUREFS_MOUNT%mnt}pwned4 #",
      "new\nline$(touch \"${CAPTUREFS_MOUNT%mnt}pwned5\")",
  };
}

void expect_no_marker(const Mount& m) {
  for (int i = 1; i <= 5; ++i) {
    const std::string marker = m.scratch("pwned" + std::to_string(i));
    EXPECT_NE(stat_err(marker), 0) << marker << " exists: a file name was run as shell code";
  }
}

TEST(Exec, HostileNamesAreNeverRunAsCode) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m({"-v", "--exec", "cat > /dev/null"});
  // Control: pasted into a shell command, the first name does create its
  // marker, so the absence below means something.
  {
    SpawnOptions o;
    o.env = {"CAPTUREFS_MOUNT=" + m.path()};
    ASSERT_TRUE(sh("true " + hostile_names()[0], 10s, o).ok());
    ASSERT_EQ(stat_err(m.scratch("pwned1")), 0) << "the control did not create its marker";
    ASSERT_EQ(::unlink(m.scratch("pwned1").c_str()), 0);
  }
  const auto names = hostile_names();
  for (const auto& name : names) write_whole(m.at(name), "content of " + name);
  ASSERT_TRUE(wait_log_count(m, ": exit 0", names.size(), 30s)) << tail(m.daemon_stderr());
  expect_no_marker(m);
  // The log names them literally (quotes and newlines escaped).
  const std::string log = m.daemon_stderr();
  EXPECT_EQ(log_lines(log, "exec '$(touch \"${CAPTUREFS_MOUNT%mnt}pwned1\")': exit 0").size(), 1U) << log;
  EXPECT_EQ(log_lines(log, "exec 'new\\nline$(touch").size(), 1U) << log;
  EXPECT_EQ(log_lines(log, "exec '\\'\"; touch ${CAPTUREFS_MOUNT%mnt}pwned4 #': exit 0").size(), 1U) << log;
  EXPECT_TRUE(log_lines(log, "warning").empty()) << log;
}

TEST(Exec, HostileNamesReachTheCommandLiterally) {
  CAPTUREFS_REQUIRE_FUSE();
  TempDir out("capturefs-exec-out");
  const std::string names_file = out.at("names");
  Mount m({"-v", "--exec", "printf '%s\\0' \"$CAPTUREFS_PATH\" >> " + names_file + "; cat > /dev/null"});
  const auto names = hostile_names();
  for (const auto& name : names) write_whole(m.at(name), "x");
  ASSERT_TRUE(wait_log_count(m, ": exit 0", names.size(), 30s)) << tail(m.daemon_stderr());
  expect_no_marker(m);
  std::set<std::string> got;
  std::istringstream in(read_file(names_file));
  std::string one;
  while (std::getline(in, one, '\0')) got.insert(one);
  EXPECT_EQ(got, std::set<std::string>(names.begin(), names.end()));
}

// --exec-jobs 2: two commands at a time; the others start as those end.
TEST(Exec, AtMostJobsCommandsRunAtOnce) {
  CAPTUREFS_REQUIRE_FUSE();
  TempDir out("capturefs-exec-out");
  const std::string log = out.at("log");
  Mount m({"-v", "--exec-jobs", "2", "--exec",
           "echo \"start $CAPTUREFS_PATH $CAPTUREFS_WRITER_PID $CAPTUREFS_MOUNT\" >> " + log +
               "; cat > /dev/null; echo \"end $CAPTUREFS_PATH\" >> " + log});
  std::size_t most = 0;
  auto sample = [&] {
    most = std::max(most, children_of(m.pid()).size());
    return read_file(log);
  };
  auto count = [&](const std::string& word) {
    std::size_t n = 0;
    for (const auto& line : log_lines(sample(), word + " ")) n += line.rfind(word + " ", 0) == 0 ? 1 : 0;
    return n;
  };

  constexpr int kFiles = 5;
  std::map<std::string, UniqueFd> held;
  for (int i = 0; i < kFiles; ++i) {
    const std::string rel = "held" + std::to_string(i);
    held[rel] = open_fd(m.at(rel), O_WRONLY | O_CREAT | O_EXCL);
    ASSERT_TRUE(held[rel]) << errno_string(errno);
    ASSERT_EQ(write_all(held[rel].get(), "line of " + rel + "\n"), "");
  }
  ASSERT_TRUE(eventually([&] { return count("start") == 2; }, 10s)) << read_file(log);
  EXPECT_EQ(children_of(m.pid()).size(), 2U);
  // The three others wait, their bytes buffered.
  for (const auto& [rel, fd] : held) {
    if (read_file(log).find("start " + rel + " ") != std::string::npos) continue;
    struct stat st{};
    ASSERT_EQ(stat_err(m.at(rel), &st), 0) << rel;
    EXPECT_EQ(static_cast<std::size_t>(st.st_size), ("line of " + rel + "\n").size()) << rel;
  }
  for (int done = 1; done <= kFiles; ++done) {
    // End one of the running streams: its command ends, the next starts.
    std::string running;
    for (const auto& line : log_lines(read_file(log), "start ")) {
      std::istringstream in(line);
      std::string w, rel;
      in >> w >> rel;
      if (held[rel]) {
        running = rel;
        break;
      }
    }
    ASSERT_FALSE(running.empty()) << read_file(log);
    held[running].reset();
    const std::size_t want_starts = std::min(kFiles, done + 2);
    ASSERT_TRUE(eventually([&] { return count("end") == static_cast<std::size_t>(done) && count("start") == want_starts; },
                           10s))
        << "after closing " << running << ":\n" << read_file(log);
  }
  ASSERT_TRUE(wait_log_count(m, ": exit 0", kFiles, 10s)) << tail(m.daemon_stderr());

  // In the order things happened, never more than two started and not ended.
  int now = 0, peak = 0;
  for (const auto& line : log_lines(read_file(log), "")) {
    if (line.rfind("start ", 0) == 0) peak = std::max(peak, ++now);
    if (line.rfind("end ", 0) == 0) --now;
  }
  EXPECT_EQ(peak, 2) << read_file(log);
  EXPECT_LE(most, 2U) << "the daemon had more than two commands alive";
  EXPECT_GE(most, 2U);
  // The environment: the writer (this test) and the mountpoint.
  for (const auto& line : log_lines(read_file(log), "start ")) {
    EXPECT_NE(line.find(" " + std::to_string(::getpid()) + " " + m.path()), std::string::npos) << line;
  }
}

// Exit statuses are logged with the path: success at info level (-v),
// failure and death by signal as warnings.
TEST(Exec, ExitStatusesAreLoggedWithThePath) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m({"-v", "--exec",
           "cat > /dev/null; case \"$CAPTUREFS_PATH\" in *ok*) exit 0;; *kill*) kill -KILL $$;; *) exit 3;; esac"});
  ASSERT_EQ(::mkdir(m.at("dir").c_str(), 0755), 0);
  write_whole(m.at("dir/st.txt"), payload("st", 5000));
  write_whole(m.at("dir/ok.txt"), payload("ok", 5000));
  write_whole(m.at("kill.txt"), payload("kill", 5000));
  EXPECT_TRUE(wait_log_count(m, "capturefs: warning: exec 'dir/st.txt': exit 3", 1, 20s)) << tail(m.daemon_stderr());
  EXPECT_TRUE(wait_log_count(m, "capturefs: info: exec 'dir/ok.txt': exit 0", 1, 20s)) << tail(m.daemon_stderr());
  EXPECT_TRUE(wait_log_count(m, "capturefs: warning: exec 'kill.txt': killed by signal 9 (SIGKILL)", 1, 20s))
      << tail(m.daemon_stderr());
}

// The line of `capturefs status` output that contains all of `needles`
// ("" if none, or more than one).
std::string line_with(const std::string& out, std::initializer_list<std::string> needles) {
  std::vector<std::string> found;
  for (const auto& line : log_lines(out, "")) {
    if (std::all_of(needles.begin(), needles.end(),
                    [&](const std::string& n) { return line.find(n) != std::string::npos; }))
      found.push_back(line);
  }
  return found.size() == 1 ? found[0] : "";
}

// The `status --json` line of the command (or stream) with this path (JSON-escaped).
std::string command_json(const std::string& out, const std::string& path) {
  return line_with(out, {"{\"kind\":\"command\",", "\"path\":\"" + path + "\","});
}
std::string stream_json(const std::string& out, const std::string& path) {
  return line_with(out, {"{\"kind\":\"stream\",", "\"path\":\"" + path + "\","});
}

// `capturefs status` (socket, --json and the table) lists the commands of
// --exec: path, pid, state (exit status, signal), bytes fed to stdin, and
// whether the input was cut short; names are escaped as for streams.
TEST(Exec, StatusShowsTheCommandsWithTheirExitStatuses) {
  CAPTUREFS_REQUIRE_FUSE();
  TempDir out("capturefs-exec-out");
  Mount m({"-v", "--exec-jobs", "4", "--max-memory", "16M", "--max-stream", "4M", "--exec-glob", "*.txt",
           "--exec-glob", "*.bin", "--exec",
           "case \"$CAPTUREFS_PATH\" in\n"
           "  *cut*) exit 0;;\n"
           "  *fail*) echo $$ > " + out.at("fail.pid") + "; cat > /dev/null; exit 3;;\n"
           "  *kill*) cat > /dev/null; kill -KILL $$;;\n"
           "  *) cat > /dev/null;;\n"
           "esac"},
          /*with_socket=*/true);
  const std::string bin = capturefs_binary();
  auto status = [&](bool json) {
    std::vector<std::string> argv = {bin, "status", "--socket", m.socket_path()};
    if (json) argv.push_back("--json");
    return run(argv, 30s);
  };
  const std::string hostile = "new\nline\x1b[1m.txt";

  ASSERT_EQ(::mkdir(m.at("dir").c_str(), 0755), 0);
  write_whole(m.at("dir/fail.txt"), payload("fail", 5000));
  ASSERT_TRUE(wait_log_count(m, "exec 'dir/fail.txt': exit 3", 1, 20s)) << tail(m.daemon_stderr());
  write_whole(m.at("ok.txt"), payload("ok", 7000));
  ASSERT_TRUE(wait_log_count(m, "exec 'ok.txt': exit 0", 1, 20s)) << tail(m.daemon_stderr());
  write_whole(m.at("kill.txt"), payload("kill", 100));
  const RunResult dd = run({"dd", "if=/dev/zero", "of=" + m.at("cut.bin"), "bs=64K", "count=256"}, 30s);
  EXPECT_NE(dd.err.find("Broken pipe"), std::string::npos) << dd.describe();
  write_whole(m.at(hostile), "x");
  write_whole(m.at("held.dat"), "not for a command");  // a stream, for the streams' table
  ASSERT_TRUE(wait_log_count(m, "exec 'kill.txt': killed by signal 9", 1, 20s)) << tail(m.daemon_stderr());
  ASSERT_TRUE(wait_log_count(m, "exec 'cut.bin': exit 0 (input incomplete", 1, 20s)) << tail(m.daemon_stderr());
  ASSERT_TRUE(wait_log_count(m, "exec 'new\\nline\\x1b[1m.txt': exit 0", 1, 20s)) << tail(m.daemon_stderr());
  // A command still running (the only one): its writer is open.
  UniqueFd live = open_fd(m.at("live.txt"), O_WRONLY | O_CREAT | O_EXCL);
  ASSERT_TRUE(live) << errno_string(errno);
  ASSERT_EQ(write_all(live.get(), std::string(3000, 'l')), "");

  // JSON: one object per line, streams then commands.
  RunResult j;
  // The running command shows up once its stream was handed to it (bounded poll).
  ASSERT_TRUE(eventually(
      [&] {
        j = status(true);
        const std::string l = command_json(j.out, "live.txt");
        return j.ok() && l.find("\"bytes\":3000") != std::string::npos;
      },
      20s, 20ms))
      << j.describe();
  const std::string fail_pid = read_file(out.at("fail.pid")).substr(0, read_file(out.at("fail.pid")).find('\n'));
  ASSERT_FALSE(fail_pid.empty());
  const std::string fail = command_json(j.out, "dir/fail.txt");
  EXPECT_NE(fail.find("\"kind\":\"command\""), std::string::npos) << j.out;
  EXPECT_NE(fail.find("\"pid\":" + fail_pid + ","), std::string::npos) << fail;
  EXPECT_NE(fail.find("\"state\":\"exited\",\"exit_code\":3"), std::string::npos) << fail;
  EXPECT_NE(fail.find("\"input\":\"complete\",\"bytes\":5000"), std::string::npos) << fail;
  EXPECT_NE(fail.find("\"ended\":\""), std::string::npos) << fail;
  const std::string ok = command_json(j.out, "ok.txt");
  EXPECT_NE(ok.find("\"state\":\"exited\",\"exit_code\":0"), std::string::npos) << j.out;
  EXPECT_NE(ok.find("\"input\":\"complete\",\"bytes\":7000"), std::string::npos) << ok;
  const std::string killed = command_json(j.out, "kill.txt");
  EXPECT_NE(killed.find("\"state\":\"killed\",\"signal\":9,\"signal_name\":\"SIGKILL\""), std::string::npos)
      << j.out;
  const std::string cut = command_json(j.out, "cut.bin");
  EXPECT_NE(cut.find("\"state\":\"exited\",\"exit_code\":0"), std::string::npos) << j.out;
  EXPECT_NE(cut.find("\"input\":\"cut_short\""), std::string::npos) << cut;
  EXPECT_NE(cut.find("\"note\":\"command exited before reading all input\""), std::string::npos) << cut;
  const std::string odd = command_json(j.out, "new\\nline\\u001b[1m.txt");
  EXPECT_NE(odd.find("\"state\":\"exited\",\"exit_code\":0"), std::string::npos) << j.out;
  const std::string running = command_json(j.out, "live.txt");
  EXPECT_NE(running.find("\"state\":\"running\",\"input\":\"feeding\""), std::string::npos) << running;
  EXPECT_EQ(running.find("\"ended\""), std::string::npos) << running;
  const std::vector<pid_t> kids = children_of(m.pid());  // the others have been reaped (logged)
  ASSERT_EQ(kids.size(), 1U) << "one command alive";
  EXPECT_NE(running.find("\"pid\":" + std::to_string(kids[0]) + ","), std::string::npos) << running;
  const std::string held = stream_json(j.out, "held.dat");
  EXPECT_NE(held.find("\"kind\":\"stream\""), std::string::npos) << j.out;
  EXPECT_NE(held.find("\"state\":\"held\""), std::string::npos) << held;
  EXPECT_LT(j.out.find("\"kind\":\"stream\""), j.out.find("\"kind\":\"command\"")) << j.out;

  // The table: the streams, then the commands (paths escaped for a terminal).
  const RunResult t = status(false);
  ASSERT_TRUE(t.ok()) << t.describe();
  const std::size_t split = t.out.find("\nCMD PID");
  ASSERT_NE(split, std::string::npos) << t.out;
  const std::string streams = t.out.substr(0, split), commands = t.out.substr(split);
  auto row = [&](const std::string& path) { return line_with(commands, {"  " + path}); };
  EXPECT_NE(line_with(streams, {"  held.dat"}).find("  held  "), std::string::npos) << t.out;
  EXPECT_NE(line_with(streams, {"  live.txt"}).find("  streaming  "), std::string::npos) << t.out;
  EXPECT_NE(row("dir/fail.txt").find(fail_pid), std::string::npos) << t.out;
  EXPECT_NE(row("dir/fail.txt").find("complete    exited 3 "), std::string::npos) << t.out;
  EXPECT_NE(row("dir/fail.txt").find("4.9K"), std::string::npos) << t.out;
  EXPECT_NE(row("ok.txt").find("complete    exited 0 "), std::string::npos) << t.out;
  EXPECT_NE(row("kill.txt").find("killed by signal SIGKILL"), std::string::npos) << t.out;
  EXPECT_NE(row("cut.bin").find("cut short   exited 0 "), std::string::npos) << t.out;
  EXPECT_NE(row("new\\nline\\x1b[1m.txt").find("exited 0"), std::string::npos) << t.out;
  EXPECT_NE(row("live.txt").find("feeding     running "), std::string::npos) << t.out;
  EXPECT_EQ(t.out.find('\x1b'), std::string::npos) << "a raw escape byte reached the terminal";

  // Once the last writer closes, the running command ends and says so.
  live.reset();
  ASSERT_TRUE(wait_log_count(m, "exec 'live.txt': exit 0", 1, 20s)) << tail(m.daemon_stderr());
  const RunResult after = status(true);
  ASSERT_TRUE(after.ok()) << after.describe();
  EXPECT_NE(command_json(after.out, "live.txt").find("\"state\":\"exited\",\"exit_code\":0"),
            std::string::npos)
      << after.out;
}

// Without --exec, `status` shows no commands' table.
TEST(Exec, StatusWithoutExecHasNoCommands) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m({}, /*with_socket=*/true);
  const RunResult t = run({capturefs_binary(), "status", "--socket", m.socket_path()}, 30s);
  ASSERT_TRUE(t.ok()) << t.describe();
  EXPECT_NE(t.out.find("PATH"), std::string::npos) << t.out;
  EXPECT_EQ(t.out.find("CMD PID"), std::string::npos) << t.out;
}

// A command that does not read yet holds the writer back (the memory caps
// apply); once it reads, everything arrives.
TEST(Exec, SlowCommandHoldsTheWriterBack) {
  CAPTUREFS_REQUIRE_FUSE();
  TempDir out("capturefs-exec-out");
  const std::string gate = out.at("gate");
  ASSERT_EQ(::mkfifo(gate.c_str(), 0600), 0);
  Mount m({"-v", "--max-memory", "8M", "--max-stream", "4M", "--exec",
           "read go < " + gate + "; cat > " + out.at("copy")});
  const std::string src = out.at("src.bin");
  make_random_file(src, 24 * kMiB);

  Child dd = Child::spawn({"dd", "if=" + src, "of=" + m.at("big.bin"), "bs=1M"});
  const BlockState held = wait_writer_held(dd.pid(), m.at("big.bin"), m.path(), 30s);
  ASSERT_TRUE(held.blocked) << "the writer was not held while the command read nothing: " << held.observation;
  struct stat st{};
  ASSERT_EQ(stat_err(m.at("big.bin"), &st), 0);
  EXPECT_LT(static_cast<std::uint64_t>(st.st_size), 8 * kMiB) << "written while the command read nothing";
  EXPECT_FALSE(dd.exited());

  // The command waits in open() for reading; ENXIO until it is there.
  UniqueFd g;
  ASSERT_TRUE(eventually([&] { return static_cast<bool>(g = open_fd(gate, O_WRONLY | O_NONBLOCK)); }, 10s))
      << "the command never opened the gate: " << errno_string(errno);
  ASSERT_EQ(write_all(g.get(), "go\n"), "");
  g.reset();
  EXPECT_TRUE(exited_with(dd.wait_or_kill(60s), 0)) << dd.err();
  ASSERT_TRUE(wait_log_count(m, "exec 'big.bin': exit 0", 1, 30s)) << tail(m.daemon_stderr());
  EXPECT_EQ(sha256_of(out.at("copy")), sha256_of(src));
}

// SIGTERM while a command is being fed: the daemon unmounts, the command
// gets EOF and is reaped, and the daemon exits 0.
TEST(Exec, SigtermWhileFeedingStopsCleanly) {
  CAPTUREFS_REQUIRE_FUSE();
  TempDir out("capturefs-exec-out");
  Mount m({"-v", "--exec", "cat > " + out.at("copy")});
  const std::string part = payload("part", 300000);
  UniqueFd fd = open_fd(m.at("live.txt"), O_WRONLY | O_CREAT | O_EXCL);
  ASSERT_TRUE(fd);
  ASSERT_EQ(write_all(fd.get(), part), "");
  ASSERT_TRUE(eventually([&] { return read_file(out.at("copy")).size() == part.size(); }, 10s));

  ::kill(m.pid(), SIGTERM);
  const auto st = m.wait_exit(20s);
  ASSERT_TRUE(st.has_value()) << "the daemon did not exit after SIGTERM\n" << tail(m.daemon_stderr());
  EXPECT_TRUE(exited_with(*st, 0)) << status_string(*st) << "\n" << tail(m.daemon_stderr());
  EXPECT_FALSE(m.is_mounted());
  EXPECT_EQ(read_file(out.at("copy")), part);
  const std::string log = m.daemon_stderr();
  // Its writer still had it open: the stream ends aborted, and its
  // command is told so (EOF, logged as input incomplete with the reason).
  EXPECT_EQ(log_lines(log, "exec 'live.txt': exit 0 (input incomplete: unmounted while a writer had it open)").size(), 1U)
      << log;
  fd.reset();  // a descriptor of the gone mount
}

// Option checks, no mount needed.
TEST(ExecOptions, BadCombinationsAreRefused) {
  TempDir dir("capturefs-exec-opts");
  const std::string bin = capturefs_binary();
  const RunResult zero = run({bin, "mount", dir.path(), "--exec", "cat", "--exec-jobs", "0"}, 10s);
  EXPECT_EQ(zero.code(), 2) << zero.describe();
  EXPECT_NE(zero.err.find("--exec-jobs"), std::string::npos) << zero.describe();
  const RunResult lonely = run({bin, "mount", dir.path(), "--exec-glob", "*.x"}, 10s);
  EXPECT_EQ(lonely.code(), 2) << lonely.describe();
  EXPECT_NE(lonely.err.find("--exec"), std::string::npos) << lonely.describe();
  const RunResult empty = run({bin, "mount", dir.path(), "--exec", " "}, 10s);
  EXPECT_EQ(empty.code(), 2) << empty.describe();
  EXPECT_NE(empty.err.find("empty"), std::string::npos) << empty.describe();
  const RunResult help = run({bin, "mount", "--help"}, 10s);
  EXPECT_TRUE(help.ok()) << help.describe();
  for (const char* opt : {"--exec ", "--exec-glob", "--exec-jobs", "CAPTUREFS_PATH"})
    EXPECT_NE(help.out.find(opt), std::string::npos) << opt << " missing from mount --help";
  EXPECT_FALSE(is_mountpoint(dir.path()));
}

}  // namespace
}  // namespace capturefs::test
