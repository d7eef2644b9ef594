// Push consumers: a Sink takes whole streams and is handed their bytes.
//
// The read-through reader pulls bytes with read(2). Every other consumer
// (a socket client, an in-process callback, a command per file) is pushed
// to through this interface by a Subscription (delivery.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace capturefs::core {

class Subscription;

/// \brief Which paths (relative to the mount) a subscription takes
/// (delivery.hpp; here so that volume.hpp need not include it).
using PathFilter = std::function<bool(std::string_view path)>;

/// \brief How a Subscription (delivery.hpp) delivers.
struct SubscriptionOptions {
  unsigned threads = 2;                ///< delivery threads
  std::size_t chunk = 256 * 1024;      ///< largest on_data call
  std::size_t window = 4 * 1024 * 1024;  ///< unacknowledged bytes per stream
  bool auto_ack = true;  ///< acknowledge when on_data returns; else call ack()
  std::size_t max_active = 0;  ///< streams held at once (0: no limit); more wait their turn
};

/// \brief What a consumer learns when a stream is handed to it.
struct StreamInfo {
  std::uint64_t id = 0;            ///< unique for the life of the mount
  std::string path;                ///< relative to the mount, no leading '/'
  std::int32_t writer_pid = 0;     ///< the process that created it
  std::uint32_t writer_uid = 0;
  timespec created{};              ///< when it was created
  std::uint64_t start_offset = 0;  ///< first byte this consumer will get (> 0
                                   ///< when an earlier consumer went away)
};

/// \brief How a stream ended for its consumer.
struct StreamEnd {
  std::uint64_t total = 0;  ///< bytes written in all
  bool complete = true;     ///< false: aborted, see reason
  std::string reason;
};

/// \brief A consumer of whole streams.
///
/// Threading: calls for one stream come in order (open, data..., close) and
/// never overlap; calls for different streams may run concurrently on the
/// subscription's delivery threads. No core lock is held during a call, and
/// a call may block (a slow consumer slows that stream's writers, nothing
/// else). FUSE worker threads never call a Sink.
class Sink {
 public:
  virtual ~Sink() = default;
  /// Called once, before any stream is handed over, with the subscription
  /// (for Subscription::ack). Keep a weak reference only.
  virtual void on_subscribed(const std::shared_ptr<Subscription>& /*sub*/) {}
  virtual void on_open(const StreamInfo& info) = 0;
  /// Bytes at stream offset `offset`. They count against the memory limits
  /// until acknowledged (automatically on return, unless the subscription
  /// was made with manual acknowledgement).
  virtual void on_data(std::uint64_t id, std::uint64_t offset, std::span<const std::byte> bytes) = 0;
  /// The stream's path changed. May also come after on_close: the process
  /// that created the stream renamed it after its end was delivered (rsync
  /// renames its temp file into place after closing it).
  virtual void on_rename(std::uint64_t /*id*/, const std::string& /*path*/) {}
  virtual void on_close(std::uint64_t id, const StreamEnd& end) = 0;
};

/// \brief Sees stream events without consuming anything (`capturefs
/// watch`). Called after the change, with no core lock held, from the thread
/// that made it (a FUSE worker or a delivery thread): must not block.
class Observer {
 public:
  virtual ~Observer() = default;
  virtual void created(const StreamInfo& info) = 0;
  virtual void renamed(std::uint64_t id, const std::string& path) = 0;
  /// The stream is gone: delivered (complete), or unlinked / aborted.
  virtual void ended(std::uint64_t id, const StreamEnd& end) = 0;
};

/// \brief On what a stream's writer waits (StreamStats::wait).
enum class WaitReason : std::uint8_t {
  none,         ///< no write is waiting
  consumer,     ///< for its consumer to take bytes (memory caps reached)
  memory,       ///< for memory, with nowhere to spill (--no-spill, or a write larger than the spill limit)
  spill_limit,  ///< the spill limit is reached, or the spill disk is full
};

/// \brief One live stream, for `capturefs status`.
struct StreamStats {
  StreamInfo info;
  std::uint64_t written = 0;    ///< bytes written so far
  std::uint64_t delivered = 0;  ///< bytes handed to consumers
  std::uint64_t rate = 0;       ///< bytes/s written since the previous snapshot (>= 1 s ago)
  std::uint64_t spilled = 0;    ///< of the bytes not yet consumed, those in the spill file
  int writers = 0;
  bool consumer = false;        ///< a reader or a push consumer has it
  WaitReason wait = WaitReason::none;  ///< on what its oldest parked write waits
  std::int64_t waited_ns = 0;   ///< for how long (0 if none waits)
};

}  // namespace capturefs::core
