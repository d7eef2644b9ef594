// The daemon's life cycle: readiness, signals, umount, background mode,
// refused mounts, and what it leaves (nothing) on the real file system.
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <dirent.h>
#include <fstream>
#include <iostream>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "mount_fixture.hpp"

namespace capturefs::test {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

bool contains(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

// Lines of /proc/self/mounts whose mountpoint is `path`.
std::vector<std::string> mount_lines(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream f("/proc/self/mounts");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string dev, mp;
    in >> dev >> mp;
    if (mp == path) out.push_back(line);
  }
  return out;
}

// PIDs (other than ours) whose command line has "mount" and `mountpoint`.
std::vector<pid_t> daemons_for(const std::string& mountpoint) {
  std::vector<pid_t> pids;
  DIR* d = ::opendir("/proc");
  if (!d) return pids;
  while (dirent* e = ::readdir(d)) {
    if (!std::isdigit(static_cast<unsigned char>(e->d_name[0]))) continue;
    pid_t pid = std::stoi(e->d_name);
    if (pid == ::getpid()) continue;
    std::string cmd = read_file(std::string("/proc/") + e->d_name + "/cmdline");
    std::vector<std::string> args;
    std::string cur;
    for (char c : cmd) {
      if (c == '\0') {
        args.push_back(cur);
        cur.clear();
      } else {
        cur += c;
      }
    }
    bool has_mp = std::find(args.begin(), args.end(), mountpoint) != args.end();
    bool has_mount = std::find(args.begin(), args.end(), "mount") != args.end();
    bool is_fusermount = !args.empty() && contains(args[0], "fusermount");
    if (has_mp && has_mount && !is_fusermount) pids.push_back(pid);
  }
  ::closedir(d);
  return pids;
}

// Leaves no mount or daemon behind, whatever a test (or a buggy build) did.
struct MountGuard {
  std::string path;
  ~MountGuard() {
    for (pid_t p : daemons_for(path)) ::kill(p, SIGTERM);
    if (!mount_lines(path).empty()) {
      eventually([&] { return mount_lines(path).empty(); }, 5s);
    }
    while (!mount_lines(path).empty()) {
      RunResult r = run({"fusermount3", "-u", "-z", path}, 20s);
      if (!r.ok()) break;
    }
    for (pid_t p : daemons_for(path)) ::kill(p, SIGKILL);
  }
};

// Waits for a process that is not our child to be gone (pidfd readiness).
bool process_gone(pid_t pid, Millis timeout) {
  UniqueFd pfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pfd) return errno == ESRCH;
  pollfd p{pfd.get(), POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
}

std::string project_version() {
  const char* src = std::getenv("CAPTUREFS_SRC");
  std::string build = read_file(std::string(src ? src : ".") + "/meson.build");
  std::smatch m;
  if (std::regex_search(build, m, std::regex(R"(version\s*:\s*'([^']+)')"))) return m[1];
  return "";
}

// ------------------------------------------------------------ readiness

TEST(Lifecycle, ReadyMeansTheMountIsLive) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m;
  // Nothing polled: the fixture only waited for "ready\n".
  std::string type;
  ASSERT_TRUE(is_mountpoint(m.path(), &type)) << "\"ready\" came before the mount was live";
  EXPECT_EQ(type.rfind("fuse", 0), 0u) << type;
  struct stat mnt{}, parent{};
  ASSERT_EQ(stat_err(m.path(), &mnt), 0);
  ASSERT_EQ(stat_err(m.root(), &parent), 0);
  EXPECT_NE(mnt.st_dev, parent.st_dev);
  EXPECT_TRUE(S_ISDIR(mnt.st_mode));

  UniqueFd w = open_fd(m.at("x"), O_WRONLY | O_CREAT);
  ASSERT_TRUE(w) << errno_string(errno);
  ASSERT_EQ(write_all(w.get(), "hi"), "");
  struct stat st{};
  ASSERT_EQ(stat_err(m.at("x"), &st), 0);
  EXPECT_EQ(st.st_size, 2);
  EXPECT_TRUE(m.ready_fd_closed(10s)) << "the daemon must close --ready-fd after writing \"ready\\n\"";
}

TEST(Lifecycle, OptionsAreAccepted) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m({"-o", "noatime", "-d", "--max-memory", "1G", "--max-stream", "4096K"});
  auto lines = mount_lines(m.path());
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_TRUE(contains(lines[0], "noatime")) << "-o noatime not applied: " << lines[0];
  make_random_file(m.scratch("r"), 4096);
  ASSERT_TRUE(run({"cp", m.scratch("r"), m.at("r")}).ok());
  EXPECT_EQ(cat(m.at("r")).size(), 4096u);
  EXPECT_FALSE(m.daemon_stderr().empty()) << "-d printed nothing";
}

TEST(Lifecycle, HelpAndVersion) {
  const auto bin = capturefs_binary();
  RunResult help = run({bin, "--help"}, 20s);
  EXPECT_TRUE(help.ok()) << help.describe();
  for (const char* word : {"mount", "umount"}) {
    EXPECT_TRUE(contains(help.out, word)) << "--help does not mention " << word << ":\n" << help.out;
  }
  RunResult mhelp = run({bin, "mount", "--help"}, 20s);
  EXPECT_TRUE(mhelp.ok()) << mhelp.describe();
  for (const char* word : {"--foreground", "--debug", "-o", "--max-memory", "--max-stream", "--ready-fd",
                           "--spill-dir", "--spill-limit", "--no-spill"}) {
    EXPECT_TRUE(contains(mhelp.out, word)) << "`mount --help` does not mention " << word << ":\n" << mhelp.out;
  }
  RunResult ver = run({bin, "--version"}, 20s);
  EXPECT_TRUE(ver.ok()) << ver.describe();
  const auto v = project_version();
  ASSERT_FALSE(v.empty());
  EXPECT_TRUE(contains(ver.out, v)) << "--version printed: " << ver.out;
}

// ------------------------------------------------------------ stopping

class DaemonSignal : public ::testing::TestWithParam<int> {};

TEST_P(DaemonSignal, UnmountsAndExitsZero) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m;
  {
    UniqueFd w = open_fd(m.at("unread"), O_WRONLY | O_CREAT);
    ASSERT_TRUE(w);
    ASSERT_EQ(write_all(w.get(), payload("unread", 100000)), "");
  }
  ASSERT_EQ(::kill(m.pid(), GetParam()), 0);
  auto st = m.wait_exit(10s);
  ASSERT_TRUE(st) << "daemon still running 10 s after " << sigabbrev_np(GetParam());
  EXPECT_TRUE(exited_with(*st, 0)) << status_string(*st) << "\n" << m.daemon_stderr();
  EXPECT_TRUE(mount_lines(m.path()).empty()) << "still in /proc/mounts: " << mount_lines(m.path())[0];
}

INSTANTIATE_TEST_SUITE_P(Lifecycle, DaemonSignal, ::testing::Values(SIGTERM, SIGINT),
                         [](const auto& info) { return std::string("SIG") + sigabbrev_np(info.param); });

TEST(Lifecycle, SigtermWhileAReaderIsBlockedStillExitsCleanly) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m;
  UniqueFd w = open_fd(m.at("s"), O_WRONLY | O_CREAT);
  ASSERT_TRUE(w);
  auto argv = python_helper("stream_tool.py");
  argv.insert(argv.end(), {"read-block", m.at("s")});
  Child reader = Child::spawn(argv);
  auto b = wait_blocked_in(reader.pid(), Io::Read, m.path());
  ASSERT_TRUE(b.blocked) << b.observation;

  ASSERT_EQ(::kill(m.pid(), SIGTERM), 0);
  auto st = m.wait_exit(10s);
  ASSERT_TRUE(st) << "daemon still running 10 s after SIGTERM with a blocked reader\n" << m.daemon_stderr();
  EXPECT_TRUE(exited_with(*st, 0)) << status_string(*st) << "\n" << m.daemon_stderr();
  EXPECT_TRUE(mount_lines(m.path()).empty());
  auto rs = reader.wait_for(10s);
  EXPECT_TRUE(rs) << "the blocked reader was left hanging after the daemon exited";
}

TEST(Lifecycle, CapturefsUmount) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m;
  RunResult r = run({capturefs_binary(), "umount", m.path()}, 30s);
  EXPECT_TRUE(r.ok()) << r.describe();
  auto st = m.wait_exit(10s);
  ASSERT_TRUE(st) << "daemon still running 10 s after `capturefs umount`";
  EXPECT_TRUE(exited_with(*st, 0)) << status_string(*st) << "\n" << m.daemon_stderr();
  EXPECT_TRUE(mount_lines(m.path()).empty());
}

TEST(Lifecycle, CapturefsUmountOfAPlainDirectoryFails) {
  CAPTUREFS_REQUIRE_FUSE();
  TempDir t("capturefs-fail");
  RunResult r = run({capturefs_binary(), "umount", t.path()}, 30s);
  EXPECT_FALSE(r.timed_out);
  EXPECT_NE(r.code(), 0) << r.describe();
  EXPECT_TRUE(contains(r.err, t.path())) << r.err;
}

TEST(Lifecycle, FusermountMakesTheDaemonExitZero) {
  CAPTUREFS_REQUIRE_FUSE();
  Mount m;
  RunResult r = run({"fusermount3", "-u", m.path()}, 30s);
  ASSERT_TRUE(r.ok()) << r.describe();
  auto st = m.wait_exit(10s);
  ASSERT_TRUE(st) << "daemon still running 10 s after fusermount3 -u";
  EXPECT_TRUE(exited_with(*st, 0)) << status_string(*st) << "\n" << m.daemon_stderr();
}

// ------------------------------------------------------------ background mode

TEST(Lifecycle, BackgroundMountReturnsOnlyWhenLive) {
  CAPTUREFS_REQUIRE_FUSE();
  TempDir t("capturefs-bg");
  const auto mp = t.at("mnt");
  ASSERT_EQ(::mkdir(mp.c_str(), 0755), 0);
  MountGuard guard{mp};

  RunResult r = run({capturefs_binary(), "mount", mp}, 30s);
  ASSERT_TRUE(r.ok()) << r.describe();
  // Right after it returned, no waiting: the mount is live.
  EXPECT_EQ(mount_lines(mp).size(), 1u) << "`mount` returned before the mount was live";
  UniqueFd w = open_fd(mp + "/x", O_WRONLY | O_CREAT);
  ASSERT_TRUE(w) << "create right after `mount` returned: " << errno_string(errno);
  ASSERT_EQ(write_all(w.get(), "live"), "");
  struct stat st{};
  ASSERT_EQ(stat_err(mp + "/x", &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_size, 4);
  w.reset();

  auto pids = daemons_for(mp);
  ASSERT_EQ(pids.size(), 1u) << "expected one background daemon for " << mp;
  const pid_t daemon = pids[0];
  std::cout << "background daemon pid " << daemon << std::endl;

  RunResult u = run({capturefs_binary(), "umount", mp}, 30s);
  EXPECT_TRUE(u.ok()) << u.describe();
  EXPECT_TRUE(process_gone(daemon, 10s)) << "background daemon " << daemon << " still running after umount";
  EXPECT_TRUE(mount_lines(mp).empty());
}

// ------------------------------------------------------------ refused mounts

struct FailCase {
  std::string name;
  bool foreground;
};

class MountFailure : public ::testing::TestWithParam<FailCase> {};

TEST_P(MountFailure, ExitsNonZeroQuicklyNamingPathAndCause) {
  CAPTUREFS_REQUIRE_FUSE();
  const auto& c = GetParam();
  TempDir t("capturefs-fail");
  std::unique_ptr<Mount> live;
  std::string path, cause;
  if (c.name == "missing") {
    path = t.at("nope");
    cause = "does not exist";
  } else if (c.name == "file") {
    path = t.at("file");
    write_file(path, "x");
    cause = "not a directory";
  } else if (c.name == "nonempty") {
    path = t.at("full");
    ASSERT_EQ(::mkdir(path.c_str(), 0755), 0);
    write_file(path + "/keep", "keep");
    cause = "not empty";
  } else {
    live = std::make_unique<Mount>();
    path = live->path();
    cause = "already mounted";
  }
  // Cleans up after a build that mounts anyway (the live mount has its own RAII).
  std::optional<MountGuard> guard;
  if (!live) guard.emplace(path);

  std::vector<std::string> argv = {capturefs_binary(), "mount", path};
  if (c.foreground) argv.push_back("-f");
  RunResult r = run(argv, 20s);
  EXPECT_FALSE(r.timed_out);
  EXPECT_TRUE(WIFEXITED(r.status) && WEXITSTATUS(r.status) != 0) << r.describe();
  EXPECT_LT(r.elapsed, 5s) << "took " << r.elapsed.count() << " ms";
  EXPECT_TRUE(contains(r.err, path)) << "message does not name " << path << ":\n" << r.err;
  EXPECT_TRUE(contains(lower(r.err), cause)) << "message does not say \"" << cause << "\":\n" << r.err;

  if (live) {
    EXPECT_EQ(mount_lines(path).size(), 1u) << "a second mount was stacked on " << path;
    UniqueFd w = open_fd(live->at("still"), O_WRONLY | O_CREAT);
    EXPECT_TRUE(w) << "the first mount broke: " << errno_string(errno);
  } else {
    EXPECT_TRUE(mount_lines(path).empty()) << "mounted anyway";
    EXPECT_TRUE(daemons_for(path).empty()) << "a daemon was left running";
  }
  if (c.name == "file") {
    EXPECT_EQ(read_file(path), "x");
  }
  if (c.name == "nonempty") {
    EXPECT_EQ(read_file(path + "/keep"), "keep");
  }
}

INSTANTIATE_TEST_SUITE_P(Lifecycle, MountFailure,
                         ::testing::Values(FailCase{"missing", true}, FailCase{"missing", false},
                                           FailCase{"file", true}, FailCase{"file", false},
                                           FailCase{"nonempty", true}, FailCase{"nonempty", false},
                                           FailCase{"mounted", true}, FailCase{"mounted", false}),
                         [](const auto& info) {
                           return info.param.name + (info.param.foreground ? "_foreground" : "_background");
                         });

TEST(Lifecycle, FailedMountClosesReadyFdWithNothingWritten) {
  CAPTUREFS_REQUIRE_FUSE();
  TempDir t("capturefs-fail");
  const auto path = t.at("nope");
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd rd(p[0]), wr(p[1]);
  SpawnOptions o;
  o.fds = {{wr.get(), 5}};
  Child c = Child::spawn({capturefs_binary(), "mount", path, "-f", "--ready-fd", "5"}, o);
  wr.reset();
  // read_exactly stops at EOF; the deadline only guards a daemon that
  // keeps the pipe open.
  const auto t0 = Clock::now();
  std::string got = read_exactly(rd.get(), 64, 20s);
  EXPECT_LT(Clock::now() - t0, 10s) << "--ready-fd was not closed";
  EXPECT_EQ(got, "");
  int st = c.wait_or_kill(20s);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) != 0) << status_string(st);
  EXPECT_TRUE(contains(c.err(), path)) << c.err();
}

TEST(Lifecycle, MalformedSizeIsRefused) {
  CAPTUREFS_REQUIRE_FUSE();
  TempDir t("capturefs-fail");
  const auto mp = t.at("mnt");
  ASSERT_EQ(::mkdir(mp.c_str(), 0755), 0);
  MountGuard guard{mp};
  RunResult r = run({capturefs_binary(), "mount", mp, "-f", "--max-memory", "12Q"}, 20s);
  EXPECT_FALSE(r.timed_out);
  EXPECT_TRUE(WIFEXITED(r.status) && WEXITSTATUS(r.status) != 0) << r.describe();
  EXPECT_TRUE(contains(r.err, "12Q")) << r.err;
  EXPECT_TRUE(mount_lines(mp).empty());
}

// ------------------------------------------------------------ real file system

std::set<std::string> find_new(const std::vector<std::string>& dirs, const std::string& marker,
                               const std::vector<std::string>& type_args) {
  std::set<std::string> found;
  for (const auto& d : dirs) {
    if (stat_err(d) != 0) continue;
    std::vector<std::string> argv = {"find", d, "-xdev"};
    // Global options (-maxdepth) must come first.
    auto rest = type_args.begin();
    while (rest != type_args.end() && *rest == "-maxdepth") {
      argv.insert(argv.end(), rest, rest + 2);
      rest += 2;
    }
    argv.insert(argv.end(), {"-newer", marker, "("});
    argv.insert(argv.end(), rest, type_args.end());
    argv.insert(argv.end(), {")", "-print"});
    RunResult r = run(argv, 60s);  // exit status ignored: files may vanish while find walks
    std::istringstream in(r.out);
    std::string line;
    while (std::getline(in, line)) found.insert(line);
  }
  return found;
}

// `allowed`: paths of sockets the daemon may listen on (its own socket in
// the runtime directory, which clients find through the mount root).
std::set<std::string> unix_socket_inodes_with_path(const std::set<std::string>& allowed) {
  std::set<std::string> inodes;
  std::ifstream f("/proc/net/unix");
  std::string line;
  std::getline(f, line);  // header
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string num, ref, proto, flags, type, st, inode, path;
    in >> num >> ref >> proto >> flags >> type >> st >> inode >> path;
    if (!path.empty() && path[0] == '/' && !allowed.count(path)) inodes.insert(inode);
  }
  return inodes;
}

// Problems with what the daemon holds: named FIFOs, path-bound sockets
// (but its own socket, `own_socket`), files under temp dirs, unlinked
// (temp) files.
std::vector<std::string> daemon_fd_problems(pid_t pid, const std::set<std::string>& own_files,
                                            const std::string& own_socket = {}) {
  std::vector<std::string> problems;
  const std::string proc = "/proc/" + std::to_string(pid);
  auto bound = unix_socket_inodes_with_path({own_socket});
  const char* tmpdir = std::getenv("TMPDIR");
  std::vector<std::string> temp_roots = {"/tmp/", "/var/tmp/", "/dev/shm/"};
  if (tmpdir && *tmpdir) temp_roots.push_back(std::string(tmpdir) + "/");
  DIR* d = ::opendir((proc + "/fd").c_str());
  if (!d) return {"cannot list " + proc + "/fd: " + errno_string(errno)};
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const std::string fdpath = proc + "/fd/" + e->d_name;
    char buf[4096];
    ssize_t n = ::readlink(fdpath.c_str(), buf, sizeof buf - 1);
    if (n <= 0) continue;
    std::string target(buf, static_cast<std::size_t>(n));
    struct stat st{};
    bool have = ::stat(fdpath.c_str(), &st) == 0;
    const std::string what = "fd " + std::string(e->d_name) + " -> " + target;
    if (target.rfind("socket:[", 0) == 0) {
      std::string inode = target.substr(8, target.size() - 9);
      if (bound.count(inode)) problems.push_back(what + " is a unix socket bound to a path");
      continue;
    }
    if (target.rfind("pipe:[", 0) == 0 || target.rfind("anon_inode:", 0) == 0 || target.rfind("/memfd:", 0) == 0) {
      continue;
    }
    if (own_files.count(target)) continue;
    if (have && S_ISFIFO(st.st_mode)) problems.push_back(what + " is a named FIFO");
    if (have && S_ISSOCK(st.st_mode)) problems.push_back(what + " is a socket file");
    if (contains(target, " (deleted)")) problems.push_back(what + " is an unlinked (temporary) file");
    for (const auto& root : temp_roots) {
      if (target.rfind(root, 0) == 0) problems.push_back(what + " is a file in a temp dir");
    }
  }
  ::closedir(d);
  std::ifstream maps(proc + "/maps");
  std::string line;
  while (std::getline(maps, line)) {
    // (ThreadSanitizer's runtime maps an unlinked /tmp/tsan.rodata.PID of its own.)
    if (contains(line, " (deleted)") && !contains(line, "/memfd:") && !contains(line, "/SYSV") &&
        !contains(line, "/tsan.rodata.")) {
      problems.push_back("mapping of an unlinked file: " + line);
    }
  }
  return problems;
}

TEST(RealFilesystem, NoFifoSocketOrTempFileIsCreated) {
  CAPTUREFS_REQUIRE_FUSE();
  TempDir marker_dir("capturefs-marker");
  const auto marker = marker_dir.at("marker");
  write_file(marker, "");
  // Backdate the marker: -newer must not miss something made in the same tick.
  timespec back[2];
  ::clock_gettime(CLOCK_REALTIME, &back[0]);
  back[0].tv_sec -= 2;
  back[1] = back[0];
  ASSERT_EQ(::utimensat(AT_FDCWD, marker.c_str(), back, 0), 0);
  const std::vector<std::string> scan = {"/tmp", "/var/tmp", "/dev/shm"};
  const auto special_before = find_new(scan, marker, {"-type", "p", "-o", "-type", "s"});

  std::vector<std::string> problems;
  std::string real_mnt_after;
  {
    Mount m;
    const std::set<std::string> own = {m.scratch("daemon.stderr"), m.scratch("daemon.stdout")};
    // The one path-bound socket allowed: the daemon's own, outside the temp
    // dirs ($XDG_RUNTIME_DIR/capturefs or /run/capturefs), named by the root.
    char sock_buf[4096];
    const ssize_t sock_len = ::getxattr(m.path().c_str(), "user.capturefs.socket", sock_buf, sizeof sock_buf);
    ASSERT_GT(sock_len, 0) << errno_string(errno);
    const std::string own_socket(sock_buf, static_cast<std::size_t>(sock_len));
    for (const char* tmp : {"/tmp/", "/var/tmp/", "/dev/shm/"}) EXPECT_NE(own_socket.rfind(tmp, 0), 0u) << own_socket;
    // Exercise every path: redirection, a blocked reader, unread bytes.
    ASSERT_TRUE(sh("seq 1 100000 > '" + m.at("a") + "'").ok());
    EXPECT_EQ(cat(m.at("a")).size(), 588895u);
    UniqueFd w = open_fd(m.at("b"), O_WRONLY | O_CREAT);
    ASSERT_TRUE(w);
    auto argv = python_helper("stream_tool.py");
    argv.insert(argv.end(), {"read-block", m.at("b")});
    Child reader = Child::spawn(argv);
    ASSERT_TRUE(wait_blocked_in(reader.pid(), Io::Read, m.path()).blocked);
    ASSERT_TRUE(run({"dd", "if=/dev/zero", "of=" + m.at("c"), "bs=64k", "count=32"}).ok());
    auto p1 = daemon_fd_problems(m.pid(), own, own_socket);
    problems.insert(problems.end(), p1.begin(), p1.end());
    ASSERT_EQ(write_all(w.get(), "x"), "");
    w.reset();
    EXPECT_TRUE(exited_with(reader.wait_or_kill(20s), 0)) << reader.err();
    EXPECT_EQ(cat(m.at("c")).size(), 2u << 20);
    auto p2 = daemon_fd_problems(m.pid(), own, own_socket);
    problems.insert(problems.end(), p2.begin(), p2.end());

    // Unmount now to look at the real directory under the mountpoint.
    std::string why;
    ASSERT_TRUE(m.unmount(&why)) << why;
    auto st = m.wait_exit(20s);
    ASSERT_TRUE(st);
    EXPECT_TRUE(exited_with(*st, 0)) << status_string(*st);
    int err = 0;
    auto left = list_dir(m.path(), &err);
    EXPECT_EQ(err, 0);
    EXPECT_TRUE(left.empty()) << "the daemon wrote into the real mountpoint dir: " << left[0];
    auto root_entries = list_dir(m.root());
    EXPECT_EQ(root_entries, (std::vector<std::string>{"daemon.stderr", "daemon.stdout", "mnt"}))
        << "unexpected files next to the mountpoint";
    auto special_inside = find_new({m.root()}, marker, {"-type", "p", "-o", "-type", "s"});
    EXPECT_TRUE(special_inside.empty()) << *special_inside.begin();
  }
  for (const auto& p : problems) ADD_FAILURE() << p;

  const auto special_after = find_new(scan, marker, {"-type", "p", "-o", "-type", "s"});
  std::vector<std::string> created;
  std::set_difference(special_after.begin(), special_after.end(), special_before.begin(), special_before.end(),
                      std::back_inserter(created));
  EXPECT_TRUE(created.empty()) << "FIFOs/sockets appeared during the run, e.g. " << created[0];
  // New files directly in the temp dirs that name capturefs or fuse (where
  // a mkstemp() would put them), outside this suite's own TempDirs. Other
  // new files cannot be attributed: the machine has other users of /tmp.
  // Temp files the daemon keeps open or mapped are caught by
  // daemon_fd_problems above, wherever they are.
  std::vector<std::string> temp_files;
  for (const auto& f : find_new(scan, marker, {"-maxdepth", "1", "-type", "f", "(", "-iname", "*capturefs*",
                                               "-o", "-iname", "*fuse*", ")"})) {
    temp_files.push_back(f);
  }
  EXPECT_TRUE(temp_files.empty()) << "temp files appeared during the run, e.g. " << temp_files[0];
}

}  // namespace
}  // namespace capturefs::test
