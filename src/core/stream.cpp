#include "core/stream.hpp"

#include <algorithm>
#include <cassert>
#include <cerrno>

#include <fmt/format.h>

namespace capturefs::core {

timespec now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

void Effects::merge_woken(std::vector<std::weak_ptr<Stream>> w) {
  if (woken.empty()) {
    woken = std::move(w);
  } else {
    woken.insert(woken.end(), std::make_move_iterator(w.begin()), std::make_move_iterator(w.end()));
  }
}

void settle(Effects&& fx) {
  while (!fx.calls.empty() || !fx.woken.empty()) {
    auto calls = std::move(fx.calls);
    fx.calls.clear();
    for (auto& c : calls) c();
    auto woken = std::move(fx.woken);
    fx.woken.clear();
    for (auto& w : woken) {
      if (auto s = w.lock()) s->pump(fx);
    }
  }
}

// ---- Parking ---------------------------------------------------------------

void Parking::add(WaitKey key, const std::shared_ptr<Stream>& s) {
  std::lock_guard lk(mu_);
  if (key != 0) keys_[key] = s;
  Held& h = streams_[s.get()];
  h.stream = s;
  ++h.ops;
}

void Parking::remove(WaitKey key, const Stream* s) {
  std::lock_guard lk(mu_);
  if (key != 0) keys_.erase(key);
  auto it = streams_.find(s);
  if (it != streams_.end() && --it->second.ops == 0) streams_.erase(it);
}

std::shared_ptr<Stream> Parking::find(WaitKey key) const {
  std::lock_guard lk(mu_);
  auto it = keys_.find(key);
  return it == keys_.end() ? nullptr : it->second.lock();
}

std::vector<std::shared_ptr<Stream>> Parking::all() const {
  std::vector<std::shared_ptr<Stream>> out;
  std::lock_guard lk(mu_);
  for (const auto& [p, h] : streams_) {
    if (auto s = h.stream.lock()) out.push_back(std::move(s));
  }
  return out;
}

// ---- Stream ----------------------------------------------------------------

Stream::Stream(Budget& budget, Parking& parking, std::uint64_t max_stream, Meta meta)
    : budget_(budget), parking_(parking), max_stream_(max_stream), meta_(meta) {}

Stream::~Stream() {
  // Normally empty by now (release() frees finished streams with effects);
  // whatever is left goes back without waking anyone.
  if (reserved_ != 0) (void)budget_.release(reserved_);
}

void Stream::add_writer() {
  std::lock_guard lk(mu_);
  ++writers_;
  linger_ = false;  // the same stream continues
  eof_seen_ = false;
}

void Stream::end_linger(Effects& fx) {
  std::lock_guard lk(mu_);
  if (!linger_) return;
  linger_ = false;
  progress(fx);
}

void Stream::set_hold(bool on, Effects& fx) {
  std::lock_guard lk(mu_);
  if (delivered_ != 0 || hold_ == on) return;
  hold_ = on;
  progress(fx);  // released: a waiting consumer may go on
}

Result<std::uint64_t> Stream::add_reader() {
  std::lock_guard lk(mu_);
  if (reader_ || push_) return Errno{EBUSY};
  reader_ = true;
  return delivered_;
}

Released Stream::release(Role role, bool may_linger, Effects& fx) {
  std::lock_guard lk(mu_);
  Released out;
  if (role == Role::Writer) {
    assert(writers_ > 0);
    --writers_;
    if (writers_ == 0) {
      if (may_linger && end() == 0 && linked_ && abort_reason_.empty()) {
        linger_ = true;
        out.linger = true;
      }
      progress(fx);  // parked reads (or a push consumer) may now see EOF
    }
  } else {
    reader_ = false;
    // What this consumer was handed is gone; the next one starts after it.
    release_memory(queue_.drop(delivered_ - base_), fx);
    base_ = delivered_;
    if (!linked_) discard(fx);
    progress(fx);
  }
  const bool done = writers_ == 0 && !reader_ && !push_ && writes_.empty() &&
                    ((eof_seen_ && queue_.empty()) || !linked_);
  if (done && reserved_ != 0) release_memory(queue_.clear(), fx);
  out.done = done && linked_;
  return out;
}

bool Stream::delivered() const {
  std::lock_guard lk(mu_);
  return writers_ == 0 && !reader_ && !push_ && eof_seen_ && queue_.empty() && writes_.empty();
}

bool Stream::fully_read() const {
  std::lock_guard lk(mu_);
  return writers_ == 0 && eof_seen_ && delivered_ == end() && writes_.empty();
}

void Stream::rewrote_delivered(std::uint64_t off) {
  if (abort_reason_.empty())
    abort_reason_ = fmt::format(
        "a writer rewrote bytes already delivered (offset {}, {} bytes delivered)", off,
        delivered_);
  abort_errno_ = EIO;
}

Stream::Apply Stream::try_apply(std::uint64_t off, std::span<const std::byte> data,
                                Result<std::size_t>* res) {
  const std::uint64_t e = end();
  if (off < delivered_) {
    // Those bytes are already with the consumer: the file it has is wrong,
    // so it is told (aborted), and so is the writer, now and from now on.
    rewrote_delivered(off);
    *res = Errno{EIO};
    return Apply::Done;
  }
  const std::size_t len = data.size();
  if (off + len <= e) {
    queue_.overwrite(off - base_, data);
  } else {
    const std::uint64_t overlap = off < e ? e - off : 0;
    const std::uint64_t zeros = off > e ? off - e : 0;
    const auto tail = data.subspan(overlap);
    if (zeros + tail.size() > max_stream_ || zeros + tail.size() > budget_.cap()) {
      *res = Errno{EFBIG};
      return Apply::Done;
    }
    const std::size_t grow = queue_.growth_for(zeros + tail.size());
    // A held stream cannot wait for room: nothing drains it before its
    // writers are done. It fails at once instead.
    const bool waits = !held();
    if (reserved_ + grow > max_stream_) {  // wait for our reader
      if (waits) return Apply::NoRoom;
      *res = Errno{EFBIG};
      return Apply::Done;
    }
    if (!budget_.try_reserve(grow, waits ? shared_from_this() : nullptr)) {
      if (waits) return Apply::NoRoom;
      *res = Errno{ENOSPC};
      return Apply::Done;
    }
    reserved_ += grow;
    if (overlap != 0) queue_.overwrite(off - base_, data.first(overlap));
    queue_.append(tail, zeros);
    assert(reserved_ == queue_.capacity());
  }
  meta_.mtime = meta_.ctime = now();
  *res = len;
  return Apply::Done;
}

void Stream::release_memory(std::size_t n, Effects& fx) {
  if (n == 0) return;
  assert(n <= reserved_);
  reserved_ -= n;
  fx.merge_woken(budget_.release(n));
}

void Stream::park_key(WaitKey key) { parking_.add(key, shared_from_this()); }

void Stream::forget_key(WaitKey key) { parking_.remove(key, this); }

void Stream::progress(Effects& fx) {
  for (bool moved = true; moved;) {
    moved = false;
    while (!writes_.empty() && writes_.front().armed) {
      PendingWrite& w = writes_.front();
      Result<std::size_t> r = w.data.size();
      if (abort_errno_ != 0) r = Errno{abort_errno_};
      else if (!discard_ && try_apply(w.off, w.data, &r) == Apply::NoRoom) break;
      fx.calls.emplace_back([done = std::move(w.done), r] { done(r); });
      forget_key(w.key);
      writes_.pop_front();
      moved = true;
    }
    while (!reads_.empty() && reads_.front().armed) {
      PendingRead& rd = reads_.front();
      std::size_t n = 0;
      const Serve what = prepare_read(rd.pos, rd.size, &n, fx);
      if (what == Serve::Wait) break;
      if (what == Serve::Data) {
        // Not zero-filled: peek() overwrites all n bytes.
        std::shared_ptr<std::byte[]> v = std::make_shared_for_overwrite<std::byte[]>(n);
        queue_.peek(rd.pos - base_, {v.get(), n});
        fx.calls.emplace_back([done = std::move(rd.done), v = std::move(v), n] {
          done(std::span<const std::byte>(v.get(), n));
        });
      } else if (what == Serve::Eof) {
        fx.calls.emplace_back([done = std::move(rd.done)] { done(std::span<const std::byte>{}); });
      } else {
        fx.calls.emplace_back([done = std::move(rd.done)] { done(Errno{EIO}); });
      }
      forget_key(rd.key);
      reads_.pop_front();
      moved = true;
    }
  }
  if (abort_errno_ != 0 && !discard_) discard(fx);  // a write aborted it
  maybe_wake(fx);
}

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

Pull Stream::pull(std::size_t max) {
  std::lock_guard lk(mu_);
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
    p.bytes.resize(n);
    queue_.peek(delivered_ - base_, p.bytes);
    delivered_ += n;
    return p;
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
  if (upto > base_) {
    release_memory(queue_.drop(upto - base_), fx);
    base_ = upto;
  }
  progress(fx);
  return close_sent_ && base_ == delivered_;
}

void Stream::abort(std::string reason, int write_errno, Effects& fx) {
  std::lock_guard lk(mu_);
  if (abort_reason_.empty()) abort_reason_ = std::move(reason);
  abort_errno_ = write_errno;
  discard(fx);
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

bool Stream::has_consumer() const {
  std::lock_guard lk(mu_);
  return reader_ || push_ != nullptr;
}

Stream::Serve Stream::prepare_read(std::uint64_t pos, std::size_t size, std::size_t* n,
                                   Effects& fx) {
  if (!abort_reason_.empty()) return Serve::Error;  // never a silent short file
  if (pos < base_) return Serve::Error;  // seeking back past what we kept
  if (held()) return Serve::Wait;
  pos = std::min(pos, end());
  if (pos > base_) {
    release_memory(queue_.drop(pos - base_), fx);
    base_ = pos;
  }
  delivered_ = std::max(delivered_, base_);
  if (pos < end()) {
    *n = std::min<std::uint64_t>(size, end() - pos);
    delivered_ = std::max(delivered_, pos + *n);
    return Serve::Data;
  }
  if (writers_ == 0) {
    eof_seen_ = true;
    return Serve::Eof;
  }
  return Serve::Wait;
}

Outcome<std::size_t> Stream::write(std::uint64_t off, std::span<const std::byte> data,
                                   WaitKey key, WriteDone done, Effects& fx) {
  std::lock_guard lk(mu_);
  if (abort_errno_ != 0) return Result<std::size_t>(Errno{abort_errno_});
  if (discard_) return Result<std::size_t>(data.size());
  if (writes_.empty()) {
    Result<std::size_t> r = 0;
    if (try_apply(off, data, &r) == Apply::Done) {
      if (r.ok() || abort_errno_ != 0) progress(fx);
      return r;
    }
  }
  writes_.push_back(PendingWrite{key, off, std::vector<std::byte>(data.begin(), data.end()),
                                 std::move(done), key == 0, false});
  park_key(key);
  return Parked{};
}

Outcome<std::span<const std::byte>> Stream::read(std::uint64_t pos, std::size_t size,
                                                 bool nonblock, WaitKey key, ReadDone done,
                                                 Effects& fx) {
  // The immediate path copies into a per-thread buffer, so a read in steady
  // state allocates nothing. The span is only used until the reply is sent.
  thread_local std::unique_ptr<std::byte[]> buf;
  thread_local std::size_t buf_cap = 0;
  using R = Result<std::span<const std::byte>>;

  std::lock_guard lk(mu_);
  // Two rounds: freeing what the reader moved past may let a parked write
  // of this stream in, which brings the bytes this read waits for.
  for (int round = 0; round < 2 && reads_.empty(); ++round) {
    if (round == 1) {
      if (writes_.empty()) break;
      progress(fx);
    }
    std::size_t n = 0;
    switch (prepare_read(pos, size, &n, fx)) {
      case Serve::Data:
        if (buf_cap < n) {
          buf.reset(new std::byte[n]);
          buf_cap = n;
        }
        queue_.peek(pos - base_, {buf.get(), n});
        progress(fx);  // our own parked writers may fit now
        return R(std::span<const std::byte>(buf.get(), n));
      case Serve::Eof:
        return R(std::span<const std::byte>{});
      case Serve::Error:
        return R(Errno{EIO});
      case Serve::Wait:
        break;
    }
  }
  if (nonblock) return R(Errno{EAGAIN});
  reads_.push_back(PendingRead{key, pos, size, std::move(done), key == 0, false});
  park_key(key);
  return Parked{};
}

Result<std::span<const std::byte>> Stream::read_back(std::uint64_t pos, std::size_t size) {
  thread_local std::vector<std::byte> buf;
  std::lock_guard lk(mu_);
  if (pos < base_) return Errno{EIO};  // consumed: gone
  if (pos >= end()) return std::span<const std::byte>{};
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(size, end() - pos));
  if (buf.size() < n) buf.resize(n);
  queue_.peek(pos - base_, {buf.data(), n});
  return std::span<const std::byte>(buf.data(), n);
}

namespace {
template <class Q>
auto find_key(Q& q, WaitKey key) {
  return std::find_if(q.begin(), q.end(), [key](const auto& p) { return p.key == key; });
}
}  // namespace

void Stream::arm(WaitKey key, Effects& fx) {
  std::lock_guard lk(mu_);
  if (auto it = find_key(writes_, key); it != writes_.end()) {
    it->armed = true;
    if (it->cancelled) {
      fx.calls.emplace_back([done = std::move(it->done)] { done(Errno{EINTR}); });
      writes_.erase(it);
      forget_key(key);
    }
  } else if (auto jt = find_key(reads_, key); jt != reads_.end()) {
    jt->armed = true;
    if (jt->cancelled) {
      fx.calls.emplace_back([done = std::move(jt->done)] { done(Errno{EINTR}); });
      reads_.erase(jt);
      forget_key(key);
    }
  }
  progress(fx);
}

void Stream::cancel(WaitKey key, Effects& fx) {
  std::lock_guard lk(mu_);
  if (auto it = find_key(writes_, key); it != writes_.end()) {
    if (!it->armed) {
      it->cancelled = true;
      return;
    }
    fx.calls.emplace_back([done = std::move(it->done)] { done(Errno{EINTR}); });
    writes_.erase(it);
  } else if (auto jt = find_key(reads_, key); jt != reads_.end()) {
    if (!jt->armed) {
      jt->cancelled = true;
      return;
    }
    fx.calls.emplace_back([done = std::move(jt->done)] { done(Errno{EINTR}); });
    reads_.erase(jt);
  } else {
    return;
  }
  forget_key(key);
  progress(fx);
}

void Stream::pump(Effects& fx) {
  std::lock_guard lk(mu_);
  progress(fx);
}

void Stream::fail_parked(int err, Effects& fx) {
  std::lock_guard lk(mu_);
  for (auto& w : writes_) {
    fx.calls.emplace_back([done = std::move(w.done), err] { done(Errno{err}); });
    forget_key(w.key);
  }
  for (auto& r : reads_) {
    fx.calls.emplace_back([done = std::move(r.done), err] { done(Errno{err}); });
    forget_key(r.key);
  }
  writes_.clear();
  reads_.clear();
}

void Stream::discard(Effects& fx) {
  discard_ = true;
  const std::uint64_t e = end();
  release_memory(queue_.clear(), fx);
  base_ = e;
  delivered_ = std::max(delivered_, e);
  progress(fx);  // parked writes complete as discarded
}

void Stream::unlinked(Effects& fx) {
  std::lock_guard lk(mu_);
  linked_ = false;
  linger_ = false;
  if (push_ && !close_sent_ && abort_reason_.empty()) {
    abort_reason_ = "unlinked before it was fully delivered";
    unlinked_end_ = true;
  }
  if (!reader_) discard(fx);
}

Status Stream::truncate(std::uint64_t size, Effects& fx) {
  std::lock_guard lk(mu_);
  const std::uint64_t e = end();
  if (size == e) return Ok{};
  if (size < delivered_) return Errno{EINVAL};  // those bytes are with the consumer
  if (size < e) {
    release_memory(queue_.truncate(static_cast<std::size_t>(size - base_)), fx);
  } else {
    const std::uint64_t zeros = size - e;
    if (queue_.size() + zeros > max_stream_) return Errno{EFBIG};
    const std::size_t grow = queue_.growth_for(static_cast<std::size_t>(zeros));
    if (reserved_ + grow > max_stream_) return Errno{EFBIG};
    if (!budget_.try_reserve(grow, nullptr)) return Errno{ENOSPC};
    reserved_ += grow;
    queue_.append({}, static_cast<std::size_t>(zeros));
  }
  meta_.mtime = meta_.ctime = now();
  progress(fx);
  return Ok{};
}

void Stream::stats(StreamStats* out, timespec t) {
  std::lock_guard lk(mu_);
  out->written = end();
  out->delivered = delivered_;
  out->writers = writers_;
  out->consumer = reader_ || push_ != nullptr;
  const double dt = static_cast<double>(t.tv_sec - rate_time_.tv_sec) +
                    static_cast<double>(t.tv_nsec - rate_time_.tv_nsec) / 1e9;
  if (rate_time_.tv_sec == 0) {
    rate_time_ = t;
    rate_bytes_ = end();
  } else if (dt >= 1.0) {
    rate_ = static_cast<std::uint64_t>(static_cast<double>(end() - rate_bytes_) / dt);
    rate_time_ = t;
    rate_bytes_ = end();
  }
  out->rate = rate_;
}

Attr Stream::attr(Ino ino) const {
  std::lock_guard lk(mu_);
  Attr a;
  a.ino = ino;
  a.kind = Kind::Stream;
  a.meta = meta_;
  a.nlink = linked_ ? 1 : 0;
  a.size = end();
  a.blocks = (reserved_ + 511) / 512;
  return a;
}

void Stream::set_meta(const SetAttr& sa) {
  std::lock_guard lk(mu_);
  if (sa.set_mode) meta_.mode = sa.mode & 07777;
  if (sa.set_uid) meta_.uid = sa.uid;
  if (sa.set_gid) meta_.gid = sa.gid;
  if (sa.set_atime) meta_.atime = sa.atime;
  if (sa.set_mtime) meta_.mtime = sa.mtime;
  meta_.ctime = now();
}

}  // namespace capturefs::core
