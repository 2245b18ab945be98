// The server's answers of DeepSeek-V4 chat: the message of a whole answer and the deltas of a
// streamed one, fed the same texts in every chunking (markers split anywhere), must agree, and
// no delta may carry a marker or a piece of one. V3 chat stays plain text.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "serve/openai_api.h"
#include "tokenizer/chat_format_v4.h"
#include "tokenizer/utf8.h"

namespace megamoe::serve {
namespace {

using nlohmann::json;

ResponseHead chat_head(AnswerFormat answer) {
  ResponseHead head;
  head.endpoint = Endpoint::ChatCompletions;
  head.answer = answer;
  return head;
}

// The message of a whole answer.
json whole_message(AnswerFormat answer, const std::string& text, FinishReason finish, std::string* finish_reason) {
  const ChoiceDelta choice{text, {}, finish};
  const json out = completion_json(chat_head(answer), std::span(&choice, 1), std::vector<int32_t>{1, 2});
  *finish_reason = out["choices"][0]["finish_reason"].get<std::string>();
  return out["choices"][0]["message"];
}

// What the deltas of a stream of `pieces` add up to: each field's text, and the tool calls.
struct Streamed {
  std::string reasoning, content, finish_reason;
  json tool_calls = json::array();
  bool content_before_reasoning_ended = false;
};

Streamed stream(AnswerFormat answer, const std::vector<std::string>& pieces, FinishReason finish) {
  const ResponseHead head = chat_head(answer);
  StreamedAnswer streamed;
  Streamed out;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const bool last = i + 1 == pieces.size();
    const ChoiceDelta delta{pieces[i], {}, last ? finish : FinishReason::Running};
    const json chunk = chunk_json(head, 0, delta, i == 0, streamed);
    const json& message = chunk["choices"][0]["delta"];
    EXPECT_EQ(message.contains("role"), i == 0);
    for (const char* key : {"reasoning_content", "content"}) {
      if (!message.contains(key)) continue;
      const std::string part = message[key].get<std::string>();
      for (const char* marker : {"<think>", "</think>", "<｜end▁of▁sentence｜>", "<｜DSML｜"})
        EXPECT_EQ(part.find(marker), std::string::npos) << key << " delta " << part;
      EXPECT_FALSE(find_invalid_utf8(part)) << part;
    }
    if (message.contains("reasoning_content")) {
      out.content_before_reasoning_ended |= !out.content.empty();
      out.reasoning += message["reasoning_content"].get<std::string>();
    }
    if (message.contains("content")) out.content += message["content"].get<std::string>();
    if (message.contains("tool_calls"))
      for (const json& call : message["tool_calls"]) out.tool_calls.push_back(call);
    const json& reason = chunk["choices"][0]["finish_reason"];
    EXPECT_EQ(reason.is_null(), !last);
    if (last) out.finish_reason = reason.get<std::string>();
  }
  return out;
}

// Every way of cutting `text` into two pieces at character boundaries, and many into three.
std::vector<std::vector<std::string>> chunkings(const std::string& text) {
  std::vector<size_t> cuts;
  for (size_t i = 1; i < text.size(); ++i)
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) cuts.push_back(i);
  std::vector<std::vector<std::string>> out = {{text}};
  const size_t step = std::max<size_t>(3, cuts.size() / 16);  // two pieces already cut every marker everywhere
  for (size_t a = 0; a < cuts.size(); ++a) {
    out.push_back({text.substr(0, cuts[a]), text.substr(cuts[a])});
    for (size_t b = a + 1; b < cuts.size(); b += step)
      out.push_back({text.substr(0, cuts[a]), text.substr(cuts[a], cuts[b] - cuts[a]), text.substr(cuts[b])});
  }
  return out;
}

void expect_stream_equals_whole(AnswerFormat answer, const std::string& text, FinishReason finish) {
  std::string whole_finish;
  const json message = whole_message(answer, text, finish, &whole_finish);
  auto text_of = [&](const char* key) { return message[key].is_null() ? "" : message[key].get<std::string>(); };
  const std::string reasoning = text_of("reasoning_content"), content = text_of("content");
  for (const auto& pieces : chunkings(text)) {
    const Streamed streamed = stream(answer, pieces, finish);
    const std::string where = "pieces " + json(pieces).dump();
    EXPECT_EQ(streamed.reasoning, reasoning) << where;
    EXPECT_EQ(streamed.content, content) << where;
    EXPECT_FALSE(streamed.content_before_reasoning_ended) << where;
    EXPECT_EQ(streamed.finish_reason, whole_finish) << where;
    const json calls = message.value("tool_calls", json::array());
    ASSERT_EQ(streamed.tool_calls.size(), calls.size()) << where;
    for (size_t k = 0; k < calls.size(); ++k) {
      EXPECT_EQ(streamed.tool_calls[k]["index"], k);
      EXPECT_EQ(streamed.tool_calls[k]["function"], calls[k]["function"]) << where;
    }
  }
}

TEST(OpenAiApiV4, ThinkingAnswerSplitsIntoReasoningAndContent) {
  std::string finish;
  const json message =
      whole_message(AnswerFormat::DeepseekV4Thinking, "Hmm, 2 + 2.</think>It is 4.", FinishReason::Stop, &finish);
  EXPECT_EQ(message["role"], "assistant");
  EXPECT_EQ(message["reasoning_content"], "Hmm, 2 + 2.");
  EXPECT_EQ(message["content"], "It is 4.");
  EXPECT_FALSE(message.contains("tool_calls"));
  EXPECT_EQ(finish, "stop");
  for (const std::string text :
       {"Hmm, 2 + 2.</think>It is 4.", "ünïcode </think>and <b>tags</b> <thin", "<think>opened</think>\n\nanswer\n",
        "cut short </thi", "all reasoning", "</think>no reasoning", "a</think>b<｜end▁of▁sentence｜>after the end"})
    expect_stream_equals_whole(AnswerFormat::DeepseekV4Thinking, text, FinishReason::Length);
}

TEST(OpenAiApiV4, ChatModeKeepsTheWholeAnswerAsContent) {
  std::string finish;
  const json message = whole_message(AnswerFormat::DeepseekV4, "a </think> stays", FinishReason::Eos, &finish);
  EXPECT_TRUE(message["reasoning_content"].is_null());
  EXPECT_EQ(message["content"], "a </think> stays");
  expect_stream_equals_whole(AnswerFormat::DeepseekV4, "plain <｜end▁of▁sentence｜> ends it", FinishReason::Length);
  expect_stream_equals_whole(AnswerFormat::DeepseekV4, "line one\n\nline two\n", FinishReason::Stop);
}

TEST(OpenAiApiV4, ToolCallsBecomeOpenAiToolCalls) {
  const std::string calls =
      "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
      "<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n"
      "<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
      "<｜DSML｜invoke name=\"get_time\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
  std::string finish;
  const json message =
      whole_message(AnswerFormat::DeepseekV4Thinking, "Need data.</think>" + calls, FinishReason::Eos, &finish);
  EXPECT_EQ(finish, "tool_calls");
  EXPECT_EQ(message["reasoning_content"], "Need data.");
  EXPECT_TRUE(message["content"].is_null());
  ASSERT_EQ(message["tool_calls"].size(), 2u);
  const json& call = message["tool_calls"][0];
  EXPECT_EQ(call["type"], "function");
  EXPECT_TRUE(call["id"].get<std::string>().starts_with("call_"));
  EXPECT_EQ(call["function"], json({{"name", "get_weather"}, {"arguments", "{\"city\": \"Paris\", \"days\": 3}"}}));
  EXPECT_EQ(message["tool_calls"][1]["function"]["arguments"], "{}");
  EXPECT_FALSE(call.contains("index"));
  expect_stream_equals_whole(AnswerFormat::DeepseekV4Thinking, "Need data.</think>Checking." + calls,
                             FinishReason::Eos);
  // Cut short by max_tokens: the finished call is returned, the reason stays "length".
  expect_stream_equals_whole(AnswerFormat::DeepseekV4, "Checking." + calls.substr(0, calls.size() - 60),
                             FinishReason::Length);
}

TEST(OpenAiApiV4, SettledLengthHoldsBackOnlyMarkerStarts) {
  EXPECT_EQ(settled_deepseek_v4_length("abc"), 3u);
  EXPECT_EQ(settled_deepseek_v4_length("abc</th"), 3u);
  EXPECT_EQ(settled_deepseek_v4_length("abc<"), 3u);
  EXPECT_EQ(settled_deepseek_v4_length("abc</think>"), 11u);
  EXPECT_EQ(settled_deepseek_v4_length("abc<b"), 5u);
  EXPECT_EQ(settled_deepseek_v4_length("abc\n\n<｜DS"), 3u);
  EXPECT_EQ(settled_deepseek_v4_length("abc\n"), 3u);
  EXPECT_EQ(settled_deepseek_v4_length(""), 0u);
}

TEST(OpenAiApiV3, ChatIsPlainText) {
  std::string finish;
  const json message = whole_message(AnswerFormat::Text, "a</think>b", FinishReason::Stop, &finish);
  EXPECT_EQ(message, json({{"role", "assistant"}, {"content", "a</think>b"}}));
  StreamedAnswer streamed;
  const json first = chunk_json(chat_head(AnswerFormat::Text), 0, {"a</th", {}, FinishReason::Running}, true, streamed);
  EXPECT_EQ(first["choices"][0]["delta"], json({{"role", "assistant"}, {"content", "a</th"}}));
}

}  // namespace
}  // namespace megamoe::serve
