// File-system semantics of a capturefs mount: what stat, open, readdir,
// rename ... answer, and what the common tools see.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <vector>

#include "mount_fixture.hpp"

namespace capturefs::test {
namespace {

using Semantics = MountTest;

#define ASSERT_FD(fd, what) ASSERT_TRUE(fd) << (what) << ": " << errno_string(errno)
#define ASSERT_WRITE(fd, data) ASSERT_EQ(write_all((fd).get(), (data)), "")

constexpr int kBlksize = 131072;

// A stream with `data` written by a writer that has already closed.
void make_stream(const std::string& path, std::string_view data) {
  UniqueFd w = open_fd(path, O_WRONLY | O_CREAT);
  ASSERT_FD(w, "create " + path);
  ASSERT_WRITE(w, data);
  ASSERT_EQ(w.reset(), 0) << "close " << path;
}

std::string read_some(int fd, std::size_t n) {
  std::string s(n, '\0');
  ssize_t got = ::read(fd, s.data(), n);
  if (got < 0) return "<read failed: " + errno_string(errno) + ">";
  s.resize(static_cast<std::size_t>(got));
  return s;
}

TEST_F(Semantics, StreamIsRegularFileWithSizeOfBytesWritten) {
  const auto p = at("s");
  UniqueFd w = open_fd(p, O_WRONLY | O_CREAT);
  ASSERT_FD(w, "open O_CREAT");
  struct stat st{};
  ASSERT_EQ(stat_err(p, &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode)) << "mode " << std::oct << st.st_mode;
  EXPECT_FALSE(S_ISFIFO(st.st_mode));
  EXPECT_EQ(st.st_size, 0);
  EXPECT_EQ(st.st_blksize, kBlksize);

  ASSERT_WRITE(w, payload("a", 1000));
  ASSERT_EQ(stat_err(p, &st), 0);
  EXPECT_EQ(st.st_size, 1000);
  ASSERT_WRITE(w, payload("b", 70000));
  ASSERT_EQ(::fstat(w.get(), &st), 0);
  EXPECT_EQ(st.st_size, 71000) << "fstat on the writer's fd";
  ASSERT_EQ(::lstat(p.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_size, 71000);
  EXPECT_EQ(st.st_blksize, kBlksize);
  ASSERT_EQ(w.reset(), 0);

  ASSERT_EQ(stat_err(p, &st), 0) << "an unread stream keeps its name after the writer closed";
  EXPECT_EQ(st.st_size, 71000);
  EXPECT_EQ(cat(p), payload("a", 1000) + payload("b", 70000));
}

TEST_F(Semantics, StatSeesEveryWriteAtOnceThoughAttributesAreCached) {
  // Attributes are cached for a second (fewer requests per file), but the
  // kernel drops the cached size after each write through the mount, and
  // setattr replies refresh it: stat never shows a stale size or mode.
  const auto p = at("growing");
  UniqueFd w = open_fd(p, O_WRONLY | O_CREAT, 0644);
  ASSERT_FD(w, "writer");
  struct stat st{};
  ASSERT_EQ(stat_err(p, &st), 0);
  EXPECT_EQ(st.st_size, 0);
  for (const std::size_t n : {10u, 5u, 4096u}) {
    const off_t before = st.st_size;
    ASSERT_EQ(write_all(w.get(), std::string(n, 'x')), "");
    ASSERT_EQ(stat_err(p, &st), 0);
    EXPECT_EQ(st.st_size, before + static_cast<off_t>(n)) << "right after a write of " << n;
  }
  ASSERT_EQ(::fchmod(w.get(), 0600), 0);
  ASSERT_EQ(stat_err(p, &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_EQ(::ftruncate(w.get(), 3), 0);
  ASSERT_EQ(stat_err(p, &st), 0);
  EXPECT_EQ(st.st_size, 3);
}

TEST_F(Semantics, ChmodChownUtimensAreReportedByStat) {
  const auto p = at("s");
  make_stream(p, "x");
  ASSERT_EQ(::chmod(p.c_str(), 0640), 0) << errno_string(errno);
  struct stat st{};
  ASSERT_EQ(stat_err(p, &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_TRUE(S_ISREG(st.st_mode));

  ASSERT_EQ(::chown(p.c_str(), 1234, 5678), 0) << errno_string(errno);
  ASSERT_EQ(stat_err(p, &st), 0);
  EXPECT_EQ(st.st_uid, 1234u);
  EXPECT_EQ(st.st_gid, 5678u);

  const timespec ts[2] = {{1000000000, 123456789}, {1200000000, 987654321}};
  ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), ts, 0), 0) << errno_string(errno);
  ASSERT_EQ(stat_err(p, &st), 0);
  EXPECT_EQ(st.st_atim.tv_sec, 1000000000);
  EXPECT_EQ(st.st_atim.tv_nsec, 123456789);
  EXPECT_EQ(st.st_mtim.tv_sec, 1200000000);
  EXPECT_EQ(st.st_mtim.tv_nsec, 987654321);
  EXPECT_EQ(st.st_size, 1) << "metadata changes must not touch the bytes";

  // The same on a directory.
  const auto d = at("d");
  ASSERT_EQ(::mkdir(d.c_str(), 0755), 0) << errno_string(errno);
  ASSERT_EQ(::chmod(d.c_str(), 0700), 0) << errno_string(errno);
  ASSERT_EQ(stat_err(d, &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0700u);

  EXPECT_EQ(cat(p), "x");
}

TEST_F(Semantics, MkdirReaddirRmdirUnlink) {
  const auto d = at("d");
  ASSERT_EQ(::mkdir(d.c_str(), 0755), 0) << errno_string(errno);
  struct stat st{};
  ASSERT_EQ(stat_err(d, &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(::mkdir(d.c_str(), 0755), -1);
  EXPECT_EQ(errno, EEXIST);

  make_stream(d + "/a", "A");
  make_stream(d + "/b", "B");
  ASSERT_EQ(::mkdir((d + "/sub").c_str(), 0755), 0);
  int err = 0;
  EXPECT_EQ(list_dir(d, &err), (std::vector<std::string>{"a", "b", "sub"}));
  EXPECT_EQ(err, 0);
  EXPECT_EQ(list_dir(mnt().path()), (std::vector<std::string>{"d"}));

  EXPECT_EQ(::rmdir(d.c_str()), -1);
  EXPECT_EQ(errno, ENOTEMPTY);
  EXPECT_EQ(::rmdir((d + "/sub").c_str()), 0) << errno_string(errno);
  EXPECT_EQ(::unlink((d + "/a").c_str()), 0) << errno_string(errno);
  EXPECT_EQ(::unlink((d + "/b").c_str()), 0) << errno_string(errno);
  EXPECT_EQ(list_dir(d), std::vector<std::string>{});
  EXPECT_EQ(::rmdir(d.c_str()), 0) << errno_string(errno);
  EXPECT_EQ(stat_err(d), ENOENT);
  EXPECT_EQ(::rmdir(d.c_str()), -1);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_EQ(list_dir(mnt().path()), std::vector<std::string>{});
}

TEST_F(Semantics, UnlinkDiscardsAnUnreadStream) {
  const auto p = at("s");
  make_stream(p, "old bytes");
  ASSERT_EQ(::unlink(p.c_str()), 0) << errno_string(errno);
  EXPECT_EQ(stat_err(p), ENOENT);
  UniqueFd r = open_fd(p, O_RDONLY);
  EXPECT_FALSE(r);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_EQ(::unlink(p.c_str()), -1);
  EXPECT_EQ(errno, ENOENT);

  make_stream(p, "new");
  struct stat st{};
  ASSERT_EQ(stat_err(p, &st), 0);
  EXPECT_EQ(st.st_size, 3) << "a new stream under the old name starts empty";
  EXPECT_EQ(cat(p), "new");
}

TEST_F(Semantics, UnlinkWithOpenWriterDiscardsLaterWrites) {
  const auto p = at("s");
  UniqueFd w = open_fd(p, O_WRONLY | O_CREAT);
  ASSERT_FD(w, "create");
  ASSERT_WRITE(w, "before unlink");
  ASSERT_EQ(::unlink(p.c_str()), 0) << errno_string(errno);
  EXPECT_EQ(stat_err(p), ENOENT);
  // More than the default per-stream limit (256M): only possible without
  // blocking if the bytes are really discarded. Guarded: must not block.
  const int fd = w.get();
  EXPECT_EQ(run_guarded(
                [fd] {
                  std::string chunk(1 << 20, 'z');
                  for (int i = 0; i < 300; ++i) {
                    auto e = write_all(fd, chunk);
                    if (!e.empty()) return "write #" + std::to_string(i) + " after unlink: " + e;
                  }
                  return std::string();
                },
                90s),
            "");
  EXPECT_EQ(w.reset(), 0) << "close after unlink";
  EXPECT_EQ(stat_err(p), ENOENT);
  if (!kSanitizedBuild) {
    EXPECT_LT(mnt().current_rss(), 200ull << 20) << "discarded bytes must not be kept";
  }

  make_stream(p, "fresh");
  EXPECT_EQ(cat(p), "fresh");
}

TEST_F(Semantics, RenameMovesTheStream) {
  make_stream(at("a"), "AAA");
  ASSERT_EQ(::rename(at("a").c_str(), at("b").c_str()), 0) << errno_string(errno);
  EXPECT_EQ(stat_err(at("a")), ENOENT);
  struct stat st{};
  ASSERT_EQ(stat_err(at("b"), &st), 0);
  EXPECT_EQ(st.st_size, 3);
  EXPECT_EQ(cat(at("b")), "AAA");

  ASSERT_EQ(::mkdir(at("d").c_str(), 0755), 0);
  make_stream(at("c"), "CCC");
  ASSERT_EQ(::rename(at("c").c_str(), at("d/c").c_str()), 0) << errno_string(errno);
  EXPECT_EQ(list_dir(at("d")), std::vector<std::string>{"c"});
  EXPECT_EQ(cat(at("d/c")), "CCC");

  EXPECT_EQ(::rename(at("missing").c_str(), at("x").c_str()), -1);
  EXPECT_EQ(errno, ENOENT);
}

TEST_F(Semantics, RenameOverAnExistingName) {
  make_stream(at("x"), "XXX");
  make_stream(at("y"), "YYYYYY");
  ASSERT_EQ(::rename(at("x").c_str(), at("y").c_str()), 0) << errno_string(errno);
  EXPECT_EQ(stat_err(at("x")), ENOENT);
  struct stat st{};
  ASSERT_EQ(stat_err(at("y"), &st), 0);
  EXPECT_EQ(st.st_size, 3);
  EXPECT_EQ(list_dir(mnt().path()), std::vector<std::string>{"y"});
  EXPECT_EQ(cat(at("y")), "XXX");
}

TEST_F(Semantics, RenameNoReplaceRefusesAnExistingName) {
  make_stream(at("p"), "PPP");
  make_stream(at("q"), "QQQQ");
  EXPECT_EQ(::renameat2(AT_FDCWD, at("p").c_str(), AT_FDCWD, at("q").c_str(), RENAME_NOREPLACE), -1);
  EXPECT_EQ(errno, EEXIST) << errno_string(errno);
  struct stat st{};
  ASSERT_EQ(stat_err(at("p"), &st), 0);
  EXPECT_EQ(st.st_size, 3);
  ASSERT_EQ(stat_err(at("q"), &st), 0);
  EXPECT_EQ(st.st_size, 4);
  // To a free name it works.
  EXPECT_EQ(::renameat2(AT_FDCWD, at("p").c_str(), AT_FDCWD, at("r").c_str(), RENAME_NOREPLACE), 0)
      << errno_string(errno);
  EXPECT_EQ(cat(at("r")), "PPP");
  EXPECT_EQ(cat(at("q")), "QQQQ");
}

TEST_F(Semantics, RenameWhileWriterIsOpen) {
  UniqueFd w = open_fd(at("r1"), O_WRONLY | O_CREAT);
  ASSERT_FD(w, "create");
  ASSERT_WRITE(w, "one,");
  ASSERT_EQ(::rename(at("r1").c_str(), at("r2").c_str()), 0) << errno_string(errno);
  ASSERT_WRITE(w, "two");
  ASSERT_EQ(w.reset(), 0);
  EXPECT_EQ(stat_err(at("r1")), ENOENT);
  EXPECT_EQ(cat(at("r2")), "one,two");
}

TEST_F(Semantics, CreateFlagsAndExcl) {
  UniqueFd a = open_fd(at("excl"), O_WRONLY | O_CREAT | O_EXCL);
  ASSERT_FD(a, "O_CREAT|O_EXCL on a new name");
  UniqueFd again = open_fd(at("excl"), O_WRONLY | O_CREAT | O_EXCL);
  EXPECT_FALSE(again);
  EXPECT_EQ(errno, EEXIST);

  UniqueFd t = open_fd(at("trunc"), O_WRONLY | O_CREAT | O_TRUNC);
  ASSERT_FD(t, "O_CREAT|O_TRUNC on a new name");
  UniqueFd rw = open_fd(at("rdwr"), O_RDWR | O_CREAT);
  ASSERT_FD(rw, "O_CREAT|O_RDWR on a new name");
  struct stat st{};
  for (const char* n : {"excl", "trunc", "rdwr"}) {
    ASSERT_EQ(stat_err(at(n), &st), 0) << n;
    EXPECT_TRUE(S_ISREG(st.st_mode)) << n;
  }
  ASSERT_WRITE(a, "e");
  ASSERT_WRITE(t, "t");
  ASSERT_WRITE(rw, "r");
  a.reset();
  t.reset();
  rw.reset();
  EXPECT_EQ(cat(at("excl")), "e");
  EXPECT_EQ(cat(at("trunc")), "t");
  EXPECT_EQ(cat(at("rdwr")), "r");

  ASSERT_EQ(::mkdir(at("dir").c_str(), 0755), 0);
  UniqueFd onto_dir = open_fd(at("dir"), O_WRONLY | O_CREAT | O_EXCL);
  EXPECT_FALSE(onto_dir);
  EXPECT_EQ(errno, EEXIST);

  UniqueFd no_creat = open_fd(at("absent"), O_WRONLY);
  EXPECT_FALSE(no_creat);
  EXPECT_EQ(errno, ENOENT) << "O_WRONLY without O_CREAT on a missing name";
}

TEST_F(Semantics, SeveralWritersAppendInOrder) {
  const auto p = at("s");
  UniqueFd w1 = open_fd(p, O_WRONLY | O_CREAT);
  ASSERT_FD(w1, "w1");
  ASSERT_WRITE(w1, "A");
  UniqueFd w2 = open_fd(p, O_WRONLY | O_APPEND);
  ASSERT_FD(w2, "w2 (O_WRONLY|O_APPEND on the existing stream)");
  ASSERT_WRITE(w2, "B");
  UniqueFd w3 = open_fd(p, O_RDWR | O_APPEND);
  ASSERT_FD(w3, "w3 (O_RDWR|O_APPEND)");
  ASSERT_WRITE(w3, "C");
  ASSERT_WRITE(w2, "D");
  // A plain writer that positions itself at the end appends as well.
  UniqueFd w4 = open_fd(p, O_WRONLY);
  ASSERT_FD(w4, "w4 (O_WRONLY)");
  ASSERT_EQ(::lseek(w4.get(), 0, SEEK_END), 4) << errno_string(errno);
  ASSERT_WRITE(w4, "E");
  ASSERT_WRITE(w3, "F");
  struct stat st{};
  ASSERT_EQ(stat_err(p, &st), 0);
  EXPECT_EQ(st.st_size, 6);
  w1.reset();
  w2.reset();
  w3.reset();
  w4.reset();
  EXPECT_EQ(cat(p), "ABCDEF");
}

// Writers have regular-file positions: a second plain O_WRONLY writer starts
// at offset 0 and, since nothing was consumed yet, patches the first bytes in
// place (as on a regular file). O_APPEND writers append (test above).
TEST_F(Semantics, PlainSecondWriterPatchesUnconsumedBytesLikeARegularFile) {
  const auto p = at("s");
  UniqueFd w1 = open_fd(p, O_WRONLY | O_CREAT);
  ASSERT_FD(w1, "w1");
  ASSERT_WRITE(w1, "A");
  UniqueFd w2 = open_fd(p, O_WRONLY);
  ASSERT_FD(w2, "w2");
  ASSERT_WRITE(w2, "B");
  ASSERT_WRITE(w1, "C");
  w1.reset();
  w2.reset();
  EXPECT_EQ(cat(p), "BC");
}

TEST_F(Semantics, ShellAppendRedirectionAddsAWriter) {
  ASSERT_TRUE(sh("echo first >> '" + at("app") + "'").ok());
  ASSERT_TRUE(sh("echo second >> '" + at("app") + "'").ok());
  EXPECT_EQ(cat(at("app")), "first\nsecond\n");
}

TEST_F(Semantics, LseekReportsBytesWritten) {
  for (int extra : {0, O_APPEND}) {
    SCOPED_TRACE(extra ? "O_APPEND" : "plain");
    const auto p = at(extra ? "append" : "plain");
    UniqueFd w = open_fd(p, O_WRONLY | O_CREAT | extra);
    ASSERT_FD(w, "create");
    EXPECT_EQ(::lseek(w.get(), 0, SEEK_CUR), 0);
    EXPECT_EQ(::lseek(w.get(), 0, SEEK_END), 0);
    ASSERT_WRITE(w, "0123456789");
    EXPECT_EQ(::lseek(w.get(), 0, SEEK_CUR), 10) << errno_string(errno);
    EXPECT_EQ(::lseek(w.get(), 0, SEEK_END), 10) << errno_string(errno);
    ASSERT_WRITE(w, payload("x", 4096));
    EXPECT_EQ(::lseek(w.get(), 0, SEEK_CUR), 4106);
    EXPECT_EQ(::lseek(w.get(), 0, SEEK_END), 4106);
    ASSERT_WRITE(w, "!");
    EXPECT_EQ(::lseek(w.get(), 0, SEEK_END), 4107);
    EXPECT_EQ(::lseek(w.get(), 0, SEEK_CUR), 4107);
    w.reset();
    EXPECT_EQ(cat(p), "0123456789" + payload("x", 4096) + "!");
  }
}

TEST_F(Semantics, NonblockingReaderGetsEagainThenEofWhenEveryWriterReleased) {
  const auto p = at("s");
  UniqueFd w1 = open_fd(p, O_WRONLY | O_CREAT);
  ASSERT_FD(w1, "w1");
  UniqueFd w2 = open_fd(p, O_WRONLY | O_APPEND);
  ASSERT_FD(w2, "w2");
  // Opened before this process writes: a read-only open by a process that
  // has written to the stream would read back instead (a self-read).
  UniqueFd r = open_fd(p, O_RDONLY | O_NONBLOCK);
  ASSERT_FD(r, "reader");
  ASSERT_WRITE(w1, "hello ");
  ASSERT_WRITE(w2, "world");
  std::string got;
  while (got.size() < 11) {
    std::string s = read_some(r.get(), 100);
    ASSERT_FALSE(s.empty()) << "EOF with writers open, after '" << got << "'";
    ASSERT_NE(s[0], '<') << s << " after '" << got << "'";
    got += s;
  }
  EXPECT_EQ(got, "hello world");

  char c;
  EXPECT_EQ(::read(r.get(), &c, 1), -1);
  EXPECT_EQ(errno, EAGAIN) << "no data, writers open, O_NONBLOCK";
  ASSERT_EQ(w1.reset(), 0);
  EXPECT_EQ(::read(r.get(), &c, 1), -1);
  EXPECT_EQ(errno, EAGAIN) << "one writer is still open";
  ASSERT_WRITE(w2, "!");
  EXPECT_EQ(read_some(r.get(), 10), "!");
  ASSERT_EQ(w2.reset(), 0);
  // The kernel sends RELEASE after close() returns: EOF comes once it is
  // processed (a real condition, waited for with a deadline).
  ssize_t last = -2;
  int last_errno = 0;
  EXPECT_TRUE(eventually(
      [&] {
        last = ::read(r.get(), &c, 1);
        last_errno = errno;
        return last == 0 || (last < 0 && last_errno != EAGAIN) || last > 0;
      },
      10s))
      << "still EAGAIN 10 s after the last writer closed";
  EXPECT_EQ(last, 0) << "expected EOF, got " << last << " " << errno_string(last_errno);
}

TEST_F(Semantics, ASecondConcurrentReaderOpensButItsReadsGetEbusy) {
  const auto p = at("s");
  UniqueFd w = open_fd(p, O_WRONLY | O_CREAT);
  ASSERT_FD(w, "writer");
  UniqueFd r1 = open_fd(p, O_RDONLY | O_NONBLOCK);
  ASSERT_FD(r1, "first reader");
  {
    // Written through a descriptor closed at once: `w` stays open without
    // having written, so this process's read-only opens below are
    // consumers, not self-reads (semantics.md).
    UniqueFd w0 = open_fd(p, O_WRONLY | O_APPEND);
    ASSERT_FD(w0, "second writer");
    ASSERT_WRITE(w0, "data");
  }
  // The open succeeds (tools open their output read-only to fstat or
  // fchmod it: rsync), but the stream has its consumer: reads get EBUSY at
  // once, never a wait and never a byte.
  EXPECT_EQ(run_guarded(
                [&] {
                  UniqueFd r2 = open_fd(p, O_RDONLY);
                  if (!r2) return "second O_RDONLY open: " + errno_string(errno);
                  struct stat st{};
                  if (::fstat(r2.get(), &st) != 0 || st.st_size != 4) return std::string("fstat");
                  if (::fchmod(r2.get(), 0600) != 0) return "fchmod: " + errno_string(errno);
                  char c = 0;
                  if (::read(r2.get(), &c, 1) != -1 || errno != EBUSY)
                    return "read on the second reader: " + errno_string(errno) + ", expected EBUSY";
                  return std::string();
                },
                10s),
            "");
  EXPECT_EQ(read_some(r1.get(), 2), "da");
  ASSERT_EQ(r1.reset(), 0);
  // Once the first reader's release is processed (the kernel sends it after
  // close() returns), a new reader attaches and continues where the first
  // one stopped. An open that comes before is passive: its reads get EBUSY.
  std::string got;
  int last_errno = 0;
  EXPECT_TRUE(eventually(
      [&] {
        UniqueFd r4 = open_fd(p, O_RDONLY | O_NONBLOCK);
        if (!r4) return (last_errno = errno), false;
        char buf[10];
        const ssize_t n = ::read(r4.get(), buf, sizeof buf);
        if (n < 0) return (last_errno = errno), false;
        got.assign(buf, static_cast<std::size_t>(n));
        return true;
      },
      10s))
      << "a reader still cannot attach 10 s after the first closed: " << errno_string(last_errno);
  EXPECT_EQ(got, "ta");
}

TEST_F(Semantics, EarlyClosingReaderLeavesTheRestForTheNextReader) {
  const auto p = at("s");
  make_stream(p, "0123456789");
  {
    UniqueFd r1 = open_fd(p, O_RDONLY);
    ASSERT_FD(r1, "first reader");
    EXPECT_EQ(read_some(r1.get(), 4), "0123") << "a 4-byte read must consume exactly 4 bytes";
  }
  struct stat st{};
  EXPECT_EQ(stat_err(p, &st), 0) << "a partly read stream keeps its name";
  // The rest, for the next reader (once the first one's release is in).
  std::string rest;
  EXPECT_TRUE(eventually(
      [&] {
        RunResult r = run({"cat", p}, 30s);
        rest = r.out;
        return r.ok();
      },
      10s))
      << "second reader could not read the rest";
  EXPECT_EQ(rest, "456789");
}

TEST_F(Semantics, NameVanishesAfterReaderReadEofAndClosed) {
  const auto p = at("s");
  ASSERT_TRUE(sh("printf abc > " + p).ok());  // written by a process that is gone
  {
    UniqueFd r = open_fd(p, O_RDONLY);
    ASSERT_FD(r, "reader");
    int err = 0;
    EXPECT_EQ(read_to_eof(r.get(), &err), "abc");
    EXPECT_EQ(err, 0);
    struct stat st{};
    EXPECT_EQ(stat_err(p, &st), 0) << "still there while the reader holds it open";
  }
  // Immediately after close(): the name is gone.
  EXPECT_EQ(stat_err(p), ENOENT) << "stat right after the consumer closed at EOF";
  UniqueFd again = open_fd(p, O_RDONLY);
  EXPECT_FALSE(again);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_EQ(list_dir(mnt().path()), std::vector<std::string>{});
  // And the name is free for a new stream.
  UniqueFd w = open_fd(p, O_WRONLY | O_CREAT | O_EXCL);
  EXPECT_TRUE(w) << "O_CREAT|O_EXCL after the old stream was consumed: " << errno_string(errno);
}

TEST_F(Semantics, MissingNameAnswersEnoentAtOnce) {
  // The tool died before creating its output.
  RunResult tool = sh("exit 1");
  ASSERT_EQ(tool.code(), 1);
  const auto p = at("never-created");
  const auto t0 = Clock::now();
  EXPECT_EQ(run_guarded(
                [&] {
                  struct stat st{};
                  if (::stat(p.c_str(), &st) == 0) return std::string("stat succeeded");
                  if (errno != ENOENT) return "stat: " + errno_string(errno);
                  UniqueFd r = open_fd(p, O_RDONLY);
                  if (r) return std::string("open O_RDONLY succeeded");
                  if (errno != ENOENT) return "open O_RDONLY: " + errno_string(errno);
                  UniqueFd rn = open_fd(p, O_RDONLY | O_NONBLOCK);
                  if (rn || errno != ENOENT) return "open O_RDONLY|O_NONBLOCK: " + errno_string(errno);
                  UniqueFd sub = open_fd(p + "/x", O_RDONLY);
                  if (sub || errno != ENOENT) return "open missing/x: " + errno_string(errno);
                  return std::string();
                },
                10s),
            "");
  EXPECT_LT(Clock::now() - t0, 2s) << "ENOENT must come at once";
}

TEST_F(Semantics, RunToolWaitThenRead) {
  // More than a pipe buffer, written by a tool that exits before anyone
  // reads: deadlocks with mkfifo, must just work here.
  RunResult expected = sh("seq 1 200000");
  ASSERT_TRUE(expected.ok());
  RunResult tool = sh("seq 1 200000 > '" + at("seq") + "'", 60s);
  ASSERT_TRUE(tool.ok()) << tool.describe();
  struct stat st{};
  ASSERT_EQ(stat_err(at("seq"), &st), 0);
  EXPECT_EQ(static_cast<std::size_t>(st.st_size), expected.out.size());
  std::string got = cat(at("seq"));
  EXPECT_EQ(got.size(), expected.out.size());
  EXPECT_TRUE(got == expected.out) << "content differs";
}

TEST_F(Semantics, DdAndCatRoundTrip) {
  const auto src = mnt().scratch("src.bin");
  make_random_file(src, (3u << 20) + 12345);
  const auto want = sha256_of(src);

  RunResult dd_in = run({"dd", "if=" + src, "of=" + at("dd.bin"), "bs=64k"});
  ASSERT_TRUE(dd_in.ok()) << dd_in.describe();
  RunResult dd_out = run({"dd", "if=" + at("dd.bin"), "of=" + mnt().scratch("dd.out"), "bs=1M"});
  ASSERT_TRUE(dd_out.ok()) << dd_out.describe();
  EXPECT_EQ(sha256_of(mnt().scratch("dd.out")), want);

  RunResult cat_in = sh("cat '" + src + "' > '" + at("cat.bin") + "'");
  ASSERT_TRUE(cat_in.ok()) << cat_in.describe();
  RunResult cat_out = sh("cat '" + at("cat.bin") + "' > '" + mnt().scratch("cat.out") + "'");
  ASSERT_TRUE(cat_out.ok()) << cat_out.describe();
  EXPECT_EQ(sha256_of(mnt().scratch("cat.out")), want);
}

TEST_F(Semantics, GzipThenGunzipTheReadBackBytes) {
  const auto text = mnt().scratch("text");
  ASSERT_TRUE(sh("seq 1 300000 > '" + text + "'").ok());
  const auto want = sha256_of(text);
  RunResult gz = sh("gzip -c < '" + text + "' > '" + at("x.gz") + "'");
  ASSERT_TRUE(gz.ok()) << gz.describe();
  RunResult back = sh("gunzip -c '" + at("x.gz") + "' | sha256sum");
  ASSERT_TRUE(back.ok()) << back.describe();
  EXPECT_EQ(back.out.substr(0, 64), want);
}

TEST_F(Semantics, ReaddirShowsStreamsAsRegularFiles) {
  make_stream(at("f"), "x");
  RunResult ls = run({"find", mnt().path(), "-mindepth", "1", "-printf", "%y %f\n"});
  ASSERT_TRUE(ls.ok()) << ls.describe();
  EXPECT_EQ(ls.out, "f f\n") << "find's %y: f = regular file, p = FIFO";
}

}  // namespace
}  // namespace capturefs::test
