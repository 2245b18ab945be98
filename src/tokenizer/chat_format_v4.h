// The DeepSeek-V4 prompt format: what DeepSeek's V4 encoder renders for a conversation, and the
// way back from generated text to an answer (reasoning, content, tool calls). Unlike V3 it is not a
// Jinja template: tool results are merged into user turns, tools are listed in DSML markup, the
// reasoning of earlier turns is dropped, and "<think>" / "</think>" after "<｜Assistant｜>" select
// thinking or chat mode. V4.1 speaks a dialect of it (docs/serving.md#deepseek-v41-chat): DSML tags
// with a leading space ("<｜DSML｜ calls>"), a numeric reasoning effort in a "<｜System｜>" line,
// system messages marked with "<｜System｜>". Checked against the published V4 vectors in
// ../shared/testdata and vectors of V4.1's published encoder in tests/data/dsv41-chat-encoding.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/chat_format.h"

namespace megamoe {

enum class V4Dialect { V4, V41 };

struct V4PromptOptions {
  V4Dialect dialect = V4Dialect::V4;
  bool thinking = false;         // thinking mode: the model answers after "<think>...</think>"
  bool drop_thinking = true;     // drop the reasoning of assistant turns before the last user turn
                                 // (kept anyway when any message lists tools)
  bool add_bos = true;           // begin with "<｜begin▁of▁sentence｜>"
  std::string reasoning_effort;  // V4: "", "high" or "max" (thinking mode: "max" adds an instruction);
                                 // V4.1: "" (high), "low" (50), "high" (75), "max" (100) or "1".."100"
  nlohmann::ordered_json tools;  // an API's top-level tool list (null: none), see render_deepseek_v4_prompt
};

// The prompt for OpenAI-style `messages` exactly as DeepSeek's V4 encoder renders it. Roles:
// system, developer (a user turn that may carry tools), user (optional "task": action, query,
// authority, domain, title, read_url), assistant ("content", "reasoning_content", "tool_calls",
// optional "wo_eos"), tool ("content", "tool_call_id"), latest_reminder. "tools" and
// "response_format" belong to a system or developer message; options.tools go to the first
// message when it is one, else to an empty system message put in front. A conversation ending in
// a user turn ends with "<｜Assistant｜>" and "<think>" (thinking) or "</think>" (chat).
// Errors name the message and field at fault.
std::string render_deepseek_v4_prompt(const nlohmann::ordered_json& messages, const V4PromptOptions& options);

// A generated answer taken apart.
struct V4Completion {
  std::string reasoning_content;     // thinking mode: the text before "</think>"
  std::string content;               // the answer
  std::vector<ToolCall> tool_calls;  // from a trailing DSML tool_calls block; arguments as a JSON text
};

// Splits the text generated after a V4 prompt (in `thinking` mode or not). Lenient, since
// generation may stop anywhere: without "</think>" everything is reasoning; a final
// "<｜end▁of▁sentence｜>" is dropped; an unfinished tool call is dropped. This is what a server
// returns as the OpenAI-style `reasoning_content`, `content` and `tool_calls`.
V4Completion parse_deepseek_v4_completion(std::string_view text, bool thinking, V4Dialect dialect = V4Dialect::V4);

// How much of a text still being generated parse_deepseek_v4_completion can read for good: all
// but a trailing piece that may yet grow into "<think>", "</think>", "<｜end▁of▁sentence｜>" or
// the start of a tool-call block. The parse of that part only grows as text comes, so a stream
// sends its new pieces and never a marker.
size_t settled_deepseek_v4_length(std::string_view text, V4Dialect dialect = V4Dialect::V4);

// The V4 prompt format's dialect that models of this config.json architecture take (nullopt: none).
std::optional<V4Dialect> deepseek_v4_prompt_dialect(std::string_view architecture);

// `value` as Python's json.dumps(value, ensure_ascii=False) writes it (", " and ": " separators,
// keys in their order), which is how V4 prompts show tool schemas and arguments.
std::string python_json_dumps(const nlohmann::ordered_json& value);

}  // namespace megamoe
