// Streams through Volume: roles, ordering, parked reads, EOF, name
// removal, patches, gaps, unlink.
#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "support.hpp"

namespace capturefs::test {
namespace {

using core::Kind;

class Streams : public ::testing::Test {
 protected:
  Volume v{Limits{}};
};

TEST_F(Streams, CreateGivesAWriterAndOpenRdonlyTheReader) {
  auto c = v.create(kRootIno, "s", 0640, O_WRONLY | O_CREAT, Caller{5, 6, 7});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->attr.kind, Kind::Stream);
  EXPECT_EQ(c->attr.meta.mode, 0640u);
  EXPECT_EQ(c->attr.meta.uid, 5u);
  EXPECT_EQ(c->attr.size, 0u);
  ASSERT_NE(c->handle, nullptr);
  EXPECT_EQ(c->handle->role, Role::Writer);
  EXPECT_EQ(c->handle->ino, c->attr.ino);
  EXPECT_FALSE(c->handle->nonblock);

  auto r = v.open(c->attr.ino, O_RDONLY);
  ASSERT_TRUE(r);
  EXPECT_EQ((*r)->role, Role::Reader);
  EXPECT_EQ((*r)->ino, c->attr.ino);
  EXPECT_EQ((*r)->stream, c->handle->stream);

  // Another reader opens passively: its reads get EBUSY, nothing changes.
  std::vector<std::unique_ptr<Handle>> passive;
  passive.push_back(must(v.open(c->attr.ino, O_RDONLY), "open"));
  passive.push_back(must(v.create(kRootIno, "s", 0644, O_RDONLY | O_CREAT, Caller{}), "create").handle);
  for (auto& h : passive) {
    EXPECT_TRUE(h->passive);
    EXPECT_EQ(read_at(v, *h, 0, 10).error(), EBUSY);
    v.release(std::move(h));
  }

  // A writer reads back (nothing yet); a reader cannot write.
  EXPECT_EQ(read_at(v, *c->handle, 0, 10).value(), "");
  EXPECT_EQ(std::get<0>(v.write(**r, 0, as_bytes("x"), 0, nullptr)).error(), EBADF);

  v.release(std::move(r.value()));
  v.release(std::move(c->handle));
}

TEST_F(Streams, OtherOpenFlagsMakeWriters) {
  for (int flags : {O_WRONLY, O_RDWR, O_WRONLY | O_APPEND, O_RDWR | O_CREAT}) {
    auto c = v.create(kRootIno, "s", 0644, flags | O_CREAT, Caller{});
    ASSERT_TRUE(c) << flags;
    EXPECT_EQ(c->handle->role, Role::Writer) << flags;
    auto o = v.open(c->attr.ino, flags & ~O_CREAT);
    ASSERT_TRUE(o) << flags;
    EXPECT_EQ((*o)->role, Role::Writer) << flags;
    // A writer's handle reads back without consuming.
    ASSERT_EQ(write_now(v, **o, 0, "mine").value(), 4u);
    EXPECT_EQ(read_at(v, **o, 1, 10).value(), "ine");
    EXPECT_EQ(read_at(v, *c->handle, 0, 10).value(), "mine");
    v.release(std::move(o.value()));
    v.release(std::move(c->handle));
  }
}

TEST_F(Streams, OpenErrors) {
  EXPECT_EQ(v.open(999, O_RDONLY).error(), ESTALE);  // the kernel looks the path up again
  EXPECT_EQ(v.open(kRootIno, O_RDONLY).error(), EISDIR);
  ASSERT_TRUE(v.mkdir(kRootIno, "d", 0755, Caller{}));
  EXPECT_EQ(v.create(kRootIno, "d", 0644, O_WRONLY | O_CREAT, Caller{}).error(), EISDIR);
  EXPECT_EQ(v.create(999, "x", 0644, O_WRONLY | O_CREAT, Caller{}).error(), ENOENT);
}

TEST_F(Streams, CreateExclOnAnExistingNameIsEEXIST) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "abc").value(), 3u);
  EXPECT_EQ(v.create(kRootIno, "s", 0644, O_WRONLY | O_CREAT | O_EXCL, Caller{}).error(), EEXIST);
  // Without O_EXCL the creator joins as another writer of the same stream.
  auto c = v.create(kRootIno, "s", 0644, O_WRONLY | O_CREAT, Caller{});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->attr.ino, w->ino);
  EXPECT_EQ(c->attr.size, 3u);
  ASSERT_EQ(write_now(v, *c->handle, 3, "def").value(), 3u);
  auto r = reader(v, "s");
  EXPECT_EQ(read_now(v, r, 100).value(), "abcdef");
  v.release(std::move(c->handle));
  v.release(std::move(w));
  v.release(std::move(r));
}

TEST_F(Streams, WriteThenReadReturnsTheBytesInOrder) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "hello ").value(), 6u);
  ASSERT_EQ(write_now(v, *w, 6, "world").value(), 5u);
  EXPECT_EQ(v.getattr(w->ino)->size, 11u);
  EXPECT_GT(v.getattr(w->ino)->blocks, 0u);
  auto r = reader(v, "s");
  EXPECT_EQ(read_now(v, r, 3).value(), "hel");
  EXPECT_EQ(read_now(v, r, 100).value(), "lo world");
  // st_size counts bytes written, not bytes held.
  EXPECT_EQ(v.getattr(w->ino)->size, 11u);
  v.release(std::move(w));
  v.release(std::move(r));
}

TEST_F(Streams, ParkedReadIsCompletedByAWrite) {
  auto w = writer(v, "s");
  auto r = reader(v, "s");
  ReadLog log;
  auto out = v.read(*r, r.off, 100, 0, log.cb(&r));
  ASSERT_TRUE(is_parked(out));
  EXPECT_EQ(log.calls, 0);
  ASSERT_EQ(write_now(v, *w, 0, "abc").value(), 3u);
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, 0);
  EXPECT_EQ(log.data, "abc");
  // The bytes went to the parked read, not into the queue.
  auto again = v.read(*r, r.off, 100, 0, log.cb(&r));
  EXPECT_TRUE(is_parked(again));
  v.release(std::move(w));
  EXPECT_EQ(log.calls, 2);
  EXPECT_EQ(log.data, "");  // EOF
  v.release(std::move(r));
}

TEST_F(Streams, ParkedReadTakesAtMostItsSize) {
  auto w = writer(v, "s");
  auto r = reader(v, "s");
  ReadLog log;
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 2, 0, log.cb(&r))));
  ASSERT_EQ(write_now(v, *w, 0, "abcdef").value(), 6u);
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.data, "ab");
  EXPECT_EQ(read_now(v, r, 100).value(), "cdef");
  v.release(std::move(w));
  v.release(std::move(r));
}

TEST_F(Streams, ParkedReadAnsweredFromTheWritersBufferKeepsItsBytesForASeekBack) {
  // A write that completes a waiting read answers it from the write's own
  // buffer (no copy); the bytes must still be in the stream afterwards.
  auto w = writer(v, "s");
  auto r = reader(v, "s");
  ReadLog log;
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 4, 0, log.cb(&r))));
  std::string buf = "wxyz1234";
  ASSERT_EQ(write_now(v, *w, 0, buf).value(), 8u);
  buf.assign(buf.size(), '#');  // the writer reuses its buffer at once
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.data, "wxyz");
  r.off = 0;  // seek back within the last read
  EXPECT_EQ(read_now(v, r, 4).value(), "wxyz");
  EXPECT_EQ(read_now(v, r, 100).value(), "1234");
  // A read waiting beyond what one write brings gets what there is.
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 100, 0, log.cb(&r))));
  ASSERT_EQ(write_now(v, *w, 8, "56").value(), 2u);
  EXPECT_EQ(log.calls, 2);
  EXPECT_EQ(log.data, "56");
  v.release(std::move(w));
  EXPECT_EQ(read_now(v, r, 100).value(), "");
  v.release(std::move(r));
}

TEST_F(Streams, ParkedReadGetsEOFWhenTheLastWriterLeaves) {
  auto w1 = writer(v, "s");
  auto w2 = writer(v, "s");
  auto r = reader(v, "s");
  ReadLog log;
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 100, 0, log.cb(&r))));
  v.release(std::move(w1));
  EXPECT_EQ(log.calls, 0);  // one writer is still open
  v.release(std::move(w2));
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, 0);
  EXPECT_EQ(log.data, "");
  v.release(std::move(r));
  EXPECT_EQ(v.lookup(kRootIno, "s").error(), ENOENT);
}

TEST_F(Streams, NonblockingReadOnAnEmptyStreamIsEAGAIN) {
  auto w = writer(v, "s");
  auto r = reader(v, "s", kRootIno, O_NONBLOCK);
  EXPECT_TRUE(r->nonblock);
  EXPECT_EQ(read_now(v, r, 100).error(), EAGAIN);
  ASSERT_EQ(write_now(v, *w, 0, "x").value(), 1u);
  EXPECT_EQ(read_now(v, r, 100).value(), "x");
  EXPECT_EQ(read_now(v, r, 100).error(), EAGAIN);
  v.release(std::move(w));
  EXPECT_EQ(read_now(v, r, 100).value(), "");  // EOF, not EAGAIN
  v.release(std::move(r));
}

TEST_F(Streams, EOFOnlyAfterAllWritersReleasedAndAllBytesRead) {
  auto w1 = writer(v, "s");
  auto w2 = writer(v, "s");
  ASSERT_EQ(write_now(v, *w1, 0, "one").value(), 3u);
  ASSERT_EQ(write_now(v, *w2, 3, "two").value(), 3u);
  v.release(std::move(w1));
  v.release(std::move(w2));
  auto r = reader(v, "s", kRootIno, O_NONBLOCK);
  EXPECT_EQ(read_now(v, r, 4).value(), "onet");
  EXPECT_EQ(read_now(v, r, 100).value(), "wo");
  EXPECT_EQ(read_now(v, r, 100).value(), "");
  EXPECT_EQ(read_now(v, r, 100).value(), "");  // stays at EOF
  v.release(std::move(r));
}

TEST_F(Streams, NameDisappearsAfterTheReaderReadEOFAndReleased) {
  auto w = writer(v, "s");
  const Ino ino = w->ino;
  ASSERT_EQ(write_now(v, *w, 0, "payload").value(), 7u);
  v.release(std::move(w));
  // Writers done, nobody read yet: the bytes are kept.
  ASSERT_TRUE(v.lookup(kRootIno, "s"));
  auto r = reader(v, "s");
  EXPECT_EQ(read_now(v, r, 100).value(), "payload");
  EXPECT_EQ(read_now(v, r, 100).value(), "");
  // Still there until the reader leaves.
  ASSERT_TRUE(v.lookup(kRootIno, "s"));
  v.release(std::move(r));
  EXPECT_EQ(v.lookup(kRootIno, "s").error(), ENOENT);
  EXPECT_TRUE(v.list(kRootIno)->empty());
  EXPECT_EQ(v.open(ino, O_RDONLY).error(), ESTALE);
  EXPECT_EQ(v.memory_used(), 0u);
  // The name is free for a new stream.
  auto w2 = writer(v, "s");
  EXPECT_NE(w2->ino, ino);
  v.release(std::move(w2));
}

TEST_F(Streams, ReaderThatLeavesEarlyLeavesTheRestForTheNextReader) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "abcdef").value(), 6u);
  auto r1 = reader(v, "s");
  EXPECT_EQ(read_now(v, r1, 3).value(), "abc");
  v.release(std::move(r1));
  ASSERT_TRUE(v.lookup(kRootIno, "s"));
  auto r2 = reader(v, "s");
  EXPECT_EQ(read_now(v, r2, 100).value(), "def");
  ASSERT_EQ(write_now(v, *w, 6, "gh").value(), 2u);
  v.release(std::move(w));
  EXPECT_EQ(read_now(v, r2, 100).value(), "gh");
  v.release(std::move(r2));  // left before seeing EOF: the name stays
  ASSERT_TRUE(v.lookup(kRootIno, "s"));
  auto r3 = reader(v, "s");
  EXPECT_EQ(read_now(v, r3, 100).value(), "");
  v.release(std::move(r3));
  EXPECT_EQ(v.lookup(kRootIno, "s").error(), ENOENT);
}

TEST_F(Streams, WriterArrivingAfterEOFReopensTheStream) {
  auto w = writer(v, "s");
  auto r = reader(v, "s");
  v.release(std::move(w));
  EXPECT_EQ(read_now(v, r, 100).value(), "");  // EOF seen
  auto w2 = writer(v, "s");
  ASSERT_EQ(write_now(v, *w2, 0, "late").value(), 4u);
  EXPECT_EQ(read_now(v, r, 100).value(), "late");
  ReadLog log;
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 100, 0, log.cb(&r))));
  v.release(std::move(w2));
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.data, "");
  v.release(std::move(r));
  EXPECT_EQ(v.lookup(kRootIno, "s").error(), ENOENT);
}

TEST_F(Streams, PatchInPlaceBeforeConsumption) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "aaaaaaaa").value(), 8u);
  ASSERT_EQ(write_now(v, *w, 2, "XY").value(), 2u);
  EXPECT_EQ(v.getattr(w->ino)->size, 8u);  // a patch does not grow
  auto r = reader(v, "s");
  EXPECT_EQ(read_now(v, r, 3).value(), "aaX");
  // Patch after partial consumption, and one that runs past the end.
  ASSERT_EQ(write_now(v, *w, 4, "PQ").value(), 2u);
  ASSERT_EQ(write_now(v, *w, 7, "ZZZ").value(), 3u);
  EXPECT_EQ(v.getattr(w->ino)->size, 10u);
  EXPECT_EQ(read_now(v, r, 100).value(), "YPQaZZZ");
  v.release(std::move(w));
  v.release(std::move(r));
}

TEST_F(Streams, PatchAcrossManyBlocks) {
  auto w = writer(v, "s");
  const auto data = pattern_bytes(1, 0, 600 * 1024);
  ASSERT_EQ(write_now(v, *w, 0, data).value(), data.size());
  const std::string patch(300 * 1024, 'P');
  ASSERT_EQ(write_now(v, *w, 100 * 1024, patch).value(), patch.size());
  auto r = reader(v, "s");
  const std::string got = read_now(v, r, data.size()).value();
  ASSERT_EQ(got.size(), data.size());
  EXPECT_EQ(first_mismatch(1, 0, std::string_view(got).substr(0, 100 * 1024)), std::string::npos);
  EXPECT_EQ(got.substr(100 * 1024, patch.size()), patch);
  EXPECT_EQ(first_mismatch(1, 400 * 1024, std::string_view(got).substr(400 * 1024)),
            std::string::npos);
  v.release(std::move(w));
  v.release(std::move(r));
}

TEST_F(Streams, WriteAtAConsumedOffsetIsEIO) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "abcdef").value(), 6u);
  auto r = reader(v, "s");
  EXPECT_EQ(read_now(v, r, 3).value(), "abc");
  ASSERT_EQ(write_now(v, *w, 3, "D").value(), 1u);  // first unconsumed byte: a patch
  EXPECT_EQ(write_now(v, *w, 2, "xyz").error(), EIO);  // starts in consumed bytes
  // The file the consumer has is wrong now: it is aborted for both sides,
  // never silently short or stale.
  EXPECT_EQ(write_now(v, *w, 6, "more").error(), EIO);
  EXPECT_EQ(read_now(v, r, 100).error(), EIO);
  v.release(std::move(w));
  v.release(std::move(r));
}

TEST_F(Streams, AReaderMayReReadWithinItsLastRead) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "hello world").value(), 11u);
  auto r = reader(v, "s");
  EXPECT_EQ(read_at(v, *r, 0, 5).value(), "hello");
  EXPECT_EQ(read_at(v, *r, 0, 5).value(), "hello");  // seek back: still there
  EXPECT_EQ(read_at(v, *r, 2, 3).value(), "llo");
  // Reading at 2 consumed [0, 2): those are gone for good.
  EXPECT_EQ(read_at(v, *r, 0, 5).error(), EIO);
  EXPECT_EQ(read_at(v, *r, 1, 5).error(), EIO);
  ASSERT_EQ(write_now(v, *w, 5, "_").value(), 1u);  // not handed out yet: patched
  EXPECT_EQ(read_at(v, *r, 5, 100).value(), "_world");
  v.release(std::move(w));
  EXPECT_EQ(read_at(v, *r, 11, 100).value(), "");
  v.release(std::move(r));
  EXPECT_EQ(v.lookup(kRootIno, "s").error(), ENOENT);
}

TEST_F(Streams, BytesReadAreFreedByTheNextRead) {
  auto w = writer(v, "s");
  const std::string block(4096, 'b');  // exactly one 4 KiB block
  ASSERT_EQ(write_now(v, *w, 0, block).value(), block.size());
  EXPECT_EQ(v.memory_used(), 4096u);
  auto r = reader(v, "s", kRootIno, O_NONBLOCK);
  EXPECT_EQ(read_now(v, r, 8192).value(), block);
  EXPECT_EQ(v.memory_used(), 4096u);  // kept: the reader may seek back
  EXPECT_EQ(read_now(v, r, 8192).error(), EAGAIN);
  EXPECT_EQ(v.memory_used(), 0u);
  v.release(std::move(w));
  v.release(std::move(r));
}

TEST_F(Streams, ReadingAtALaterOffsetSkipsBytes) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "abcdef").value(), 6u);
  auto r = reader(v, "s");
  EXPECT_EQ(read_at(v, *r, 4, 10).value(), "ef");
  EXPECT_EQ(read_at(v, *w, 3, 10).error(), EIO);  // skipped bytes count as consumed
  EXPECT_EQ(read_at(v, *r, 3, 10).error(), EIO);
  v.release(std::move(w));
  EXPECT_EQ(read_at(v, *r, 6, 10).value(), "");
  v.release(std::move(r));
}

TEST_F(Streams, ParkedReadBeyondTheEndWaitsForItsOffset) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "abc").value(), 3u);
  auto r = reader(v, "s");
  ReadLog log;
  ASSERT_TRUE(is_parked(v.read(*r, 10, 100, 0, log.cb())));
  ASSERT_EQ(write_now(v, *w, 3, "defg").value(), 4u);
  EXPECT_EQ(log.calls, 0);  // nothing at offset 10 yet
  ASSERT_EQ(write_now(v, *w, 7, "hijklmn").value(), 7u);
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.data, "klmn");
  v.release(std::move(w));
  EXPECT_EQ(read_at(v, *r, 14, 10).value(), "");
  v.release(std::move(r));
}

TEST_F(Streams, NextReaderStartsAfterWhatThePreviousOneWasHanded) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "abcdefgh").value(), 8u);
  auto r1 = reader(v, "s");
  EXPECT_EQ(read_at(v, *r1, 0, 4).value(), "abcd");
  EXPECT_EQ(read_at(v, *r1, 2, 2).value(), "cd");  // re-read, still handed [0, 4)
  v.release(std::move(r1));
  auto r2 = reader(v, "s");
  EXPECT_EQ(r2->shift, 4u);
  EXPECT_EQ(read_now(v, r2, 100).value(), "efgh");  // its file offset 0
  v.release(std::move(w));
  v.release(std::move(r2));
}

TEST_F(Streams, WritePastTheEndLeavesAZeroGap) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "ab").value(), 2u);
  ASSERT_EQ(write_now(v, *w, 5, "cd").value(), 2u);
  EXPECT_EQ(v.getattr(w->ino)->size, 7u);
  ASSERT_EQ(write_now(v, *w, 20000, "far").value(), 3u);  // a gap over block boundaries
  EXPECT_EQ(v.getattr(w->ino)->size, 20003u);
  auto r = reader(v, "s");
  const std::string got = read_now(v, r, 30000).value();
  std::string expect = std::string("ab\0\0\0cd", 7) + std::string(20000 - 7, '\0') + "far";
  EXPECT_EQ(got, expect);
  v.release(std::move(w));
  v.release(std::move(r));
}

TEST_F(Streams, OpenWithTruncBeforeConsumptionDropsTheBytes) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "old stuff").value(), 9u);
  auto c = v.create(kRootIno, "s", 0644, O_WRONLY | O_CREAT | O_TRUNC, Caller{});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->attr.size, 0u);
  EXPECT_EQ(v.memory_used(), 0u);
  ASSERT_EQ(write_now(v, *c->handle, 0, "new").value(), 3u);
  auto r = reader(v, "s");
  EXPECT_EQ(read_now(v, r, 1).value(), "n");
  // Once something was consumed, O_TRUNC is refused.
  EXPECT_EQ(v.open(w->ino, O_WRONLY | O_TRUNC).error(), EINVAL);
  EXPECT_EQ(v.create(kRootIno, "s", 0644, O_WRONLY | O_CREAT | O_TRUNC, Caller{}).error(), EINVAL);
  EXPECT_EQ(read_now(v, r, 10).value(), "ew");
  v.release(std::move(c->handle));
  v.release(std::move(w));
  v.release(std::move(r));
}

TEST_F(Streams, UnlinkWithoutAReaderDiscardsTheBytes) {
  auto w = writer(v, "s");
  const Ino ino = w->ino;
  const auto data = pattern_bytes(2, 0, 100000);
  ASSERT_EQ(write_now(v, *w, 0, data).value(), data.size());
  EXPECT_GE(v.memory_used(), data.size());
  ASSERT_TRUE(v.unlink(kRootIno, "s"));
  EXPECT_EQ(v.memory_used(), 0u);
  EXPECT_EQ(v.lookup(kRootIno, "s").error(), ENOENT);
  EXPECT_EQ(v.open(ino, O_RDONLY).error(), ESTALE);
  // Later writes are accepted and discarded.
  ASSERT_EQ(write_now(v, *w, data.size(), data).value(), data.size());
  ASSERT_EQ(write_now(v, *w, 0, "stale offset is fine too").value(), 24u);
  EXPECT_EQ(v.memory_used(), 0u);
  EXPECT_EQ(v.getattr(ino)->nlink, 0u);
  v.release(std::move(w));
  EXPECT_EQ(v.memory_used(), 0u);
  // A new stream of that name starts empty.
  auto w2 = writer(v, "s");
  EXPECT_EQ(w2->stream->attr(w2->ino).size, 0u);
  v.release(std::move(w2));
}

TEST_F(Streams, UnlinkWithAReaderAttachedLetsItReadEverything) {
  auto w = writer(v, "s");
  auto r = reader(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "before ").value(), 7u);
  ASSERT_TRUE(v.unlink(kRootIno, "s"));
  EXPECT_EQ(v.lookup(kRootIno, "s").error(), ENOENT);
  ASSERT_EQ(write_now(v, *w, 7, "after").value(), 5u);
  EXPECT_EQ(read_now(v, r, 3).value(), "bef");
  EXPECT_EQ(read_now(v, r, 100).value(), "ore after");
  ReadLog log;
  ASSERT_TRUE(is_parked(v.read(*r, r.off, 100, 0, log.cb(&r))));
  ASSERT_EQ(write_now(v, *w, 12, "!").value(), 1u);
  EXPECT_EQ(log.data, "!");
  v.release(std::move(w));
  EXPECT_EQ(read_now(v, r, 100).value(), "");
  v.release(std::move(r));
  EXPECT_EQ(v.memory_used(), 0u);
}

TEST_F(Streams, UnlinkAfterTheReaderLeftEarlyDiscardsTheRest) {
  auto w = writer(v, "s");
  ASSERT_EQ(write_now(v, *w, 0, "abcdef").value(), 6u);
  auto r = reader(v, "s");
  EXPECT_EQ(read_now(v, r, 2).value(), "ab");
  ASSERT_TRUE(v.unlink(kRootIno, "s"));
  EXPECT_GT(v.memory_used(), 0u);  // the consumer still has it open
  v.release(std::move(r));         // leaves early: nobody can get the rest now
  EXPECT_EQ(v.memory_used(), 0u);
  ASSERT_EQ(write_now(v, *w, 6, "gh").value(), 2u);
  EXPECT_EQ(v.memory_used(), 0u);
  v.release(std::move(w));
}

TEST_F(Streams, ReaderOfAStreamWithNoWriterGetsEOFAtOnce) {
  ASSERT_TRUE(v.mknod(kRootIno, "s", 0644, Caller{}));
  auto r = reader(v, "s");
  EXPECT_EQ(read_now(v, r, 100).value(), "");
  v.release(std::move(r));
  EXPECT_EQ(v.lookup(kRootIno, "s").error(), ENOENT);
}

TEST_F(Streams, StatfsReportsMemoryAndNodes) {
  Volume small(Limits{4 * MiB, 1 * MiB});
  auto w = writer(small, "s");
  ASSERT_EQ(write_now(small, *w, 0, "abc").value(), 3u);
  const auto st = small.statfs();
  EXPECT_EQ(st.capacity, 4 * MiB);
  EXPECT_EQ(st.used, small.memory_used());
  EXPECT_GT(st.used, 0u);
  EXPECT_EQ(st.files, 2u);  // root and s
  small.release(std::move(w));
}

}  // namespace
}  // namespace capturefs::test
