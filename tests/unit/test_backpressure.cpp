// Backpressure: writes park when the global or per-stream cap is reached
// and resume, in order, when readers drain (also across streams).
//
// Reads are positional: a read frees what lies before its offset, and the
// bytes it returns stay until the consumer reads on. So memory comes back
// one read "late", which several tests below check explicitly.
#include <gtest/gtest.h>

#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "core/byte_queue.hpp"
#include "support.hpp"

namespace capturefs::test {
namespace {

constexpr std::size_t kChunk = 64 * 1024;

struct Filled {
  std::uint64_t written = 0;  // bytes accepted at once
  int writes = 0;
};

// Writes kChunk pieces of pattern(id) until one parks; that one's
// completion goes to `log`. Checks the cap after every write.
Filled fill_until_parked(Volume& v, Handle& w, std::uint64_t id, WriteLog& log,
                         std::uint64_t cap) {
  Filled f;
  for (int i = 0; i < 1000; ++i) {
    const auto data = pattern_bytes(id, f.written, kChunk);
    auto out = v.write(w, f.written, data, 0, log.cb());
    EXPECT_LE(v.memory_used(), cap);
    if (is_parked(out)) return f;
    auto& r = std::get<0>(out);
    if (!r) throw std::runtime_error("write failed: errno " + std::to_string(r.error()));
    EXPECT_EQ(r.value(), kChunk);
    f.written += kChunk;
    ++f.writes;
  }
  throw std::runtime_error("no write parked");
}

// Reads everything available (nonblocking consumer), in pieces of `piece`,
// checking pattern(id) and the cap; returns the number of bytes read. The
// final EAGAIN read also frees what the last piece left.
std::uint64_t drain(Volume& v, Consumer& r, std::uint64_t id, std::uint64_t cap,
                    std::size_t piece = kChunk) {
  std::uint64_t got = 0;
  for (;;) {
    const std::uint64_t at = r->shift + r.off;
    auto res = read_now(v, r, piece);
    if (!res) {
      EXPECT_EQ(res.error(), EAGAIN);
      return got;
    }
    if (res->empty()) return got;  // EOF
    EXPECT_EQ(first_mismatch(id, at, *res), std::string::npos)
        << "stream " << id << " at offset " << at;
    got += res->size();
    EXPECT_LE(v.memory_used(), cap);
  }
}

void parked_write_resumes_when_the_reader_drains(const Limits& limits) {
  Volume v(limits);
  const std::uint64_t cap = std::min(limits.max_memory, limits.max_stream);
  auto w = writer(v, "s");
  auto r = reader(v, "s", kRootIno, O_NONBLOCK);
  WriteLog log;
  const Filled f = fill_until_parked(v, *w, 1, log, cap);
  EXPECT_GT(f.writes, 8);  // well past the first blocks
  EXPECT_GT(f.written, cap / 2);
  EXPECT_EQ(log.calls, 0);

  // Read piece by piece; the parked write completes along the way.
  std::uint64_t read = 0;
  while (read < f.written + kChunk) {
    auto res = read_now(v, r, kChunk / 2);
    ASSERT_TRUE(res) << "errno " << res.error() << " after " << read << " bytes";
    ASSERT_FALSE(res->empty());
    ASSERT_EQ(first_mismatch(1, read, *res), std::string::npos) << "at " << read;
    read += res->size();
    ASSERT_LE(v.memory_used(), cap);
    if (read >= f.written) {
      ASSERT_EQ(log.calls, 1) << "parked write not resumed";
    }
  }
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, 0);
  EXPECT_EQ(log.n, kChunk);
  EXPECT_EQ(read, f.written + kChunk);
  EXPECT_EQ(v.getattr(w->ino)->size, f.written + kChunk);
  EXPECT_LE(v.memory_peak(), cap);
  v.release(std::move(w));
  EXPECT_EQ(read_now(v, r, 10).value(), "");
  v.release(std::move(r));
  EXPECT_EQ(v.memory_used(), 0u);
}

TEST(Backpressure, WriteParksOnTheGlobalCapAndResumesWhenDrained) {
  parked_write_resumes_when_the_reader_drains(Limits{1 * MiB, 4 * MiB});
}

TEST(Backpressure, WriteParksOnTheStreamCapAndResumesWhenDrained) {
  parked_write_resumes_when_the_reader_drains(Limits{8 * MiB, 1 * MiB});
}

TEST(Backpressure, WritesLargerThanACapAreEFBIG) {
  Volume v(Limits{1 * MiB, 512 * KiB});
  auto w = writer(v, "s");
  const std::string big(512 * KiB + 1, 'x');
  EXPECT_EQ(write_now(v, *w, 0, big).error(), EFBIG);
  // A gap counts too.
  EXPECT_EQ(write_now(v, *w, 512 * KiB, "y").error(), EFBIG);
  EXPECT_EQ(v.memory_used(), 0u);
  EXPECT_EQ(v.getattr(w->ino)->size, 0u);
  const std::string fits(512 * KiB, 'x');
  EXPECT_EQ(write_now(v, *w, 0, fits).value(), fits.size());

  Volume g(Limits{256 * KiB, 1 * MiB});
  auto gw = writer(g, "s");
  EXPECT_EQ(write_now(g, *gw, 0, big).error(), EFBIG);  // beyond the global cap
  g.release(std::move(gw));
  v.release(std::move(w));
}

TEST(Backpressure, ParkedWritesCompleteInFIFOOrder) {
  const Limits limits{1 * MiB, 1 * MiB};
  Volume v(limits);
  auto w = writer(v, "s");
  auto r = reader(v, "s", kRootIno, O_NONBLOCK);
  WriteLog first;
  const Filled f = fill_until_parked(v, *w, 3, first, limits.max_memory);
  // Four more writes queue behind the parked one; record the order in
  // which they complete.
  std::vector<int> order;
  std::vector<WriteLog> logs(4);
  for (int i = 0; i < 4; ++i) {
    const std::uint64_t off = f.written + kChunk * static_cast<std::uint64_t>(i + 1);
    const auto data = pattern_bytes(3, off, kChunk);
    auto out = v.write(*w, off, data, 0, [&, i](Result<std::size_t> res) {
      // Every later write completes after the first parked one.
      EXPECT_EQ(first.calls, 1) << "write " << i + 1 << " overtook the first";
      order.push_back(i);
      logs[static_cast<std::size_t>(i)].cb()(res);
    });
    ASSERT_TRUE(is_parked(out)) << "write " << i + 1 << " did not queue behind the first";
  }
  EXPECT_LE(v.memory_used(), limits.max_memory);
  const std::uint64_t total = f.written + 5 * kChunk;
  const std::uint64_t read = drain(v, r, 3, limits.max_memory);
  EXPECT_EQ(read, total);
  EXPECT_EQ(first.calls, 1);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3}));
  for (const auto& l : logs) {
    EXPECT_EQ(l.calls, 1);
    EXPECT_EQ(l.n, kChunk);
  }
  EXPECT_LE(v.memory_peak(), limits.max_memory);
  v.release(std::move(w));
  v.release(std::move(r));
}

TEST(Backpressure, WriteParkedOnTheGlobalCapResumesWhenAnotherStreamDrains) {
  const Limits limits{1 * MiB, 1 * MiB};
  Volume v(limits);
  auto wa = writer(v, "a");
  auto wb = writer(v, "b");
  auto ra = reader(v, "a", kRootIno, O_NONBLOCK);
  auto rb = reader(v, "b", kRootIno, O_NONBLOCK);
  // Stream a: 15 x 64 KiB fill exactly fifteen 64 KiB blocks.
  std::uint64_t a_written = 0;
  for (int i = 0; i < 15; ++i) {
    const auto data = pattern_bytes(10, a_written, kChunk);
    ASSERT_EQ(write_now(v, *wa, a_written, data).value(), kChunk) << i;
    a_written += kChunk;
  }
  ASSERT_EQ(v.memory_used(), 960 * KiB);
  // Stream b is empty and far below its own cap, but the volume is full.
  WriteLog blog;
  const auto bdata = pattern_bytes(11, 0, 128 * KiB);
  auto out = v.write(*wb, 0, bdata, 0, blog.cb());
  ASSERT_TRUE(is_parked(out));
  EXPECT_EQ(read_now(v, rb, 10).error(), EAGAIN);  // nothing in b yet
  EXPECT_EQ(blog.calls, 0);

  // a's first block is read, but kept until a reads on (it may seek back).
  const auto first = read_now(v, ra, kChunk);
  ASSERT_TRUE(first);
  EXPECT_EQ(first_mismatch(10, 0, *first), std::string::npos);
  EXPECT_EQ(blog.calls, 0);
  // Reading on frees that block: b's write goes in.
  const auto second = read_now(v, ra, kChunk);
  ASSERT_TRUE(second);
  EXPECT_EQ(first_mismatch(10, kChunk, *second), std::string::npos);
  EXPECT_EQ(blog.calls, 1);
  EXPECT_EQ(blog.err, 0);
  EXPECT_EQ(blog.n, bdata.size());
  EXPECT_LE(v.memory_used(), limits.max_memory);

  EXPECT_EQ(drain(v, rb, 11, limits.max_memory), bdata.size());
  EXPECT_EQ(drain(v, ra, 10, limits.max_memory), a_written - 2 * kChunk);
  EXPECT_LE(v.memory_peak(), limits.max_memory);
  v.release(std::move(wa));
  v.release(std::move(wb));
  EXPECT_EQ(read_now(v, ra, 1).value(), "");
  EXPECT_EQ(read_now(v, rb, 1).value(), "");
  v.release(std::move(ra));
  v.release(std::move(rb));
  EXPECT_EQ(v.memory_used(), 0u);
}

TEST(Backpressure, WriteParkedOnTheGlobalCapResumesWhenAnotherStreamIsUnlinked) {
  const Limits limits{1 * MiB, 1 * MiB};
  Volume v(limits);
  auto wa = writer(v, "a");
  const std::string big(1 * MiB, 'a');
  ASSERT_EQ(write_now(v, *wa, 0, big).value(), big.size());
  auto wb = writer(v, "b");
  WriteLog blog;
  ASSERT_TRUE(is_parked(v.write(*wb, 0, as_bytes("b"), 0, blog.cb())));
  ASSERT_TRUE(v.unlink(kRootIno, "a"));  // no consumer: a's bytes are dropped
  EXPECT_EQ(blog.calls, 1);
  EXPECT_EQ(blog.n, 1u);
  auto rb = reader(v, "b");
  EXPECT_EQ(read_now(v, rb, 10).value(), "b");
  v.release(std::move(wa));
  v.release(std::move(wb));
  v.release(std::move(rb));
}

TEST(Backpressure, WriteParkedOnTheGlobalCapResumesWhenAnotherStreamIsDelivered) {
  const Limits limits{1 * MiB, 1 * MiB};
  Volume v(limits);
  auto wa = writer(v, "a");
  const std::string big(1 * MiB, 'a');
  ASSERT_EQ(write_now(v, *wa, 0, big).value(), big.size());
  v.release(std::move(wa));
  auto wb = writer(v, "b");
  WriteLog blog;
  ASSERT_TRUE(is_parked(v.write(*wb, 0, as_bytes("b"), 0, blog.cb())));
  auto ra = reader(v, "a");
  EXPECT_EQ(read_now(v, ra, 2 * MiB).value(), big);
  EXPECT_EQ(blog.calls, 0);  // a's bytes are kept until it reads on
  EXPECT_EQ(read_now(v, ra, 10).value(), "");
  EXPECT_EQ(blog.calls, 1);
  v.release(std::move(ra));
  EXPECT_EQ(v.lookup(kRootIno, "a").error(), ENOENT);
  v.release(std::move(wb));
  EXPECT_EQ(v.memory_used(), core::ByteQueue::kMinBlock);  // b's one block
}

TEST(Backpressure, ReaderLeavingFreesWhatItWasHanded) {
  const Limits limits{1 * MiB, 1 * MiB};
  Volume v(limits);
  auto wa = writer(v, "a");
  const std::string big(1 * MiB, 'a');
  ASSERT_EQ(write_now(v, *wa, 0, big).value(), big.size());
  auto wb = writer(v, "b");
  WriteLog blog;
  ASSERT_TRUE(is_parked(v.write(*wb, 0, as_bytes("b"), 0, blog.cb())));
  auto ra = reader(v, "a");
  EXPECT_EQ(read_now(v, ra, 2 * MiB).value(), big);
  EXPECT_EQ(blog.calls, 0);
  v.release(std::move(ra));  // leaves early: what it got is gone
  EXPECT_EQ(blog.calls, 1);
  v.release(std::move(wa));
  v.release(std::move(wb));
}

TEST(Backpressure, ParkedWritesOfAnUnlinkedStreamCompleteAsDiscarded) {
  const Limits limits{1 * MiB, 1 * MiB};
  Volume v(limits);
  auto w = writer(v, "s");
  WriteLog log;
  (void)fill_until_parked(v, *w, 4, log, limits.max_memory);
  ASSERT_EQ(log.calls, 0);
  ASSERT_TRUE(v.unlink(kRootIno, "s"));
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.err, 0);
  EXPECT_EQ(log.n, kChunk);
  EXPECT_EQ(v.memory_used(), 0u);
  v.release(std::move(w));
}

// A stream at its per-stream cap with a parked write: the consumer reads
// the held bytes, then reads on. That read frees the block, which lets the
// parked write in, so the byte the read asks for now exists. The read must
// return it, or park and be answered with it; it must not stay parked with
// its byte available until some unrelated later event (another write, a
// writer closing).
TEST(Backpressure, ReadThatLetsAParkedWriteInIsAnsweredWithItsBytes) {
  constexpr std::size_t kCap = 256 * KiB;
  Volume v(Limits{8 * MiB, kCap});
  auto w = writer(v, "s");
  const std::string full(kCap, 'f');
  ASSERT_EQ(write_now(v, *w, 0, full).value(), kCap);
  WriteLog wlog;
  ASSERT_TRUE(is_parked(v.write(*w, kCap, as_bytes("y"), 0, wlog.cb())));
  auto r = reader(v, "s");
  EXPECT_EQ(read_now(v, r, kCap).value(), full);
  EXPECT_EQ(wlog.calls, 0);

  ReadLog rlog;
  auto out = v.read(*r, r.off, 10, 0, rlog.cb(&r));
  EXPECT_EQ(wlog.calls, 1) << "the read did not let the parked write in";
  EXPECT_EQ(wlog.n, 1u);
  if (is_parked(out)) {
    EXPECT_EQ(rlog.calls, 1) << "the read parked although its byte was written; nothing "
                                "will answer it until another write or a writer closing";
    EXPECT_EQ(rlog.data, "y");
  } else {
    auto& res = std::get<0>(out);
    ASSERT_TRUE(res) << "errno " << res.error();
    EXPECT_EQ(to_string(res.value()), "y");
  }

  // Clean up: closing the writer answers a read still parked.
  v.release(std::move(w));
  if (is_parked(out)) {
    EXPECT_EQ(rlog.calls, 1);
    EXPECT_EQ(rlog.data, "y");
  }
  v.release(std::move(r));
}

// The same with a nonblocking consumer: the read that makes room must not
// answer EAGAIN while the byte it let in is there.
TEST(Backpressure, NonblockingReadThatLetsAParkedWriteInSeesItsBytes) {
  constexpr std::size_t kCap = 256 * KiB;
  Volume v(Limits{8 * MiB, kCap});
  auto w = writer(v, "s");
  const std::string full(kCap, 'f');
  ASSERT_EQ(write_now(v, *w, 0, full).value(), kCap);
  WriteLog wlog;
  ASSERT_TRUE(is_parked(v.write(*w, kCap, as_bytes("y"), 0, wlog.cb())));
  auto r = reader(v, "s", kRootIno, O_NONBLOCK);
  EXPECT_EQ(read_now(v, r, kCap).value(), full);
  auto next = read_now(v, r, 10);
  EXPECT_EQ(wlog.calls, 1);
  ASSERT_TRUE(next) << "errno " << next.error() << " although the byte at " << kCap
                    << " was written by this very read";
  EXPECT_EQ(next.value(), "y");
  v.release(std::move(w));
  v.release(std::move(r));
}

// The same through the FUSE protocol (non-zero key, then arm()): arm()
// re-checks the stream, so the read is answered.
TEST(Backpressure, ArmedReadThatLetsAParkedWriteInIsAnswered) {
  constexpr std::size_t kCap = 256 * KiB;
  Volume v(Limits{8 * MiB, kCap});
  auto w = writer(v, "s");
  const std::string full(kCap, 'f');
  ASSERT_EQ(write_now(v, *w, 0, full).value(), kCap);
  WriteLog wlog;
  ASSERT_TRUE(is_parked(v.write(*w, kCap, as_bytes("y"), 0, wlog.cb())));
  auto r = reader(v, "s");
  EXPECT_EQ(read_now(v, r, kCap).value(), full);
  ReadLog rlog;
  auto out = v.read(*r, r.off, 10, 77, rlog.cb(&r));
  if (is_parked(out)) v.arm(77);
  EXPECT_EQ(wlog.calls, 1);
  if (is_parked(out)) {
    EXPECT_EQ(rlog.calls, 1);
    EXPECT_EQ(rlog.data, "y");
  } else {
    EXPECT_EQ(to_string(std::get<0>(out).value()), "y");
  }
  v.release(std::move(w));
  v.release(std::move(r));
}

// Streams that are open but fully drained keep their last, partly used
// block, and it stays charged to the global budget. With enough such idle
// streams another stream's write waits although no unconsumed byte exists
// anywhere, and it waits until one of the idle streams gets more data or
// closes. docs/semantics.md promises that a parked write "waits until a reader
// drains"; here every reader has drained. 2 MiB is the smallest cap the
// CLI accepts.
TEST(Backpressure, DrainedIdleStreamsDoNotStarveOtherWriters) {
  const Limits limits{2 * MiB, 2 * MiB};
  Volume v(limits);
  std::vector<std::unique_ptr<Handle>> ws;
  std::vector<Consumer> rs;
  for (int i = 0; i < 8; ++i) {
    const std::string name = "idle" + std::to_string(i);
    ws.push_back(writer(v, name));
    rs.push_back(reader(v, name, kRootIno, O_NONBLOCK));
    Handle& w = *ws.back();
    Consumer& r = rs.back();
    std::uint64_t off = 0;
    // Each piece is written, read, and freed (by reading on) before the
    // next: the stream never holds more than 256 KiB.
    for (std::size_t n : {64 * KiB, 64 * KiB, 128 * KiB, 64 * KiB}) {
      const std::string data(n, 'i');
      ASSERT_EQ(write_now(v, w, off, data).value(), n);
      ASSERT_EQ(read_now(v, r, n).value().size(), n);
      ASSERT_EQ(read_now(v, r, 1).error(), EAGAIN);  // nothing left in it
      off += n;
    }
  }
  // Not one unconsumed byte in the volume.
  for (auto& r : rs) ASSERT_EQ(read_now(v, r, 1).error(), EAGAIN);

  auto w = writer(v, "late");
  WriteLog log;
  auto out = v.write(*w, 0, as_bytes("x"), 0, log.cb());
  EXPECT_FALSE(is_parked(out)) << "a 1-byte write waits with " << v.memory_used()
                               << " bytes charged and nothing buffered";

  // Clean up: closing the idle streams frees their blocks and, if the write
  // parked, lets it in.
  for (auto& h : ws) v.release(std::move(h));
  for (auto& r : rs) {
    EXPECT_EQ(read_now(v, r, 1).value(), "");
    v.release(std::move(r));
  }
  if (is_parked(out)) {
    EXPECT_EQ(log.calls, 1);
    EXPECT_EQ(log.n, 1u);
  }
  auto lr = reader(v, "late");
  EXPECT_EQ(read_now(v, lr, 10).value(), "x");
  v.release(std::move(w));
  EXPECT_EQ(read_now(v, lr, 10).value(), "");
  v.release(std::move(lr));
  EXPECT_EQ(v.memory_used(), 0u);
}

}  // namespace
}  // namespace capturefs::test
