#include "serve/openai_api.h"

#include <fmt/format.h>

#include <chrono>
#include <limits>
#include <random>

#include "tokenizer/chat_format_v4.h"

namespace megamoe::serve {

using nlohmann::json;
// Request bodies keep their keys in order: V4 prompts show tool schemas as the client wrote them.
using Body = nlohmann::ordered_json;

ApiError::ApiError(int status, const std::string& message, std::string param, std::string code, std::string type)
    : Error(message), status(status), param(std::move(param)), code(std::move(code)), type(std::move(type)) {}

json error_json(const ApiError& error) {
  auto or_null = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  return {{"error",
           {{"message", error.what()},
            {"type", error.type},
            {"param", or_null(error.param)},
            {"code", or_null(error.code)}}}};
}

namespace {

[[noreturn]] void bad_field(const std::string& field, const std::string& what) {
  throw ApiError(400, fmt::format("'{}' {}", field, what), field);
}

// The value of an optional field: nullptr when absent or null.
const Body* field(const Body& body, const char* name) {
  const auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

std::optional<int64_t> integer_field(const Body& body, const char* name) {
  const Body* value = field(body, name);
  if (!value) return std::nullopt;
  if (!value->is_number_integer()) bad_field(name, "must be an integer");
  if (value->is_number_unsigned() && value->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
    bad_field(name, "is too large");
  return value->get<int64_t>();
}

std::optional<double> number_field(const Body& body, const char* name) {
  const Body* value = field(body, name);
  if (!value) return std::nullopt;
  if (!value->is_number()) bad_field(name, "must be a number");
  return value->get<double>();
}

std::optional<bool> bool_field(const Body& body, const char* name) {
  const Body* value = field(body, name);
  if (!value) return std::nullopt;
  if (!value->is_boolean()) bad_field(name, "must be true or false");
  return value->get<bool>();
}

// Token ids as a JSON array of integers (nullopt if `value` is something else).
std::optional<std::vector<int32_t>> token_ids(const Body& value) {
  if (!value.is_array() || value.empty()) return std::nullopt;
  std::vector<int32_t> ids;
  for (const Body& id : value) {
    if (!id.is_number_integer()) return std::nullopt;
    // Ids past int32 become -1, which plan_generation refuses as outside the vocabulary.
    const bool fits = id.is_number_unsigned()
                          ? id.get<uint64_t>() <= uint64_t(std::numeric_limits<int32_t>::max())
                          : id.get<int64_t>() >= 0 && id.get<int64_t>() <= std::numeric_limits<int32_t>::max();
    ids.push_back(fits ? id.get<int32_t>() : -1);
  }
  return ids;
}

// The calling error's message as an ApiError: 400, naming `param` when given.
template <typename F>
auto as_bad_request(const std::string& param, F&& f) {
  try {
    return f();
  } catch (const ApiError&) {
    throw;
  } catch (const Error& e) {
    throw ApiError(400, e.what(), param);
  }
}

std::vector<int32_t> completion_prompt(const Body& body, const ApiContext& context) {
  const Body* prompt = field(body, "prompt");
  if (!prompt) bad_field("prompt", "is required");
  // OpenAI also takes a list holding one prompt; several would be several requests.
  const Body& one = prompt->is_array() && prompt->size() == 1 && !(*prompt)[0].is_number() ? (*prompt)[0] : *prompt;
  if (one.is_string()) {
    if (!context.setup.tokenizer) bad_field("prompt", "must be token ids: the served model has no tokenizer");
    return as_bad_request("prompt", [&] { return encode_prompt(context.setup, one.get<std::string>()); });
  }
  if (auto ids = token_ids(one)) return *ids;
  bad_field("prompt", "must be a string or a non-empty array of token ids (one prompt per request)");
}

// A reasoning_effort of a V4 request, mapped to what the encoder takes: OpenAI's and DeepSeek's
// words ("none" is chat mode). V4 has two efforts (DeepSeek maps low and medium to high, xhigh to
// max); V4.1 takes 1-100 and three tiers, low 50, high 75 and max 100 (minimal is low, medium
// high, xhigh max).
std::string reasoning_effort(const Body& value, const std::string& name, V4Dialect dialect) {
  if (dialect == V4Dialect::V41 && value.is_number_integer()) {
    const int64_t effort = value.get<int64_t>();
    if (effort < 1 || effort > 100)
      bad_field(name, "must be from 1 to 100, or none, minimal, low, medium, high, xhigh, max");
    return std::to_string(effort);
  }
  const std::string effort = value.is_string() ? value.get<std::string>() : "";
  if (effort == "none") return "";
  if (dialect == V4Dialect::V41) {
    if (effort == "minimal" || effort == "low") return "low";
    if (effort == "medium" || effort == "high") return "high";
    if (effort == "xhigh" || effort == "max") return "max";
    bad_field(name, "must be from 1 to 100, or none, minimal, low, medium, high, xhigh, max");
  }
  if (effort == "minimal" || effort == "low" || effort == "medium" || effort == "high") return "high";
  if (effort == "xhigh" || effort == "max") return "max";
  bad_field(name, "must be one of none, minimal, low, medium, high, xhigh, max");
}

// The V4 prompt options of a chat request. Thinking mode may be chosen the way vLLM and SGLang
// take it (chat_template_kwargs.thinking, or enable_thinking as for Qwen3), the way DeepSeek's API
// does (thinking: {"type": "enabled" | "disabled"}, or plainly true/false) and by reasoning_effort
// (any effort but "none" thinks); switches that disagree are refused, naming the later one.
V4PromptOptions v4_prompt_options(const Body& body, const ApiContext& context) {
  V4PromptOptions options;
  options.dialect = *context.deepseek_v4;
  std::optional<bool> thinking;
  std::string chosen_by, effort_by;  // the fields that set thinking and reasoning_effort
  auto choose = [&](bool value, const std::string& name) {
    if (thinking && *thinking != value)
      bad_field(name, fmt::format("turns thinking mode {}, but '{}' turns it {}", value ? "on" : "off", chosen_by,
                                  *thinking ? "on" : "off"));
    thinking = value;
    chosen_by = name;
  };
  auto choose_effort = [&](const Body& value, const std::string& name) {
    const std::string effort = reasoning_effort(value, name, options.dialect);
    if (!options.reasoning_effort.empty() && !effort.empty() && effort != options.reasoning_effort)
      bad_field(name, fmt::format("asks for effort \"{}\", but '{}' for \"{}\"", effort, effort_by,
                                  options.reasoning_effort));
    choose(!effort.empty(), name);
    if (!effort.empty()) options.reasoning_effort = effort, effort_by = name;
  };
  if (const Body* kwargs = field(body, "chat_template_kwargs")) {
    if (!kwargs->is_object()) bad_field("chat_template_kwargs", "must be an object");
    for (const auto& [key, value] : kwargs->items()) {
      const std::string name = "chat_template_kwargs." + key;
      if (value.is_null()) continue;
      if (key == "reasoning_effort") {
        choose_effort(value, name);
        continue;
      }
      if (key != "thinking" && key != "enable_thinking" && key != "drop_thinking")
        bad_field(name,
                  "is not a setting of the DeepSeek-V4 prompt format (thinking, enable_thinking, "
                  "reasoning_effort, drop_thinking)");
      if (!value.is_boolean()) bad_field(name, "must be true or false");
      if (key == "drop_thinking") options.drop_thinking = value.get<bool>();
      else choose(value.get<bool>(), name);
    }
  }
  if (const Body* value = field(body, "thinking")) {
    const Body* type = value->is_object() ? field(*value, "type") : nullptr;
    if (value->is_boolean()) choose(value->get<bool>(), "thinking");
    else if (type && (*type == "enabled" || *type == "disabled")) choose(*type == "enabled", "thinking");
    else bad_field("thinking", "must be true, false, {\"type\": \"enabled\"} or {\"type\": \"disabled\"}");
  }
  if (const Body* value = field(body, "reasoning_effort")) choose_effort(*value, "reasoning_effort");
  options.thinking = thinking.value_or(context.default_thinking);

  if (const Body* tools = field(body, "tools")) {
    if (!tools->is_array()) bad_field("tools", "must be an array of tools");
    for (size_t k = 0; k < tools->size(); ++k) {
      const Body& tool = (*tools)[k];
      const Body* function = tool.is_object() ? field(tool, "function") : nullptr;
      const Body* name = function && function->is_object() ? field(*function, "name") : nullptr;
      if (!name || !name->is_string() || (field(tool, "type") && tool["type"] != "function"))
        bad_field(fmt::format("tools[{}]", k), "must be {\"type\": \"function\", \"function\": {\"name\": ...}}");
    }
    // "none" keeps the tools out of the prompt; the model cannot be made to call one.
    const Body* choice = field(body, "tool_choice");
    if (choice && *choice != "auto" && *choice != "none")
      bad_field("tool_choice", "must be \"auto\" or \"none\": the server cannot force a tool call");
    if (!choice || *choice == "auto") options.tools = *tools;
  }
  return options;
}

std::vector<int32_t> chat_prompt(AnswerFormat* answer, V4Dialect* dialect, const Body& body,
                                 const ApiContext& context) {
  const Body* messages = field(body, "messages");
  if (!messages) bad_field("messages", "is required");
  if (!context.setup.tokenizer)
    throw ApiError(400, "chat needs a tokenizer, and the served model has none", "messages");
  const Tokenizer& tokenizer = *context.setup.tokenizer;
  if (!context.deepseek_v4)
    return as_bad_request("messages", [&] {
      return tokenizer.encode(tokenizer.apply_chat_template(parse_chat_messages(json(*messages), "messages"), true));
    });
  const V4PromptOptions options = v4_prompt_options(body, context);
  *answer = options.thinking ? AnswerFormat::DeepseekV4Thinking : AnswerFormat::DeepseekV4;
  *dialect = options.dialect;
  return as_bad_request("messages", [&] { return tokenizer.encode(render_deepseek_v4_prompt(*messages, options)); });
}

std::vector<std::string> stop_strings(const Body& body) {
  const Body* stop = field(body, "stop");
  if (!stop) return {};
  if (stop->is_string()) return {stop->get<std::string>()};
  if (!stop->is_array()) bad_field("stop", "must be a string or an array of strings");
  std::vector<std::string> stops;
  for (const Body& s : *stop) {
    if (!s.is_string()) bad_field("stop", "must be a string or an array of strings");
    stops.push_back(s.get<std::string>());
  }
  return stops;
}

std::string random_hex(size_t digits) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string out;
  while (out.size() < digits) out += fmt::format("{:016x}", rng());
  return out.substr(0, digits);
}

const char* object_name(Endpoint endpoint, bool chunk) {
  if (endpoint == Endpoint::ChatCompletions) return chunk ? "chat.completion.chunk" : "chat.completion";
  return "text_completion";
}

json response_object(const ResponseHead& head, bool chunk) {
  return {
      {"id", head.id}, {"object", object_name(head.endpoint, chunk)}, {"created", head.created}, {"model", head.model}};
}

// OpenAI's finish_reason; "tool_calls" for an answer that ended calling tools.
json finish_json(FinishReason finish, bool tool_calls = false) {
  if (finish == FinishReason::Running) return nullptr;
  if (tool_calls && (finish == FinishReason::Stop || finish == FinishReason::Eos)) return "tool_calls";
  return std::string(to_string(finish));
}

bool thinking(AnswerFormat answer) { return answer == AnswerFormat::DeepseekV4Thinking; }

// OpenAI's tool_calls, each with a new id; a stream's also carry their index in the answer.
json tool_calls_json(std::span<const ToolCall> calls, std::optional<size_t> first_index) {
  json list = json::array();
  for (size_t k = 0; k < calls.size(); ++k) {
    json call = {{"id", "call_" + random_hex(24)},
                 {"type", calls[k].type},
                 {"function", {{"name", calls[k].name}, {"arguments", calls[k].arguments}}}};
    if (first_index) call["index"] = *first_index + k;
    list.push_back(std::move(call));
  }
  return list;
}

// A V4 answer as the assistant message: reasoning_content (null in chat mode) apart from content
// (null when the answer is only tool calls, as OpenAI writes it).
json v4_message(const V4Completion& answer, AnswerFormat format) {
  const bool only_calls = answer.content.empty() && !answer.tool_calls.empty();
  json message = {{"role", "assistant"},
                  {"content", only_calls ? json(nullptr) : json(answer.content)},
                  {"reasoning_content", thinking(format) ? json(answer.reasoning_content) : json(nullptr)}};
  if (!answer.tool_calls.empty()) message["tool_calls"] = tool_calls_json(answer.tool_calls, std::nullopt);
  return message;
}

// What `streamed` gained with `delta`, as a V4 delta message: the new part of the parse of the
// settled text (all of it once the choice has finished).
json v4_delta(StreamedAnswer& streamed, const ChoiceDelta& delta, AnswerFormat format, V4Dialect dialect) {
  streamed.text += delta.text;
  std::string_view text = streamed.text;
  if (delta.finish == FinishReason::Running) text = text.substr(0, settled_deepseek_v4_length(text, dialect));
  const V4Completion answer = parse_deepseek_v4_completion(text, thinking(format), dialect);
  json message = json::object();
  auto add = [&](const char* key, const std::string& part, size_t& sent) {
    if (part.size() <= sent) return;
    message[key] = part.substr(sent);
    sent = part.size();
  };
  add("reasoning_content", answer.reasoning_content, streamed.reasoning_sent);
  add("content", answer.content, streamed.content_sent);
  if (answer.tool_calls.size() > streamed.tool_calls_sent) {
    message["tool_calls"] =
        tool_calls_json(std::span(answer.tool_calls).subspan(streamed.tool_calls_sent), streamed.tool_calls_sent);
    streamed.tool_calls_sent = answer.tool_calls.size();
  }
  return message;
}

}  // namespace

ApiRequest parse_request(Endpoint endpoint, std::string_view text, const ApiContext& context) {
  const Body body = Body::parse(text, nullptr, false);
  if (body.is_discarded()) throw ApiError(400, "the request body is not valid JSON");
  if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object");

  const Body* model = field(body, "model");
  if (!model) bad_field("model", "is required");
  if (!model->is_string()) bad_field("model", "must be a string");
  if (model->get<std::string>() != context.model_name)
    throw ApiError(404,
                   fmt::format("the model '{}' does not exist; this server serves '{}'", model->get<std::string>(),
                               context.model_name),
                   "model", "model_not_found");

  ApiRequest request;
  request.endpoint = endpoint;
  GenerationRequest& generation = request.generation;
  generation.prompt = endpoint == Endpoint::Completions ? completion_prompt(body, context)
                                                        : chat_prompt(&request.answer, &request.dialect, body, context);
  const int64_t P = int64_t(generation.prompt.size()), context_length = context.setup.max_context;
  if (P >= context_length)
    throw ApiError(400,
                   fmt::format("the prompt has {} tokens, but the model's context is {} tokens and must leave room "
                               "for at least one more",
                               P, context_length),
                   endpoint == Endpoint::Completions ? "prompt" : "messages", "context_length_exceeded");

  GenerationParams& params = generation.params;
  params = context.defaults;
  std::optional<int64_t> max_tokens = integer_field(body, "max_tokens");
  if (endpoint == Endpoint::ChatCompletions && !max_tokens) max_tokens = integer_field(body, "max_completion_tokens");
  if (max_tokens) {
    if (*max_tokens < 1) bad_field("max_tokens", fmt::format("must be at least 1, got {}", *max_tokens));
    if (*max_tokens > context_length - P)
      throw ApiError(400,
                     fmt::format("the context is {} tokens, but {} were requested ({} in the prompt, {} to generate)",
                                 context_length, P + *max_tokens, P, *max_tokens),
                     "max_tokens", "context_length_exceeded");
    params.max_tokens = *max_tokens;
  } else {
    params.max_tokens = std::min(params.max_tokens, context_length - P);
  }
  SamplingParams& sampling = params.sampling;
  if (auto v = number_field(body, "temperature")) sampling.temperature = float(*v);
  if (auto v = number_field(body, "top_p")) sampling.top_p = float(*v);
  if (auto v = integer_field(body, "top_k")) sampling.top_k = *v;
  if (auto v = number_field(body, "min_p")) sampling.min_p = float(*v);
  if (auto v = number_field(body, "repetition_penalty")) sampling.repetition_penalty = float(*v);
  // Without a seed, each request samples differently; with one, it repeats.
  const std::optional<int64_t> seed = integer_field(body, "seed");
  sampling.seed = seed ? uint64_t(*seed) : std::random_device{}();
  if (field(body, "stop")) params.stop = stop_strings(body);
  if (!params.stop.empty() && !context.setup.tokenizer)
    bad_field("stop", "needs a tokenizer, and the served model has none");
  if (auto v = bool_field(body, "ignore_eos")) params.ignore_eos = *v;

  generation.n = integer_field(body, "n").value_or(1);
  if (generation.n < 1 || generation.n > context.max_choices)
    bad_field("n", fmt::format("must be between 1 and {} (the server's batch size), got {}", context.max_choices,
                               generation.n));
  request.stream = bool_field(body, "stream").value_or(false);
  if (const Body* options = field(body, "stream_options")) {
    if (!options->is_object()) bad_field("stream_options", "must be an object");
    request.include_usage = bool_field(*options, "include_usage").value_or(false);
  }
  request.return_token_ids = bool_field(body, "return_token_ids").value_or(false) || !context.setup.tokenizer;

  as_bad_request("", [&] { return plan_generation(*context.setup.model, generation.prompt, params, context_length); });
  return request;
}

ResponseHead new_response_head(const ApiRequest& request, const std::string& model_name) {
  const bool chat = request.endpoint == Endpoint::ChatCompletions;
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return {request.endpoint,
          (chat ? "chatcmpl-" : "cmpl-") + random_hex(24),
          std::chrono::duration_cast<std::chrono::seconds>(now).count(),
          model_name,
          request.return_token_ids,
          request.answer,
          request.dialect};
}

json usage_json(int64_t prompt_tokens, std::span<const ChoiceDelta> choices) {
  int64_t completion_tokens = 0;
  for (const ChoiceDelta& choice : choices) completion_tokens += int64_t(choice.tokens.size());
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

json completion_json(const ResponseHead& head, std::span<const ChoiceDelta> choices, std::span<const int32_t> prompt) {
  json out = response_object(head, false);
  json& list = out["choices"] = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    json choice = {{"index", i}, {"logprobs", nullptr}, {"finish_reason", finish_json(choices[i].finish)}};
    if (head.endpoint == Endpoint::Completions) {
      choice["text"] = choices[i].text;
    } else if (head.answer == AnswerFormat::Text) {
      choice["message"] = {{"role", "assistant"}, {"content", choices[i].text}};
    } else {
      const V4Completion answer = parse_deepseek_v4_completion(choices[i].text, thinking(head.answer), head.dialect);
      choice["message"] = v4_message(answer, head.answer);
      choice["finish_reason"] = finish_json(choices[i].finish, !answer.tool_calls.empty());
    }
    if (head.token_ids) choice["token_ids"] = choices[i].tokens;
    list.push_back(std::move(choice));
  }
  if (head.token_ids) out["prompt_token_ids"] = prompt;
  out["usage"] = usage_json(int64_t(prompt.size()), choices);
  return out;
}

json chunk_json(const ResponseHead& head, int64_t index, const ChoiceDelta& delta, bool first,
                StreamedAnswer& streamed) {
  json choice = {{"index", index}, {"logprobs", nullptr}, {"finish_reason", finish_json(delta.finish)}};
  if (head.endpoint == Endpoint::ChatCompletions && head.answer != AnswerFormat::Text) {
    json message = v4_delta(streamed, delta, head.answer, head.dialect);
    if (first) message["role"] = "assistant";
    if (first && !message.contains("content") && !message.contains("reasoning_content")) message["content"] = "";
    choice["delta"] = std::move(message);
    choice["finish_reason"] = finish_json(delta.finish, streamed.tool_calls_sent > 0);
  } else if (head.endpoint == Endpoint::ChatCompletions) {
    json& message = choice["delta"] = json::object();
    if (first) message["role"] = "assistant";
    if (!delta.text.empty() || first) message["content"] = delta.text;
  } else {
    choice["text"] = delta.text;
  }
  if (head.token_ids) choice["token_ids"] = delta.tokens;
  json out = response_object(head, true);
  out["choices"] = json::array({std::move(choice)});
  return out;
}

json usage_chunk_json(const ResponseHead& head, const json& usage) {
  json out = response_object(head, true);
  out["choices"] = json::array();
  out["usage"] = usage;
  return out;
}

json models_json(const std::string& model_name, int64_t created) {
  return {{"object", "list"},
          {"data",
           json::array({{{"id", model_name}, {"object", "model"}, {"created", created}, {"owned_by", "megamoe"}}})}};
}

std::string dump(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace megamoe::serve
