// Helpers for the in-process library tests: a capturefs::Mount on a temp
// dir, real writer processes with known content, and a consumer that
// records (and hashes) what its callbacks are given.
//
// Every wait is bounded and ends as soon as its condition holds; a timeout
// is a failure, never a way to let time pass.
#pragma once

#include <gtest/gtest.h>

#include <condition_variable>
#include <functional>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "capturefs/capturefs.hpp"
#include "fuse.hpp"
#include "mount_fixture.hpp"
#include "proc_util.hpp"
#include "sha256.hpp"

namespace capturefs::test {

/// \brief A capturefs::Mount (the library's) on `TEMP/mnt`, serving at once.
/// Unmounted before the temp dir goes.
class LibMount {
 public:
  explicit LibMount(capturefs::Options opt = {});
  ~LibMount();
  LibMount(const LibMount&) = delete;
  LibMount& operator=(const LibMount&) = delete;

  capturefs::Mount& mount() { return *mount_; }
  const std::string& path() const { return mnt_; }
  std::string at(std::string_view rel) const { return mnt_ + "/" + std::string(rel); }
  std::string scratch(std::string_view name) const { return dir_.at(name); }
  /// Unmounts now (the Mount object stays, as after Mount::unmount()).
  void unmount() { mount_->unmount(); }

 private:
  TempDir dir_;
  std::string mnt_;
  std::unique_ptr<capturefs::Mount> mount_;
};

/// \brief One file a writer process creates: `size` bytes from a PRNG
/// seeded with `seed`, written `block` bytes per write(2).
struct FileSpec {
  std::string rel;
  std::uint64_t size = 0;
  std::uint64_t seed = 0;
  std::size_t block = 65536;
};

/// \brief What the writer reports per file.
struct Written {
  std::uint64_t size = 0;
  std::string sha256;
};

/// \brief Starts a python3 process that creates (O_CREAT|O_EXCL) and writes
/// each file under `root` in turn, creating directories as needed, and
/// prints "REL SIZE SHA256" per file. Exits 0 if every write succeeded.
Child start_writer(const std::string& root, const std::vector<FileSpec>& files);
/// \brief Parses the lines start_writer's process printed.
std::map<std::string, Written> parse_written(const std::string& out);

/// \brief Starts a python3 process that writes `size` PRNG bytes to `path`
/// in `block`-sized writes until a write fails. It prints "ERROR <ENAME>
/// <bytes written before>" and exits 0, or "DONE <size> <sha256>" and exits 3.
Child start_writer_until_error(const std::string& path, std::uint64_t size, std::size_t block,
                               std::uint64_t seed = 1);

/// \brief Records what a consumer is told, per stream, hashing the bytes as
/// they come and checking that each chunk starts where the last one ended.
class Collector {
 public:
  struct Seen {
    std::uint64_t id = 0;
    std::string path;
    std::uint64_t start_offset = 0;
    pid_t writer_pid = 0;
    std::uint64_t next = 0;  // offset the next chunk must have
    std::uint64_t bytes = 0;
    bool in_order = true;
    bool closed = false;
    capturefs::StreamClose end;
    std::string sha256;      // set at close
    std::string data;        // only if keep_data
    // Touched only by the stream's own callbacks, outside the lock (a copy
    // of Seen shares it and must not use it).
    std::shared_ptr<Sha256> hash = std::make_shared<Sha256>();
  };

  /// Keep every byte too (small streams only).
  bool keep_data = false;
  /// Called at the start of each on_data (e.g. a deliberate slow-down).
  std::function<void(const capturefs::Chunk&)> before_data;

  capturefs::Callbacks callbacks();

  /// Waits until `n` streams have been closed; false on timeout.
  bool wait_closed(std::size_t n, Millis timeout);
  /// Waits until some stream whose path is `path` has received >= n bytes.
  bool wait_bytes(const std::string& path, std::uint64_t n, Millis timeout);
  /// Waits until pred(streams by id) holds; rechecked on every callback,
  /// under the collector's lock (pred must not call the collector).
  bool wait(const std::function<bool(const std::map<std::uint64_t, Seen>&)>& pred, Millis timeout);

  /// Everything seen, by path (a copy without the hash state).
  std::map<std::string, Seen> by_path() const;
  std::set<std::string> paths() const;
  std::size_t closed() const;
  std::size_t opened() const;
  /// Bytes received so far by the stream at `path` (0 if unknown).
  std::uint64_t bytes_of(const std::string& path) const;
  bool is_closed(const std::string& path) const;
  /// Problems seen (a chunk out of order, an unknown id, ...).
  std::vector<std::string> problems() const;

 private:
  Seen* find_locked(std::uint64_t id);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::uint64_t, Seen> seen_;
  std::size_t closed_ = 0;
  std::vector<std::string> problems_;
};

/// \brief Runs `cat path` and returns what it read (failure recorded if cat fails).
std::string cat_file(const std::string& path, Millis timeout = 30s);

}  // namespace capturefs::test
