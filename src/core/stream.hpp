// One captured file: its bytes in flight, its writers, its consumer, and
// the operations parked on it.
//
// CONCURRENCY MODEL
// Every member is guarded by mu_. Operations that cannot finish now (a read
// on an empty stream, a write that does not fit the memory limits) are
// *parked*: their completion callback is stored, and whichever thread later
// makes progress possible (a write, a read, a release, a cancel) calls it.
// Callbacks are never called with mu_ held: state changes collect them in
// an Effects list that the caller settles after unlocking.
//
// Parking is two-phase so that a front end can attach a cancel hook
// without racing completion: a parked op starts *unarmed* and is skipped by
// completers until arm() is called. FIFO order is kept: an unarmed op at
// the head of a queue holds back the ops behind it.
//
// SPILLING (spill.hpp)
// The bytes not yet consumed are [base_, end()): first a memory tier
// (queue_, from base_), then, if it is not empty, the spill tier (spill_,
// from base_ + queue_.size() to end()). Rules:
//  - A write that extends the stream goes to memory if the spill tier is
//    empty and the caps allow; else to the spill tier if it is not empty
//    (order: new bytes go behind the spilled ones, consumer or not), or if
//    the stream has no consumer (or is held: nothing can drain it) and the
//    spill limit allows; else it waits (parks), as without spilling.
//  - Patches go where the bytes are; reads, read-back and pulls copy from
//    both tiers; consumption frees both.
//  - Once the consumer has read the whole spill tier it is empty again, its
//    file is closed, and writes go to memory (then wait: a stream with a
//    consumer does not start spilling).
// No syscall runs under mu_ (nor under any other core lock). The spill file
// is log-structured: a write to the tier
//   1. under mu_: takes a fresh file run (file_alloc_ only grows) and the
//      spill bytes it needs (its credit), and counts itself in file_io_;
//   2. unlocked: pwrite()s its bytes to that run, which nothing else uses;
//   3. under mu_: applies the write as a new one, now knowing its bytes are
//      in that run: the stream ranges it covers in the tier are mapped to
//      the run (the runs they had become dead).
// Until step 3 the stream is unchanged, so readers never see a half-done
// write, and a failed pwrite() leaves the stream as it was (the writer
// gets the error; ENOSPC/EDQUOT make it wait instead, like a full limit).
// A read (consumer, read-back or pull) copies the memory part under mu_,
// notes the file pieces and *pins* them (pins_, file_io_), copies them with
// pread() unlocked, and unpins. A run, once written, is never written
// again, and dead runs are punched (fallocate, in an Effects call) only
// while no read is pinned; the file is closed only when the tier is empty
// and no I/O is in flight (file_io_ == 0), and always outside mu_ (its
// last reference is dropped in an Effects call or by the thread that did
// the I/O, after unlocking). Opening the file is a syscall too: one writer
// opens it unlocked (opening_), the others park until it is there.
//
// Lock order: Volume::tree_mu_ -> Stream::mu_ -> {Budget::mu_ (memory),
// Budget::mu_ (spill), Parking::mu_}; the last three are leaves, never
// held together.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/budget.hpp"
#include "core/byte_queue.hpp"
#include "core/effects.hpp"
#include "core/parking.hpp"
#include "core/sink.hpp"
#include "core/spill.hpp"
#include "core/types.hpp"

namespace capturefs::core {

/// \brief Where a stream with a push consumer signals that it has something
/// to deliver (data, or its end). Implemented by Subscription. Called with
/// no core lock held; must not block.
class PushTarget {
 public:
  virtual ~PushTarget() = default;
  virtual void wake(std::uint64_t id) = 0;
  /// The stream now has this path (delivered in order with its data).
  /// Called with the volume's tree lock held: must only record it.
  virtual void renamed(std::uint64_t id, const std::string& path) = 0;
  /// A stream this consumer finished was renamed by its creator afterwards
  /// (rsync renames its temp file into place after closing it). Called
  /// with the volume's tree lock held: must only record it.
  virtual void renamed_after_end(std::uint64_t /*id*/, const std::string& /*path*/) {}
};

/// \brief One step of push delivery (see Stream::pull).
struct Pull {
  enum class Kind : std::uint8_t { Nothing, Data, Closed };
  Kind kind = Kind::Nothing;
  std::uint64_t offset = 0;
  std::vector<std::byte> bytes;  // Data
  StreamEnd end;                 // Closed
  bool finished = false;         // Closed, and every byte acknowledged
  bool discarded = false;        // Closed because unlinked: a consumer that
                                 // was told nothing yet need not be told
};

/// \brief What Stream::check_stall() did.
struct Stall {
  enum class Kind : std::uint8_t {
    None,      ///< nothing to report
    Spilling,  ///< the oldest write waited too long: the stream spills now
    Failed,    ///< nothing could take its bytes: it failed with ENOSPC, the stream is aborted
    Waiting,   ///< it waits on (no spill tier: --no-spill); reported once per write
    Resumed,   ///< a write reported as Waiting has been answered
  };
  Kind kind = Kind::None;
  WaitReason on = WaitReason::none;
  std::int64_t waited_ns = 0;
};

/// \brief Monotonic nanoseconds (CLOCK_MONOTONIC), for stall times.
std::int64_t mono_ns();

/// \brief What Stream::release() found.
struct Released {
  bool done = false;    ///< fully delivered: the name can go
  bool linger = false;  ///< closed empty: its end waits for end_linger()
};

class Stream : public std::enable_shared_from_this<Stream> {
 public:
  /// `spill`: where bytes that do not fit the memory caps may go (null:
  /// nowhere, writers wait).
  Stream(Budget& budget, Parking& parking, std::uint64_t max_stream, Meta meta,
         SpillStore* spill = nullptr);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  /// \brief Registers a writer; a writer arriving after the consumer saw
  /// EOF reopens the stream.
  /// Returns false, adding nothing, if a push consumer was already handed
  /// the end (the bytes would reach nobody): checked and done atomically.
  [[nodiscard]] bool add_writer();
  /// \brief Attaches a push consumer (EBUSY if the stream has a consumer).
  /// It is woken through `target` whenever there is something to pull.
  /// Returns the offset its first byte will have.
  Result<std::uint64_t> attach_push(std::uint64_t id, std::shared_ptr<PushTarget> target,
                                    std::size_t window, Effects& fx);
  /// \brief Detaches the push consumer; bytes it did not acknowledge will be
  /// delivered again to the next consumer.
  void detach_push(Effects& fx);
  /// \brief Takes the next step of push delivery: up to `max` bytes (never
  /// more than `window` unacknowledged), or the end, or nothing for now.
  /// `reuse`: a buffer from an earlier pull, to copy the bytes into without
  /// allocating (a delivery thread hands back the last Pull's bytes).
  Pull pull(std::size_t max, std::vector<std::byte> reuse = {});
  /// \brief The push consumer has processed every byte before `upto`.
  /// Returns true once the stream is finished: its end was pulled and every
  /// byte acknowledged.
  bool ack(std::uint64_t upto, Effects& fx);
  /// \brief Ends the stream for its consumer with a reason. Later writes
  /// (and parked ones) fail with `write_errno`, or are accepted and
  /// discarded if it is 0.
  void abort(std::string reason, int write_errno, Effects& fx);
  bool has_consumer() const;
  /// \brief A push consumer was handed the end: the stream is over for it,
  /// and bytes written now would reach nobody.
  bool end_handed_out() const;
  /// \brief A push consumer has something to be told: bytes, or the end.
  bool has_news() const;
  /// \brief The push consumer, if any (to tell it of a rename).
  std::shared_ptr<PushTarget> push_target() const;

  /// \brief Registers the consumer. EBUSY if another one is attached.
  /// Returns the stream offset at which this consumer starts (its file
  /// offset 0): where an earlier consumer that left early stopped.
  Result<std::uint64_t> add_reader();

  /// \brief Drops a writer or the consumer. `done` when the stream is now
  /// fully delivered (the consumer read EOF and left, no writer), so its
  /// name can go.
  ///
  /// `may_linger`: if this was the last writer and nothing was ever written,
  /// the end is not shown to a push consumer until end_linger() (the
  /// creating process may reopen the file: zip's probe, create-then-write
  /// tools). Read-through readers are not held back.
  [[nodiscard]] Released release(Role role, bool may_linger, Effects& fx);
  /// \brief The threads (as FUSE names callers) that have it open for
  /// writing: one entry per writer handle, marked once it has written (see
  /// Volume::open, self-reads).
  void note_writer(std::int32_t pid);
  void note_wrote(std::int32_t pid);
  void forget_writer(std::int32_t pid, bool wrote);
  /// `written_only`: only the handles that have written.
  std::vector<std::int32_t> writer_pids(bool written_only) const;
  /// \brief --hold applies to it (set_hold).
  bool holds() const;
  /// \brief The creating process is gone: an empty stream may end now.
  void end_linger(Effects& fx);

  /// \brief Holds the stream (`--hold`): while a writer has it open, it is
  /// an ordinary in-memory file (random writes, read-back, truncate) and
  /// consumers see nothing; it is delivered whole once the last writer
  /// leaves. Only changes a stream nothing of which was delivered yet.
  void set_hold(bool on, Effects& fx);

  /// \brief Writes at an offset (see docs/semantics.md). May park.
  Outcome<std::size_t> write(std::uint64_t off, std::span<const std::byte> data, WaitKey key,
                             WriteDone done, Effects& fx);
  /// \brief The consumer reads up to `size` bytes at stream offset `pos`.
  ///
  /// Reading at `pos` consumes (frees) everything before it; the bytes
  /// returned stay until the consumer reads past them or leaves, so a reader
  /// may seek back within its last read (bash's `read` builtin does).
  /// Before the retained bytes: EIO. The returned span is valid until the
  /// calling thread's next read. May park (never if nonblock).
  Outcome<std::span<const std::byte>> read(std::uint64_t pos, std::size_t size, bool nonblock,
                                           WaitKey key, ReadDone done, Effects& fx);

  /// \brief A writer reads back its own bytes at stream offset `pos`
  /// without consuming them: bytes already consumed give EIO, the end gives
  /// EOF (an empty span, never a wait). The span is valid until the calling
  /// thread's next read.
  Result<std::span<const std::byte>> read_back(std::uint64_t pos, std::size_t size);
  /// \brief The stream offsets of the first byte still kept (not
  /// consumed: where a peek starts) and of the end (bytes written).
  std::pair<std::uint64_t, std::uint64_t> kept() const {
    std::lock_guard lk(mu_);
    return {base_, end()};
  }

  /// \brief Phase two of parking: completers may now finish the op.
  void arm(WaitKey key, Effects& fx);
  /// \brief Ends a parked op with EINTR (deferred to arm() if unarmed).
  void cancel(WaitKey key, Effects& fx);
  /// \brief Re-tries parked writes and reads (after memory was released).
  void pump(Effects& fx);
  /// \brief Ends every parked op with `err` (shutdown).
  void fail_parked(int err, Effects& fx);
  /// \brief The stall rule ("never hang"): a write parked for `stall_ns` or
  /// longer stops waiting for a consumer that does not make room. The
  /// stream is treated as having no consumer and spills (its consumer reads
  /// the spilled bytes later, in order); if the spill tier cannot take the
  /// bytes either (limit reached, disk full, write larger than the limit),
  /// the write fails with ENOSPC and the stream is aborted with a reason
  /// its consumer sees. Without a spill tier (--no-spill) the write keeps
  /// waiting. `now_ns` is mono_ns().
  Stall check_stall(std::int64_t now_ns, std::int64_t stall_ns, Effects& fx);

  /// \brief The name is gone. Without a consumer the bytes are dropped and
  /// later writes are accepted and discarded.
  void unlinked(Effects& fx);

  /// \brief Truncation to any size not below the bytes already consumed:
  /// shrinking drops the tail, growing appends zero bytes (EFBIG past the
  /// stream limit, ENOSPC if memory is full: truncate cannot wait). Cutting
  /// into consumed bytes: EINVAL.
  Status truncate(std::uint64_t size, Effects& fx);

  /// \brief Counters for a status listing (updates the rate sample).
  void stats(StreamStats* out, timespec now);
  Attr attr(Ino ino) const;
  void set_meta(const SetAttr& sa);
  bool delivered() const;
  /// \brief The consumer has read everything to EOF and no writer is left.
  bool fully_read() const;
  /// \brief Bytes in the spill tier (for tests and status).
  std::uint64_t spilled() const;
  /// \brief Bytes written and not yet consumed (acknowledged), both tiers.
  std::uint64_t unconsumed() const;

 private:
  struct PendingWrite {
    WaitKey key;
    std::uint64_t off;
    std::vector<std::byte> data;
    WriteDone done;
    bool armed;
    bool cancelled;
    std::uint64_t in_flight = 0;  // != 0: its bytes are being written to the spill file (an id)
    std::int64_t since_ns = 0;    // when it parked (mono_ns)
  };
  // A write's bytes placed in the spill file but not yet part of the stream
  // (see SPILLING). Counted in file_io_ while `file` is set.
  struct FileWrite {
    std::shared_ptr<SpillFile> file;  // null: the bytes are only in memory
    std::uint64_t foff = 0;           // where they are
    std::uint64_t len = 0;            // the write's length
    std::uint64_t credit = 0;         // spill bytes reserved for it
    bool used = false;                // try_apply mapped (part of) the run
  };
  struct PendingRead {
    WaitKey key;
    std::uint64_t pos;
    std::size_t size;
    ReadDone done;
    bool armed;
    bool cancelled;
  };
  // Done: applied or failed (*res says). NoRoom: wait for memory or spill
  // space. NeedFile: the spill file must be opened first. ToFile: write the
  // bytes to the FileWrite's run unlocked, then apply again with it.
  enum class Apply : std::uint8_t { Done, NoRoom, NeedFile, ToFile };

  std::uint64_t mem_end() const { return base_ + queue_.size(); }
  std::uint64_t end() const { return spill_.empty() ? mem_end() : spill_.end(); }
  std::uint64_t stored() const { return queue_.size() + spill_.size(); }
  // A writer has it, or it waits for its creator to come back.
  bool writing() const { return writers_ > 0 || linger_; }
  // Held for its writers: consumers see nothing yet.
  bool held() const { return hold_ && writers_ > 0 && delivered_ == 0; }
  // Ended for a push consumer: no writer, nothing pending, all handed out.
  bool push_ended() const { return !writing() && writes_.empty() && delivered_ == end(); }
  // A write reached bytes already delivered: the stream is aborted.
  void rewrote_delivered(std::uint64_t off);
  enum class Serve : std::uint8_t { Data, Eof, Wait, Error };
  // Consumes up to pos and says what a read at pos gets; for Data, *n bytes
  // are available at pos.
  Serve prepare_read(std::uint64_t pos, std::size_t size, std::size_t* n, Effects& fx);
  // Applies a write if there is room; sets *res when Done. `fw`: in, the
  // run its bytes are already in (if fw.file is set); out, for ToFile, the
  // run to write them to. The caller ends fw with end_file_write().
  Apply try_apply(std::uint64_t off, std::span<const std::byte> data, FileWrite& fw,
                  Result<std::size_t>* res, Effects& fx);
  // Reserves n spill bytes for a write (its credit first); registers
  // `waiter` for a release if there is no room.
  bool take_spill(std::uint64_t n, FileWrite& fw, const std::shared_ptr<Stream>& waiter);
  // Ends a FileWrite: an unused run is dead, an unused credit given back.
  void end_file_write(FileWrite& fw, Effects& fx);
  // Called unlocked by the Effects call that wrote a parked write's bytes.
  void parked_write_written(std::uint64_t id, FileWrite fw,
                            const std::shared_ptr<std::vector<std::byte>>& data, int err);
  // Starts the file write of the parked write at the head of writes_.
  void start_parked_write(FileWrite fw, Effects& fx);
  // A pwrite() failed with err: the write waits (ENOSPC, EDQUOT) or fails.
  bool spill_write_failed(int err);
  // Opens the spill file in an Effects call (for parked writes).
  void request_file(Effects& fx);
  void file_opened(Result<std::shared_ptr<SpillFile>> f, Effects& fx);
  // The stream may spill a new tier now (no consumer, or held).
  // A consumer that let a write wait for the stall time counts as none
  // (stalled_, see check_stall()).
  bool may_start_spill() const {
    return spill_store_ != nullptr && (held() || stalled_ || (!reader_ && !push_));
  }
  // On what the oldest parked write waits (for status and the stall log).
  WaitReason wait_reason() const;
  bool spill_blocked() const { return spill_blocked_ && spill_store_->freed() == blocked_at_; }
  void block_spill() {
    spill_blocked_ = true;
    blocked_at_ = spill_store_->freed();
  }
  // Registers as waiting on the budgets this stream could use.
  void wait_for_room();
  // Copies [pos, pos + out.size()) into out: memory and zeros now; the file
  // pieces are added to *file, to be read unlocked (read_file()).
  void copy_now(std::uint64_t pos, std::span<std::byte> out, std::vector<SpillMap::Piece>* file) const;
  void pin();
  void unpin(Effects& fx);
  // A read of [pos, pos + out.size()) from both tiers: every read of the
  // tiers (a parked or immediate consumer read, a pull, a read-back) is
  // begin_read() under mu_, which copies the memory part (copy_now()) and
  // pins the file pieces, then, if `file` is set, finish_read(), which
  // pread()s them with mu_ unlocked and unpins them under mu_ again.
  struct TierRead {
    std::shared_ptr<SpillFile> file;      // set while pieces are pinned
    std::uint64_t pos = 0;
    std::span<std::byte> out;
    std::vector<SpillMap::Piece> pieces;  // still to read from file
  };
  // Under mu_. `scratch`: storage for the pieces (a caller's reused vector).
  TierRead begin_read(std::uint64_t pos, std::span<std::byte> out,
                      std::vector<SpillMap::Piece> scratch = {});
  // For r.file set; entered with lk (on mu_) held or not, returns with it
  // held. 0, or the pread()'s errno: the stream is aborted (read_failed()).
  int finish_read(std::unique_lock<std::mutex>& lk, TierRead& r, Effects& fx);
  // A pread() of the spill file failed: the bytes are lost, the stream is aborted.
  void read_failed(int err, Effects& fx);
  // Consumes (frees) everything before pos, in both tiers.
  void consume_to(std::uint64_t pos, Effects& fx);
  // Drops both tiers.
  void drop_all(Effects& fx);
  void release_spill(std::uint64_t n, Effects& fx);
  // Runs of file_ no longer mapped: punched once no read is pinned.
  void bury(std::vector<FileRun>& runs, Effects& fx);
  void flush_dead(Effects& fx);
  // Closes the spill file (outside the lock) once nothing needs it.
  void maybe_drop_file(Effects& fx);
  // The bytes a write has just applied, at stream offset `off`, still in
  // the writer's own buffer: valid until that write's Effects are settled.
  struct Fresh {
    std::uint64_t off = 0;
    std::span<const std::byte> data;
  };
  // Completes what can complete; the core of every state change. A parked
  // read that lies within `fresh` is answered from the writer's buffer
  // instead of a copy (one memcpy and allocation fewer per read that waits
  // for a writer: the common case of a reader keeping up).
  void progress(Effects& fx, const Fresh* fresh = nullptr);
  void release_memory(std::size_t n, Effects& fx);
  void maybe_wake(Effects& fx);
  void park_key(WaitKey key);
  void forget_key(WaitKey key);
  void discard(Effects& fx);

  Budget& budget_;
  Parking& parking_;
  const std::uint64_t max_stream_;
  SpillStore* const spill_store_;  // null: no spilling

  // Lock order: Volume::tree_mu_ -> mu_ -> {budget_'s, the spill budget's,
  // parking_'s} (see the top of this file). Never held across a syscall on
  // the spill file (pread, pwrite, open, fallocate, close).
  mutable std::mutex mu_;
  ByteQueue queue_;
  std::uint64_t base_ = 0;       // stream offset of queue_'s front
  std::uint64_t delivered_ = 0;  // bytes handed to consumers (>= base_)
  std::uint64_t reserved_ = 0;  // bytes taken from budget_ (== queue_.capacity())
  // The spill tier (see SPILLING). Its bytes are taken from the spill
  // budget: spill_.size(), plus the credits of FileWrites in flight.
  SpillMap spill_;
  std::shared_ptr<SpillFile> file_;  // the tier's file, once needed
  std::uint64_t file_alloc_ = 0;     // next unused offset of file_
  int file_io_ = 0;                  // reads and writes of file_ in flight
  int pins_ = 0;                     // of which reads
  bool opening_ = false;             // a thread opens file_
  // An open or a pwrite failed (ENOSPC, EDQUOT, EMFILE...): no spilling
  // until a stream has freed spill space since (SpillStore::freed()).
  bool spill_blocked_ = false;
  std::uint64_t blocked_at_ = 0;
  std::vector<FileRun> dead_;        // runs of file_ to punch
  FileRun punch_tail_;               // an unaligned dead end, merged with the next
  std::uint64_t next_io_id_ = 0;     // ids of parked writes in flight
  int writers_ = 0;
  bool reader_ = false;
  bool eof_seen_ = false;  // the consumer was told EOF
  bool linked_ = true;     // has a name
  bool discard_ = false;   // unlinked without consumer: drop everything
  bool hold_ = false;      // --hold: see set_hold()
  bool linger_ = false;    // closed empty; the end waits for end_linger()
  bool unlinked_end_ = false;  // the push consumer's end is an unlink
  // The consumer let a write wait for the stall time: the stream spills as
  // if it had none, until the consumer has read the spill tier.
  bool stalled_ = false;
  WaitReason noroom_ = WaitReason::none;  // why try_apply() last said NoRoom
  std::int64_t reported_since_ = 0;  // since_ns of the write check_stall() reported waiting
  std::int64_t resumed_ns_ = 0;      // that write was answered after waiting this long
  // Push consumer (exclusive with reader_).
  std::shared_ptr<PushTarget> push_;
  std::uint64_t push_id_ = 0;
  std::size_t push_window_ = 0;
  bool wake_pending_ = false;  // a wake is on its way; cleared by pull()
  bool close_sent_ = false;    // pull() handed out the end
  std::string abort_reason_;
  std::uint64_t rate_bytes_ = 0;  // end() at the last rate sample
  timespec rate_time_{};          // when it was taken
  std::uint64_t rate_ = 0;
  int abort_errno_ = 0;  // what writes get once aborted (0: discarded)
  Meta meta_;
  struct WriterPid {
    std::int32_t pid = 0;
    bool wrote = false;
  };
  std::vector<WriterPid> writer_pids_;  // one per writer handle (note_writer)
  std::deque<PendingWrite> writes_;
  std::deque<PendingRead> reads_;
};

}  // namespace capturefs::core
