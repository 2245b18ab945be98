// The OpenAI API as JSON: reading and validating the bodies of /v1/completions and
// /v1/chat/completions into a GenerationRequest (chat in the model's prompt format: DeepSeek-V3's
// template, or DeepSeek-V4's and V4.1's encoder with thinking mode and tools), and writing completions,
// stream chunks, model lists and errors the way OpenAI does, so its SDKs parse them (V4 answers
// split into reasoning_content, content and tool_calls). No I/O here (see http_server.h).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "runtime/generation.h"
#include "serve/scheduler.h"
#include "tokenizer/chat_format_v4.h"
#include "util/error.h"

namespace megamoe::serve {

enum class Endpoint { Completions, ChatCompletions };

// How the generated text becomes the answer.
enum class AnswerFormat {
  Text,                // as generated: completions, and chat of V3-style models
  DeepseekV4,          // parse_deepseek_v4_completion in chat mode: content and tool_calls
  DeepseekV4Thinking,  // the same in thinking mode: reasoning_content first
};

// A request the server refuses: the HTTP status and OpenAI's error fields.
struct ApiError : Error {
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "",
           std::string type = "invalid_request_error");
  int status;
  std::string param, code, type;  // empty: null in the JSON
};

// {"error": {"message", "type", "param", "code"}}
nlohmann::json error_json(const ApiError& error);

// What reading a request needs to know of the server.
struct ApiContext {
  const GenerationSetup& setup;
  std::string model_name;                // the one model served
  GenerationParams defaults;             // for the fields a request leaves out
  int64_t max_choices = 1;               // n at most: the batch size, else a request could never run
  std::optional<V4Dialect> deepseek_v4;  // chat renders with render_deepseek_v4_prompt in this dialect
  bool default_thinking = false;         // V4 chat: thinking mode for the requests that do not choose
};

struct ApiRequest {
  Endpoint endpoint = Endpoint::Completions;
  GenerationRequest generation;
  bool stream = false;
  bool include_usage = false;     // stream_options.include_usage: a last chunk with the usage
  bool return_token_ids = false;  // choices carry their token ids too (always for a model without tokenizer)
  AnswerFormat answer = AnswerFormat::Text;
  V4Dialect dialect = V4Dialect::V4;  // of a DeepseekV4 answer
};

// Throws ApiError (4xx) naming the field at fault: malformed JSON, a missing or mistyped field, an
// unknown model, a prompt or max_tokens over the context, a value out of range, contradicting
// thinking switches. V4 chat reads chat_template_kwargs {thinking, enable_thinking,
// reasoning_effort, drop_thinking}, thinking (true/false or {"type": "enabled"|"disabled"}),
// reasoning_effort, tools and tool_choice (docs/serving.md).
ApiRequest parse_request(Endpoint endpoint, std::string_view body, const ApiContext& context);

// What every object of one response repeats.
struct ResponseHead {
  Endpoint endpoint = Endpoint::Completions;
  std::string id;       // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
  bool token_ids = false;  // choices carry "token_ids", the answer "prompt_token_ids"
  AnswerFormat answer = AnswerFormat::Text;
  V4Dialect dialect = V4Dialect::V4;
};
ResponseHead new_response_head(const ApiRequest& request, const std::string& model_name);

// {"prompt_tokens", "completion_tokens", "total_tokens"} of `choices` (each the whole choice).
nlohmann::json usage_json(int64_t prompt_tokens, std::span<const ChoiceDelta> choices);
// The whole answer of a request that does not stream: `choices` [n], each the whole choice.
nlohmann::json completion_json(const ResponseHead& head, std::span<const ChoiceDelta> choices,
                               std::span<const int32_t> prompt);

// What a streamed choice has sent of its V4 answer (reasoning, content, tool calls).
struct StreamedAnswer {
  std::string text;  // generated so far
  size_t reasoning_sent = 0, content_sent = 0, tool_calls_sent = 0;
};
// One stream chunk with what choice `index` gained; chat's first chunk of a choice names the role.
// A V4 chat chunk carries the new parts of the answer `streamed` keeps (reasoning_content while
// the model thinks, content after), holding back text that may be the start of a marker.
nlohmann::json chunk_json(const ResponseHead& head, int64_t index, const ChoiceDelta& delta, bool first,
                          StreamedAnswer& streamed);
// The last chunk when the client asked for usage: no choices, only the usage.
nlohmann::json usage_chunk_json(const ResponseHead& head, const nlohmann::json& usage);
// GET /v1/models
nlohmann::json models_json(const std::string& model_name, int64_t created);

// JSON text for the wire: invalid UTF-8 (never expected) is replaced rather than thrown.
std::string dump(const nlohmann::json& value);

}  // namespace megamoe::serve
