#include "llama_session.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <new>
#include <thread>

namespace pptq_llama {

int run_guarded(const std::string& prog, const std::function<int()>& body) {
  auto report = [&](int code, const std::string& what) {
    std::string line = what;
    std::replace(line.begin(), line.end(), '\n', ' ');
    std::cerr << prog << ": " << line << std::endl;
    return code;
  };
  try {
    return body();
  } catch (const pptq::UsageError& e) {
    return report(kExitUsage, std::string(e.what()) + " (see --help)");
  } catch (const pptq::DataError& e) {
    return report(kExitData, e.what());
  } catch (const pptq::NumericalError& e) {
    return report(kExitNumerical, e.what());
  } catch (const pptq::IoError& e) {
    return report(kExitFailure, e.what());
  } catch (const std::bad_alloc&) {
    return report(kExitFailure, "out of memory");
  } catch (const std::exception& e) {
    return report(kExitFailure, std::string("internal error: ") + e.what());
  }
}

int parse_and_run(CLI::App& app, int argc, const char* const* argv, const std::string& prog, const std::function<int()>& body) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::cerr << prog << ": " << e.what() << " (see --help)" << std::endl;
    return kExitUsage;
  }
  return run_guarded(prog, body);
}

namespace {
bool g_verbose = false;

void log_filter(ggml_log_level level, const char* text, void*) {
  if (g_verbose || level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}
}  // namespace

void init_llama(bool verbose) {
  g_verbose = verbose;
  llama_log_set(log_filter, nullptr);
  llama_backend_init();
}

ModelPtr load_model(const std::string& path) {
  if (!std::ifstream(path)) throw pptq::DataError("cannot open the model '" + path + "'");
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;  // CPU: the callback reads the inputs from host memory without copies
  ModelPtr m(llama_model_load_from_file(path.c_str(), mp));
  if (!m) throw pptq::DataError("llama.cpp cannot load the model '" + path + "' (run with --verbose for its log)");
  return m;
}

ContextPtr make_context(llama_model* model, int n_ctx, int threads, ggml_backend_sched_eval_callback cb, void* cb_data) {
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = static_cast<std::uint32_t>(n_ctx);
  cp.n_batch = static_cast<std::uint32_t>(n_ctx);
  cp.n_ubatch = static_cast<std::uint32_t>(n_ctx);
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  cp.cb_eval = cb;
  cp.cb_eval_user_data = cb_data;
  cp.no_perf = true;
  ContextPtr c(llama_init_from_model(model, cp));
  if (!c) throw pptq::DataError("llama.cpp cannot create a context of " + std::to_string(n_ctx) + " tokens");
  if (llama_n_ubatch(c.get()) < static_cast<std::uint32_t>(n_ctx))
    throw pptq::DataError("llama.cpp evaluates at most " + std::to_string(llama_n_ubatch(c.get())) + " tokens at once, fewer than --ctx " +
                          std::to_string(n_ctx));
  return c;
}

std::vector<llama_token> tokenize(const llama_model* model, const std::string& text) {
  const llama_vocab* vocab = llama_model_get_vocab(model);
  if (text.size() > static_cast<std::size_t>(INT32_MAX)) throw pptq::DataError("the text is too long for llama_tokenize (2 GiB)");
  const auto len = static_cast<std::int32_t>(text.size());
  const std::int32_t need = -llama_tokenize(vocab, text.data(), len, nullptr, 0, false, false);
  std::vector<llama_token> tokens(static_cast<std::size_t>(std::max(need, 0)));
  const std::int32_t got = llama_tokenize(vocab, text.data(), len, tokens.data(), static_cast<std::int32_t>(tokens.size()), false, false);
  if (got < 0 || static_cast<std::size_t>(got) != tokens.size()) throw pptq::DataError("llama_tokenize failed on the text");
  return tokens;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw pptq::DataError("cannot open the text '" + path + "'");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw pptq::DataError("error reading the text '" + path + "'");
  if (s.empty()) throw pptq::DataError("the text '" + path + "' is empty");
  return s;
}

std::vector<std::vector<llama_token>> make_chunks(const std::vector<llama_token>& text, const llama_model* model, int n_ctx,
                                                  int max_chunks) {
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const bool bos = llama_vocab_get_add_bos(vocab);
  const std::size_t per = static_cast<std::size_t>(n_ctx) - (bos ? 1 : 0);
  if (per == 0) throw pptq::UsageError("--ctx must be at least 2 for a model whose tokenizer adds BOS");
  std::vector<std::vector<llama_token>> chunks;
  for (std::size_t at = 0; at < text.size(); at += per) {
    if (max_chunks > 0 && chunks.size() == static_cast<std::size_t>(max_chunks)) break;
    std::vector<llama_token> c;
    if (bos) c.push_back(llama_vocab_bos(vocab));
    const std::size_t end = std::min(text.size(), at + per);
    c.insert(c.end(), text.begin() + static_cast<std::ptrdiff_t>(at), text.begin() + static_cast<std::ptrdiff_t>(end));
    chunks.push_back(std::move(c));
  }
  if (chunks.empty()) throw pptq::DataError("the text has no tokens");
  return chunks;
}

void decode_all_logits(llama_context* ctx, const std::vector<llama_token>& tokens) {
  const auto n = static_cast<std::int32_t>(tokens.size());
  llama_batch b = llama_batch_init(n, 0, 1);
  for (std::int32_t i = 0; i < n; ++i) {
    b.token[i] = tokens[static_cast<std::size_t>(i)];
    b.pos[i] = i;
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = 0;
    b.logits[i] = 1;  // every token's logits: the last layer and output.weight then see every token
  }
  b.n_tokens = n;
  llama_kv_cache_clear(ctx);
  const std::int32_t rc = llama_decode(ctx, b);
  llama_batch_free(b);
  if (rc != 0) throw pptq::DataError("llama_decode failed (" + std::to_string(rc) + ") on a chunk of " + std::to_string(n) + " tokens");
}

int default_threads() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

}  // namespace pptq_llama
