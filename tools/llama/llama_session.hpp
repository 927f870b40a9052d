// What `calibrate` and `eval` share: the llama.cpp model and context as owned objects, tokenization with
// the model's own tokenizer, the split of the text into chunks, and the tools' error model (exit codes).
#pragma once

#include <pptq/error.hpp>

#include <llama.h>

namespace CLI {
class App;
}  // namespace CLI

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace pptq_llama {

/// The tools' exit codes (the same as pptq-gguf requantize's): 0 success, 1 the output could not be
/// written or an internal failure, 2 bad usage, 3 bad data, 4 numerical failure.
enum ExitCode : int { kExitOk = 0, kExitFailure = 1, kExitUsage = 2, kExitData = 3, kExitNumerical = 4 };

/// Runs body() and turns every exception into one line "prog: what" on stderr and its exit code:
/// pptq::UsageError 2, DataError 3, NumericalError 4, anything else 1.
int run_guarded(const std::string& prog, const std::function<int()>& body);

/// A command's whole life: parses argv with `app` (a parse error is one line and the usage exit code;
/// --help exits 0), then run_guarded(prog, body).
int parse_and_run(CLI::App& app, int argc, const char* const* argv, const std::string& prog, const std::function<int()>& body);

/// llama.cpp's own log: silent (errors only) unless verbose.
void init_llama(bool verbose);

struct ModelDeleter {
  void operator()(llama_model* m) const { llama_model_free(m); }
};
struct ContextDeleter {
  void operator()(llama_context* c) const { llama_free(c); }
};
using ModelPtr = std::unique_ptr<llama_model, ModelDeleter>;
using ContextPtr = std::unique_ptr<llama_context, ContextDeleter>;

/// Loads a GGUF model on the CPU (memory-mapped); pptq::DataError if it cannot be opened or llama.cpp cannot load it.
ModelPtr load_model(const std::string& path);

/// A context that evaluates up to n_ctx tokens in ONE graph evaluation (n_batch = n_ubatch = n_ctx): the
/// Gram collector relies on that, since an input is identified within one evaluation (gram_collector.hpp).
/// cb / cb_data: the evaluation callback (may be null).
ContextPtr make_context(llama_model* model, int n_ctx, int threads, ggml_backend_sched_eval_callback cb, void* cb_data);

/// The text's tokens by the model's tokenizer, without BOS/EOS (chunks add BOS themselves).
std::vector<llama_token> tokenize(const llama_model* model, const std::string& text);

/// Reads a whole text file; pptq::DataError if it cannot be read or is empty (an unreadable input is bad data).
std::string read_text(const std::string& path);

/// The text cut into chunks of at most n_ctx tokens, each evaluated on its own (empty cache, positions from
/// 0): a chunk is BOS (when the model's tokenizer adds one) followed by the next n_ctx − 1 (or n_ctx)
/// tokens of the text. The last chunk may be shorter; max_chunks > 0 keeps only the first max_chunks.
std::vector<std::vector<llama_token>> make_chunks(const std::vector<llama_token>& text, const llama_model* model, int n_ctx,
                                                  int max_chunks);

/// Evaluates one chunk with the logits of EVERY token requested, on an empty cache. pptq::DataError if
/// llama_decode fails.
void decode_all_logits(llama_context* ctx, const std::vector<llama_token>& tokens);

/// The default thread count: the hardware's.
int default_threads();

}  // namespace pptq_llama
