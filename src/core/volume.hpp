// The capture directory as a whole: a tree of directories and streams,
// the memory budget, and the registry of parked operations.
//
// Volume is what a front end talks to. It knows nothing of FUSE: requests
// arrive as plain calls with inode numbers and flags, and answers leave as
// Result values or, for operations that must wait, through callbacks.
//
// CONCURRENCY MODEL
// tree_mu_ guards the namespace: nodes_, every directory's children, names
// and lookup counts, and directory metadata. Stream state is guarded by each
// stream's own mutex, so data flowing through one stream never contends with
// lookups or with other streams. A stream is only ever locked inside
// tree_mu_, never the other way round.
//
// Lock order: Volume::tree_mu_ -> Stream::mu_ -> {Budget::mu_ (memory),
// Budget::mu_ (spill), Parking::mu_}. No syscall on a spill file runs under
// any of them (stream.hpp, SPILLING).
//
// LOCK GRAPH (every mutex in src/; A -> B: B may be taken while A is held;
// no other nesting exists; each mutex also states this where it is declared)
//
//   core (no core lock is held while a FUSE reply is sent, a Sink or
//   Observer is called, or a parked op completes: Effects, effects.hpp)
//     Volume::tree_mu_ -> Stream::mu_
//     Volume::tree_mu_ -> Subscription::mu_          (adopt, renames)
//     Stream::mu_ -> Budget::mu_ (memory)
//     Stream::mu_ -> Budget::mu_ (spill)
//     Stream::mu_ -> Parking::mu_
//       the last three are leaves, never held together
//     PidfdExitWatch::mu_ (exit_watch.cpp)            leaf
//   fuse (calls the Volume with none of its locks held)
//     Adapter::handles_mu_                            leaf
//     Notifier::mu_ (session.cpp)                     leaf
//   lib
//     Trimmer::mu_, Mount::Impl::mu (mount.cpp)       leaves
//   server (none taken under a core lock: sinks and observers are called
//   unlocked; see src/server/conn.hpp)
//     Conn::wmu_ -> ConsumerSink::mu_
//     ConsumerSink::mu_ -> Subscription::mu_, then Stream::mu_, one at a
//       time (Subscription::due_ids, late_renames_pending)
//     Conn::kmu_, ObserverQueue::mu_, Server::Impl::mu leaves
//   cli (--exec)
//     ExecRunner::stop_mu_ -> ExecRunner::mu_ -> ExecHistory::mu_
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/budget.hpp"
#include "core/effects.hpp"
#include "core/parking.hpp"
#include "core/sink.hpp"
#include "core/types.hpp"

namespace capturefs::core {

// Forward declarations keep this header light: its users include what they
// use (stream.hpp, delivery.hpp, exit_watch.hpp, spill.hpp).
class ExitWatch;
class PushTarget;
class SpillStore;
class Stream;
class Subscription;

/// \brief An open file: which stream, and in which role. Owned by the front
/// end from open() to release().
struct Handle {
  Ino ino = 0;
  Role role = Role::Writer;
  bool nonblock = false;
  std::uint64_t shift = 0;  ///< consumers: stream offset of file offset 0
  /// A read-only open of a stream another consumer has: fstat, fchmod and
  /// close work, read() gets EBUSY (rsync opens its temp file so).
  bool passive = false;
  std::int32_t creator_pid = 0;  ///< the process that created the stream
  std::int32_t opener_pid = 0;   ///< the thread that opened it (writers)
  /// A read-only open by a thread that writes the stream itself (see
  /// Volume::open): its reads read back without consuming
  /// (Stream::read_back), as on a regular file; it is not the consumer (no
  /// self-deadlock: ffmpeg's faststart rereads its own output).
  bool self_read = false;
  /// A writer of a held stream: the front end tells the volume when its
  /// process was killed while it had it open (killed_by_signal at FLUSH),
  /// so that the file is delivered as incomplete, not as complete.
  bool watch_exit = false;
  /// Writers: has written (Stream::note_wrote). Atomic: one handle may
  /// write from several threads at once.
  std::atomic<bool> wrote{false};
  std::shared_ptr<Stream> stream;
};

/// \brief Delivery rules beyond the memory limits.
struct Policy {
  /// Paths held while written (`--hold`, see Stream::set_hold). Empty: none.
  PathFilter hold;
  /// Watches creators so that a stream closed empty can be reopened by the
  /// same process as the same stream (see Stream::release). Null: a stream
  /// closed empty ends at once.
  std::shared_ptr<ExitWatch> exits;
  /// Where bytes that do not fit the memory limits go while nobody reads
  /// them (stream.hpp, SPILLING). Null: nowhere, writers wait.
  std::shared_ptr<SpillStore> spill;
  /// The stall time (Stream::check_stall): a write parked this long stops
  /// waiting for its consumer. 0: writes wait as long as it takes.
  std::int64_t stall_ns = 2'000'000'000;
};

struct StatFs {
  std::uint64_t capacity = 0;  ///< bytes
  std::uint64_t used = 0;      ///< bytes
  std::uint64_t files = 0;     ///< nodes
};

class Volume {
 public:
  explicit Volume(Limits limits, Policy policy = {});
  ~Volume();
  Volume(const Volume&) = delete;
  Volume& operator=(const Volume&) = delete;

  const Limits& limits() const { return limits_; }

  // ---- Names. Calls that return an Attr for a node count one lookup
  // reference (balanced by forget()), as FUSE expects.
  /// \brief `pid`: the asking process. A delivered stream's name kept for
  /// the process that created it (see retire()) is found by that process
  /// only.
  Result<Attr> lookup(Ino parent, std::string_view name, std::int32_t pid = 0);
  void forget(Ino ino, std::uint64_t n);
  Result<Attr> getattr(Ino ino);
  Result<Attr> setattr(Ino ino, const SetAttr& sa);
  Result<Attr> mkdir(Ino parent, std::string_view name, std::uint32_t mode, const Caller& who);
  /// Creates an empty stream with no writer (mknod S_IFREG).
  Result<Attr> mknod(Ino parent, std::string_view name, std::uint32_t mode, const Caller& who);
  /// \brief A symbolic link in the virtual tree (never delivered).
  Result<Attr> symlink(Ino parent, std::string_view name, std::string_view target,
                       const Caller& who);
  Result<std::string> readlink(Ino ino);
  Status unlink(Ino parent, std::string_view name);
  Status rmdir(Ino parent, std::string_view name);
  Status rename(Ino parent, std::string_view name, Ino newparent, std::string_view newname,
                unsigned flags);
  /// \brief The entries of a directory, "." and ".." excluded.
  Result<std::vector<DirEntry>> list(Ino dir);
  StatFs statfs();

  // ---- Streams.
  struct Created {
    Attr attr;
    std::unique_ptr<Handle> handle;
  };
  /// \brief open(O_CREAT): a new stream, or the existing one (EEXIST with
  /// O_EXCL). `flags` are open(2) flags.
  Result<Created> create(Ino parent, std::string_view name, std::uint32_t mode, int flags,
                         const Caller& who);
  /// \brief open() of an existing stream: O_RDONLY attaches the consumer
  /// (or, if it has one, gives a passive handle whose reads get EBUSY),
  /// anything else adds a writer (ESTALE if the stream was delivered: the
  /// name is gone and a new lookup makes a new stream).
  /// `who`: the caller; a read-only open by a thread that opened the
  /// stream for writing and wrote to it through that handle, still open
  /// (for a held stream: opened it for writing), is a self-read
  /// (Handle::self_read).
  Result<std::unique_ptr<Handle>> open(Ino ino, int flags, const Caller& who = {});
  /// \brief A close(2) of the handle (one of possibly several). A consumer
  /// that has read to EOF takes the name with it now, so that the name is
  /// gone when close() returns.
  void flush(Handle& h);
  /// \brief Ends the handle's stream as aborted (consumers are told
  /// `reason`; later writes fail with EIO).
  void abort(Handle& h, std::string reason);
  /// \brief Ends a handle. A consumer that read EOF takes the name with it.
  void release(std::unique_ptr<Handle> h);

  /// \brief See Stream::write. `done` is called only if Parked is returned.
  Outcome<std::size_t> write(Handle& h, std::uint64_t off, std::span<const std::byte> data,
                             WaitKey key, WriteDone done);
  /// \brief See Stream::read; `off` is the consumer's file offset. On a
  /// writer's handle: Stream::read_back (never parks).
  Outcome<std::span<const std::byte>> read(Handle& h, std::uint64_t off, std::size_t size,
                                           WaitKey key, ReadDone done);
  /// \brief Phase two of parking (see stream.hpp).
  void arm(WaitKey key);
  /// \brief Cancels a parked op (EINTR). Unknown keys are ignored.
  void cancel(WaitKey key);
  /// \brief Ends every parked operation with `err`. Used at unmount.
  void fail_parked(int err);

  // ---- Push consumers (delivery.hpp).
  /// \brief Hands every stream whose path passes `filter`, existing and
  /// future, that has no consumer yet, to `sink`. Several subscriptions
  /// whose filters overlap share the streams (round-robin). Call close() on
  /// the result to stop.
  std::shared_ptr<Subscription> subscribe(PathFilter filter, std::shared_ptr<Sink> sink,
                                          SubscriptionOptions opt = {});
  /// \brief Registers an observer of stream events (until unobserve()).
  void observe(std::shared_ptr<Observer> o);
  void unobserve(const Observer* o);
  /// \brief Applies the exits of creating processes that are gone by now
  /// (empty files end, delivered names go) before the caller goes on.
  void sync_exits();
  /// \brief Applies the stall rule to every stream with a parked write
  /// (Stream::check_stall) and logs, with the path, each write that waited
  /// longer than the stall time, spilled, failed, or resumed. Called every
  /// tick by the front end's housekeeping thread (and by tests); `now_ns`
  /// is mono_ns(). Takes no lock the caller may hold.
  void check_stalls(std::int64_t now_ns);
  // ---- Unmount ("deliveries finish at unmount", core/drain.cpp). Called
  // once the front end is gone: no process can open a stream any more.
  /// What observers (`capturefs watch`, `capturefs umount`) are told of a
  /// stream discard_unread() discarded.
  static constexpr const char* kDiscardedReason = "discarded at unmount: nobody read it";
  struct Leftover {
    std::string path;
    std::uint64_t bytes = 0;  ///< not yet delivered
  };
  /// \brief Discards the streams nobody will read: no consumer has them and
  /// no subscription takes their path. Returns them, oldest first.
  std::vector<Leftover> discard_unread();
  /// \brief The streams push consumers still have to deliver (being
  /// delivered, or waiting their turn), with the bytes left; oldest first.
  std::vector<Leftover> undelivered();
  /// \brief Gives up on every stream not yet delivered: one a consumer has
  /// is ended aborted with `reason`, one waiting its turn goes unannounced.
  /// Returns them, oldest first.
  std::vector<Leftover> cut_undelivered(const std::string& reason);
  /// \brief Every live stream that has a name, oldest first.
  std::vector<StreamStats> snapshot();
  /// \brief The first bytes of a stream, not consumed (`capturefs peek`).
  struct Peek {
    std::uint64_t id = 0;
    std::uint64_t offset = 0;   ///< stream offset of bytes[0]: the first byte kept
    std::uint64_t written = 0;  ///< bytes written so far
    std::vector<std::byte> bytes;
  };
  /// \brief Up to `size` bytes of the live stream at `path` (relative to
  /// the mount, no leading '/'), from its first byte not yet consumed,
  /// without consuming them (Stream::read_back). ENOENT if no live stream
  /// has that path (a directory, a delivered name); EIO if its spill file
  /// cannot be read. volume_peek.cpp.
  Result<Peek> peek(std::string_view path, std::size_t size);

  /// \brief Called when the volume removes a name on its own (a delivered
  /// stream's name going), not for unlink, rmdir or rename: the kernel may
  /// still cache that name, and the node stays until it forgets it. Called
  /// from any thread with no lock held; must not block (queue the work).
  /// Null: nobody is told.
  using NameGone = std::function<void(Ino parent, Ino ino, const std::string& name)>;
  void on_name_gone(NameGone f);

  /// \brief Path of a node relative to the mount ("" for the root).
  std::string path_of(Ino ino);

  // Called by Subscription.
  void unsubscribe(const Subscription* sub);
  void push_finished(std::uint64_t id, const std::shared_ptr<Stream>& s);
  void push_unname(std::uint64_t id, const std::shared_ptr<Stream>& s);
  void push_lost(std::uint64_t id, const std::shared_ptr<Stream>& s);

  std::size_t memory_used() const { return budget_.used(); }
  std::size_t memory_peak() const { return budget_.peak(); }
  /// Bytes in spill files now (streams' spill tiers and writes in flight to
  /// them) and at most so far; 0 without spilling.
  std::size_t spill_used() const;
  std::size_t spill_peak() const;

 private:
  struct Node {
    Ino ino = 0;
    Kind kind = Kind::Directory;
    Ino parent = 0;
    std::string name;
    bool linked = true;
    std::uint64_t nlookup = 0;
    Meta meta;                                       // directories, symlinks
    std::string target;                              // symlinks only
    std::map<std::string, Ino, std::less<>> children;  // directories only
    std::uint32_t subdirs = 0;                       // directories only
    std::shared_ptr<Stream> stream;                  // streams only
    std::int32_t creator_pid = 0;                    // streams only
    std::uint32_t creator_uid = 0;
    bool retired = false;  // fully delivered; the name waits for its creator to exit
    std::weak_ptr<PushTarget> told;  // retired: the push consumer that finished it
    timespec created{};
  };
  using NodePtr = std::shared_ptr<Node>;

  NodePtr find(Ino ino) const;
  Result<NodePtr> dir(Ino ino) const;
  Result<NodePtr> child(const Node& dir, std::string_view name) const;
  Attr attr_of(const Node& n) const;
  NodePtr add_node(Node& parent, std::string_view name, Kind kind, std::uint32_t mode,
                   const Caller& who);
  // Removes n's name; `delivered`: because its consumer has it all (else
  // it was unlinked).
  // `reason`: what observers are told of a name removed undelivered.
  void detach(Node& parent, Node& n, Effects& fx, bool delivered = false,
              const char* reason = "unlinked");
  // detach() of a delivered name, by the volume's own decision: the front
  // end is told (on_name_gone) so the kernel can drop its cached entry.
  void let_go(Node& parent, Node& n, Effects& fx);
  void maybe_drop(const Node& n);
  // The stream at n is fully delivered: its name goes, now or once its
  // creating process has exited (see retire() in volume.cpp).
  void retire(Node& parent, Node& n, Effects& fx);
  // Every name kept for process `pid` goes (it has exited).
  void creator_exited(std::int32_t pid);
  // Lets go of kept names beyond kMaxRetired, oldest first. Tree lock held.
  void trim_retired(Effects& fx);
  // Stream `id` (still s) was delivered to its push consumer: retire() it,
  // remembering that consumer for renames after the end. Tree lock held.
  void retire_pushed(std::uint64_t id, const std::shared_ptr<Stream>& s, Effects& fx);
  // A stream a new writer must not join (its end went out): true after
  // detaching it.
  bool drop_if_ended(Node& n, Effects& fx);
  static Status check_name(std::string_view name);
  std::string path_locked(const Node& n) const;
  // Offers an unconsumed stream to the subscriptions (round-robin).
  Result<Attr> make(Ino parent, std::string_view name, Kind kind, std::uint32_t mode,
                    const Caller& who);
  void assign(Node& n, Effects& fx);
  void offer_waiting(Effects& fx);
  // Opens stream n for open(2) `flags` (see open()).
  Result<std::unique_ptr<Handle>> attach(Node& n, int flags, Effects& fx, const Caller& who = {},
                                         bool self_read = false);
  // Applies --hold to a stream after it got its path.
  void apply_hold(const Node& n, Effects& fx);
  StreamInfo info_of(const Node& n) const;
  // Queues observer calls, run once the tree lock is released.
  template <class F>
  void notify(Effects& fx, F f) {
    for (const auto& o : observers_) fx.calls.emplace_back([o, f] { f(*o); });
  }

  const Limits limits_;
  const Policy policy_;
  NameGone name_gone_;  // guarded by tree_mu_ (copied into the effects)
  const std::int32_t self_pid_;  // our own writers never linger
  Budget budget_;
  Parking parking_;

  // Lock order: taken first, with no other lock held; tree_mu_ ->
  // Stream::mu_ -> {Budget::mu_ (memory, spill), Parking::mu_}, and
  // tree_mu_ -> Subscription::mu_ (the graph: the top of this file).
  mutable std::mutex tree_mu_;
  std::unordered_map<Ino, NodePtr> nodes_;
  Ino next_ino_ = kRootIno + 1;
  std::vector<std::shared_ptr<Subscription>> subs_;  // guarded by tree_mu_
  std::size_t next_sub_ = 0;                          // round-robin cursor
  std::vector<std::shared_ptr<Observer>> observers_;  // guarded by tree_mu_
  // Delivered names kept for their creators (retire()), guarded by
  // tree_mu_: by creator (one exit watch per process, however many files
  // it wrote), and oldest first for the bound. Entries whose name went
  // meanwhile are skipped (and pruned).
 public:
  /// At most this many delivered names are kept for their creators; beyond
  /// it the oldest goes at once (a long-lived process writing millions of
  /// files must not keep them all).
  static constexpr std::size_t kMaxRetired = 4096;

 private:
  std::unordered_map<std::int32_t, std::vector<Ino>> retired_by_pid_;
  std::deque<Ino> retired_order_;

  // check_stalls(): the path of a stream, for the log ("" if it has none).
  std::string path_of_stream(const Stream* s);
  // Streams whose writer was logged waiting, to log its resumption.
  // Lock order: a leaf; taken with no other lock held.
  std::mutex stall_mu_;
  std::vector<std::weak_ptr<Stream>> stall_reported_;  // guarded by stall_mu_
};

}  // namespace capturefs::core
