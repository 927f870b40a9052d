// `calibrate`: run a GGUF model on calibration text and write the Gram XᵀX of every weight's input
// (gram_collector.hpp, include/pptq/io/gram_file.hpp). Every token's logits are requested, so the last
// layer and output.weight see every token, like every other layer: each dense weight's sample count is
// the number of tokens evaluated.
//
// With --quantized-model, both models run in lockstep on the same tokens and the file holds, per input,
// H̃ = X̃ᵀX̃ and the cross Gram G = X̃ᵀX (X̃ the quantized model's input, X the full-precision one's): what
// Qronos and GPFQ need (docs/theory.md §5.1). With --max-memory, the tensors are split into passes over
// the text whose accumulators fit the budget; the Grams are the same, bit for bit, as in one pass.
#include "commands.hpp"
#include "gram_collector.hpp"
#include "llama_session.hpp"

#include <pptq/io/gram_file.hpp>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace pptq_llama {

namespace {

struct CalibrateOptions {
  std::string model, quantized, text, output;
  int ctx = 512;
  int chunks = 0;   // 0: the whole text
  int threads = 0;  // 0: the hardware's
  double max_memory = 0;  // MiB of accumulators per pass; 0: one pass
  bool quiet = false, verbose = false;
};

void add_options(CLI::App& app, CalibrateOptions& o) {
  app.add_option("--model", o.model, "the GGUF model to run (F32/F16 weights give the full-precision inputs)")->required();
  app.add_option("--text", o.text, "calibration text (UTF-8), tokenized with the model's tokenizer")->required();
  app.add_option("--output", o.output, "the Gram file to write (GGUF; include/pptq/io/gram_file.hpp)")->required();
  app.add_option("--quantized-model", o.quantized,
                 "also run this quantized copy in lockstep and write H̃ = X̃ᵀX̃ and G = X̃ᵀX per input (for Qronos)");
  app.add_option("--ctx", o.ctx, "tokens per chunk (each chunk is evaluated on its own, BOS first)")->capture_default_str();
  app.add_option("--chunks", o.chunks, "evaluate at most this many chunks (0: the whole text)")->capture_default_str();
  app.add_option("--threads", o.threads, "llama.cpp's threads (0: all cores)")->capture_default_str();
  app.add_option("--max-memory", o.max_memory,
                 "MiB the Gram accumulators (8·n² bytes per input, twice that with --quantized-model) may take; more "
                 "passes over the text when they do not fit at once (0: one pass)")
      ->capture_default_str();
  app.add_flag("--quiet", o.quiet, "no progress on stderr");
  app.add_flag("--verbose", o.verbose, "show llama.cpp's log");
}

void validate(const CalibrateOptions& o) {
  if (o.ctx < 2) throw pptq::UsageError("--ctx must be at least 2");
  if (o.chunks < 0) throw pptq::UsageError("--chunks must be ≥ 0");
  if (o.threads < 0) throw pptq::UsageError("--threads must be ≥ 0");
  if (!(o.max_memory >= 0)) throw pptq::UsageError("--max-memory must be ≥ 0");
}

std::string base_name(const std::string& p) {
  const auto s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

double mib(std::uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

/// The models, their contexts and collectors: `main` collects (Gram or Cross mode); with a quantized
/// model, `ref` captures the full-precision rows and `main` runs on the quantized model.
struct Run {
  Run(std::string p, const CalibrateOptions& opt) : prog(std::move(p)), o(opt) {}
  std::string prog;
  const CalibrateOptions& o;
  ModelPtr model, qmodel;
  GramCollector ref, main;
  ContextPtr ref_ctx, main_ctx;
  std::vector<std::vector<llama_token>> chunks;
  std::uint64_t tokens = 0;

  bool lockstep() const { return static_cast<bool>(qmodel); }
  GramCollector& discoverer() { return lockstep() ? ref : main; }
  llama_context* discover_ctx() { return lockstep() ? ref_ctx.get() : main_ctx.get(); }

  void open(const std::string& text) {
    const int threads = o.threads > 0 ? o.threads : default_threads();
    model = load_model(o.model);
    const std::vector<llama_token> toks = tokenize(model.get(), text);
    if (!o.quantized.empty()) {
      qmodel = load_model(o.quantized);
      if (tokenize(qmodel.get(), text) != toks) throw pptq::DataError("the two models tokenize the text differently");
      ref_ctx = make_context(model.get(), o.ctx, threads, GramCollector::callback, &ref);
    }
    main_ctx = make_context(lockstep() ? qmodel.get() : model.get(), o.ctx, threads, GramCollector::callback, &main);
    chunks = make_chunks(toks, model.get(), o.ctx, o.chunks);
    for (const auto& c : chunks) tokens += c.size();
  }

  // One chunk through the model(s): the full-precision one first, whose rows the quantized one pairs with.
  void evaluate(const std::vector<llama_token>& chunk) {
    if (lockstep()) {
      ref.begin_evaluation();
      decode_all_logits(ref_ctx.get(), chunk);
      ref.rethrow();
    }
    main.begin_evaluation();
    decode_all_logits(main_ctx.get(), chunk);
    main.rethrow();
  }

  void start_pass(const std::set<std::string>& only) {
    if (lockstep()) {
      ref.start_pass(CollectMode::Capture, only);
      main.start_pass(CollectMode::Cross, only, &ref);
    } else {
      main.start_pass(CollectMode::Gram, only);
    }
  }
};

/// The tensors of each pass: one pass of everything without a budget; else the units a Discover pass
/// over the first chunk finds, packed in graph order into passes that fit the budget.
std::vector<std::set<std::string>> plan_passes(Run& run) {
  if (run.o.max_memory <= 0) return {{}};
  GramCollector& d = run.discoverer();
  d.start_pass(CollectMode::Discover);
  d.begin_evaluation();
  decode_all_logits(run.discover_ctx(), run.chunks.front());
  d.rethrow();
  const auto budget = static_cast<std::uint64_t>(run.o.max_memory * 1024.0 * 1024.0);
  std::vector<std::set<std::string>> passes;
  std::uint64_t used = 0, total = 0;
  for (const Unit& u : d.units(run.lockstep())) {
    if (passes.empty() || used + u.bytes > budget) {
      passes.emplace_back();
      used = 0;
    }
    passes.back().insert(u.tensors.begin(), u.tensors.end());
    used += u.bytes;
    total += u.bytes;
    if (u.bytes > budget && !run.o.quiet)
      std::fprintf(stderr, "%s: note: '%s' needs %.1f MiB, more than --max-memory: it gets a pass of its own\n", run.prog.c_str(),
                   u.tensors.front().c_str(), mib(u.bytes));
  }
  if (passes.empty()) throw pptq::DataError("no product of a model weight was seen: nothing to collect");
  if (!run.o.quiet)
    std::fprintf(stderr, "%s: the accumulators take %.1f MiB: %zu pass%s over the text\n", run.prog.c_str(), mib(total), passes.size(),
                 passes.size() == 1 ? "" : "es");
  return passes;
}

void run_pass(Run& run, const std::set<std::string>& only, std::size_t pass, std::size_t passes) {
  run.start_pass(only);
  for (std::size_t c = 0; c < run.chunks.size(); ++c) {
    const auto t0 = std::chrono::steady_clock::now();
    run.evaluate(run.chunks[c]);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (run.o.quiet) continue;
    const std::string where = passes > 1 ? "pass " + std::to_string(pass + 1) + "/" + std::to_string(passes) + ", " : "";
    std::fprintf(stderr, "%s: %schunk %zu/%zu: %zu tokens in %.2f s, %zu Grams for %zu weights\n", run.prog.c_str(), where.c_str(), c + 1,
                 run.chunks.size(), run.chunks[c].size(), s, run.main.grams(), run.main.weights());
  }
}

std::vector<std::pair<std::string, pptq::gguf::Value>> provenance(const Run& run, std::size_t passes) {
  using pptq::gguf::Value;
  std::vector<std::pair<std::string, Value>> m = {
      {"model", Value(base_name(run.o.model))},
      {"text", Value(base_name(run.o.text))},
      {"ctx", Value(static_cast<std::uint32_t>(run.o.ctx))},
      {"chunks", Value(static_cast<std::uint32_t>(run.chunks.size()))},
      {"tokens", Value(run.tokens)},
      {"bos", Value(static_cast<bool>(llama_vocab_get_add_bos(llama_model_get_vocab(run.model.get()))))},
      {"passes", Value(static_cast<std::uint32_t>(passes))}};
  if (run.lockstep()) m.emplace_back("quantized_model", Value(base_name(run.o.quantized)));
  return m;
}

int run_calibrate(const std::string& prog, const CalibrateOptions& o) {
  validate(o);
  init_llama(o.verbose);
  Run run(prog, o);
  run.open(read_text(o.text));
  const std::vector<std::set<std::string>> passes = plan_passes(run);
  pptq::io::GramFileWriter writer(o.output, provenance(run, passes.size()));
  std::size_t weights = 0;
  for (std::size_t p = 0; p < passes.size(); ++p) {
    run_pass(run, passes[p], p, passes.size());
    run.main.drain([&](const pptq::io::GramRecord& r) {
      if (!run.lockstep() && r.expert < 0 && static_cast<std::uint64_t>(r.samples) != run.tokens && !o.quiet)
        std::fprintf(stderr, "%s: note: '%s' saw %lld rows for %llu tokens\n", prog.c_str(), r.weights.front().c_str(),
                     static_cast<long long>(r.samples), static_cast<unsigned long long>(run.tokens));
      writer.add(r);
      weights += r.weights.size();
    });
  }
  for (const std::string& w : run.main.skipped())
    std::fprintf(stderr, "%s: warning: '%s' is used through a view; it has no Gram\n", prog.c_str(), w.c_str());
  if (writer.size() == 0) throw pptq::DataError("no product of a model weight was seen: nothing to write");
  writer.commit();
  if (!o.quiet)
    std::fprintf(stderr, "%s: wrote %zu %s for %zu weights from %llu tokens (%zu chunks) to %s\n", prog.c_str(), writer.size(),
                 run.lockstep() ? "Gram pairs (H̃, G)" : "Grams", weights, static_cast<unsigned long long>(run.tokens), run.chunks.size(),
                 o.output.c_str());
  return kExitOk;
}

}  // namespace

int calibrate_main(int argc, const char* const* argv) {
  const std::string prog = argc > 0 ? argv[0] : "calibrate";
  CLI::App app("Run a GGUF model on calibration text with llama.cpp and write the Gram XᵀX of every weight's input", prog);
  CalibrateOptions o;
  add_options(app, o);
  return parse_and_run(app, argc, argv, prog, [&] { return run_calibrate(prog, o); });
}

}  // namespace pptq_llama
