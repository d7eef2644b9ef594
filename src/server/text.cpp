#include "server/text.hpp"

#include <cstdio>
#include <ctime>

#include "proto/codec.hpp"

namespace capturefs::server {

namespace {

using proto::utf8_sequence;

constexpr char kHex[] = "0123456789abcdef";

void hex_escape(std::string& out, const char* prefix, unsigned char c) {
  out += prefix;
  out += kHex[c >> 4];
  out += kHex[c & 15];
}

}  // namespace

bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// Copies valid multi-byte UTF-8 as is and hands every other byte to
// `one(out, byte, valid)`, where `valid` is false for a byte that is not UTF-8.
template <class One>
std::string escape_each(std::string_view s, One one) {
  std::string out;
  out.reserve(s.size() + 2);
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence(s, i);
    if (n > 1) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      one(out, static_cast<unsigned char>(s[i++]), n == 1);
    }
  }
  return out;
}

std::string json_string(std::string_view s) {
  return '"' + escape_each(s, [](std::string& out, unsigned char c, bool valid) {
    switch (valid ? c : 0) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:  // control characters, and bytes that are not UTF-8
        if (!valid || c < 0x20 || c == 0x7F) hex_escape(out, "\\u00", c);
        else out += static_cast<char>(c);
    }
  }) + '"';
}

std::string json_path_fields(std::string_view path, std::string_view key) {
  std::string out = json_string(key) + ":" + json_string(path);
  if (!valid_utf8(path)) out += "," + json_string(std::string(key) + "_base64") + ":\"" + base64(path) + "\"";
  return out;
}

std::string base64(std::string_view s) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((s.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= s.size(); i += 3) {
    const unsigned v = (static_cast<unsigned char>(s[i]) << 16) | (static_cast<unsigned char>(s[i + 1]) << 8) |
                       static_cast<unsigned char>(s[i + 2]);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (const std::size_t rest = s.size() - i; rest != 0) {
    unsigned v = static_cast<unsigned char>(s[i]) << 16;
    if (rest == 2) v |= static_cast<unsigned char>(s[i + 1]) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += rest == 2 ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string printable(std::string_view s) {
  return escape_each(s, [](std::string& out, unsigned char c, bool valid) {
    if (valid && c == '\\') out += "\\\\";
    else if (valid && c == '\n') out += "\\n";
    else if (valid && c == '\t') out += "\\t";
    else if (valid && c == '\r') out += "\\r";
    else if (!valid || c < 0x20 || c == 0x7F) hex_escape(out, "\\x", c);
    else out += static_cast<char>(c);
  });
}

std::string fit_text(std::string s, std::size_t max) {
  if (s.size() <= max) return s;
  std::size_t cut = max >= 3 ? max - 3 : 0;
  // Back up to the start of a character (never inside a sequence).
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  s.resize(cut);
  if (max >= 3) s += "...";
  return s;
}

std::string iso_time(std::int64_t ns) {
  std::int64_t sec = ns / 1000000000;
  std::int64_t frac = ns % 1000000000;
  if (frac < 0) {
    frac += 1000000000;
    --sec;
  }
  const std::time_t t = static_cast<std::time_t>(sec);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[96];
  std::snprintf(out, sizeof out, "%.*s.%09lldZ", static_cast<int>(n), buf, static_cast<long long>(frac));
  return out;
}

std::string human_bytes(std::uint64_t n) {
  static constexpr const char* kUnits[] = {"K", "M", "G", "T", "P"};
  if (n < 1024) return std::to_string(n);
  double v = static_cast<double>(n);
  int u = -1;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%s", v, kUnits[u]);
  return buf;
}

}  // namespace capturefs::server
