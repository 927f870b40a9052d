// libFuzzer target for the GGUF reader (include/pptq/io/gguf.hpp). Built and run by .ci/run:
//   clang++-14 -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -I include -I tests/fuzz \
//       -isystem /usr/include/eigen3 tests/fuzz/fuzz_gguf.cpp -o /tmp/fuzz_gguf
//   /tmp/fuzz_gguf -max_total_time=15 CORPUS_COPY tests/data/gguf_corpus
// The body (fuzz_gguf_body.hpp) is shared with the test suite, which replays the corpus.
#include "fuzz_gguf_body.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)pptq_fuzz::fuzz_gguf_one(data, size);
  return 0;
}
