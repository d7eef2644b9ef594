// Mounts a capture directory on MOUNTPOINT, takes every *.txt file written
// into it, and prints each one as it opens and ends. Ctrl-C or SIGTERM
// stops it: it prints the bytes received in all, then unmounts.
#include <capturefs/capturefs.hpp>

#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <system_error>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s MOUNTPOINT\n", argv[0]);
    return 2;
  }
  // Blocked in every thread the library starts; sigwait() takes them below.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  std::atomic<std::uint64_t> received{0};
  capturefs::Callbacks cb;  // on delivery threads: one stream's calls never overlap
  cb.on_open = [](const capturefs::StreamOpen& o) {
    std::printf("%llu: %s, written by pid %d\n", static_cast<unsigned long long>(o.id),
                o.path.c_str(), static_cast<int>(o.writer_pid));
  };
  cb.on_data = [&](const capturefs::Chunk& c) {  // c.bytes: valid during the call only
    received += c.bytes.size();
  };
  cb.on_close = [](const capturefs::StreamClose& e) {
    std::printf("%llu: %llu bytes, %s\n", static_cast<unsigned long long>(e.id),
                static_cast<unsigned long long>(e.total), e.complete ? "complete" : e.reason.c_str());
  };

  try {
    capturefs::Options opt;
    opt.mountpoint = argv[1];
    capturefs::Mount mount(opt);  // mounted and serving
    capturefs::ConsumeOptions co;
    co.globs = {"*.txt"};  // other files wait for a reader
    capturefs::Consumer consumer = mount.consume(cb, co);
    int sig = 0;
    sigwait(&stop, &sig);
    consumer.close();  // consumers go before their Mount
  } catch (const std::system_error& e) {  // the mount failed: e.what() says why
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }  // ~Mount unmounts
  std::printf("%llu bytes received\n", static_cast<unsigned long long>(received.load()));
  return 0;
}
