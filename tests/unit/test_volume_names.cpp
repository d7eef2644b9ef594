// Volume namespace: lookup, mkdir/rmdir, unlink, rename, list, forget,
// name checks and setattr.
#include <gtest/gtest.h>

#include <cerrno>
#include <string>
#include <vector>

#include "support.hpp"

namespace capturefs::test {
namespace {

using core::DirEntry;
using core::Kind;
using core::kRenameExchange;
using core::kRenameNoReplace;
using core::SetAttr;

class Names : public ::testing::Test {
 protected:
  Volume v{Limits{}};
  Caller who{1000, 1001, 42};

  Ino mknod(std::string_view name, Ino parent = kRootIno) {
    return must(v.mknod(parent, name, 0644, who), "mknod").ino;
  }
  Ino mkdir(std::string_view name, Ino parent = kRootIno) {
    return must(v.mkdir(parent, name, 0755, who), "mkdir").ino;
  }
  std::vector<std::string> names(Ino dir) {
    std::vector<std::string> out;
    for (const DirEntry& e : must(v.list(dir), "list")) out.push_back(e.name);
    return out;
  }
  std::uint32_t nlink(Ino ino) { return must(v.getattr(ino), "getattr").nlink; }
};

TEST_F(Names, LookupOfMissingNameIsENOENT) {
  EXPECT_EQ(v.lookup(kRootIno, "nope").error(), ENOENT);
  EXPECT_EQ(v.lookup(999, "x").error(), ENOENT);  // no such parent
  EXPECT_EQ(v.getattr(999).error(), ENOENT);
}

TEST_F(Names, RootIsADirectory) {
  auto a = v.getattr(kRootIno);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->ino, kRootIno);
  EXPECT_EQ(a->kind, Kind::Directory);
  EXPECT_EQ(a->nlink, 2u);
  EXPECT_EQ(a->meta.mode, 0755u);
  EXPECT_TRUE(names(kRootIno).empty());
}

TEST_F(Names, MknodCreatesAStreamThatLookupFinds) {
  auto made = v.mknod(kRootIno, "s", 0640, who);
  ASSERT_TRUE(made);
  EXPECT_EQ(made->kind, Kind::Stream);
  EXPECT_NE(made->ino, kRootIno);
  EXPECT_EQ(made->meta.mode, 0640u);
  EXPECT_EQ(made->meta.uid, 1000u);
  EXPECT_EQ(made->meta.gid, 1001u);
  EXPECT_EQ(made->size, 0u);
  EXPECT_EQ(made->nlink, 1u);
  auto found = v.lookup(kRootIno, "s");
  ASSERT_TRUE(found);
  EXPECT_EQ(found->ino, made->ino);
  EXPECT_EQ(found->kind, Kind::Stream);
  EXPECT_EQ(v.mknod(kRootIno, "s", 0640, who).error(), EEXIST);
  // A stream is not a directory.
  EXPECT_EQ(v.lookup(made->ino, "x").error(), ENOTDIR);
  EXPECT_EQ(v.mknod(made->ino, "x", 0644, who).error(), ENOTDIR);
  EXPECT_EQ(v.mkdir(made->ino, "x", 0755, who).error(), ENOTDIR);
  EXPECT_EQ(v.list(made->ino).error(), ENOTDIR);
}

TEST_F(Names, InodeNumbersAreDistinct) {
  const Ino a = mknod("a");
  const Ino b = mkdir("b");
  const Ino c = mknod("c", b);
  EXPECT_NE(a, b);
  EXPECT_NE(b, c);
  EXPECT_NE(a, c);
  ASSERT_TRUE(v.unlink(kRootIno, "a"));
  EXPECT_NE(mknod("a"), a);  // not reused
}

TEST_F(Names, MkdirAndRmdir) {
  auto d = v.mkdir(kRootIno, "d", 0750, who);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->kind, Kind::Directory);
  EXPECT_EQ(d->meta.mode, 0750u);
  EXPECT_EQ(d->nlink, 2u);
  EXPECT_EQ(nlink(kRootIno), 3u);
  EXPECT_EQ(v.mkdir(kRootIno, "d", 0755, who).error(), EEXIST);

  const Ino sub = mkdir("sub", d->ino);
  EXPECT_EQ(nlink(d->ino), 3u);
  mknod("s", d->ino);
  EXPECT_EQ(nlink(d->ino), 3u);  // streams do not count
  EXPECT_EQ(v.lookup(d->ino, "sub")->ino, sub);

  EXPECT_EQ(v.rmdir(kRootIno, "d").error(), ENOTEMPTY);
  EXPECT_EQ(v.rmdir(d->ino, "s").error(), ENOTDIR);
  EXPECT_EQ(v.unlink(d->ino, "sub").error(), EISDIR);
  EXPECT_EQ(v.unlink(kRootIno, "d").error(), EISDIR);
  EXPECT_EQ(v.rmdir(kRootIno, "missing").error(), ENOENT);

  ASSERT_TRUE(v.rmdir(d->ino, "sub"));
  EXPECT_EQ(nlink(d->ino), 2u);
  ASSERT_TRUE(v.unlink(d->ino, "s"));
  ASSERT_TRUE(v.rmdir(kRootIno, "d"));
  EXPECT_EQ(v.lookup(kRootIno, "d").error(), ENOENT);
  EXPECT_EQ(nlink(kRootIno), 2u);
  // The removed directory can no longer hold names.
  EXPECT_EQ(v.mknod(d->ino, "x", 0644, who).error(), ENOENT);
  EXPECT_EQ(v.mkdir(d->ino, "x", 0755, who).error(), ENOENT);
  EXPECT_EQ(v.list(d->ino).error(), ENOENT);
}

TEST_F(Names, UnlinkRemovesTheName) {
  const Ino s = mknod("s");
  ASSERT_TRUE(v.unlink(kRootIno, "s"));
  EXPECT_EQ(v.lookup(kRootIno, "s").error(), ENOENT);
  EXPECT_EQ(v.unlink(kRootIno, "s").error(), ENOENT);
  EXPECT_EQ(v.open(s, O_RDONLY).error(), ESTALE);
  EXPECT_TRUE(names(kRootIno).empty());
  // The name can be used again, for a new node.
  EXPECT_NE(mknod("s"), s);
}

TEST_F(Names, ListShowsEntriesSortedWithKinds) {
  const Ino d = mkdir("dir");
  const Ino b = mknod("b");
  const Ino a = mknod("a");
  mknod("inner", d);
  auto l = v.list(kRootIno);
  ASSERT_TRUE(l);
  ASSERT_EQ(l->size(), 3u);
  EXPECT_EQ((*l)[0].name, "a");
  EXPECT_EQ((*l)[0].ino, a);
  EXPECT_EQ((*l)[0].kind, Kind::Stream);
  EXPECT_EQ((*l)[1].name, "b");
  EXPECT_EQ((*l)[1].ino, b);
  EXPECT_EQ((*l)[2].name, "dir");
  EXPECT_EQ((*l)[2].ino, d);
  EXPECT_EQ((*l)[2].kind, Kind::Directory);
  EXPECT_EQ(names(d), std::vector<std::string>{"inner"});
  EXPECT_EQ(v.list(12345).error(), ENOENT);
}

TEST_F(Names, RenamePlainAndAcrossDirectories) {
  const Ino s = mknod("a");
  ASSERT_TRUE(v.rename(kRootIno, "a", kRootIno, "b", 0));
  EXPECT_EQ(v.lookup(kRootIno, "a").error(), ENOENT);
  EXPECT_EQ(v.lookup(kRootIno, "b")->ino, s);

  const Ino d = mkdir("d");
  ASSERT_TRUE(v.rename(kRootIno, "b", d, "c", 0));
  EXPECT_EQ(names(kRootIno), std::vector<std::string>{"d"});
  EXPECT_EQ(names(d), std::vector<std::string>{"c"});
  EXPECT_EQ(v.lookup(d, "c")->ino, s);

  // Directories move with their contents and their link counts.
  const Ino e = mkdir("e");
  ASSERT_TRUE(v.rename(kRootIno, "d", e, "d2", 0));
  EXPECT_EQ(v.lookup(e, "d2")->ino, d);
  EXPECT_EQ(v.lookup(d, "c")->ino, s);
  EXPECT_EQ(nlink(kRootIno), 3u);  // only e
  EXPECT_EQ(nlink(e), 3u);         // d2

  EXPECT_EQ(v.rename(kRootIno, "missing", kRootIno, "x", 0).error(), ENOENT);
  EXPECT_EQ(v.rename(kRootIno, "e", 999, "x", 0).error(), ENOENT);
}

TEST_F(Names, RenameToItselfIsANoOp) {
  const Ino s = mknod("a");
  ASSERT_TRUE(v.rename(kRootIno, "a", kRootIno, "a", 0));
  ASSERT_TRUE(v.rename(kRootIno, "a", kRootIno, "a", kRenameNoReplace));
  EXPECT_EQ(v.lookup(kRootIno, "a")->ino, s);
}

TEST_F(Names, RenameOverAnExistingStreamDropsIt) {
  auto w = writer(v, "old");
  const Ino old_ino = w->ino;
  ASSERT_EQ(write_now(v, *w, 0, "doomed bytes").value(), 12u);
  EXPECT_GT(v.memory_used(), 0u);
  const Ino src = mknod("new");

  ASSERT_TRUE(v.rename(kRootIno, "new", kRootIno, "old", 0));
  EXPECT_EQ(v.lookup(kRootIno, "old")->ino, src);
  EXPECT_EQ(v.lookup(kRootIno, "new").error(), ENOENT);
  EXPECT_EQ(names(kRootIno), std::vector<std::string>{"old"});
  // Dropped as by unlink: no consumer, so the bytes are gone and the open
  // writer's further writes are accepted and discarded.
  EXPECT_EQ(v.memory_used(), 0u);
  EXPECT_EQ(must(v.getattr(old_ino), "getattr").nlink, 0u);
  EXPECT_EQ(write_now(v, *w, 12, "more").value(), 4u);
  EXPECT_EQ(v.memory_used(), 0u);
  v.release(std::move(w));
  EXPECT_EQ(v.lookup(kRootIno, "old")->ino, src);
}

TEST_F(Names, RenameNoReplaceRefusesAnExistingTarget) {
  const Ino a = mknod("a");
  const Ino b = mknod("b");
  EXPECT_EQ(v.rename(kRootIno, "a", kRootIno, "b", kRenameNoReplace).error(), EEXIST);
  EXPECT_EQ(v.lookup(kRootIno, "a")->ino, a);
  EXPECT_EQ(v.lookup(kRootIno, "b")->ino, b);
  ASSERT_TRUE(v.rename(kRootIno, "a", kRootIno, "c", kRenameNoReplace));
  EXPECT_EQ(v.lookup(kRootIno, "c")->ino, a);
}

TEST_F(Names, RenameExchangeSwapsTwoNames) {
  const Ino a = mknod("a");
  const Ino b = mknod("b");
  ASSERT_TRUE(v.rename(kRootIno, "a", kRootIno, "b", kRenameExchange));
  EXPECT_EQ(v.lookup(kRootIno, "a")->ino, b);
  EXPECT_EQ(v.lookup(kRootIno, "b")->ino, a);
  EXPECT_EQ(names(kRootIno), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(v.rename(kRootIno, "a", kRootIno, "zz", kRenameExchange).error(), ENOENT);
}

TEST_F(Names, RenameExchangeOfADirectoryAndAStreamAcrossDirectories) {
  const Ino p = mkdir("p");
  const Ino q = mkdir("q");
  const Ino dir = mkdir("dir", p);
  const Ino s = mknod("s", q);
  ASSERT_EQ(nlink(p), 3u);
  ASSERT_EQ(nlink(q), 2u);
  ASSERT_TRUE(v.rename(p, "dir", q, "s", kRenameExchange));
  EXPECT_EQ(v.lookup(p, "dir")->ino, s);
  EXPECT_EQ(v.lookup(p, "dir")->kind, Kind::Stream);
  EXPECT_EQ(v.lookup(q, "s")->ino, dir);
  EXPECT_EQ(v.lookup(q, "s")->kind, Kind::Directory);
  EXPECT_EQ(nlink(p), 2u);
  EXPECT_EQ(nlink(q), 3u);
  // The moved directory still works under its new name.
  mknod("inside", dir);
  EXPECT_EQ(names(dir), std::vector<std::string>{"inside"});
  ASSERT_TRUE(v.unlink(dir, "inside"));
  ASSERT_TRUE(v.rmdir(q, "s"));
  EXPECT_EQ(nlink(q), 2u);
}

TEST_F(Names, RenameFlagsAreChecked) {
  mknod("a");
  mknod("b");
  EXPECT_EQ(v.rename(kRootIno, "a", kRootIno, "b", kRenameNoReplace | kRenameExchange).error(),
            EINVAL);
  EXPECT_EQ(v.rename(kRootIno, "a", kRootIno, "b", 1U << 2).error(), EINVAL);
}

TEST_F(Names, RenameOfADirectoryBelowItselfIsEINVAL) {
  const Ino p = mkdir("p");
  const Ino q = mkdir("q", p);
  const Ino r = mkdir("r", q);
  EXPECT_EQ(v.rename(kRootIno, "p", q, "x", 0).error(), EINVAL);
  EXPECT_EQ(v.rename(kRootIno, "p", r, "x", 0).error(), EINVAL);
  EXPECT_EQ(v.rename(kRootIno, "p", p, "x", 0).error(), EINVAL);
  EXPECT_EQ(v.rename(p, "q", r, "x", 0).error(), EINVAL);
  // Exchanging a directory with something inside it is refused too.
  mknod("s", r);
  EXPECT_EQ(v.rename(kRootIno, "p", r, "s", kRenameExchange).error(), EINVAL);
  EXPECT_EQ(v.rename(r, "s", kRootIno, "p", kRenameExchange).error(), EINVAL);
  // Nothing moved.
  EXPECT_EQ(v.lookup(kRootIno, "p")->ino, p);
  EXPECT_EQ(v.lookup(p, "q")->ino, q);
  EXPECT_EQ(v.lookup(q, "r")->ino, r);
  // Moving up is fine.
  ASSERT_TRUE(v.rename(q, "r", kRootIno, "r", 0));
  EXPECT_EQ(v.lookup(kRootIno, "r")->ino, r);
}

TEST_F(Names, RenameChecksKindsAndEmptiness) {
  const Ino d = mkdir("d");
  mkdir("full");
  mknod("x", must(v.lookup(kRootIno, "full"), "lookup").ino);
  mkdir("empty");
  mknod("s");
  EXPECT_EQ(v.rename(kRootIno, "d", kRootIno, "s", 0).error(), ENOTDIR);
  EXPECT_EQ(v.rename(kRootIno, "s", kRootIno, "d", 0).error(), EISDIR);
  EXPECT_EQ(v.rename(kRootIno, "d", kRootIno, "full", 0).error(), ENOTEMPTY);
  ASSERT_TRUE(v.rename(kRootIno, "d", kRootIno, "empty", 0));
  EXPECT_EQ(v.lookup(kRootIno, "empty")->ino, d);
  EXPECT_EQ(nlink(kRootIno), 4u);  // 2 + "full" + "empty" (now d)
}

TEST_F(Names, NamesAreChecked) {
  for (const char* bad : {"", ".", "..", "a/b", "/", "a/"}) {
    EXPECT_EQ(v.mknod(kRootIno, bad, 0644, who).error(), EINVAL) << bad;
    EXPECT_EQ(v.mkdir(kRootIno, bad, 0755, who).error(), EINVAL) << bad;
    EXPECT_EQ(v.create(kRootIno, bad, 0644, O_WRONLY | O_CREAT, who).error(), EINVAL) << bad;
  }
  const std::string max(255, 'n');
  const std::string too_long(256, 'n');
  EXPECT_TRUE(v.mknod(kRootIno, max, 0644, who));
  EXPECT_EQ(v.mknod(kRootIno, too_long, 0644, who).error(), ENAMETOOLONG);
  EXPECT_EQ(v.mkdir(kRootIno, too_long, 0755, who).error(), ENAMETOOLONG);
  EXPECT_EQ(v.create(kRootIno, too_long, 0644, O_WRONLY | O_CREAT, who).error(), ENAMETOOLONG);
  EXPECT_EQ(v.rename(kRootIno, max, kRootIno, too_long, 0).error(), ENAMETOOLONG);
  EXPECT_EQ(v.lookup(kRootIno, too_long).error(), ENAMETOOLONG);  // stat, open: not ENOENT
  EXPECT_EQ(v.rename(kRootIno, max, kRootIno, ".", 0).error(), EINVAL);
  EXPECT_EQ(v.rename(kRootIno, max, kRootIno, "x/y", 0).error(), EINVAL);
  EXPECT_EQ(names(kRootIno), std::vector<std::string>{max});
}

TEST_F(Names, ForgetDropsAnUnlinkedNodeOnlyAfterTheLastLookup) {
  const Ino s = mknod("s");          // 1 lookup
  ASSERT_TRUE(v.lookup(kRootIno, "s"));  // 2
  ASSERT_TRUE(v.lookup(kRootIno, "s"));  // 3
  const auto files = v.statfs().files;
  ASSERT_TRUE(v.unlink(kRootIno, "s"));
  // Unlinked but still known to the kernel.
  auto a = v.getattr(s);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->nlink, 0u);
  EXPECT_EQ(v.statfs().files, files);
  v.forget(s, 2);
  EXPECT_TRUE(v.getattr(s));
  v.forget(s, 1);
  EXPECT_EQ(v.getattr(s).error(), ENOENT);
  EXPECT_EQ(v.statfs().files, files - 1);
  v.forget(s, 1);  // unknown by now: ignored
}

TEST_F(Names, ForgetOfALinkedNodeKeepsIt) {
  const Ino s = mknod("s");
  v.forget(s, 1);
  v.forget(s, 100);  // more than held: clamps
  EXPECT_EQ(v.lookup(kRootIno, "s")->ino, s);
  ASSERT_TRUE(v.unlink(kRootIno, "s"));
  // The lookup above was the only one left.
  EXPECT_TRUE(v.getattr(s));
  v.forget(s, 1);
  EXPECT_EQ(v.getattr(s).error(), ENOENT);
  v.forget(kRootIno, 1000);  // the root never goes
  EXPECT_TRUE(v.getattr(kRootIno));
}

TEST_F(Names, ForgetOfADirectoryAfterRmdir) {
  const Ino d = mkdir("d");  // 1 lookup
  ASSERT_TRUE(v.rmdir(kRootIno, "d"));
  auto a = v.getattr(d);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->nlink, 0u);
  v.forget(d, 1);
  EXPECT_EQ(v.getattr(d).error(), ENOENT);
}

TEST_F(Names, SetattrStoresModeOwnerAndTimes) {
  for (const bool dir : {false, true}) {
    SCOPED_TRACE(dir ? "directory" : "stream");
    const Ino n = dir ? mkdir("d") : mknod("s");
    const timespec before = core::now();
    SetAttr sa;
    sa.set_mode = sa.set_uid = sa.set_gid = sa.set_atime = sa.set_mtime = true;
    sa.mode = 0104751;  // type bits are dropped, permission bits kept
    sa.uid = 7;
    sa.gid = 8;
    sa.atime = timespec{100, 5};
    sa.mtime = timespec{200, 6};
    auto a = v.setattr(n, sa);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->meta.mode, 04751u);
    EXPECT_EQ(a->meta.uid, 7u);
    EXPECT_EQ(a->meta.gid, 8u);
    EXPECT_EQ(a->meta.atime.tv_sec, 100);
    EXPECT_EQ(a->meta.atime.tv_nsec, 5);
    EXPECT_EQ(a->meta.mtime.tv_sec, 200);
    EXPECT_EQ(a->meta.mtime.tv_nsec, 6);
    EXPECT_GE(a->meta.ctime.tv_sec, before.tv_sec);  // a change is a change
    auto g = v.getattr(n);
    ASSERT_TRUE(g);
    EXPECT_EQ(g->meta.mode, 04751u);
    EXPECT_EQ(g->meta.uid, 7u);
    EXPECT_EQ(g->meta.gid, 8u);
    EXPECT_EQ(g->meta.mtime.tv_sec, 200);

    // Unset members stay as they are.
    SetAttr only_mode;
    only_mode.set_mode = true;
    only_mode.mode = 0600;
    auto b = v.setattr(n, only_mode);
    ASSERT_TRUE(b);
    EXPECT_EQ(b->meta.mode, 0600u);
    EXPECT_EQ(b->meta.uid, 7u);
    EXPECT_EQ(b->meta.gid, 8u);
    EXPECT_EQ(b->meta.atime.tv_sec, 100);
    EXPECT_EQ(b->meta.mtime.tv_sec, 200);
  }
  EXPECT_EQ(v.setattr(999, SetAttr{}).error(), ENOENT);
}

TEST_F(Names, SetattrSizeOnADirectoryIsEISDIR) {
  const Ino d = mkdir("d");
  SetAttr sa;
  sa.set_size = true;
  sa.size = 0;
  EXPECT_EQ(v.setattr(d, sa).error(), EISDIR);
}

SetAttr truncate_to(std::uint64_t n) {
  SetAttr sa;
  sa.set_size = true;
  sa.size = n;
  return sa;
}

TEST_F(Names, TruncateToTheCurrentSizeSucceeds) {
  auto w = writer(v, "s");
  ASSERT_TRUE(v.setattr(w->ino, truncate_to(0)));  // empty: 0 is the size
  ASSERT_EQ(write_now(v, *w, 0, "hello").value(), 5u);
  auto a = v.setattr(w->ino, truncate_to(5));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->size, 5u);
  auto r = reader(v, "s");
  EXPECT_EQ(read_now(v, r, 100).value(), "hello");  // nothing was dropped
  v.release(std::move(r));
  v.release(std::move(w));
}

TEST_F(Names, TruncateToZeroBeforeConsumptionDropsTheBytes) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "stale data").value(), 10u);
  EXPECT_GT(v.memory_used(), 0u);
  auto a = v.setattr(w->ino, truncate_to(0));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->size, 0u);
  EXPECT_EQ(a->blocks, 0u);
  EXPECT_EQ(v.memory_used(), 0u);
  // Writing starts again at offset 0.
  ASSERT_EQ(write_now(v, *w, 0, "fresh").value(), 5u);
  auto r = reader(v, "s");
  EXPECT_EQ(read_now(v, r, 100).value(), "fresh");
  v.release(std::move(w));
  EXPECT_EQ(read_now(v, r, 100).value(), "");
  v.release(std::move(r));
}

TEST_F(Names, TruncateShrinksOrGrowsWhatIsNotConsumedYet) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "abcdef").value(), 6u);
  EXPECT_EQ(v.setattr(w->ino, truncate_to(3))->size, 3u);  // drops the tail
  EXPECT_EQ(v.setattr(w->ino, truncate_to(5))->size, 5u);  // zero bytes appended
  auto r = reader(v, "s");
  EXPECT_EQ(read_now(v, r, 2).value(), "ab");
  // Cutting into consumed bytes is refused; down to them is fine.
  EXPECT_EQ(v.setattr(w->ino, truncate_to(1)).error(), EINVAL);
  EXPECT_EQ(v.setattr(w->ino, truncate_to(0)).error(), EINVAL);
  EXPECT_TRUE(v.setattr(w->ino, truncate_to(4)));
  EXPECT_EQ(v.getattr(w->ino)->size, 4u);
  EXPECT_EQ(read_now(v, r, 100).value(), std::string("c\0", 2));
  // Growing past the stream limit: EFBIG, nothing changes.
  EXPECT_EQ(v.setattr(w->ino, truncate_to(v.limits().max_stream + 8)).error(), EFBIG);
  EXPECT_EQ(v.getattr(w->ino)->size, 4u);
  v.release(std::move(w));
  v.release(std::move(r));
}

}  // namespace
}  // namespace capturefs::test
