// Push delivery through Subscription: ordering, sharing, hand-over after a
// consumer is lost, late subscribers, backpressure and aborts.
#include <chrono>
#include <condition_variable>
#include <map>
#include <thread>

#include <future>

#include "recorder.hpp"
#include "support.hpp"

namespace capturefs::test {
namespace {

using core::PathFilter;
using core::Sink;
using core::StreamEnd;
using core::StreamInfo;
using core::SubscriptionOptions;
using namespace std::chrono_literals;

TEST(Delivery, MatchingStreamsArePushedInOrderAndTheirNamesGo) {
  Volume v(Limits{});
  auto rec = std::make_shared<Recorder>();
  auto sub = v.subscribe(core::glob_filter({"*.log"}), rec);
  auto w = writer(v, "a.log");
  auto other = writer(v, "b.txt");
  ASSERT_EQ(write_now(v, *w, 0, "hello ").value(), 6u);
  ASSERT_EQ(write_now(v, *w, 6, "world").value(), 5u);
  v.release(std::move(w));
  ASSERT_TRUE(rec->wait_closed(1));
  auto seen = rec->seen();
  ASSERT_EQ(seen.size(), 1u);
  const auto& s = seen.begin()->second;
  EXPECT_EQ(s.info.path, "a.log");
  EXPECT_EQ(s.bytes, "hello world");
  EXPECT_TRUE(s.in_order);
  EXPECT_TRUE(s.end.complete);
  EXPECT_EQ(s.end.total, 11u);
  EXPECT_FALSE(v.lookup(kRootIno, "a.log").ok());  // delivered: the name is gone
  EXPECT_TRUE(v.lookup(kRootIno, "b.txt").ok());   // not ours: still there
  v.release(std::move(other));
  sub->close();
  EXPECT_EQ(v.memory_used(), 0u);
}

TEST(Delivery, OverlappingSubscriptionsShareTheWork) {
  Volume v(Limits{});
  auto tally = std::make_shared<Tally>();
  auto r1 = std::make_shared<Recorder>();
  auto r2 = std::make_shared<Recorder>();
  r1->tally = r2->tally = tally;
  auto s1 = v.subscribe(core::glob_filter({"*"}), r1);
  auto s2 = v.subscribe(core::glob_filter({"job*"}), r2);
  constexpr int kN = 20;
  for (int i = 0; i < kN; ++i) {
    auto w = writer(v, "job" + std::to_string(i));
    ASSERT_TRUE(write_now(v, *w, 0, "x" + std::to_string(i)).ok());
    v.release(std::move(w));
  }
  ASSERT_TRUE(tally->wait(kN));
  EXPECT_EQ(r1->opened() + r2->opened(), static_cast<std::size_t>(kN));  // each stream once
  EXPECT_GT(r1->opened(), 0u);
  EXPECT_GT(r2->opened(), 0u);
  s1->close();
  s2->close();
}

TEST(Delivery, StreamsThatWaitedAreDeliveredToALateSubscriber) {
  Volume v(Limits{});
  for (int i = 0; i < 3; ++i) {
    auto w = writer(v, "early" + std::to_string(i));
    ASSERT_TRUE(write_now(v, *w, 0, std::string(100000, char('a' + i))).ok());
    v.release(std::move(w));
  }
  auto rec = std::make_shared<Recorder>();
  auto sub = v.subscribe(core::glob_filter({}), rec);
  ASSERT_TRUE(rec->wait_closed(3));
  for (const auto& [id, s] : rec->seen()) {
    EXPECT_EQ(s.bytes.size(), 100000u) << s.info.path;
    EXPECT_TRUE(s.end.complete);
  }
  sub->close();
  EXPECT_TRUE(v.list(kRootIno)->empty());
}

// A consumer that acknowledged only part of a stream goes away: the next one
// gets everything from the first unacknowledged byte, with that offset.
TEST(Delivery, UnacknowledgedBytesGoToTheNextConsumer) {
  Volume v(Limits{});
  auto first = std::make_shared<Recorder>();
  SubscriptionOptions manual;
  manual.auto_ack = false;
  manual.chunk = 1000;
  auto s1 = v.subscribe(core::glob_filter({}), first, manual);
  auto w = writer(v, "s");
  std::string all;
  for (int i = 0; i < 10; ++i) all += std::string(1000, char('0' + i));
  ASSERT_TRUE(write_now(v, *w, 0, all).ok());
  // Once the first consumer has seen 3000 bytes, it acknowledges 2500.
  const std::uint64_t id = ino_of(v, "s");
  ASSERT_EQ(first->wait_bytes(3000), id);
  s1->ack(id, 2500);
  s1->close();  // lost before finishing
  auto second = std::make_shared<Recorder>();
  auto s2 = v.subscribe(core::glob_filter({}), second);
  v.release(std::move(w));
  ASSERT_TRUE(second->wait_closed(1));
  const auto s = second->seen()[id];
  EXPECT_EQ(s.info.start_offset, 2500u);
  EXPECT_EQ(s.bytes, all.substr(2500));
  EXPECT_TRUE(s.in_order);
  EXPECT_EQ(s.end.total, all.size());
  s2->close();
  EXPECT_EQ(v.memory_used(), 0u);
}

// A slow consumer slows its writer through the memory limits; nothing is
// lost, memory stays under the cap, and another stream keeps flowing.
TEST(Delivery, SlowConsumerAppliesBackpressureWithoutStallingOthers) {
  // The slow stream may take at most half the budget, leaving room for the
  // others (with max_stream == max_memory it could hold it all).
  Volume v(Limits{4 * MiB, 2 * MiB});
  auto slow = std::make_shared<Recorder>();
  slow->delay = 1ms;
  SubscriptionOptions opt;
  opt.chunk = 64 * KiB;
  auto s_slow = v.subscribe(core::glob_filter({"slow*"}), slow, opt);
  auto fast = std::make_shared<Recorder>();
  auto s_fast = v.subscribe(core::glob_filter({"fast*"}), fast);

  // The slow writer pushes 8 MiB (4x the cap) through blocking writes.
  std::thread slow_writer([&] {
    auto w = writer(v, "slow");
    std::uint64_t off = 0;
    while (off < 8 * MiB) {
      const auto chunk = pattern_bytes(1, off, 128 * KiB);
      std::promise<Result<std::size_t>> p;
      auto f = p.get_future();
      auto out = v.write(*w, off, chunk, 0, [&p](Result<std::size_t> r) { p.set_value(r); });
      Result<std::size_t> r = is_parked(out) ? f.get() : std::get<0>(out);
      ASSERT_TRUE(r.ok());
      off += r.value();
      EXPECT_LE(v.memory_used(), 4 * MiB);
    }
    v.release(std::move(w));
  });
  // Meanwhile small streams go through the fast subscription.
  for (int i = 0; i < 20; ++i) {
    auto w = writer(v, "fast" + std::to_string(i));
    ASSERT_TRUE(write_now(v, *w, 0, "ok").ok());
    v.release(std::move(w));
  }
  EXPECT_TRUE(fast->wait_closed(20, 20s));
  slow_writer.join();
  ASSERT_TRUE(slow->wait_closed(1, 60s));
  const auto s = slow->seen().begin()->second;
  ASSERT_EQ(s.bytes.size(), 8 * MiB);
  EXPECT_EQ(first_mismatch(1, 0, s.bytes), std::string_view::npos);
  EXPECT_LE(v.memory_peak(), 4 * MiB);
  s_slow->close();
  s_fast->close();
}

TEST(Delivery, UnlinkDuringDeliveryAbortsWithAReason) {
  Volume v(Limits{});
  auto rec = std::make_shared<Recorder>();
  auto sub = v.subscribe(core::glob_filter({}), rec);
  auto w = writer(v, "doomed");
  ASSERT_TRUE(write_now(v, *w, 0, "partial").ok());
  ASSERT_NE(rec->wait_bytes(7), 0u);  // delivery has begun: the consumer must hear of the end
  ASSERT_TRUE(v.unlink(kRootIno, "doomed").ok());
  ASSERT_TRUE(rec->wait_closed(1));
  const auto s = rec->seen().begin()->second;
  EXPECT_FALSE(s.end.complete);
  EXPECT_NE(s.end.reason.find("unlinked"), std::string::npos);
  EXPECT_TRUE(write_now(v, *w, 7, "more").ok());  // accepted and discarded
  v.release(std::move(w));
  sub->close();
  EXPECT_EQ(v.memory_used(), 0u);
}

class Watcher : public core::Observer {
 public:
  std::vector<std::string> events;
  void created(const StreamInfo& i) override { add("created " + i.path); }
  void renamed(std::uint64_t, const std::string& p) override { add("renamed " + p); }
  void ended(std::uint64_t, const StreamEnd& e) override {
    add(std::string("ended ") + (e.complete ? "complete " : "aborted ") + std::to_string(e.total));
  }

 private:
  std::mutex mu_;
  void add(std::string e) {
    std::lock_guard lk(mu_);
    events.push_back(std::move(e));
  }
};

TEST(Delivery, ObserversSeeEventsWithoutConsumingAndSnapshotListsStreams) {
  Volume v(Limits{});
  auto w = std::make_shared<Watcher>();
  v.observe(w);
  auto h = writer(v, "tmp");
  ASSERT_TRUE(write_now(v, *h, 0, "12345").ok());
  auto snap = v.snapshot();
  ASSERT_EQ(snap.size(), 1u);
  EXPECT_EQ(snap[0].info.path, "tmp");
  EXPECT_EQ(snap[0].written, 5u);
  EXPECT_EQ(snap[0].delivered, 0u);
  EXPECT_EQ(snap[0].writers, 1);
  EXPECT_FALSE(snap[0].consumer);
  ASSERT_TRUE(v.rename(kRootIno, "tmp", kRootIno, "final", 0).ok());
  v.release(std::move(h));
  Consumer r = reader(v, "final");  // the observer did not take it
  EXPECT_EQ(read_now(v, r, 100).value(), "12345");
  EXPECT_EQ(read_now(v, r, 100).value(), "");  // EOF
  v.release(std::move(r));
  auto x = writer(v, "doomed");
  ASSERT_TRUE(v.unlink(kRootIno, "doomed").ok());
  v.release(std::move(x));
  v.unobserve(w.get());
  EXPECT_EQ(w->events, (std::vector<std::string>{"created tmp", "renamed final", "ended complete 5",
                                                 "created doomed", "ended aborted 0"}));
  EXPECT_TRUE(v.snapshot().empty());
}

// Renamed after delivery began: the consumer is told, between the bytes.
TEST(Delivery, ARenameDuringDeliveryIsTold) {
  Volume v(Limits{});
  auto rec = std::make_shared<Recorder>();
  auto sub = v.subscribe(core::glob_filter({}), rec);
  auto w = writer(v, "out.tmp");
  ASSERT_TRUE(write_now(v, *w, 0, "abc").ok());
  ASSERT_EQ(rec->wait_bytes(3), ino_of(v, "out.tmp"));
  ASSERT_TRUE(v.rename(kRootIno, "out.tmp", kRootIno, "out", 0).ok());
  ASSERT_TRUE(write_now(v, *w, 3, "def").ok());
  v.release(std::move(w));
  ASSERT_TRUE(rec->wait_closed(1));
  const auto s = rec->seen().begin()->second;
  EXPECT_EQ(s.info.path, "out.tmp");
  EXPECT_EQ(s.renames, std::vector<std::string>{"out"});
  EXPECT_EQ(s.bytes, "abcdef");
  sub->close();
}

// A renamed directory moves the streams below it: their consumer and the
// observers are told each stream's new path.
TEST(Delivery, ARenamedDirectoryTellsTheStreamsBelowIt) {
  Volume v(Limits{});
  auto w = std::make_shared<Watcher>();
  v.observe(w);
  auto rec = std::make_shared<Recorder>();
  auto sub = v.subscribe(core::glob_filter({"*x"}), rec);
  const core::Caller who{};
  const Ino d1 = v.mkdir(kRootIno, "d1", 0755, who).value().ino;
  const Ino sub_dir = v.mkdir(d1, "sub", 0755, who).value().ino;
  const Ino d3 = v.mkdir(kRootIno, "d3", 0755, who).value().ino;
  auto x = writer(v, "x", sub_dir);
  ASSERT_TRUE(write_now(v, *x, 0, "abc").ok());
  ASSERT_EQ(rec->wait_bytes(3), ino_of(v, "x", sub_dir));
  ASSERT_TRUE(v.rename(kRootIno, "d1", kRootIno, "d2", 0).ok());
  ASSERT_TRUE(v.rename(kRootIno, "d2", d3, "inner", 0).ok());
  ASSERT_TRUE(write_now(v, *x, 3, "def").ok());
  v.release(std::move(x));
  ASSERT_TRUE(rec->wait_closed(1));
  const auto s = rec->seen().begin()->second;
  EXPECT_EQ(s.info.path, "d1/sub/x");
  EXPECT_EQ(s.renames, (std::vector<std::string>{"d2/sub/x", "d3/inner/sub/x"}));
  EXPECT_EQ(s.bytes, "abcdef");
  sub->close();
  v.unobserve(w.get());
  EXPECT_EQ(w->events, (std::vector<std::string>{"created d1/sub/x", "renamed d2/sub/x", "renamed d3/inner/sub/x",
                                                 "ended complete 6"}));
}

// A consumer limited to one stream at a time gets the next only after it
// has handled the end of the previous one.
TEST(Delivery, MaxActiveFreesASlotOnlyAfterTheCloseWasHandled) {
  Volume v(Limits{});
  struct Overlap : Recorder {
    std::atomic<int> open{0}, most{0};
    void on_open(const StreamInfo& i) override {
      most = std::max(most.load(), ++open);
      Recorder::on_open(i);
    }
    void on_close(std::uint64_t id, const StreamEnd& e) override {
      std::this_thread::sleep_for(2ms);  // a consumer busy finishing up (not synchronisation)
      --open;
      Recorder::on_close(id, e);
    }
  };
  auto rec = std::make_shared<Overlap>();
  SubscriptionOptions one;
  one.max_active = 1;
  one.threads = 4;
  auto sub = v.subscribe(core::glob_filter({}), rec, one);
  for (int i = 0; i < 5; ++i) {
    auto w = writer(v, "f" + std::to_string(i));
    ASSERT_TRUE(write_now(v, *w, 0, "x").ok());
    v.release(std::move(w));
  }
  ASSERT_TRUE(rec->wait_closed(5));
  EXPECT_EQ(rec->most.load(), 1);
  sub->close();
}

TEST(Delivery, GlobStarMatchesAcrossDirectories) {
  auto f = core::glob_filter({"*.tbl", "exact/name"});
  EXPECT_TRUE(f("hits.tbl"));
  EXPECT_TRUE(f("run1/hits.tbl"));
  EXPECT_TRUE(f("exact/name"));
  EXPECT_FALSE(f("hits.tbl.tmp"));
  EXPECT_TRUE(core::glob_filter({})("anything"));
}

}  // namespace
}  // namespace capturefs::test
