#include "tokenizer/utf8.h"

#include <cstdint>

namespace megamoe {
namespace {

enum class CharStatus { kValid, kInvalid, kTruncated };

struct CharScan {
  CharStatus status;
  size_t length;  // kValid: the character; kInvalid: the maximal ill-formed subpart; kTruncated: all the rest
};

// Reads the character at `bytes[pos]` by the WHATWG UTF-8 decoder's rules: the lead byte fixes the
// length and the allowed range of the second byte (which excludes overlongs and surrogates).
CharScan scan_char(std::string_view bytes, size_t pos) {
  const auto lead = uint8_t(bytes[pos]);
  if (lead < 0x80) return {CharStatus::kValid, 1};
  size_t needed;
  uint8_t lower = 0x80, upper = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    needed = 1;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    needed = 2;
    if (lead == 0xE0) lower = 0xA0;
    if (lead == 0xED) upper = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    needed = 3;
    if (lead == 0xF0) lower = 0x90;
    if (lead == 0xF4) upper = 0x8F;
  } else {
    return {CharStatus::kInvalid, 1};
  }
  for (size_t k = 1; k <= needed; ++k) {
    if (pos + k >= bytes.size()) return {CharStatus::kTruncated, bytes.size() - pos};
    const auto b = uint8_t(bytes[pos + k]);
    if (b < lower || b > upper) return {CharStatus::kInvalid, k};
    lower = 0x80;
    upper = 0xBF;
  }
  return {CharStatus::kValid, needed + 1};
}

}  // namespace

std::optional<size_t> find_invalid_utf8(std::string_view bytes) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    // Runs of ASCII dominate real text; skip them eight bytes at a time.
    while (pos + 8 <= bytes.size()) {
      uint64_t word;
      __builtin_memcpy(&word, bytes.data() + pos, 8);
      if (word & 0x8080808080808080ull) break;
      pos += 8;
    }
    if (pos >= bytes.size()) break;
    const CharScan scan = scan_char(bytes, pos);
    if (scan.status != CharStatus::kValid) return pos;
    pos += scan.length;
  }
  return std::nullopt;
}

size_t append_replacing_invalid_utf8(std::string& out, std::string_view bytes, bool final) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  size_t pos = 0;
  while (pos < bytes.size()) {
    const CharScan scan = scan_char(bytes, pos);
    if (scan.status == CharStatus::kTruncated && !final) break;
    if (scan.status == CharStatus::kValid) out.append(bytes.substr(pos, scan.length));
    else out.append(kReplacement);
    pos += scan.length;
  }
  return pos;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

char32_t next_code_point(std::string_view text, size_t& pos) {
  const auto lead = uint8_t(text[pos]);
  const size_t length = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
  char32_t cp = length == 1 ? lead : lead & (0x7F >> length);
  for (size_t k = 1; k < length; ++k) cp = (cp << 6) | (uint8_t(text[pos + k]) & 0x3F);
  pos += length;
  return cp;
}

}  // namespace megamoe
