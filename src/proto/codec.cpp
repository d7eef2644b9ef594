#include "proto/codec.hpp"
#include "proto/codec_impl.hpp"

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
using namespace detail;

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

}  // namespace capturefs::proto
