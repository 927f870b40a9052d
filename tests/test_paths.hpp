// Where the suite finds its data and the tools it runs. Only test_paths.cpp knows the paths of this build
// (compile definitions on that one file), so no other translation unit depends on where the project was
// cloned or built, and a compiler cache serves every clone.
#pragma once

namespace test {

const char* data_dir();        ///< tests/data of the source tree
const char* cli_path();        ///< the built pptq-quantize ("" when the tools are not built)
const char* gguf_tool_path();  ///< the built pptq-gguf ("" when the tools are not built)

}  // namespace test
