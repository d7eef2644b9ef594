// A Sink that records everything it is told, for push-delivery tests.
// Its waits are bounded failure guards, not synchronisation by time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace capturefs::test {

using core::Sink;
using core::StreamEnd;
using core::StreamInfo;
using namespace std::chrono_literals;

// Records everything a sink is told; waits are bounded failure guards.
// Counts closes across several recorders.
struct Tally {
  std::mutex mu;
  std::condition_variable cv;
  std::size_t closed = 0;
  bool wait(std::size_t n, std::chrono::seconds limit = 10s) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, limit, [&] { return closed >= n; });
  }
};

class Recorder : public Sink {
 public:
  std::shared_ptr<Tally> tally;
  struct Seen {
    StreamInfo info;
    std::string bytes;
    std::uint64_t next = 0;  // expected next offset
    bool closed = false;
    StreamEnd end;
    bool in_order = true;
    std::vector<std::string> renames;
  };
  std::chrono::milliseconds delay{0};

  void on_open(const StreamInfo& info) override {
    std::lock_guard lk(mu_);
    Seen& s = seen_[info.id];
    s.info = info;
    s.next = info.start_offset;
    cv_.notify_all();
  }
  void on_data(std::uint64_t id, std::uint64_t off, std::span<const std::byte> b) override {
    if (delay.count() != 0) std::this_thread::sleep_for(delay);  // a deliberately slow consumer
    std::lock_guard lk(mu_);
    Seen& s = seen_[id];
    if (off != s.next) s.in_order = false;
    s.bytes += to_string(b);
    s.next = off + b.size();
    cv_.notify_all();
  }
  // Waits until any stream has received at least n bytes; returns its id.
  std::uint64_t wait_bytes(std::size_t n, std::chrono::seconds limit = 10s) {
    std::unique_lock lk(mu_);
    std::uint64_t id = 0;
    cv_.wait_for(lk, limit, [&] {
      for (const auto& [k, v] : seen_)
        if (v.bytes.size() >= n) return (id = k) != 0;
      return false;
    });
    return id;
  }
  void on_rename(std::uint64_t id, const std::string& path) override {
    std::lock_guard lk(mu_);
    seen_[id].renames.push_back(path);
  }
  void on_close(std::uint64_t id, const StreamEnd& e) override {
    std::lock_guard lk(mu_);
    seen_[id].closed = true;
    seen_[id].end = e;
    ++closed_;
    cv_.notify_all();
    if (tally) {
      std::lock_guard tl(tally->mu);
      ++tally->closed;
      tally->cv.notify_all();
    }
  }
  bool wait_closed(std::size_t n, std::chrono::seconds limit = 10s) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, limit, [&] { return closed_ >= n; });
  }
  std::map<std::uint64_t, Seen> seen() {
    std::lock_guard lk(mu_);
    return seen_;
  }
  bool wait_opened(std::size_t n, std::chrono::seconds limit = 10s) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, limit, [&] { return seen_.size() >= n; });
  }
  std::size_t opened() {
    std::lock_guard lk(mu_);
    return seen_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::uint64_t, Seen> seen_;
  std::size_t closed_ = 0;
};

}  // namespace capturefs::test
