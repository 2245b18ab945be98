// Tokenizers through GGUF (tokenizer/ggml_vocab.h, model/gguf_tokenizer.h): a tokenizer.json written
// as GGUF metadata and read back encodes every text to the same ids, DeepSeek-V3's own when the
// tokenizer test peer is installed; bad vocabularies are named.
#include "model/gguf_tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "tokenizer/bpe_trainer.h"
#include "util/error.h"
#include "util/json_file.h"

#include "test_support.h"

namespace megamoe {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kTexts = {
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces, tabs\tand\nnew lines\n\n",
    "数字 12345 and 3.14159; émigré naïve café",
    "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜></think>ok<｜end▁of▁sentence｜>",
    "code: for (int i = 0; i < n; ++i) { sum += a[i]; }",
};

// tokenizer.json (+ config) -> GGUF metadata in a file -> the tokenizer load_tokenizer reads.
void expect_round_trip(const nlohmann::json& tokenizer, const nlohmann::json& config, const std::string& name) {
  testing::TempDir dir;
  const GgmlVocab vocab = ggml_vocab_from_hf(tokenizer, config, name);
  write_gguf(dir / "tokenizer.gguf", ggml_vocab_metadata(vocab), {});
  const Tokenizer original = Tokenizer::from_json(tokenizer, config, name);
  const Tokenizer through_gguf = load_tokenizer(dir / "tokenizer.gguf");
  EXPECT_EQ(through_gguf.vocab_size(), original.vocab_size());
  for (const std::string& text : kTexts) {
    EXPECT_EQ(through_gguf.encode(text), original.encode(text)) << text;
    EXPECT_EQ(through_gguf.decode(original.encode(text)), original.decode(original.encode(text))) << text;
  }
  const auto file = GgufFile::open(dir / "tokenizer.gguf");
  const GgmlVocab read = read_ggml_vocab(*file);
  EXPECT_EQ(read.tokens, vocab.tokens);
  EXPECT_EQ(read.types, vocab.types);
  EXPECT_EQ(read.merges, vocab.merges);
  EXPECT_EQ(read.bos, vocab.bos);
  EXPECT_EQ(read.chat_template, vocab.chat_template);
}

TEST(GgmlVocab, TrainedTokenizerRoundTrips) {
  BpeTrainingOptions options;
  options.vocab_size = 400;
  std::vector<std::string> corpus;
  for (int i = 0; i < 50; ++i) corpus.insert(corpus.end(), kTexts.begin(), kTexts.end());
  const TrainedTokenizer trained = train_bpe(corpus, options);
  expect_round_trip(nlohmann::json::parse(trained.tokenizer.dump()), nlohmann::json::parse(trained.config.dump()),
                    "trained");
  const GgmlVocab vocab = ggml_vocab_from_hf(nlohmann::json::parse(trained.tokenizer.dump()),
                                             nlohmann::json::parse(trained.config.dump()), "trained");
  EXPECT_EQ(vocab.bos, 0);
  EXPECT_EQ(vocab.types[0], int32_t(GgmlTokenType::Control));      // BOS: a special added token
  EXPECT_EQ(vocab.types[2], int32_t(GgmlTokenType::UserDefined));  // <｜User｜>: added, not special
  EXPECT_TRUE(vocab.add_bos);
  EXPECT_FALSE(vocab.chat_template.empty());
}

TEST(GgmlVocab, DeepseekV3TokenizerRoundTrips) {
#if defined(__SANITIZE_ADDRESS__)
  // 128,815 tokens parsed four times take minutes under ASan; the trained tokenizer's round trip
  // runs the same code there, and the release run checks this one.
  GTEST_SKIP() << "DeepSeek-V3's whole vocabulary is checked in the release build";
#endif
  const fs::path dir = fs::path(__FILE__).parent_path().parent_path() / "tokenizer" / "node_modules" / "@lenml" /
                       "tokenizer-deepseek_v3" / "models";
  if (!fs::exists(dir / "tokenizer.json")) GTEST_SKIP() << "no DeepSeek-V3 tokenizer at " << dir.string();
  const nlohmann::json tokenizer = read_json_file(dir / "tokenizer.json");
  const nlohmann::json config = read_json_file(dir / "tokenizer_config.json");
  expect_round_trip(tokenizer, config, "DeepSeek-V3");
  const GgmlVocab vocab = ggml_vocab_from_hf(tokenizer, config, "DeepSeek-V3");
  EXPECT_EQ(vocab.tokens.size(), 128815u);  // 128,000 BPE tokens and 815 added ones after them
}

TEST(GgmlVocab, BadVocabulariesAreNamed) {
  GgmlVocab v;
  v.tokens = {"a", "b"};
  v.types = {1, 1};
  v.model = "llama";
  testing::expect_error([&] { hf_tokenizer_from_ggml(v, "x.gguf"); }, {"x.gguf", "tokenizer.ggml.model", "llama"});
  v.model = "gpt2";
  v.pre = "qwen2";
  testing::expect_error([&] { hf_tokenizer_from_ggml(v, "x.gguf"); }, {"tokenizer.ggml.pre", "qwen2"});
  v.pre = "deepseek-v3";
  v.types = {1};
  testing::expect_error([&] { hf_tokenizer_from_ggml(v, "x.gguf"); }, {"token_type has 1 entries for 2 tokens"});
  v.types = {1, 1};
  v.bos = 7;
  testing::expect_error([&] { hf_tokenizer_from_ggml(v, "x.gguf"); }, {"bos_token_id 7"});

  testing::TempDir dir;
  write_gguf(dir / "no-tokens.gguf", {{"tokenizer.ggml.model", GgufValueType::String, GgufValueType::U8, "gpt2"}}, {});
  testing::expect_error([&] { load_tokenizer(dir / "no-tokens.gguf"); }, {"no-tokens.gguf", "tokenizer.ggml.tokens"});
}

}  // namespace
}  // namespace megamoe
