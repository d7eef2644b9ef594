// The consumer side of scripts/bench's "capturefs callback" column: a
// program that mounts a capture directory in-process with libcapturefs
// (capturefs::Mount) and consumes every stream with callbacks
// (Mount::consume, default ConsumeOptions: 2 delivery threads, chunks of at
// most 256 KiB, acknowledged when on_data returns). It discards the bytes,
// counting them, and reports to the benchmark driver (tests/bench/io_helper.c)
// over a FIFO, one line per event (each line is one write(2) of less than
// PIPE_BUF bytes, so lines from different delivery threads never mix):
//
//   E PATH TOTAL CHUNKS STATUS   a stream ended: PATH relative to the mount,
//                                TOTAL bytes consumed (checked against the
//                                stream's total), CHUNKS on_data calls,
//                                STATUS "ok", "aborted:REASON" or "bad:WHAT"
//   L PATH NS                    a 64-byte latency message of a stream named
//                                "lat.*" arrived: NS = this process's
//                                CLOCK_MONOTONIC in on_data minus the time
//                                the writer stored in the message's first
//                                8 bytes
//
// A stream whose name ends in ".wSIZE" was written in SIZE-byte writes of
// io_helper's pattern: the first and last byte of every chunk are checked.
// Writers are separate processes writing into the mount (io_helper); the
// driver stops its clock when it reads the E line.
//
//   bench_callback MOUNTPOINT REPORT_FIFO [READY_FD]
//
// Creates REPORT_FIFO if missing and holds it open read-write (so that
// writing never fails for want of a reader; the driver drains stale lines
// before it measures). Writes "ready\n" to READY_FD once mounted and
// consuming. Runs until SIGINT or SIGTERM, then stops the consumer and
// unmounts.
#include <capturefs/capturefs.hpp>

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>
#include <system_error>
#include <unordered_map>

namespace {

std::uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<std::uint64_t>(ts.tv_nsec);
}

int g_report = -1;

void report(const std::string& line) {
  const char* p = line.data();
  std::size_t n = line.size();
  while (n > 0) {
    const ssize_t w = ::write(g_report, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "bench_callback: report: %s\n", std::strerror(errno));
      std::_Exit(1);
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

constexpr std::size_t kLatMsg = 64;

struct State {
  std::string path;
  std::uint64_t next = 0;   // offset of the next byte expected
  std::uint64_t chunks = 0;
  std::uint64_t size = 0;   // pattern write size (".wSIZE"), 0: none
  bool lat = false;         // "lat.*": 64-byte timestamped messages
  unsigned char msg[kLatMsg] = {};
  std::size_t have = 0;
  std::string bad;          // first problem seen
};

std::uint64_t pattern_size(const std::string& path) {
  const std::size_t dot = path.rfind(".w");
  if (dot == std::string::npos || dot + 2 >= path.size()) return 0;
  std::uint64_t v = 0;
  for (std::size_t i = dot + 2; i < path.size(); ++i) {
    if (path[i] < '0' || path[i] > '9') return 0;
    v = v * 10 + static_cast<std::uint64_t>(path[i] - '0');
  }
  return v;
}

unsigned char pattern_at(std::uint64_t off, std::uint64_t size) {
  return static_cast<unsigned char>((off % size) % 251);
}

std::mutex g_mu;
std::unordered_map<std::uint64_t, State> g_streams;  // guarded by g_mu (elements: by their stream's ordering)

State& state(std::uint64_t id) {
  std::lock_guard lk(g_mu);
  return g_streams[id];  // references to elements survive rehashing
}

void on_open(const capturefs::StreamOpen& o) {
  State& s = state(o.id);
  s.path = o.path;
  s.next = o.start_offset;
  s.size = pattern_size(o.path);
  s.lat = o.path.rfind("lat.", 0) == 0;
  if (o.start_offset != 0) s.bad = "started at offset " + std::to_string(o.start_offset);
}

void on_data(const capturefs::Chunk& c) {
  const std::uint64_t t1 = now_ns();
  State& s = state(c.id);
  const auto* b = reinterpret_cast<const unsigned char*>(c.bytes.data());
  const std::size_t n = c.bytes.size();
  if (c.offset != s.next && s.bad.empty())
    s.bad = "chunk at offset " + std::to_string(c.offset) + ", expected " + std::to_string(s.next);
  if (s.size != 0 && n > 0 && s.bad.empty() &&
      (b[0] != pattern_at(c.offset, s.size) || b[n - 1] != pattern_at(c.offset + n - 1, s.size)))
    s.bad = "wrong byte near offset " + std::to_string(c.offset);
  s.next = c.offset + n;
  ++s.chunks;
  if (!s.lat) return;
  for (std::size_t i = 0; i < n; ++i) {
    s.msg[s.have++] = b[i];
    if (s.have < kLatMsg) continue;
    s.have = 0;
    std::uint64_t t0;
    std::memcpy(&t0, s.msg, sizeof t0);
    report("L " + s.path + " " + std::to_string(t1 - t0) + "\n");
  }
}

void on_close(const capturefs::StreamClose& e) {
  State s;
  {
    std::lock_guard lk(g_mu);
    auto it = g_streams.find(e.id);
    if (it != g_streams.end()) {
      s = std::move(it->second);
      g_streams.erase(it);
    }
  }
  std::string status = "ok";
  if (!e.complete) status = "aborted:" + e.reason;
  else if (!s.bad.empty()) status = "bad:" + s.bad;
  else if (e.total != s.next) status = "bad:total " + std::to_string(e.total) + " after " + std::to_string(s.next) + " bytes";
  else if (s.have != 0) status = "bad:a partial latency message";
  for (char& ch : status)
    if (ch == ' ' || ch == '\n') ch = '_';
  report("E " + (s.path.empty() ? "?" : s.path) + " " + std::to_string(s.next) + " " + std::to_string(s.chunks) +
         " " + status + "\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    std::fprintf(stderr, "usage: %s MOUNTPOINT REPORT_FIFO [READY_FD]\n", argv[0]);
    return 2;
  }
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGPIPE, SIG_IGN);
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);  // every thread started below inherits it

  if (::mkfifo(argv[2], 0600) != 0 && errno != EEXIST) {
    std::fprintf(stderr, "bench_callback: mkfifo %s: %s\n", argv[2], std::strerror(errno));
    return 1;
  }
  g_report = ::open(argv[2], O_RDWR | O_CLOEXEC);
  if (g_report < 0) {
    std::fprintf(stderr, "bench_callback: open %s: %s\n", argv[2], std::strerror(errno));
    return 1;
  }

  try {
    capturefs::Options opt;  // the library's defaults: 1 GiB / 256 MiB, 16 FUSE threads
    opt.mountpoint = argv[1];
    capturefs::Mount mount(opt);
    capturefs::Callbacks cb;
    cb.on_open = on_open;
    cb.on_data = on_data;
    cb.on_close = on_close;
    capturefs::ConsumeOptions co;
    co.globs = {"*"};
    capturefs::Consumer consumer = mount.consume(cb, co);
    if (argc == 4) {
      const int fd = std::atoi(argv[3]);
      (void)!::write(fd, "ready\n", 6);
      ::close(fd);
    }
    int sig = 0;
    sigwait(&stop, &sig);
    consumer.close();
    mount.unmount();
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "bench_callback: %s\n", e.what());
    return 1;
  }
  ::close(g_report);
  ::unlink(argv[2]);
  return 0;
}
