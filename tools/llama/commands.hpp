// The llama.cpp-backed commands of pptq-gguf (built only when llama.cpp is found):
//
//   calibrate --model M.gguf --text FILE [--ctx N] [--chunks K] [--threads T] --output grams.gguf
//             [--quantized-model Q.gguf] [--max-memory MiB]
//       runs the model on the text and writes every weight's Gram XᵀX (include/pptq/io/gram_file.hpp);
//       with a quantized copy in lockstep, H̃ = X̃ᵀX̃ and G = X̃ᵀX instead (Qronos); in several passes over
//       the text when the accumulators exceed the budget
//   eval --model Q.gguf --reference F.gguf --text FILE [--ctx N] [--chunks K] [--threads T] [--json out.json]
//       perplexity of both models, KL(reference ‖ quantized) per token (mean, 99th percentile), top-1 agreement
//
// Each takes the command's own argument vector: argv[0] names the command in messages (e.g.
// "pptq-gguf calibrate"), the options follow. Returns the exit code (llama_session.hpp: 0 ok, 1 output or
// internal failure, 2 usage, 3 data, 4 numerical).
#pragma once

namespace pptq_llama {

int calibrate_main(int argc, const char* const* argv);
int eval_main(int argc, const char* const* argv);

}  // namespace pptq_llama
