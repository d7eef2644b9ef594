#include "server/wire.hpp"

#include <algorithm>
#include <cstring>

#include "core/log.hpp"
#include "server/text.hpp"

namespace capturefs::server {

std::string errstr(int e) { return std::strerror(e); }

std::int64_t ns_of(const timespec& t) {
  return static_cast<std::int64_t>(t.tv_sec) * 1000000000 + static_cast<std::int64_t>(t.tv_nsec);
}

proto::Error make_error(ErrorCode code, std::string message) {
  return proto::Error{code, fit_text(std::move(message), proto::kMaxText)};
}

core::PathFilter make_filter(const proto::Subscribe& s) {
  if (s.literal) {
    return [patterns = s.patterns](std::string_view path) {
      return std::find(patterns.begin(), patterns.end(), path) != patterns.end();
    };
  }
  return core::glob_filter(s.patterns);
}

proto::StreamState state_of(const core::StreamStats& st) {
  if (st.writers > 0) return st.consumer ? proto::StreamState::streaming : proto::StreamState::writing;
  return st.consumer ? proto::StreamState::draining : proto::StreamState::held;
}

bool encodable_path(std::string_view p) {
  return !p.empty() && p.size() <= proto::kMaxPath && p.find('\0') == std::string_view::npos;
}

Bytes encode_frame(const proto::Frame& f) {
  Bytes b;
  if (auto e = proto::encode(f, b)) log::error("socket: cannot encode {}: {}", proto::frame_name(f), e->message);
  return b;
}

proto::Opened opened_of(const core::StreamInfo& i, std::uint64_t offset) {
  proto::Opened o;
  o.id = i.id;
  o.offset = offset;
  o.time_ns = ns_of(i.created);
  o.pid = static_cast<std::uint32_t>(i.writer_pid);
  o.uid = i.writer_uid;
  o.path = i.path;
  return o;
}

proto::Closed closed_of(std::uint64_t id, const core::StreamEnd& end) {
  proto::Closed c;
  c.id = id;
  c.total = end.total;
  c.status = end.complete ? proto::CloseStatus::complete : proto::CloseStatus::aborted;
  if (!end.complete) {
    c.reason = fit_text(printable(end.reason), proto::kMaxText);
    if (c.reason.empty()) c.reason = "aborted";
  }
  return c;
}

}  // namespace capturefs::server
