// The DeepSeek-V4 prompt encoder against the published vectors in ../shared/testdata (read in
// place, never copied into the repository), its V4.1 dialect against the outputs of V4.1's
// published encoder (tests/data/dsv41-chat-encoding), and the parsing of generated answers.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "tokenizer/chat_format_v4.h"
#include "util/error.h"

namespace megamoe {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

// This file is tests/unit/<name> in the repository; the vectors are beside the repository.
fs::path vectors_dir() {
  return fs::path(__FILE__).parent_path().parent_path().parent_path().parent_path() / "shared" / "testdata" /
         "dsv4-chat-encoding";
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The README's table: "| case | thinking mode | ..." rows give each case's mode.
std::map<int, bool> thinking_by_case(const std::string& readme) {
  std::map<int, bool> modes;
  const std::regex row(R"(^\|\s*(\d+)\s*\|\s*(thinking|chat)\s*\|)");
  std::istringstream lines(readme);
  for (std::string line; std::getline(lines, line);) {
    std::smatch m;
    if (std::regex_search(line, m, row)) modes[std::stoi(m[1])] = m[2] == "thinking";
  }
  return modes;
}

TEST(ChatFormatV4, PublishedVectors) {
  const fs::path dir = vectors_dir();
  if (!fs::exists(dir / "README.md")) GTEST_SKIP() << "no V4 prompt vectors at " << dir.string();
  const std::map<int, bool> thinking = thinking_by_case(read_file(dir / "README.md"));
  int checked = 0;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (!std::regex_match(name, m, std::regex(R"(input_(\d+)\.json)"))) continue;
    const int id = std::stoi(m[1]);
    SCOPED_TRACE(name);
    ASSERT_TRUE(thinking.count(id)) << "the README gives no mode for case " << id;
    const Json input = Json::parse(read_file(entry.path()));
    V4PromptOptions options;
    options.thinking = thinking.at(id);
    Json messages = input;
    if (input.is_object()) {  // {"tools": [...], "messages": [...]}: the tools belong to the first message
      messages = input["messages"];
      options.tools = input.value("tools", Json());
    }
    const std::string expected = read_file(dir / fmt::format("output_{}.txt", id));
    EXPECT_EQ(render_deepseek_v4_prompt(messages, options), expected);
    ++checked;
  }
  EXPECT_GE(checked, 4);
}

TEST(ChatFormatV4, GenerationPromptSelectsTheMode) {
  const Json messages = Json::parse(R"([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}])");
  V4PromptOptions chat, thinking;
  thinking.thinking = true;
  EXPECT_EQ(render_deepseek_v4_prompt(messages, chat), "<｜begin▁of▁sentence｜>S<｜User｜>Hi<｜Assistant｜></think>");
  EXPECT_EQ(render_deepseek_v4_prompt(messages, thinking),
            "<｜begin▁of▁sentence｜>S<｜User｜>Hi<｜Assistant｜><think>");
}

TEST(ChatFormatV4, ConsecutiveUserTurnsAndToolResultsMerge) {
  const Json messages = Json::parse(R"([
    {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
    {"role": "assistant", "content": "", "tool_calls": [
      {"id": "x", "type": "function", "function": {"name": "f", "arguments": "{\"n\": 2}"}},
      {"id": "y", "type": "function", "function": {"name": "g", "arguments": "not json"}}]},
    {"role": "tool", "tool_call_id": "y", "content": "Y"}, {"role": "tool", "tool_call_id": "x", "content": "X"}])");
  EXPECT_EQ(render_deepseek_v4_prompt(messages, {}),
            "<｜begin▁of▁sentence｜><｜User｜>a\n\nb<｜Assistant｜></think>\n\n<｜DSML｜tool_calls>\n"
            "<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"n\" string=\"false\">2</｜DSML｜parameter>\n"
            "</｜DSML｜invoke>\n<｜DSML｜invoke name=\"g\">\n"
            "<｜DSML｜parameter name=\"arguments\" string=\"true\">not json</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
            "</｜DSML｜tool_calls><｜end▁of▁sentence｜><｜User｜><tool_result>X</tool_result>\n\n"
            "<tool_result>Y</tool_result><｜Assistant｜></think>");
}

TEST(ChatFormatV4, PythonJsonDumps) {
  EXPECT_EQ(python_json_dumps(Json::parse(R"({"b": [1, 2.5, true, null], "a": "x\"\n\u0001é"})")),
            "{\"b\": [1, 2.5, true, null], \"a\": \"x\\\"\\n\\u0001é\"}");
}

TEST(ChatFormatV4, BadMessagesAreNamed) {
  EXPECT_THROW(render_deepseek_v4_prompt(Json::parse(R"([{"content": "x"}])"), {}), Error);
  try {
    render_deepseek_v4_prompt(Json::parse(R"([{"role": "user", "content": "x", "task": "nope"}])"), {});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("messages[0].task"), std::string::npos) << e.what();
  }
}

TEST(ChatFormatV4, CompletionsSplitIntoReasoningContentAndToolCalls) {
  const V4Completion answer = parse_deepseek_v4_completion("Let me think.</think>Paris.<｜end▁of▁sentence｜>", true);
  EXPECT_EQ(answer.reasoning_content, "Let me think.");
  EXPECT_EQ(answer.content, "Paris.");
  EXPECT_TRUE(answer.tool_calls.empty());

  const V4Completion unfinished = parse_deepseek_v4_completion("still thinking", true);
  EXPECT_EQ(unfinished.reasoning_content, "still thinking");
  EXPECT_EQ(unfinished.content, "");

  const V4Completion call = parse_deepseek_v4_completion(
      "Checking.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
      "<｜DSML｜parameter name=\"location\" string=\"true\">Beijing</｜DSML｜parameter>\n"
      "<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
      "</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
      false);
  EXPECT_EQ(call.content, "Checking.");
  ASSERT_EQ(call.tool_calls.size(), 1u);
  EXPECT_EQ(call.tool_calls[0].name, "get_weather");
  EXPECT_EQ(call.tool_calls[0].arguments, "{\"location\": \"Beijing\", \"days\": 3}");
}

// ---- the V4.1 dialect ----

TEST(ChatFormatV41, PublishedEncoderVectors) {
  const fs::path path =
      fs::path(__FILE__).parent_path().parent_path() / "data" / "dsv41-chat-encoding" / "vectors.json";
  const Json cases = Json::parse(read_file(path));
  int rendered = 0, refused = 0;
  for (const Json& c : cases) {
    SCOPED_TRACE(c["name"].get<std::string>());
    V4PromptOptions options;
    options.dialect = V4Dialect::V41;
    options.thinking = c["thinking"].get<bool>();
    options.drop_thinking = c.value("drop_thinking", true);
    const Json& effort = c["reasoning_effort"];
    if (effort.is_number_integer()) options.reasoning_effort = std::to_string(effort.get<int>());
    else if (effort.is_string()) options.reasoning_effort = effort.get<std::string>();
    if (c.contains("expected")) {
      EXPECT_EQ(render_deepseek_v4_prompt(c["messages"], options), c["expected"].get<std::string>());
      ++rendered;
    } else {
      EXPECT_THROW(render_deepseek_v4_prompt(c["messages"], options), Error) << c["error"].get<std::string>();
      ++refused;
    }
  }
  EXPECT_GE(rendered, 20);
  EXPECT_GE(refused, 5);
}

TEST(ChatFormatV41, ToolCallsWithSpacedTagsAreParsed) {
  const std::string text =
      "Checking.\n\n<｜DSML｜ calls>\n<｜DSML｜ invoke name=\"get_weather\">\n"
      "<｜DSML｜ parameter name=\"location\" string=\"true\">Beijing</｜DSML｜ parameter>\n"
      "<｜DSML｜ parameter name=\"days\" string=\"false\">3</｜DSML｜ parameter>\n</｜DSML｜ invoke>\n"
      "</｜DSML｜ calls><｜end▁of▁sentence｜>";
  const V4Completion call = parse_deepseek_v4_completion(text, false, V4Dialect::V41);
  EXPECT_EQ(call.content, "Checking.");
  ASSERT_EQ(call.tool_calls.size(), 1u);
  EXPECT_EQ(call.tool_calls[0].name, "get_weather");
  EXPECT_EQ(call.tool_calls[0].arguments, "{\"location\": \"Beijing\", \"days\": 3}");
  // V4's parser sees no tool calls in V4.1 markup, and the stream holds back a V4.1 block's start.
  EXPECT_TRUE(parse_deepseek_v4_completion(text, false, V4Dialect::V4).tool_calls.empty());
  EXPECT_EQ(settled_deepseek_v4_length("Checking.\n\n<｜DSML｜ ca", V4Dialect::V41), 9u);
  EXPECT_EQ(settled_deepseek_v4_length("Checking.\n\n<｜DSML｜ ca", V4Dialect::V4), 25u);
}

TEST(ChatFormatV41, ArchitecturesPickTheirDialect) {
  EXPECT_EQ(deepseek_v4_prompt_dialect("DeepseekV4ForCausalLM"), V4Dialect::V4);
  EXPECT_EQ(deepseek_v4_prompt_dialect("DeepseekV41ForCausalLM"), V4Dialect::V41);
  EXPECT_EQ(deepseek_v4_prompt_dialect("DeepseekV3ForCausalLM"), std::nullopt);
}

}  // namespace
}  // namespace megamoe
