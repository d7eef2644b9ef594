// Data flow between writers and readers: blocking reads, backpressure on
// full buffers, and signals ending a wait.
//
// "Blocked" is always established from /proc (the process sleeps inside a
// read/write syscall on a file of the mount), never assumed after a sleep.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <iostream>
#include <numeric>
#include <string>
#include <vector>

#include "mount_fixture.hpp"

namespace capturefs::test {
namespace {

constexpr std::uint64_t MiB = 1024 * 1024;
constexpr auto kPrompt = 2s;  // how soon a signalled wait must end

std::string two(int i) {
  char b[8];
  std::snprintf(b, sizeof b, "%02d", i);
  return b;
}

// ------------------------------------------------------------ readers

using ReaderFlow = MountTest;

TEST_F(ReaderFlow, ReaderGetsFirstBytesBeforeTheWriterCloses) {
  const auto p = at("live");
  UniqueFd w = open_fd(p, O_WRONLY | O_CREAT);
  ASSERT_TRUE(w) << errno_string(errno);
  const std::string first = payload("first", 1000);
  ASSERT_EQ(write_all(w.get(), first), "");

  SpawnOptions o;
  o.pipe_stdout = true;
  auto argv = python_helper("stream_tool.py");
  argv.insert(argv.end(), {"read-exact", p, std::to_string(first.size())});
  Child reader = Child::spawn(argv, o);
  // The reader hands over the first bytes while our writer is still open.
  EXPECT_EQ(read_exactly(reader.stdout_fd(), first.size(), 20s), first)
      << "reader stderr: " << reader.err();
  EXPECT_FALSE(reader.exited()) << "the reader must wait for more: a writer is still open";
  // It then waits in read() for more.
  auto b = wait_blocked_in(reader.pid(), Io::Read, mnt().path());
  EXPECT_TRUE(b.blocked) << b.observation;

  const std::string second = payload("second", 200000);
  ASSERT_EQ(write_all(w.get(), second), "");
  ASSERT_EQ(w.reset(), 0);
  // Drain the reader's stdout while it runs (more than a pipe buffer).
  std::string rest = read_exactly(reader.stdout_fd(), second.size() + 1, 30s);
  int st = reader.wait_or_kill(30s);
  EXPECT_TRUE(exited_with(st, 0)) << status_string(st) << " " << reader.err();
  EXPECT_EQ(rest.size(), second.size());
  EXPECT_TRUE(rest == second) << "the rest differs";
}

// SIGINT to a reader blocked on an empty stream whose writer is open.
TEST_F(ReaderFlow, SigintEndsABlockedReadWithEintr) {
  const auto p = at("empty");
  UniqueFd w = open_fd(p, O_WRONLY | O_CREAT);
  ASSERT_TRUE(w) << errno_string(errno);

  auto argv = python_helper("stream_tool.py");
  argv.insert(argv.end(), {"read-block", p});
  Child reader = Child::spawn(argv);
  auto b = wait_blocked_in(reader.pid(), Io::Read, mnt().path());
  ASSERT_TRUE(b.blocked) << "reader never blocked in read(): " << b.observation << "\n" << reader.err();
  EXPECT_FALSE(reader.exited());

  const auto t0 = Clock::now();
  reader.signal(SIGINT);
  auto st = reader.wait_for(10s);
  const auto took = Clock::now() - t0;
  ASSERT_TRUE(st) << "reader still running 10 s after SIGINT: " << blocked_in(reader.pid(), Io::Read, mnt().path()).observation;
  EXPECT_TRUE(exited_with(*st, 42)) << status_string(*st) << " out: " << reader.out() << " err: " << reader.err();
  EXPECT_EQ(reader.out(), "EINTR\n");
  EXPECT_LT(took, kPrompt) << "took " << std::chrono::duration_cast<Millis>(took).count() << " ms";

  // The interrupted read consumed nothing; the stream goes on.
  ASSERT_EQ(write_all(w.get(), "after"), "");
  ASSERT_EQ(w.reset(), 0);
  std::string got;
  EXPECT_TRUE(eventually(
      [&] {
        RunResult r = run({"cat", p}, 30s);
        got = r.out;
        return r.ok();  // EBUSY until the interrupted reader's release is in
      },
      10s));
  EXPECT_EQ(got, "after");
}

TEST_F(ReaderFlow, SigintKillsCatBlockedOnAnEmptyStream) {
  const auto p = at("empty");
  UniqueFd w = open_fd(p, O_WRONLY | O_CREAT);
  ASSERT_TRUE(w) << errno_string(errno);
  Child reader = Child::spawn({"cat", p});
  auto b = wait_blocked_in(reader.pid(), Io::Read, mnt().path());
  ASSERT_TRUE(b.blocked) << "cat never blocked in read(): " << b.observation;
  const auto t0 = Clock::now();
  reader.signal(SIGINT);
  auto st = reader.wait_for(10s);
  ASSERT_TRUE(st) << "cat still running 10 s after SIGINT";
  EXPECT_TRUE(killed_by(*st, SIGINT)) << status_string(*st);
  EXPECT_LT(Clock::now() - t0, kPrompt);
}

// ------------------------------------------------------------ backpressure
// These mounts use --no-spill: pure backpressure, writers wait for a reader
// (with spilling, a stream nobody reads would go to disk instead; see
// test_spill.cpp).

class SmallBuffers : public MountTest {
 protected:
  std::vector<std::string> mount_args() const override {
    return {"--max-memory", "16M", "--max-stream", "16M", "--no-spill"};
  }
};

TEST_F(SmallBuffers, BlockedWriterResumesWhenAReaderDrains) {
  const auto src = mnt().scratch("src.bin");
  const std::uint64_t total = 128 * MiB;
  make_random_file(src, total);
  const auto want = sha256_of(src);
  ASSERT_EQ(want.size(), 64u);

  Child dd = Child::spawn({"dd", "if=" + src, "of=" + at("big"), "bs=1M"});
  auto b = wait_writer_held(dd.pid(), at("big"), mnt().path(), 60s);
  ASSERT_TRUE(b.blocked) << "dd never blocked in write(): " << b.observation << "\n" << dd.err();
  struct stat st{};
  ASSERT_EQ(stat_err(at("big"), &st), 0);
  std::cout << "writer held back after " << mib(static_cast<std::uint64_t>(st.st_size)) << " of "
            << mib(total) << std::endl;
  EXPECT_LE(static_cast<std::uint64_t>(st.st_size), 16 * MiB + 1 * MiB)
      << "bytes accepted beyond --max-stream 16M";
  EXPECT_FALSE(dd.exited()) << "dd finished 128 MiB with nobody reading: " << dd.err();

  Child reader = Child::spawn({"sha256sum", at("big")});
  int rs = reader.wait_or_kill(120s);
  int ws = dd.wait_or_kill(120s);
  EXPECT_TRUE(exited_with(ws, 0)) << "dd " << status_string(ws) << ": " << dd.err();
  EXPECT_TRUE(exited_with(rs, 0)) << "sha256sum " << status_string(rs) << ": " << reader.err();
  EXPECT_EQ(reader.out().substr(0, 64), want) << "bytes differ after passing through the mount";

  const std::uint64_t peak = mnt().peak_rss();
  const std::uint64_t bound = 16 * MiB + 48 * MiB;
  std::cout << "daemon peak RSS (VmHWM) with --max-memory 16M, 128 MiB streamed: " << mib(peak) << std::endl;
  RecordProperty("daemon_peak_rss_kib_16M_cap", static_cast<int>(peak / 1024));
  EXPECT_GT(peak, 0u);
  if (kSanitizedBuild) {
    std::cout << "sanitizer build: the " << mib(bound) << " bound is not enforced" << std::endl;
  } else {
    EXPECT_LT(peak, bound) << "VmHWM " << mib(peak) << " exceeds cap + 48 MiB";
  }
}

class WriterSignals : public MountTest {
 protected:
  std::vector<std::string> mount_args() const override { return {"--max-memory", "16M", "--max-stream", "2M", "--no-spill"}; }
};

TEST_F(WriterSignals, SigintEndsABlockedWriteWithEintr) {
  const auto p = at("full");
  auto argv = python_helper("stream_tool.py");
  argv.insert(argv.end(), {"write-block", p, "--chunk", "65536", "--limit", std::to_string(64 * MiB)});
  Child writer = Child::spawn(argv);
  auto b = wait_writer_held(writer.pid(), p, mnt().path());
  ASSERT_TRUE(b.blocked) << "writer never blocked: " << b.observation << "\n" << writer.out() << writer.err();

  const auto t0 = Clock::now();
  writer.signal(SIGINT);
  auto st = writer.wait_for(10s);
  const auto took = Clock::now() - t0;
  ASSERT_TRUE(st) << "writer still running 10 s after SIGINT: "
                  << blocked_in(writer.pid(), Io::Write, mnt().path()).observation;
  EXPECT_TRUE(exited_with(*st, 42)) << status_string(*st) << " out: " << writer.out() << " err: " << writer.err();
  EXPECT_LT(took, kPrompt) << "took " << std::chrono::duration_cast<Millis>(took).count() << " ms";

  // What the writer was told it wrote is exactly what the stream holds:
  // the interrupted write left no partial bytes behind.
  const std::string out = writer.out();
  ASSERT_EQ(out.rfind("EINTR after ", 0), 0u) << out;
  const std::uint64_t written = std::stoull(out.substr(12));
  EXPECT_GT(written, 0u);
  EXPECT_LE(written, 2 * MiB);
  struct stat sst{};
  ASSERT_EQ(stat_err(p, &sst), 0);
  EXPECT_EQ(static_cast<std::uint64_t>(sst.st_size), written);
  // Counted by reading: `wc -c FILE` would trust st_size and seek.
  RunResult r = run({"sh", "-c", "cat \"$0\" | wc -c", p}, 30s);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(std::stoull(r.out), written);
}

TEST_F(WriterSignals, SigintStopsABlockedDd) {
  const auto p = at("full");
  Child dd = Child::spawn({"dd", "if=/dev/zero", "of=" + p, "bs=64k", "count=1000"});
  auto b = wait_writer_held(dd.pid(), p, mnt().path());
  ASSERT_TRUE(b.blocked) << "dd never blocked: " << b.observation << "\n" << dd.err();
  const auto t0 = Clock::now();
  dd.signal(SIGINT);
  auto st = dd.wait_for(10s);
  ASSERT_TRUE(st) << "dd still running 10 s after SIGINT";
  EXPECT_FALSE(exited_with(*st, 0)) << "dd cannot have finished: " << status_string(*st);
  EXPECT_LT(Clock::now() - t0, kPrompt);
  // dd is gone, so is its writer reference: a reader drains what was
  // accepted and then sees EOF.
  struct stat sst{};
  ASSERT_EQ(stat_err(p, &sst), 0);
  // Counted by reading: `wc -c FILE` would trust st_size and seek.
  RunResult r = run({"sh", "-c", "cat \"$0\" | wc -c", p}, 30s);
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(std::stoll(r.out), static_cast<long long>(sst.st_size));
  EXPECT_GT(sst.st_size, 0);
}

// ------------------------------------------------------------ many waiting writers

constexpr int kWriters = 50;

// Starts kWriters dd processes, each writing `mib_each` MiB of zeros to wNN.
std::vector<Child> start_writers(Mount& m, int mib_each) {
  std::vector<Child> ws;
  for (int i = 0; i < kWriters; ++i) {
    ws.push_back(Child::spawn({"dd", "if=/dev/zero", "of=" + m.at("w" + two(i)), "bs=64k",
                               "count=" + std::to_string(16 * mib_each)}));
  }
  return ws;
}

// Readers for every wNN stream; checks each gets its bytes and each writer exits 0.
void drain_all(Mount& m, std::vector<Child>& writers, int mib_each) {
  const std::string want = std::to_string(mib_each * MiB) + "\n";
  std::vector<Child> readers;
  for (int i = 0; i < kWriters; ++i) readers.push_back(Child::spawn({"sh", "-c", "cat \"$0\" | wc -c", m.at("w" + two(i))}));
  for (int i = 0; i < kWriters; ++i) {
    int rs = readers[static_cast<std::size_t>(i)].wait_or_kill(60s);
    EXPECT_TRUE(exited_with(rs, 0)) << "reader of w" << two(i) << ": " << status_string(rs);
    EXPECT_EQ(readers[static_cast<std::size_t>(i)].out(), want) << "w" << two(i);
  }
  for (int i = 0; i < kWriters; ++i) {
    int ws = writers[static_cast<std::size_t>(i)].wait_or_kill(60s);
    EXPECT_TRUE(exited_with(ws, 0)) << "writer w" << two(i) << ": " << status_string(ws) << " "
                                    << writers[static_cast<std::size_t>(i)].err();
  }
}

// Lookups, stat, readdir, mkdir must answer while writers wait.
std::string namespace_ops(const Mount& m, int expect_streams) {
  for (int i = 0; i < kWriters; ++i) {
    struct stat st{};
    if (::stat(m.at("w" + two(i)).c_str(), &st) != 0) return "stat w" + two(i) + ": " + errno_string(errno);
    if (!S_ISREG(st.st_mode)) return "w" + two(i) + " is not a regular file";
  }
  int err = 0;
  auto names = list_dir(m.path(), &err);
  if (err) return "readdir: " + errno_string(err);
  if (static_cast<int>(names.size()) < expect_streams)
    return "readdir lists " + std::to_string(names.size()) + " names, expected at least " + std::to_string(expect_streams);
  struct stat st{};
  if (::stat(m.at("nope").c_str(), &st) == 0 || errno != ENOENT) return "lookup of a missing name: " + errno_string(errno);
  UniqueFd r = open_fd(m.at("nope"), O_RDONLY);
  if (r || errno != ENOENT) return "open of a missing name: " + errno_string(errno);
  if (::mkdir(m.at("dir").c_str(), 0755) != 0) return "mkdir: " + errno_string(errno);
  if (::rmdir(m.at("dir").c_str()) != 0) return "rmdir: " + errno_string(errno);
  return "";
}

// Each writer fills its own stream's cap; the global budget keeps room.
class PerStreamCap : public MountTest {
 protected:
  std::vector<std::string> mount_args() const override { return {"--max-memory", "128M", "--max-stream", "2M", "--no-spill"}; }
};

TEST_F(PerStreamCap, FiftyWaitingWritersDoNotStallOtherOperations) {
  std::vector<Child> writers = start_writers(mnt(), 3);
  for (int i = 0; i < kWriters; ++i) {
    auto b = wait_blocked_in(writers[static_cast<std::size_t>(i)].pid(), Io::Write, mnt().path(), 30s);
    ASSERT_TRUE(b.blocked) << "writer w" << two(i) << " never blocked: " << b.observation;
  }
  std::uint64_t held = 0;
  for (int i = 0; i < kWriters; ++i) {
    struct stat st{};
    ASSERT_EQ(stat_err(at("w" + two(i)), &st), 0);
    EXPECT_LE(st.st_size, 2 * MiB) << "w" << two(i) << " accepted more than --max-stream 2M";
    held += static_cast<std::uint64_t>(st.st_size);
  }
  std::cout << kWriters << " writers waiting, " << mib(held) << " held" << std::endl;

  EXPECT_EQ(run_guarded([&] { return namespace_ops(mnt(), kWriters); }, 15s), "");

  // Another stream: written and read while the 50 wait.
  const std::string other = payload("other", 100000);
  EXPECT_EQ(run_guarded(
                [&] {
                  UniqueFd w = open_fd(at("other"), O_WRONLY | O_CREAT);
                  if (!w) return "create other: " + errno_string(errno);
                  auto e = write_all(w.get(), other);
                  if (!e.empty()) return "write other: " + e;
                  return w.reset() == 0 ? std::string() : std::string("close other failed");
                },
                15s),
            "");
  EXPECT_TRUE(cat(at("other"), 20s) == other) << "the other stream's bytes differ";
  // A stream larger than the per-stream cap flows once a reader comes.
  Child side_w = Child::spawn({"dd", "if=/dev/zero", "of=" + at("side"), "bs=64k", "count=48"});
  auto sb = wait_blocked_in(side_w.pid(), Io::Write, mnt().path(), 30s);
  EXPECT_TRUE(sb.blocked) << "side writer never blocked: " << sb.observation;
  Child side_r = Child::spawn({"sh", "-c", "cat \"$0\" | wc -c", at("side")});
  EXPECT_TRUE(exited_with(side_r.wait_or_kill(30s), 0)) << side_r.err();
  EXPECT_EQ(side_r.out(), "3145728\n");
  EXPECT_TRUE(exited_with(side_w.wait_or_kill(30s), 0)) << side_w.err();
  EXPECT_EQ(run_guarded([&] { return namespace_ops(mnt(), kWriters); }, 15s), "");

  for (int i = 0; i < kWriters; ++i) EXPECT_FALSE(writers[static_cast<std::size_t>(i)].exited()) << "w" << two(i);
  drain_all(mnt(), writers, 3);
}

class GlobalCap : public MountTest {
 protected:
  std::vector<std::string> mount_args() const override { return {"--max-memory", "4M", "--max-stream", "64M", "--no-spill"}; }
};

TEST_F(GlobalCap, FiftyWritersOnAFullBudgetDoNotStallOtherOperations) {
  const std::string early = payload("early", 100000);
  {
    UniqueFd w = open_fd(at("early"), O_WRONLY | O_CREAT);
    ASSERT_TRUE(w) << errno_string(errno);
    ASSERT_EQ(write_all(w.get(), early), "");
  }
  std::vector<Child> writers = start_writers(mnt(), 1);
  // Every writer either finished (its 1 MiB fitted) or waits in write().
  int waiting = 0;
  for (int i = 0; i < kWriters; ++i) {
    Child& c = writers[static_cast<std::size_t>(i)];
    BlockState b;
    bool settled = eventually([&] { return c.exited() || (b = blocked_in(c.pid(), Io::Write, mnt().path())).blocked; }, 30s);
    ASSERT_TRUE(settled) << "w" << two(i) << " neither finished nor blocked: " << b.observation;
    if (c.exited()) {
      EXPECT_TRUE(exited_with(*c.status(), 0)) << "w" << two(i) << " " << status_string(*c.status()) << " " << c.err();
    } else {
      ++waiting;
    }
  }
  std::uint64_t held = early.size();
  for (int i = 0; i < kWriters; ++i) {
    struct stat st{};
    ASSERT_EQ(stat_err(at("w" + two(i)), &st), 0) << "w" << two(i);
    held += static_cast<std::uint64_t>(st.st_size);
  }
  std::cout << waiting << " of " << kWriters << " writers waiting on the 4M budget, " << mib(held)
            << " held in all" << std::endl;
  EXPECT_GE(waiting, 40) << "with 4 MiB for 50 MiB, most writers must wait";
  EXPECT_LE(held, 4 * MiB) << "more bytes held than --max-memory 4M";

  EXPECT_EQ(run_guarded([&] { return namespace_ops(mnt(), kWriters); }, 15s), "");
  // Reading a stream works (and frees budget).
  EXPECT_TRUE(cat(at("early"), 20s) == early) << "the early stream's bytes differ";
  EXPECT_EQ(run_guarded([&] { return namespace_ops(mnt(), kWriters); }, 15s), "");
  drain_all(mnt(), writers, 1);
}

}  // namespace
}  // namespace capturefs::test
