// capturefs-linecount: mounts a capture directory and counts the lines and
// bytes of every file written into it. Prints a summary when it is stopped
// (Ctrl-C or SIGTERM), then unmounts.
//
//   capturefs-linecount /tmp/cap &
//   seq 1 1000 > /tmp/cap/a.txt; echo hi > /tmp/cap/b.txt
//   kill -INT %1
#include <capturefs/capturefs.hpp>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <system_error>

namespace {

struct Count {
  std::string path;
  std::uint64_t bytes = 0;
  std::uint64_t lines = 0;
  bool complete = false;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s MOUNTPOINT\n", argv[0]);
    return 2;
  }
  // Block the stop signals in every thread; main() waits for them below.
  // (A shell starts background jobs with SIGINT ignored: undo that first.)
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  std::mutex mu;  // guards counts; a leaf, taken in the callbacks (no capturefs lock is held there)
  std::map<std::uint64_t, Count> counts;
  capturefs::Callbacks cb;
  cb.on_open = [&](const capturefs::StreamOpen& o) {
    std::lock_guard lk(mu);
    counts[o.id].path = o.path;
  };
  cb.on_data = [&](const capturefs::Chunk& c) {
    const auto lines = static_cast<std::uint64_t>(
        std::count(c.bytes.begin(), c.bytes.end(), std::byte{'\n'}));
    std::lock_guard lk(mu);
    counts[c.id].bytes += c.bytes.size();
    counts[c.id].lines += lines;
  };
  cb.on_close = [&](const capturefs::StreamClose& e) {
    std::lock_guard lk(mu);
    counts[e.id].complete = e.complete;
  };

  try {
    capturefs::Options opt;
    opt.mountpoint = argv[1];
    capturefs::Mount mount(opt);
    capturefs::Consumer consumer = mount.consume(cb);
    std::fprintf(stderr, "capturefs-linecount: counting files written to %s (Ctrl-C to stop)\n",
                 mount.mountpoint().c_str());
    int sig = 0;
    sigwait(&stop, &sig);
    consumer.close();
    mount.unmount();
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "capturefs-linecount: %s\n", e.what());
    return 1;
  }

  std::printf("%-40s %12s %12s\n", "file", "lines", "bytes");
  std::uint64_t lines = 0, bytes = 0;
  for (const auto& [id, c] : counts) {
    std::printf("%-40s %12llu %12llu%s\n", c.path.c_str(), static_cast<unsigned long long>(c.lines),
                static_cast<unsigned long long>(c.bytes), c.complete ? "" : "  (incomplete)");
    lines += c.lines;
    bytes += c.bytes;
  }
  std::printf("%-40s %12llu %12llu\n", "total", static_cast<unsigned long long>(lines),
              static_cast<unsigned long long>(bytes));
  return 0;
}
