// parse_size() and format_size().
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "core/size.hpp"

namespace {

using capturefs::core::format_size;
using capturefs::core::parse_size;

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
constexpr std::uint64_t K = 1ULL << 10, M = 1ULL << 20, G = 1ULL << 30, T = 1ULL << 40;

TEST(ParseSize, PlainNumbers) {
  EXPECT_EQ(parse_size("0"), std::optional<std::uint64_t>(0));
  EXPECT_EQ(parse_size("1"), std::optional<std::uint64_t>(1));
  EXPECT_EQ(parse_size("4096"), std::optional<std::uint64_t>(4096));
  EXPECT_EQ(parse_size("007"), std::optional<std::uint64_t>(7));
  EXPECT_EQ(parse_size("18446744073709551615"), std::optional<std::uint64_t>(kMax));
}

TEST(ParseSize, PlainNumberWithByteSuffix) {
  EXPECT_EQ(parse_size("512B"), std::optional<std::uint64_t>(512));
  EXPECT_EQ(parse_size("512b"), std::optional<std::uint64_t>(512));
}

TEST(ParseSize, BinaryUnits) {
  EXPECT_EQ(parse_size("1K"), std::optional<std::uint64_t>(K));
  EXPECT_EQ(parse_size("64K"), std::optional<std::uint64_t>(64 * K));
  EXPECT_EQ(parse_size("64M"), std::optional<std::uint64_t>(64 * M));
  EXPECT_EQ(parse_size("1G"), std::optional<std::uint64_t>(G));
  EXPECT_EQ(parse_size("2T"), std::optional<std::uint64_t>(2 * T));
  EXPECT_EQ(parse_size("0G"), std::optional<std::uint64_t>(0));
}

TEST(ParseSize, UnitSpellingsAndCase) {
  EXPECT_EQ(parse_size("64MiB"), std::optional<std::uint64_t>(64 * M));
  EXPECT_EQ(parse_size("64MB"), std::optional<std::uint64_t>(64 * M));
  EXPECT_EQ(parse_size("1g"), std::optional<std::uint64_t>(G));
  EXPECT_EQ(parse_size("3k"), std::optional<std::uint64_t>(3 * K));
  EXPECT_EQ(parse_size("5m"), std::optional<std::uint64_t>(5 * M));
  EXPECT_EQ(parse_size("1t"), std::optional<std::uint64_t>(T));
  EXPECT_EQ(parse_size("2gib"), std::optional<std::uint64_t>(2 * G));
  EXPECT_EQ(parse_size("2GiB"), std::optional<std::uint64_t>(2 * G));
  EXPECT_EQ(parse_size("2gb"), std::optional<std::uint64_t>(2 * G));
  EXPECT_EQ(parse_size("7KIB"), std::optional<std::uint64_t>(7 * K));
}

TEST(ParseSize, Malformed) {
  for (const char* s : {"", "M", "K", "B", "iB", "12X", "1.5G", "1,5G", " 1", "1 ", "1 M", "-1",
                        "+1", "0x10", "1e3", "1BB", "1Bi", "1KiBB", "1Ki", "1MBi", "1MM",
                        "1GT", "1KB2", "12 34", "1\n"}) {
    EXPECT_EQ(parse_size(s), std::nullopt) << "input: \"" << s << "\"";
  }
}

TEST(ParseSize, Overflow) {
  // One past the largest plain number.
  EXPECT_EQ(parse_size("18446744073709551616"), std::nullopt);
  EXPECT_EQ(parse_size("99999999999999999999"), std::nullopt);
  EXPECT_EQ(parse_size("184467440737095516150"), std::nullopt);
  // The largest multiple that fits, and the first that does not.
  EXPECT_EQ(parse_size("16777215T"), std::optional<std::uint64_t>(16777215ULL * T));
  EXPECT_EQ(parse_size("16777216T"), std::nullopt);  // 2^64
  EXPECT_EQ(parse_size("17179869183G"), std::optional<std::uint64_t>(17179869183ULL * G));
  EXPECT_EQ(parse_size("17179869184G"), std::nullopt);
  EXPECT_EQ(parse_size("17592186044416M"), std::nullopt);
  EXPECT_EQ(parse_size("18014398509481984K"), std::nullopt);
  EXPECT_EQ(parse_size("18014398509481983K"), std::optional<std::uint64_t>(18014398509481983ULL * K));
}

TEST(FormatSize, Bytes) {
  EXPECT_EQ(format_size(0), "0 B");
  EXPECT_EQ(format_size(1), "1 B");
  EXPECT_EQ(format_size(512), "512 B");
  EXPECT_EQ(format_size(1023), "1023 B");
}

TEST(FormatSize, WholeUnits) {
  EXPECT_EQ(format_size(K), "1 KiB");
  EXPECT_EQ(format_size(64 * M), "64 MiB");
  EXPECT_EQ(format_size(G), "1 GiB");
  EXPECT_EQ(format_size(2 * T), "2 TiB");
  EXPECT_EQ(format_size(1024 * T), "1024 TiB");  // TiB is the largest unit
  EXPECT_EQ(format_size(kMax), "16777216 TiB");
}

TEST(FormatSize, Fractions) {
  EXPECT_EQ(format_size(K + K / 2), "1.5 KiB");
  EXPECT_EQ(format_size(G + G / 2), "1.5 GiB");
  EXPECT_EQ(format_size(M + 100 * K), "1.1 MiB");  // 1.098 MiB, one decimal
  EXPECT_EQ(format_size(3 * M + 1), "3.0 MiB");   // not whole: one decimal
}

TEST(FormatSize, WholeUnitsRoundTripThroughParse) {
  for (std::uint64_t v : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{1023}, K, 5 * K, 64 * M, 3 * G, 7 * T}) {
    std::string s = format_size(v);
    s.erase(s.find(' '), 1);  // "64 MiB" -> "64MiB"
    EXPECT_EQ(parse_size(s), std::optional<std::uint64_t>(v)) << s;
  }
}

}  // namespace
