// What real tools do besides open-write-close, at the core level: read back
// their own output, patch or rewrite bytes, truncate, hold a file whole
// (--hold), rename into place, unlink temp files, symlink, and create a file
// empty to reopen it later.
#include <cerrno>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "recorder.hpp"
#include "support.hpp"

namespace capturefs::test {
namespace {

using core::ExitWatch;
using core::Kind;
using core::Policy;
using core::SetAttr;
using core::Subscription;
using core::SubscriptionOptions;

constexpr std::int32_t kToolPid = 4242;  // a writer process that is not us

std::unique_ptr<Handle> tool_writer(Volume& v, std::string_view name, int flags = O_WRONLY) {
  return must(v.create(kRootIno, name, 0644, flags | O_CREAT, Caller{0, 0, kToolPid}), "create")
      .handle;
}

// Exits happen when the test says so.
class FakeExits : public ExitWatch {
 public:
  bool watch(std::int32_t pid, std::function<void()> on_exit) override {
    std::lock_guard lk(mu_);
    if (dead_.contains(pid)) return false;
    waiting_[pid].push_back(std::move(on_exit));
    ++watches_;
    return true;
  }
  void clear() override {
    std::lock_guard lk(mu_);
    waiting_.clear();
  }
  void exit(std::int32_t pid) {
    std::vector<std::function<void()>> due;
    {
      std::lock_guard lk(mu_);
      dead_.insert(pid);
      due.swap(waiting_[pid]);
    }
    for (auto& f : due) f();
  }
  int watches() {
    std::lock_guard lk(mu_);
    return watches_;
  }

 private:
  std::mutex mu_;
  std::map<std::int32_t, std::vector<std::function<void()>>> waiting_;
  std::set<std::int32_t> dead_;
  int watches_ = 0;
};

Policy hold(std::vector<std::string> globs) {
  Policy p;
  p.hold = core::glob_filter(std::move(globs));
  return p;
}

// One delivery thread: streams are served in the order they were woken, so
// a stream written after another is a barrier for it.
SubscriptionOptions one_thread() {
  SubscriptionOptions o;
  o.threads = 1;
  return o;
}

// A volume whose creating processes exit when the test says so, and a
// recorder to subscribe with (one delivery thread).
class ToolsWithExits : public ::testing::Test {
 protected:
  static Policy exits_policy(std::shared_ptr<FakeExits> e) {
    Policy p;
    p.exits = std::move(e);
    return p;
  }
  std::shared_ptr<Subscription> subscribe() {
    return v.subscribe(core::glob_filter({}), rec, one_thread());
  }
  std::shared_ptr<FakeExits> exits = std::make_shared<FakeExits>();
  Volume v{Limits{}, exits_policy(exits)};
  std::shared_ptr<Recorder> rec = std::make_shared<Recorder>();
};

// Writes "barrier" as a new stream and waits until the recorder has closed
// `closed` streams in all (including it).
void barrier(Volume& v, Recorder& rec, std::size_t closed) {
  auto w = writer(v, "barrier");
  ASSERT_TRUE(write_now(v, *w, 0, "b").ok());
  v.release(std::move(w));
  ASSERT_TRUE(rec.wait_closed(closed));
}

// Reads stream `name` to its end through the path and closes it, as `cat`
// does: the stream is delivered.
void read_whole(Volume& v, const std::string& name, const std::string& want) {
  auto r = reader(v, name);
  EXPECT_EQ(read_now(v, r, want.size() + 10).value(), want) << name;
  EXPECT_EQ(read_now(v, r, 10).value(), "") << name;
  v.flush(*r.h);
  v.release(std::move(r.h));
}

// ---- Read-back, patches, rewrites --------------------------------------------

TEST(Tools, AWriterReadsBackWhatIsNotConsumedWithoutConsumingIt) {
  Volume v(Limits{});
  auto w = writer(v, "out");
  ASSERT_TRUE(write_now(v, *w, 0, "hello world").ok());
  EXPECT_EQ(read_at(v, *w, 0, 5).value(), "hello");
  EXPECT_EQ(read_at(v, *w, 6, 100).value(), "world");
  EXPECT_EQ(read_at(v, *w, 11, 100).value(), "");  // the end: EOF, never a wait
  auto r = reader(v, "out");
  EXPECT_EQ(read_now(v, r, 6).value(), "hello ");  // nothing was taken by read-back
  EXPECT_EQ(read_now(v, r, 1).value(), "w");
  EXPECT_EQ(read_at(v, *w, 0, 5).error(), EIO);  // consumed: gone
  EXPECT_EQ(read_at(v, *w, 7, 100).value(), "orld");
  v.release(std::move(w));
  v.release(std::move(r));
}

TEST(Tools, RewritingDeliveredBytesAbortsTheStreamForItsPushConsumer) {
  Volume v(Limits{});
  auto rec = std::make_shared<Recorder>();
  auto sub = v.subscribe(core::glob_filter({}), rec);
  auto w = writer(v, "movie.mp4");
  ASSERT_TRUE(write_now(v, *w, 0, "header+frames").ok());
  ASSERT_NE(rec->wait_bytes(13), 0u);
  // The tool seeks back to fix its header: too late, and everybody is told.
  EXPECT_EQ(write_now(v, *w, 0, "HEADER").error(), EIO);
  ASSERT_TRUE(rec->wait_closed(1));
  const auto s = rec->seen().begin()->second;
  EXPECT_FALSE(s.end.complete);
  EXPECT_NE(s.end.reason.find("already delivered"), std::string::npos) << s.end.reason;
  EXPECT_EQ(write_now(v, *w, 13, "more").error(), EIO);  // and the writer from now on
  v.release(std::move(w));
  sub->close();
  EXPECT_EQ(v.memory_used(), 0u);
}

// ---- --hold ---------------------------------------------------------------------

TEST(Tools, AHeldFileIsAnOrdinaryFileUntilItsLastWriterLeaves) {
  Volume v(Limits{}, hold({"*.zip"}));
  auto w = writer(v, "a.zip");
  ASSERT_TRUE(write_now(v, *w, 0, "PK??").ok());
  ASSERT_TRUE(write_now(v, *w, 4, "entry-data").ok());
  ASSERT_TRUE(write_now(v, *w, 2, "OK").ok());  // patch the local header
  EXPECT_EQ(read_at(v, *w, 0, 100).value(), "PKOKentry-data");
  EXPECT_TRUE(v.setattr(w->ino, [] {
    SetAttr sa;
    sa.set_size = true;
    sa.size = 9;
    return sa;
  }()));
  // A reader waits for the whole file, however much is there.
  auto r = reader(v, "a.zip");
  ReadLog log;
  ASSERT_TRUE(is_parked(read_into(v, r, 100, 0, log)));
  ASSERT_TRUE(write_now(v, *w, 9, "!").ok());
  EXPECT_EQ(log.calls, 0);
  // A second writer (the same tool reopening it) keeps it held.
  auto w2 = must(v.open(w->ino, O_WRONLY), "reopen");
  v.release(std::move(w));
  EXPECT_EQ(log.calls, 0);
  ASSERT_TRUE(write_now(v, *w2, 0, "pk").ok());
  v.release(std::move(w2));
  ASSERT_EQ(log.calls, 1);
  EXPECT_EQ(log.data, "pkOKentry!");
  v.release(std::move(r));
}

TEST(Tools, AHeldFileIsPushedWholeAfterItsLastWriterLeaves) {
  Volume v(Limits{}, hold({"*.wav"}));
  auto rec = std::make_shared<Recorder>();
  auto sub = v.subscribe(core::glob_filter({}), rec, one_thread());
  auto w = writer(v, "take.wav");
  ASSERT_TRUE(write_now(v, *w, 0, std::string(44, 'h')).ok());
  ASSERT_TRUE(write_now(v, *w, 44, "samples").ok());
  barrier(v, *rec, 1);  // the wav file was not announced meanwhile
  EXPECT_EQ(rec->opened(), 1u);
  ASSERT_TRUE(write_now(v, *w, 4, "SIZE").ok());  // the header patch at the end
  v.release(std::move(w));
  ASSERT_TRUE(rec->wait_closed(2));
  for (const auto& [id, s] : rec->seen()) {
    if (s.info.path != "take.wav") continue;
    EXPECT_EQ(s.bytes, "hhhhSIZE" + std::string(36, 'h') + "samples");
    EXPECT_TRUE(s.end.complete);
  }
  sub->close();
}

TEST(Tools, AHeldWriteThatDoesNotFitFailsInsteadOfWaiting) {
  Limits l;
  l.max_memory = 4 * MiB;
  l.max_stream = 2 * MiB;
  Volume v(l, hold({"*.big"}));
  auto w = writer(v, "x.big");
  const std::string mib(MiB, 'x');
  ASSERT_TRUE(write_now(v, *w, 0, mib).ok());
  // Past the stream limit: nothing will ever drain it, so no wait.
  EXPECT_EQ(write_now(v, *w, MiB, mib + "y").error(), EFBIG);
  // Memory full with other streams' bytes: ENOSPC, not a wait.
  auto other = writer(v, "plain");
  ASSERT_TRUE(write_now(v, *other, 0, std::string(2 * MiB, 'o')).ok());
  auto w2 = writer(v, "y.big");
  ASSERT_TRUE(write_now(v, *w2, 0, std::string(900 * KiB, 'z')).ok());
  EXPECT_EQ(write_now(v, *w2, 900 * KiB, std::string(900 * KiB, 'z')).error(), ENOSPC);
  v.release(std::move(w));
  v.release(std::move(w2));
  v.release(std::move(other));
}

// ---- Names ------------------------------------------------------------------------

TEST(Tools, AFileRenamedBeforeAnyByteWasDeliveredArrivesUnderItsFinalName) {
  // rsync-like: the temp name is held (so nothing leaves early), the rename
  // ends the hold and the stream goes out under its new name.
  Volume v(Limits{}, hold({".*.tmp"}));
  auto rec = std::make_shared<Recorder>();
  auto sub = v.subscribe(core::glob_filter({}), rec);
  auto w = writer(v, ".data.csv.tmp");
  ASSERT_TRUE(write_now(v, *w, 0, "a,b\n1,2\n").ok());
  ASSERT_TRUE(v.rename(kRootIno, ".data.csv.tmp", kRootIno, "data.csv", 0).ok());
  v.release(std::move(w));
  ASSERT_TRUE(rec->wait_closed(1));
  const auto s = rec->seen().begin()->second;
  EXPECT_EQ(s.info.path, "data.csv");
  EXPECT_TRUE(s.renames.empty());
  EXPECT_EQ(s.bytes, "a,b\n1,2\n");
  sub->close();
}

TEST_F(ToolsWithExits, ARenameByTheCreatorAfterDeliveryIsToldAfterTheEnd) {
  // rsync: write the temp file, close it, rename it into place. The
  // consumer may have had it all, end included, before the rename.
  auto sub = subscribe();
  auto w = tool_writer(v, ".big.bin.Xy12Ab");
  ASSERT_TRUE(write_now(v, *w, 0, "payload").ok());
  v.release(std::move(w));
  ASSERT_TRUE(rec->wait_closed(1));
  // The creator still sees the name, and renames it.
  EXPECT_EQ(v.lookup(kRootIno, ".big.bin.Xy12Ab", kToolPid)->size, 7u);
  EXPECT_EQ(v.lookup(kRootIno, ".big.bin.Xy12Ab").error(), ENOENT);  // nobody else does
  ASSERT_TRUE(v.rename(kRootIno, ".big.bin.Xy12Ab", kRootIno, "big.bin", 0).ok());
  barrier(v, *rec, 2);  // one delivery thread: the late rename was told before
  const auto seen = rec->seen();
  bool found = false;
  for (const auto& [id, s] : seen) {
    if (s.info.path != ".big.bin.Xy12Ab") continue;
    found = true;
    EXPECT_TRUE(s.end.complete);
    EXPECT_EQ(s.bytes, "payload");
    EXPECT_EQ(s.renames, std::vector<std::string>{"big.bin"});
  }
  EXPECT_TRUE(found);
  EXPECT_EQ(sub->late_renames_pending(), 0u);
  exits->exit(kToolPid);
  EXPECT_EQ(v.lookup(kRootIno, "big.bin", kToolPid).error(), ENOENT);  // the creator is gone
  sub->close();
}

TEST(Tools, AFileUnlinkedBeforeAnyByteWasDeliveredIsNeverAnnounced) {
  Volume v(Limits{}, hold({"*.lock"}));
  auto rec = std::make_shared<Recorder>();
  auto sub = v.subscribe(core::glob_filter({}), rec, one_thread());
  auto w = writer(v, "index.lock");
  ASSERT_TRUE(write_now(v, *w, 0, "pid 42").ok());
  ASSERT_TRUE(v.unlink(kRootIno, "index.lock").ok());
  v.release(std::move(w));
  barrier(v, *rec, 1);
  const auto seen = rec->seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen.begin()->second.info.path, "barrier");
  sub->close();
  EXPECT_EQ(v.memory_used(), 0u);
}

TEST(Tools, SymlinksLiveInTheTreeAndAreNeverDelivered) {
  Volume v(Limits{});
  auto rec = std::make_shared<Recorder>();
  auto sub = v.subscribe(core::glob_filter({}), rec, one_thread());
  auto a = v.symlink(kRootIno, "latest", "runs/42/out.txt", Caller{1, 2, 3});
  ASSERT_TRUE(a);
  EXPECT_EQ(a->kind, Kind::Symlink);
  EXPECT_EQ(a->size, 15u);
  EXPECT_EQ(v.readlink(a->ino).value(), "runs/42/out.txt");
  EXPECT_EQ(v.lookup(kRootIno, "latest")->kind, Kind::Symlink);
  EXPECT_EQ(v.symlink(kRootIno, "latest", "x", Caller{}).error(), EEXIST);
  EXPECT_EQ(v.open(a->ino, O_RDONLY).error(), ELOOP);
  EXPECT_EQ(v.readlink(kRootIno).error(), EINVAL);
  SetAttr sa;
  sa.set_mtime = true;
  sa.mtime = timespec{1000, 0};
  EXPECT_EQ(v.setattr(a->ino, sa)->meta.mtime.tv_sec, 1000);  // tar -x sets it
  auto l = v.list(kRootIno);
  ASSERT_EQ(l->size(), 1u);
  EXPECT_EQ(l->front().kind, Kind::Symlink);
  ASSERT_TRUE(v.rename(kRootIno, "latest", kRootIno, "current", 0).ok());
  EXPECT_EQ(v.readlink(ino_of(v, "current")).value(), "runs/42/out.txt");
  barrier(v, *rec, 1);
  EXPECT_EQ(rec->opened(), 1u);  // only the barrier stream
  ASSERT_TRUE(v.unlink(kRootIno, "current").ok());
  EXPECT_EQ(v.lookup(kRootIno, "current").error(), ENOENT);
  sub->close();
}

// ---- Created empty, reopened later ------------------------------------------------

TEST_F(ToolsWithExits, AFileClosedEmptyAndReopenedByItsCreatorIsOneStream) {
  auto sub = subscribe();
  auto probe = tool_writer(v, "out.zip", O_WRONLY | O_EXCL);  // zip's probe
  const Ino ino = probe->ino;
  v.release(std::move(probe));
  EXPECT_EQ(exits->watches(), 1);
  barrier(v, *rec, 1);
  EXPECT_EQ(rec->opened(), 1u);  // out.zip: not ended, not announced
  auto w = must(v.open(ino, O_WRONLY | O_TRUNC), "reopen");
  ASSERT_TRUE(write_now(v, *w, 0, "PK\x03\x04").ok());
  v.release(std::move(w));
  ASSERT_TRUE(rec->wait_closed(2));
  exits->exit(kToolPid);  // too late to matter: nothing happens twice
  const auto seen = rec->seen();
  ASSERT_EQ(seen.size(), 2u);
  for (const auto& [id, s] : seen) {
    if (s.info.path != "out.zip") continue;
    EXPECT_EQ(s.bytes, "PK\x03\x04");
    EXPECT_TRUE(s.end.complete);
  }
  sub->close();
}

TEST_F(ToolsWithExits, AFileClosedEmptyEndsWhenItsCreatorExits) {
  auto sub = subscribe();
  v.release(tool_writer(v, "empty.txt"));
  barrier(v, *rec, 1);
  EXPECT_EQ(rec->opened(), 1u);
  exits->exit(kToolPid);
  ASSERT_TRUE(rec->wait_closed(2));
  for (const auto& [id, s] : rec->seen()) {
    if (s.info.path != "empty.txt") continue;
    EXPECT_TRUE(s.end.complete);
    EXPECT_EQ(s.end.total, 0u);
  }
  EXPECT_EQ(v.lookup(kRootIno, "empty.txt").error(), ENOENT);  // delivered
  // A creator already gone, or one that is us, is not waited for.
  exits->exit(4343);
  const int before = exits->watches();
  v.release(must(v.create(kRootIno, "gone", 0644, O_WRONLY | O_CREAT, Caller{0, 0, 4343}), "create")
                .handle);
  EXPECT_EQ(exits->watches(), before);
  ASSERT_TRUE(rec->wait_closed(3));  // ended at once
  sub->close();
}

TEST_F(ToolsWithExits, ABarrierAnnouncesAStreamWithNoByteYet) {
  // A client saw its tool exit; the kernel's RELEASE of the tool's empty
  // output is not in yet (the writer is still open here). STATUS asks for
  // every held stream to be announced: the client learns the file exists.
  auto sub = subscribe();
  auto w = tool_writer(v, "out.tbl");
  barrier(v, *rec, 1);
  EXPECT_EQ(rec->opened(), 1u);  // lazy: only the barrier stream so far
  sub->announce_all();
  ASSERT_TRUE(rec->wait_opened(2));
  const auto ids = sub->due_ids();
  EXPECT_EQ(ids.size(), 1u);  // out.tbl, announced, not finished
  v.release(std::move(w));
  exits->exit(kToolPid);
  ASSERT_TRUE(rec->wait_closed(2));
  for (const auto& [id, s] : rec->seen()) {
    if (s.info.path != "out.tbl") continue;
    EXPECT_TRUE(s.end.complete);
    EXPECT_EQ(s.end.total, 0u);
  }
  sub->close();
}

TEST_F(ToolsWithExits, TheFrontEndIsToldOfNamesTheVolumeRemovesOnItsOwn) {
  // So that the kernel drops its cached entry and forgets the node: a
  // burst of delivered files must not stay in memory until the kernel
  // happens to reclaim its caches.
  std::mutex mu;
  std::vector<std::pair<Ino, std::string>> told;
  v.on_name_gone([&](Ino parent, Ino, const std::string& name) {
    std::lock_guard lk(mu);
    told.emplace_back(parent, name);
  });
  auto w = tool_writer(v, "out.txt");
  ASSERT_TRUE(write_now(v, *w, 0, "data").ok());
  v.release(std::move(w));
  read_whole(v, "out.txt", "data");
  {
    std::lock_guard lk(mu);
    EXPECT_TRUE(told.empty());  // kept for its creator, which still runs
  }
  exits->exit(kToolPid);
  {
    std::lock_guard lk(mu);
    ASSERT_EQ(told.size(), 1u);
    EXPECT_EQ(told[0], std::make_pair(kRootIno, std::string("out.txt")));
  }
  // A name the kernel removes itself is not told back to it.
  auto w2 = writer(v, "gone.txt");
  v.release(std::move(w2));
  ASSERT_TRUE(v.unlink(kRootIno, "gone.txt").ok());
  v.on_name_gone(nullptr);
  std::lock_guard lk(mu);
  EXPECT_EQ(told.size(), 1u);
}

TEST_F(ToolsWithExits, AFewThousandDeliveredNamesAreKeptPerVolumeWithOneWatchPerCreator) {
  // A long-lived process writing file after file: its delivered names are
  // kept for it, but only the newest kMaxRetired, and its exit is watched
  // once, not once per file.
  const int before = exits->watches();
  const std::size_t n = Volume::kMaxRetired + 10;
  for (std::size_t i = 0; i < n; ++i) {
    const std::string name = "f" + std::to_string(i);
    auto w = tool_writer(v, name);
    ASSERT_TRUE(write_now(v, *w, 0, "x").ok());
    v.release(std::move(w));
    read_whole(v, name, "x");
  }
  EXPECT_EQ(exits->watches(), before + 1);
  EXPECT_EQ(v.lookup(kRootIno, "f0", kToolPid).error(), ENOENT);  // the oldest went
  EXPECT_EQ(v.lookup(kRootIno, "f9", kToolPid).error(), ENOENT);
  auto last = v.lookup(kRootIno, "f" + std::to_string(n - 1), kToolPid);
  ASSERT_TRUE(last);  // the newest are kept for their creator
  v.forget(last->ino, 1);
  auto kept = v.lookup(kRootIno, "f10", kToolPid);
  ASSERT_TRUE(kept);
  v.forget(kept->ino, 1);
  EXPECT_TRUE(v.list(kRootIno)->empty());  // and hidden from everyone else
  exits->exit(kToolPid);
  EXPECT_EQ(v.lookup(kRootIno, "f10", kToolPid).error(), ENOENT);  // all went with it
  EXPECT_EQ(v.lookup(kRootIno, "f" + std::to_string(n - 1), kToolPid).error(), ENOENT);
}

TEST_F(ToolsWithExits, AReaderIsNotHeldBackByAnEmptyFilesCreator) {
  v.release(tool_writer(v, "empty"));
  auto r = reader(v, "empty");
  EXPECT_EQ(read_now(v, r, 10).value(), "");  // EOF at once, as with a FIFO
  v.release(std::move(r));
  EXPECT_EQ(v.lookup(kRootIno, "empty").error(), ENOENT);
}

}  // namespace
}  // namespace capturefs::test
