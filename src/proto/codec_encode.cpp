// The encoder (codec.hpp): frames to bytes.
#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "proto/codec.hpp"
#include "proto/codec_impl.hpp"

namespace capturefs::proto {

using namespace detail;

namespace {

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

}  // namespace

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

}  // namespace capturefs::proto
