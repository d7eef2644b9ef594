// libFuzzer target for the protocol decoder (src/proto).
//
// Each input is a connection's bytes. It is decoded as a client's and as a
// server's, both as given and after a valid hello of each protocol version
// (1, 2 and 3), each time fed whole, one byte at a time and in input-derived
// slices. Any crash, sanitizer report
// or broken invariant is a finding:
//   - the three feedings give the same frames, the same error, the same
//     number of bytes consumed;
//   - the frames re-encode to exactly the bytes they were decoded from
//     (the encoding is canonical, and encode() accepts all that decodes);
//   - an error has a decoding code and a message that fits an ERROR frame;
//   - without an error, finish() fails exactly when a partial frame is left;
//   - the records of all STATUS parts, re-encoded with encode_status(),
//     decode to the same records; likewise the COMMANDS records with
//     encode_commands();
//   - a COMMANDS frame, or a STATUS_REQUEST asking for commands, only on a
//     version 2 connection or later; PEEK and PEEKED only on version 3.
//
// Built by scripts/fuzz-proto.sh with -fsanitize=fuzzer and
// -DCAPTUREFS_FUZZER_NO_MAIN. Without that macro (the meson build) this
// file has its own main(), which runs every file named on the command line
// or found in a named directory through the same function: the corpus
// replay test of suite "fuzzing".
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "proto/codec.hpp"

namespace {

using namespace capturefs::proto;
using Bytes = std::vector<std::byte>;

void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_decoder: invariant broken: %s\n", what);
  std::abort();
}

struct Run {
  std::vector<Frame> frames;
  std::optional<Error> error;
  std::uint64_t consumed = 0;
  std::size_t left = 0;  // buffered before finish()
};

enum class Feed { whole, bytewise, slices };

Run decode(Peer sender, const Bytes& in, Feed how) {
  Decoder d(sender);
  Run r;
  std::size_t at = 0;
  std::uint32_t lcg = 0x9e3779b9u ^ static_cast<std::uint32_t>(in.size());
  while (at < in.size()) {
    std::size_t n = in.size() - at;
    if (how == Feed::bytewise) {
      n = 1;
    } else if (how == Feed::slices) {
      lcg = lcg * 1664525u + 1013904223u + std::to_integer<std::uint32_t>(in[at]);
      n = std::min<std::size_t>(n, 1 + (lcg >> 16) % 23);
    }
    d.feed(std::span(in).subspan(at, n));
    at += n;
    while (auto f = d.next()) r.frames.push_back(std::move(*f));
  }
  r.left = d.buffered();
  r.error = d.finish();
  r.consumed = d.consumed();
  return r;
}

bool is_decoding_code(ErrorCode c) {
  return static_cast<unsigned>(c) >= static_cast<unsigned>(ErrorCode::bad_magic) &&
         static_cast<unsigned>(c) <= static_cast<unsigned>(ErrorCode::limit);
}

void fuzz_one(Peer sender, const Bytes& in) {
  const Run whole = decode(sender, in, Feed::whole);
  const Run slices = decode(sender, in, Feed::slices);
  check(whole.frames == slices.frames, "same frames whole and in slices");
  check(whole.error == slices.error, "same error whole and in slices");
  check(whole.consumed == slices.consumed, "same bytes consumed whole and in slices");
  if (in.size() <= 16384) {
    const Run bytes = decode(sender, in, Feed::bytewise);
    check(whole.frames == bytes.frames, "same frames whole and byte by byte");
    check(whole.error == bytes.error, "same error whole and byte by byte");
    check(whole.consumed == bytes.consumed, "same bytes consumed whole and byte by byte");
  }

  check(whole.consumed <= in.size(), "consumed within the input");
  // The connection's version (the STATUS record layout depends on it).
  std::uint16_t version = kVersion;
  if (!whole.frames.empty()) {
    const std::uint16_t said = std::get<Hello>(whole.frames.front()).version;
    version = sender == Peer::client ? std::min(said, kVersion) : said;
  }
  Bytes again;
  for (const auto& f : whole.frames) check(!encode(f, again, version), "every decoded frame encodes");
  check(again.size() == whole.consumed && std::equal(again.begin(), again.end(), in.begin()),
        "frames re-encode to the bytes they came from");
  check(whole.frames.empty() || std::holds_alternative<Hello>(whole.frames.front()), "the hello comes first");
  for (std::size_t i = 1; i < whole.frames.size(); ++i)
    check(!std::holds_alternative<Hello>(whole.frames[i]), "one hello only");

  // The records of every STATUS part, re-encoded as one reply, come back
  // the same, split into parts with MORE set on all but the last.
  std::vector<StreamStatus> records;
  std::vector<CommandStatus> commands;
  bool version2_only = false;  // a frame or flag that version 1 does not have
  bool version3_only = false;  // a frame that version 2 does not have
  for (const auto& f : whole.frames) {
    check(!frame_name(f).empty(), "every frame has a name");
    if (const auto* s = std::get_if<StatusReply>(&f)) records.insert(records.end(), s->streams.begin(), s->streams.end());
    if (const auto* c = std::get_if<CommandsReply>(&f)) {
      commands.insert(commands.end(), c->commands.begin(), c->commands.end());
      version2_only = true;
    }
    if (const auto* r = std::get_if<StatusRequest>(&f); r && r->commands) version2_only = true;
    if (std::holds_alternative<Peek>(f) || std::holds_alternative<Peeked>(f)) version3_only = true;
  }
  if (version3_only) check(version >= 3, "version 3 frames only on a version 3 connection");
  if (version2_only) {
    const auto& hello = std::get<Hello>(whole.frames.front());
    check(hello.version >= 2, "version 2 frames only on a version 2 connection");
  }
  Bytes reply;
  check(!encode(Hello{version, 0}, reply) && !encode_status(records, reply, version),
        "decoded records encode as a reply");
  Decoder d(Peer::server);
  d.feed(reply);
  std::vector<StreamStatus> back;
  bool last = false;
  check(d.next().has_value(), "the reply's hello");
  while (auto f = d.next()) {
    check(!last, "MORE clear only on the last part");
    const auto& part = std::get<StatusReply>(*f);
    back.insert(back.end(), part.streams.begin(), part.streams.end());
    last = !part.more;
  }
  check(!d.finish() && last && back == records, "the reply decodes to the same records");

  // The same for COMMANDS: at least one frame, all records back in order.
  Bytes cmds;
  check(!encode(Hello{}, cmds) && !encode_commands(commands, cmds), "decoded commands encode");
  Decoder dc(Peer::server);
  dc.feed(cmds);
  check(dc.next().has_value(), "the commands' hello");
  std::vector<CommandStatus> cmds_back;
  std::size_t parts = 0;
  while (auto f = dc.next()) {
    const auto& part = std::get<CommandsReply>(*f);
    cmds_back.insert(cmds_back.end(), part.commands.begin(), part.commands.end());
    ++parts;
  }
  check(!dc.finish() && parts >= 1 && cmds_back == commands, "the commands decode to the same records");

  if (whole.error) {
    check(is_decoding_code(whole.error->code), "a decoding error code");
    check(to_string(whole.error->code).rfind("error_", 0) != 0, "decoding codes have names");
    check(!whole.error->message.empty(), "an error message");
    Bytes err;
    check(!encode(*whole.error, err), "the error fits an ERROR frame");
  } else {
    check(whole.consumed == in.size(), "no error: everything consumed");
    check(whole.left == 0, "no error: nothing left buffered");
  }
}

void fuzz(const std::uint8_t* data, std::size_t size) {
  const auto* p = reinterpret_cast<const std::byte*>(data);
  const Bytes in(p, p + size);
  for (Peer sender : {Peer::client, Peer::server}) {
    fuzz_one(sender, in);
    for (const std::uint16_t v : {1, 2, 3}) {
      Bytes with;
      check(!encode(Hello{v, 0}, with), "hello encodes");
      with.insert(with.end(), in.begin(), in.end());
      fuzz_one(sender, with);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz(data, size);
  return 0;
}

#ifndef CAPTUREFS_FUZZER_NO_MAIN
namespace fs = std::filesystem;

static bool replay(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "fuzz_decoder: cannot read %s\n", file.c_str());
    return false;
  }
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  return true;
}

int main(int argc, char** argv) {
  std::size_t ran = 0;
  bool ok = true;
  for (int i = 1; i < argc; ++i) {
    const fs::path arg(argv[i]);
    std::error_code ec;
    if (fs::is_directory(arg, ec)) {
      std::vector<fs::path> files;
      for (const auto& e : fs::directory_iterator(arg))
        if (e.is_regular_file()) files.push_back(e.path());
      std::sort(files.begin(), files.end());
      for (const auto& f : files) ok = replay(f) && ok, ++ran;
    } else {
      ok = replay(arg) && ok;
      ++ran;
    }
  }
  std::printf("fuzz_decoder: replayed %zu inputs\n", ran);
  if (ran == 0) {
    std::fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
    return 2;
  }
  return ok ? 0 : 1;
}
#endif
