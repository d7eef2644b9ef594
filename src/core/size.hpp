// Human-readable byte sizes ("64M", "1G") for options and messages.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace capturefs::core {

/// \brief Parses "4096", "64K", "64M", "1G", "2T" (binary units, optional
/// trailing "B"/"iB", case-insensitive). Returns nullopt on malformed input
/// or overflow.
std::optional<std::uint64_t> parse_size(std::string_view text);

/// \brief Formats a byte count compactly: "512 B", "64 MiB", "1.5 GiB".
std::string format_size(std::uint64_t bytes);

}  // namespace capturefs::core
