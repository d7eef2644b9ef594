// `capturefs mount --socket` for real: the socket file's life cycle and the
// CLI clients (`capturefs cat`, `watch`, `status`) against a live mount.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "mount_fixture.hpp"
#include "socket_client.hpp"

namespace capturefs::test {
namespace {

class SocketTest : public MountTest {
 protected:
  bool with_socket() const override { return true; }
  std::string sock() { return mnt().socket_path(); }
  std::vector<std::string> cli(std::vector<std::string> args) {
    args.insert(args.begin(), capturefs_binary());
    return args;
  }
};

/// Lines read from a pipe until `n` of them came (or the deadline).
std::vector<std::string> read_lines(int fd, std::size_t n, Millis timeout = 20s) {
  std::vector<std::string> lines;
  std::string buf;
  const auto deadline = Clock::now() + timeout;
  while (lines.size() < n) {
    const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    char tmp[4096];
    const ssize_t r = ::read(fd, tmp, sizeof tmp);
    if (r <= 0) break;
    buf.append(tmp, static_cast<std::size_t>(r));
    for (std::size_t nl; (nl = buf.find('\n')) != std::string::npos;) {
      lines.push_back(buf.substr(0, nl));
      buf.erase(0, nl + 1);
    }
  }
  return lines;
}

/// Leaves a socket file nobody listens on, as a SIGKILLed daemon does.
void make_stale_socket(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0) << errno_string(errno);
  ::close(fd);
}

TEST_F(SocketTest, TheSocketIsPrivate) {
  struct stat st{};
  ASSERT_EQ(::lstat(sock().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  // (The fixture checks that the daemon removes it when it exits.)
}

TEST_F(SocketTest, CatWritesTheStreamAcknowledgesItAndTheNameGoes) {
  write_file(at("result.txt"), "line one\nline two\n");
  RunResult r = run(cli({"cat", "--socket", sock(), "result.txt"}));
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(r.out, "line one\nline two\n");
  EXPECT_EQ(stat_err_elsewhere(at("result.txt")), ENOENT);  // delivered: gone
}

TEST_F(SocketTest, CatOfAMissingNameFailsAtOnceNamingTheSocketAndTheName) {
  RunResult r = run(cli({"cat", "--socket", sock(), "no/such.bin"}), 20s);
  EXPECT_EQ(r.code(), 1) << r.describe();
  EXPECT_NE(r.err.find(sock()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("no/such.bin"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("no such stream"), std::string::npos) << r.err;
  // And a socket path with no daemon: the path and the reason.
  RunResult n = run(cli({"cat", "--socket", mnt().scratch("none.sock"), "x"}), 20s);
  EXPECT_EQ(n.code(), 1) << n.describe();
  EXPECT_NE(n.err.find(mnt().scratch("none.sock")), std::string::npos) << n.err;
}

TEST_F(SocketTest, CatWaitTakesAStreamCreatedAfterIt) {
  SpawnOptions o;
  o.stdout_path = mnt().scratch("out");
  Child cat = Child::spawn(cli({"cat", "--socket", sock(), "--wait", "later.txt"}), o);
  // Wait until its subscription is in place (a live connection is visible
  // only indirectly; a stream created before it subscribes is offered at
  // SUBSCRIBE anyway, so either order is correct).
  write_file(at("later.txt"), "made later\n");
  EXPECT_TRUE(exited_with(cat.wait_or_kill(30s), 0)) << cat.err();
  EXPECT_EQ(read_file(mnt().scratch("out")), "made later\n");
}

TEST_F(SocketTest, CatOfAnAbortedStreamExitsNonZeroWithTheReason) {
  UniqueFd w = open_fd(at("doomed"), O_WRONLY | O_CREAT);
  ASSERT_TRUE(w);
  ASSERT_EQ(write_all(w.get(), "partial"), "");
  SpawnOptions o;
  o.pipe_stdout = true;
  Child cat = Child::spawn(cli({"cat", "--socket", sock(), "doomed"}), o);
  // The consumer has it once the first bytes reach cat's stdout.
  EXPECT_EQ(read_exactly(cat.stdout_fd(), 7, 20s), "partial");
  ASSERT_EQ(::unlink(at("doomed").c_str()), 0);
  const int st = cat.wait_or_kill(30s);
  EXPECT_TRUE(exited_with(st, 1)) << status_string(st) << " " << cat.err();
  EXPECT_NE(cat.err().find("aborted"), std::string::npos) << cat.err();
  EXPECT_NE(cat.err().find("doomed"), std::string::npos) << cat.err();
}

TEST_F(SocketTest, CatDeliversALargeStreamByteExactWhileItIsWritten) {
  const std::string src = mnt().scratch("src.bin");
  make_random_file(src, 48ULL << 20);
  Child writer = Child::spawn({"sh", "-c", "cat \"$0\" > \"$1\"", src, at("big.bin")});
  SpawnOptions o;
  o.stdout_path = mnt().scratch("got.bin");
  Child cat = Child::spawn(cli({"cat", "--socket", sock(), "--wait", "big.bin"}), o);
  EXPECT_TRUE(exited_with(writer.wait_or_kill(60s), 0));
  EXPECT_TRUE(exited_with(cat.wait_or_kill(60s), 0)) << cat.err();
  EXPECT_EQ(sha256_of(mnt().scratch("got.bin")), sha256_of(src));
}

TEST_F(SocketTest, WatchObservePrintsEscapedJsonForAnAwkwardName) {
  SpawnOptions o;
  o.pipe_stdout = true;
  Child watch = Child::spawn(cli({"watch", "--socket", sock(), "--observe"}), o);
  // The observer is subscribed once it reports an existing stream.
  write_file(at("marker"), "m");
  auto first = read_lines(watch.stdout_fd(), 1);
  ASSERT_EQ(first.size(), 1u) << watch.err();
  EXPECT_NE(first[0].find("\"event\":\"opened\""), std::string::npos) << first[0];
  EXPECT_NE(first[0].find("\"path\":\"marker\""), std::string::npos) << first[0];

  const std::string name = std::string("new\nline\xff\xfe.log");
  write_file(at(name), "12345");
  ASSERT_EQ(::unlink(at(name).c_str()), 0);  // an observer's CLOSED comes when the stream leaves
  auto lines = read_lines(watch.stdout_fd(), 2);
  ASSERT_EQ(lines.size(), 2u) << watch.err();
  const std::string escaped = "\"path\":\"new\\nline\\u00ff\\u00fe.log\"";
  // base64 of "new\nline\xff\xfe.log"
  const std::string b64 = "\"path_base64\":\"bmV3CmxpbmX//i5sb2c=\"";
  EXPECT_NE(lines[0].find("\"event\":\"opened\""), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find(escaped), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find(b64), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("\"pid\":"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("\"time\":\""), std::string::npos) << lines[0];
  EXPECT_NE(lines[1].find("\"event\":\"closed\""), std::string::npos) << lines[1];
  EXPECT_NE(lines[1].find(escaped), std::string::npos) << lines[1];
  EXPECT_NE(lines[1].find("\"total\":5"), std::string::npos) << lines[1];
  EXPECT_NE(lines[1].find("\"status\":\"aborted\""), std::string::npos) << lines[1];
  // Observing consumed nothing.
  EXPECT_EQ(read_file(at("marker")), "m");
  watch.kill_and_reap();
}

TEST_F(SocketTest, WatchConsumesNothingAndTakeConsumes) {
  SpawnOptions o;
  o.pipe_stdout = true;
  Child watch = Child::spawn(cli({"watch", "--socket", sock(), "w*"}), o);
  write_file(at("w1"), "hello");
  auto lines = read_lines(watch.stdout_fd(), 1);
  ASSERT_EQ(lines.size(), 1u) << watch.err();
  EXPECT_NE(lines[0].find("\"event\":\"opened\""), std::string::npos) << lines[0];
  // Watching took nothing: the bytes are still there, for whoever takes them.
  RunResult p = run(cli({"peek", at("w1")}));
  ASSERT_TRUE(p.ok()) << p.describe();
  EXPECT_EQ(p.out, "hello");
  TempDir out("capturefs-take");
  RunResult t = run(cli({"take", mnt().path(), "w*", "--to", out.path(), "--once"}));
  ASSERT_TRUE(t.ok()) << t.describe();
  EXPECT_NE(t.out.find("\"event\":\"taken\""), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("\"status\":\"complete\""), std::string::npos) << t.out;
  EXPECT_EQ(read_file(out.at("w1")), "hello");
  EXPECT_TRUE(eventually([&] { return stat_err_elsewhere(at("w1")) == ENOENT; }, 10s));
  lines = read_lines(watch.stdout_fd(), 1);
  ASSERT_EQ(lines.size(), 1u) << watch.err();
  EXPECT_NE(lines[0].find("\"event\":\"closed\""), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("\"status\":\"complete\""), std::string::npos) << lines[0];
  watch.kill_and_reap();
}

TEST_F(SocketTest, TakePipesEachStreamToACommand) {
  TempDir out("capturefs-take-exec");
  write_file(at("a.txt"), "abc");
  RunResult t = run(cli({"take", "--socket", sock(), "--once", "--exec", "cat > " + out.at("got") + "; echo \"$CAPTUREFS_PATH\" > " + out.at("name")}));
  ASSERT_TRUE(t.ok()) << t.describe();
  EXPECT_EQ(read_file(out.at("got")), "abc");
  EXPECT_EQ(read_file(out.at("name")), "a.txt\n");
}

TEST_F(SocketTest, TheMountpointFindsTheDaemon) {
  ASSERT_EQ(::mkdir(at("dir").c_str(), 0755), 0);
  write_file(at("dir/x.log"), "0123456789");
  // status, peek and cat with paths in the mount, no --socket.
  RunResult s = run(cli({"status", mnt().path()}));
  ASSERT_TRUE(s.ok()) << s.describe();
  EXPECT_NE(s.out.find("dir/x.log"), std::string::npos) << s.out;
  EXPECT_NE(s.out.find("SPILLED"), std::string::npos) << s.out;
  EXPECT_NE(s.out.find("WAIT"), std::string::npos) << s.out;
  RunResult j = run(cli({"status", "--json", mnt().path()}));
  ASSERT_TRUE(j.ok()) << j.describe();
  EXPECT_NE(j.out.find("\"spilled\":0"), std::string::npos) << j.out;
  EXPECT_NE(j.out.find("\"wait\":\"none\""), std::string::npos) << j.out;
  RunResult p = run(cli({"peek", "--bytes", "4", at("dir/x.log")}));
  ASSERT_TRUE(p.ok()) << p.describe();
  EXPECT_EQ(p.out, "0123");
  RunResult again = run(cli({"peek", at("dir/x.log")}));  // nothing was consumed
  EXPECT_EQ(again.out, "0123456789");
  RunResult c = run(cli({"cat", at("dir/x.log")}));
  ASSERT_TRUE(c.ok()) << c.describe();
  EXPECT_EQ(c.out, "0123456789");
  EXPECT_TRUE(eventually([&] { return stat_err_elsewhere(at("dir/x.log")) == ENOENT; }, 10s));
  RunResult gone = run(cli({"peek", at("dir/x.log")}));
  EXPECT_EQ(gone.code(), 1) << gone.describe();
  EXPECT_NE(gone.err.find("no such stream"), std::string::npos) << gone.err;
  RunResult outside = run(cli({"status", "/"}));
  EXPECT_EQ(outside.code(), 2) << outside.describe();
  EXPECT_NE(outside.err.find("is not a capturefs mount"), std::string::npos) << outside.err;
}

TEST(SocketMount, AMountWithoutSocketGetsAPrivateDefaultOne) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m;
  char buf[4096];
  const ssize_t n = ::getxattr(m.path().c_str(), "user.capturefs.socket", buf, sizeof buf);
  ASSERT_GT(n, 0) << std::strerror(errno);
  const std::string path(buf, static_cast<std::size_t>(n));
  struct stat st{};
  ASSERT_EQ(::stat(path.c_str(), &st), 0) << path;
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // Every other xattr call is still unsupported, on the root too.
  EXPECT_EQ(::getxattr(m.path().c_str(), "user.other", buf, sizeof buf), -1);
  EXPECT_EQ(errno, ENOTSUP);
  EXPECT_EQ(::setxattr(m.path().c_str(), "user.capturefs.socket", "x", 1, 0), -1);
  EXPECT_EQ(errno, ENOTSUP);
  RunResult s = run({capturefs_binary(), "status", m.path()});
  EXPECT_TRUE(s.ok()) << s.describe();
}

TEST_F(SocketTest, StatusListsEveryLiveStream) {
  RunResult empty = run(cli({"status", "--socket", sock()}));
  ASSERT_TRUE(empty.ok()) << empty.describe();
  EXPECT_NE(empty.out.find("PATH"), std::string::npos) << empty.out;

  UniqueFd w = open_fd(at("open.log"), O_WRONLY | O_CREAT);
  ASSERT_EQ(write_all(w.get(), std::string(3000, 'x')), "");
  write_file(at("held.txt"), "done");
  RunResult r = run(cli({"status", "--socket", sock()}));
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("open.log"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("writing"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("held.txt"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("held"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("2.9K"), std::string::npos) << r.out;
  RunResult j = run(cli({"status", "--socket", sock(), "--json"}));
  ASSERT_TRUE(j.ok()) << j.describe();
  EXPECT_NE(j.out.find("\"path\":\"open.log\""), std::string::npos) << j.out;
  EXPECT_NE(j.out.find("\"written\":3000"), std::string::npos) << j.out;
  EXPECT_NE(j.out.find("\"state\":\"writing\""), std::string::npos) << j.out;
  EXPECT_NE(j.out.find("\"state\":\"held\""), std::string::npos) << j.out;
  EXPECT_NE(j.out.find("\"pid\":" + std::to_string(::getpid())), std::string::npos) << j.out;
}

TEST_F(SocketTest, ALiveSocketFailsASecondMountBeforeItMounts) {
  const std::string other = mnt().scratch("other");
  ASSERT_EQ(::mkdir(other.c_str(), 0755), 0);
  RunResult r = run(cli({"mount", other, "-f", "--socket", sock()}), 30s);
  EXPECT_EQ(r.code(), 1) << r.describe();
  EXPECT_NE(r.err.find(sock()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("in use"), std::string::npos) << r.err;
  EXPECT_FALSE(is_mountpoint(other));
  // The first daemon still serves.
  RunResult s = run(cli({"status", "--socket", sock()}));
  EXPECT_TRUE(s.ok()) << s.describe();
}

TEST_F(SocketTest, BadBytesGetAnErrorAndTheDaemonServesTheNextClient) {
  {
    ProtoClient g(sock(), /*hello=*/false);
    g.send_raw(std::string("\x00\x00\x00\x00\x00\x00\x00\x00", 8));
    EXPECT_EQ(g.expect_error().code, proto::ErrorCode::bad_magic);
  }
  RunResult s = run(cli({"status", "--socket", sock()}));
  EXPECT_TRUE(s.ok()) << s.describe();
}

TEST_F(SocketTest, SigtermEndsConsumersWithShutdownAndRemovesTheSocket) {
  UniqueFd w = open_fd(at("endless"), O_WRONLY | O_CREAT);
  ASSERT_EQ(write_all(w.get(), "first bytes"), "");
  SpawnOptions o;
  o.pipe_stdout = true;
  Child cat = Child::spawn(cli({"cat", "--socket", sock(), "endless"}), o);
  EXPECT_EQ(read_exactly(cat.stdout_fd(), 11, 20s), "first bytes");
  SpawnOptions wo;
  wo.pipe_stdout = true;
  Child watch = Child::spawn(cli({"watch", "--socket", sock(), "--observe"}), wo);
  EXPECT_EQ(read_lines(watch.stdout_fd(), 1).size(), 1u);  // subscribed (saw "endless")
  ::kill(mnt().pid(), SIGTERM);  // our writer is still open: the stream is not complete
  auto st = mnt().wait_exit(30s);
  ASSERT_TRUE(st) << "the daemon did not exit after SIGTERM";
  EXPECT_TRUE(exited_with(*st, 0)) << status_string(*st) << "\n" << mnt().daemon_stderr();
  EXPECT_EQ(stat_err(sock()), ENOENT);
  // cat was told why its stream ended; watch ends quietly on a shutdown.
  const int cs = cat.wait_or_kill(30s);
  EXPECT_TRUE(exited_with(cs, 1)) << status_string(cs) << " " << cat.err();
  // Its writer was still open: the unmount ends the stream aborted (or,
  // if the daemon stops first, the connection ends with shutdown).
  EXPECT_TRUE(cat.err().find("aborted: unmounted while a writer had it open") != std::string::npos ||
              cat.err().find("shutdown") != std::string::npos)
      << cat.err();
  EXPECT_TRUE(exited_with(watch.wait_or_kill(30s), 0)) << watch.err();
  EXPECT_NE(watch.err().find("shutdown"), std::string::npos) << watch.err();
  w.reset();  // (the mount is gone: the close fails, which is fine)
}

TEST(SocketMount, AStaleSocketIsReplacedAndRemovedAtExit) {
  CAPTUREFS_REQUIRE_FUSE();
  TempDir d("capturefs-stale");
  const std::string path = d.at("stale.sock");
  make_stale_socket(path);
  ASSERT_EQ(connect_unix(path), -1);
  ASSERT_EQ(errno, ECONNREFUSED);
  {
    Mount m({"--socket", path});
    RunResult s = run({capturefs_binary(), "status", "--socket", path});
    EXPECT_TRUE(s.ok()) << s.describe();
  }
  EXPECT_EQ(stat_err(path), ENOENT);
}

TEST(SocketMount, APathThatIsNotASocketIsKept) {
  CAPTUREFS_REQUIRE_FUSE();
  TempDir d("capturefs-notsock");
  const std::string path = d.at("file");
  write_file(path, "precious");
  ASSERT_EQ(::mkdir(d.at("mnt").c_str(), 0755), 0);
  RunResult r = run({capturefs_binary(), "mount", d.at("mnt"), "-f", "--socket", path}, 30s);
  EXPECT_EQ(r.code(), 1) << r.describe();
  EXPECT_NE(r.err.find("not a socket"), std::string::npos) << r.err;
  EXPECT_EQ(read_file(path), "precious");
  EXPECT_FALSE(is_mountpoint(d.at("mnt")));
}

}  // namespace
}  // namespace capturefs::test
