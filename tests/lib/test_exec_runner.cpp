// The --exec runner (src/cli/exec.cpp) in-process, on a library mount: the
// commands it starts, what they are given, and its record of exits.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <sstream>

#include "cli/exec.hpp"
#include "lib_support.hpp"

namespace capturefs::test {
namespace {

using cli::ExecExit;
using cli::ExecHistory;
using cli::ExecOptions;
using cli::ExecRunner;

constexpr std::uint64_t kMiB = 1024 * 1024;

int exit_status(int code) { return code << 8; }  // a raw wait status for "exit code"

ExecExit exit_of(const std::string& path, int status, bool complete) {
  ExecExit e;
  e.path = path;
  e.pid = 123;
  e.status = status;
  e.input_complete = complete;
  return e;
}

const ExecExit* find_exit(const std::vector<ExecExit>& v, const std::string& path) {
  for (const auto& e : v)
    if (e.path == path) return &e;
  return nullptr;
}

TEST(ExecHistory, KeepsTheMostRecentExitsAndCountsAll) {
  ExecHistory h(3);
  EXPECT_TRUE(h.recent().empty());
  h.add(exit_of("a", exit_status(0), true));
  h.add(exit_of("b", exit_status(3), true));
  h.add(exit_of("c", exit_status(0), false));  // exit 0, but input cut short: not ok
  h.add(exit_of("d", SIGKILL, true));            // killed
  h.add(exit_of("e", exit_status(0), true));
  const auto r = h.recent();
  ASSERT_EQ(r.size(), 3U);
  EXPECT_EQ(r[0].path, "c");
  EXPECT_EQ(r[1].path, "d");
  EXPECT_EQ(r[2].path, "e");
  EXPECT_EQ(h.total(), 5U);
  EXPECT_EQ(h.failed(), 3U);
  EXPECT_EQ(h.capacity(), 3U);
}

TEST(ExecHistory, DescribesStatusesAndQuotesPathsForTheLog) {
  EXPECT_EQ(cli::describe_wait_status(exit_status(0)), "exit 0");
  EXPECT_EQ(cli::describe_wait_status(exit_status(3)), "exit 3");
  EXPECT_EQ(cli::describe_wait_status(SIGKILL), "killed by signal 9 (SIGKILL)");
  EXPECT_EQ(cli::describe_wait_status(-1), "not started");
  EXPECT_EQ(cli::log_quote("a/b.txt"), "a/b.txt");
  EXPECT_EQ(cli::log_quote("$(touch x)"), "$(touch x)");
  EXPECT_EQ(cli::log_quote("it's\nfake: line\x1b"), "it\\'s\\nfake: line\\x1b");
  EXPECT_EQ(cli::log_quote("back\\slash"), "back\\\\slash");
  EXPECT_GE(cli::cpu_count(), 1U);
}

// Commands get the stream on stdin and CAPTUREFS_* in their environment;
// every exit is recorded with its status.
TEST(ExecRunner, FeedsEachStreamToItsCommandAndRecordsTheExit) {
  CAPTUREFS_REQUIRE_DEV_FUSE();
  LibMount lm;
  const std::string out = lm.scratch("out");
  ASSERT_EQ(::mkdir(out.c_str(), 0755), 0);
  ExecOptions eo;
  const std::string base = out + "/\"$(echo \"$CAPTUREFS_PATH\" | tr / _)\"";
  eo.command = "cat > " + base + ".data && printf '%s\\n%s\\n%s\\n' \"$CAPTUREFS_PATH\" \"$CAPTUREFS_MOUNT\" "
               "\"$CAPTUREFS_WRITER_PID\" > " + base + ".env; case \"$CAPTUREFS_PATH\" in *fail*) exit 4;; esac";
  eo.jobs = 2;
  ExecRunner runner(lm.mount(), eo);
  EXPECT_EQ(runner.jobs(), 2U);

  const std::vector<FileSpec> files = {
      {"a.txt", 10, 1, 4096},        {"empty", 0, 2, 4096},           {"d/e/big.bin", 3 * kMiB + 5, 3, kMiB},
      {"d/x.fail", 70000, 4, 1000},  {"mid.bin", 300000, 5, 65536},  {"f.txt", 123, 6, 7},
  };
  Child writer = start_writer(lm.path(), files);
  EXPECT_TRUE(exited_with(writer.wait_or_kill(30s), 0)) << writer.err();
  const auto written = parse_written(writer.out());
  ASSERT_EQ(written.size(), files.size());

  ASSERT_TRUE(eventually([&] { return runner.history().total() == files.size(); }, 30s))
      << runner.history().total() << " exits recorded";
  EXPECT_TRUE(runner.running().empty());
  EXPECT_EQ(runner.history().failed(), 1U);
  const auto exits = runner.history().recent();
  for (const auto& f : files) {
    const ExecExit* e = find_exit(exits, f.rel);
    ASSERT_NE(e, nullptr) << f.rel;
    EXPECT_GT(e->pid, 0) << f.rel;
    EXPECT_TRUE(e->input_complete) << f.rel << ": " << e->note;
    EXPECT_EQ(e->bytes, f.size) << f.rel;
    const bool fail = f.rel.ends_with(".fail");
    EXPECT_EQ(e->status, exit_status(fail ? 4 : 0)) << f.rel << ": " << cli::describe_wait_status(e->status);
    EXPECT_EQ(e->ok(), !fail) << f.rel;

    std::string flat = f.rel;
    std::replace(flat.begin(), flat.end(), '/', '_');
    EXPECT_EQ(sha256_of(out + "/" + flat + ".data"), written.at(f.rel).sha256) << f.rel;
    EXPECT_EQ(read_file(out + "/" + flat + ".env"),
              f.rel + "\n" + lm.path() + "\n" + std::to_string(writer.pid()) + "\n")
        << f.rel;
  }
}

// A command that exits without reading: the writer gets EPIPE, the exit is
// recorded as not ok with the reason, and other commands are unaffected.
TEST(ExecRunner, CommandExitingEarlyGivesTheWriterEpipe) {
  CAPTUREFS_REQUIRE_DEV_FUSE();
  capturefs::Options opt;
  opt.max_memory = 16 * kMiB;
  opt.max_stream = 4 * kMiB;
  LibMount lm(opt);
  ExecOptions quitter;
  quitter.command = "exit 0";
  quitter.globs = {"*.early"};
  quitter.jobs = 1;
  ExecRunner early(lm.mount(), quitter);
  ExecOptions reader;
  reader.command = "cat > " + lm.scratch("copy");
  reader.globs = {"*.copy"};
  reader.jobs = 1;
  ExecRunner copier(lm.mount(), reader);

  Child w = start_writer_until_error(lm.at("x.early"), 32 * kMiB, 64 * 1024);
  EXPECT_TRUE(exited_with(w.wait_or_kill(30s), 0)) << "no write error: " << w.out() << w.err();
  EXPECT_EQ(w.out().substr(0, 12), "ERROR EPIPE ") << w.out();

  ASSERT_TRUE(eventually([&] { return early.history().total() == 1; }, 20s));
  const ExecExit e = early.history().recent().at(0);
  EXPECT_EQ(e.path, "x.early");
  EXPECT_FALSE(e.input_complete);
  EXPECT_EQ(e.input, cli::ExecInput::cut_short);
  EXPECT_EQ(e.note, "command exited before reading all input");
  EXPECT_EQ(e.status, exit_status(0));
  EXPECT_FALSE(e.ok());
  EXPECT_EQ(early.history().failed(), 1U);

  Child c = start_writer(lm.path(), {{"y.copy", 2 * kMiB, 8, 65536}});
  EXPECT_TRUE(exited_with(c.wait_or_kill(30s), 0)) << c.err();
  ASSERT_TRUE(eventually([&] { return copier.history().total() == 1; }, 20s));
  EXPECT_TRUE(copier.history().recent().at(0).ok()) << copier.history().recent().at(0).note;
  EXPECT_EQ(copier.history().recent().at(0).input, cli::ExecInput::complete);
  EXPECT_EQ(sha256_of(lm.scratch("copy")), parse_written(c.out()).at("y.copy").sha256);
  EXPECT_EQ(early.history().total(), 1U) << "the other runner's glob took y.copy";
}

// At most `jobs` commands at once; the other streams wait their turn.
TEST(ExecRunner, RunsAtMostJobsCommandsAtOnce) {
  CAPTUREFS_REQUIRE_DEV_FUSE();
  LibMount lm;
  ExecOptions eo;
  eo.command = "cat > /dev/null";
  eo.jobs = 2;
  ExecRunner runner(lm.mount(), eo);

  std::vector<UniqueFd> fds;
  for (int i = 0; i < 5; ++i) {
    fds.push_back(open_fd(lm.at("held" + std::to_string(i)), O_WRONLY | O_CREAT | O_EXCL));
    ASSERT_TRUE(fds.back()) << errno_string(errno);
    ASSERT_EQ(write_all(fds.back().get(), "some bytes\n"), "");
  }
  std::size_t most = 0;
  auto running_is = [&](std::size_t n) {
    const std::size_t r = runner.running().size();
    most = std::max(most, r);
    return r == n;
  };
  ASSERT_TRUE(eventually([&] { return running_is(2); }, 10s));
  for (int i = 0; i < 5; ++i) {
    // End one running stream: its command exits, and the next one starts.
    const auto running = runner.running();
    ASSERT_FALSE(running.empty());
    const int k = std::stoi(running.front().path.substr(4));
    ASSERT_TRUE(fds[static_cast<std::size_t>(k)]) << "held" << k << " was closed already";
    fds[static_cast<std::size_t>(k)].reset();
    const std::size_t want_running = std::min<std::size_t>(2, 4 - static_cast<std::size_t>(i));
    ASSERT_TRUE(eventually(
        [&] { return runner.history().total() == static_cast<std::uint64_t>(i) + 1 && running_is(want_running); },
        10s))
        << "after closing held" << k << ": " << runner.history().total() << " exits, " << runner.running().size()
        << " running";
    // What `capturefs status` shows: the ended ones and the running ones, each once.
    const cli::ExecSnapshot snap = runner.snapshot();
    EXPECT_EQ(snap.recent.size(), static_cast<std::size_t>(i) + 1);
    ASSERT_EQ(snap.running.size(), want_running);
    for (const auto& r : snap.running) {
      EXPECT_EQ(r.input, cli::ExecInput::feeding) << r.path;
      EXPECT_GT(r.pid, 0) << r.path;
      EXPECT_FALSE(find_exit(snap.recent, r.path)) << r.path << " is in both lists";
    }
    for (const auto& x : snap.recent) EXPECT_EQ(x.input, cli::ExecInput::complete) << x.path;
  }
  EXPECT_EQ(most, 2U);
  EXPECT_EQ(runner.history().total(), 5U);
  EXPECT_EQ(runner.history().failed(), 0U);
}

// stop() with a stream in progress: the command gets EOF and is reaped,
// the exit is recorded as incomplete, and the rest of the stream stays for
// the next consumer (a reader here).
TEST(ExecRunner, StopCutsInputShortAndHandsTheRestBack) {
  CAPTUREFS_REQUIRE_DEV_FUSE();
  LibMount lm;
  ExecOptions eo;
  eo.command = "cat > " + lm.scratch("part");
  eo.jobs = 1;
  auto runner = std::make_unique<ExecRunner>(lm.mount(), eo);

  const std::string part1 = payload("part1", 100000);
  const std::string part2 = payload("part2", 50000);
  UniqueFd fd = open_fd(lm.at("live.bin"), O_WRONLY | O_CREAT | O_EXCL);
  ASSERT_TRUE(fd);
  ASSERT_EQ(write_all(fd.get(), part1), "");
  ASSERT_TRUE(eventually(
      [&] {
        auto r = runner->running();
        return r.size() == 1 && r[0].bytes == part1.size();
      },
      10s));
  const auto t0 = Clock::now();
  runner->stop();
  EXPECT_LT(Clock::now() - t0, 4s) << "stop() waited for the grace period: the command did not get EOF";
  ASSERT_EQ(runner->history().total(), 1U);
  const ExecExit e = runner->history().recent().at(0);
  EXPECT_EQ(e.path, "live.bin");
  EXPECT_EQ(e.status, exit_status(0)) << cli::describe_wait_status(e.status);
  EXPECT_FALSE(e.input_complete);
  EXPECT_EQ(e.input, cli::ExecInput::incomplete);
  EXPECT_NE(e.note.find("stopped"), std::string::npos) << e.note;
  EXPECT_EQ(e.bytes, part1.size());
  EXPECT_EQ(read_file(lm.scratch("part")), part1);
  runner.reset();

  // The writer carries on; a reader gets what the command did not.
  ASSERT_EQ(write_all(fd.get(), part2), "");
  fd.reset();
  EXPECT_EQ(cat_file(lm.at("live.bin")), part2);
}

}  // namespace
}  // namespace capturefs::test
