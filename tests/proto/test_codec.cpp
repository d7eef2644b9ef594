// Unit tests of the protocol codec (src/proto): golden vectors shared with
// the Python codec, round trips of every frame type, decoding split
// anywhere, every error, early rejection, garbage.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <map>
#include <new>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "proto/codec.hpp"

using namespace capturefs::proto;
using Bytes = std::vector<std::byte>;

// ---- allocation tracking: the largest single allocation while enabled.
namespace {
std::atomic<bool> g_track{false};
std::atomic<std::size_t> g_largest{0};
}  // namespace

// GCC cannot see that these replacements pair malloc with free.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) {
  if (g_track.load(std::memory_order_relaxed)) {
    std::size_t cur = g_largest.load();
    while (n > cur && !g_largest.compare_exchange_weak(cur, n)) {
    }
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace {

// ---------------------------------------------------------------- helpers

Bytes from_hex(const std::string& hex) {
  Bytes out;
  int hi = -1;
  for (char c : hex) {
    int v;
    if (c >= '0' && c <= '9') v = c - '0';
    else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v = c - 'A' + 10;
    else continue;
    if (hi < 0) {
      hi = v;
    } else {
      out.push_back(static_cast<std::byte>(hi * 16 + v));
      hi = -1;
    }
  }
  EXPECT_EQ(hi, -1) << "odd number of hex digits in " << hex;
  return out;
}

Bytes str_bytes(std::string_view s) {
  Bytes b;
  for (char c : s) b.push_back(static_cast<std::byte>(c));
  return b;
}

Bytes enc(const Frame& f) {
  Bytes out;
  auto e = encode(f, out);
  EXPECT_FALSE(e) << frame_name(f) << ": " << (e ? e->message : "");
  return out;
}

/// The frames of one connection: each is encoded in the version of the
/// last hello among them (the STATUS record layout depends on it).
Bytes enc_all(const std::vector<Frame>& frames) {
  Bytes out;
  std::uint16_t version = kVersion;
  for (const auto& f : frames) {
    if (const auto* h = std::get_if<Hello>(&f)) version = std::min(h->version, kVersion);
    Bytes one;
    const auto e = encode(f, one, version);
    EXPECT_FALSE(e) << frame_name(f) << ": " << (e ? e->message : "");
    out.insert(out.end(), one.begin(), one.end());
  }
  return out;
}

struct Decoded {
  std::vector<Frame> frames;
  std::optional<Error> error;
  std::uint64_t consumed = 0;
};

/// Feeds `bytes` in slices of the sizes `split` returns, taking frames
/// after each slice, then calls finish().
template <class Split>
Decoded decode_split(Peer sender, const Bytes& bytes, Split split) {
  Decoder d(sender);
  Decoded r;
  std::size_t at = 0;
  while (at < bytes.size()) {
    const std::size_t n = std::min(bytes.size() - at, std::max<std::size_t>(1, split()));
    d.feed(std::span(bytes).subspan(at, n));
    at += n;
    while (auto f = d.next()) r.frames.push_back(std::move(*f));
  }
  r.error = d.finish();
  r.consumed = d.consumed();
  return r;
}
Decoded decode_whole(Peer sender, const Bytes& b) {
  return decode_split(sender, b, [&] { return b.size(); });
}
Decoded decode_bytewise(Peer sender, const Bytes& b) {
  return decode_split(sender, b, [] { return std::size_t{1}; });
}
Decoded decode_random(Peer sender, const Bytes& b, unsigned seed) {
  std::mt19937 rng(seed);
  return decode_split(sender, b, [&] { return std::size_t{rng() % 40}; });
}

const Hello kHello{};           // the highest version (3)
const Hello kHelloV1{1, 0};
constexpr std::int64_t kT0 = 1700000000123456789;
constexpr std::int64_t kSecond = 1000000000;

/// A version 1 connection: the hello, then the frames.
template <class... F>
std::vector<Frame> session(F&&... f) {
  return std::vector<Frame>{Frame{kHelloV1}, Frame{std::forward<F>(f)}...};
}
/// A version 2 connection.
template <class... F>
std::vector<Frame> session2(F&&... f) {
  return std::vector<Frame>{Frame{Hello{2, 0}}, Frame{std::forward<F>(f)}...};
}
/// A version 3 connection.
template <class... F>
std::vector<Frame> session3(F&&... f) {
  return std::vector<Frame>{Frame{Hello{3, 0}}, Frame{std::forward<F>(f)}...};
}

CommandStatus command(std::uint64_t id, std::uint32_t pid, CommandState state, std::uint8_t code, CommandInput input,
                      std::uint64_t bytes, std::int64_t started, std::int64_t ended, std::string path,
                      std::string note = "") {
  return CommandStatus{id, pid, state, code, input, bytes, started, ended, std::move(path), std::move(note)};
}

// The frames each "ok" vector of vectors.txt encodes.
std::map<std::string, std::vector<Frame>> expected_frames() {
  std::map<std::string, std::vector<Frame>> m;
  m["hello_client"] = session();
  m["hello_client_future"] = {Hello{7, 0x8001}};
  m["subscribe_glob"] = session(Subscribe{.patterns = {"*.log"}});
  m["subscribe_all_flags"] = session(Subscribe{
      .observe = true, .literal = true, .once = true, .nowait = true, .patterns = {"logs/\xff\xfe.txt", "[a-c]?/**"}});
  m["subscribe_cat"] = session(Subscribe{.literal = true, .once = true, .patterns = {"out/result.bin"}});
  m["subscribe_observe"] = session(Subscribe{.observe = true, .patterns = {"*"}});
  m["ack"] = session(Ack{7, 0x1000});
  m["ack_max"] = session(Ack{~0ULL, ~0ULL});
  m["status_request"] = session(StatusRequest{});
  m["client_session"] = session(Subscribe{.patterns = {"*.log"}}, Ack{1, 6}, StatusRequest{});
  m["hello_server"] = session();
  m["subscribed"] = session(Subscribed{});
  m["opened"] = session(Opened{1, 0, kT0, 4242, 1000, "build.log"});
  m["opened_reoffer"] = session(Opened{9, 65536, -1000000000, 0, 0, "dir/\x80\xff raw"});
  m["data"] = session(Data{1, 0, str_bytes("hello\n")});
  m["data_empty"] = session(Data{3, 12345, {}});
  m["renamed"] = session(Renamed{1, "archive/build.log"});
  m["closed_complete"] = session(Closed{1, 6, CloseStatus::complete, ""});
  m["closed_aborted"] = session(Closed{2, 1234, CloseStatus::aborted, "unlinked before it was fully delivered"});
  m["status_empty"] = session(StatusReply{});
  m["status_two"] = session(StatusReply{
      true,
      {StreamStatus{1, 4242, 1000, kT0, 1048576, 65536, 250000, StreamState::streaming, "build.log"},
       StreamStatus{5, 77, 0, kT0 + 5, 10, 0, 0, StreamState::held, "out/\xff" "bin"}}});
  m["error"] = session(Error{ErrorCode::bad_magic, "client hello: bad magic \xe2\x80\x94 \xc3\xa9"});
  m["error_unknown_code"] = session(Error{static_cast<ErrorCode>(999), ""});
  m["server_session"] = session(Subscribed{}, Opened{1, 0, kT0, 4242, 1000, "build.log"},
                                Data{1, 0, str_bytes("hello\n")}, Closed{1, 6, CloseStatus::complete, ""});
  // Version 2.
  m["hello_server_v2"] = session2();
  m["status_request_commands"] = session2(StatusRequest{.commands = true});
  m["status_request_commands_future"] = {Hello{7, 0}, StatusRequest{.commands = true}};
  m["commands_empty"] = session2(CommandsReply{});
  m["commands_four"] = session2(CommandsReply{{
      command(1, 4242, CommandState::exited, 3, CommandInput::complete, 5000, kT0, kT0 + kSecond, "dir/st.txt"),
      command(2, 4243, CommandState::killed, 9, CommandInput::cut_short, 262144, kT0, kT0 + 2 * kSecond, "big.bin",
              "command exited before reading all input"),
      command(7, 0, CommandState::not_started, 0, CommandInput::incomplete, 0, kT0, kT0, "x\xff.bin",
              "cannot start the command: pipe: Too many open files"),
      command(9, 4250, CommandState::running, 0, CommandInput::feeding, 65536, kT0, 0, "live.txt"),
  }});
  m["server_session_v2"] = session2(
      CommandsReply{{command(1, 4242, CommandState::exited, 0, CommandInput::complete, 6, kT0, kT0 + 1, "a.txt")}},
      StatusReply{});
  // Version 3.
  m["hello_server_v3"] = session3();
  {
    StreamStatus a{1, 4242, 1000, kT0, 3 << 20, 1 << 20, 250000, StreamState::streaming, "build.log", 1 << 20,
                   WaitReason::consumer};
    StreamStatus b{5, 77, 0, kT0 + 5, 10, 0, 0, StreamState::writing, "out/\xff" "bin", 0, WaitReason::spill_limit};
    m["status_v3"] = session3(StatusReply{false, {a, b}});
  }
  m["peek"] = session3(Peek{4096, "logs/build.log"});
  m["peeked"] = session3(Peeked{1, 4, 10, str_bytes("o\nwor")});
  m["peeked_none"] = session3(Peeked{});
  return m;
}

struct Vector {
  std::string name;
  Peer sender;
  std::string expect;
  Bytes bytes;
};

std::vector<Vector> load_vectors() {
  const char* src = std::getenv("CAPTUREFS_SRC");
  const std::string path = std::string(src ? src : ".") + "/tests/proto/vectors.txt";
  std::ifstream in(path);
  EXPECT_TRUE(in) << "cannot open " << path << " (set CAPTUREFS_SRC to the source tree)";
  std::vector<Vector> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    Vector v;
    std::string s, hex, part;
    ls >> v.name >> s >> v.expect;
    while (ls >> part) hex += part;
    EXPECT_TRUE(s == "c" || s == "s") << line;
    v.sender = s == "c" ? Peer::client : Peer::server;
    v.bytes = from_hex(hex);
    out.push_back(std::move(v));
  }
  return out;
}

std::string describe(const std::optional<Error>& e) {
  return e ? to_string(e->code) + ": " + e->message : "no error";
}

// ---------------------------------------------------------------- vectors

TEST(Vectors, EveryOkVectorEncodesAndDecodes) {
  const auto vectors = load_vectors();
  auto expected = expected_frames();
  ASSERT_GT(vectors.size(), 60u);
  std::size_t ok = 0;
  for (const auto& v : vectors) {
    if (v.expect != "ok") continue;
    ++ok;
    SCOPED_TRACE(v.name);
    auto it = expected.find(v.name);
    ASSERT_NE(it, expected.end()) << "no expected frames for vector " << v.name;
    EXPECT_EQ(enc_all(it->second), v.bytes);
    for (const auto& d : {decode_whole(v.sender, v.bytes), decode_bytewise(v.sender, v.bytes),
                          decode_random(v.sender, v.bytes, 7)}) {
      EXPECT_FALSE(d.error) << describe(d.error);
      EXPECT_EQ(d.frames, it->second);
      EXPECT_EQ(d.consumed, v.bytes.size());
    }
    expected.erase(it);
  }
  EXPECT_GT(ok, 20u);
  for (const auto& [name, frames] : expected) ADD_FAILURE() << "no vector named " << name;
}

TEST(Vectors, EveryErrorVectorFailsWithItsCode) {
  std::size_t n = 0;
  for (const auto& v : load_vectors()) {
    if (v.expect == "ok") continue;
    ++n;
    SCOPED_TRACE(v.name);
    for (const auto& d : {decode_whole(v.sender, v.bytes), decode_bytewise(v.sender, v.bytes),
                          decode_random(v.sender, v.bytes, 11)}) {
      ASSERT_TRUE(d.error) << "decoded without error";
      EXPECT_EQ(to_string(d.error->code), v.expect) << d.error->message;
      EXPECT_FALSE(d.error->message.empty());
      // The server sends it back as an ERROR frame: it must encode.
      Bytes out;
      EXPECT_FALSE(encode(*d.error, out));
    }
  }
  EXPECT_GT(n, 50u);
}

// ---------------------------------------------------------------- round trips

std::string big_path(std::size_t n, char fill = 'p') {
  std::string s(n, fill);
  s[0] = '\xff';  // not UTF-8: paths are bytes
  return s;
}

std::vector<Frame> client_samples() {
  std::vector<std::string> many;
  for (std::size_t i = 0; i < kMaxPatterns; ++i) many.push_back(big_path(kMaxPath, static_cast<char>('a' + i % 26)));
  return {
      Subscribe{.patterns = {"*"}},
      Subscribe{.observe = true, .patterns = {"a", "b/*", "[!x]?"}},
      Subscribe{.literal = true, .once = true, .nowait = true, .patterns = {"exact name with spaces"}},
      Subscribe{.patterns = many},
      Ack{0, 0},
      Ack{1, 1ULL << 40},
      Ack{~0ULL, ~0ULL},
      StatusRequest{},
      StatusRequest{.commands = true},
      Peek{1, "a"},
      Peek{static_cast<std::uint32_t>(kMaxPeek), big_path(kMaxPath)},
  };
}

std::vector<Frame> server_samples() {
  Bytes chunk(kMaxChunk);
  for (std::size_t i = 0; i < chunk.size(); ++i) chunk[i] = static_cast<std::byte>(i * 31 + 7);
  std::string reason;
  while (reason.size() + 2 <= kMaxText) reason += "\xc3\xa9";  // 2-byte UTF-8
  std::vector<StreamStatus> recs;
  for (int i = 0; i < 4; ++i)
    recs.push_back(StreamStatus{static_cast<std::uint64_t>(i + 1), 100u + static_cast<unsigned>(i), 1000,
                                kT0 + i, 1ULL << 33, 1ULL << 32, 12345, static_cast<StreamState>(i),
                                "s" + std::to_string(i)});
  return {
      Subscribed{},
      Opened{1, 0, 0, 0, 0, "a"},
      Opened{~0ULL, ~0ULL, INT64_MIN, ~0U, ~0U, big_path(kMaxPath)},
      Opened{2, 4096, INT64_MAX, 1, 2, "dir/sub/file.txt"},
      Data{1, 0, {}},
      Data{1, 5, str_bytes("x")},
      Data{~0ULL, 1ULL << 50, chunk},
      Renamed{1, "new/name"},
      Renamed{2, big_path(kMaxPath)},
      Closed{1, 0, CloseStatus::complete, ""},
      Closed{1, ~0ULL, CloseStatus::aborted, "shutdown"},
      Closed{1, 10, CloseStatus::aborted, reason},
      StatusReply{},
      StatusReply{true, recs},
      StatusReply{false, {StreamStatus{9, 1, 1, 1, 1, 1, 1, StreamState::draining, big_path(kMaxPath)}}},
      StatusReply{false, {StreamStatus{9, 1, 1, 1, 1, 1, 1, StreamState::held, "v3", ~0ULL, WaitReason::memory}}},
      Peeked{},
      Peeked{1, 0, 0, {}},
      Peeked{~0ULL, 1ULL << 40, ~0ULL, Bytes(kMaxPeek, std::byte{0x5a})},
      Error{ErrorCode::truncated, ""},
      Error{ErrorCode::internal, std::string(kMaxText, 'm')},
      Error{static_cast<ErrorCode>(0xFFFF), "future code"},
      CommandsReply{},
      CommandsReply{{command(1, 2, CommandState::exited, 255, CommandInput::complete, ~0ULL, INT64_MIN, INT64_MAX, "a"),
                     command(~0ULL, ~0U, CommandState::killed, 255, CommandInput::cut_short, 0, 0, 0,
                             big_path(kMaxPath), reason),
                     command(3, 0, CommandState::not_started, 0, CommandInput::incomplete, 0, 1, 2, "n", "why"),
                     command(4, 9, CommandState::unknown, 0, CommandInput::incomplete, 7, 1, 2, "u", "ECHILD"),
                     command(5, 9, CommandState::running, 0, CommandInput::feeding, 7, 1, 0, "r")}},
  };
}

void expect_round_trip(Peer sender, const std::vector<Frame>& samples) {
  for (const auto& f : samples) {
    SCOPED_TRACE(std::string(frame_name(f)));
    const Bytes body = enc(f);
    ASSERT_FALSE(body.empty());
    if (!std::holds_alternative<Hello>(f)) {
      EXPECT_LE(body.size(), kMaxFrame);
      const std::size_t len = (std::to_integer<std::size_t>(body[0]) << 24) |
                              (std::to_integer<std::size_t>(body[1]) << 16) |
                              (std::to_integer<std::size_t>(body[2]) << 8) | std::to_integer<std::size_t>(body[3]);
      EXPECT_EQ(len + kHeaderSize, body.size());
    }
    Bytes all = enc(kHello);
    all.insert(all.end(), body.begin(), body.end());
    const std::vector<Frame> want = {kHello, f};
    for (const auto& d : {decode_whole(sender, all), decode_random(sender, all, 3)}) {
      EXPECT_FALSE(d.error) << describe(d.error);
      EXPECT_EQ(d.frames, want);
    }
  }
}

TEST(RoundTrip, EveryClientFrame) { expect_round_trip(Peer::client, client_samples()); }
TEST(RoundTrip, EveryServerFrame) { expect_round_trip(Peer::server, server_samples()); }

TEST(RoundTrip, HelloBothWays) {
  for (const Hello h : {Hello{1, 0}, Hello{2, 0xFFFF}, Hello{0xFFFF, 1}}) {
    const auto d = decode_whole(Peer::client, enc(h));
    EXPECT_FALSE(d.error) << describe(d.error);
    EXPECT_EQ(d.frames, std::vector<Frame>{h});
  }
  for (const Hello h : {Hello{1, 0}, Hello{2, 0}}) {
    const auto d = decode_whole(Peer::server, enc(h));
    EXPECT_EQ(d.frames, std::vector<Frame>{h});
  }
}

TEST(RoundTrip, DataHeaderMatchesEncode) {
  const Bytes payload = str_bytes("some payload bytes");
  Bytes out;
  ASSERT_FALSE(encode_data_header(42, 1000, payload.size(), out));
  out.insert(out.end(), payload.begin(), payload.end());
  EXPECT_EQ(out, enc(Data{42, 1000, payload}));
  Bytes none;
  auto e = encode_data_header(1, 0, kMaxChunk + 1, none);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, ErrorCode::too_large);
  EXPECT_TRUE(none.empty());
}

// ---------------------------------------------------------------- splitting

std::vector<Frame> long_session(Peer sender) {
  std::vector<Frame> frames = {kHello};
  for (int round = 0; round < 3; ++round)
    for (auto& f : sender == Peer::client ? client_samples() : server_samples()) {
      if (auto* d = std::get_if<Data>(&f); d && d->bytes.size() > 4096) d->bytes.resize(4096);
      if (auto* s = std::get_if<Subscribe>(&f); s && s->patterns.size() > 2) s->patterns.resize(2);
      frames.push_back(std::move(f));
    }
  return frames;
}

TEST(Splitting, ByteByByteAndRandomSlices) {
  for (Peer sender : {Peer::client, Peer::server}) {
    const auto frames = long_session(sender);
    const Bytes all = enc_all(frames);
    const auto bytewise = decode_bytewise(sender, all);
    EXPECT_FALSE(bytewise.error) << describe(bytewise.error);
    EXPECT_EQ(bytewise.frames, frames);
    for (unsigned seed = 0; seed < 20; ++seed) {
      const auto d = decode_random(sender, all, seed);
      EXPECT_FALSE(d.error) << describe(d.error);
      EXPECT_EQ(d.frames, frames);
      EXPECT_EQ(d.consumed, all.size());
    }
  }
}

TEST(Splitting, EveryTwoWaySplitOfASession) {
  const std::vector<Frame> frames = session(Subscribed{}, Opened{1, 0, kT0, 1, 2, "p"}, Data{1, 0, str_bytes("abc")},
                                            Renamed{1, "q"}, Closed{1, 3, CloseStatus::complete, ""});
  const Bytes all = enc_all(frames);
  for (std::size_t cut = 0; cut <= all.size(); ++cut) {
    Decoder d(Peer::server);
    std::vector<Frame> got;
    d.feed(std::span(all).first(cut));
    while (auto f = d.next()) got.push_back(*f);
    d.feed(std::span(all).subspan(cut));
    while (auto f = d.next()) got.push_back(*f);
    EXPECT_FALSE(d.finish()) << "cut " << cut;
    EXPECT_EQ(got, frames) << "cut " << cut;
    EXPECT_EQ(d.buffered(), 0u);
  }
}

TEST(Splitting, ManyFramesInOneFeedThenDrain) {
  std::vector<Frame> frames = {kHello};
  for (std::uint64_t i = 0; i < 2000; ++i) frames.push_back(Data{i, i * 100, Bytes(100, std::byte{0x5a})});
  const Bytes all = enc_all(frames);
  Decoder d(Peer::server);
  d.feed(all);
  std::vector<Frame> got;
  while (auto f = d.next()) got.push_back(std::move(*f));
  EXPECT_EQ(got, frames);
  EXPECT_EQ(d.buffered(), 0u);
  EXPECT_EQ(d.consumed(), all.size());
}

TEST(Splitting, NoFrameBeforeItIsComplete) {
  const Bytes all = enc_all(session(Data{1, 0, Bytes(1000, std::byte{1})}));
  Decoder d(Peer::server);
  d.feed(std::span(all).first(kHelloSize));
  ASSERT_TRUE(d.next());  // the hello
  for (std::size_t i = kHelloSize; i + 1 < all.size(); ++i) {
    d.feed(std::span(all).subspan(i, 1));
    ASSERT_FALSE(d.next()) << "frame returned after " << i + 1 << " bytes";
    ASSERT_FALSE(d.error());
  }
  d.feed(std::span(all).last(1));
  EXPECT_TRUE(d.next());
  EXPECT_FALSE(d.next());
}

// ---------------------------------------------------------------- early errors

TEST(EarlyErrors, GigabyteLengthRejectedOnItsFourBytesWithoutAllocating) {
  Decoder d(Peer::client);
  d.feed(enc(kHello));
  ASSERT_TRUE(d.next());
  const Bytes len = from_hex("40000000");
  g_largest = 0;
  g_track = true;
  d.feed(len);
  g_track = false;
  ASSERT_TRUE(d.error()) << "not rejected on the length alone";
  EXPECT_EQ(d.error()->code, ErrorCode::too_large);
  EXPECT_NE(d.error()->message.find("1073741824"), std::string::npos) << d.error()->message;
  EXPECT_LT(g_largest.load(), 4096u) << "allocated " << g_largest.load() << " bytes";
  EXPECT_EQ(d.buffered(), 0u);
  EXPECT_FALSE(d.next());
}

TEST(EarlyErrors, GigabyteLengthRejectedEvenFedByteByByte) {
  Decoder d(Peer::server);
  d.feed(enc(kHello));
  ASSERT_TRUE(d.next());
  for (const char* b : {"40", "00", "00"}) {
    d.feed(from_hex(b));
    EXPECT_FALSE(d.error());
  }
  d.feed(from_hex("00"));
  ASSERT_TRUE(d.error());
  EXPECT_EQ(d.error()->code, ErrorCode::too_large);
}

TEST(EarlyErrors, BadMagicOnTheFirstWrongByte) {
  Decoder d(Peer::client);
  d.feed(str_bytes("CA"));
  EXPECT_FALSE(d.error());
  d.feed(str_bytes("X"));
  ASSERT_TRUE(d.error());
  EXPECT_EQ(d.error()->code, ErrorCode::bad_magic);
  EXPECT_NE(d.error()->message.find("byte 2"), std::string::npos) << d.error()->message;
}

TEST(EarlyErrors, TypeAndFlagsBeforeTheBody) {
  {
    Decoder d(Peer::client);
    d.feed(enc(kHello));
    ASSERT_TRUE(d.next());
    d.feed(from_hex("00001000 2a"));  // 4 KiB body announced, none sent
    ASSERT_TRUE(d.error());
    EXPECT_EQ(d.error()->code, ErrorCode::bad_type);
  }
  {
    Decoder d(Peer::client);
    d.feed(enc(kHello));
    ASSERT_TRUE(d.next());
    d.feed(from_hex("00001000 01 80"));
    ASSERT_TRUE(d.error());
    EXPECT_EQ(d.error()->code, ErrorCode::bad_flags);
  }
  {
    Decoder d(Peer::client);
    d.feed(enc(kHello));
    d.feed(from_hex("00000010 02 00"));  // a valid ACK header: wait for the body
    EXPECT_FALSE(d.error());
    EXPECT_TRUE(d.next());   // hello
    EXPECT_FALSE(d.next());  // ACK not complete
  }
}

TEST(EarlyErrors, ErrorIsFinal) {
  Decoder d(Peer::client);
  d.feed(str_bytes("nope"));
  ASSERT_TRUE(d.error());
  const Error first = *d.error();
  d.feed(enc_all(session(Ack{1, 2})));
  EXPECT_FALSE(d.next());
  EXPECT_EQ(*d.error(), first);
  EXPECT_EQ(*d.finish(), first);
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(EarlyErrors, ErrorAfterGoodFramesKeepsThem) {
  Bytes all = enc_all(session(Ack{1, 2}, Ack{1, 4}));
  const Bytes bad = from_hex("00000000 55");
  all.insert(all.end(), bad.begin(), bad.end());
  const auto d = decode_whole(Peer::client, all);
  EXPECT_EQ(d.frames, session(Ack{1, 2}, Ack{1, 4}));
  ASSERT_TRUE(d.error);
  EXPECT_EQ(d.error->code, ErrorCode::bad_type);
  EXPECT_EQ(d.consumed, all.size() - bad.size());
}

TEST(Finish, ReportsWhereTheConnectionStopped) {
  struct Case {
    Bytes bytes;
    const char* text;
  };
  const Bytes hello = enc(kHello);
  Bytes frame = enc_all(session(Data{1, 0, str_bytes("abcdef")}));
  frame.pop_back();
  Bytes header = hello;
  header.push_back(std::byte{0});
  for (const auto& c : {Case{Bytes(hello.begin(), hello.begin() + 3), "hello (3 of 8 bytes)"},
                        Case{header, "frame header (1 of 6 bytes)"},
                        Case{frame, "DATA frame (27 of 28 bytes)"}}) {
    Decoder d(Peer::server);
    d.feed(c.bytes);
    while (d.next()) {
    }
    ASSERT_TRUE(d.finish());
    EXPECT_EQ(d.error()->code, ErrorCode::truncated);
    EXPECT_NE(d.error()->message.find(c.text), std::string::npos) << d.error()->message;
  }
  Decoder empty(Peer::client);
  EXPECT_FALSE(empty.finish());
  Decoder pending(Peer::client);
  pending.feed(enc_all(session(Ack{1, 1})));
  EXPECT_FALSE(pending.finish()) << "complete frames are not truncated";
  EXPECT_TRUE(pending.next());
}

// ---------------------------------------------------------------- encoder errors

TEST(EncodeErrors, RefusesWhatTheDecoderWouldReject) {
  struct Case {
    Frame frame;
    ErrorCode code;
  };
  std::vector<std::string> too_many(kMaxPatterns + 1, "x");
  std::vector<StreamStatus> big;
  for (int i = 0; i < 300; ++i) big.push_back(StreamStatus{.path = big_path(kMaxPath)});
  std::vector<CommandStatus> big_commands(
      250, CommandStatus{.path = big_path(kMaxPath), .note = std::string(kMaxText, 'n')});
  const Case cases[] = {
      {Hello{0, 0}, ErrorCode::bad_version},
      {Subscribe{}, ErrorCode::bad_value},
      {Subscribe{.patterns = too_many}, ErrorCode::limit},
      {Subscribe{.patterns = {"ok", ""}}, ErrorCode::bad_value},
      {Subscribe{.patterns = {std::string("a\0b", 3)}}, ErrorCode::bad_value},
      {Subscribe{.patterns = {std::string(kMaxPath + 1, 'a')}}, ErrorCode::limit},
      {Opened{1, 0, 0, 0, 0, ""}, ErrorCode::bad_value},
      {Opened{1, 0, 0, 0, 0, std::string(kMaxPath + 1, 'a')}, ErrorCode::limit},
      {Renamed{1, std::string("\0", 1)}, ErrorCode::bad_value},
      {Data{1, 0, Bytes(kMaxChunk + 1)}, ErrorCode::too_large},
      {Closed{1, 0, CloseStatus::complete, "why"}, ErrorCode::bad_value},
      {Closed{1, 0, CloseStatus::aborted, ""}, ErrorCode::bad_value},
      {Closed{1, 0, CloseStatus::aborted, "\xc3\x28"}, ErrorCode::bad_value},
      {Closed{1, 0, CloseStatus::aborted, std::string(kMaxText + 1, 'r')}, ErrorCode::limit},
      {Closed{1, 0, static_cast<CloseStatus>(7), ""}, ErrorCode::bad_value},
      {StatusReply{false, {StreamStatus{.state = static_cast<StreamState>(4), .path = "a"}}}, ErrorCode::bad_value},
      {StatusReply{false, {StreamStatus{.path = ""}}}, ErrorCode::bad_value},
      {StatusReply{false, big}, ErrorCode::too_large},
      {Error{static_cast<ErrorCode>(0), "x"}, ErrorCode::bad_value},
      {Error{ErrorCode::busy, "\xed\xa0\x80"}, ErrorCode::bad_value},
      {Error{ErrorCode::busy, std::string(kMaxText + 1, 'e')}, ErrorCode::limit},
      {CommandsReply{{CommandStatus{.state = static_cast<CommandState>(5), .path = "a", .note = {}}}}, ErrorCode::bad_value},
      {CommandsReply{{CommandStatus{.state = CommandState::running, .code = 1, .path = "a", .note = {}}}}, ErrorCode::bad_value},
      {CommandsReply{{CommandStatus{.state = CommandState::not_started, .code = 127, .path = "a", .note = {}}}},
       ErrorCode::bad_value},
      {CommandsReply{{CommandStatus{.state = CommandState::killed, .code = 0, .path = "a", .note = {}}}}, ErrorCode::bad_value},
      {CommandsReply{{CommandStatus{.input = static_cast<CommandInput>(4), .path = "a", .note = {}}}}, ErrorCode::bad_value},
      {CommandsReply{{CommandStatus{.path = "", .note = {}}}}, ErrorCode::bad_value},
      {CommandsReply{{CommandStatus{.path = std::string(kMaxPath + 1, 'p'), .note = {}}}}, ErrorCode::limit},
      {CommandsReply{{CommandStatus{.path = "a", .note = "\xff"}}}, ErrorCode::bad_value},
      {CommandsReply{{CommandStatus{.path = "a", .note = std::string(kMaxText + 1, 'n')}}}, ErrorCode::limit},
      {CommandsReply{big_commands}, ErrorCode::too_large},
      {StatusReply{false, {StreamStatus{.path = "a", .wait = static_cast<WaitReason>(4)}}}, ErrorCode::bad_value},
      {Peek{0, "a"}, ErrorCode::bad_value},
      {Peek{static_cast<std::uint32_t>(kMaxPeek + 1), "a"}, ErrorCode::limit},
      {Peek{1, ""}, ErrorCode::bad_value},
      {Peeked{0, 1, 0, {}}, ErrorCode::bad_value},
      {Peeked{0, 0, 0, Bytes(1)}, ErrorCode::bad_value},
      {Peeked{1, 0, 0, Bytes(kMaxPeek + 1)}, ErrorCode::too_large},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(frame_name(c.frame)));
    Bytes out = str_bytes("keep");
    const auto e = encode(c.frame, out);
    ASSERT_TRUE(e) << "encoded an invalid frame";
    EXPECT_EQ(to_string(e->code), to_string(c.code)) << e->message;
    EXPECT_EQ(out, str_bytes("keep")) << "output changed on error";
  }
}

// ---------------------------------------------------------------- STATUS replies

TEST(StatusReplies, SplitAcrossFramesWithMore) {
  std::vector<StreamStatus> recs;
  for (std::uint64_t i = 0; i < 700; ++i)
    recs.push_back(StreamStatus{i + 1, 10, 20, kT0, i, i / 2, 7, StreamState::writing,
                                big_path(kMaxPath, static_cast<char>('a' + i % 26))});
  Bytes out = enc(kHello);
  ASSERT_FALSE(encode_status(recs, out));
  const auto d = decode_whole(Peer::server, out);
  ASSERT_FALSE(d.error) << describe(d.error);
  ASSERT_GT(d.frames.size(), 3u);  // hello + at least 3 parts (~2.9 MB of records)
  std::vector<StreamStatus> got;
  for (std::size_t i = 1; i < d.frames.size(); ++i) {
    const auto& part = std::get<StatusReply>(d.frames[i]);
    EXPECT_EQ(part.more, i + 1 < d.frames.size());
    got.insert(got.end(), part.streams.begin(), part.streams.end());
  }
  EXPECT_EQ(got, recs);
}

TEST(StatusReplies, EmptyListIsOneFrame) {
  Bytes out;
  ASSERT_FALSE(encode_status({}, out));
  EXPECT_EQ(out, from_hex("00000002 86 00 0000"));
}

TEST(StatusReplies, InvalidRecordEncodesNothing) {
  std::vector<StreamStatus> recs(3, StreamStatus{.path = "ok"});
  recs[2].path.clear();
  Bytes out;
  const auto e = encode_status(recs, out);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, ErrorCode::bad_value);
  EXPECT_NE(e->message.find("record 2"), std::string::npos) << e->message;
  EXPECT_TRUE(out.empty());
}

// ---------------------------------------------------------------- COMMANDS replies

TEST(CommandsReplies, SplitAcrossFramesWhenLarge) {
  std::vector<CommandStatus> recs;
  for (std::uint64_t i = 0; i < 400; ++i)
    recs.push_back(command(i + 1, 100 + static_cast<std::uint32_t>(i), CommandState::exited,
                           static_cast<std::uint8_t>(i % 256), CommandInput::complete, i * 1000, kT0, kT0 + 1,
                           big_path(kMaxPath, static_cast<char>('a' + i % 26)), std::string(i % 700, 'x')));
  Bytes out = enc(kHello);
  ASSERT_FALSE(encode_commands(recs, out));
  const auto d = decode_whole(Peer::server, out);
  ASSERT_FALSE(d.error) << describe(d.error);
  ASSERT_GT(d.frames.size(), 2u);  // hello + at least 2 parts (~1.7 MB of records)
  std::vector<CommandStatus> got;
  for (std::size_t i = 1; i < d.frames.size(); ++i) {
    const auto& part = std::get<CommandsReply>(d.frames[i]);
    EXPECT_FALSE(part.commands.empty());
    got.insert(got.end(), part.commands.begin(), part.commands.end());
  }
  EXPECT_EQ(got, recs);
}

TEST(CommandsReplies, NoneIsOneEmptyFrameAndAnInvalidRecordEncodesNothing) {
  Bytes out;
  ASSERT_FALSE(encode_commands({}, out));
  EXPECT_EQ(out, from_hex("00000002 88 00 0000"));
  std::vector<CommandStatus> recs(3, CommandStatus{.path = "ok", .note = {}});
  recs[1].state = CommandState::killed;  // signal 0
  Bytes none;
  const auto e = encode_commands(recs, none);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, ErrorCode::bad_value);
  EXPECT_NE(e->message.find("record 1"), std::string::npos) << e->message;
  EXPECT_TRUE(none.empty());
}

// ---------------------------------------------------------------- versions

TEST(Versions, TheConnectionVersionComesFromTheHello) {
  struct Case {
    Peer sender;
    std::uint16_t decoder_speaks, hello, connection;
  };
  for (const Case c : {Case{Peer::client, 2, 1, 1}, Case{Peer::client, 2, 2, 2}, Case{Peer::client, 2, 7, 2},
                       Case{Peer::client, 1, 7, 1}, Case{Peer::server, 2, 1, 1}, Case{Peer::server, 2, 2, 2}}) {
    Decoder d(c.sender, c.decoder_speaks);
    EXPECT_EQ(d.version(), 0u);
    d.feed(enc(Hello{c.hello, 0}));
    ASSERT_TRUE(d.next());
    EXPECT_EQ(d.version(), c.connection) << "hello " << c.hello << ", decoder " << c.decoder_speaks;
  }
}

TEST(Versions, AVersion1ClientRefusesAVersion2Server) {
  Decoder d(Peer::server, 1);  // a client that offered version 1
  d.feed(enc(Hello{2, 0}));
  ASSERT_TRUE(d.error());
  EXPECT_EQ(d.error()->code, ErrorCode::bad_version);
  EXPECT_NE(d.error()->message.find("speaks 1 to 1"), std::string::npos) << d.error()->message;
}

TEST(Versions, Version2FramesAndFlagsAreRefusedOnAVersion1Connection) {
  {
    Decoder d(Peer::server);
    d.feed(enc_all({kHelloV1, CommandsReply{}}));
    EXPECT_TRUE(d.next());
    EXPECT_FALSE(d.next());
    ASSERT_TRUE(d.error());
    EXPECT_EQ(d.error()->code, ErrorCode::bad_type);
    EXPECT_NE(d.error()->message.find("not in protocol version 1"), std::string::npos) << d.error()->message;
  }
  {
    Decoder d(Peer::client, 1);  // a server that speaks only version 1, reading a version 2 client
    d.feed(enc_all({kHello, StatusRequest{.commands = true}}));
    EXPECT_TRUE(d.next());
    EXPECT_FALSE(d.next());
    ASSERT_TRUE(d.error());
    EXPECT_EQ(d.error()->code, ErrorCode::bad_flags);
  }
  {
    // The same bytes on a version 2 connection are fine.
    const auto d = decode_whole(Peer::client, enc_all({Hello{2, 0}, StatusRequest{.commands = true}}));
    EXPECT_FALSE(d.error) << describe(d.error);
    EXPECT_EQ(d.frames, session2(StatusRequest{.commands = true}));
  }
}

TEST(Versions, StatusRecordsHaveSpilledAndWaitFromVersion3Only) {
  const StreamStatus r{1, 2, 3, kT0, 100, 50, 10, StreamState::writing, "x", 40, WaitReason::memory};
  for (const std::uint16_t v : {1, 2, 3}) {
    SCOPED_TRACE(v);
    const auto d = decode_whole(Peer::server, enc_all({Hello{v, 0}, StatusReply{false, {r}}}));
    ASSERT_FALSE(d.error) << describe(d.error);
    ASSERT_EQ(d.frames.size(), 2u);
    StreamStatus want = r;
    if (v < 3) {
      want.spilled = 0;  // not sent before version 3
      want.wait = WaitReason::none;
    }
    EXPECT_EQ(d.frames[1], (Frame{StatusReply{false, {want}}}));
  }
}

// ---------------------------------------------------------------- garbage

TEST(Garbage, RandomBytesNeverCrashAndErrorsAreSendable) {
  std::mt19937 rng(1234);
  const std::set<ErrorCode> decoding = {ErrorCode::bad_magic, ErrorCode::bad_version, ErrorCode::bad_type,
                                        ErrorCode::bad_flags, ErrorCode::too_large,   ErrorCode::truncated,
                                        ErrorCode::trailing,  ErrorCode::bad_value,   ErrorCode::limit};
  for (int i = 0; i < 3000; ++i) {
    const Peer sender = i % 2 ? Peer::client : Peer::server;
    Bytes b = i % 3 ? enc(kHello) : Bytes{};
    const std::size_t n = rng() % 200;
    for (std::size_t k = 0; k < n; ++k) b.push_back(static_cast<std::byte>(rng() % (i % 5 ? 256 : 8)));
    const auto whole = decode_whole(sender, b);
    const auto pieces = decode_random(sender, b, static_cast<unsigned>(i));
    EXPECT_EQ(whole.frames, pieces.frames);
    EXPECT_EQ(whole.error, pieces.error);
    if (whole.error) {
      EXPECT_TRUE(decoding.count(whole.error->code)) << describe(whole.error);
      Bytes out;
      EXPECT_FALSE(encode(*whole.error, out)) << describe(whole.error);
    }
    // Whatever decoded re-encodes to exactly the bytes it came from.
    EXPECT_EQ(enc_all(whole.frames), Bytes(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(whole.consumed)));
  }
}

TEST(Names, CodesAndFrames) {
  EXPECT_EQ(to_string(ErrorCode::bad_magic), "bad_magic");
  EXPECT_EQ(to_string(ErrorCode::internal), "internal");
  EXPECT_EQ(to_string(static_cast<ErrorCode>(999)), "error_999");
  EXPECT_EQ(frame_name(Hello{}), "HELLO");
  EXPECT_EQ(frame_name(StatusRequest{}), "STATUS_REQUEST");
  EXPECT_EQ(frame_name(StatusReply{}), "STATUS");
  EXPECT_EQ(frame_name(Error{}), "ERROR");
  EXPECT_EQ(frame_name(CommandsReply{}), "COMMANDS");
}

}  // namespace
