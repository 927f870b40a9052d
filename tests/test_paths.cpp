#include "test_paths.hpp"

#ifndef PPTQ_TEST_DATA_DIR
#error "PPTQ_TEST_DATA_DIR must name tests/data"
#endif
#ifndef PPTQ_CLI_PATH
#define PPTQ_CLI_PATH ""
#endif
#ifndef PPTQ_GGUF_TOOL_PATH
#define PPTQ_GGUF_TOOL_PATH ""
#endif
#ifndef PPTQ_MAKE_BLOCK_PATH
#define PPTQ_MAKE_BLOCK_PATH ""
#endif

const char* test::data_dir() { return PPTQ_TEST_DATA_DIR; }
const char* test::cli_path() { return PPTQ_CLI_PATH; }
const char* test::gguf_tool_path() { return PPTQ_GGUF_TOOL_PATH; }
// Declared where it is used (test_bench_block.cpp): only the benchmarks' test needs it.
namespace test {
const char* make_block_path();
}
const char* test::make_block_path() { return PPTQ_MAKE_BLOCK_PATH; }
