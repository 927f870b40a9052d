// pptq-gguf-llama: the llama.cpp-backed commands of pptq-gguf as a program of their own (commands.hpp).
//
//   pptq-gguf-llama calibrate --model M.gguf --text FILE --output grams.gguf [...]
//   pptq-gguf-llama eval --model Q.gguf --reference F.gguf --text FILE [--json out.json] [...]
#include "commands.hpp"
#include "llama_session.hpp"

#include <cstdio>
#include <cstring>
#include <string>

namespace {
void usage(std::FILE* to) {
  std::fputs("usage: pptq-gguf-llama calibrate|eval [options]   (pptq-gguf-llama COMMAND --help for the options)\n"
             "  calibrate  run a GGUF model on text and write every weight's Gram XᵀX\n"
             "  eval       perplexity, KL per token and top-1 agreement of a quantized model against its reference\n",
             to);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(stderr);
    return pptq_llama::kExitUsage;
  }
  const std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help") {
    usage(stdout);
    return pptq_llama::kExitOk;
  }
  // The command sees its own argument vector, named "pptq-gguf-llama COMMAND" in messages.
  const std::string name = "pptq-gguf-llama " + cmd;
  argv[1] = const_cast<char*>(name.c_str());
  if (cmd == "calibrate") return pptq_llama::calibrate_main(argc - 1, argv + 1);
  if (cmd == "eval") return pptq_llama::eval_main(argc - 1, argv + 1);
  std::fprintf(stderr, "pptq-gguf-llama: unknown command '%s'\n", cmd.c_str());
  usage(stderr);
  return pptq_llama::kExitUsage;
}
