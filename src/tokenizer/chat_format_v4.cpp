#include "tokenizer/chat_format_v4.h"

#include <algorithm>
#include <charconv>
#include <map>

#include "util/error.h"

namespace megamoe {
namespace {

using Json = nlohmann::ordered_json;

constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>", kEos = "<｜end▁of▁sentence｜>";
constexpr std::string_view kUser = "<｜User｜>", kAssistant = "<｜Assistant｜>";
constexpr std::string_view kLatestReminder = "<｜latest_reminder｜>";
constexpr std::string_view kThinkStart = "<think>", kThinkEnd = "</think>";
constexpr std::string_view kSystem = "<｜System｜>";
constexpr std::string_view kImage = "<｜deepseek_image｜>";
constexpr std::string_view kDsml = "｜DSML｜";

// The DSML tag names: V4.1 puts a space before each (and renames tool_calls).
struct DsmlTags {
  std::string_view calls, invoke, parameter;
};
const DsmlTags& tags_of(V4Dialect dialect) {
  static constexpr DsmlTags kV4{"tool_calls", "invoke", "parameter"}, kV41{" calls", " invoke", " parameter"};
  return dialect == V4Dialect::V41 ? kV41 : kV4;
}
// "\n\n<｜DSML｜tool_calls>": where the tool calls begin after an answer's content.
std::string tool_calls_start(V4Dialect dialect) { return fmt::format("\n\n<{}{}>", kDsml, tags_of(dialect).calls); }

const std::map<std::string, std::string, std::less<>> kTaskTokens = {
    {"action", "<｜action｜>"}, {"query", "<｜query｜>"}, {"authority", "<｜authority｜>"},
    {"domain", "<｜domain｜>"}, {"title", "<｜title｜>"}, {"read_url", "<｜read_url｜>"}};

constexpr std::string_view kReasoningEffortMax =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root cause, "
    "rigorously stress-testing your logic against all potential paths, edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

std::string tools_section(const Json& tools, V4Dialect dialect) {
  std::string schemas;
  for (const Json& tool : tools) {
    if (!tool.is_object() || !tool.contains("function")) fail("tools: each tool needs a \"function\" object");
    if (!schemas.empty()) schemas += '\n';
    schemas += python_json_dumps(tool["function"]);
  }
  const DsmlTags& t = tags_of(dialect);
  return fmt::format(
      "## Tools\n\n"
      "You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "
      "\"<{0}{1}>\" block like the following:\n\n"
      "<{0}{1}>\n"
      "<{0}{2} name=\"$TOOL_NAME\">\n"
      "<{0}{3} name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</{0}{3}>\n"
      "...\n"
      "</{0}{2}>\n"
      "<{0}{2} name=\"$TOOL_NAME2\">\n"
      "...\n"
      "</{0}{2}>\n"
      "</{0}{1}>\n\n"
      "String parameters should be specified as is and set `string=\"true\"`. For all other types (numbers, "
      "booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n\n"
      "If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside "
      "<think>...</think> BEFORE any tool calls or final response.\n\n"
      "Otherwise, output directly after </think> with tool calls or final response.\n\n"
      "### Available Tool Schemas\n\n"
      "{4}\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n",
      kDsml, t.calls, t.invoke, t.parameter, schemas);
}

// "\n\n## Tools ..." and "\n\n## Response Format ..." of a system or developer message.
std::string message_extras(const Json& m, V4Dialect dialect) {
  std::string out;
  if (m.contains("tools") && !m["tools"].empty()) out += "\n\n" + tools_section(m["tools"], dialect);
  if (m.contains("response_format") && !m["response_format"].is_null() && !m["response_format"].empty())
    out += "\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n" +
           python_json_dumps(m["response_format"]);
  return out;
}

std::string text_of(const Json& m, const char* key, const std::string& where) {
  if (!m.contains(key) || m[key].is_null()) return "";
  if (!m[key].is_string()) fail("{}.{}: expected a string", where, key);
  return m[key].get<std::string>();
}

bool has_task(const Json& m) { return m.contains("task") && !m["task"].is_null(); }

// A tool call's arguments as DSML parameters: strings as they are, other values as JSON. V4 passes
// arguments that are not a JSON object whole, as "arguments"; V4.1's encoder refuses them.
std::string dsml_parameters(const std::string& arguments, V4Dialect dialect, const std::string& where) {
  Json parsed = Json::parse(arguments, nullptr, false);
  if (!parsed.is_object()) {
    if (dialect == V4Dialect::V41) fail("{}.arguments: must be a JSON object", where);
    parsed = Json{{"arguments", arguments}};
  }
  const std::string_view parameter = tags_of(dialect).parameter;
  std::string out;
  for (const auto& [key, value] : parsed.items()) {
    if (!out.empty()) out += "\n";
    out += fmt::format("<{}{} name=\"{}\" string=\"{}\">{}</{}{}>", kDsml, parameter, key,
                       value.is_string() ? "true" : "false",
                       value.is_string() ? value.get<std::string>() : python_json_dumps(value), kDsml, parameter);
  }
  return out;
}

std::string dsml_tool_calls(const Json& calls, const std::string& where, V4Dialect dialect) {
  const DsmlTags& t = tags_of(dialect);
  std::string invokes;
  for (size_t k = 0; k < calls.size(); ++k) {
    const std::string at = fmt::format("{}.tool_calls[{}]", where, k);
    if (!calls[k].is_object() || !calls[k].contains("function") || !calls[k]["function"].is_object())
      fail("{}: expected an object with a \"function\"", at);
    const Json& function = calls[k]["function"];
    const std::string name = text_of(function, "name", at + ".function");
    const std::string arguments = text_of(function, "arguments", at + ".function");
    invokes += fmt::format("{}<{}{} name=\"{}\">\n{}\n</{}{}>", k ? "\n" : "", kDsml, t.invoke, name,
                           dsml_parameters(arguments, dialect, at + ".function"), kDsml, t.invoke);
  }
  return fmt::format("\n\n<{}{}>\n{}\n</{}{}>", kDsml, t.calls, invokes, kDsml, t.calls);
}

// Turns "tool" messages into <tool_result> blocks of user turns (V4 has no tool role); user turns
// become lists of blocks too, and consecutive ones (without a task) merge.
Json merge_tool_messages(const Json& messages) {
  Json merged = Json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const Json& m = messages[i];
    const std::string where = fmt::format("messages[{}]", i);
    const std::string role = m.value("role", "");
    auto last_user_with_blocks = [&] {
      return !merged.empty() && merged.back().value("role", "") == "user" && merged.back().contains("content_blocks");
    };
    if (role == "tool") {
      Json block = {{"type", "tool_result"},
                    {"tool_use_id", m.value("tool_call_id", "")},
                    {"content", m.contains("content") ? m["content"] : Json("")}};
      if (last_user_with_blocks()) merged.back()["content_blocks"].push_back(std::move(block));
      else merged.push_back({{"role", "user"}, {"content_blocks", Json::array({std::move(block)})}});
    } else if (role == "user") {
      Json block = {{"type", "text"}, {"text", text_of(m, "content", where)}};
      if (last_user_with_blocks() && !has_task(merged.back())) {
        merged.back()["content_blocks"].push_back(std::move(block));
      } else {
        Json user = {{"role", "user"},
                     {"content", text_of(m, "content", where)},
                     {"content_blocks", Json::array({std::move(block)})}};
        for (const char* key : {"task", "wo_eos"})
          if (m.contains(key)) user[key] = m[key];
        merged.push_back(std::move(user));
      }
    } else {
      merged.push_back(m);
    }
  }
  return merged;
}

// Orders each user turn's tool results as the previous assistant turn called the tools.
void sort_tool_results(Json& messages) {
  std::map<std::string, size_t> call_order;
  for (Json& m : messages) {
    if (m.value("role", "") == "assistant" && m.contains("tool_calls") && !m["tool_calls"].empty()) {
      call_order.clear();
      for (size_t k = 0; k < m["tool_calls"].size(); ++k) {
        const std::string id = m["tool_calls"][k].value("id", "");
        if (!id.empty()) call_order[id] = k;
      }
    } else if (m.value("role", "") == "user" && m.contains("content_blocks") && !call_order.empty()) {
      Json& blocks = m["content_blocks"];
      std::vector<Json> results;
      for (const Json& b : blocks)
        if (b.value("type", "") == "tool_result") results.push_back(b);
      if (results.size() < 2) continue;
      auto order = [&](const Json& b) {
        const auto it = call_order.find(b.value("tool_use_id", ""));
        return it == call_order.end() ? size_t(0) : it->second;
      };
      std::stable_sort(results.begin(), results.end(),
                       [&](const Json& a, const Json& b) { return order(a) < order(b); });
      size_t next = 0;
      for (Json& b : blocks)
        if (b.value("type", "") == "tool_result") b = results[next++];
    }
  }
}

// Whether message `i` asks for an answer: a user or developer turn, and in V4.1 a system message
// after the first.
bool is_user_turn(const Json& messages, int64_t i, V4Dialect dialect) {
  const std::string role = messages[i].value("role", "");
  return role == "user" || role == "developer" || (dialect == V4Dialect::V41 && role == "system" && i > 0);
}

int64_t last_user_index(const Json& messages, V4Dialect dialect) {
  for (int64_t i = int64_t(messages.size()) - 1; i >= 0; --i)
    if (is_user_turn(messages, i, dialect)) return i;
  return -1;
}

// Before the last user turn: assistant turns lose their reasoning, developer turns go.
Json drop_earlier_thinking(const Json& messages, V4Dialect dialect) {
  const int64_t last_user = last_user_index(messages, dialect);
  Json kept = Json::array();
  for (int64_t i = 0; i < int64_t(messages.size()); ++i) {
    const std::string role = messages[i].value("role", "");
    if (role == "user" || role == "system" || role == "latest_reminder" || i >= last_user) {
      kept.push_back(messages[i]);
    } else if (role == "assistant") {
      Json m = messages[i];
      m.erase("reasoning_content");
      kept.push_back(std::move(m));
    }
  }
  return kept;
}

std::string tool_result_text(const Json& content, const std::string& where) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) fail("{}: tool content must be a string or a list of parts", where);
  std::string text;
  for (size_t k = 0; k < content.size(); ++k) {
    const std::string type = content[k].value("type", "");
    text += (k ? "\n\n" : "") + (type == "text" ? content[k].value("text", "") : "[Unsupported " + type + "]");
  }
  return text;
}

// V4.1's reasoning effort: 1-100, or the tiers low 50, high 75 (the default), max 100.
int v41_reasoning_effort(const std::string& effort) {
  if (effort.empty() || effort == "high") return 75;
  if (effort == "low") return 50;
  if (effort == "max") return 100;
  int value = 0;
  const auto [end, error] = std::from_chars(effort.data(), effort.data() + effort.size(), value);
  if (error != std::errc() || end != effort.data() + effort.size() || value < 1 || value > 100)
    fail("reasoning_effort: \"{}\" is not a number from 1 to 100 or one of low, high, max", effort);
  return value;
}

std::string render_message(const Json& messages, int64_t index, const V4PromptOptions& o, bool drop_thinking) {
  const Json& m = messages[index];
  const std::string where = fmt::format("messages[{}]", index);
  const std::string role = m.value("role", "");
  const V4Dialect dialect = o.dialect;
  const int64_t last_user = last_user_index(messages, dialect);
  std::string out;
  if (dialect == V4Dialect::V4 && index == 0 && o.thinking && o.reasoning_effort == "max") out += kReasoningEffortMax;
  if (dialect == V4Dialect::V41 && index == 0) {  // the effort line and a first system message share one token
    const std::string effort =
        o.thinking ? fmt::format(
                         "Reasoning Effort: {} (range 1-100, the higher the value, the more thorough the "
                         "reasoning)\n\n",
                         v41_reasoning_effort(o.reasoning_effort))
                   : "";
    if (!effort.empty() || role == "system") out += kSystem;
    out += effort;
  }

  if (role == "system") {
    if (dialect == V4Dialect::V41 && index > 0) out += kSystem;
    out += text_of(m, "content", where) + message_extras(m, dialect);
  } else if (role == "developer") {
    const std::string content = text_of(m, "content", where);
    if (content.empty()) fail("{}.content: a developer message needs content", where);
    out += std::string(kUser) + content + message_extras(m, dialect);
  } else if (role == "user") {
    out += kUser;
    std::string parts;
    const Json& blocks = m["content_blocks"];
    for (size_t k = 0; k < blocks.size(); ++k) {
      const std::string type = blocks[k].value("type", "");
      parts += k ? "\n\n" : "";
      if (type == "text") parts += blocks[k].value("text", "");
      else parts += "<tool_result>" + tool_result_text(blocks[k]["content"], where) + "</tool_result>";
    }
    out += parts;
  } else if (role == "latest_reminder") {
    out += std::string(kLatestReminder) + text_of(m, "content", where);
  } else if (role == "assistant") {
    const bool after_task = index > 0 && has_task(messages[index - 1]);
    std::string reasoning;
    if (o.thinking && !after_task && (!drop_thinking || index > last_user))
      reasoning = text_of(m, "reasoning_content", where) + std::string(kThinkEnd);
    const bool calls = m.contains("tool_calls") && m["tool_calls"].is_array() && !m["tool_calls"].empty();
    out += reasoning + text_of(m, "content", where) + (calls ? dsml_tool_calls(m["tool_calls"], where, dialect) : "");
    if (!m.value("wo_eos", false)) out += kEos;
  } else {
    fail("{}.role: \"{}\" is not one of system, developer, user, assistant, tool, latest_reminder", where, role);
  }

  // What follows a turn when the assistant (or a reminder) comes next, or the conversation ends.
  if (index + 1 < int64_t(messages.size())) {
    const std::string next = messages[index + 1].value("role", "");
    if (next != "assistant" && next != "latest_reminder") return out;
  }
  if (has_task(m)) {
    const std::string task = m["task"].is_string() ? m["task"].get<std::string>() : "";
    const auto token = kTaskTokens.find(task);
    if (token == kTaskTokens.end())
      fail("{}.task: \"{}\" is not one of action, query, authority, domain, title, read_url", where, task);
    if (task == "action") out += std::string(kAssistant) + std::string(o.thinking ? kThinkStart : kThinkEnd);
    out += token->second;
  } else if (is_user_turn(messages, index, dialect)) {
    out += kAssistant;
    out += o.thinking && (!drop_thinking || index >= last_user) ? kThinkStart : kThinkEnd;
  }
  return out;
}

// Python's json.dumps of a string with ensure_ascii=False: only '"', '\\' and control characters escaped.
void dump_string(std::string& out, const std::string& s) {
  out += '"';
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) out += fmt::format("\\u{:04x}", c);
        else out += ch;
    }
  }
  out += '"';
}

void dump(std::string& out, const Json& v) {
  if (v.is_object()) {
    out += '{';
    bool first = true;
    for (const auto& [key, value] : v.items()) {
      out += first ? "" : ", ";
      first = false;
      dump_string(out, key);
      out += ": ";
      dump(out, value);
    }
    out += '}';
  } else if (v.is_array()) {
    out += '[';
    for (size_t i = 0; i < v.size(); ++i) {
      out += i ? ", " : "";
      dump(out, v[i]);
    }
    out += ']';
  } else if (v.is_string()) {
    dump_string(out, v.get<std::string>());
  } else {
    out += v.dump();  // numbers, booleans, null: the same as Python's
  }
}

// Reads one DSML tool call at `pos` (just after "<｜DSML｜invoke"); false if it is unfinished.
bool parse_invoke(std::string_view text, size_t& pos, ToolCall& call, const DsmlTags& t) {
  const std::string name_open = " name=\"", invoke_end = fmt::format("</{}{}>", kDsml, t.invoke);
  const std::string parameter_open = fmt::format("<{}{} name=\"", kDsml, t.parameter);
  const std::string parameter_close = fmt::format("</{}{}>", kDsml, t.parameter);
  if (text.substr(pos, name_open.size()) != name_open) return false;
  const size_t name_end = text.find("\">", pos + name_open.size());
  if (name_end == std::string_view::npos) return false;
  call = {"function", std::string(text.substr(pos + name_open.size(), name_end - pos - name_open.size())), ""};
  pos = name_end + 2;
  std::string arguments;
  while (true) {
    const size_t next_parameter = text.find(parameter_open, pos), end = text.find(invoke_end, pos);
    if (end == std::string_view::npos) return false;
    if (next_parameter == std::string_view::npos || next_parameter > end) {
      pos = end + invoke_end.size();
      break;
    }
    const size_t key_start = next_parameter + parameter_open.size();
    const size_t key_end = text.find("\" string=\"", key_start);
    const size_t value_start = text.find("\">", key_end) + 2;
    const size_t value_end = text.find(parameter_close, value_start);
    if (key_end == std::string_view::npos || value_end == std::string_view::npos) return false;
    const bool is_string = text.substr(key_end + 10, 4) == "true";
    std::string value(text.substr(value_start, value_end - value_start));
    arguments += arguments.empty() ? "" : ", ";
    dump_string(arguments, std::string(text.substr(key_start, key_end - key_start)));
    arguments += ": ";
    if (is_string) dump_string(arguments, value);
    else arguments += value;
    pos = value_end + parameter_close.size();
  }
  call.arguments = "{" + arguments + "}";
  return true;
}

}  // namespace

std::string python_json_dumps(const nlohmann::ordered_json& value) {
  std::string out;
  dump(out, value);
  return out;
}

std::string render_deepseek_v4_prompt(const nlohmann::ordered_json& messages_in, const V4PromptOptions& o) {
  if (!messages_in.is_array()) fail("messages: expected an array of messages");
  for (size_t i = 0; i < messages_in.size(); ++i)
    if (!messages_in[i].is_object() || !messages_in[i].contains("role") || !messages_in[i]["role"].is_string())
      fail("messages[{}]: expected an object with a \"role\"", i);
  if (o.dialect == V4Dialect::V4 && o.reasoning_effort != "" && o.reasoning_effort != "high" &&
      o.reasoning_effort != "max")
    fail("reasoning_effort: \"{}\" is not one of high, max", o.reasoning_effort);
  if (o.dialect == V4Dialect::V41) {
    v41_reasoning_effort(o.reasoning_effort);        // checked in chat mode too, as DeepSeek's encoder does
    for (size_t i = 0; i < messages_in.size(); ++i)  // images are not text: the literal is refused
      for (const char* key : {"content", "reasoning_content"})
        if (messages_in[i].contains(key) && messages_in[i][key].is_string() &&
            messages_in[i][key].get<std::string>().find(kImage) != std::string::npos)
          fail("messages[{}].{}: contains the image placeholder {}; megamoe runs text only", i, key, kImage);
  }
  Json messages = messages_in;
  if (!o.tools.is_null() && !o.tools.empty()) {
    const std::string first_role = messages.empty() ? "" : messages[0].value("role", "");
    if (first_role == "system" || first_role == "developer") messages[0]["tools"] = o.tools;
    else messages.insert(messages.begin(), Json{{"role", "system"}, {"content", ""}, {"tools", o.tools}});
  }
  messages = merge_tool_messages(messages);
  sort_tool_results(messages);
  bool drop_thinking = o.drop_thinking;
  for (const Json& m : messages)  // reasoning around tool use stays
    if (m.contains("tools") && !m["tools"].empty()) drop_thinking = false;
  if (o.thinking && drop_thinking) messages = drop_earlier_thinking(messages, o.dialect);

  std::string prompt = o.add_bos ? std::string(kBos) : "";
  for (int64_t i = 0; i < int64_t(messages.size()); ++i) prompt += render_message(messages, i, o, drop_thinking);
  return prompt;
}

V4Completion parse_deepseek_v4_completion(std::string_view text, bool thinking, V4Dialect dialect) {
  V4Completion out;
  if (thinking) {
    if (text.starts_with(kThinkStart)) text.remove_prefix(kThinkStart.size());
    const size_t end = text.find(kThinkEnd);
    if (end == std::string_view::npos) {
      out.reasoning_content = std::string(text);
      return out;
    }
    out.reasoning_content = std::string(text.substr(0, end));
    text.remove_prefix(end + kThinkEnd.size());
  }
  if (const size_t eos = text.find(kEos); eos != std::string_view::npos) text = text.substr(0, eos);
  const std::string calls_start = tool_calls_start(dialect);
  const size_t calls = text.find(calls_start);
  out.content = std::string(text.substr(0, calls));
  if (calls == std::string_view::npos) return out;
  const DsmlTags& t = tags_of(dialect);
  const std::string invoke_open = fmt::format("<{}{}", kDsml, t.invoke);
  size_t pos = calls + calls_start.size();
  for (size_t next; (next = text.find(invoke_open, pos)) != std::string_view::npos;) {
    pos = next + invoke_open.size();
    ToolCall call;
    if (!parse_invoke(text, pos, call, t)) break;
    out.tool_calls.push_back(std::move(call));
  }
  return out;
}

size_t settled_deepseek_v4_length(std::string_view text, V4Dialect dialect) {
  const std::string calls_start = tool_calls_start(dialect);
  const std::string_view markers[] = {kThinkStart, kThinkEnd, kEos, calls_start};
  size_t longest = 0;
  for (std::string_view marker : markers) longest = std::max(longest, marker.size());
  for (size_t held = std::min(text.size(), longest - 1); held > 0; --held) {
    const std::string_view tail = text.substr(text.size() - held);
    for (std::string_view marker : markers)
      if (held < marker.size() && marker.starts_with(tail)) return text.size() - held;
  }
  return text.size();
}

std::optional<V4Dialect> deepseek_v4_prompt_dialect(std::string_view architecture) {
  if (architecture == "DeepseekV4ForCausalLM") return V4Dialect::V4;
  if (architecture == "DeepseekV41ForCausalLM") return V4Dialect::V41;
  return std::nullopt;
}

}  // namespace megamoe
