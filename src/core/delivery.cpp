#include "core/delivery.hpp"

#include <fnmatch.h>

#include <algorithm>
#include <exception>

#include "core/log.hpp"
#include "core/volume.hpp"

namespace capturefs::core {

PathFilter glob_filter(std::vector<std::string> globs) {
  if (globs.empty()) return [](std::string_view) { return true; };
  return [globs = std::move(globs)](std::string_view path) {
    const std::string p(path);
    for (const auto& g : globs)
      if (fnmatch(g.c_str(), p.c_str(), 0) == 0) return true;
    return false;
  };
}

Subscription::Subscription(Volume& vol, PathFilter filter, std::shared_ptr<Sink> sink,
                           SubscriptionOptions opt)
    : vol_(vol), filter_(std::move(filter)), sink_(std::move(sink)), opt_(opt) {}

Subscription::~Subscription() {
  // close() must have run (Volume::subscribe's owner calls it); stop the
  // threads regardless so none outlives the object.
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

void Subscription::start() {
  for (unsigned i = 0; i < std::max(1U, opt_.threads); ++i) threads_.emplace_back([this] { run(); });
}

void Subscription::adopt(const std::shared_ptr<Stream>& s, const StreamInfo& info) {
  std::lock_guard lk(mu_);
  Active& a = active_[info.id];
  a.stream = s;
  a.info = info;
  if (!a.queued) {
    a.queued = true;
    ready_.push_back(info.id);
  }
  cv_.notify_one();
}

void Subscription::renamed(std::uint64_t id, const std::string& path) {
  std::lock_guard lk(mu_);
  auto it = active_.find(id);
  if (it == active_.end()) {
    // Finished a moment ago (finish() ran, the volume has not retired it
    // yet): told after the end, like any later rename.
    if (!stopping_) {
      late_.emplace_back(id, path);
      cv_.notify_one();
    }
    return;
  }
  it->second.renames.push_back(path);
  it->second.info.path = path;
  if (!it->second.queued) {
    it->second.queued = true;
    ready_.push_back(id);
    cv_.notify_one();
  }
}

void Subscription::renamed_after_end(std::uint64_t id, const std::string& path) {
  std::lock_guard lk(mu_);
  if (stopping_) return;
  late_.emplace_back(id, path);
  cv_.notify_one();
}

std::size_t Subscription::late_renames_pending() {
  std::lock_guard lk(mu_);
  std::size_t n = late_.size() + late_busy_;
  for (const auto& [id, a] : active_) n += a.opened ? a.renames.size() : 0;
  return n;
}

void Subscription::wake(std::uint64_t id) {
  std::lock_guard lk(mu_);
  auto it = active_.find(id);
  if (it == active_.end() || it->second.queued) return;
  it->second.queued = true;
  ready_.push_back(id);
  cv_.notify_one();
}

std::vector<std::uint64_t> Subscription::active_ids() {
  std::lock_guard lk(mu_);
  std::vector<std::uint64_t> ids;
  for (const auto& [id, a] : active_) ids.push_back(id);
  return ids;
}

std::vector<std::uint64_t> Subscription::due_ids() {
  std::vector<std::pair<std::uint64_t, std::shared_ptr<Stream>>> unopened;
  std::vector<std::uint64_t> ids;
  {
    std::lock_guard lk(mu_);
    for (const auto& [id, a] : active_) {
      if (a.opened || a.announce) ids.push_back(id);
      else unopened.emplace_back(id, a.stream);
    }
  }
  for (const auto& [id, s] : unopened)
    if (s->has_news()) ids.push_back(id);
  return ids;
}

void Subscription::announce_all() {
  std::lock_guard lk(mu_);
  for (auto& [id, a] : active_) {
    if (a.opened || a.announce) continue;
    a.announce = true;
    if (!a.queued) {
      a.queued = true;
      ready_.push_back(id);
    }
  }
  cv_.notify_all();
}

void Subscription::run() {
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stopping_ || !ready_.empty() || !late_.empty(); });
    if (stopping_) return;
    if (!late_.empty()) {
      auto [id, path] = std::move(late_.front());
      late_.pop_front();
      ++late_busy_;
      lk.unlock();
      try {
        sink_->on_rename(id, path);
      } catch (const std::exception& e) {
        log::error("consumer rename for '{}' failed: {}", path, e.what());
      }
      lk.lock();
      --late_busy_;
      continue;
    }
    const std::uint64_t id = ready_.front();
    ready_.pop_front();
    auto it = active_.find(id);
    if (it == active_.end()) continue;
    Active& a = it->second;
    a.queued = false;
    if (a.busy) {
      a.again = true;
      continue;
    }
    a.busy = true;
    const std::shared_ptr<Stream> s = a.stream;
    const bool opened = a.opened;
    const bool announce = a.announce;
    const StreamInfo info = a.info;
    lk.unlock();
    bool more = false;
    deliver(id, s, opened, announce, info, &more);
    lk.lock();
    it = active_.find(id);
    if (it == active_.end()) continue;  // finished
    it->second.busy = false;
    if ((it->second.again || more) && !it->second.queued) {
      it->second.queued = true;
      ready_.push_back(id);
      cv_.notify_one();
    }
    it->second.again = false;
  }
}

StreamInfo Subscription::open_now(std::uint64_t id, StreamInfo info) {
  std::lock_guard lk(mu_);
  if (auto it = active_.find(id); it != active_.end()) {
    it->second.opened = true;
    it->second.renames.clear();  // on_open carries the current path
    info.path = it->second.info.path;
  }
  return info;
}

std::vector<std::string> Subscription::take_renames(std::uint64_t id) {
  std::vector<std::string> out;
  std::lock_guard lk(mu_);
  if (auto it = active_.find(id); it != active_.end()) out.swap(it->second.renames);
  late_busy_ += out.size();  // still "pending" for barriers until told
  return out;
}

void Subscription::deliver(std::uint64_t id, const std::shared_ptr<Stream>& s, bool opened, bool announce,
                           const StreamInfo& info, bool* more) {
  // A sink that throws is reported, and its stream continues: the bytes were
  // handed over, and the sink decides what a failure means to it.
  auto guarded = [&](const char* what, auto&& call) {
    try {
      call();
    } catch (const std::exception& e) {
      log::error("consumer {} for '{}' failed: {}", what, info.path, e.what());
    }
  };
  // The sink hears of a stream only when it has something to say (bytes, or
  // its end), under the path it has then: a file renamed into place before
  // any byte of it was delivered arrives under its final name (unless a
  // barrier asked for every stream held to be announced: announce_all).
  auto open_once = [&] {
    if (opened) return;
    const StreamInfo now = open_now(id, info);
    opened = true;
    guarded("open", [&] { sink_->on_open(now); });
  };
  // The chunk buffer, kept by each delivery thread: no allocation, page
  // faults or zero-filling per chunk (it holds at most one chunk).
  thread_local std::vector<std::byte> scratch;
  // Serve a bounded number of chunks, then let other streams have a turn.
  for (int i = 0; i < 16; ++i) {
    // Renames are told between chunks, as soon as this thread sees them.
    if (opened) {
      const std::vector<std::string> renames = take_renames(id);
      for (const auto& path : renames) guarded("rename", [&] { sink_->on_rename(id, path); });
      if (!renames.empty()) {
        std::lock_guard lk(mu_);
        late_busy_ -= renames.size();
      }
    }
    Pull p = s->pull(opt_.chunk, std::move(scratch));
    if (p.kind == Pull::Kind::Nothing) {
      if (announce) open_once();
      return;
    }
    if (p.kind == Pull::Kind::Closed && p.discarded && !opened) {
      finish(id, s);  // unlinked before the sink saw any of it: nothing to tell
      return;
    }
    open_once();
    if (p.kind == Pull::Kind::Closed) {
      // The name goes before the sink hears the end; the consumer's slot
      // (max_active) is freed only after it has handled it.
      if (p.finished) vol_.push_unname(id, s);
      guarded("close", [&] { sink_->on_close(id, p.end); });
      if (p.finished) finish(id, s);
      return;
    }
    guarded("data", [&] { sink_->on_data(id, p.offset, p.bytes); });
    const std::uint64_t upto = p.offset + p.bytes.size();
    scratch = std::move(p.bytes);  // the sink is done with them
    if (opt_.auto_ack) {
      Effects fx;
      const bool done = s->ack(upto, fx);
      settle(std::move(fx));
      if (done) {
        finish(id, s);
        return;
      }
    }
  }
  *more = true;
}

bool Subscription::has_room() {
  std::lock_guard lk(mu_);
  return opt_.max_active == 0 || active_.size() < opt_.max_active;
}

std::shared_ptr<Stream> Subscription::stream_of(std::uint64_t id) {
  std::lock_guard lk(mu_);
  auto it = active_.find(id);
  return it == active_.end() ? nullptr : it->second.stream;
}

void Subscription::abort(std::uint64_t id, std::string reason, int write_errno) {
  const std::shared_ptr<Stream> s = stream_of(id);
  if (!s) return;
  Effects fx;
  s->abort(std::move(reason), write_errno, fx);
  settle(std::move(fx));  // wakes the stream: its delivery thread sends on_close
}

void Subscription::ack(std::uint64_t id, std::uint64_t upto) {
  const std::shared_ptr<Stream> s = stream_of(id);
  if (!s) return;
  Effects fx;
  const bool done = s->ack(upto, fx);
  settle(std::move(fx));
  if (done) finish(id, s);
}

void Subscription::finish(std::uint64_t id, const std::shared_ptr<Stream>& s) {
  {
    std::lock_guard lk(mu_);
    auto it = active_.find(id);
    if (it == active_.end() || it->second.stream != s) return;
    // Renames not told yet (made after the end was pulled) are told after
    // the end, like renames of a finished stream.
    if (it->second.opened) {
      for (auto& path : it->second.renames) late_.emplace_back(id, std::move(path));
      if (!it->second.renames.empty()) cv_.notify_one();
    }
    active_.erase(it);
  }
  vol_.push_finished(id, s);
}

void Subscription::close() {
  {
    std::lock_guard lk(mu_);
    if (closed_) return;
    closed_ = true;
  }
  vol_.unsubscribe(this);  // no new streams from here on
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  std::unordered_map<std::uint64_t, Active> left;
  {
    std::lock_guard lk(mu_);
    left.swap(active_);
    ready_.clear();
  }
  for (auto& [id, a] : left) vol_.push_lost(id, a.stream);
}

}  // namespace capturefs::core
