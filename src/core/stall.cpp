// The stall rule, applied to the whole volume: see Stream::check_stall.
//
// A writer whose write is parked holds the file's inode lock in the kernel
// until the write is answered, and unlink, rename and setattr of that file
// by any process wait for it uninterruptibly. So no write may wait on a
// consumer that does not consume: after the stall time it spills, or fails
// with ENOSPC. Each such event is logged once, with the path.
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>

#include "core/log.hpp"
#include "core/parking.hpp"
#include "core/stream.hpp"
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

// ---- one stream (a Stream member: its lock, its parked writes) ----

WaitReason Stream::wait_reason() const {
  if (writes_.empty()) return WaitReason::none;
  return noroom_ == WaitReason::none ? WaitReason::memory : noroom_;
}

Stall Stream::check_stall(std::int64_t now_ns, std::int64_t stall_ns, Effects& fx) {
  std::lock_guard lk(mu_);
  Stall out;
  if (reported_since_ != 0 &&
      std::none_of(writes_.begin(), writes_.end(),
                   [&](const PendingWrite& w) { return w.since_ns == reported_since_; })) {
    out.kind = Stall::Kind::Resumed;
    out.waited_ns = now_ns - reported_since_;
    reported_since_ = 0;
    return out;
  }
  if (stall_ns <= 0 || writes_.empty()) return out;
  const PendingWrite& w = writes_.front();
  // Unarmed, or its bytes are on their way to the spill file, or the file
  // is being opened for it: it is moving.
  if (!w.armed || w.in_flight != 0 || opening_) return out;
  const std::int64_t since = w.since_ns;
  if (now_ns - since < stall_ns) return out;
  out.on = wait_reason();
  out.waited_ns = now_ns - since;
  if (spill_store_ == nullptr) {  // --no-spill: pure backpressure, reported once
    if (reported_since_ == since) return Stall{};
    reported_since_ = since;
    out.kind = Stall::Kind::Waiting;
    return out;
  }
  if (!stalled_ && (reader_ || push_)) {
    // Its consumer made no room in time: spill as if it had none.
    stalled_ = true;
    progress(fx);
    out.kind = Stall::Kind::Spilling;
    if (writes_.empty() || writes_.front().since_ns != since) return out;
    const PendingWrite& again = writes_.front();
    if (again.in_flight != 0 || opening_) return out;  // on its way to the file
    out.on = wait_reason();
  }
  // Nothing can take the bytes (the spill limit is reached, the disk is
  // full, or the write is larger than the limit): fail like a full disk.
  out.kind = Stall::Kind::Failed;
  if (abort_reason_.empty()) {
    abort_reason_ = fmt::format(
        "no space: a write waited {:.1f} s and the spill tier could not take it ({})",
        static_cast<double>(out.waited_ns) / 1e9,
        spill_blocked() ? "the spill disk is full or no spill file could be opened"
                        : fmt::format("spill limit {} bytes reached", spill_store_->limit()));
  }
  abort_errno_ = ENOSPC;
  discard(fx);
  return out;
}

// ---- the volume ----

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
    if (st.kind == Stall::Kind::None) {
      settle(std::move(fx));
      continue;
    }
    // Logged before the writer is answered (settle), so that the line is
    // there by the time the writer sees its write return or fail.
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
    settle(std::move(fx));
  }
}

}  // namespace capturefs::core
