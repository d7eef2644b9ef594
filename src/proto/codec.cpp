#include "proto/codec.hpp"

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

namespace capturefs::proto {

std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return 1;
  std::size_t len;
  unsigned lo = 0x80, hi = 0xBF;  // range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() - i < len) return 0;
  for (std::size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return 0;
  }
  return len;
}

namespace {

using Out = std::vector<std::byte>;

// ---------------------------------------------------------------- type table

// Flag bits per frame type.
constexpr std::uint8_t kSubObserve = 0x01;
constexpr std::uint8_t kSubLiteral = 0x02;
constexpr std::uint8_t kSubOnce = 0x04;
constexpr std::uint8_t kSubNowait = 0x08;
constexpr std::uint8_t kStatusMore = 0x01;
constexpr std::uint8_t kStatusReqCommands = 0x01;  // version 2

// Fixed sizes of the variable parts' neighbours.
constexpr std::size_t kOpenedFixed = 8 + 8 + 8 + 4 + 4 + 2;  // + path
constexpr std::size_t kRenamedFixed = 8 + 2;                 // + path
constexpr std::size_t kClosedFixed = 8 + 8 + 1 + 2;          // + reason
constexpr std::size_t kErrorFixed = 2 + 2;                   // + message
constexpr std::size_t kDataFixed = 8 + 8;                    // + payload
constexpr std::size_t kRecordFixed = 8 + 4 + 4 + 8 + 8 + 8 + 8 + 1 + 2;  // + path
constexpr std::size_t kCommandFixed = 8 + 4 + 1 + 1 + 1 + 8 + 8 + 8 + 2 + 2;  // + path + note
constexpr std::size_t kRecordV3 = 8 + 1;                     // version 3 records: + spilled, wait
constexpr std::size_t kPeekFixed = 4 + 2;                    // + path
constexpr std::size_t kPeekedFixed = 8 + 8 + 8;              // + payload

struct TypeInfo {
  Type type;
  const char* name;
  Peer sender;
  std::uint8_t flags;     // flag bits defined since version 1
  std::size_t min_body;   // fixed fields, variable parts empty
  std::size_t max_body;   // fixed fields, variable parts at their limits
  std::uint16_t since;    // the first version with this frame type
  std::uint8_t flags_v2;  // flag bits added in version 2
};

constexpr TypeInfo kTypes[] = {
    {Type::subscribe, "SUBSCRIBE", Peer::client, kSubObserve | kSubLiteral | kSubOnce | kSubNowait,
     2, 2 + kMaxPatterns * (2 + kMaxPath), 1, 0},
    {Type::ack, "ACK", Peer::client, 0, 16, 16, 1, 0},
    {Type::status_request, "STATUS_REQUEST", Peer::client, 0, 0, 0, 1, kStatusReqCommands},
    {Type::subscribed, "SUBSCRIBED", Peer::server, 0, 0, 0, 1, 0},
    {Type::opened, "OPENED", Peer::server, 0, kOpenedFixed, kOpenedFixed + kMaxPath, 1, 0},
    {Type::data, "DATA", Peer::server, 0, kDataFixed, kDataFixed + kMaxChunk, 1, 0},
    {Type::renamed, "RENAMED", Peer::server, 0, kRenamedFixed, kRenamedFixed + kMaxPath, 1, 0},
    {Type::closed, "CLOSED", Peer::server, 0, kClosedFixed, kClosedFixed + kMaxText, 1, 0},
    {Type::status, "STATUS", Peer::server, kStatusMore, 2, kMaxBody, 1, 0},
    {Type::error, "ERROR", Peer::server, 0, kErrorFixed, kErrorFixed + kMaxText, 1, 0},
    {Type::commands, "COMMANDS", Peer::server, 0, 2, kMaxBody, 2, 0},
    {Type::peek, "PEEK", Peer::client, 0, kPeekFixed, kPeekFixed + kMaxPath, 3, 0},
    {Type::peeked, "PEEKED", Peer::server, 0, kPeekedFixed, kPeekedFixed + kMaxPeek, 3, 0},
};
static_assert(kDataFixed + kMaxChunk == kMaxBody);
static_assert(2 + kMaxPatterns * (2 + kMaxPath) <= kMaxBody);
static_assert(2 + kCommandFixed + kMaxPath + kMaxText <= kMaxBody);

std::uint8_t defined_flags(const TypeInfo& ti, std::uint16_t version) {
  return static_cast<std::uint8_t>(ti.flags | (version >= 2 ? ti.flags_v2 : 0));
}

const TypeInfo* find_type(std::uint8_t t) {
  for (const auto& i : kTypes)
    if (static_cast<std::uint8_t>(i.type) == t) return &i;
  return nullptr;
}

const TypeInfo& info_of(Type t) {
  const TypeInfo* i = find_type(static_cast<std::uint8_t>(t));
  return i ? *i : kTypes[0];  // every Type is in the table
}

const char* peer_name(Peer p) { return p == Peer::client ? "client" : "server"; }

// ---------------------------------------------------------------- helpers

[[gnu::format(printf, 1, 2)]] std::string format(const char* fmt, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  const int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return std::string(buf, n < 0 ? 0 : std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1));
}

Error make_error(ErrorCode code, std::string message) { return Error{code, std::move(message)}; }

std::uint16_t get16(const std::byte* p) {
  return static_cast<std::uint16_t>((std::to_integer<unsigned>(p[0]) << 8) | std::to_integer<unsigned>(p[1]));
}
std::uint32_t get32(const std::byte* p) {
  return (std::uint32_t{get16(p)} << 16) | get16(p + 2);
}
std::uint64_t get64(const std::byte* p) { return (std::uint64_t{get32(p)} << 32) | get32(p + 4); }

void put8(Out& o, std::uint8_t v) { o.push_back(static_cast<std::byte>(v)); }
void put16(Out& o, std::uint16_t v) {
  put8(o, static_cast<std::uint8_t>(v >> 8));
  put8(o, static_cast<std::uint8_t>(v));
}
void put32(Out& o, std::uint32_t v) {
  put16(o, static_cast<std::uint16_t>(v >> 16));
  put16(o, static_cast<std::uint16_t>(v));
}
void put64(Out& o, std::uint64_t v) {
  put32(o, static_cast<std::uint32_t>(v >> 32));
  put32(o, static_cast<std::uint32_t>(v));
}
void put_raw(Out& o, std::string_view s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  o.insert(o.end(), p, p + s.size());
}
void put_str16(Out& o, std::string_view s) {
  put16(o, static_cast<std::uint16_t>(s.size()));
  put_raw(o, s);
}

/// Returns the offset of the first byte that is not strict UTF-8, or npos.
std::size_t utf8_error(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t len = utf8_sequence(s, i);
    if (len == 0) return i;
    i += len;
  }
  return std::string_view::npos;
}

// Checks shared by the encoder and the decoder, in the decoder's order
// (the decoder checks the declared length against the bytes left between
// the limit and the content checks).
std::optional<Error> check_path_length(const std::string& ctx, std::size_t len) {
  if (len == 0) return make_error(ErrorCode::bad_value, ctx + ": empty");
  if (len > kMaxPath)
    return make_error(ErrorCode::limit, ctx + format(": %zu bytes, over the limit of %zu", len, kMaxPath));
  return std::nullopt;
}
std::optional<Error> check_path_content(const std::string& ctx, std::string_view p) {
  if (const auto z = p.find('\0'); z != std::string_view::npos)
    return make_error(ErrorCode::bad_value, ctx + format(": NUL byte at %zu", z));
  return std::nullopt;
}
std::optional<Error> check_path(const std::string& ctx, std::string_view p) {
  if (auto e = check_path_length(ctx, p.size())) return e;
  return check_path_content(ctx, p);
}
std::optional<Error> check_text_length(const std::string& ctx, std::size_t len) {
  if (len > kMaxText)
    return make_error(ErrorCode::limit, ctx + format(": %zu bytes, over the limit of %zu", len, kMaxText));
  return std::nullopt;
}
std::optional<Error> check_text_content(const std::string& ctx, std::string_view t) {
  if (const auto at = utf8_error(t); at != std::string_view::npos)
    return make_error(ErrorCode::bad_value, ctx + format(": invalid UTF-8 at byte %zu", at));
  return std::nullopt;
}
std::optional<Error> check_text(const std::string& ctx, std::string_view t) {
  if (auto e = check_text_length(ctx, t.size())) return e;
  return check_text_content(ctx, t);
}
std::optional<Error> check_closed(const Closed& c) {
  if (c.status != CloseStatus::complete && c.status != CloseStatus::aborted)
    return make_error(ErrorCode::bad_value,
                      format("CLOSED: status: unknown value %u", static_cast<unsigned>(c.status)));
  if (auto e = check_text("CLOSED: reason", c.reason)) return e;
  if (c.status == CloseStatus::complete && !c.reason.empty())
    return make_error(ErrorCode::bad_value, "CLOSED: reason: must be empty when complete");
  if (c.status == CloseStatus::aborted && c.reason.empty())
    return make_error(ErrorCode::bad_value, "CLOSED: reason: must not be empty when aborted");
  return std::nullopt;
}
bool valid_state(StreamState s) { return static_cast<std::uint8_t>(s) <= 3; }

// A command record's state and code, as read: the enum, then the code
// against the state. `ctx` is "COMMANDS: record N".
std::optional<Error> check_command_state(const std::string& ctx, std::uint8_t state) {
  if (state > static_cast<std::uint8_t>(CommandState::unknown))
    return make_error(ErrorCode::bad_value, ctx + format(": state: unknown value %u", unsigned{state}));
  return std::nullopt;
}
std::optional<Error> check_command_code(const std::string& ctx, CommandState state, std::uint8_t code) {
  if (state == CommandState::killed && code == 0)
    return make_error(ErrorCode::bad_value, ctx + ": code: signal 0 is not valid");
  if (state != CommandState::exited && state != CommandState::killed && code != 0)
    return make_error(ErrorCode::bad_value,
                      ctx + format(": code: must be 0 when the state is %u (neither exited nor killed)",
                                   static_cast<unsigned>(state)));
  return std::nullopt;
}
std::optional<Error> check_command_input(const std::string& ctx, std::uint8_t input) {
  if (input > static_cast<std::uint8_t>(CommandInput::incomplete))
    return make_error(ErrorCode::bad_value, ctx + format(": input: unknown value %u", unsigned{input}));
  return std::nullopt;
}

// ---------------------------------------------------------------- encoding

std::size_t begin_frame(Out& o, Type t, std::uint8_t flags) {
  const std::size_t at = o.size();
  put32(o, 0);  // length, patched by end_frame
  put8(o, static_cast<std::uint8_t>(t));
  put8(o, flags);
  return at;
}

std::optional<Error> end_frame(Out& o, std::size_t at, Type t) {
  const std::size_t body = o.size() - at - kHeaderSize;
  const TypeInfo& ti = info_of(t);
  if (body > ti.max_body)
    return make_error(ErrorCode::too_large,
                      format("%s: body of %zu bytes, over the maximum of %zu", ti.name, body, ti.max_body));
  const auto len = static_cast<std::uint32_t>(body);
  for (int i = 0; i < 4; ++i) o[at + static_cast<std::size_t>(i)] = static_cast<std::byte>((len >> (24 - 8 * i)) & 0xFF);
  return std::nullopt;
}

std::size_t record_size(const StreamStatus& r, std::uint16_t version) {
  return kRecordFixed + (version >= 3 ? kRecordV3 : 0) + r.path.size();
}

void put_record(Out& o, const StreamStatus& r, std::uint16_t version) {
  put64(o, r.id);
  put32(o, r.pid);
  put32(o, r.uid);
  put64(o, static_cast<std::uint64_t>(r.time_ns));
  put64(o, r.written);
  put64(o, r.delivered);
  put64(o, r.rate);
  put8(o, static_cast<std::uint8_t>(r.state));
  if (version >= 3) {
    put64(o, r.spilled);
    put8(o, static_cast<std::uint8_t>(r.wait));
  }
  put_str16(o, r.path);
}

std::optional<Error> check_record(std::size_t index, const StreamStatus& r) {
  const std::string ctx = format("STATUS: record %zu", index);
  if (!valid_state(r.state))
    return make_error(ErrorCode::bad_value,
                      ctx + format(": state: unknown value %u", static_cast<unsigned>(r.state)));
  if (r.wait > WaitReason::spill_limit)
    return make_error(ErrorCode::bad_value,
                      ctx + format(": wait: unknown value %u", static_cast<unsigned>(r.wait)));
  return check_path(ctx + ": path", r.path);
}

void put_command(Out& o, const CommandStatus& c) {
  put64(o, c.id);
  put32(o, c.pid);
  put8(o, static_cast<std::uint8_t>(c.state));
  put8(o, c.code);
  put8(o, static_cast<std::uint8_t>(c.input));
  put64(o, c.bytes);
  put64(o, static_cast<std::uint64_t>(c.started_ns));
  put64(o, static_cast<std::uint64_t>(c.ended_ns));
  put_str16(o, c.path);
  put_str16(o, c.note);
}

std::optional<Error> check_command(std::size_t index, const CommandStatus& c) {
  const std::string ctx = format("COMMANDS: record %zu", index);
  if (auto e = check_command_state(ctx, static_cast<std::uint8_t>(c.state))) return e;
  if (auto e = check_command_code(ctx, c.state, c.code)) return e;
  if (auto e = check_command_input(ctx, static_cast<std::uint8_t>(c.input))) return e;
  if (auto e = check_path(ctx + ": path", c.path)) return e;
  return check_text(ctx + ": note", c.note);
}

std::optional<Error> check_peek(const Peek& p) {
  if (p.size == 0) return make_error(ErrorCode::bad_value, "PEEK: size: 0 is not valid");
  if (p.size > kMaxPeek)
    return make_error(ErrorCode::limit, format("PEEK: size: %u bytes, over the limit of %zu", unsigned{p.size}, kMaxPeek));
  return std::nullopt;
}

std::optional<Error> check_peeked(std::uint64_t id, std::uint64_t offset, std::uint64_t written, std::size_t n) {
  if (id == 0 && (offset != 0 || written != 0 || n != 0))
    return make_error(ErrorCode::bad_value, "PEEKED: id 0 (no such stream) with an offset, a size or bytes");
  return std::nullopt;
}

struct Encoder {
  Out& o;
  std::uint16_t version;

  std::optional<Error> operator()(const Hello& h) const {
    if (h.version == 0) return make_error(ErrorCode::bad_version, "HELLO: version 0 is not valid");
    put_raw(o, std::string_view(kMagic, sizeof kMagic));
    put16(o, h.version);
    put16(o, h.flags);
    return std::nullopt;
  }
  std::optional<Error> operator()(const Subscribe& s) const {
    if (s.patterns.empty()) return make_error(ErrorCode::bad_value, "SUBSCRIBE: no patterns");
    if (s.patterns.size() > kMaxPatterns)
      return make_error(ErrorCode::limit, format("SUBSCRIBE: %zu patterns, over the limit of %zu",
                                                 s.patterns.size(), kMaxPatterns));
    for (std::size_t i = 0; i < s.patterns.size(); ++i)
      if (auto e = check_path(format("SUBSCRIBE: pattern %zu", i), s.patterns[i])) return e;
    const auto flags = static_cast<std::uint8_t>((s.observe ? kSubObserve : 0) | (s.literal ? kSubLiteral : 0) |
                                                 (s.once ? kSubOnce : 0) | (s.nowait ? kSubNowait : 0));
    const std::size_t at = begin_frame(o, Type::subscribe, flags);
    put16(o, static_cast<std::uint16_t>(s.patterns.size()));
    for (const auto& p : s.patterns) put_str16(o, p);
    return end_frame(o, at, Type::subscribe);
  }
  std::optional<Error> operator()(const Ack& a) const {
    const std::size_t at = begin_frame(o, Type::ack, 0);
    put64(o, a.id);
    put64(o, a.offset);
    return end_frame(o, at, Type::ack);
  }
  std::optional<Error> operator()(const StatusRequest& r) const {
    return end_frame(o, begin_frame(o, Type::status_request, r.commands ? kStatusReqCommands : 0),
                     Type::status_request);
  }
  std::optional<Error> operator()(const Subscribed&) const {
    return end_frame(o, begin_frame(o, Type::subscribed, 0), Type::subscribed);
  }
  std::optional<Error> operator()(const Opened& m) const {
    if (auto e = check_path("OPENED: path", m.path)) return e;
    const std::size_t at = begin_frame(o, Type::opened, 0);
    put64(o, m.id);
    put64(o, m.offset);
    put64(o, static_cast<std::uint64_t>(m.time_ns));
    put32(o, m.pid);
    put32(o, m.uid);
    put_str16(o, m.path);
    return end_frame(o, at, Type::opened);
  }
  std::optional<Error> operator()(const Data& d) const {
    if (auto e = encode_data_header(d.id, d.offset, d.bytes.size(), o)) return e;
    o.insert(o.end(), d.bytes.begin(), d.bytes.end());
    return std::nullopt;
  }
  std::optional<Error> operator()(const Renamed& r) const {
    if (auto e = check_path("RENAMED: path", r.path)) return e;
    const std::size_t at = begin_frame(o, Type::renamed, 0);
    put64(o, r.id);
    put_str16(o, r.path);
    return end_frame(o, at, Type::renamed);
  }
  std::optional<Error> operator()(const Closed& c) const {
    if (auto e = check_closed(c)) return e;
    const std::size_t at = begin_frame(o, Type::closed, 0);
    put64(o, c.id);
    put64(o, c.total);
    put8(o, static_cast<std::uint8_t>(c.status));
    put_str16(o, c.reason);
    return end_frame(o, at, Type::closed);
  }
  std::optional<Error> operator()(const StatusReply& s) const {
    if (s.streams.size() > 0xFFFF)
      return make_error(ErrorCode::limit,
                        format("STATUS: %zu records, over the limit of 65535", s.streams.size()));
    for (std::size_t i = 0; i < s.streams.size(); ++i)
      if (auto e = check_record(i, s.streams[i])) return e;
    const std::size_t at = begin_frame(o, Type::status, s.more ? kStatusMore : 0);
    put16(o, static_cast<std::uint16_t>(s.streams.size()));
    for (const auto& r : s.streams) put_record(o, r, version);
    return end_frame(o, at, Type::status);
  }
  std::optional<Error> operator()(const CommandsReply& c) const {
    if (c.commands.size() > 0xFFFF)
      return make_error(ErrorCode::limit,
                        format("COMMANDS: %zu records, over the limit of 65535", c.commands.size()));
    for (std::size_t i = 0; i < c.commands.size(); ++i)
      if (auto e = check_command(i, c.commands[i])) return e;
    const std::size_t at = begin_frame(o, Type::commands, 0);
    put16(o, static_cast<std::uint16_t>(c.commands.size()));
    for (const auto& r : c.commands) put_command(o, r);
    return end_frame(o, at, Type::commands);
  }
  std::optional<Error> operator()(const Peek& p) const {
    if (auto e = check_peek(p)) return e;
    if (auto e = check_path("PEEK: path", p.path)) return e;
    const std::size_t at = begin_frame(o, Type::peek, 0);
    put32(o, p.size);
    put_str16(o, p.path);
    return end_frame(o, at, Type::peek);
  }
  std::optional<Error> operator()(const Peeked& p) const {
    if (auto e = check_peeked(p.id, p.offset, p.written, p.bytes.size())) return e;
    const std::size_t at = begin_frame(o, Type::peeked, 0);
    put64(o, p.id);
    put64(o, p.offset);
    put64(o, p.written);
    o.insert(o.end(), p.bytes.begin(), p.bytes.end());
    return end_frame(o, at, Type::peeked);
  }
  std::optional<Error> operator()(const Error& e) const {
    if (e.code == ErrorCode{0}) return make_error(ErrorCode::bad_value, "ERROR: code 0 is not valid");
    if (auto x = check_text("ERROR: message", e.message)) return x;
    const std::size_t at = begin_frame(o, Type::error, 0);
    put16(o, static_cast<std::uint16_t>(e.code));
    put_str16(o, e.message);
    return end_frame(o, at, Type::error);
  }
};

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

// ---------------------------------------------------------------- names

std::string to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::bad_magic: return "bad_magic";
    case ErrorCode::bad_version: return "bad_version";
    case ErrorCode::bad_type: return "bad_type";
    case ErrorCode::bad_flags: return "bad_flags";
    case ErrorCode::too_large: return "too_large";
    case ErrorCode::truncated: return "truncated";
    case ErrorCode::trailing: return "trailing";
    case ErrorCode::bad_value: return "bad_value";
    case ErrorCode::limit: return "limit";
    case ErrorCode::bad_state: return "bad_state";
    case ErrorCode::bad_ack: return "bad_ack";
    case ErrorCode::not_found: return "not_found";
    case ErrorCode::busy: return "busy";
    case ErrorCode::shutdown: return "shutdown";
    case ErrorCode::internal: return "internal";
  }
  return "error_" + std::to_string(static_cast<unsigned>(code));
}

std::string_view frame_name(const Frame& frame) {
  struct Name {
    std::string_view operator()(const Hello&) const { return "HELLO"; }
    std::string_view operator()(const Subscribe&) const { return info_of(Type::subscribe).name; }
    std::string_view operator()(const Ack&) const { return info_of(Type::ack).name; }
    std::string_view operator()(const StatusRequest&) const { return info_of(Type::status_request).name; }
    std::string_view operator()(const Subscribed&) const { return info_of(Type::subscribed).name; }
    std::string_view operator()(const Opened&) const { return info_of(Type::opened).name; }
    std::string_view operator()(const Data&) const { return info_of(Type::data).name; }
    std::string_view operator()(const Renamed&) const { return info_of(Type::renamed).name; }
    std::string_view operator()(const Closed&) const { return info_of(Type::closed).name; }
    std::string_view operator()(const StatusReply&) const { return info_of(Type::status).name; }
    std::string_view operator()(const Error&) const { return info_of(Type::error).name; }
    std::string_view operator()(const CommandsReply&) const { return info_of(Type::commands).name; }
    std::string_view operator()(const Peek&) const { return info_of(Type::peek).name; }
    std::string_view operator()(const Peeked&) const { return info_of(Type::peeked).name; }
  };
  return std::visit(Name{}, frame);
}

// ---------------------------------------------------------------- encoding

std::optional<Error> encode(const Frame& frame, std::vector<std::byte>& out, std::uint16_t version) {
  const std::size_t before = out.size();
  auto e = std::visit(Encoder{out, version}, frame);
  if (e) out.resize(before);
  return e;
}

std::optional<Error> encode_data_header(std::uint64_t id, std::uint64_t offset, std::size_t size,
                                        std::vector<std::byte>& out) {
  if (size > kMaxChunk)
    return make_error(ErrorCode::too_large,
                      format("DATA: %zu payload bytes, over the maximum of %zu", size, kMaxChunk));
  put32(out, static_cast<std::uint32_t>(kDataFixed + size));
  put8(out, static_cast<std::uint8_t>(Type::data));
  put8(out, 0);
  put64(out, id);
  put64(out, offset);
  return std::nullopt;
}

std::optional<Error> encode_status(std::span<const StreamStatus> streams, std::vector<std::byte>& out,
                                   std::uint16_t version) {
  for (std::size_t i = 0; i < streams.size(); ++i)
    if (auto e = check_record(i, streams[i])) return e;
  const std::size_t before = out.size();
  std::size_t i = 0;
  do {
    // Take as many records as fit one frame.
    std::size_t body = 2, j = i;
    while (j < streams.size() && j - i < 0xFFFF && body + record_size(streams[j], version) <= kMaxBody)
      body += record_size(streams[j++], version);
    StatusReply part;
    part.more = j < streams.size();
    part.streams.assign(streams.begin() + static_cast<std::ptrdiff_t>(i),
                        streams.begin() + static_cast<std::ptrdiff_t>(j));
    if (auto e = encode(part, out, version)) {
      out.resize(before);
      return e;
    }
    i = j;
  } while (i < streams.size());
  return std::nullopt;
}

std::optional<Error> encode_commands(std::span<const CommandStatus> commands, std::vector<std::byte>& out) {
  for (std::size_t i = 0; i < commands.size(); ++i)
    if (auto e = check_command(i, commands[i])) return e;
  const std::size_t before = out.size();
  std::size_t i = 0;
  do {
    std::size_t body = 2, j = i;
    while (j < commands.size() && j - i < 0xFFFF &&
           body + kCommandFixed + commands[j].path.size() + commands[j].note.size() <= kMaxBody) {
      body += kCommandFixed + commands[j].path.size() + commands[j].note.size();
      ++j;
    }
    CommandsReply part;
    part.commands.assign(commands.begin() + static_cast<std::ptrdiff_t>(i),
                         commands.begin() + static_cast<std::ptrdiff_t>(j));
    if (auto e = encode(part, out)) {
      out.resize(before);
      return e;
    }
    i = j;
  } while (i < commands.size());
  return std::nullopt;
}

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
