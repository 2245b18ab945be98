// The DeepSeek-V4 prompt encoder against the published vectors in ../shared/testdata (read in
// place, never copied into the repository), and the parsing of generated answers.
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

}  // namespace
}  // namespace megamoe
