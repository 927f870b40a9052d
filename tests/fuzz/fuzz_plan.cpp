// libFuzzer target for pptq-gguf requantize's planning (tools/gguf_plan.hpp): a model and a directory of
// calibration files, matched and checked without quantizing. Built and run by .ci/run:
//   clang++-14 -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -I include -I tools -I tests/fuzz \
//       -isystem /usr/include/eigen3 tests/fuzz/fuzz_plan.cpp tools/gguf_plan.cpp tools/cli_common.cpp \
//       -o /tmp/fuzz_plan
//   /tmp/fuzz_plan -max_total_time=15 CORPUS_COPY tests/data/plan_corpus
// The input's layout and the checks are in fuzz_plan_body.hpp, shared with the test suite.
#include "fuzz_plan_body.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)pptq_fuzz::fuzz_plan_one(data, size);
  return 0;
}
