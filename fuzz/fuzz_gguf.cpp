// Fuzz target: GGUF files (docs/fuzzing.md). The fuzzer's bytes are written to a file and opened
// the ways a user's file is: as a model (header, metadata read as a config, every tensor checked
// against it), for its tokenizer, and one token run through the model. Input megamoe refuses must
// end in megamoe::Error; a crash, a sanitizer report or any other exception is a bug.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "model/gguf_tokenizer.h"
#include "model/model.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace megamoe;
  static const std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("megamoe-fuzz-" + std::to_string(getpid()) + ".gguf");
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  }
  try {
    const std::unique_ptr<Model> model = load_model(path);
    const std::unique_ptr<SequenceCache> cache = model->new_cache(2);
    const int32_t token = 0;
    std::vector<float> logits(size_t(model->vocab_size()));
    const SequenceStep step{cache.get(), {&token, 1}};
    model->forward(logits.data(), {&step, 1});
  } catch (const Error&) {
  }
  try {
    const Tokenizer tokenizer = load_tokenizer(path);
    const std::vector<int32_t> ids = tokenizer.encode("Hello, world! 123 ünïcode\n");
    (void)tokenizer.decode(ids);
  } catch (const Error&) {
  }
  return 0;
}
