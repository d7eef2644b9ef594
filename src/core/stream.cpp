#include "core/stream.hpp"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "core/log.hpp"

namespace capturefs::core {

timespec now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

std::int64_t mono_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// ---- Stream ----------------------------------------------------------------
// The state machine. The tiers and the spill file's I/O: stream_spill.cpp.

Stream::Stream(Budget& budget, Parking& parking, std::uint64_t max_stream, Meta meta,
               SpillStore* spill)
    : budget_(budget), parking_(parking), max_stream_(max_stream), spill_store_(spill), meta_(meta) {}

Stream::~Stream() {
  // Normally empty by now (release() frees finished streams with effects);
  // whatever is left goes back without waking anyone. No lock is held, so
  // file_ may close here.
  if (reserved_ != 0) (void)budget_.release(reserved_);
  if (!spill_.empty()) (void)spill_store_->budget().release(spill_.size());
}

bool Stream::add_writer() {
  std::lock_guard lk(mu_);
  if (close_sent_) return false;
  ++writers_;
  linger_ = false;  // the same stream continues
  eof_seen_ = false;
  return true;
}

bool Stream::holds() const {
  std::lock_guard lk(mu_);
  return hold_;
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
    consume_to(delivered_, fx);
    if (!linked_) discard(fx);
    progress(fx);
  }
  const bool done = writers_ == 0 && !reader_ && !push_ && writes_.empty() &&
                    ((eof_seen_ && stored() == 0) || !linked_);
  if (done) {
    const std::uint64_t e = end();
    drop_all(fx);
    base_ = e;
  }
  out.done = done && linked_;
  return out;
}

bool Stream::delivered() const {
  std::lock_guard lk(mu_);
  return writers_ == 0 && !reader_ && !push_ && eof_seen_ && stored() == 0 && writes_.empty();
}

bool Stream::fully_read() const {
  std::lock_guard lk(mu_);
  return writers_ == 0 && eof_seen_ && delivered_ == end() && writes_.empty();
}

std::uint64_t Stream::unconsumed() const {
  std::lock_guard lk(mu_);
  return end() - base_;
}

std::uint64_t Stream::spilled() const {
  std::lock_guard lk(mu_);
  return spill_.size();
}

void Stream::rewrote_delivered(std::uint64_t off) {
  if (abort_reason_.empty())
    abort_reason_ = fmt::format(
        "a writer rewrote bytes already delivered (offset {}, {} bytes delivered)", off,
        delivered_);
  abort_errno_ = EIO;
}

void Stream::release_memory(std::size_t n, Effects& fx) {
  if (n == 0) return;
  assert(n <= reserved_);
  reserved_ -= n;
  fx.merge_woken(budget_.release(n));
}

void Stream::consume_to(std::uint64_t pos, Effects& fx) {
  if (pos <= base_) return;
  const std::uint64_t me = mem_end();
  release_memory(queue_.drop(static_cast<std::size_t>(std::min(pos, me) - base_)), fx);
  if (pos > me && !spill_.empty()) {
    std::vector<FileRun> dead;
    const std::uint64_t before = spill_.size();
    spill_.drop_front(pos, &dead);
    release_spill(before - spill_.size(), fx);
    spill_store_->note_freed();
    bury(dead, fx);
    maybe_drop_file(fx);
  }
  base_ = pos;
  if (spill_.empty()) stalled_ = false;  // the consumer caught up: memory again
}

void Stream::drop_all(Effects& fx) {
  release_memory(queue_.clear(), fx);
  if (!spill_.empty()) {
    std::vector<FileRun> dead;
    const std::uint64_t n = spill_.size();
    spill_.clear(&dead);
    release_spill(n, fx);
    spill_store_->note_freed();
    bury(dead, fx);
  }
  maybe_drop_file(fx);
}

void Stream::park_key(WaitKey key) { parking_.add(key, shared_from_this()); }

void Stream::forget_key(WaitKey key) { parking_.remove(key, this); }

void Stream::progress(Effects& fx, const Fresh* fresh) {
  for (bool moved = true; moved;) {
    moved = false;
    // A write whose bytes are being written to the spill file holds back
    // the ones behind it (FIFO), like an unarmed one.
    while (!writes_.empty() && writes_.front().armed && writes_.front().in_flight == 0) {
      PendingWrite& w = writes_.front();
      Result<std::size_t> r = w.data.size();
      if (abort_errno_ != 0) {
        r = Errno{abort_errno_};
      } else if (!discard_) {
        FileWrite fw;
        const Apply a = try_apply(w.off, w.data, fw, &r, fx);
        if (a == Apply::ToFile) {
          start_parked_write(std::move(fw), fx);
          break;
        }
        end_file_write(fw, fx);
        if (a == Apply::NeedFile) request_file(fx);
        if (a != Apply::Done) break;
      }
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
      if (what == Serve::Data && fresh != nullptr && rd.pos >= fresh->off &&
          rd.pos - fresh->off + n <= fresh->data.size()) {
        // Straight from the writer's buffer (it outlives these Effects).
        fx.calls.emplace_back([done = std::move(rd.done), b = fresh->data.subspan(rd.pos - fresh->off, n)] {
          done(b);
        });
      } else if (what == Serve::Data) {
        // Not zero-filled: copy_now() and read_file() overwrite all n bytes.
        std::shared_ptr<std::byte[]> v = std::make_shared_for_overwrite<std::byte[]>(n);
        TierRead r = begin_read(rd.pos, {v.get(), n});
        if (!r.file) {
          fx.calls.emplace_back([done = std::move(rd.done), v = std::move(v), n] {
            done(std::span<const std::byte>(v.get(), n));
          });
        } else {
          // The rest comes from the spill file, read once no lock is held.
          fx.calls.emplace_back([self = shared_from_this(), r = std::move(r), v = std::move(v), n,
                                 done = std::move(rd.done)]() mutable {
            Effects later;
            std::unique_lock lk(self->mu_, std::defer_lock);
            const int err = self->finish_read(lk, r, later);
            lk.unlock();
            if (err != 0) done(Errno{EIO});
            else done(std::span<const std::byte>(v.get(), n));
            settle(std::move(later));
          });
        }
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

void Stream::abort(std::string reason, int write_errno, Effects& fx) {
  std::lock_guard lk(mu_);
  if (abort_reason_.empty()) abort_reason_ = std::move(reason);
  abort_errno_ = write_errno;
  discard(fx);
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
  consume_to(pos, fx);
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
  FileWrite fw;  // declared first: a file reference it holds is dropped unlocked
  std::unique_lock lk(mu_);
  if (abort_errno_ != 0) return Result<std::size_t>(Errno{abort_errno_});
  if (discard_) return Result<std::size_t>(data.size());
  bool opened = false;  // this call opened (or failed to open) the spill file
  while (writes_.empty() || fw.file) {
    Result<std::size_t> r = 0;
    const Apply a = try_apply(off, data, fw, &r, fx);
    if (a == Apply::Done) {
      end_file_write(fw, fx);
      if (r.ok() || abort_errno_ != 0) {
        // A waiting reader may be answered from `data` itself, which stays
        // valid until the caller has settled fx; not when fx would be
        // handed to a settle() further up this thread's stack, which runs
        // it only after this write's caller has returned.
        const Fresh fresh{off, data.first(std::min(data.size(), r.ok() ? r.value() : 0))};
        progress(fx, r.ok() && !settling() ? &fresh : nullptr);
      }
      return r;
    }
    if (a == Apply::ToFile) {
      // Into the spill file, unlocked, then apply it (see SPILLING).
      lk.unlock();
      const int err = fw.file->write_at(fw.foff, data);
      lk.lock();
      if (err == 0 && abort_errno_ == 0 && !discard_) continue;
      end_file_write(fw, fx);
      if (abort_errno_ != 0) return Result<std::size_t>(Errno{abort_errno_});
      if (discard_) return Result<std::size_t>(data.size());
      if (!spill_write_failed(err)) return Result<std::size_t>(Errno{err});
      break;  // wait (disk full)
    }
    end_file_write(fw, fx);  // NoRoom or NeedFile: the credit goes back
    if (a == Apply::NoRoom || opening_ || opened) break;  // wait (for room, or the file)
    // NeedFile: open it, unlocked; writes arriving meanwhile wait for it.
    opening_ = true;
    lk.unlock();
    auto f = spill_store_->open();
    lk.lock();
    opened = true;
    file_opened(std::move(f), fx);
  }
  writes_.push_back(PendingWrite{key, off, std::vector<std::byte>(data.begin(), data.end()),
                                 std::move(done), key == 0, false, 0, mono_ns()});
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
  thread_local std::vector<SpillMap::Piece> pieces;
  using R = Result<std::span<const std::byte>>;

  TierRead r;  // declared first: its file is dropped after unlocking
  std::unique_lock lk(mu_);
  // Two rounds: freeing what the reader moved past may let a parked write
  // of this stream in, which brings the bytes this read waits for.
  for (int round = 0; round < 2 && reads_.empty(); ++round) {
    if (round == 1) {
      if (writes_.empty()) break;
      progress(fx);
    }
    std::size_t n = 0;
    switch (prepare_read(pos, size, &n, fx)) {
      case Serve::Data: {
        if (buf_cap < n) {
          buf.reset(new std::byte[n]);
          buf_cap = n;
        }
        r = begin_read(pos, {buf.get(), n}, std::move(pieces));
        progress(fx);  // our own parked writers may fit now
        // From the spill file, unlocked; the pieces are pinned meanwhile.
        const int err = r.file ? finish_read(lk, r, fx) : 0;
        pieces = std::move(r.pieces);
        if (err != 0) return R(Errno{EIO});
        return R(std::span<const std::byte>(buf.get(), n));
      }
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
  thread_local std::vector<SpillMap::Piece> pieces;
  TierRead r;  // declared first: its file is dropped after unlocking
  Effects fx;
  Result<std::span<const std::byte>> out = std::span<const std::byte>{};
  {
    std::unique_lock lk(mu_);
    if (pos < base_) return Errno{EIO};  // consumed: gone
    if (pos >= end()) return std::span<const std::byte>{};
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(size, end() - pos));
    if (buf.size() < n) buf.resize(n);
    r = begin_read(pos, {buf.data(), n}, std::move(pieces));
    out = std::span<const std::byte>(buf.data(), n);
    if (r.file && finish_read(lk, r, fx) != 0) out = Errno{EIO};
    pieces = std::move(r.pieces);
  }
  settle(std::move(fx));
  return out;
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
  drop_all(fx);
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
    if (!spill_.empty()) {
      // Cut the spill tier (all of it if the cut is in memory).
      std::vector<FileRun> dead;
      const std::uint64_t before = spill_.size();
      spill_.truncate(std::max(size, mem_end()), &dead);
      release_spill(before - spill_.size(), fx);
      spill_store_->note_freed();
      bury(dead, fx);
      maybe_drop_file(fx);
    }
    if (size < mem_end()) release_memory(queue_.truncate(static_cast<std::size_t>(size - base_)), fx);
  } else {
    // Growing: zero bytes, in memory if it can take them, else (as a write
    // would) in the spill tier, where zeros take no disk. Never waits.
    const std::uint64_t zeros = size - e;
    bool to_spill = !spill_.empty();
    if (!to_spill) {
      int err = 0;
      const std::size_t grow = queue_.growth_for(static_cast<std::size_t>(zeros));
      if (queue_.size() + zeros > max_stream_ || reserved_ + grow > max_stream_) err = EFBIG;
      else if (!budget_.try_reserve(grow, nullptr)) err = ENOSPC;
      if (err == 0) {
        reserved_ += grow;
        queue_.append({}, static_cast<std::size_t>(zeros));
      } else if (may_start_spill()) {
        to_spill = true;
      } else {
        return Errno{err};
      }
    }
    if (to_spill) {
      if (zeros > spill_store_->limit()) return Errno{EFBIG};
      if (spill_blocked() || !spill_store_->budget().try_reserve(static_cast<std::size_t>(zeros), nullptr))
        return Errno{ENOSPC};
      if (spill_.empty()) spill_.reset(e);
      spill_.append(zeros, SpillMap::kZeros);
    }
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
  out->spilled = spill_.size();
  out->wait = wait_reason();
  out->waited_ns = writes_.empty() ? 0 : mono_ns() - writes_.front().since_ns;
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
  a.blocks = (reserved_ + spill_.size() + 511) / 512;  // memory and spill space held
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
