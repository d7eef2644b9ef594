// Internal to the server (src/server/*.cpp): the types and helpers its
// files share to turn core events into protocol frames. Not installed.
#pragma once

#include <ctime>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/delivery.hpp"
#include "core/sink.hpp"
#include "core/types.hpp"
#include "proto/codec.hpp"

namespace capturefs::server {

using Clock = std::chrono::steady_clock;
using Bytes = std::vector<std::byte>;
using proto::ErrorCode;

std::string errstr(int e);
std::int64_t ns_of(const timespec& t);
proto::Error make_error(ErrorCode code, std::string message);
core::PathFilter make_filter(const proto::Subscribe& s);
proto::StreamState state_of(const core::StreamStats& st);
bool encodable_path(std::string_view p);
/// Encodes `f`; empty (and logged) if it cannot be encoded.
Bytes encode_frame(const proto::Frame& f);
proto::Opened opened_of(const core::StreamInfo& i, std::uint64_t offset);
proto::Closed closed_of(std::uint64_t id, const core::StreamEnd& end);

}  // namespace capturefs::server
