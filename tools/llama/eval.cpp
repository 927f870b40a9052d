// `eval`: a quantized model against its reference on the same text (eval_metrics.hpp): perplexity of
// each, KL(reference ‖ quantized) per token (mean, median, 99th percentile, max), top-1 agreement.
#include "commands.hpp"
#include "eval_metrics.hpp"
#include "llama_session.hpp"

#include <pptq/io/atomic_file.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

namespace pptq_llama {

namespace {

struct EvalOptions {
  std::string model, reference, text, json;
  int ctx = 512;
  int chunks = 0;
  int threads = 0;
  bool quiet = false, verbose = false;
};

void add_options(CLI::App& app, EvalOptions& o) {
  app.add_option("--model", o.model, "the quantized GGUF model")->required();
  app.add_option("--reference", o.reference, "the full-precision GGUF model it was made from")->required();
  app.add_option("--text", o.text, "evaluation text (UTF-8)")->required();
  app.add_option("--json", o.json, "also write the figures as JSON to this file");
  app.add_option("--ctx", o.ctx, "tokens per chunk (each chunk is evaluated on its own, BOS first)")->capture_default_str();
  app.add_option("--chunks", o.chunks, "evaluate at most this many chunks (0: the whole text)")->capture_default_str();
  app.add_option("--threads", o.threads, "llama.cpp's threads (0: all cores)")->capture_default_str();
  app.add_flag("--quiet", o.quiet, "no progress on stderr");
  app.add_flag("--verbose", o.verbose, "show llama.cpp's log");
}

struct Loaded {
  ModelPtr model;
  ContextPtr ctx;
  std::size_t n_vocab = 0;
};

Loaded open(const std::string& path, const EvalOptions& o) {
  Loaded l;
  l.model = load_model(path);
  l.ctx = make_context(l.model.get(), o.ctx, o.threads > 0 ? o.threads : default_threads(), nullptr, nullptr);
  l.n_vocab = static_cast<std::size_t>(llama_vocab_n_tokens(llama_model_get_vocab(l.model.get())));
  return l;
}

// Scores one chunk: both models' logits at every position but the last, against the next token.
void score_chunk(Loaded& ref, Loaded& q, const std::vector<llama_token>& chunk, std::vector<TokenScore>& out) {
  decode_all_logits(ref.ctx.get(), chunk);
  decode_all_logits(q.ctx.get(), chunk);
  for (std::size_t j = 0; j + 1 < chunk.size(); ++j) {
    const float* lr = llama_get_logits_ith(ref.ctx.get(), static_cast<std::int32_t>(j));
    const float* lq = llama_get_logits_ith(q.ctx.get(), static_cast<std::int32_t>(j));
    if (!lr || !lq) throw pptq::DataError("llama.cpp returned no logits for position " + std::to_string(j));
    out.push_back(score_token(lr, lq, ref.n_vocab, static_cast<std::size_t>(chunk[j + 1])));
  }
}

nlohmann::json to_json(const EvalOptions& o, const EvalSummary& s, std::size_t chunks) {
  nlohmann::json j;
  j["reference"] = {{"model", o.reference}, {"perplexity", s.ppl_ref}};
  j["quantized"] = {{"model", o.model}, {"perplexity", s.ppl_q}};
  j["kl"] = {{"mean", s.kl_mean}, {"median", s.kl_median}, {"p99", s.kl_p99}, {"max", s.kl_max}};
  j["top1_agreement"] = s.top1;
  j["tokens_scored"] = s.scored;
  j["chunks"] = chunks;
  j["ctx"] = o.ctx;
  j["text"] = o.text;
  return j;
}

void write_json(const std::string& path, const nlohmann::json& j) {
  const std::string s = j.dump(2) + "\n";
  try {
    pptq::io::AtomicFile f(path);
    f.write(s.data(), s.size());
    f.commit();
  } catch (const std::exception& e) {
    throw pptq::IoError("cannot write '" + path + "': " + e.what());
  }
}

void print(const EvalOptions& o, const EvalSummary& s) {
  std::printf("reference %s: perplexity %.6g\n", o.reference.c_str(), s.ppl_ref);
  std::printf("quantized %s: perplexity %.6g (%+.3f%%)\n", o.model.c_str(), s.ppl_q, 100.0 * (s.ppl_q / s.ppl_ref - 1.0));
  std::printf("KL(reference || quantized) per token: mean %.6g, median %.6g, 99th percentile %.6g, max %.6g\n", s.kl_mean, s.kl_median,
              s.kl_p99, s.kl_max);
  std::printf("top-1 agreement: %.4f%% of %zu tokens\n", 100.0 * s.top1, s.scored);
}

int run_eval(const std::string& prog, const EvalOptions& o) {
  if (o.ctx < 2) throw pptq::UsageError("--ctx must be at least 2");
  if (o.chunks < 0 || o.threads < 0) throw pptq::UsageError("--chunks and --threads must be ≥ 0");
  init_llama(o.verbose);
  const std::string text = read_text(o.text);
  Loaded ref = open(o.reference, o);
  Loaded q = open(o.model, o);
  if (ref.n_vocab != q.n_vocab)
    throw pptq::DataError("the models' vocabularies differ (" + std::to_string(ref.n_vocab) + " and " + std::to_string(q.n_vocab) + " tokens)");
  const std::vector<llama_token> tokens = tokenize(ref.model.get(), text);
  if (tokenize(q.model.get(), text) != tokens) throw pptq::DataError("the models tokenize the text differently");
  const auto chunks = make_chunks(tokens, ref.model.get(), o.ctx, o.chunks);

  std::vector<TokenScore> scores;
  for (std::size_t c = 0; c < chunks.size(); ++c) {
    score_chunk(ref, q, chunks[c], scores);
    if (!o.quiet) std::fprintf(stderr, "%s: chunk %zu/%zu: %zu positions scored\n", prog.c_str(), c + 1, chunks.size(), scores.size());
  }
  if (scores.empty()) throw pptq::DataError("no position to score: the text needs at least two tokens per chunk");
  const EvalSummary s = summarize(scores);
  print(o, s);
  if (!o.json.empty()) write_json(o.json, to_json(o, s, chunks.size()));
  return kExitOk;
}

}  // namespace

int eval_main(int argc, const char* const* argv) {
  const std::string prog = argc > 0 ? argv[0] : "eval";
  CLI::App app("Compare a quantized GGUF model with its reference on a text: perplexity, KL per token, top-1 agreement", prog);
  EvalOptions o;
  add_options(app, o);
  return parse_and_run(app, argc, argv, prog, [&] { return run_eval(prog, o); });
}

}  // namespace pptq_llama
