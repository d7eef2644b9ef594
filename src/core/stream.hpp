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
// Lock order: Volume::tree_mu_ -> Stream::mu_ -> {Budget::mu_, Parking::mu_}
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/budget.hpp"
#include "core/byte_queue.hpp"
#include "core/sink.hpp"
#include "core/types.hpp"

namespace capturefs::core {

class Parking;

/// \brief Work to do once no lock is held: callbacks to run and streams
/// to pump because memory was released.
struct Effects {
  std::vector<std::function<void()>> calls;
  std::vector<std::weak_ptr<Stream>> woken;
  void merge_woken(std::vector<std::weak_ptr<Stream>> w);
};

/// \brief Runs the callbacks and pumps woken streams until nothing is left.
/// Call with no core lock held.
void settle(Effects&& fx);

enum class Role : std::uint8_t { Writer, Reader };

/// \brief Where a stream with a push consumer signals that it has something
/// to deliver (data, or its end). Implemented by Subscription. Called with
/// no core lock held; must not block.
class PushTarget {
 public:
  virtual ~PushTarget() = default;
  virtual void wake(std::uint64_t id) = 0;
  /// The stream now has this path (delivered in order with its data).
  virtual void renamed(std::uint64_t id, const std::string& path) = 0;
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

/// \brief What Stream::release() found.
struct Released {
  bool done = false;    ///< fully delivered: the name can go
  bool linger = false;  ///< closed empty: its end waits for end_linger()
};

class Stream : public std::enable_shared_from_this<Stream> {
 public:
  Stream(Budget& budget, Parking& parking, std::uint64_t max_stream, Meta meta);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  /// \brief Registers a writer; a writer arriving after the consumer saw
  /// EOF reopens the stream.
  void add_writer();
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
  Pull pull(std::size_t max);
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
  /// \brief The creating process is gone: an empty stream may end now.
  void end_linger(Effects& fx);

  /// \brief Holds the stream (`--hold`): while a writer has it open, it is
  /// an ordinary in-memory file (random writes, read-back, truncate) and
  /// consumers see nothing; it is delivered whole once the last writer
  /// leaves. Only changes a stream nothing of which was delivered yet.
  void set_hold(bool on, Effects& fx);

  /// \brief Writes at an offset (see README semantics). May park.
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

  /// \brief Phase two of parking: completers may now finish the op.
  void arm(WaitKey key, Effects& fx);
  /// \brief Ends a parked op with EINTR (deferred to arm() if unarmed).
  void cancel(WaitKey key, Effects& fx);
  /// \brief Re-tries parked writes and reads (after memory was released).
  void pump(Effects& fx);
  /// \brief Ends every parked op with `err` (shutdown).
  void fail_parked(int err, Effects& fx);

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

 private:
  struct PendingWrite {
    WaitKey key;
    std::uint64_t off;
    std::vector<std::byte> data;
    WriteDone done;
    bool armed;
    bool cancelled;
  };
  struct PendingRead {
    WaitKey key;
    std::uint64_t pos;
    std::size_t size;
    ReadDone done;
    bool armed;
    bool cancelled;
  };
  enum class Apply : std::uint8_t { Done, NoRoom };

  std::uint64_t end() const { return base_ + queue_.size(); }
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
  // Applies a write if memory allows; sets *res when Done.
  Apply try_apply(std::uint64_t off, std::span<const std::byte> data, Result<std::size_t>* res);
  // Completes what can complete; the core of every state change.
  void progress(Effects& fx);
  void release_memory(std::size_t n, Effects& fx);
  void maybe_wake(Effects& fx);
  void park_key(WaitKey key);
  void forget_key(WaitKey key);
  void discard(Effects& fx);

  Budget& budget_;
  Parking& parking_;
  const std::uint64_t max_stream_;

  mutable std::mutex mu_;  // see lock order at the top of this file
  ByteQueue queue_;
  std::uint64_t base_ = 0;       // stream offset of queue_'s front
  std::uint64_t delivered_ = 0;  // bytes handed to consumers (>= base_)
  std::uint64_t reserved_ = 0;  // bytes taken from budget_ (== queue_.capacity())
  int writers_ = 0;
  bool reader_ = false;
  bool eof_seen_ = false;  // the consumer was told EOF
  bool linked_ = true;     // has a name
  bool discard_ = false;   // unlinked without consumer: drop everything
  bool hold_ = false;      // --hold: see set_hold()
  bool linger_ = false;    // closed empty; the end waits for end_linger()
  bool unlinked_end_ = false;  // the push consumer's end is an unlink
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
  std::deque<PendingWrite> writes_;
  std::deque<PendingRead> reads_;
};

/// \brief Knows every parked op: its stream by key (for cancel()), and the
/// streams that hold any (for fail_parked() at shutdown).
class Parking {
 public:
  void add(WaitKey key, const std::shared_ptr<Stream>& s);
  void remove(WaitKey key, const Stream* s);
  std::shared_ptr<Stream> find(WaitKey key) const;
  std::vector<std::shared_ptr<Stream>> all() const;

 private:
  // Lock order: innermost (taken under Stream::mu_). Calls nothing.
  mutable std::mutex mu_;
  std::unordered_map<WaitKey, std::weak_ptr<Stream>> keys_;  // key != 0 only
  struct Held {
    std::weak_ptr<Stream> stream;
    std::size_t ops = 0;
  };
  std::unordered_map<const Stream*, Held> streams_;
};

}  // namespace capturefs::core
