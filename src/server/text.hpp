// Text helpers shared by the socket server and the CLI clients: JSON string
// escaping of raw path bytes, printable renderings for messages and tables,
// base64, and timestamps. Pure functions, no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace capturefs::server {

/// \brief True if `s` is strict UTF-8 (RFC 3629: no overlong forms, no
/// surrogates, nothing above U+10FFFF), the rule docs/protocol.md uses.
bool valid_utf8(std::string_view s);

/// \brief `s` as a quoted JSON string. Valid UTF-8 sequences are copied;
/// `"` `\` and the control characters U+0000..U+001F and U+007F are escaped
/// (`\n`, `\t`, ... or `\u00XX`); every byte that is not part of a valid
/// UTF-8 sequence is written as `\u00XX` (XX = the byte, so 0xFF becomes
/// `\u00ff`). The output is always valid UTF-8 and valid JSON. Decoding it
/// does not give the bytes back when the input was not UTF-8 (`\u00ff` is
/// also what the valid sequence C3 BF gives): callers that need the exact
/// bytes add a base64 field (see json_path_fields).
std::string json_string(std::string_view s);

/// \brief `"path":"..."` and, when `path` is not valid UTF-8, also
/// `,"path_base64":"..."` with its exact bytes. `key` replaces "path".
std::string json_path_fields(std::string_view path, std::string_view key = "path");

/// \brief Standard base64 (RFC 4648, with padding).
std::string base64(std::string_view s);

/// \brief A rendering for people (log lines, ERROR messages, tables):
/// valid UTF-8 text is kept, control characters become `\n`, `\t`, `\xHH`,
/// a backslash becomes `\\`, and bytes that are not valid UTF-8 become
/// `\xHH`. The result is valid UTF-8 on one line.
std::string printable(std::string_view s);

/// \brief Cuts `s` (valid UTF-8) to at most `max` bytes at a character
/// boundary, ending in "..." when cut.
std::string fit_text(std::string s, std::size_t max);

/// \brief "2023-11-14T22:13:20.123456789Z" (UTC) for ns since the epoch.
std::string iso_time(std::int64_t ns);

/// \brief "1.5 MiB/s"-style byte counts: "0", "512", "1.5K", "20.0M", ...
std::string human_bytes(std::uint64_t n);

}  // namespace capturefs::server
