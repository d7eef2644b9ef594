// Stream, part three: push delivery (a Subscription pulls, acknowledges,
// is woken) and the writers' processes (self-reads). The state machine is
// stream.cpp; the tiers and the spill file, stream_spill.cpp. One class,
// one mutex: see the CONCURRENCY MODEL in stream.hpp.
#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>

#include "core/stream.hpp"

namespace capturefs::core {

void Stream::maybe_wake(Effects& fx) {
  if (!push_ || wake_pending_ || close_sent_) return;
  if (held() && abort_reason_.empty()) return;
  const bool data = delivered_ < end() && delivered_ - base_ < push_window_;
  const bool ended = push_ended() || !abort_reason_.empty();
  if (!data && !ended) return;
  wake_pending_ = true;
  fx.calls.emplace_back([t = push_, id = push_id_] { t->wake(id); });
}

Result<std::uint64_t> Stream::attach_push(std::uint64_t id, std::shared_ptr<PushTarget> target,
                                          std::size_t window, Effects& fx) {
  std::lock_guard lk(mu_);
  if (reader_ || push_) return Errno{EBUSY};
  push_ = std::move(target);
  push_id_ = id;
  push_window_ = window;
  wake_pending_ = false;
  close_sent_ = false;
  delivered_ = base_;
  maybe_wake(fx);
  return base_;
}

void Stream::detach_push(Effects& fx) {
  std::lock_guard lk(mu_);
  push_.reset();
  wake_pending_ = false;
  close_sent_ = false;
  delivered_ = base_;  // what was not acknowledged goes to the next consumer
  if (!linked_) discard(fx);
}

Pull Stream::pull(std::size_t max, std::vector<std::byte> reuse) {
  std::unique_lock lk(mu_);
  Pull p;
  if (!push_ || close_sent_) return p;
  if (held() && abort_reason_.empty()) {
    wake_pending_ = false;
    return p;
  }
  const std::uint64_t inflight = delivered_ - base_;
  if (abort_reason_.empty() && delivered_ < end() && inflight < push_window_) {
    const std::size_t n = static_cast<std::size_t>(
        std::min<std::uint64_t>({max, end() - delivered_, push_window_ - inflight}));
    p.kind = Pull::Kind::Data;
    p.offset = delivered_;
    // Shrinking keeps the capacity, so a reused buffer is neither
    // reallocated nor zero-filled again while chunks keep their size.
    p.bytes = std::move(reuse);
    p.bytes.resize(n);
    TierRead r = begin_read(delivered_, p.bytes);
    delivered_ += n;
    if (!r.file) return p;
    // From the spill file, unlocked; the pieces are pinned meanwhile.
    Effects fx;
    const int err = finish_read(lk, r, fx);
    if (err == 0) {
      lk.unlock();
      settle(std::move(fx));
      return p;
    }
    // Aborted (finish_read): its end is what there is to pull now.
    p = Pull{};
    lk.unlock();
    r.file.reset();  // may be the last reference: closes unlocked
    settle(std::move(fx));
    lk.lock();
    if (!push_ || close_sent_) return p;
  }
  if (push_ended() || !abort_reason_.empty()) {
    close_sent_ = true;
    p.kind = Pull::Kind::Closed;
    p.end.total = end();
    p.end.complete = abort_reason_.empty();
    p.end.reason = abort_reason_;
    p.finished = base_ == delivered_;
    p.discarded = unlinked_end_;
    return p;
  }
  wake_pending_ = false;
  return p;
}

bool Stream::ack(std::uint64_t upto, Effects& fx) {
  std::lock_guard lk(mu_);
  upto = std::min(upto, delivered_);
  consume_to(upto, fx);
  progress(fx);
  return close_sent_ && base_ == delivered_;
}

std::shared_ptr<PushTarget> Stream::push_target() const {
  std::lock_guard lk(mu_);
  return push_;
}

bool Stream::has_news() const {
  std::lock_guard lk(mu_);
  if (!abort_reason_.empty()) return true;
  if (held()) return false;
  return delivered_ < end() || push_ended();
}

bool Stream::end_handed_out() const {
  std::lock_guard lk(mu_);
  return close_sent_;
}

// ---- the writers' processes (Volume::open's self-reads) ----

void Stream::note_writer(std::int32_t pid) {
  std::lock_guard lk(mu_);
  writer_pids_.push_back(WriterPid{pid, false});
}

void Stream::note_wrote(std::int32_t pid) {
  std::lock_guard lk(mu_);
  for (auto& w : writer_pids_) {
    if (w.pid == pid && !w.wrote) {
      w.wrote = true;
      return;
    }
  }
}

void Stream::forget_writer(std::int32_t pid, bool wrote) {
  std::lock_guard lk(mu_);
  auto it = std::find_if(writer_pids_.begin(), writer_pids_.end(),
                         [&](const WriterPid& w) { return w.pid == pid && w.wrote == wrote; });
  if (it == writer_pids_.end())
    it = std::find_if(writer_pids_.begin(), writer_pids_.end(), [&](const WriterPid& w) { return w.pid == pid; });
  if (it != writer_pids_.end()) writer_pids_.erase(it);
}

std::vector<std::int32_t> Stream::writer_pids(bool written_only) const {
  std::lock_guard lk(mu_);
  std::vector<std::int32_t> out;
  for (const auto& w : writer_pids_)
    if (w.wrote || !written_only) out.push_back(w.pid);
  return out;
}

}  // namespace capturefs::core
