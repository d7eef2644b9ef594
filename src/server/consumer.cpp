// ConsumerSink and ObserverQueue: the core's callbacks on a connection.
#include <algorithm>
#include <string>

#include "core/log.hpp"
#include "server/conn.hpp"

namespace capturefs::server {

// ============================================================== ConsumerSink

void ConsumerSink::on_open(const core::StreamInfo& info) {
  const bool open = wait_gate();
  {
    std::lock_guard lk(mu_);
    if (!open || c_.dying() || (once_ && once_taken_) || !encodable_path(info.path)) {
      if (!encodable_path(info.path))
        log::warn("socket: stream {} not sent: its path is longer than {} bytes", info.id, proto::kMaxPath);
      suppressed_.insert(info.id);
      cv_.notify_all();
      return;
    }
    once_taken_ = true;
    once_id_ = info.id;
    Held& h = held_[info.id];
    h.sent = h.acked = h.wired = info.start_offset;
  }
  const Bytes b = encode_frame(opened_of(info, info.start_offset));
  c_.send(b);
  {
    std::lock_guard lk(mu_);
    if (auto it = held_.find(info.id); it != held_.end()) it->second.announced = true;
  }
  cv_.notify_all();
}

void ConsumerSink::on_data(std::uint64_t id, std::uint64_t offset, std::span<const std::byte> bytes) {
  {
    std::lock_guard lk(mu_);
    auto it = held_.find(id);
    if (it == held_.end()) return;  // suppressed
    it->second.sent = offset + bytes.size();
  }
  Bytes head;
  if (auto e = proto::encode_data_header(id, offset, bytes.size(), head)) {
    log::error("socket: DATA: {}", e->message);
    return;
  }
  // `sent` moved first, so that an ACK racing the send is never "beyond";
  // a DATA the closing connection refused was not sent after all. `wired`
  // moves once the frame is out: a shutdown CLOSED says what the client got.
  const std::uint64_t end = offset + bytes.size();
  const auto wired = [&] {  // under Conn::wmu_: a shutdown CLOSED after this counts it
    std::lock_guard lk(mu_);
    if (auto it = held_.find(id); it != held_.end()) it->second.wired = end;
  };
  if (!c_.send(head, bytes, /*force=*/false, wired)) {
    std::lock_guard lk(mu_);
    auto it = held_.find(id);
    if (it != held_.end() && it->second.sent == offset + bytes.size()) it->second.sent = offset;
  }
}

void ConsumerSink::on_rename(std::uint64_t id, const std::string& path) {
  {
    std::lock_guard lk(mu_);
    // A stream closed on this connection may be renamed by its creator
    // afterwards (rsync): RENAMED after CLOSED (docs/protocol.md).
    if (!held_.contains(id) && !ended_.contains(id)) return;
  }
  if (!encodable_path(path)) return;
  c_.send(encode_frame(proto::Renamed{id, path}));
}

void ConsumerSink::on_close(std::uint64_t id, const core::StreamEnd& end) {
  {
    std::lock_guard lk(mu_);
    if (suppressed_.erase(id) != 0 || !held_.contains(id)) return;
  }
  c_.send(encode_frame(closed_of(id, end)));
  bool once_end = false;
  {
    std::lock_guard lk(mu_);
    if (end.complete) {
      ended_.insert(id);
      ended_order_.push_back(id);
      if (ended_order_.size() > kEndedKept) {
        ended_.erase(ended_order_.front());
        ended_order_.pop_front();
      }
    }
    auto it = held_.find(id);
    if (it == held_.end()) return;
    bool gone = !end.complete;  // aborted: acks are ignored from now on
    if (end.complete) {
      it->second.closed = true;
      it->second.total = end.total;
      gone = it->second.acked >= end.total;  // acknowledged before CLOSED: finished
    }
    if (gone) held_.erase(it);
    once_end = once_ && id == once_id_ && gone;
  }
  if (once_end) c_.request_once_close();
}

ConsumerSink::AckResult ConsumerSink::ack(std::uint64_t id, std::uint64_t offset, std::uint64_t* sent) {
  std::lock_guard lk(mu_);
  auto it = held_.find(id);
  if (it == held_.end()) return AckResult::ignored;  // finished, aborted, or not ours
  Held& h = it->second;
  *sent = h.sent;
  if (offset > h.sent) return AckResult::beyond;
  if (offset <= h.acked) return AckResult::ignored;
  h.acked = offset;
  if (h.closed && offset >= h.total) {
    held_.erase(it);
    return once_ && id == once_id_ ? AckResult::once_finished : AckResult::ok;
  }
  return AckResult::ok;
}

bool ConsumerSink::wait_announced(core::Subscription& sub, Clock::time_point deadline) {
  std::unique_lock lk(mu_);
  auto done = [&] {
    if (gate_ == Gate::cancelled || c_.dying()) return true;
    for (const std::uint64_t id : sub.due_ids()) {
      if (suppressed_.contains(id)) continue;
      auto it = held_.find(id);
      if (it == held_.end() || !it->second.announced) return false;
    }
    return sub.late_renames_pending() == 0;  // renames after CLOSED are out too
  };
  // on_open notifies; a stream that ended is dropped from held_ in
  // on_close and leaves the subscription right after without telling us,
  // hence the short slices.
  while (!done()) {
    if (Clock::now() >= deadline) return false;
    cv_.wait_until(lk, std::min(deadline, Clock::now() + std::chrono::milliseconds(5)));
  }
  return true;
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> ConsumerSink::unclosed() {
  std::lock_guard lk(mu_);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  for (const auto& [id, h] : held_)
    if (h.announced && !h.closed) out.emplace_back(id, h.wired);
  std::sort(out.begin(), out.end());
  return out;
}

// ============================================================== ObserverQueue

void ObserverQueue::push(Event e, std::size_t size) {
  bool overflow = false;
  {
    std::lock_guard lk(mu_);
    if (stopped_ || overflow_) return;
    const std::size_t cost = size + 64;
    if (bytes_ + cost > limit_) {
      overflow_ = overflow = true;
    } else {
      bytes_ += cost;
      q_.push_back(std::move(e));
    }
  }
  if (overflow) {
    if (auto c = conn_.lock())
      c->kill(make_error(ErrorCode::internal, "observer too slow: more than " + std::to_string(limit_) +
                                                  " bytes of events were waiting to be sent"));
    return;
  }
  cv_.notify_one();
}

}  // namespace capturefs::server
