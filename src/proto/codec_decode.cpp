// The incremental decoder (codec.hpp): bytes to frames or an error.
#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "proto/codec.hpp"
#include "proto/codec_impl.hpp"

namespace capturefs::proto {

using namespace detail;

namespace {

// ---------------------------------------------------------------- decoding

/// Reads the fields of one frame body; the first failure is kept.
class Reader {
 public:
  Reader(std::span<const std::byte> body, std::string ctx) : b_(body), ctx_(std::move(ctx)) {}

  std::optional<Error> error;

  bool need(std::size_t n, const char* field) {
    if (error) return false;
    if (b_.size() - pos_ >= n) return true;
    error = make_error(ErrorCode::truncated, format("%s: %s: needs %zu bytes, %zu left in the frame",
                                                    ctx_.c_str(), field, n, b_.size() - pos_));
    return false;
  }
  std::uint8_t u8(const char* field) {
    if (!need(1, field)) return 0;
    return std::to_integer<std::uint8_t>(b_[pos_++]);
  }
  std::uint16_t u16(const char* field) {
    if (!need(2, field)) return 0;
    pos_ += 2;
    return get16(&b_[pos_ - 2]);
  }
  std::uint32_t u32(const char* field) {
    if (!need(4, field)) return 0;
    pos_ += 4;
    return get32(&b_[pos_ - 4]);
  }
  std::uint64_t u64(const char* field) {
    if (!need(8, field)) return 0;
    pos_ += 8;
    return get64(&b_[pos_ - 8]);
  }
  std::string raw(std::size_t n) {
    const auto* p = reinterpret_cast<const char*>(b_.data() + pos_);
    pos_ += n;
    return std::string(p, n);
  }
  /// A length-prefixed path: length (empty, limit), bytes (truncated), NUL.
  std::string path(const std::string& what) {
    const std::string ctx = ctx_ + ": " + what;
    const std::uint16_t len = u16(what.c_str());
    if (error) return {};
    if ((error = check_path_length(ctx, len))) return {};
    if (!need(len, what.c_str())) return {};
    std::string p = raw(len);
    error = check_path_content(ctx, p);
    return p;
  }
  /// A length-prefixed UTF-8 text: length (limit), bytes (truncated), UTF-8.
  std::string text(const char* what) {
    const std::string ctx = ctx_ + ": " + what;
    const std::uint16_t len = u16(what);
    if (error) return {};
    if ((error = check_text_length(ctx, len))) return {};
    if (!need(len, what)) return {};
    std::string t = raw(len);
    error = check_text_content(ctx, t);
    return t;
  }
  std::vector<std::byte> rest() {
    std::vector<std::byte> v(b_.begin() + static_cast<std::ptrdiff_t>(pos_), b_.end());
    pos_ = b_.size();
    return v;
  }
  void bad(ErrorCode code, const std::string& what) {
    if (!error) error = make_error(code, ctx_ + ": " + what);
  }
  /// Everything read: no trailing bytes.
  bool done() {
    if (error) return false;
    if (pos_ == b_.size()) return true;
    error = make_error(ErrorCode::trailing,
                       format("%s: %zu bytes after the last field", ctx_.c_str(), b_.size() - pos_));
    return false;
  }
  void set_context(std::string ctx) { ctx_ = std::move(ctx); }

 private:
  std::span<const std::byte> b_;
  std::size_t pos_ = 0;
  std::string ctx_;
};

/// Parses a body whose type, flags and size range are already checked.
std::variant<Frame, Error> parse_body(const TypeInfo& ti, std::uint8_t flags,
                                      std::span<const std::byte> body, std::uint16_t version) {
  Reader r(body, ti.name);
  Frame f;
  switch (ti.type) {
    case Type::subscribe: {
      Subscribe s;
      s.observe = flags & kSubObserve;
      s.literal = flags & kSubLiteral;
      s.once = flags & kSubOnce;
      s.nowait = flags & kSubNowait;
      const std::uint16_t n = r.u16("count");
      if (n == 0) r.bad(ErrorCode::bad_value, "no patterns");
      if (n > kMaxPatterns)
        r.bad(ErrorCode::limit, format("%u patterns, over the limit of %zu", unsigned{n}, kMaxPatterns));
      for (std::size_t i = 0; i < n && !r.error; ++i) s.patterns.push_back(r.path(format("pattern %zu", i)));
      f = std::move(s);
      break;
    }
    case Type::ack: {
      Ack a;
      a.id = r.u64("id");
      a.offset = r.u64("offset");
      f = a;
      break;
    }
    case Type::status_request:
      f = StatusRequest{.commands = (flags & kStatusReqCommands) != 0};
      break;
    case Type::subscribed:
      f = Subscribed{};
      break;
    case Type::opened: {
      Opened m;
      m.id = r.u64("id");
      m.offset = r.u64("offset");
      m.time_ns = static_cast<std::int64_t>(r.u64("time"));
      m.pid = r.u32("pid");
      m.uid = r.u32("uid");
      m.path = r.path("path");
      f = std::move(m);
      break;
    }
    case Type::data: {
      Data d;
      d.id = r.u64("id");
      d.offset = r.u64("offset");
      d.bytes = r.rest();
      f = std::move(d);
      break;
    }
    case Type::renamed: {
      Renamed m;
      m.id = r.u64("id");
      m.path = r.path("path");
      f = std::move(m);
      break;
    }
    case Type::closed: {
      Closed c;
      c.id = r.u64("id");
      c.total = r.u64("total");
      const std::uint8_t st = r.u8("status");
      if (st > 1) r.bad(ErrorCode::bad_value, format("status: unknown value %u", unsigned{st}));
      c.status = static_cast<CloseStatus>(st);
      c.reason = r.text("reason");
      if (!r.error) r.error = check_closed(c);
      f = std::move(c);
      break;
    }
    case Type::status: {
      StatusReply s;
      s.more = flags & kStatusMore;
      const std::uint16_t n = r.u16("count");
      for (std::size_t i = 0; i < n && !r.error; ++i) {
        r.set_context(format("STATUS: record %zu", i));
        StreamStatus rec;
        rec.id = r.u64("id");
        rec.pid = r.u32("pid");
        rec.uid = r.u32("uid");
        rec.time_ns = static_cast<std::int64_t>(r.u64("time"));
        rec.written = r.u64("written");
        rec.delivered = r.u64("delivered");
        rec.rate = r.u64("rate");
        const std::uint8_t st = r.u8("state");
        if (st > 3) r.bad(ErrorCode::bad_value, format("state: unknown value %u", unsigned{st}));
        rec.state = static_cast<StreamState>(st);
        if (version >= 3) {
          rec.spilled = r.u64("spilled");
          const std::uint8_t w = r.u8("wait");
          if (w > 3) r.bad(ErrorCode::bad_value, format("wait: unknown value %u", unsigned{w}));
          rec.wait = static_cast<WaitReason>(w);
        }
        rec.path = r.path("path");
        s.streams.push_back(std::move(rec));
      }
      r.set_context("STATUS");
      f = std::move(s);
      break;
    }
    case Type::commands: {
      CommandsReply c;
      const std::uint16_t n = r.u16("count");
      for (std::size_t i = 0; i < n && !r.error; ++i) {
        const std::string ctx = format("COMMANDS: record %zu", i);
        r.set_context(ctx);
        CommandStatus rec;
        rec.id = r.u64("id");
        rec.pid = r.u32("pid");
        const std::uint8_t st = r.u8("state");
        if (!r.error) r.error = check_command_state(ctx, st);
        rec.state = static_cast<CommandState>(st);
        rec.code = r.u8("code");
        if (!r.error) r.error = check_command_code(ctx, rec.state, rec.code);
        const std::uint8_t in = r.u8("input");
        if (!r.error) r.error = check_command_input(ctx, in);
        rec.input = static_cast<CommandInput>(in);
        rec.bytes = r.u64("bytes");
        rec.started_ns = static_cast<std::int64_t>(r.u64("started"));
        rec.ended_ns = static_cast<std::int64_t>(r.u64("ended"));
        rec.path = r.path("path");
        rec.note = r.text("note");
        c.commands.push_back(std::move(rec));
      }
      r.set_context("COMMANDS");
      f = std::move(c);
      break;
    }
    case Type::peek: {
      Peek p;
      p.size = r.u32("size");
      if (!r.error) r.error = check_peek(p);
      p.path = r.path("path");
      f = std::move(p);
      break;
    }
    case Type::peeked: {
      Peeked p;
      p.id = r.u64("id");
      p.offset = r.u64("offset");
      p.written = r.u64("written");
      p.bytes = r.rest();
      if (!r.error) r.error = check_peeked(p.id, p.offset, p.written, p.bytes.size());
      f = std::move(p);
      break;
    }
    case Type::error: {
      Error e;
      const std::uint16_t code = r.u16("code");
      if (code == 0) r.bad(ErrorCode::bad_value, "code 0 is not valid");
      e.code = static_cast<ErrorCode>(code);
      e.message = r.text("message");
      f = std::move(e);
      break;
    }
  }
  if (!r.done()) return std::move(*r.error);
  return f;
}

}  // namespace

// ---------------------------------------------------------------- Decoder

void Decoder::fail(Error e) {
  error_ = std::move(e);
  buf_.clear();
  buf_.shrink_to_fit();
  pos_ = 0;
}

void Decoder::feed(std::span<const std::byte> bytes) {
  if (error_ || bytes.empty()) return;
  buf_.insert(buf_.end(), bytes.begin(), bytes.end());
  (void)check_head();  // report a bad hello or header as soon as it arrives
}

// Validates as much of the next hello or frame header as is buffered.
// Returns the size of the whole unit once its header is complete and valid.
std::optional<std::size_t> Decoder::check_head() {
  if (error_) return std::nullopt;
  const std::byte* p = buf_.data() + pos_;
  const std::size_t n = buffered();
  if (!hello_done_) {
    for (std::size_t i = 0; i < std::min(n, sizeof kMagic); ++i) {
      if (p[i] != static_cast<std::byte>(kMagic[i])) {
        fail(make_error(ErrorCode::bad_magic,
                        format("%s hello: bad magic: byte %zu is 0x%02x, expected 0x%02x ('%c')",
                               peer_name(sender_), i, std::to_integer<unsigned>(p[i]),
                               static_cast<unsigned>(kMagic[i]), kMagic[i])));
        return std::nullopt;
      }
    }
    if (n < 6) return std::nullopt;
    const std::uint16_t version = get16(p + 4);
    if (version == 0) {
      fail(make_error(ErrorCode::bad_version, format("%s hello: version 0 is not valid", peer_name(sender_))));
      return std::nullopt;
    }
    if (sender_ == Peer::server && (version < kMinVersion || version > max_version_)) {
      fail(make_error(ErrorCode::bad_version,
                      format("server hello: version %u, this decoder speaks %u to %u", unsigned{version},
                             unsigned{kMinVersion}, unsigned{max_version_})));
      return std::nullopt;
    }
    if (n < kHelloSize) return std::nullopt;
    const std::uint16_t flags = get16(p + 6);
    if (sender_ == Peer::server && flags != 0) {
      fail(make_error(ErrorCode::bad_flags,
                      format("server hello: flags 0x%04x were not requested", unsigned{flags})));
      return std::nullopt;
    }
    return kHelloSize;
  }
  if (n < 4) return std::nullopt;
  const std::uint32_t len = get32(p);
  if (len > kMaxBody) {
    fail(make_error(ErrorCode::too_large,
                    format("frame length %u is over the maximum of %zu", unsigned{len}, kMaxBody)));
    return std::nullopt;
  }
  if (n < 5) return std::nullopt;
  const auto tb = std::to_integer<std::uint8_t>(p[4]);
  const TypeInfo* ti = find_type(tb);
  if (!ti) {
    fail(make_error(ErrorCode::bad_type, format("unknown frame type 0x%02x", unsigned{tb})));
    return std::nullopt;
  }
  if (ti->since > version_) {
    fail(make_error(ErrorCode::bad_type, format("frame type 0x%02x (%s) is not in protocol version %u",
                                                unsigned{tb}, ti->name, unsigned{version_})));
    return std::nullopt;
  }
  if (ti->sender != sender_) {
    fail(make_error(ErrorCode::bad_type, format("frame type 0x%02x (%s) is sent by a %s, not a %s", unsigned{tb},
                                                ti->name, peer_name(ti->sender), peer_name(sender_))));
    return std::nullopt;
  }
  if (n < kHeaderSize) return std::nullopt;
  const auto flags = std::to_integer<std::uint8_t>(p[5]);
  const std::uint8_t defined = defined_flags(*ti, version_);
  if (flags & ~defined) {
    fail(make_error(ErrorCode::bad_flags, format("%s: undefined flags 0x%02x in protocol version %u", ti->name,
                                                 static_cast<unsigned>(flags & ~defined), unsigned{version_})));
    return std::nullopt;
  }
  if (len < ti->min_body) {
    fail(make_error(ErrorCode::truncated,
                    format("%s: body of %u bytes, needs at least %zu", ti->name, unsigned{len}, ti->min_body)));
    return std::nullopt;
  }
  if (len > ti->max_body) {
    fail(make_error(ErrorCode::too_large,
                    format("%s: body of %u bytes, over the maximum of %zu", ti->name, unsigned{len}, ti->max_body)));
    return std::nullopt;
  }
  return kHeaderSize + len;
}

std::optional<Frame> Decoder::next() {
  const auto size = check_head();
  if (!size || buffered() < *size) return std::nullopt;
  const std::byte* p = buf_.data() + pos_;
  std::optional<Frame> out;
  if (!hello_done_) {
    out = Hello{get16(p + 4), get16(p + 6)};
    hello_done_ = true;
    const std::uint16_t v = get16(p + 4);
    version_ = sender_ == Peer::client ? std::min(v, max_version_) : v;
  } else {
    const TypeInfo* ti = find_type(std::to_integer<std::uint8_t>(p[4]));
    auto parsed = parse_body(*ti, std::to_integer<std::uint8_t>(p[5]),
                             std::span<const std::byte>(p + kHeaderSize, *size - kHeaderSize), version_);
    if (auto* e = std::get_if<Error>(&parsed)) {
      fail(std::move(*e));
      return std::nullopt;
    }
    out = std::move(std::get<Frame>(parsed));
  }
  pos_ += *size;
  consumed_ += *size;
  if (pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pos_ >= 64 * 1024 && pos_ * 2 >= buf_.size()) {
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(pos_));
    pos_ = 0;
  }
  return out;
}

const std::optional<Error>& Decoder::finish() {
  if (error_ || buffered() == 0) return error_;
  const auto size = check_head();
  if (error_ || (size && buffered() >= *size)) return error_;  // frames still to take
  const std::size_t n = buffered();
  if (!hello_done_) {
    fail(make_error(ErrorCode::truncated, format("connection closed inside the %s hello (%zu of %zu bytes)",
                                                 peer_name(sender_), n, kHelloSize)));
  } else if (!size) {
    fail(make_error(ErrorCode::truncated,
                    format("connection closed inside a frame header (%zu of %zu bytes)", n, kHeaderSize)));
  } else {
    const TypeInfo* ti = find_type(std::to_integer<std::uint8_t>(buf_[pos_ + 4]));
    fail(make_error(ErrorCode::truncated, format("connection closed inside a %s frame (%zu of %zu bytes)",
                                                 ti->name, n, *size)));
  }
  return error_;
}

}  // namespace capturefs::proto
