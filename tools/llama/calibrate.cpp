// `calibrate`: run a GGUF model on calibration text and write the Gram XᵀX of every weight's input
// (gram_collector.hpp, include/pptq/io/gram_file.hpp). Every token's logits are requested, so the last
// layer and output.weight see every token, like every other layer: each dense weight's sample count is
// the number of tokens evaluated.
#include "commands.hpp"
#include "gram_collector.hpp"
#include "llama_session.hpp"

#include <pptq/io/gram_file.hpp>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

namespace pptq_llama {

namespace {

struct CalibrateOptions {
  std::string model, text, output;
  int ctx = 512;
  int chunks = 0;  // 0: the whole text
  int threads = 0;  // 0: the hardware's
  bool quiet = false, verbose = false;
};

void add_options(CLI::App& app, CalibrateOptions& o) {
  app.add_option("--model", o.model, "the GGUF model to run (F32/F16 weights give the full-precision inputs)")->required();
  app.add_option("--text", o.text, "calibration text (UTF-8), tokenized with the model's tokenizer")->required();
  app.add_option("--output", o.output, "the Gram file to write (GGUF; include/pptq/io/gram_file.hpp)")->required();
  app.add_option("--ctx", o.ctx, "tokens per chunk (each chunk is evaluated on its own, BOS first)")->capture_default_str();
  app.add_option("--chunks", o.chunks, "evaluate at most this many chunks (0: the whole text)")->capture_default_str();
  app.add_option("--threads", o.threads, "llama.cpp's threads (0: all cores)")->capture_default_str();
  app.add_flag("--quiet", o.quiet, "no progress on stderr");
  app.add_flag("--verbose", o.verbose, "show llama.cpp's log");
}

void validate(const CalibrateOptions& o) {
  if (o.ctx < 2) throw pptq::UsageError("--ctx must be at least 2");
  if (o.chunks < 0) throw pptq::UsageError("--chunks must be ≥ 0");
  if (o.threads < 0) throw pptq::UsageError("--threads must be ≥ 0");
}

std::string base_name(const std::string& p) {
  const auto s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

int run_calibrate(const std::string& prog, const CalibrateOptions& o) {
  validate(o);
  init_llama(o.verbose);
  const std::string text = read_text(o.text);
  ModelPtr model = load_model(o.model);
  const auto chunks = make_chunks(tokenize(model.get(), text), model.get(), o.ctx, o.chunks);
  GramCollector collector;
  ContextPtr ctx = make_context(model.get(), o.ctx, o.threads > 0 ? o.threads : default_threads(), GramCollector::callback, &collector);

  std::uint64_t tokens = 0;
  for (std::size_t c = 0; c < chunks.size(); ++c) {
    const auto t0 = std::chrono::steady_clock::now();
    collector.begin_evaluation();
    decode_all_logits(ctx.get(), chunks[c]);
    collector.rethrow();
    tokens += chunks[c].size();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!o.quiet)
      std::fprintf(stderr, "%s: chunk %zu/%zu: %zu tokens in %.2f s, %zu Grams for %zu weights\n", prog.c_str(), c + 1, chunks.size(),
                   chunks[c].size(), s, collector.grams(), collector.weights());
  }
  if (collector.grams() == 0) throw pptq::DataError("no product of a model weight was seen: nothing to write");
  for (const std::string& w : collector.skipped())
    std::fprintf(stderr, "%s: warning: '%s' is used through a view; it has no Gram\n", prog.c_str(), w.c_str());

  const std::vector<pptq::io::GramRecord> records = collector.records();
  for (const auto& r : records)
    if (r.expert < 0 && static_cast<std::uint64_t>(r.samples) != tokens && !o.quiet)
      std::fprintf(stderr, "%s: note: '%s' saw %lld rows for %llu tokens\n", prog.c_str(), r.weights.front().c_str(),
                   static_cast<long long>(r.samples), static_cast<unsigned long long>(tokens));
  pptq::io::write_gram_file(o.output, records,
                            {{"model", pptq::gguf::Value(base_name(o.model))},
                             {"text", pptq::gguf::Value(base_name(o.text))},
                             {"ctx", pptq::gguf::Value(static_cast<std::uint32_t>(o.ctx))},
                             {"chunks", pptq::gguf::Value(static_cast<std::uint32_t>(chunks.size()))},
                             {"tokens", pptq::gguf::Value(tokens)},
                             {"bos", pptq::gguf::Value(static_cast<bool>(llama_vocab_get_add_bos(llama_model_get_vocab(model.get()))))}});
  if (!o.quiet)
    std::fprintf(stderr, "%s: wrote %zu Grams for %zu weights from %llu tokens (%zu chunks) to %s\n", prog.c_str(), records.size(),
                 collector.weights(), static_cast<unsigned long long>(tokens), chunks.size(), o.output.c_str());
  return kExitOk;
}

}  // namespace

int calibrate_main(int argc, const char* const* argv) {
  const std::string prog = argc > 0 ? argv[0] : "calibrate";
  CLI::App app("Run a GGUF model on calibration text with llama.cpp and write the Gram XᵀX of every weight's input", prog);
  CalibrateOptions o;
  add_options(app, o);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::cerr << prog << ": " << e.what() << " (see --help)" << std::endl;
    return kExitUsage;
  }
  return run_guarded(prog, [&] { return run_calibrate(prog, o); });
}

}  // namespace pptq_llama
