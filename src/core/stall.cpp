// The stall rule, applied to the whole volume: see Stream::check_stall.
//
// A writer whose write is parked holds the file's inode lock in the kernel
// until the write is answered, and unlink, rename and setattr of that file
// by any process wait for it uninterruptibly. So no write may wait on a
// consumer that does not consume: after the stall time it spills, or fails
// with ENOSPC. Each such event is logged once, with the path.
#include <algorithm>

#include "core/log.hpp"
#include "core/volume.hpp"

namespace capturefs::core {

namespace {

const char* describe(WaitReason r) {
  switch (r) {
    case WaitReason::consumer: return "its consumer";
    case WaitReason::memory: return "memory";
    case WaitReason::spill_limit: return "the spill limit";
    case WaitReason::none: break;
  }
  return "nothing";
}

double seconds(std::int64_t ns) { return static_cast<double>(ns) / 1e9; }

}  // namespace

std::string Volume::path_of_stream(const Stream* s) {
  std::lock_guard lk(tree_mu_);
  for (const auto& [ino, n] : nodes_) {
    if (n->stream.get() == s) return n->linked ? path_locked(*n) : path_locked(*n) + " (unlinked)";
  }
  return "(a stream no longer named)";
}

void Volume::check_stalls(std::int64_t now_ns) {
  std::vector<std::shared_ptr<Stream>> streams = parking_.all();
  {
    std::lock_guard lk(stall_mu_);
    std::erase_if(stall_reported_, [](const std::weak_ptr<Stream>& w) { return w.expired(); });
    for (const auto& w : stall_reported_) {
      if (auto s = w.lock(); s && std::find(streams.begin(), streams.end(), s) == streams.end())
        streams.push_back(std::move(s));
    }
  }
  for (const auto& s : streams) {
    Effects fx;
    const Stall st = s->check_stall(now_ns, policy_.stall_ns, fx);
    settle(std::move(fx));
    if (st.kind == Stall::Kind::None) continue;
    const std::string path = path_of_stream(s.get());
    switch (st.kind) {
      case Stall::Kind::Spilling:
        log::warn("{}: a write waited {:.1f} s on {}: the stream spills (its consumer reads the "
                  "spilled bytes later, in order); the writer goes on",
                  path, seconds(st.waited_ns), describe(st.on));
        break;
      case Stall::Kind::Failed:
        log::error("{}: a write waited {:.1f} s on {} and nothing could take its bytes: it fails "
                   "with ENOSPC (No space left on device) and the stream is aborted",
                   path, seconds(st.waited_ns), describe(st.on));
        break;
      case Stall::Kind::Waiting: {
        log::warn("{}: a write has waited {:.1f} s on {} (no spilling: it waits until the "
                  "consumer makes room; rm, mv and chmod of this file wait with it)",
                  path, seconds(st.waited_ns), describe(st.on));
        std::lock_guard lk(stall_mu_);
        stall_reported_.push_back(s);
        break;
      }
      case Stall::Kind::Resumed: {
        log::warn("{}: the waiting write resumed after {:.1f} s", path, seconds(st.waited_ns));
        std::lock_guard lk(stall_mu_);
        std::erase_if(stall_reported_, [&](const std::weak_ptr<Stream>& w) {
          auto l = w.lock();
          return !l || l == s;
        });
        break;
      }
      case Stall::Kind::None: break;
    }
  }
}

}  // namespace capturefs::core
