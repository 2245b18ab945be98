#include "tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <functional>

#include "util/error.h"

namespace megamoe {
namespace {

// JavaScript's \s: WhiteSpace and LineTerminator of ECMA-262 (the Zs characters, TAB, VT, FF, LF,
// CR, U+2028, U+2029 and U+FEFF). PCRE2's own \s lacks U+FEFF and is ASCII-only without UCP.
constexpr std::string_view kJsWhitespace =
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"
    "\\x{3000}\\x{FEFF}";

// GPT-2's split, which ByteLevel applies when its use_regex is true.
constexpr std::string_view kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// Rewrites \s and \S into explicit classes of JavaScript's whitespace; everything else in a
// tokenizer.json pattern means the same to PCRE2 as to JavaScript.
std::string translate_pattern(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char escaped = pattern[++i];
      if (escaped == 's') {
        out += in_class ? std::string(kJsWhitespace) : "[" + std::string(kJsWhitespace) + "]";
      } else if (escaped == 'S') {
        if (in_class) fail("regex \"{}\": \\S inside a character class is not supported", pattern);
        out += "[^" + std::string(kJsWhitespace) + "]";
      } else {
        out += c;
        out += escaped;
      }
      continue;
    }
    if (c == '[' && !in_class) in_class = true;
    else if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

std::string escape_literal(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && static_cast<unsigned char>(c) < 0x80) out += '\\';
    out += c;
  }
  return out;
}

// Per-thread matching state: PCRE2 match data is not shareable between threads, and JIT patterns
// on long runs of text may need more than the default 32 KiB machine stack.
struct MatchState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  MatchState() { pcre2_jit_stack_assign(context, nullptr, jit_stack); }
  ~MatchState() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_data_free(data);
  }
};

size_t utf8_char_length(unsigned char lead) { return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

SplitBehavior parse_behavior(const std::string& name, const std::string& where) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  fail("{}: unknown split behavior \"{}\"", where, name);
}

struct Segment {
  size_t start, end;
  bool is_match;
};

// Hugging Face's NormalizedString::split: cuts `text` at the matches and applies the behaviour.
void split_piece(std::string_view text, const TokenizerRegex& regex, SplitBehavior behavior, bool invert,
                 std::vector<std::pair<size_t, size_t>>& matches, std::vector<Segment>& segments,
                 std::vector<std::string_view>& out) {
  matches.clear();
  regex.find_all(text, matches);
  segments.clear();
  size_t previous_end = 0;
  for (const auto& [start, end] : matches) {
    if (start > previous_end) segments.push_back({previous_end, start, invert});
    segments.push_back({start, end, !invert});
    previous_end = end;
  }
  if (previous_end < text.size()) segments.push_back({previous_end, text.size(), invert});

  const size_t first_out = out.size();
  auto piece = [&](const Segment& s) { return text.substr(s.start, s.end - s.start); };
  auto extend_last = [&](size_t end) {
    const std::string_view last = out.back();
    out.back() = std::string_view(last.data(), size_t(text.data() + end - last.data()));
  };
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Segment& s : segments) out.push_back(piece(s));
      break;
    case SplitBehavior::kRemoved:
      for (const Segment& s : segments)
        if (!s.is_match) out.push_back(piece(s));
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Segment& s : segments) {
        if (s.is_match && !previous_match && out.size() > first_out) extend_last(s.end);
        else out.push_back(piece(s));
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool pending_match = false;  // the last piece is a match waiting for what follows it
      for (const Segment& s : segments) {
        if (pending_match && !s.is_match) extend_last(s.end);
        else out.push_back(piece(s));
        pending_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kContiguous: {
      for (size_t i = 0; i < segments.size(); ++i) {
        if (i > 0 && segments[i].is_match == segments[i - 1].is_match) extend_last(segments[i].end);
        else out.push_back(piece(segments[i]));
      }
      break;
    }
  }
  // Empty pieces (from empty matches) carry nothing to encode.
  out.erase(
      std::remove_if(out.begin() + std::ptrdiff_t(first_out), out.end(), [](std::string_view p) { return p.empty(); }),
      out.end());
}

}  // namespace

TokenizerRegex::TokenizerRegex(std::string_view pattern) {
  const std::string translated = translate_pattern(pattern);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(), PCRE2_UTF,
                                   &error_code, &error_offset, nullptr);
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof message);
    fail("regex \"{}\" does not compile: {} (at offset {} of \"{}\")", pattern, reinterpret_cast<char*>(message),
         error_offset, translated);
  }
  // Without JIT (an unsupported CPU) pcre2_match falls back to the interpreter: slower, same results.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  code_ = std::shared_ptr<void>(code, [](void* c) { pcre2_code_free(static_cast<pcre2_code*>(c)); });
}

void TokenizerRegex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& matches) const {
  thread_local MatchState state;
  const auto* code = static_cast<const pcre2_code*>(code_.get());
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t offset = 0;
  while (offset <= text.size()) {
    const int rc = pcre2_match(code, subject, text.size(), offset, PCRE2_NO_UTF_CHECK, state.data, state.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof message);
      fail("regex match failed on a text of {} bytes: {}", text.size(), reinterpret_cast<char*>(message));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.data);
    const size_t start = ovector[0], end = ovector[1];
    matches.emplace_back(start, end);
    if (end > start) {
      offset = end;
    } else {
      if (end >= text.size()) break;
      offset = end + utf8_char_length(static_cast<unsigned char>(text[end]));
    }
  }
}

PreTokenizer PreTokenizer::from_json(const nlohmann::json& config, const std::string& where) {
  PreTokenizer result;
  bool byte_level_seen = false;
  // Flattens nested Sequences into the list of steps.
  std::function<void(const nlohmann::json&, const std::string&)> add = [&](const nlohmann::json& step,
                                                                           const std::string& at) {
    if (!step.is_object() || !step.contains("type") || !step["type"].is_string())
      fail("{}: expected an object with a \"type\"", at);
    if (byte_level_seen) fail("{}: steps after ByteLevel are not supported", at);
    const std::string type = step["type"];
    try {
      if (type == "Sequence") {
        const nlohmann::json& list = step.at("pretokenizers");
        for (size_t i = 0; i < list.size(); ++i) add(list[i], fmt::format("{}.pretokenizers[{}]", at, i));
      } else if (type == "Split") {
        const nlohmann::json& pattern = step.at("pattern");
        std::string regex;
        if (pattern.contains("Regex")) regex = pattern["Regex"].get<std::string>();
        else if (pattern.contains("String")) regex = escape_literal(pattern["String"].get<std::string>());
        else fail("{}.pattern: expected \"Regex\" or \"String\"", at);
        result.steps_.push_back({TokenizerRegex(regex), parse_behavior(step.at("behavior").get<std::string>(), at),
                                 step.value("invert", false)});
      } else if (type == "ByteLevel") {
        if (step.value("add_prefix_space", false)) fail("{}: add_prefix_space=true is not supported", at);
        if (step.value("use_regex", true))
          result.steps_.push_back({TokenizerRegex(kGpt2Pattern), SplitBehavior::kIsolated, false});
        byte_level_seen = true;
      } else {
        fail("{}: pre-tokenizer type \"{}\" is not supported (only Sequence, Split and ByteLevel)", at, type);
      }
    } catch (const nlohmann::json::exception& e) {
      fail("{}: {}", at, e.what());
    }
  };
  if (config.is_null()) fail("{}: missing; only byte-level BPE tokenizers are supported", where);
  add(config, where);
  if (!byte_level_seen) fail("{}: no ByteLevel step; only byte-level BPE tokenizers are supported", where);
  return result;
}

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& pieces) const {
  // Reused across calls: encoding short texts would otherwise spend much of its time allocating.
  thread_local std::vector<std::string_view> current, next;
  thread_local std::vector<std::pair<size_t, size_t>> matches;
  thread_local std::vector<Segment> segments;
  current.assign(1, text);
  for (const Step& step : steps_) {
    next.clear();
    for (std::string_view piece : current)
      split_piece(piece, step.regex, step.behavior, step.invert, matches, segments, next);
    std::swap(current, next);
  }
  pieces.insert(pieces.end(), current.begin(), current.end());
}

const nlohmann::json& deepseek_v3_pre_tokenizer() {
  static const nlohmann::json config = nlohmann::json::parse(R"json({
    "type": "Sequence",
    "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "[一-龥぀-ゟ゠-ヿ]+"}, "behavior": "Isolated", "invert": false},
      {"type": "Split",
       "pattern": {"Regex": "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"},
       "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
    ]
  })json");
  return config;
}

}  // namespace megamoe
