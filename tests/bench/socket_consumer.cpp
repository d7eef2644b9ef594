// The consumer side of scripts/bench's "capturefs socket" column: takes
// streams through the daemon's socket (docs/protocol.md) with the client
// code `capturefs cat --socket` runs (server::ClientConnection over the
// proto codec: 1 MiB recv buffer, incremental Decoder, an ACK per DATA
// frame, a STATUS barrier after the final ACK), minus cat's stdout, so that
// no pipe hop sits between the consumer and the clock.
//
// tests/bench/io_helper.c runs it; it never runs alone in the harness. Each
// mode checks every byte count and offset (and the pattern, where there is
// one) and exits 1 with a message on stderr on any mismatch: a short or
// corrupted transfer is an error, never a number.
//
//   bench_socket_consumer tput SOCKET NAME SIZE EXPECT READY_FD GO_FD RESULT_FD
//       Subscribes to the literal NAME (as `cat --wait NAME`), waits for the
//       STATUS barrier, writes one byte to READY_FD, waits for EOF on GO_FD,
//       then takes the stream to its CLOSED: EXPECT bytes written in SIZE-byte
//       writes of io_helper's pattern (first and last byte of every DATA
//       checked). Writes {bytes, DATA frames + 1} (two native u64) to
//       RESULT_FD: the "+ 1" matches io_helper's read count, which includes
//       the read that saw EOF. With BENCH_SOCKET_RUSAGE set in the
//       environment, prints its own CPU time (user, sys) on stderr at the end.
//
//   bench_socket_consumer lat SOCKET NAME WARM N ACK_FD RESULT_FD
//       Subscribes to NAME, then WARM + N times: writes one byte to ACK_FD
//       (the writer may write), waits for the 64-byte message whose first 8
//       bytes are the writer's CLOCK_MONOTONIC time, and takes the difference
//       with its own clock as soon as the DATA frame is decoded. Writes the N
//       samples (native u64 ns) to RESULT_FD.
//
//   bench_socket_consumer churn SOCKET DIR N
//       One process: subscribes to "c.PID.*", then N times creates
//       DIR/c.PID.I (O_CREAT|O_EXCL), writes 100 B, closes it, and takes the
//       stream from the socket up to its CLOSED (ACK of the total sent at
//       once). A final STATUS barrier makes every ACK take effect (every name
//       gone) before the clock stops. Prints {"files": N, "seconds": S}.
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "proto/codec.hpp"
#include "server/client.hpp"

namespace {

namespace proto = capturefs::proto;
using capturefs::server::ClientConnection;
using capturefs::server::ClientError;

[[noreturn]] __attribute__((format(printf, 1, 2))) void die(const char* fmt, ...) {
  std::va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "bench_socket_consumer: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
  std::exit(1);
}

std::uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<std::uint64_t>(ts.tv_nsec);
}

std::uint64_t parse_u64(const char* s) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') die("not a number: %s", s);
  return v;
}

int parse_fd(const char* s) { return static_cast<int>(parse_u64(s)); }

void write_all(int fd, const void* data, std::size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      die("write to fd %d: %s", fd, std::strerror(errno));
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

/// Blocks until the parent closes the write end of the go pipe (EOF).
void wait_go(int fd) {
  char c;
  ssize_t r;
  do r = ::read(fd, &c, 1);
  while (r < 0 && errno == EINTR);
}

/// io_helper's pattern: the byte at stream offset `off` of a stream written
/// in `size`-byte writes of one buffer.
unsigned char pattern_at(std::uint64_t off, std::uint64_t size) {
  return static_cast<unsigned char>((off % size) % 251);
}

std::string frame_text(const proto::Frame& f) { return std::string(proto::frame_name(f)); }

/// The next frame, or death: the daemon must not close the connection or
/// send an ERROR while a benchmark runs.
proto::Frame next(ClientConnection& c, const char* what) {
  std::optional<proto::Frame> f;
  try {
    f = c.next();
  } catch (const ClientError& e) {
    die("%s: %s", what, e.what());
  }
  if (!f) die("%s: the daemon closed the connection", what);
  if (auto* e = std::get_if<proto::Error>(&*f)) die("%s: %s", what, capturefs::server::describe(*e).c_str());
  return std::move(*f);
}

/// Sends what was queued plus a STATUS_REQUEST and waits for the last part
/// of the reply (docs/protocol.md §8: a barrier). Stream frames that arrive
/// meanwhile go to `on_frame`.
template <class F>
void barrier(ClientConnection& c, const char* what, F&& on_frame) {
  c.queue(proto::StatusRequest{});
  for (;;) {
    proto::Frame f = next(c, what);
    if (auto* st = std::get_if<proto::StatusReply>(&f)) {
      if (!st->more) return;
      continue;
    }
    on_frame(f);
  }
}

/// One stream taken by a consumer: checks OPENED, DATA offsets and CLOSED.
struct Take {
  explicit Take(const char* w) : what(w) {}
  const char* what;
  std::uint64_t id = 0;
  bool opened = false;
  bool closed = false;
  std::uint64_t next = 0;  // offset of the next byte expected
  std::uint64_t frames = 0;

  /// Handles a stream frame; returns the DATA frame if it is one of ours.
  const proto::Data* handle(const proto::Frame& f) {
    if (auto* o = std::get_if<proto::Opened>(&f)) {
      if (opened) die("%s: a second OPENED (id %llu)", what, static_cast<unsigned long long>(o->id));
      if (o->offset != 0) die("%s: OPENED at offset %llu, not 0", what, static_cast<unsigned long long>(o->offset));
      opened = true;
      id = o->id;
      return nullptr;
    }
    if (auto* d = std::get_if<proto::Data>(&f)) {
      if (!opened || d->id != id) die("%s: DATA for stream %llu, not announced", what, static_cast<unsigned long long>(d->id));
      if (d->offset != next)
        die("%s: DATA at offset %llu, expected %llu", what, static_cast<unsigned long long>(d->offset),
            static_cast<unsigned long long>(next));
      next += d->bytes.size();
      ++frames;
      return d;
    }
    if (auto* cl = std::get_if<proto::Closed>(&f)) {
      if (!opened || cl->id != id) die("%s: CLOSED for stream %llu, not announced", what, static_cast<unsigned long long>(cl->id));
      if (cl->status != proto::CloseStatus::complete) die("%s: aborted: %s", what, cl->reason.c_str());
      if (cl->total != next)
        die("%s: CLOSED with total %llu after %llu bytes", what, static_cast<unsigned long long>(cl->total),
            static_cast<unsigned long long>(next));
      closed = true;
      return nullptr;
    }
    if (std::holds_alternative<proto::Subscribed>(f) || std::holds_alternative<proto::Renamed>(f)) return nullptr;
    die("%s: unexpected %s frame", what, frame_text(f).c_str());
  }
};

std::unique_ptr<ClientConnection> open_connection(const char* sock) {
  try {
    return std::make_unique<ClientConnection>(sock);
  } catch (const ClientError& e) {
    die("%s", e.what());
  }
}

proto::Subscribe literal_once(const char* name) {
  proto::Subscribe s;
  s.literal = true;
  s.once = true;  // `capturefs cat --wait NAME`
  s.patterns = {name};
  return s;
}

int mode_tput(int argc, char** argv) {
  if (argc != 9) die("usage: tput SOCKET NAME SIZE EXPECT READY_FD GO_FD RESULT_FD");
  const char* name = argv[3];
  const std::uint64_t size = parse_u64(argv[4]);
  const std::uint64_t expect = parse_u64(argv[5]);
  const int ready_fd = parse_fd(argv[6]), go_fd = parse_fd(argv[7]), result_fd = parse_fd(argv[8]);
  if (size == 0) die("SIZE must be positive");
  const auto conn = open_connection(argv[2]);
  ClientConnection& c = *conn;
  c.queue(literal_once(name));
  Take t(name);
  auto on_frame = [&](const proto::Frame& f) {
    if (const proto::Data* d = t.handle(f)) {
      const auto* b = reinterpret_cast<const unsigned char*>(d->bytes.data());
      const std::size_t n = d->bytes.size();
      if (n > 0 && (b[0] != pattern_at(d->offset, size) || b[n - 1] != pattern_at(d->offset + n - 1, size)))
        die("%s: wrong byte near offset %llu", name, static_cast<unsigned long long>(d->offset));
      c.queue(proto::Ack{d->id, d->offset + n});
    }
  };
  barrier(c, name, on_frame);  // subscribed: the stream is ours
  write_all(ready_fd, "r", 1);
  wait_go(go_fd);
  while (!t.closed) on_frame(next(c, name));
  c.queue(proto::Ack{t.id, t.next});
  barrier(c, name, [&](const proto::Frame& f) { die("%s: %s after CLOSED", name, frame_text(f).c_str()); });
  if (t.next != expect)
    die("%s: read %llu bytes, expected %llu", name, static_cast<unsigned long long>(t.next),
        static_cast<unsigned long long>(expect));
  const std::uint64_t res[2] = {t.next, t.frames + 1};
  write_all(result_fd, res, sizeof res);
  if (std::getenv("BENCH_SOCKET_RUSAGE") != nullptr) {  // side measurements: the client's CPU time
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    std::fprintf(stderr, "bench_socket_consumer: %s: user %.3f s, sys %.3f s\n", name,
                 static_cast<double>(ru.ru_utime.tv_sec) + static_cast<double>(ru.ru_utime.tv_usec) * 1e-6,
                 static_cast<double>(ru.ru_stime.tv_sec) + static_cast<double>(ru.ru_stime.tv_usec) * 1e-6);
  }
  return 0;
}

int mode_lat(int argc, char** argv) {
  if (argc != 8) die("usage: lat SOCKET NAME WARM N ACK_FD RESULT_FD");
  const char* name = argv[3];
  const std::uint64_t warm = parse_u64(argv[4]), n = parse_u64(argv[5]);
  const int ack_fd = parse_fd(argv[6]), result_fd = parse_fd(argv[7]);
  constexpr std::size_t kMsg = 64;
  const auto conn = open_connection(argv[2]);
  ClientConnection& c = *conn;
  c.queue(literal_once(name));
  Take t(name);
  std::vector<std::uint64_t> samples;
  samples.reserve(n);
  unsigned char msg[kMsg];
  std::size_t have = 0;  // bytes of the current message
  std::uint64_t msgs = 0;
  auto on_frame = [&](const proto::Frame& f) {
    const std::uint64_t t1 = now_ns();
    const proto::Data* d = t.handle(f);
    if (d == nullptr) return;
    bool completed = false;
    for (std::byte b : d->bytes) {
      msg[have++] = static_cast<unsigned char>(b);
      if (have < kMsg) continue;
      have = 0;
      std::uint64_t t0;
      std::memcpy(&t0, msg, sizeof t0);
      if (msgs >= warm) samples.push_back(t1 - t0);
      ++msgs;
      completed = true;
    }
    c.queue(proto::Ack{d->id, d->offset + d->bytes.size()});
    if (completed) {
      try {
        c.flush();
      } catch (const ClientError& e) {
        die("%s: %s", name, e.what());
      }
      if (msgs < warm + n) write_all(ack_fd, "a", 1);  // the writer may write the next one
    }
  };
  barrier(c, name, on_frame);
  write_all(ack_fd, "a", 1);
  while (!t.closed) on_frame(next(c, name));
  c.queue(proto::Ack{t.id, t.next});
  barrier(c, name, [&](const proto::Frame& f) { die("%s: %s after CLOSED", name, frame_text(f).c_str()); });
  if (msgs != warm + n || have != 0)
    die("%s: got %llu messages and %zu bytes, expected %llu messages", name, static_cast<unsigned long long>(msgs),
        have, static_cast<unsigned long long>(warm + n));
  write_all(result_fd, samples.data(), samples.size() * sizeof samples[0]);
  return 0;
}

const char kPayload[100] =
    "0123456789012345678901234567890123456789"
    "0123456789012345678901234567890123456789"
    "012345678901234567\n";

int mode_churn(int argc, char** argv) {
  if (argc != 5) die("usage: churn SOCKET DIR N");
  const std::string dir = argv[3];
  const std::uint64_t n = parse_u64(argv[4]);
  const std::string prefix = "c." + std::to_string(::getpid()) + ".";
  const auto conn = open_connection(argv[2]);
  ClientConnection& c = *conn;
  proto::Subscribe s;
  s.patterns = {prefix + "*"};
  c.queue(s);
  barrier(c, "churn", [](const proto::Frame& f) {
    if (!std::holds_alternative<proto::Subscribed>(f)) die("churn: unexpected %s before any file", frame_text(f).c_str());
  });
  const std::uint64_t t0 = now_ns();
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::string name = prefix + std::to_string(i);
    const std::string path = dir + "/" + name;
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) die("create %s: %s", path.c_str(), std::strerror(errno));
    write_all(fd, kPayload, sizeof kPayload);
    if (::close(fd) != 0) die("close %s: %s", path.c_str(), std::strerror(errno));
    Take t(name.c_str());
    std::string got;
    while (!t.closed) {
      proto::Frame f = next(c, name.c_str());
      if (auto* o = std::get_if<proto::Opened>(&f); o && o->path != name)
        die("%s: OPENED names %s", name.c_str(), o->path.c_str());
      if (const proto::Data* d = t.handle(f)) got.append(reinterpret_cast<const char*>(d->bytes.data()), d->bytes.size());
    }
    if (got != std::string_view(kPayload, sizeof kPayload)) die("%s: got %zu wrong bytes", name.c_str(), got.size());
    c.queue(proto::Ack{t.id, t.next});
    try {
      c.flush();
    } catch (const ClientError& e) {
      die("%s: %s", name.c_str(), e.what());
    }
  }
  barrier(c, "churn", [](const proto::Frame& f) { die("churn: %s after the last file", frame_text(f).c_str()); });
  const std::uint64_t t1 = now_ns();
  std::printf("{\"files\": %llu, \"seconds\": %.9f}\n", static_cast<unsigned long long>(n),
              static_cast<double>(t1 - t0) * 1e-9);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) die("usage: bench_socket_consumer tput|lat|churn SOCKET ...");
  const std::string mode = argv[1];
  if (mode == "tput") return mode_tput(argc, argv);
  if (mode == "lat") return mode_lat(argc, argv);
  if (mode == "churn") return mode_churn(argc, argv);
  die("unknown mode %s", argv[1]);
}
