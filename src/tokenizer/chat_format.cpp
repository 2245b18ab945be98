#include "tokenizer/chat_format.h"

#include "util/error.h"

namespace megamoe {
namespace {

std::string string_field(const nlohmann::json& object, const char* key, const std::string& where) {
  if (!object.contains(key) || !object[key].is_string()) fail("{}.{}: expected a string", where, key);
  return object[key].get<std::string>();
}

}  // namespace

std::vector<ChatMessage> parse_chat_messages(const nlohmann::json& messages, const std::string& where) {
  if (!messages.is_array()) fail("{}: expected an array of messages", where);
  std::vector<ChatMessage> result;
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string at = fmt::format("{}[{}]", where, i);
    const nlohmann::json& m = messages[i];
    if (!m.is_object()) fail("{}: expected an object with \"role\" and \"content\"", at);
    ChatMessage message;
    message.role = string_field(m, "role", at);
    if (message.role != "system" && message.role != "user" && message.role != "assistant" && message.role != "tool")
      fail("{}.role: \"{}\" is not one of system, user, assistant, tool", at, message.role);
    if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
      const nlohmann::json& calls = m["tool_calls"];
      if (!calls.is_array()) fail("{}.tool_calls: expected an array", at);
      for (size_t k = 0; k < calls.size(); ++k) {
        const std::string call_at = fmt::format("{}.tool_calls[{}]", at, k);
        if (!calls[k].is_object() || !calls[k].contains("function") || !calls[k]["function"].is_object())
          fail("{}: expected an object with \"type\" and \"function\"", call_at);
        const nlohmann::json& function = calls[k]["function"];
        message.tool_calls.push_back({string_field(calls[k], "type", call_at),
                                      string_field(function, "name", call_at + ".function"),
                                      string_field(function, "arguments", call_at + ".function")});
      }
    }
    if (m.contains("content") && m["content"].is_null()) {
      if (message.role != "assistant" || message.tool_calls.empty())
        fail("{}.content: null is only allowed for an assistant message with tool_calls", at);
    } else {
      message.content = string_field(m, "content", at);
    }
    result.push_back(std::move(message));
  }
  return result;
}

std::string render_deepseek_v3_chat(std::span<const ChatMessage> messages, std::string_view bos_token,
                                    bool add_generation_prompt) {
  // The template's namespace variables, under the same names. is_first and is_output_first are
  // never reset, so only the very first tool call and tool output of a conversation open a block.
  bool is_first = false, is_tool = false, is_output_first = true;
  std::string out(bos_token);
  bool is_first_sp = true;
  for (const ChatMessage& m : messages) {
    if (m.role != "system") continue;
    if (!is_first_sp) out += "\n\n";
    out += *m.content;
    is_first_sp = false;
  }
  for (const ChatMessage& m : messages) {
    if (m.role == "user") {
      is_tool = false;
      out += "<｜User｜>" + *m.content;
    } else if (m.role == "assistant" && !m.content) {
      is_tool = false;
      for (const ToolCall& call : m.tool_calls) {
        const std::string body =
            call.type + "<｜tool▁sep｜>" + call.name + "\n```json\n" + call.arguments + "\n```<｜tool▁call▁end｜>";
        if (!is_first) {
          out += "<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>" + body;
          is_first = true;
        } else {
          out += "\n<｜tool▁call▁begin｜>" + body + "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>";
        }
      }
    } else if (m.role == "assistant") {
      out += is_tool ? "<｜tool▁outputs▁end｜>" : "<｜Assistant｜>";
      out += *m.content + "<｜end▁of▁sentence｜>";
      is_tool = false;
    } else if (m.role == "tool") {
      is_tool = true;
      out += is_output_first ? "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>" : "\n<｜tool▁output▁begin｜>";
      out += *m.content + "<｜tool▁output▁end｜>";
      is_output_first = false;
    }
  }
  if (is_tool) out += "<｜tool▁outputs▁end｜>";
  if (add_generation_prompt && !is_tool) out += "<｜Assistant｜>";
  return out;
}

const std::string& deepseek_v3_chat_template() {
  static const std::string source =
      "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
      "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) "
      "%}"
      "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
      "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
      "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}{%- endif %}"
      "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}"
      "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}"
      "{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is none %}"
      "{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}"
      "{%- if not ns.is_first %}{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + "
      "'<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + "
      "'```' + '<｜tool▁call▁end｜>'}}"
      "{%- set ns.is_first = true -%}"
      "{%- else %}{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' "
      "+ '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + "
      "'<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}"
      "{%- endif %}{%- endfor %}{%- endif %}"
      "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
      "{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}"
      "{%- set ns.is_tool = false -%}"
      "{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
      "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}"
      "{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + "
      "'<｜tool▁output▁end｜>'}}"
      "{%- set ns.is_output_first = false %}"
      "{%- else %}{{'\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}"
      "{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
      "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}";
  return source;
}

}  // namespace megamoe
