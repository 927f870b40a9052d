// pptq-gguf: requantize the linear layers of a GGUF model with OPTQ into one of llama.cpp's block formats.
//
//   pptq-gguf requantize --model IN.gguf (--hessians DIR | --grams GRAMS.gguf)
//       --format q4_0|q4_k|q3_k|q2_k|q8_0|q5_0|q5_k|q6_k|iq4_nl|iq4_xs --output OUT.gguf
//       [--method optq|optq-stochastic|qronos] [--seed S] [--only REGEX] [--damp C|auto [--heldout-grams G.gguf]]
//       [--report R.json] [--no-refit] [--threads T] [--quiet] [--allow-unused] [--dry-run]
//   pptq-gguf requantize --model IN.gguf --hessians DIR --format q4_k_m|q5_k_m|q3_k_m|q2_k_m --output OUT.gguf
//       [--rtn-missing] [--dry-run] [the options above]
//
// Every 2-d tensor NAME of the model for which DIR holds NAME.H.npy (cols x cols, any positive multiple of
// XᵀX) or NAME.X.npy (samples x cols calibration inputs; H = XᵀX) is requantized with
// pptq::ggml::quantize_optq; its type becomes the format, its data the format's bytes, its shape (ne) is
// kept. Everything else (metadata: keys, order, values; all other tensors' types, shapes and bytes) is copied
// unchanged. A linear layer W (out x in) is stored with ne = [in, out]: the rows of W are the contiguous
// rows (docs/formats.md). The source tensor must be F32, F16, BF16 or Q8_0 (decoded exactly; the summary counts
// the Q8_0 ones, already quantized); any other quantized tensor is an error naming it. With --grams, the
// Hessians are the Gram file's (gguf_hessians.hpp: every weight it names is requantized); --method picks OPTQ,
// stochastic OPTQ or Qronos, which needs the file of calibrate --quantized-model (gguf_methods.hpp).
//
// A recipe (gguf_recipe.hpp, docs/formats.md §5) gives every tensor llama-quantize's type for that file type
// instead: each tensor it quantizes is requantized from its Hessian (--hessians), or, without one, refused (all
// named at once) unless --rtn-missing rounds it plainly (listed in the summary); the rest is copied, and the
// metadata gets llama-quantize's general.file_type. --dry-run prints the plan on stdout and writes nothing.
//
// The model is read tensor by tensor and the output written so (gguf_requantize.hpp); --report writes the
// model's JSON report (gguf_report.hpp); --damp auto chooses each tensor's damp on held-out inputs. Under
// mpirun (built with MPI) the tensors are spread over the ranks, the output the same bytes (gguf_mpi.hpp).
//
// Exit codes (cli_common.hpp): 0 success; 1 the output could not be written (or an unexpected internal
// error); 2 bad usage; 3 bad data (unreadable or malformed files, shape mismatch, NaN/Inf, unsupported
// tensor); 4 numerical failure (H + λI not positive definite even after escalating the damping). The output
// is written through a temporary file renamed over OUT.gguf only on success: on failure nothing is left
// behind and an existing OUT.gguf is untouched. Before anything is quantized, the plan (gguf_plan.hpp)
// checks every matched tensor and calibration file's header, and the memory the largest tensor needs is
// estimated and refused when it exceeds MemAvailable or --max-memory.
#include "cli_common.hpp"
#include "gguf_hessians.hpp"
#include "gguf_methods.hpp"
#include "gguf_plan.hpp"
#include "gguf_recipe.hpp"
#include "gguf_report.hpp"
#include "gguf_requantize.hpp"
#ifdef PPTQ_WITH_MPI
#include "gguf_mpi.hpp"
#endif
#ifdef PPTQ_WITH_LLAMA
#include "commands.hpp"
#endif

#include <pptq/ggml/blocks.hpp>
#include <pptq/ggml/grid.hpp>
#include <pptq/io/atomic_file.hpp>
#include <pptq/io/gguf.hpp>

#include <CLI/CLI.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <limits>
#include <optional>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace pptq_gguf {
namespace {

constexpr const char* kProg = "pptq-gguf";

using pptq::DataError;
using pptq::UsageError;
using pptq_tools::shape_str;
using Clock = std::chrono::steady_clock;

/// A progress line on stderr (names from the model escaped: pptq_tools::note), unless --quiet.
void say(const Options& o, const std::string& line) {
  if (!o.quiet) pptq_tools::note(kProg, line);
}

/// The model, opened for reading tensor by tensor: its header parsed and checked, its data left on disk. A
/// file that cannot be read is bad input to the tool (exit 3), like a malformed one.
void open_model(const Options& o, std::optional<pptq::gguf::Reader>& model) {
  try {
    model.emplace(o.model);  // its messages name the file
  } catch (const pptq::IoError& e) {
    throw DataError(e.what());
  }
}

/// The pre-flight of the plan: the Gram files' images in memory and the largest step's work (its source and
/// output bytes, H, the factor and the working set; a 3-d tensor's experts one at a time).
void check_plan_memory(const pptq::gguf::File& f, const RecipePlan& plan, const GramSource* grams,
                       const GramSource* heldout, const Options& o) {
  const double resident = (grams ? static_cast<double>(grams->bytes()) : 0.0) +
                          (heldout ? static_cast<double>(heldout->bytes()) : 0.0);
  double peak = 0;
  std::size_t largest = plan.steps.empty() ? 0 : plan.steps.front().tensor;
  for (const Step& s : plan.steps) {
    if (s.action == Action::Copy && peak > 0) continue;
    const auto& t = f.tensors[s.tensor];
    double m = 2.0 * static_cast<double>(t.nbytes()) + 2.0 * static_cast<double>(bytes_as(t, s.to));
    for (const std::optional<Job>& job : s.experts)
      if (job) m += job_memory(t, *job) / static_cast<double>(s.experts.size());
    if (s.job)
      m += job_memory(t, *s.job) +
           method_extra_memory(o.method, static_cast<double>(t.ne[1]), static_cast<double>(t.ne[0]));
    if (s.action == Action::Optq && o.damp_auto) m += 2.0 * 8.0 * static_cast<double>(t.ne[0]) * static_cast<double>(t.ne[0]);
    if (m > peak) peak = m, largest = s.tensor;
  }
  const auto& t = f.tensors[largest];
  pptq_tools::check_memory(resident + peak,
                           "requantizing " + tensor_label(t) + " (" +
                               shape_str(static_cast<std::int64_t>(t.ne[1]), static_cast<std::int64_t>(t.ne[0])) +
                               ", H " + shape_str(static_cast<std::int64_t>(t.ne[0]), static_cast<std::int64_t>(t.ne[0])) +
                               ")" + (resident > 0 ? " with the Gram files in memory" : ""),
                           o.max_memory);
}

/// A Gram file (--grams, --heldout-grams), after the pre-flight of its image in memory.
std::unique_ptr<const GramSource> open_gram_file(const std::string& path, const std::string& option, const Options& o) {
  std::uint64_t size = 0;
  try {
    size = pptq::io::regular_file_size(path, option + ": ");
  } catch (const pptq::IoError& e) {
    throw DataError(e.what());
  }
  pptq_tools::check_memory(static_cast<double>(size), "reading " + path, o.max_memory);
  return std::make_unique<const GramSource>(path);
}

/// --grams: the Gram file, after the pre-flight of its image in memory; checked against --method (Qronos
/// needs the cross Grams of calibrate --quantized-model). Null with --hessians.
std::unique_ptr<const GramSource> open_grams(const Options& o) {
  auto g = open_gram_file(o.grams, "--grams", o);
  if (o.method == Method::Qronos && !g->lockstep())
    throw UsageError("--method qronos needs a Gram file from calibrate --quantized-model (H~ and G per input); '" +
                     o.grams + "' holds plain Grams");
  if (o.method != Method::Qronos && g->any_cross())
    say(o, "note: " + o.grams + " comes from calibrate --quantized-model: " + method_name(o.method) +
               " runs on the quantized model's inputs' Grams H~");
  return g;
}

// ------------------------------------------------------------------------------------------------
// Plans: a type per tensor (gguf_recipe.hpp), each tensor quantized with OPTQ (or --method), by plain
// rounding (no Hessian, --rtn-missing), converted to f16 (the last fallback) or copied
// ------------------------------------------------------------------------------------------------

/// "q4_k_m: 12 OPTQ, 2 RTN (no Hessian: 'a', 'b'), 0 converted, 9 copied".
std::string steps_summary(const pptq::gguf::File& f, const RecipePlan& plan) {
  std::size_t optq = 0, f16 = 0, copied = 0, from_q8 = 0;
  std::string rtn;
  std::size_t n_rtn = 0;
  for (const Step& s : plan.steps) {
    optq += s.action == Action::Optq;
    f16 += s.action == Action::ToF16;
    copied += s.action == Action::Copy;
    if (s.action != Action::Copy && f.tensors[s.tensor].type == pptq::ggml::Type::Q8_0) ++from_q8;
    const std::string name = pptq::io::detail::quoted(f.tensors[s.tensor].name);
    if (s.action == Action::Rtn && s.experts.empty()) rtn += (n_rtn++ ? ", " : "") + name;
    for (std::size_t e = 0; e < s.experts.size(); ++e)
      if (!s.experts[e]) rtn += (n_rtn++ ? ", " : "") + name + " expert " + std::to_string(e);
  }
  std::string out = std::to_string(optq) + " quantized with OPTQ, " + std::to_string(n_rtn) +
                    " tensor(s) or expert(s) by plain rounding" +
                    (n_rtn ? " (no Hessian: " + rtn + ")" : "") + ", " + std::to_string(f16) + " converted to f16, " +
                    std::to_string(copied) + " copied";
  if (from_q8) out += "; " + std::to_string(from_q8) + " source tensor(s) were already quantized (q8_0)";
  return out;
}

/// The recipe's plan, or --dry-run's plan of a plain format.
/// A recipe's plan from a Gram file: every 2-d tensor the recipe quantizes whose weight has a Gram of its
/// width takes OPTQ (or --method) from it; the others (experts included: the file holds no expert's Gram a
/// 2-d step could use) round plainly under --rtn-missing, or are refused, all named at once.
RecipePlan recipe_plan_from_grams(const pptq::gguf::File& f, const GramSource& grams, const Options& o) {
  // No .npy names: every step the recipe quantizes starts as plain rounding (no header is read), and the
  // ones with a Gram are turned into OPTQ steps below.
  const HeaderReader no_files = [](const pptq_tools::NpySource& src) { return pptq_tools::read_float_header(src); };
  RecipePlan plan = make_recipe_plan(f, "", {}, recipe_targets(f, *o.recipe), true, true, no_files);
  std::string missing;
  std::size_t n_missing = 0;
  for (Step& s : plan.steps) {
    if (s.action != Action::Rtn) continue;
    const pptq::gguf::TensorInfo& t = f.tensors[s.tensor];
    if (s.experts.empty() && grams.cols_of(t.name) == static_cast<std::int64_t>(t.ne[0])) {
      s.action = Action::Optq;
      Job job;
      job.tensor = s.tensor;
      job.path = grams.path();
      s.job = job;
    } else {
      missing += (n_missing++ ? ", " : "") + pptq::io::detail::quoted(t.name);
    }
  }
  if (n_missing > 0 && !o.rtn_missing)
    throw DataError(std::to_string(n_missing) + " tensor(s) of the recipe have no Gram in " + grams.path() + ": " +
                    missing + " (--rtn-missing rounds them plainly)");
  return plan;
}

RecipePlan plan_of(const pptq::gguf::File& f, const Options& o) {
  const HeaderReader header = [](const pptq_tools::NpySource& src) { return pptq_tools::read_float_header(src); };
  if (!o.recipe)
    return single_format_plan(f, make_plan(f, o.hessians, npy_files(o.hessians), o.format, o.allow_unused, header),
                              o.format);
  return make_recipe_plan(f, o.hessians, npy_files(o.hessians), recipe_targets(f, *o.recipe), o.rtn_missing,
                          o.allow_unused, header);
}

/// --heldout-grams: the held-out Grams of --damp auto; every tensor the plan quantizes from a Hessian must
/// have one of its width (DataError naming the ones without, all at once).
std::unique_ptr<const GramSource> open_heldout(const pptq::gguf::File& f, const RecipePlan& plan, const Options& o) {
  if (o.heldout_grams.empty()) {
    // --damp auto without held-out Grams: held-out samples, so every Hessian must come as samples.
    if (!o.damp_auto) return nullptr;
    std::string given;
    std::size_t n = 0;
    for (const Step& s : plan.steps) {
      const bool gram = (s.job && (!o.grams.empty() || !s.job->from_inputs));
      bool expert_gram = false;
      for (const auto& e : s.experts) expert_gram |= e && !e->from_inputs;
      if (s.action == Action::Optq && (gram || expert_gram))
        given += (n++ ? ", " : "") + pptq::io::detail::quoted(f.tensors[s.tensor].name);
    }
    if (n > 0)
      throw UsageError("--damp auto judges each damp on held-out inputs, but " + std::to_string(n) +
                       " tensor(s) come with a Hessian and no samples: " + given +
                       " (give NAME.X.npy, whose every 5th sample is held out, or --heldout-grams)");
    return nullptr;
  }
  auto h = open_gram_file(o.heldout_grams, "--heldout-grams", o);
  std::string missing;
  std::size_t n = 0;
  for (const Step& s : plan.steps) {
    const auto& t = f.tensors[s.tensor];
    if (s.action == Action::Optq && s.job && h->cols_of(t.name) != static_cast<std::int64_t>(t.ne[0]))
      missing += (n++ ? ", " : "") + pptq::io::detail::quoted(t.name);
  }
  if (n > 0)
    throw DataError(std::to_string(n) + " tensor(s) have no held-out Gram of their width in " + o.heldout_grams + ": " +
                    missing);
  return h;
}

/// The plan of the run: a recipe's or a plain format's, from --hessians or --grams.
RecipePlan make_run_plan(const pptq::gguf::File& f, const GramSource* grams, const Options& o) {
  if (!grams) return plan_of(f, o);
  if (o.recipe) return recipe_plan_from_grams(f, *grams, o);
  return single_format_plan(f, grams->plan(f, o.format, o.allow_unused, o.only ? &*o.only : nullptr), o.format);
}

/// The closing line: what was written, how, in how long.
std::string closing_line(const pptq::gguf::File& f, const RecipePlan& plan, std::int64_t clipped, const Options& o,
                         double seconds, int ranks) {
  std::size_t quantized = 0, from_q8 = 0;
  for (const Step& s : plan.steps)
    if (s.action != Action::Copy) {
      ++quantized;
      from_q8 += f.tensors[s.tensor].type == pptq::ggml::Type::Q8_0;
    }
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(1);
  if (o.recipe)
    os << "wrote " << o.output << " (" << recipe_name(*o.recipe) << "): " << steps_summary(f, plan) << " in " << seconds << " s";
  else
    os << "wrote " << o.output << ": " << quantized << " of " << f.tensors.size() << " tensors requantized to "
       << pptq::ggml::type_name(o.format) << " in " << seconds << " s";
  // OPTQ's error feedback pushes weights past the format's range routinely: a count, not a warning.
  if (clipped > 0) os << "; " << clipped << " weights clamped to the format's range";
  if (from_q8 > 0 && !o.recipe) os << "; " << from_q8 << " source tensor(s) were already quantized (q8_0)";
  if (!o.report.empty()) os << "; report " << o.report;
  if (ranks > 1) os << "; " << ranks << " MPI processes";
  return os.str();
}

/// The output (and the report) through temporaries committed together (pptq::io::OutputGroup: SIGINT,
/// SIGTERM and SIGHUP remove them): the model streamed tensor by tensor, each transformed by its step.
std::int64_t write_outputs(pptq::gguf::Reader& model, const RecipePlan& plan, const Sources& src, const Options& o,
                           Clock::time_point t_start) {
  std::vector<TensorRecord> records;
  pptq::gguf::File out = output_index(model.index(), plan);
  if (o.recipe) set_recipe_metadata(out, *o.recipe);
  try {
    pptq::io::OutputGroup group;
    {
      pptq::gguf::StreamWriter w(out, group.add(o.output));
      stream_steps(model, plan, src, o, w, records);
      w.finish();
    }
    if (!o.report.empty()) {
      const RunSummary run{o.model, o.output, o.recipe ? recipe_name(*o.recipe) : pptq::ggml::type_name(o.format),
                           std::chrono::duration<double>(Clock::now() - t_start).count()};
      const std::string text = model_report(run, o, records);
      group.add(o.report).write(text.data(), text.size());
    }
    pptq_tools::test_signal_point("after-first-temp");
    group.commit();
  } catch (const pptq::IoError& e) {
    throw pptq::IoError(std::string("cannot write the output: ") + e.what());
  }
  std::int64_t clipped = 0;
  for (const TensorRecord& r : records) clipped += r.clipped;
  return clipped;
}

/// Reads, requantizes and writes. Returns the exit code; throws pptq's errors. Under mpirun (gguf_mpi.hpp)
/// every rank plans the same run, and a rank that fails makes every rank fail with its error.
int run(Options o) {
  const auto t_start = Clock::now();
  o.threads = pptq_tools::cap_threads(kProg, o.threads);  // before anything starts a parallel region
  if (o.threads > 0) Eigen::setNbThreads(o.threads);
#ifdef PPTQ_WITH_MPI
  MpiSession mpi;
  const int rank = mpi.rank(), ranks = mpi.size();
#else
  const int rank = 0, ranks = 1;
  auto collectively = [](const std::function<void()>& f) { f(); };
#endif
  std::optional<pptq::gguf::Reader> model;
  std::unique_ptr<const GramSource> grams, heldout;
  RecipePlan plan;
  collectively([&] {
    open_model(o, model);
    if (!o.grams.empty()) grams = open_grams(o);
    plan = make_run_plan(model->index(), grams.get(), o);
    if (o.dry_run) return;
    heldout = open_heldout(model->index(), plan, o);
    check_plan_memory(model->index(), plan, grams.get(), heldout.get(), o);
  });
  const pptq::gguf::File& f = model->index();
  if (o.dry_run) {
    if (rank == 0) std::fputs(plan_table(f, plan).c_str(), stdout);
    return pptq_tools::kExitOk;
  }
  if (rank == 0)
    for (const std::string& u : plan.unused)
      say(o, "ignoring " + u + (o.recipe ? ": the recipe quantizes no tensor with it" : ": it matches no tensor of the model"));
  const Sources src{grams.get(), heldout.get()};
#ifdef PPTQ_WITH_MPI
  const std::int64_t clipped = ranks > 1 ? write_outputs_mpi(*model, plan, src, o, t_start) : write_outputs(*model, plan, src, o, t_start);
#else
  const std::int64_t clipped = write_outputs(*model, plan, src, o, t_start);
#endif
  if (rank == 0)
    say(o, closing_line(f, plan, clipped, o, std::chrono::duration<double>(Clock::now() - t_start).count(), ranks));
  return pptq_tools::kExitOk;
}

// ------------------------------------------------------------------------------------------------
// Command line
// ------------------------------------------------------------------------------------------------

/// The options as given: numbers as text, parsed strictly by finish_options (cli_common.hpp).
struct RawOptions {
  Options opt;
  std::string damp, threads, max_memory, method = "optq", seed, only;
  CLI::Option *o_damp = nullptr, *o_threads = nullptr, *o_max_memory = nullptr, *o_hessians = nullptr, *o_grams = nullptr,
              *o_seed = nullptr, *o_only = nullptr, *o_heldout = nullptr, *o_report = nullptr;
  bool no_refit = false;
};

void add_requantize_options(CLI::App& rq, RawOptions& raw) {
  Options& o = raw.opt;
  rq.option_defaults()->always_capture_default(false);
  rq.add_option("--model", o.model, "the input model")->required()->type_name("IN.gguf");
  raw.o_hessians = rq.add_option("--hessians", o.hessians, "directory of <tensor name>.H.npy / <tensor name>.X.npy "
                                                           "(float16, float32 or float64)")
                       ->type_name("DIR");
  raw.o_grams = rq.add_option("--grams", o.grams, "a Gram file from 'pptq-gguf calibrate' (instead of --hessians)")
                    ->type_name("GRAMS.gguf");
  raw.o_grams->excludes(raw.o_hessians);
  rq.add_option("--method", raw.method,
                "optq (default) | optq-stochastic | qronos (needs --grams from calibrate --quantized-model)")
      ->type_name("M");
  raw.o_only = rq.add_option("--only", raw.only,
                              "with --grams: requantize only the weights whose names match this regular expression "
                              "(ECMAScript, searched); the others are left as they are (Qronos's stages: one layer "
                              "at a time)")
                   ->type_name("REGEX");
  raw.o_seed = rq.add_option("--seed", raw.seed, "seed of optq-stochastic's rounding (default 0)")->type_name("S");
  rq.add_option("--format", o.format_name,
                "q4_0 | q4_k | q3_k | q2_k | q8_0 | q5_0 | q5_k | q6_k | iq4_nl | iq4_xs (the tensors with a Hessian), or "
                "a recipe of llama.cpp's types per tensor: q4_k_m | q5_k_m | q3_k_m | q2_k_m (llama-quantize's Q2_K)")
      ->required()
      ->type_name("F");
  rq.add_option("--output", o.output, "the output model (written atomically; required unless --dry-run)")
      ->type_name("OUT.gguf");
  rq.add_flag("--dry-run", o.dry_run, "print the plan (tensor, ne, type, bytes, action, Hessian) on stdout; write nothing");
  rq.add_flag("--rtn-missing", o.rtn_missing,
              "with a recipe: quantize the tensors without a Hessian by plain rounding (listed in the summary) "
              "instead of refusing them");
  raw.o_damp = rq.add_option("--damp", raw.damp,
                             "lambda = C * mean(diag H) (default 0.1, the library's ggml default; qronos: "
                             "lambda = 1e-6 * lambda_max(H~) unless given), or 'auto': per tensor, the damp of "
                             "0.001 ... 1 with the smallest error on held-out inputs (every 5th sample of NAME.X.npy, "
                             "or --heldout-grams); 7 quantizations more per tensor")
                   ->type_name("C|auto");
  raw.o_heldout = rq.add_option("--heldout-grams", o.heldout_grams,
                                "with --damp auto: a Gram file of other text ('pptq-gguf calibrate' on held-out "
                                "text) that judges the damp values")
                      ->type_name("GRAMS.gguf");
  raw.o_report = rq.add_option("--report", o.report,
                               "write the model's JSON report: per tensor the types, bytes, damp and lambda, the "
                               "error on the calibration data, plain rounding's error, the certificate; totals")
                     ->type_name("REPORT.json");
  rq.add_flag("--no-refit", raw.no_refit, "do not refit the block scales after the sweep");
  raw.o_threads = rq.add_option("--threads", raw.threads,
                                "threads (0, the default: all); more than the processors is capped to them (with a "
                                "note); results do not depend on it")
                      ->type_name("T");
  raw.o_max_memory = rq.add_option("--max-memory", raw.max_memory,
                                   "refuse to start when the estimated memory (the model, and H, its factor and the "
                                   "working set of the largest tensor) exceeds BYTES (suffix K, M, G or T); "
                                   "MemAvailable of /proc/meminfo is always a limit")
                         ->type_name("BYTES");
  rq.add_flag("--quiet", o.quiet, "no progress on stderr (errors are still reported)");
  rq.add_flag("--allow-unused", o.allow_unused, "ignore .npy files in DIR that name no tensor of the model");
}

void build_app(CLI::App& app, RawOptions& raw) {
  app.name(kProg);
  app.description("Requantize the linear layers of a GGUF model with OPTQ (or Qronos) into llama.cpp's block formats.");
  app.set_version_flag("--version", std::string("pptq-gguf 0.1.0"));
  app.require_subcommand(1);
  CLI::App* rq = app.add_subcommand(
      "requantize",
      "Requantize every 2-d f32/f16 tensor NAME for which DIR holds NAME.H.npy (a cols x cols Hessian, any positive "
      "multiple of X^T X) or NAME.X.npy (samples x cols calibration inputs; H = X^T X), or for which the Gram file of "
      "--grams holds a Gram, with --method (OPTQ by default) into the format; "
      "all other tensors and all metadata are copied unchanged. A linear layer W (out x in) is stored with "
      "ne = [in, out]; in must be a multiple of the block size (32 for q4_0, q5_0, q8_0, iq4_nl; 256 for the k-quants and iq4_xs). "
      "Sources: f32, f16, bf16, q8_0. A recipe (q4_k_m, q5_k_m, q3_k_m, q2_k_m: llama-quantize's Q4_K_M, Q5_K_M, "
      "Q3_K_M, Q2_K) gives every tensor of a llama model llama-quantize's type instead, and needs a Hessian for "
      "each tensor it quantizes (or --rtn-missing).");
  add_requantize_options(*rq, raw);
  app.footer(
      "Exit codes: 0 success; 1 the output could not be written; 2 bad usage; 3 bad data (unreadable or malformed "
      "files, an input that is not a regular file, shape mismatch, NaN/Inf, a tensor that cannot be requantized, "
      "or an estimated memory beyond MemAvailable or --max-memory); 4 numerical failure (including X^T X "
      "overflowing double). On failure no "
      "output file is created or replaced. The output is written to a temporary '.NAME.pptq-tmp-PID-RANDOM' beside "
      "it (beside the target of a symbolic link, which is kept) and renamed into place when complete; SIGINT, "
      "SIGTERM and SIGHUP remove the temporary. After SIGKILL such a '.pptq-tmp-' file may remain: it is safe to "
      "delete.");
}

/// --hessians or --grams, --method and --seed; throws UsageError.
void finish_source_options(const RawOptions& raw, Options& o) {
  if (!raw.o_hessians->count() && !raw.o_grams->count())
    throw UsageError("give the Hessians: --hessians DIR or --grams GRAMS.gguf");
  o.method = parse_method(raw.method);
  if (o.method == Method::Qronos && o.grams.empty())
    throw UsageError("--method qronos needs --grams (a Gram file from calibrate --quantized-model), not --hessians");
  if (raw.o_only->count()) {
    if (o.grams.empty()) throw UsageError("--only applies to --grams");
    try {
      o.only.emplace(raw.only, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw UsageError("--only '" + raw.only + "' is not a regular expression: " + e.what());
    }
  }
  if (raw.o_seed->count()) {
    if (o.method != Method::OptqStochastic)
      throw UsageError(std::string("--seed applies to optq-stochastic only, not to ") + method_name(o.method));
    o.seed = pptq_tools::parse_u64("--seed", raw.seed);
  }
}

/// Cross-option checks that CLI11 cannot express; throws UsageError.
Options finish_options(const RawOptions& raw) {
  Options o = raw.opt;
  o.recipe = parse_recipe(o.format_name);
  try {
    if (!o.recipe) o.format = pptq::ggml::parse_type(o.format_name);
  } catch (const std::invalid_argument&) {
    throw UsageError("--format must be one of q4_0, q4_k, q3_k, q2_k, q8_0, q5_0, q5_k, q6_k, iq4_nl, iq4_xs, got '" + o.format_name +
                     "' (or a recipe: q4_k_m, q5_k_m, q3_k_m, q2_k_m)");
  }
  if (!o.recipe && (o.format == pptq::ggml::Type::F32 || o.format == pptq::ggml::Type::F16 ||
                    o.format == pptq::ggml::Type::BF16))
    throw UsageError("--format must be one of q4_0, q4_k, q3_k, q2_k, q8_0, q5_0, q5_k, q6_k, iq4_nl, iq4_xs (a block format), got '" + o.format_name + "'");
  if (raw.o_damp->count() && raw.damp == "auto") {
    o.damp_auto = true;
  } else if (raw.o_damp->count()) {
    o.damp = pptq_tools::parse_double("--damp", raw.damp);
    if (!(o.damp >= 0)) throw UsageError("--damp must be >= 0 and finite, or auto, got " + raw.damp);
    o.damp_given = true;
  }
  finish_source_options(raw, o);
  if (o.damp_auto && o.method == Method::Qronos)
    throw UsageError("--damp auto applies to optq and optq-stochastic: Qronos keeps its own damping");
  if (raw.o_heldout->count() && !o.damp_auto) throw UsageError("--heldout-grams applies to --damp auto only");
  if (o.dry_run && !o.recipe && !o.grams.empty())
    throw UsageError("--dry-run with --grams needs a recipe (--format q4_k_m, ...); a plain --format's plan is the file's weights");
  if (raw.o_threads->count())
    o.threads = static_cast<int>(pptq_tools::parse_int("--threads", raw.threads, 0, std::numeric_limits<int>::max()));
  if (raw.o_max_memory->count()) o.max_memory = pptq_tools::parse_bytes("--max-memory", raw.max_memory);
  o.refit = !raw.no_refit;
  if (o.rtn_missing && !o.recipe)
    throw UsageError("--rtn-missing needs a recipe (--format q4_k_m, q5_k_m, q3_k_m or q2_k_m): a plain --format "
                     "quantizes only the tensors with a Hessian");
  if (o.dry_run) return o;  // writes nothing
  if (o.output.empty()) throw UsageError("--output is required (unless --dry-run)");
  if (o.report.empty())
    pptq_tools::check_outputs({{"--output", o.output}});
  else
    pptq_tools::check_outputs({{"--output", o.output}, {"--report", o.report}});
  return o;
}

}  // namespace
}  // namespace pptq_gguf

int main(int argc, char** argv) {
#ifdef PPTQ_WITH_LLAMA
  // calibrate and eval run llama.cpp (tools/llama/commands.hpp); each takes its own argument vector,
  // named "pptq-gguf COMMAND" in messages.
  if (argc >= 2 && (std::string(argv[1]) == "calibrate" || std::string(argv[1]) == "eval")) {
    const std::string cmd = argv[1], name = "pptq-gguf " + cmd;
    argv[1] = const_cast<char*>(name.c_str());
    return cmd == "calibrate" ? pptq_llama::calibrate_main(argc - 1, argv + 1) : pptq_llama::eval_main(argc - 1, argv + 1);
  }
#endif
  pptq::io::remove_temporaries_on_signals();  // SIGINT/SIGTERM/SIGHUP leave no temporary behind
  CLI::App app;
  pptq_gguf::RawOptions raw;
  pptq_gguf::build_app(app, raw);
  return pptq_tools::run_tool(pptq_gguf::kProg, app, argc, argv,
                              [&] { return pptq_gguf::run(pptq_gguf::finish_options(raw)); });
}
