// The socket server (src/server) against a bare core::Volume: no FUSE, no
// mount. Streams are written through the Volume API; clients speak the
// protocol over a real Unix socket in a private temp dir.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <thread>

#include "core/volume.hpp"
#include "server/server.hpp"
#include "server/text.hpp"
#include "socket_client.hpp"
#include "temp_dir.hpp"

namespace capturefs::test {
namespace {

namespace fs = std::filesystem;
using core::kRootIno;
using proto::ErrorCode;

std::span<const std::byte> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}
std::string str(const std::vector<std::byte>& b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

/// A writer of one stream through the Volume API.
class Writer {
 public:
  Writer(core::Volume& v, const std::string& name) : v_(v) {
    auto r = v.create(kRootIno, name, 0644, O_WRONLY | O_CREAT, core::Caller{1000, 1000, 4242});
    if (!r) throw std::runtime_error("create " + name + ": errno " + std::to_string(r.error()));
    h_ = std::move(r->handle);
  }
  ~Writer() { close(); }
  void write(std::string_view s) {
    auto out = v_.write(*h_, off_, bytes_of(s), 0, [](core::Result<std::size_t>) {});
    auto* r = std::get_if<core::Result<std::size_t>>(&out);
    if (r == nullptr) throw std::runtime_error("the write parked");
    if (!*r) throw std::runtime_error("write: errno " + std::to_string(r->error()));
    off_ += s.size();
  }
  void close() {
    if (h_) v_.release(std::move(h_));
  }

 private:
  core::Volume& v_;
  std::unique_ptr<core::Handle> h_;
  std::uint64_t off_ = 0;
};

bool has_name(core::Volume& v, const std::string& name) {
  auto l = v.list(kRootIno);
  if (!l) return false;
  for (const auto& e : *l)
    if (e.name == name) return true;
  return false;
}

bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds limit = 10s) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(2ms);
  }
  return cond();
}

proto::Subscribe sub_of(std::vector<std::string> patterns, bool literal = false, bool once = false,
                        bool nowait = false, bool observe = false) {
  proto::Subscribe s;
  s.patterns = std::move(patterns);
  s.literal = literal;
  s.once = once;
  s.nowait = nowait;
  s.observe = observe;
  return s;
}

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override { start(); }
  void TearDown() override {
    if (srv) srv->stop();
  }
  void start(server::ServerOptions opt = {}) {
    if (srv) srv->stop();
    std::string err;
    auto l = server::Listener::open(sock, &err);
    ASSERT_TRUE(l) << err;
    srv = std::make_unique<server::Server>(vol, std::move(l), opt);
    srv->start();
  }

  TempDir dir{"capturefs-server"};
  std::string sock = dir.at("s.sock");
  core::Volume vol{core::Limits{}};
  std::unique_ptr<server::Server> srv;
};

// ---------------------------------------------------------------- listener

TEST(Listener, IsCreatedWithMode0600AndRemovedOnClose) {
  TempDir d("capturefs-server");
  std::string err;
  auto l = server::Listener::open(d.at("a.sock"), &err);
  ASSERT_TRUE(l) << err;
  struct stat st{};
  ASSERT_EQ(::lstat(d.at("a.sock").c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  l->close();
  EXPECT_NE(::lstat(d.at("a.sock").c_str(), &st), 0);
}

TEST(Listener, ReplacesAStaleSocketAndRefusesALiveOne) {
  TempDir d("capturefs-server");
  std::string err;
  auto first = server::Listener::open(d.at("a.sock"), &err);
  ASSERT_TRUE(first) << err;
  // Live: somebody listens there.
  auto second = server::Listener::open(d.at("a.sock"), &err);
  EXPECT_FALSE(second);
  EXPECT_NE(err.find(d.at("a.sock")), std::string::npos) << err;
  EXPECT_NE(err.find("in use"), std::string::npos) << err;
  // Stale: the socket file stays but nobody listens (a daemon was killed).
  ::close(first->fd());  // leaves the path behind, like a SIGKILLed daemon
  auto third = server::Listener::open(d.at("a.sock"), &err);
  ASSERT_TRUE(third) << err;
  const int c = connect_unix(d.at("a.sock"));
  EXPECT_GE(c, 0) << std::strerror(errno);
  if (c >= 0) ::close(c);
}

TEST(Listener, RefusesAFileThatIsNotASocketAndOverlongPaths) {
  TempDir d("capturefs-server");
  std::ofstream(d.at("file")) << "keep me";
  std::string err;
  EXPECT_FALSE(server::Listener::open(d.at("file"), &err));
  EXPECT_NE(err.find("not a socket"), std::string::npos) << err;
  EXPECT_TRUE(fs::exists(d.at("file")));
  EXPECT_FALSE(server::Listener::open(d.at(std::string(200, 'x')), &err));
  EXPECT_NE(err.find("too long"), std::string::npos) << err;
}

// ---------------------------------------------------------------- consuming

TEST_F(ServerTest, HelloThenSubscribedThenAStreamAndItsNameGoesAfterTheFinalAck) {
  ProtoClient c(sock);
  c.send(sub_of({"*.log"}));
  auto h = c.next();
  ASSERT_TRUE(h && std::holds_alternative<proto::Hello>(*h));
  EXPECT_EQ(std::get<proto::Hello>(*h), (proto::Hello{proto::kVersion, 0}));
  c.expect<proto::Subscribed>();

  Writer other(vol, "b.txt");  // does not match
  Writer w(vol, "build.log");
  w.write("hello\n");
  auto o = c.expect<proto::Opened>();
  EXPECT_EQ(o.path, "build.log");
  EXPECT_EQ(o.offset, 0u);
  EXPECT_EQ(o.pid, 4242u);
  EXPECT_EQ(o.uid, 1000u);
  EXPECT_GT(o.time_ns, 0);
  auto d = c.expect<proto::Data>();
  EXPECT_EQ(d.id, o.id);
  EXPECT_EQ(d.offset, 0u);
  EXPECT_EQ(str(d.bytes), "hello\n");
  w.write("world\n");
  w.close();
  auto d2 = c.expect<proto::Data>();
  EXPECT_EQ(d2.offset, 6u);
  auto cl = c.expect<proto::Closed>();
  EXPECT_EQ(cl.total, 12u);
  EXPECT_EQ(cl.status, proto::CloseStatus::complete);
  EXPECT_TRUE(has_name(vol, "build.log"));  // not acknowledged yet
  c.send(proto::Ack{o.id, 12});
  EXPECT_TRUE(eventually([&] { return !has_name(vol, "build.log"); }));
  EXPECT_TRUE(has_name(vol, "b.txt"));
}

TEST_F(ServerTest, ADisconnectHandsTheUnacknowledgedRestToTheNextConsumer) {
  std::uint64_t id = 0;
  {
    ProtoClient a(sock);
    a.send(sub_of({"*"}));
    a.expect<proto::Subscribed>();
    Writer w(vol, "data.bin");
    w.write("0123456789");
    auto o = a.expect<proto::Opened>();
    id = o.id;
    auto d = a.expect<proto::Data>();
    ASSERT_EQ(str(d.bytes), "0123456789");
    a.send(proto::Ack{id, 4});  // processed "0123"
    // A STATUS round trip: the ACK above is handled before the reply.
    a.send(proto::StatusRequest{});
    a.expect<proto::StatusReply>();
    w.write("abc");
    w.close();
  }  // a disconnects
  ProtoClient b(sock);
  b.send(sub_of({"*"}));
  b.expect<proto::Subscribed>();
  auto o = b.expect<proto::Opened>();
  EXPECT_EQ(o.id, id);
  EXPECT_EQ(o.offset, 4u);
  std::string got;
  for (;;) {
    auto f = b.next();
    ASSERT_TRUE(f);
    if (auto* d = std::get_if<proto::Data>(&*f)) {
      EXPECT_EQ(d->offset, 4 + got.size());
      got += str(d->bytes);
    } else if (auto* cl = std::get_if<proto::Closed>(&*f)) {
      EXPECT_EQ(cl->total, 13u);
      break;
    }
  }
  EXPECT_EQ(got, "456789abc");
  b.send(proto::Ack{id, 13});
  EXPECT_TRUE(eventually([&] { return !has_name(vol, "data.bin"); }));
}

TEST_F(ServerTest, AnAckBeyondWhatWasSentIsBadAckAndTheStreamGoesOn) {
  ProtoClient a(sock);
  a.send(sub_of({"*"}));
  a.expect<proto::Subscribed>();
  Writer w(vol, "x");
  w.write("abc");
  auto o = a.expect<proto::Opened>();
  a.expect<proto::Data>();
  a.send(proto::Ack{o.id, 4});
  auto e = a.expect_error();
  EXPECT_EQ(e.code, ErrorCode::bad_ack);
  EXPECT_NE(e.message.find("beyond the 3 bytes sent"), std::string::npos) << e.message;
  // Acks for streams the connection does not hold are ignored, not errors.
  ProtoClient b(sock);
  b.send(sub_of({"*"}));
  b.expect<proto::Subscribed>();
  b.send(proto::Ack{999999, 5});
  auto o2 = b.expect<proto::Opened>();
  EXPECT_EQ(o2.id, o.id);
  EXPECT_EQ(o2.offset, 0u);
  EXPECT_EQ(str(b.expect<proto::Data>().bytes), "abc");
}

TEST_F(ServerTest, TwoConsumersShareTheStreamsAndNoneGetsOneTwice) {
  ProtoClient a(sock), b(sock);
  a.send(sub_of({"job*"}));
  b.send(sub_of({"*"}));
  a.expect<proto::Subscribed>();
  b.expect<proto::Subscribed>();
  std::vector<std::unique_ptr<Writer>> ws;
  for (int i = 0; i < 6; ++i) {
    ws.push_back(std::make_unique<Writer>(vol, "job" + std::to_string(i)));
    ws.back()->write("x");
    ws.back()->close();
  }
  // Each gets whole streams; STATUS is a barrier for the OPENED frames.
  auto collect = [](ProtoClient& c) {
    std::set<std::string> names;
    c.send(proto::StatusRequest{});
    for (;;) {
      auto f = c.next();
      if (auto* o = std::get_if<proto::Opened>(&*f)) names.insert(o->path);
      if (auto* s = std::get_if<proto::StatusReply>(&*f); s && !s->more) break;
    }
    return names;
  };
  auto na = collect(a), nb = collect(b);
  EXPECT_FALSE(na.empty());
  EXPECT_FALSE(nb.empty());
  EXPECT_EQ(na.size() + nb.size(), 6u);
  for (const auto& n : na) EXPECT_FALSE(nb.contains(n)) << n;
}

TEST_F(ServerTest, LateSubscriberGetsStreamsWrittenBefore) {
  {
    Writer w(vol, "early.txt");
    w.write("early");
  }
  ProtoClient c(sock);
  c.send(sub_of({"early.txt"}, /*literal=*/true));
  c.expect<proto::Subscribed>();
  auto o = c.expect<proto::Opened>();
  EXPECT_EQ(str(c.expect<proto::Data>().bytes), "early");
  EXPECT_EQ(c.expect<proto::Closed>().total, 5u);
  c.send(proto::Ack{o.id, 5});
  EXPECT_TRUE(eventually([&] { return !has_name(vol, "early.txt"); }));
}

TEST_F(ServerTest, NowaitSaysNotFoundOrBusy) {
  {
    ProtoClient c(sock);
    c.send(sub_of({"missing"}, true, true, true));
    auto e = c.expect_error();
    EXPECT_EQ(e.code, ErrorCode::not_found);
    EXPECT_EQ(e.message, "no stream matches");
  }
  Writer w(vol, "taken");
  w.write("x");  // OPENED comes with the first bytes
  ProtoClient holder(sock);
  holder.send(sub_of({"taken"}, true, true, true));
  holder.expect<proto::Subscribed>();
  holder.expect<proto::Opened>();
  ProtoClient c(sock);
  c.send(sub_of({"taken"}, true, true, true));
  EXPECT_EQ(c.expect_error().code, ErrorCode::busy);
  // A glob pattern is not a literal: "t*" is not the name "t*".
  ProtoClient g(sock);
  g.send(sub_of({"t*"}, true, true, true));
  EXPECT_EQ(g.expect_error().code, ErrorCode::not_found);
}

TEST_F(ServerTest, OnceTakesOneStreamAndTheNextOneWithTheSameNameStaysForOthers) {
  ProtoClient c(sock);
  c.send(sub_of({"out"}, true, true, false));
  c.expect<proto::Subscribed>();
  {
    Writer w(vol, "out");
    w.write("one");
  }
  auto o = c.expect<proto::Opened>();
  c.expect<proto::Data>();
  c.expect<proto::Closed>();
  c.send(proto::Ack{o.id, 3});
  ASSERT_TRUE(eventually([&] { return !has_name(vol, "out"); }));
  {
    Writer w(vol, "out");  // same name, a new stream
    w.write("two");
  }
  // The connection is still open (STATUS works) and gets nothing more.
  c.send(proto::StatusRequest{});
  auto st = c.expect<proto::StatusReply>();
  ASSERT_EQ(st.streams.size(), 1u);
  EXPECT_EQ(st.streams[0].state, proto::StreamState::held);
  ProtoClient d(sock);
  d.send(sub_of({"out"}, true, true, true));
  d.expect<proto::Subscribed>();
  EXPECT_EQ(d.expect<proto::Opened>().offset, 0u);
  EXPECT_EQ(str(d.expect<proto::Data>().bytes), "two");
}

TEST_F(ServerTest, AnAbortedStreamClosesWithAReason) {
  ProtoClient c(sock);
  c.send(sub_of({"*"}));
  c.expect<proto::Subscribed>();
  Writer w(vol, "gone");
  w.write("partial");
  c.expect<proto::Opened>();
  c.expect<proto::Data>();
  ASSERT_TRUE(vol.unlink(kRootIno, "gone"));
  auto cl = c.expect<proto::Closed>();
  EXPECT_EQ(cl.status, proto::CloseStatus::aborted);
  EXPECT_FALSE(cl.reason.empty());
}

TEST_F(ServerTest, StatusListsLiveStreamsWithTheirCounters) {
  ProtoClient c(sock);
  c.send(proto::StatusRequest{});
  auto empty = c.expect<proto::StatusReply>();
  EXPECT_TRUE(empty.streams.empty());
  EXPECT_FALSE(empty.more);

  Writer idle(vol, "idle");
  idle.write("12345");
  ProtoClient s(sock);
  s.send(sub_of({"busy"}));
  s.expect<proto::Subscribed>();
  Writer busy(vol, "busy");
  busy.write("abcdefgh");
  auto o = s.expect<proto::Opened>();
  s.expect<proto::Data>();
  s.send(proto::Ack{o.id, 3});
  s.send(proto::StatusRequest{});
  auto st = s.expect<proto::StatusReply>();
  ASSERT_EQ(st.streams.size(), 2u);
  EXPECT_EQ(st.streams[0].path, "idle");
  EXPECT_EQ(st.streams[0].state, proto::StreamState::writing);
  EXPECT_EQ(st.streams[0].written, 5u);
  EXPECT_EQ(st.streams[0].pid, 4242u);
  EXPECT_EQ(st.streams[1].path, "busy");
  EXPECT_EQ(st.streams[1].state, proto::StreamState::streaming);
  EXPECT_EQ(st.streams[1].written, 8u);
  EXPECT_EQ(st.streams[1].delivered, 8u);  // handed to the consumer (docs/protocol.md §4 STATUS)
}

// ---------------------------------------------------------------- commands (version 2)

proto::CommandStatus cmd(std::uint64_t id, std::string path, proto::CommandState state, std::uint8_t code,
                         std::string note = "") {
  proto::CommandStatus c;
  c.id = id;
  c.pid = state == proto::CommandState::not_started ? 0 : 1000 + static_cast<std::uint32_t>(id);
  c.state = state;
  c.code = code;
  c.input = state == proto::CommandState::running ? proto::CommandInput::feeding : proto::CommandInput::complete;
  c.bytes = 10 * id;
  c.started_ns = 1700000000000000000 + static_cast<std::int64_t>(id);
  c.ended_ns = state == proto::CommandState::running ? 0 : c.started_ns + 5;
  c.path = std::move(path);
  c.note = std::move(note);
  return c;
}

/// Sends STATUS_REQUEST (asking for commands if `commands`) and collects
/// the reply: the COMMANDS frames (how many, and their records) and the
/// streams of the STATUS parts.
struct Reply {
  std::size_t commands_frames = 0;
  std::vector<proto::CommandStatus> commands;
  std::vector<proto::StreamStatus> streams;
};
Reply status_reply(ProtoClient& c, bool commands) {
  c.send(proto::StatusRequest{.commands = commands});
  Reply r;
  for (;;) {
    auto f = c.next();
    if (!f) throw std::runtime_error("EOF inside a STATUS reply");
    if (std::holds_alternative<proto::Hello>(*f)) continue;
    if (auto* cm = std::get_if<proto::CommandsReply>(&*f)) {
      EXPECT_TRUE(r.streams.empty()) << "COMMANDS after a STATUS part";
      ++r.commands_frames;
      r.commands.insert(r.commands.end(), cm->commands.begin(), cm->commands.end());
      continue;
    }
    auto* st = std::get_if<proto::StatusReply>(&*f);
    if (st == nullptr) throw std::runtime_error("unexpected " + std::string(proto::frame_name(*f)));
    r.streams.insert(r.streams.end(), st->streams.begin(), st->streams.end());
    if (!st->more) return r;
  }
}

TEST_F(ServerTest, AVersion2ClientThatAsksGetsTheCommandsBeforeTheStreams) {
  std::atomic<int> calls{0};
  server::ServerOptions opt;
  opt.commands = [&] {
    ++calls;
    return std::vector<proto::CommandStatus>{
        cmd(1, "dir/st.txt", proto::CommandState::exited, 3),
        cmd(2, "kill.txt", proto::CommandState::killed, 9),
        cmd(3, std::string(proto::kMaxPath + 1, 'x'), proto::CommandState::exited, 0),  // not sendable: left out
        cmd(4, "bad note", proto::CommandState::not_started, 0, "cannot start: \xff\x1b[31m"),
        cmd(5, "long note", proto::CommandState::unknown, 0, std::string(3000, 'n')),
        cmd(6, "live.txt", proto::CommandState::running, 0),
    };
  };
  start(opt);
  Writer w(vol, "a.log");
  w.write("abc");

  ProtoClient c(sock);
  const Reply r = status_reply(c, /*commands=*/true);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(r.commands_frames, 1u);
  ASSERT_EQ(r.commands.size(), 5u);
  EXPECT_EQ(r.commands[0], cmd(1, "dir/st.txt", proto::CommandState::exited, 3));
  EXPECT_EQ(r.commands[1], cmd(2, "kill.txt", proto::CommandState::killed, 9));
  EXPECT_EQ(r.commands[2].path, "bad note");
  EXPECT_EQ(r.commands[2].note, "cannot start: \\xff\\x1b[31m");  // made UTF-8, escaped
  EXPECT_EQ(r.commands[3].path, "long note");
  EXPECT_EQ(r.commands[3].note.size(), proto::kMaxText);
  EXPECT_EQ(r.commands[4], cmd(6, "live.txt", proto::CommandState::running, 0));
  ASSERT_EQ(r.streams.size(), 1u);
  EXPECT_EQ(r.streams[0].path, "a.log");

  // Not asked: no COMMANDS (and the provider is not called).
  const Reply plain = status_reply(c, /*commands=*/false);
  EXPECT_EQ(plain.commands_frames, 0u);
  EXPECT_EQ(plain.streams.size(), 1u);
  EXPECT_EQ(calls.load(), 1);
}

TEST_F(ServerTest, AVersion1ClientGetsVersion1AndNeverACommandsFrame) {
  server::ServerOptions opt;
  opt.commands = [] { return std::vector<proto::CommandStatus>{cmd(1, "a", proto::CommandState::exited, 0)}; };
  start(opt);
  {
    ProtoClient v1(sock, /*hello=*/true, /*version=*/1);
    auto h = v1.next();
    ASSERT_TRUE(h && std::holds_alternative<proto::Hello>(*h));
    EXPECT_EQ(std::get<proto::Hello>(*h), (proto::Hello{1, 0}));
    const Reply r = status_reply(v1, /*commands=*/false);
    EXPECT_EQ(r.commands_frames, 0u);
  }
  {
    // Asking anyway, on a version 1 connection, is a flag version 1 does not have.
    ProtoClient v1(sock, /*hello=*/true, /*version=*/1);
    v1.send(proto::StatusRequest{.commands = true});
    const proto::Error e = v1.expect_error();
    EXPECT_EQ(e.code, ErrorCode::bad_flags);
    EXPECT_NE(e.message.find("protocol version 1"), std::string::npos) << e.message;
  }
  {
    // A client from the future speaks the daemon's highest version here.
    ProtoClient future(sock, /*hello=*/false);
    future.send(proto::Hello{9, 0});
    auto h = future.next();
    ASSERT_TRUE(h && std::holds_alternative<proto::Hello>(*h));
    EXPECT_EQ(std::get<proto::Hello>(*h), (proto::Hello{proto::kVersion, 0}));
  }
}

TEST_F(ServerTest, ADaemonWithoutCommandsSendsNoCommandsFrame) {
  ProtoClient c(sock);
  const Reply r = status_reply(c, /*commands=*/true);
  EXPECT_EQ(r.commands_frames, 0u);
  EXPECT_TRUE(r.streams.empty());
}

TEST_F(ServerTest, ARefusalIsReadableByAVersion1Client) {
  server::ServerOptions opt;
  opt.max_connections = 1;
  start(opt);
  ProtoClient first(sock);
  first.send(proto::StatusRequest{});
  first.expect<proto::StatusReply>();  // it is being served
  // A version 1 client's decoder; it sends nothing (the refusal does not
  // wait for a hello, and a send could meet the closed socket).
  ProtoClient v1(sock, /*hello=*/false, /*version=*/1);
  auto h = v1.next();
  ASSERT_TRUE(h && std::holds_alternative<proto::Hello>(*h));
  EXPECT_EQ(std::get<proto::Hello>(*h), (proto::Hello{1, 0}));
  const proto::Error e = v1.expect_error();
  EXPECT_EQ(e.code, ErrorCode::internal);
  EXPECT_NE(e.message.find("too many connections"), std::string::npos) << e.message;
}

// ---------------------------------------------------------------- observing

TEST_F(ServerTest, AnObserverSeesExistingAndNewStreamsRenamesAndEndsAndConsumesNothing) {
  Writer before(vol, "before.log");
  before.write("12");
  ProtoClient c(sock);
  c.send(sub_of({"*.log"}, false, false, false, /*observe=*/true));
  c.expect<proto::Subscribed>();
  auto o1 = c.expect<proto::Opened>();
  EXPECT_EQ(o1.path, "before.log");
  EXPECT_EQ(o1.offset, 2u);  // bytes written so far

  Writer nw(vol, "new.tmp");  // does not match yet
  nw.write("abc");
  ASSERT_TRUE(vol.rename(kRootIno, "new.tmp", kRootIno, "new.log", 0));
  auto o2 = c.expect<proto::Opened>();
  EXPECT_EQ(o2.path, "new.log");
  EXPECT_EQ(o2.offset, 3u);
  ASSERT_TRUE(vol.rename(kRootIno, "new.log", kRootIno, "moved.log", 0));
  auto r = c.expect<proto::Renamed>();
  EXPECT_EQ(r.id, o2.id);
  EXPECT_EQ(r.path, "moved.log");
  ASSERT_TRUE(vol.unlink(kRootIno, "moved.log"));
  auto cl = c.expect<proto::Closed>();
  EXPECT_EQ(cl.id, o2.id);
  EXPECT_EQ(cl.status, proto::CloseStatus::aborted);
  // Nothing was consumed: before.log is still there, unread.
  EXPECT_TRUE(has_name(vol, "before.log"));
  c.send(proto::Ack{o1.id, 1});
  EXPECT_EQ(c.expect_error().code, ErrorCode::bad_state);
}

// ---------------------------------------------------------------- bad input

TEST_F(ServerTest, GarbageGetsHelloAndBadMagicAndTheServerServesOthers) {
  ProtoClient g(sock, /*hello=*/false);
  g.send_raw("GET / HTTP/1.0\r\n\r\n");
  auto h = g.next();
  ASSERT_TRUE(h && std::holds_alternative<proto::Hello>(*h));
  EXPECT_EQ(g.expect_error().code, ErrorCode::bad_magic);

  ProtoClient big(sock);
  big.send_raw(std::string("\x40\x00\x00\x00\x01\x00", 6));  // 1 GiB length prefix
  auto e = big.expect_error();
  EXPECT_EQ(e.code, ErrorCode::too_large);
  EXPECT_NE(e.message.find("1073741824"), std::string::npos) << e.message;

  ProtoClient trunc(sock);
  trunc.send_raw(std::string("\x00\x00\x00\x10\x02\x00\x00\x00", 8));  // ACK cut short
  trunc.shut_wr();
  EXPECT_EQ(trunc.expect_error().code, ErrorCode::truncated);

  ProtoClient wrong(sock);
  wrong.send(proto::Subscribed{});  // a server frame from a client
  EXPECT_EQ(wrong.expect_error().code, ErrorCode::bad_type);

  ProtoClient state(sock);
  state.send(proto::Ack{1, 1});
  EXPECT_EQ(state.expect_error().code, ErrorCode::bad_state);

  ProtoClient twice(sock);
  twice.send(sub_of({"a"}));
  twice.send(sub_of({"b"}));
  twice.expect<proto::Subscribed>();
  EXPECT_EQ(twice.expect_error().code, ErrorCode::bad_state);

  ProtoClient fine(sock);
  fine.send(proto::StatusRequest{});
  fine.expect<proto::StatusReply>();
}

TEST_F(ServerTest, AClientThatSendsNoHelloIsDropped) {
  server::ServerOptions opt;
  opt.handshake_timeout = 200ms;
  start(opt);
  ProtoClient idle(sock, /*hello=*/false);
  auto e = idle.expect_error(10s);
  EXPECT_EQ(e.code, ErrorCode::truncated);
  // After the hello, an idle connection stays: nothing arrives (no ERROR,
  // no EOF) for twice the handshake timeout.
  ProtoClient ok(sock);
  auto h = ok.next();
  ASSERT_TRUE(h && std::holds_alternative<proto::Hello>(*h));
  pollfd p{ok.fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 400), 0);
  ok.send(proto::StatusRequest{});
  ok.expect<proto::StatusReply>();
}

TEST_F(ServerTest, StopEndsConnectionsWithShutdownAndRemovesTheSocket) {
  ProtoClient c(sock);
  c.send(sub_of({"*"}));
  c.expect<proto::Subscribed>();
  Writer w(vol, "long");
  w.write("abc");
  auto o = c.expect<proto::Opened>();
  c.expect<proto::Data>();
  srv->stop();
  auto cl = c.expect<proto::Closed>();
  EXPECT_EQ(cl.id, o.id);
  EXPECT_EQ(cl.status, proto::CloseStatus::aborted);
  EXPECT_EQ(cl.reason, "shutdown");
  EXPECT_EQ(c.expect_error().code, ErrorCode::shutdown);
  EXPECT_FALSE(fs::exists(sock));
  EXPECT_TRUE(has_name(vol, "long"));  // the stream stays in the volume
}

// ---------------------------------------------------------------- text helpers

TEST(Text, JsonStringEscapesControlsAndInvalidUtf8) {
  EXPECT_EQ(server::json_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(server::json_string("line\nbreak\t\x01\x7f"), "\"line\\nbreak\\t\\u0001\\u007f\"");
  EXPECT_EQ(server::json_string("caf\xc3\xa9"), "\"caf\xc3\xa9\"");         // valid UTF-8 kept
  EXPECT_EQ(server::json_string("bad\xff\xc3"), "\"bad\\u00ff\\u00c3\"");  // invalid bytes
  EXPECT_EQ(server::json_string("\xed\xa0\x80"), "\"\\u00ed\\u00a0\\u0080\"");  // a surrogate is not UTF-8
  EXPECT_EQ(server::json_path_fields("ok"), "\"path\":\"ok\"");
  EXPECT_EQ(server::json_path_fields("a\xff"), "\"path\":\"a\\u00ff\",\"path_base64\":\"Yf8=\"");
  EXPECT_EQ(server::base64("foobar"), "Zm9vYmFy");
  EXPECT_EQ(server::base64("fo"), "Zm8=");
  EXPECT_EQ(server::printable("a\nb\xff\\"), "a\\nb\\xff\\\\");
  EXPECT_EQ(server::iso_time(1700000000123456789LL), "2023-11-14T22:13:20.123456789Z");
  EXPECT_EQ(server::fit_text("h\xc3\xa9llo", 4), "h...");
}

}  // namespace
}  // namespace capturefs::test
