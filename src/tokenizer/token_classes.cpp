#include "tokenizer/token_classes.h"

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <unordered_map>

#include "tokenizer/bpe.h"
#include "util/error.h"

namespace megamoe {
namespace {

// Unicode normalization and case mapping are ICU's (libicu): tables no one should write by hand.
const icu::Normalizer2& normalizer(bool compatibility_composed) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n =
      compatibility_composed ? icu::Normalizer2::getNFKCInstance(status) : icu::Normalizer2::getNFDInstance(status);
  if (U_FAILURE(status)) fail("ICU: no Unicode normalization data ({})", u_errorName(status));
  return *n;
}

bool is_combining_mark(UChar32 c) {
  const int8_t type = u_charType(c);
  return type == U_NON_SPACING_MARK || type == U_ENCLOSING_MARK || type == U_COMBINING_SPACING_MARK;
}

}  // namespace

std::string engram_normalize(std::string_view text) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::UnicodeString composed = normalizer(true).normalize(
      icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), int32_t(text.size()))), status);
  const icu::UnicodeString decomposed = normalizer(false).normalize(composed, status);
  if (U_FAILURE(status)) fail("ICU: cannot normalize a token's text ({})", u_errorName(status));
  icu::UnicodeString out;
  bool in_space_run = false;
  for (int32_t i = 0; i < decomposed.length();) {
    const UChar32 c = decomposed.char32At(i);
    i += U16_LENGTH(c);
    if (is_combining_mark(c)) continue;
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
      if (!in_space_run) out.append(UChar32(' '));
      in_space_run = true;
      continue;
    }
    in_space_run = false;
    icu::UnicodeString lower(c);  // alone: no context-dependent mappings (final sigma)
    out.append(lower.toLower(icu::Locale::getRoot()));
  }
  if (out != icu::UnicodeString(UChar32(' '))) {
    int32_t begin = 0, end = out.length();
    while (begin < end && u_isUWhiteSpace(out.char32At(begin))) begin += U16_LENGTH(out.char32At(begin));
    while (end > begin && u_isUWhiteSpace(out.char32At(end - 1))) end -= U16_LENGTH(out.char32At(end - 1));
    out = icu::UnicodeString(out, begin, end - begin);
  }
  std::string utf8;
  out.toUTF8String(utf8);
  return utf8;
}

TokenClasses engram_token_classes(const Tokenizer& tokenizer) {
  TokenClasses classes;
  std::unordered_map<std::string, int32_t> by_key;
  for (int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
    std::string key;
    try {
      const std::string text = tokenizer.decode(std::span(&id, 1));
      if (text.find("\xEF\xBF\xBD") != std::string::npos) {  // U+FFFD: not whole characters
        const auto added = std::find_if(tokenizer.added_tokens().begin(), tokenizer.added_tokens().end(),
                                        [&](const AddedToken& t) { return t.id == id; });
        key = added != tokenizer.added_tokens().end() ? added->content : byte_level_spelling(tokenizer.token_bytes(id));
      } else {
        key = engram_normalize(text);
        if (key.empty()) key = text;
      }
    } catch (const Error&) {  // an id the vocabulary skips: no text
    }
    const auto [it, inserted] = by_key.emplace(key, int32_t(classes.count));
    classes.count += inserted;
    classes.of_token.push_back(it->second);
  }
  return classes;
}

}  // namespace megamoe
