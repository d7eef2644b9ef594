// Stream, continued: its two tiers of bytes and the spill tier's I/O (see
// SPILLING in stream.hpp). Where a write's bytes go (try_apply), the spill
// file's runs and credits, writes to it (parked ones in Effects calls),
// opening it, punching dead runs and closing it, and the pinned reads of
// both tiers (begin_read, finish_read). The stream's state machine is in
// stream.cpp; both files are one class with one mutex (Stream::mu_).
#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "core/log.hpp"
#include "core/stream.hpp"

namespace capturefs::core {

namespace {

// Reads the file pieces of a copy (see copy_now) into out, which holds the
// bytes from stream offset pos. Called with no lock held.
int read_file(SpillFile& f, std::uint64_t pos, const std::vector<SpillMap::Piece>& pieces,
              std::span<std::byte> out) {
  for (const auto& p : pieces) {
    const int err = f.read_at(p.foff, out.subspan(static_cast<std::size_t>(p.off - pos),
                                                  static_cast<std::size_t>(p.len)));
    if (err != 0) return err;
  }
  return 0;
}

}  // namespace

Stream::Apply Stream::try_apply(std::uint64_t off, std::span<const std::byte> data, FileWrite& fw,
                                Result<std::size_t>* res, Effects& fx) {
  if (off < delivered_) {
    // Those bytes are already with the consumer: the file it has is wrong,
    // so it is told (aborted), and so is the writer, now and from now on.
    rewrote_delivered(off);
    *res = Errno{EIO};
    return Apply::Done;
  }
  const bool have = fw.file != nullptr;  // the bytes are in the file already
  const std::uint64_t len = data.size();
  const std::uint64_t e = end();
  const std::uint64_t me = mem_end();
  // The write's parts: [off, off + a_len) over memory, [b_beg, b_beg +
  // b_len) over the spill tier, then `zeros` and `tail` bytes beyond the end.
  const std::uint64_t a_len = off < me ? std::min(off + len, me) - off : 0;
  const std::uint64_t b_beg = std::max(off, me);
  const std::uint64_t b_end = spill_.empty() ? b_beg : std::min(off + len, e);
  const std::uint64_t b_len = b_end > b_beg ? b_end - b_beg : 0;
  const std::uint64_t zeros = off > e ? off - e : 0;
  const std::uint64_t tail = off + len > e ? off + len - std::max(off, e) : 0;
  const std::uint64_t ext = zeros + tail;

  enum class To : std::uint8_t { None, Memory, Spill };
  To to = To::None;
  std::size_t grow = 0;
  if (ext != 0) {
    // A held stream cannot wait for room: nothing drains it before its
    // writers are done. It fails at once instead.
    const bool waits = !held();
    const std::shared_ptr<Stream> waiter = waits ? shared_from_this() : nullptr;
    const bool fits_memory = ext <= max_stream_ && ext <= budget_.cap();
    const bool fits_spill = spill_store_ != nullptr && ext <= spill_store_->limit();
    // Behind a spill tier only into it (order); else memory first, then a
    // new tier if nobody can drain memory (or the bytes are on disk anyway).
    const bool spill_only = !spill_.empty();
    const bool may_spill = fits_spill && (spill_only || have || may_start_spill());
    bool stream_full = false;
    if (!spill_only && fits_memory) {
      grow = queue_.growth_for(static_cast<std::size_t>(ext));
      if (reserved_ + grow > max_stream_) stream_full = true;  // wait for our consumer
      else if (budget_.try_reserve(grow, waiter)) to = To::Memory;
    }
    if (to == To::None && may_spill && take_spill(ext, fw, waiter)) to = To::Spill;
    if (to == To::None) {
      if (!fits_memory && !may_spill) {
        *res = Errno{EFBIG};
        return Apply::Done;
      }
      if (!waits) {
        *res = Errno{(stream_full || !fits_memory) && !may_spill ? EFBIG : ENOSPC};
        return Apply::Done;
      }
      noroom_ = may_spill ? WaitReason::spill_limit
                          : (reader_ || push_) ? WaitReason::consumer : WaitReason::memory;
      return Apply::NoRoom;
    }
  }
  const bool needs_file = b_len != 0 || (to == To::Spill && tail != 0);
  if (needs_file && !have) {
    if (!file_) return Apply::NeedFile;
    fw.file = file_;  // a fresh run: nothing else ever writes there
    fw.foff = file_alloc_;
    fw.len = len;
    file_alloc_ += len;
    ++file_io_;
    return Apply::ToFile;
  }

  std::vector<FileRun> dead;
  if (a_len != 0)
    queue_.overwrite(static_cast<std::size_t>(off - base_), data.first(static_cast<std::size_t>(a_len)));
  if (b_len != 0) spill_.assign(b_beg, b_len, fw.foff + (b_beg - off), &dead);
  if (to == To::Memory) {
    reserved_ += grow;
    queue_.append(data.subspan(static_cast<std::size_t>(len - tail)), static_cast<std::size_t>(zeros));
    assert(reserved_ == queue_.capacity());
  } else if (to == To::Spill) {
    if (spill_.empty()) spill_.reset(e);
    spill_.append(zeros, SpillMap::kZeros);
    if (tail != 0) spill_.append(tail, fw.foff + (len - tail));
    fw.credit -= ext;
  }
  if (have) {
    // The parts of the run that were not mapped are dead already.
    fw.used = true;
    if (a_len != 0) dead.push_back(FileRun{fw.foff, a_len});
    if (to == To::Memory && tail != 0) dead.push_back(FileRun{fw.foff + (len - tail), tail});
  }
  bury(dead, fx);
  meta_.mtime = meta_.ctime = now();
  *res = static_cast<std::size_t>(len);
  return Apply::Done;
}

bool Stream::take_spill(std::uint64_t n, FileWrite& fw, const std::shared_ptr<Stream>& waiter) {
  if (fw.credit >= n) return true;
  if (spill_blocked()) {  // the disk is full, or no file could be opened
    if (waiter) spill_store_->budget().wait(waiter);
    return false;
  }
  const std::uint64_t more = n - fw.credit;
  if (!spill_store_->budget().try_reserve(static_cast<std::size_t>(more), waiter)) return false;
  fw.credit += more;
  return true;
}

void Stream::end_file_write(FileWrite& fw, Effects& fx) {
  if (fw.file) {
    assert(fw.file == file_);  // file_ is kept while file_io_ > 0
    if (!fw.used) {
      std::vector<FileRun> dead{FileRun{fw.foff, fw.len}};
      bury(dead, fx);
    }
    --file_io_;
    fw.file.reset();  // not the last reference: file_ has it
  }
  if (fw.credit != 0) release_spill(fw.credit, fx);
  fw = FileWrite{};
  maybe_drop_file(fx);
}

bool Stream::spill_write_failed(int err) {
  if (err != ENOSPC && err != EDQUOT) {
    log::error("cannot write to the spill file in {}: {}", spill_store_->dir(), std::strerror(err));
    return false;
  }
  // The file system is full before the limit: like a full limit, the
  // write waits until something is released.
  spill_store_->disk_full(err);
  block_spill();
  wait_for_room();
  return true;
}

void Stream::wait_for_room() {
  const std::shared_ptr<Stream> self = shared_from_this();
  budget_.wait(self);
  if (spill_store_ != nullptr) spill_store_->budget().wait(self);
}

void Stream::file_opened(Result<std::shared_ptr<SpillFile>> f, Effects& fx) {
  opening_ = false;
  if (f) {
    assert(!file_);
    file_ = std::move(f.value());
    file_alloc_ = 0;
  } else {
    block_spill();  // SpillStore::open() logged why
    wait_for_room();
  }
  progress(fx);  // the writes parked for the file
}

void Stream::request_file(Effects& fx) {
  if (opening_) return;
  opening_ = true;
  fx.calls.emplace_back([self = shared_from_this()] {
    auto f = self->spill_store_->open();  // unlocked
    Effects later;
    {
      std::lock_guard lk(self->mu_);
      self->file_opened(std::move(f), later);
    }
    settle(std::move(later));
  });
}

void Stream::start_parked_write(FileWrite fw, Effects& fx) {
  PendingWrite& w = writes_.front();
  w.in_flight = ++next_io_id_;
  auto data = std::make_shared<std::vector<std::byte>>(std::move(w.data));
  fx.calls.emplace_back([self = shared_from_this(), fw = std::move(fw), data, id = w.in_flight] {
    const int err = fw.file->write_at(fw.foff, *data);  // unlocked
    self->parked_write_written(id, fw, data, err);
  });
}

void Stream::parked_write_written(std::uint64_t id, FileWrite fw,
                                  const std::shared_ptr<std::vector<std::byte>>& data, int err) {
  Effects fx;
  {
    std::lock_guard lk(mu_);
    auto it = std::find_if(writes_.begin(), writes_.end(),
                           [id](const PendingWrite& w) { return w.in_flight == id; });
    if (it == writes_.end()) {
      end_file_write(fw, fx);  // cancelled or failed meanwhile (its caller was answered)
    } else {
      Result<std::size_t> r = data->size();
      bool finished = true;
      if (abort_errno_ != 0) {
        r = Errno{abort_errno_};
      } else if (discard_) {
        // accepted and discarded
      } else if (err != 0) {
        end_file_write(fw, fx);  // first: it gives back the credit
        if (spill_write_failed(err)) finished = false;
        else r = Errno{err};
      } else if (try_apply(it->off, *data, fw, &r, fx) != Apply::Done) {
        finished = false;  // NoRoom (its bytes are in the file: nothing else)
      }
      end_file_write(fw, fx);  // (no-op if ended above)
      if (finished) {
        fx.calls.emplace_back([done = std::move(it->done), r] { done(r); });
        forget_key(it->key);
        writes_.erase(it);
      } else {
        it->in_flight = 0;
        it->data = std::move(*data);
      }
      progress(fx);
    }
  }
  settle(std::move(fx));
}

void Stream::release_spill(std::uint64_t n, Effects& fx) {
  if (n == 0) return;
  fx.merge_woken(spill_store_->budget().release(static_cast<std::size_t>(n)));
}

void Stream::bury(std::vector<FileRun>& runs, Effects& fx) {
  if (runs.empty()) return;
  dead_.insert(dead_.end(), runs.begin(), runs.end());
  runs.clear();
  if (pins_ == 0) flush_dead(fx);  // else a read may still copy from them
}

void Stream::flush_dead(Effects& fx) {
  if (dead_.empty()) return;
  if (!file_ || !spill_store_->punching()) {
    dead_.clear();
    return;
  }
  // Holes are punched in whole blocks; the unaligned end of the last run is
  // kept and merged with the next dead run (consumption is sequential, so
  // the next one usually starts right there).
  constexpr std::uint64_t kBlock = 4096;
  if (punch_tail_.len != 0) dead_.push_back(punch_tail_);
  punch_tail_ = FileRun{};
  std::sort(dead_.begin(), dead_.end(), [](const FileRun& a, const FileRun& b) { return a.off < b.off; });
  std::vector<FileRun> holes;
  auto emit = [&](const FileRun& r, bool last) {
    const std::uint64_t from = (r.off + kBlock - 1) / kBlock * kBlock;
    const std::uint64_t to = (r.off + r.len) / kBlock * kBlock;
    if (to > from) holes.push_back(FileRun{from, to - from});
    if (last) {
      const std::uint64_t t = std::max(r.off, to);
      if (r.off + r.len > t) punch_tail_ = FileRun{t, r.off + r.len - t};
    }
  };
  FileRun cur = dead_.front();
  for (std::size_t i = 1; i < dead_.size(); ++i) {
    const FileRun& r = dead_[i];
    if (r.off <= cur.off + cur.len) {
      cur.len = std::max(cur.off + cur.len, r.off + r.len) - cur.off;
    } else {
      emit(cur, false);
      cur = r;
    }
  }
  emit(cur, true);
  dead_.clear();
  if (holes.empty()) return;
  fx.calls.emplace_back([f = file_, holes = std::move(holes), store = spill_store_] {
    for (const FileRun& h : holes) {
      if (!store->punching()) return;
      if (const int err = f->punch(h.off, h.len); err != 0) store->punch_failed(err);
    }
  });
}

void Stream::maybe_drop_file(Effects& fx) {
  if (!file_ || !spill_.empty() || file_io_ != 0 || opening_) return;
  dead_.clear();
  punch_tail_ = FileRun{};
  file_alloc_ = 0;
  fx.calls.emplace_back([f = std::move(file_)] {});  // closed outside the lock
}

void Stream::copy_now(std::uint64_t pos, std::span<std::byte> out,
                      std::vector<SpillMap::Piece>* file) const {
  const std::uint64_t me = mem_end();
  std::size_t done = 0;
  if (pos < me) {
    done = static_cast<std::size_t>(std::min<std::uint64_t>(out.size(), me - pos));
    queue_.peek(static_cast<std::size_t>(pos - base_), out.first(done));
  }
  if (done == out.size()) return;
  const std::size_t first = file->size();
  spill_.pieces(pos + done, out.size() - done, file);
  auto keep = file->begin() + static_cast<std::ptrdiff_t>(first);
  for (auto it = keep; it != file->end(); ++it) {
    if (it->foff == SpillMap::kZeros) {
      std::memset(out.data() + (it->off - pos), 0, static_cast<std::size_t>(it->len));
    } else {
      *keep++ = *it;
    }
  }
  file->erase(keep, file->end());
}

void Stream::pin() {
  ++pins_;
  ++file_io_;
}

void Stream::unpin(Effects& fx) {
  --pins_;
  --file_io_;
  if (pins_ == 0) flush_dead(fx);
  maybe_drop_file(fx);
}

Stream::TierRead Stream::begin_read(std::uint64_t pos, std::span<std::byte> out,
                                    std::vector<SpillMap::Piece> scratch) {
  TierRead r;
  r.pos = pos;
  r.out = out;
  r.pieces = std::move(scratch);
  r.pieces.clear();
  copy_now(pos, out, &r.pieces);
  if (!r.pieces.empty()) {
    r.file = file_;
    pin();
  }
  return r;
}

int Stream::finish_read(std::unique_lock<std::mutex>& lk, TierRead& r, Effects& fx) {
  assert(r.file);
  if (lk.owns_lock()) lk.unlock();
  const int err = read_file(*r.file, r.pos, r.pieces, r.out);
  lk.lock();
  unpin(fx);
  if (err != 0) read_failed(err, fx);
  return err;
}

void Stream::read_failed(int err, Effects& fx) {
  log::error("cannot read spilled bytes back from the spill file in {}: {}", spill_store_->dir(),
             std::strerror(err));
  if (abort_reason_.empty())
    abort_reason_ = fmt::format("its spilled bytes could not be read back: {}", std::strerror(err));
  abort_errno_ = EIO;
  discard(fx);
}

}  // namespace capturefs::core
