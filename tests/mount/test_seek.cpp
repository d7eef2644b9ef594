// Readers that seek on a finished file (no writer left), through a real
// mount: unzip and Python's zipfile read the central directory at the end
// first, tar skips members, a trailer check seeks to the end and back
// (docs/semantics.md, `read (consumer)`).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "mount_fixture.hpp"

namespace capturefs::test {
namespace {

using namespace std::chrono_literals;

class Seek : public MountTest {};

// Writes a zip of three members (one stored, two deflated) to argv[1].
const char* kMakeZip =
    "import sys, zipfile\n"
    "with zipfile.ZipFile(sys.argv[1], 'w') as z:\n"
    "    z.writestr('a.txt', 'alpha\\n' * 1000, compress_type=zipfile.ZIP_STORED)\n"
    "    z.writestr('b/c.bin', bytes(range(256)) * 400, compress_type=zipfile.ZIP_DEFLATED)\n"
    "    z.writestr('d.txt', 'delta\\n', compress_type=zipfile.ZIP_DEFLATED)\n";

void make_zip(const std::string& path) {
  RunResult r = run({"python3", "-B", "-c", kMakeZip, path});
  ASSERT_TRUE(r.ok()) << r.describe();
}

bool have(const std::string& tool) { return sh("command -v " + tool + " >/dev/null").ok(); }

TEST_F(Seek, UnzipListsAFinishedZip) {
  if (!have("unzip")) GTEST_SKIP() << "unzip is not installed (scripts/setup-deps.sh)";
  ASSERT_NO_FATAL_FAILURE(make_zip(at("a.zip")));
  RunResult r = run({"unzip", "-l", at("a.zip")});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("a.txt"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("b/c.bin"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("d.txt"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("3 files"), std::string::npos) << r.out;
}

TEST_F(Seek, UnzipExtractsAFinishedZip) {
  if (!have("unzip")) GTEST_SKIP() << "unzip is not installed (scripts/setup-deps.sh)";
  ASSERT_NO_FATAL_FAILURE(make_zip(at("a.zip")));
  // -t checks every member's CRC: the whole file, central directory first.
  RunResult t = run({"unzip", "-t", at("a.zip")});
  ASSERT_TRUE(t.ok()) << t.describe();
  EXPECT_NE(t.out.find("No errors detected"), std::string::npos) << t.out;
}

TEST_F(Seek, UnzipPrintsAMemberOfAFinishedZip) {
  if (!have("unzip")) GTEST_SKIP() << "unzip is not installed (scripts/setup-deps.sh)";
  ASSERT_NO_FATAL_FAILURE(make_zip(at("a.zip")));
  RunResult p = run({"unzip", "-p", at("a.zip"), "d.txt"});
  ASSERT_TRUE(p.ok()) << p.describe();
  EXPECT_EQ(p.out, "delta\n");
}

TEST_F(Seek, PythonZipfileReadsAFinishedZip) {
  ASSERT_NO_FATAL_FAILURE(make_zip(at("a.zip")));
  const std::string code =
      "import sys, zipfile\n"
      "with zipfile.ZipFile(sys.argv[1]) as z:\n"
      "    assert z.namelist() == ['a.txt', 'b/c.bin', 'd.txt'], z.namelist()\n"
      "    assert z.read('d.txt') == b'delta\\n'\n"
      "    assert z.read('a.txt') == b'alpha\\n' * 1000\n"
      "    assert z.read('b/c.bin') == bytes(range(256)) * 400\n"
      "    assert z.testzip() is None\n"
      "print('ok')\n";
  RunResult r = run({"python3", "-B", "-c", code, at("a.zip")});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(r.out, "ok\n");
}

TEST_F(Seek, TarListsAFinishedTarSeekingOverItsMembers) {
  const std::string src = mnt().scratch("src");
  RunResult mk = sh("mkdir -p " + src + " && head -c 300000 /dev/urandom > " + src +
                    "/one && printf two > " + src + "/two && head -c 70000 /dev/zero > " + src +
                    "/three && tar -C " + src + " -cf " + at("a.tar") + " one two three");
  ASSERT_TRUE(mk.ok()) << mk.describe();
  RunResult r = run({"tar", "--seek", "-tf", at("a.tar")});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(r.out, "one\ntwo\nthree\n");
}

TEST_F(Seek, ATrailerCheckThenAFullReadAndPreadsGetTheSameBytes) {
  // samtools' BGZF end check: the last 28 bytes, then from 0; re-reads
  // and pread at scattered offsets in the same open.
  const std::string ref = mnt().scratch("ref");
  RunResult mk = sh("head -c 3000000 /dev/urandom > " + ref + " && cp " + ref + " " + at("x.bam"));
  ASSERT_TRUE(mk.ok()) << mk.describe();
  const std::string code =
      "import os, sys, random\n"
      "want = open(sys.argv[2], 'rb').read()\n"
      "with open(sys.argv[1], 'rb') as f:\n"
      "    f.seek(-28, os.SEEK_END)\n"
      "    assert f.read(28) == want[-28:]\n"
      "    assert f.read(10) == b''\n"
      "    f.seek(0)\n"
      "    assert f.read() == want\n"
      "    f.seek(0)\n"
      "    assert f.read(4096) == want[:4096]\n"
      "    rnd = random.Random(5)\n"
      "    for _ in range(300):\n"
      "        off = rnd.randrange(len(want) + 10)\n"
      "        n = rnd.randrange(1, 70000)\n"
      "        assert os.pread(f.fileno(), n, off) == want[off:off + n], (off, n)\n"
      "print('ok')\n";
  RunResult r = run({"python3", "-B", "-c", code, at("x.bam"), ref});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(r.out, "ok\n");
  // It read to the end and closed: delivered, the name is gone.
  EXPECT_EQ(stat_err(at("x.bam")), ENOENT);
}

TEST_F(Seek, AReaderThatLeavesEarlyHandsTheRestToTheNext) {
  const std::string ref = mnt().scratch("ref");
  RunResult mk = sh("head -c 200000 /dev/urandom > " + ref + " && cp " + ref + " " + at("x"));
  ASSERT_TRUE(mk.ok()) << mk.describe();
  // Reads [100000, 100100) and [0, 10) then closes: everything up to 100100
  // is released; the next reader starts there.
  const std::string code =
      "import os, sys\n"
      "want = open(sys.argv[2], 'rb').read()\n"
      "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
      "assert os.pread(fd, 100, 100000) == want[100000:100100]\n"
      "assert os.pread(fd, 10, 0) == want[:10]\n"
      "os.close(fd)\n"
      "with open(sys.argv[1], 'rb') as f:\n"
      "    assert f.read() == want[100100:]\n"
      "print('ok')\n";
  RunResult r = run({"python3", "-B", "-c", code, at("x"), ref});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(r.out, "ok\n");
}

TEST_F(Seek, ReadsWhileAWriterIsOpenStillConsume) {
  UniqueFd w = open_fd(at("s"), O_WRONLY | O_CREAT);
  ASSERT_TRUE(w) << errno_string(errno);
  UniqueFd r = open_fd(at("s"), O_RDONLY);
  ASSERT_TRUE(r) << errno_string(errno);
  ASSERT_EQ(write_all(w.get(), "0123456789"), "");
  char buf[16];
  ASSERT_EQ(::pread(r.get(), buf, 2, 5), 2);  // consumes [0, 5)
  EXPECT_EQ(::pread(r.get(), buf, 2, 0), -1);
  EXPECT_EQ(errno, EIO);
  w.reset();  // the last writer leaves: what is held is random-access now
  ASSERT_EQ(::pread(r.get(), buf, 5, 5), 5);
  EXPECT_EQ(std::string(buf, 5), "56789");
  ASSERT_EQ(::pread(r.get(), buf, 3, 6), 3);
  EXPECT_EQ(std::string(buf, 3), "678");
  EXPECT_EQ(::pread(r.get(), buf, 2, 4), -1);  // consumed while written
  EXPECT_EQ(errno, EIO);
}

TEST_F(Seek, MmapOfAFinishedStreamPrivateWorksSharedIsENODEV) {
  // Streams are direct_io files: the kernel refuses a shared mapping
  // (ENODEV) and serves a private one through reads at page offsets.
  const std::string ref = mnt().scratch("ref");
  RunResult mk = sh("head -c 300000 /dev/urandom > " + ref + " && cp " + ref + " " + at("s") +
                    " && cp " + ref + " " + at("p"));
  ASSERT_TRUE(mk.ok()) << mk.describe();
  const std::string code =
      "import errno, mmap, os, sys\n"
      "want = open(sys.argv[3], 'rb').read()\n"
      "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
      "try:\n"
      "    mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)\n"
      "    print('shared mapped')\n"
      "except OSError as e:\n"
      "    print('shared', errno.errorcode[e.errno])\n"
      "os.close(fd)\n"
      "fd = os.open(sys.argv[2], os.O_RDONLY)\n"
      "m = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)\n"
      "os.close(fd)\n"
      "assert m[-28:] == want[-28:]\n"
      "assert m[:4096] == want[:4096]\n"
      "assert m[:] == want\n"
      "m.close()\n"
      "print('private ok')\n";
  RunResult r = run({"python3", "-B", "-c", code, at("s"), at("p"), ref});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(r.out, "shared ENODEV\nprivate ok\n");
  // The shared attempt consumed nothing: the file reads whole.
  EXPECT_EQ(sha256_of_data(cat(at("s"))), sha256_of(ref));
}

TEST_F(Seek, MmapOfAStreamStillWrittenConsumesAndAnEarlierPageIsSIGBUS) {
  // The mapper is not the writer (else a self-read): its page reads
  // consume, so a page before the one touched first is gone.
  UniqueFd w = open_fd(at("w"), O_WRONLY | O_CREAT);
  ASSERT_TRUE(w) << errno_string(errno);
  ASSERT_EQ(write_all(w.get(), std::string(4 * 1024 * 1024, 'x')), "");
  const std::string code =
      "import mmap, os, sys\n"
      "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
      "m = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)\n"
      "assert m[3500000:3500010] == b'x' * 10\n"
      "print('late page ok', flush=True)\n"
      "m[0:10]\n"
      "print('first page ok', flush=True)\n";
  RunResult r = run({"python3", "-B", "-c", code, at("w")});
  EXPECT_TRUE(killed_by(r.status, SIGBUS)) << r.describe();
  EXPECT_EQ(r.out, "late page ok\n");
}

}  // namespace
}  // namespace capturefs::test
