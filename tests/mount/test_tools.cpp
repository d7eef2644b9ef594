// What real tools do besides open-write-close, through a real mount: read
// back their output, truncate, patch a header (with and without --hold),
// rewrite bytes already delivered, symlinks, hard links, and a file created
// empty and reopened by the same process.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "mount_fixture.hpp"

namespace capturefs::test {
namespace {

using namespace std::chrono_literals;

#define ASSERT_FD(fd, what) ASSERT_TRUE(fd) << (what) << ": " << errno_string(errno)

class Tools : public MountTest {};

TEST_F(Tools, SymlinksWorkInTheTreeAndHardLinksAreRefused) {
  const std::string target = at("data.txt");
  RunResult r = sh("printf hello > " + target + " && ln -s data.txt " + at("link") +
                   " && readlink " + at("link") + " && stat -c %F " + at("link") +
                   " && stat -L -c %F " + at("link"));
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(r.out, "data.txt\nsymbolic link\nregular file\n");
  // Through the link, the stream is read (and delivered) like by its name.
  EXPECT_EQ(cat(at("link")), "hello");
  EXPECT_EQ(stat_err(target), ENOENT);  // delivered: the name went
  // The link stays (dangling now), and goes with rm.
  struct stat st{};
  ASSERT_EQ(::lstat(at("link").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  RunResult h = sh("printf x > " + at("a") + " && ln " + at("a") + " " + at("b"));
  EXPECT_FALSE(h.ok());
  EXPECT_NE(h.err.find("Operation not permitted"), std::string::npos) << h.err;
  ASSERT_EQ(::unlink(at("link").c_str()), 0);
  EXPECT_EQ(::lstat(at("link").c_str(), &st), -1);
}

TEST_F(Tools, AToolReadsBackAndTruncatesItsOwnOutput) {
  // w+b: write, seek back, read it again, patch, cut the tail.
  const std::string code =
      "import sys\n"
      "f = open(sys.argv[1], \"w+b\")\n"
      "f.write(b\"0123456789\" * 1000)\n"
      "f.seek(0)\n"
      "assert f.read(10) == b\"0123456789\"\n"
      "f.seek(5)\n"
      "f.write(b\"#\")\n"
      "f.truncate(9000)\n"
      "f.seek(0)\n"
      "d = f.read()\n"
      "assert len(d) == 9000 and d[5:6] == b\"#\", len(d)\n"
      "f.close()\n";
  RunResult r = run({"python3", "-B", "-c", code, at("out")});
  ASSERT_TRUE(r.ok()) << r.describe();
  std::string want;
  for (int i = 0; i < 900; ++i) want += "0123456789";
  want[5] = '#';
  EXPECT_EQ(cat(at("out")), want);
}

TEST_F(Tools, RewritingBytesAReaderAlreadyHasFailsForBothSides) {
  UniqueFd w = open_fd(at("s"), O_WRONLY | O_CREAT);
  ASSERT_FD(w, "create");
  // The consumer opens before this process writes (else it is a self-read).
  UniqueFd r = open_fd(at("s"), O_RDONLY);
  ASSERT_FD(r, "open reader");
  ASSERT_EQ(write_all(w.get(), "header+data"), "");
  char buf[64];
  ASSERT_EQ(::read(r.get(), buf, sizeof buf), 11);
  // The tool seeks back to fix its header: the reader already has it.
  EXPECT_EQ(::pwrite(w.get(), "HEADER", 6, 0), -1);
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(::write(w.get(), "more", 4), -1);  // aborted from now on
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(::read(r.get(), buf, sizeof buf), -1);  // never a silently wrong file
  EXPECT_EQ(errno, EIO);
}

// Python's wave module writes a header with placeholder sizes, the frames,
// then seeks back to patch the sizes at close. This one waits for a line on
// stdin before it closes, so a test can order the patch after a reader.
const char* kWave =
    "import sys, wave\n"
    "w = wave.open(sys.argv[1], \"wb\")\n"
    "w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)\n"
    "for i in range(50):\n"
    "    w.writeframesraw(bytes(range(256)) * 40)\n"
    "sys.stdout.write(\"written\\n\"); sys.stdout.flush()\n"
    "sys.stdin.readline()\n"
    "w.close()\n";

// Starts the wave writer on `path`; it waits for a line before closing.
Child start_wave(const std::string& path) {
  SpawnOptions o;
  o.pipe_stdin = true;
  o.pipe_stdout = true;
  return Child::spawn({"python3", "-B", "-c", kWave, path}, o);
}

// Lets the wave writer close; returns its wait status.
int finish_wave(Child& tool) {
  EXPECT_EQ(write_all(tool.stdin_fd(), "go\n"), "");
  tool.close_stdin();
  return tool.wait_or_kill(30s);
}

class Held : public MountTest {
  std::vector<std::string> mount_args() const override { return {"--hold", "*.wav"}; }
};

TEST_F(Held, AWaveFileIsDeliveredWholeWithItsPatchedHeader) {
  Child ref = start_wave(mnt().scratch("ref.wav"));
  ASSERT_TRUE(exited_with(finish_wave(ref), 0)) << ref.err();
  Child tool = start_wave(at("take.wav"));
  ASSERT_EQ(read_exactly(tool.stdout_fd(), 8, 30s), "written\n");
  // A reader (a FIFO wrapper) opens it now: it waits for the whole file.
  SpawnOptions o;
  o.pipe_stdout = true;
  Child reader = Child::spawn({"cat", at("take.wav")}, o);
  const int st = finish_wave(tool);
  EXPECT_TRUE(exited_with(st, 0)) << "the header patch must succeed on a held file: "
                                  << status_string(st) << " " << tool.err();
  const std::string got = read_to_eof(reader.stdout_fd());
  EXPECT_TRUE(exited_with(reader.wait_or_kill(30s), 0)) << reader.err();
  EXPECT_EQ(sha256_of_data(got), sha256_of(mnt().scratch("ref.wav")))
      << "got " << got.size() << " bytes";
}

TEST_F(Tools, AWaveHeaderPatchAfterDeliveryFailsLoudlyWithoutHold) {
  Child tool = start_wave(at("take.wav"));
  ASSERT_EQ(read_exactly(tool.stdout_fd(), 8, 30s), "written\n");
  SpawnOptions o;
  o.pipe_stdout = true;
  Child reader = Child::spawn({"cat", at("take.wav")}, o);
  // The reader has the header before the module goes back to patch it.
  ASSERT_EQ(read_exactly(reader.stdout_fd(), 4096, 30s).size(), 4096u);
  const int st = finish_wave(tool);
  EXPECT_FALSE(exited_with(st, 0)) << "a failed header patch must not go unnoticed";
  EXPECT_NE(tool.err().find("Input/output error"), std::string::npos) << tool.err();
  (void)read_to_eof(reader.stdout_fd());
  EXPECT_FALSE(exited_with(reader.wait_or_kill(30s), 0)) << "the reader must see the abort";
}

TEST_F(Tools, ADeliveredNameStaysForItsCreatorUntilItExits) {
  // gzip and bzip2 set the times of their output after closing it; rsync
  // renames its temp file into place after closing it. A consumer may have
  // taken the bytes by then.
  const std::string code =
      "import os, sys\n"
      "p, q = sys.argv[1], sys.argv[2]\n"
      "with open(p, \"wb\") as f:\n"
      "    f.write(b\"data\")\n"
      "print(\"closed\", flush=True)\n"
      "sys.stdin.readline()\n"
      "os.utime(p, (1, 1))\n"
      "os.chmod(p, 0o600)\n"
      "os.rename(p, q)\n"
      "assert os.stat(q).st_mtime == 1\n";
  SpawnOptions o;
  o.pipe_stdin = true;
  o.pipe_stdout = true;
  Child tool = Child::spawn({"python3", "-B", "-c", code, at(".out.tmp"), at("out")}, o);
  ASSERT_EQ(read_exactly(tool.stdout_fd(), 7, 30s), "closed\n");
  EXPECT_EQ(cat(at(".out.tmp")), "data");  // consumed
  EXPECT_EQ(stat_err_elsewhere(at(".out.tmp")), ENOENT);  // gone for everyone else
  EXPECT_EQ(list_dir(mnt().path()), std::vector<std::string>{});
  ASSERT_EQ(write_all(tool.stdin_fd(), "go\n"), "");
  tool.close_stdin();
  EXPECT_TRUE(exited_with(tool.wait_or_kill(30s), 0)) << tool.err();
  // Once the tool is gone, so is the name, for everyone.
  EXPECT_TRUE(eventually([&] { return stat_err(at("out")) == ENOENT; }, 10s));
  // A new file under the name is a new stream.
  ASSERT_TRUE(sh("printf new > " + at("out")).ok());
  EXPECT_EQ(cat(at("out")), "new");
}

class WithSocket : public MountTest {
  bool with_socket() const override { return true; }
};

TEST_F(WithSocket, AFileCreatedEmptyThenReopenedByTheSameProcessIsOneStream) {
  SpawnOptions o;
  o.pipe_stdout = true;
  Child consumer = Child::spawn(
      {capturefs_binary(), "cat", "--socket", mnt().socket_path(), "--wait", "out.bin"}, o);
  // The consumer is subscribed once STATUS answers (a barrier).
  ASSERT_TRUE(run({capturefs_binary(), "status", "--socket", mnt().socket_path()}).ok());
  const std::string code =
      "import os, sys\n"
      "p = sys.argv[1]\n"
      "os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # the probe\n"
      "with open(p, \"ab\") as f:\n"
      "    f.write(b\"the real content\")\n";
  RunResult r = run({"python3", "-B", "-c", code, at("out.bin")});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(read_to_eof(consumer.stdout_fd()), "the real content");
  EXPECT_TRUE(exited_with(consumer.wait_or_kill(30s), 0)) << consumer.err();
}

TEST_F(WithSocket, AnEmptyFileEndsWhenItsCreatorExits) {
  SpawnOptions o;
  o.pipe_stdout = true;
  Child consumer = Child::spawn(
      {capturefs_binary(), "cat", "--socket", mnt().socket_path(), "--wait", "empty"}, o);
  ASSERT_TRUE(run({capturefs_binary(), "status", "--socket", mnt().socket_path()}).ok());
  ASSERT_TRUE(sh(": > " + at("empty")).ok());
  EXPECT_EQ(read_to_eof(consumer.stdout_fd()), "");
  EXPECT_TRUE(exited_with(consumer.wait_or_kill(30s), 0)) << consumer.err();
  EXPECT_EQ(stat_err(at("empty")), ENOENT);
}

}  // namespace
}  // namespace capturefs::test
