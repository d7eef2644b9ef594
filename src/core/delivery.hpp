// Push delivery: a Subscription hands matching streams to a Sink.
//
// CONCURRENCY MODEL
// A subscription owns a few delivery threads. A stream that has something
// to deliver wakes the subscription (PushTarget::wake, cheap, never
// blocking); a delivery thread then pulls chunks from the stream and calls
// the sink with no lock held. One stream is served by at most one thread at
// a time, so its calls are ordered; a slow sink call therefore delays only
// that stream (and, through the memory limits, its writers), while the other
// threads keep the other streams flowing. FUSE worker threads never call a
// sink.
//
// Lock order: Volume::tree_mu_ -> Subscription::mu_ (adopt under the tree
// lock); mu_ is otherwise a leaf: never held while calling a stream, the
// volume or the sink. Outside the core it may be taken under a sink's own
// lock (the server's ConsumerSink::mu_, via due_ids()), never under
// Stream::mu_ (the whole graph: volume.hpp).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/sink.hpp"
#include "core/stream.hpp"

namespace capturefs::core {

class Volume;

/// \brief A filter from shell globs: a path matches if any glob matches it
/// (fnmatch(3) without FNM_PATHNAME: `*` also matches `/`). No globs: all.
PathFilter glob_filter(std::vector<std::string> globs);

class Subscription : public PushTarget, public std::enable_shared_from_this<Subscription> {
 public:
  Subscription(Volume& vol, PathFilter filter, std::shared_ptr<Sink> sink, SubscriptionOptions opt);
  ~Subscription() override;
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;

  /// \brief Acknowledges the bytes of stream `id` before `upto` (manual
  /// acknowledgement). Any thread, including from inside a sink call.
  void ack(std::uint64_t id, std::uint64_t upto);
  /// \brief Ends stream `id` for this consumer (e.g. the consumer failed):
  /// the sink gets on_close with the reason, and the stream's writers get
  /// `write_errno` from then on (0: their bytes are discarded).
  void abort(std::uint64_t id, std::string reason, int write_errno);
  /// \brief Stops delivery and unsubscribes. Streams not finished go to the
  /// next matching consumer, from their first unacknowledged byte. Must not
  /// be called from a sink call. Idempotent.
  void close();

  // ---- Used by Volume.
  bool matches(std::string_view path) const { return filter_(path); }
  std::size_t window() const { return opt_.window; }
  bool has_room();
  void start();
  void adopt(const std::shared_ptr<Stream>& s, const StreamInfo& info);
  void wake(std::uint64_t id) override;
  void renamed(std::uint64_t id, const std::string& path) override;
  void renamed_after_end(std::uint64_t id, const std::string& path) override;
  /// Renames of opened streams not yet handed to the sink, after the end
  /// or not (for barriers).
  std::size_t late_renames_pending();
  /// Streams handed to this subscription and not finished.
  std::vector<std::uint64_t> active_ids();
  /// Those of them the sink has heard of or is about to (on_open is sent
  /// only once a stream has bytes or has ended, or announce_all() asked).
  /// Takes stream locks after mu_ is released.
  std::vector<std::uint64_t> due_ids();
  /// Has on_open sent now for every stream held, also those with no byte
  /// yet (a barrier: a client that saw its tool exit must learn of the
  /// empty file the tool left, even before the kernel's RELEASE is in).
  void announce_all();

 private:
  struct Active {
    std::shared_ptr<Stream> stream;
    StreamInfo info;
    bool opened = false;
    bool busy = false;    // a thread is delivering it
    bool queued = false;  // in ready_
    bool again = false;   // woken while busy
    bool announce = false;  // on_open now, bytes or not (announce_all)
    std::vector<std::string> renames;  // to tell the sink, in order
  };
  void run();
  void deliver(std::uint64_t id, const std::shared_ptr<Stream>& s, bool opened, bool announce,
               const StreamInfo& info, bool* more);
  std::vector<std::string> take_renames(std::uint64_t id);
  // Marks the stream opened and returns `info` with its current path.
  StreamInfo open_now(std::uint64_t id, StreamInfo info);
  void finish(std::uint64_t id, const std::shared_ptr<Stream>& s);
  std::shared_ptr<Stream> stream_of(std::uint64_t id);

  Volume& vol_;
  const PathFilter filter_;
  const std::shared_ptr<Sink> sink_;
  const SubscriptionOptions opt_;

  std::mutex mu_;  // see lock order at the top of this file
  std::condition_variable cv_;
  std::unordered_map<std::uint64_t, Active> active_;
  std::deque<std::uint64_t> ready_;
  // Renames of finished streams, told to the sink by a delivery thread.
  std::deque<std::pair<std::uint64_t, std::string>> late_;
  std::size_t late_busy_ = 0;  // being told now
  bool stopping_ = false;
  bool closed_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace capturefs::core
