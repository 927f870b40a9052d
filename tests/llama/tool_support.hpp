// Shared helpers of the llama.cpp integration tests: a temporary directory, running pptq-gguf, and the
// model's own tokenization and chunking (the rule tools/llama/llama_session.hpp documents, written again here).
#pragma once

#include <llama.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <sys/wait.h>

#include "../test_paths.hpp"


namespace llama_test {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    for (int i = 0;; ++i) {
      path = fs::temp_directory_path() / ("pptq_llama_test_" + std::to_string(rd()) + "_" + std::to_string(i));
      if (fs::create_directory(path)) break;
    }
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline void put(const std::string& path, const std::string& text) {
  std::ofstream o(path, std::ios::binary | std::ios::trunc);
  o << text;
}

struct RunResult {
  int code = -1;
  std::string out, err;
};

inline std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

/// Runs pptq-gguf with args (each quoted); captures stdout, stderr and the exit code. llama.cpp runs
/// on one thread unless args say otherwise: ctest runs tests side by side on few cores, where ggml's
/// threads, which wait by spinning, would slow each other down many times over.
inline RunResult run_tool(std::vector<std::string> args, const TempDir& dir) {
  const bool command = !args.empty() && (args[0] == "calibrate" || args[0] == "eval");
  if (command && std::find(args.begin(), args.end(), "--threads") == args.end()) args.insert(args.begin() + 1, {"--threads", "1"});
  std::string cmd = quote(test::gguf_tool_path());
  for (const auto& a : args) cmd += " " + quote(a);
  const std::string out = dir.file("stdout.txt"), err = dir.file("stderr.txt");
  cmd += " > " + quote(out) + " 2> " + quote(err);
  const int st = std::system(cmd.c_str());
  RunResult r;
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

/// A seeded text of words and punctuation, with some non-ASCII characters (byte-fallback tokens).
inline std::string sample_text(std::size_t words, std::uint64_t seed) {
  static const char* vocab[] = {"the", "model", "weights", "are", "quantized", "with", "Gram", "matrices", "and", "tokens",
                                "naïve", "café", "over", "layers", "of", "a", "network", "—", "input", "rows"};
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::size_t> pick(0, sizeof vocab / sizeof vocab[0] - 1);
  std::string s;
  for (std::size_t i = 0; i < words; ++i) {
    s += vocab[pick(rng)];
    s += (i % 11 == 10) ? ".\n" : " ";
  }
  return s;
}

/// The tokens the tools evaluate for `text`: the model's tokenization cut into chunks of at most ctx tokens,
/// each led by BOS.
inline std::vector<std::vector<llama_token>> expected_chunks(const std::string& model_path, const std::string& text, int ctx) {
  llama_log_set([](ggml_log_level, const char*, void*) {}, nullptr);  // quiet: the tests' output is Catch2's
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.vocab_only = true;
  llama_model* model = llama_model_load_from_file(model_path.c_str(), mp);
  REQUIRE(model != nullptr);
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const auto len = static_cast<std::int32_t>(text.size());
  std::vector<llama_token> tokens(static_cast<std::size_t>(-llama_tokenize(vocab, text.data(), len, nullptr, 0, false, false)));
  REQUIRE(llama_tokenize(vocab, text.data(), len, tokens.data(), static_cast<std::int32_t>(tokens.size()), false, false) ==
          static_cast<std::int32_t>(tokens.size()));
  REQUIRE(llama_vocab_get_add_bos(vocab));
  const llama_token bos = llama_vocab_bos(vocab);
  llama_model_free(model);
  std::vector<std::vector<llama_token>> chunks;
  const std::size_t per = static_cast<std::size_t>(ctx) - 1;
  for (std::size_t at = 0; at < tokens.size(); at += per) {
    std::vector<llama_token> c{bos};
    for (std::size_t i = at; i < std::min(tokens.size(), at + per); ++i) c.push_back(tokens[i]);
    chunks.push_back(std::move(c));
  }
  return chunks;
}

/// A copy of `in` quantized by llama.cpp's own quantizer into `ftype` (e.g. LLAMA_FTYPE_MOSTLY_Q4_0);
/// output.weight into `output` if given (else llama.cpp's choice).
inline void quantize_with_llama(const std::string& in, const std::string& out, llama_ftype ftype, ggml_type output = GGML_TYPE_COUNT) {
  llama_log_set([](ggml_log_level, const char*, void*) {}, nullptr);
  llama_backend_init();
  llama_model_quantize_params p = llama_model_quantize_default_params();
  p.ftype = ftype;
  p.nthread = 2;
  if (output != GGML_TYPE_COUNT) p.output_tensor_type = output;
  REQUIRE(llama_model_quantize(in.c_str(), out.c_str(), &p) == 0);
}

}  // namespace llama_test
