// Internal to the codec (src/proto/codec*.cpp): the frame type table and
// the helpers that encoding and decoding share (byte order, field checks).
#pragma once

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proto/codec.hpp"

namespace capturefs::proto::detail {

using Out = std::vector<std::byte>;

// ---------------------------------------------------------------- type table

// Flag bits per frame type.
inline constexpr std::uint8_t kSubObserve = 0x01;
inline constexpr std::uint8_t kSubLiteral = 0x02;
inline constexpr std::uint8_t kSubOnce = 0x04;
inline constexpr std::uint8_t kSubNowait = 0x08;
inline constexpr std::uint8_t kStatusMore = 0x01;
inline constexpr std::uint8_t kStatusReqCommands = 0x01;  // version 2

// Fixed sizes of the variable parts' neighbours.
inline constexpr std::size_t kOpenedFixed = 8 + 8 + 8 + 4 + 4 + 2;  // + path
inline constexpr std::size_t kRenamedFixed = 8 + 2;                 // + path
inline constexpr std::size_t kClosedFixed = 8 + 8 + 1 + 2;          // + reason
inline constexpr std::size_t kErrorFixed = 2 + 2;                   // + message
inline constexpr std::size_t kDataFixed = 8 + 8;                    // + payload
inline constexpr std::size_t kRecordFixed = 8 + 4 + 4 + 8 + 8 + 8 + 8 + 1 + 2;  // + path
inline constexpr std::size_t kCommandFixed = 8 + 4 + 1 + 1 + 1 + 8 + 8 + 8 + 2 + 2;  // + path + note
inline constexpr std::size_t kRecordV3 = 8 + 1;                     // version 3 records: + spilled, wait
inline constexpr std::size_t kPeekFixed = 4 + 2;                    // + path
inline constexpr std::size_t kPeekedFixed = 8 + 8 + 8;              // + payload

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

inline constexpr TypeInfo kTypes[] = {
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

inline std::uint8_t defined_flags(const TypeInfo& ti, std::uint16_t version) {
  return static_cast<std::uint8_t>(ti.flags | (version >= 2 ? ti.flags_v2 : 0));
}

inline const TypeInfo* find_type(std::uint8_t t) {
  for (const auto& i : kTypes)
    if (static_cast<std::uint8_t>(i.type) == t) return &i;
  return nullptr;
}

inline const TypeInfo& info_of(Type t) {
  const TypeInfo* i = find_type(static_cast<std::uint8_t>(t));
  return i ? *i : kTypes[0];  // every Type is in the table
}

inline const char* peer_name(Peer p) { return p == Peer::client ? "client" : "server"; }

// ---------------------------------------------------------------- helpers

[[gnu::format(printf, 1, 2)]] inline std::string format(const char* fmt, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  const int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return std::string(buf, n < 0 ? 0 : std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1));
}

inline Error make_error(ErrorCode code, std::string message) { return Error{code, std::move(message)}; }

inline std::uint16_t get16(const std::byte* p) {
  return static_cast<std::uint16_t>((std::to_integer<unsigned>(p[0]) << 8) | std::to_integer<unsigned>(p[1]));
}
inline std::uint32_t get32(const std::byte* p) {
  return (std::uint32_t{get16(p)} << 16) | get16(p + 2);
}
inline std::uint64_t get64(const std::byte* p) { return (std::uint64_t{get32(p)} << 32) | get32(p + 4); }

inline void put8(Out& o, std::uint8_t v) { o.push_back(static_cast<std::byte>(v)); }
inline void put16(Out& o, std::uint16_t v) {
  put8(o, static_cast<std::uint8_t>(v >> 8));
  put8(o, static_cast<std::uint8_t>(v));
}
inline void put32(Out& o, std::uint32_t v) {
  put16(o, static_cast<std::uint16_t>(v >> 16));
  put16(o, static_cast<std::uint16_t>(v));
}
inline void put64(Out& o, std::uint64_t v) {
  put32(o, static_cast<std::uint32_t>(v >> 32));
  put32(o, static_cast<std::uint32_t>(v));
}
inline void put_raw(Out& o, std::string_view s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  o.insert(o.end(), p, p + s.size());
}
inline void put_str16(Out& o, std::string_view s) {
  put16(o, static_cast<std::uint16_t>(s.size()));
  put_raw(o, s);
}

/// Returns the offset of the first byte that is not strict UTF-8, or npos.
inline std::size_t utf8_error(std::string_view s) {
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
inline std::optional<Error> check_path_length(const std::string& ctx, std::size_t len) {
  if (len == 0) return make_error(ErrorCode::bad_value, ctx + ": empty");
  if (len > kMaxPath)
    return make_error(ErrorCode::limit, ctx + format(": %zu bytes, over the limit of %zu", len, kMaxPath));
  return std::nullopt;
}
inline std::optional<Error> check_path_content(const std::string& ctx, std::string_view p) {
  if (const auto z = p.find('\0'); z != std::string_view::npos)
    return make_error(ErrorCode::bad_value, ctx + format(": NUL byte at %zu", z));
  return std::nullopt;
}
inline std::optional<Error> check_path(const std::string& ctx, std::string_view p) {
  if (auto e = check_path_length(ctx, p.size())) return e;
  return check_path_content(ctx, p);
}
inline std::optional<Error> check_text_length(const std::string& ctx, std::size_t len) {
  if (len > kMaxText)
    return make_error(ErrorCode::limit, ctx + format(": %zu bytes, over the limit of %zu", len, kMaxText));
  return std::nullopt;
}
inline std::optional<Error> check_text_content(const std::string& ctx, std::string_view t) {
  if (const auto at = utf8_error(t); at != std::string_view::npos)
    return make_error(ErrorCode::bad_value, ctx + format(": invalid UTF-8 at byte %zu", at));
  return std::nullopt;
}
inline std::optional<Error> check_text(const std::string& ctx, std::string_view t) {
  if (auto e = check_text_length(ctx, t.size())) return e;
  return check_text_content(ctx, t);
}
inline std::optional<Error> check_closed(const Closed& c) {
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
inline bool valid_state(StreamState s) { return static_cast<std::uint8_t>(s) <= 3; }

// A command record's state and code, as read: the enum, then the code
// against the state. `ctx` is "COMMANDS: record N".
inline std::optional<Error> check_command_state(const std::string& ctx, std::uint8_t state) {
  if (state > static_cast<std::uint8_t>(CommandState::unknown))
    return make_error(ErrorCode::bad_value, ctx + format(": state: unknown value %u", unsigned{state}));
  return std::nullopt;
}
inline std::optional<Error> check_command_code(const std::string& ctx, CommandState state, std::uint8_t code) {
  if (state == CommandState::killed && code == 0)
    return make_error(ErrorCode::bad_value, ctx + ": code: signal 0 is not valid");
  if (state != CommandState::exited && state != CommandState::killed && code != 0)
    return make_error(ErrorCode::bad_value,
                      ctx + format(": code: must be 0 when the state is %u (neither exited nor killed)",
                                   static_cast<unsigned>(state)));
  return std::nullopt;
}
inline std::optional<Error> check_command_input(const std::string& ctx, std::uint8_t input) {
  if (input > static_cast<std::uint8_t>(CommandInput::incomplete))
    return make_error(ErrorCode::bad_value, ctx + format(": input: unknown value %u", unsigned{input}));
  return std::nullopt;
}

// PEEK and PEEKED fields the decoder and the encoder both check (version 3).
inline std::optional<Error> check_peek(const Peek& p) {
  if (p.size == 0) return make_error(ErrorCode::bad_value, "PEEK: size: 0 is not valid");
  if (p.size > kMaxPeek)
    return make_error(ErrorCode::limit, format("PEEK: size: %u bytes, over the limit of %zu", unsigned{p.size}, kMaxPeek));
  return std::nullopt;
}

inline std::optional<Error> check_peeked(std::uint64_t id, std::uint64_t offset, std::uint64_t written, std::size_t n) {
  if (id == 0 && (offset != 0 || written != 0 || n != 0))
    return make_error(ErrorCode::bad_value, "PEEKED: id 0 (no such stream) with an offset, a size or bytes");
  return std::nullopt;
}

}  // namespace capturefs::proto::detail
