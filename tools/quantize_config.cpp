// pptq-quantize's command line (quantize_config.hpp): the options and their cross-checks.
#include "quantize_config.hpp"

#include "cli_common.hpp"

#include <pptq/ggml/grid.hpp>
#include <pptq/optq.hpp>

#include <cctype>
#include <cmath>
#include <limits>

namespace pptq_quantize {

using pptq::UsageError;

const std::vector<std::pair<std::string, MethodKind>>& method_names() {
  static const std::vector<std::pair<std::string, MethodKind>> names = {
      {"rtn", MethodKind::Rtn},       {"optq", MethodKind::Optq},
      {"optq-stochastic", MethodKind::OptqStochastic}, {"qronos", MethodKind::Qronos},
      {"qronos-stochastic", MethodKind::QronosStochastic}, {"gpfq", MethodKind::Gpfq}};
  return names;
}

namespace {

// ------------------------------------------------------------------------------------------------
// The options
// ------------------------------------------------------------------------------------------------

void add_input_options(CLI::App& app, Config& c) {
  app.add_option("--weights", c.weights, "the layer's weights, rows x cols")->required()->type_name("W.npy");
  auto* o_in = app.add_option("--inputs", c.inputs, "calibration inputs of the layer, samples x cols")
                   ->type_name("X.npy");
  auto* o_h = app.add_option("--hessian", c.hessian,
                             "Gram/Hessian cols x cols (any positive multiple of X^T X; lambda on its scale). "
                             "rtn/optq/optq-stochastic only")
                  ->type_name("H.npy");
  o_in->excludes(o_h);
  app.add_option("--quantized-inputs", c.quantized_inputs,
                 "the quantized model's inputs of the same samples, samples x cols (required by qronos, "
                 "qronos-stochastic and gpfq, which minimize ||X W^T - XQ Q^T||)")
      ->type_name("XQ.npy");
}

void add_grid_options(CLI::App& app, RawOptions& raw) {
  Config& c = raw.cfg;
  std::vector<std::string> names;
  for (const auto& n : method_names()) names.push_back(n.first);
  app.add_option("--method", c.method_name, "rtn | optq | optq-stochastic | qronos | qronos-stochastic | gpfq")
      ->required()
      ->check(CLI::IsMember(names))
      ->type_name("M");
  raw.o_bits = app.add_option("--bits", raw.bits, "bits per weight, 2..8 (required unless --format is given)")
                   ->type_name("B");
  app.add_flag("--symmetric", c.symmetric, "symmetric grid (default: asymmetric, as the GPTQ reference)");
  raw.o_group = app.add_option("--group-size", raw.group_size, "columns per grid group; -1 (default): one grid per row")
                    ->type_name("G");
  app.add_flag("--static-groups", c.static_groups,
               "fit the groups on the original W before the sweep (needs --group-size)");
  app.add_flag("--mse", c.mse, "clip search for the grid (the reference's Quantizer(mse=True))");
}

void add_sweep_options(CLI::App& app, RawOptions& raw) {
  raw.o_act_on = app.add_flag("--act-order", raw.act_order_on,
                              "sweep columns by decreasing diag(X^T X) (THE DEFAULT, as in the library: it lowers "
                              "the bound C2); the flag only makes it explicit");
  raw.o_act_off = app.add_flag("--no-act-order", raw.act_order_off,
                               "sweep columns in their natural order (the GPTQ reference's default)");
  raw.o_act_on->excludes(raw.o_act_off);
  raw.o_damp = app.add_option("--damp", raw.damp,
                              "lambda = C * mean(diag(X^T X)) (for qronos: of XQ^T XQ). Default: optq 0.01; qronos "
                              "uses lambda = 1e-6 * lambda_max(XQ^T XQ). 'auto' (optq, optq-stochastic; needs "
                              "--inputs): the damp of 0.001 ... 1 with the smallest error on every 5th sample, "
                              "quantized on the others; then the layer is quantized on all samples with it")
                   ->type_name("C|auto");
  raw.o_lambda = app.add_option("--lambda", raw.lambda, "absolute lambda on the scale of X^T X (qronos: XQ^T XQ)")
                     ->type_name("L");
  raw.o_damp->excludes(raw.o_lambda);
  raw.o_block = app.add_option("--block-size", raw.block_size,
                               "lazy-batch block size (default " + std::to_string(pptq::OptqOptions{}.block_size) +
                                   "; a performance knob: any value gives the same codes)")
                    ->type_name("B");
  raw.o_seed = app.add_option("--seed", raw.seed,
                              "seed of stochastic rounding (optq-stochastic, qronos-stochastic; default 0)")
                   ->type_name("S");
  raw.o_eta = app.add_option("--eta", raw.eta,
                             "failure probability of the report's probabilistic bounds, in (0, 1); default 0.05")
                  ->type_name("E");
  raw.o_threads = app.add_option("--threads", raw.threads,
                                 "threads (0, the default: all); more than the processors is capped to them "
                                 "(with a note); results do not depend on it")
                      ->type_name("T");
  raw.o_max_memory = app.add_option("--max-memory", raw.max_memory,
                                    "refuse to start when the estimated memory (H, its factor and the working set) "
                                    "exceeds BYTES (suffix K, M, G or T); MemAvailable of /proc/meminfo is always a limit")
                         ->type_name("BYTES");
  app.add_flag("--progress", raw.cfg.progress,
               "progress on stderr (automatic for large layers when stderr is a terminal)");
  raw.o_qronos_form = app.add_option("--qronos-form", raw.cfg.qronos_form,
                                     "qronos: ls (least squares then OPTQ, docs/theory.md §5.4; the default) or "
                                     "sequential (the first step corrects the past, docs/theory.md §5.2)")
                          ->check(CLI::IsMember({"ls", "sequential"}))
                          ->type_name("F");
}

void add_output_options(CLI::App& app, RawOptions& raw) {
  Config& c = raw.cfg;
  app.add_option("--output", c.output, "the quantized weights, W's shape; float64 if W is, float32 otherwise "
                                       "(optional with --gguf)")
      ->type_name("Q.npy");
  app.add_option("--codes", c.codes, "the integer codes, int32 rows x cols")->type_name("C.npy");
  app.add_option("--report", c.report, "the JSON report (errors, lambda, order, bounds, timings)")
      ->type_name("R.json");
  app.add_flag("--full-report", c.full_report,
               "the report measures everything on X: the l-infinity errors, Cinf and the l-infinity bound, and the "
               "relative and RTN errors of every row (products with X as large as the layer: several times the "
               "quantization's cost). Default: the l2 errors from the sweep's energy identity, the relative and RTN "
               "errors on 256 evenly spaced rows, no l-infinity figures");
  app.add_option("--format", c.format_name,
                 "quantize into llama.cpp's block format q4_0 | q4_k | q3_k | q2_k | q8_0 | q5_0 | q5_k | q6_k | iq4_nl | iq4_xs: the format fixes bits and groups "
                 "(needs cols to be a multiple of 32 / 256); optq's damp then defaults to 0.1")
      ->check(CLI::IsMember({"q4_0", "q4_k", "q3_k", "q2_k", "q8_0", "q5_0", "q5_k", "q6_k", "iq4_nl", "iq4_xs"}, CLI::ignore_case))
      ->type_name("F");
  app.add_option("--gguf", c.gguf, "with --format: also write a GGUF v3 file holding the tensor, ne = [cols, rows]")
      ->type_name("OUT.gguf");
  raw.o_tensor = app.add_option("--tensor-name", c.tensor_name, "the GGUF tensor's name (default: weight)")
                     ->type_name("NAME");
}

// ------------------------------------------------------------------------------------------------
// The cross-checks
// ------------------------------------------------------------------------------------------------

/// "--method NAME", as the messages name the method.
std::string method_arg(const Config& c) { return "--method " + c.method_name; }

void check_inputs(const Config& c) {
  const std::string m = method_arg(c);
  if (c.inputs.empty() && c.hessian.empty()) throw UsageError("one of --inputs X.npy or --hessian H.npy is required");
  if (is_mismatched(c.method)) {
    if (!c.hessian.empty())
      throw UsageError(m + " does not accept --hessian: it needs --inputs X.npy and --quantized-inputs XQ.npy");
    if (c.quantized_inputs.empty())
      throw UsageError(m + " needs --quantized-inputs XQ.npy (the quantized model's inputs of the same samples as "
                           "--inputs)");
  } else if (!c.quantized_inputs.empty()) {
    throw UsageError("--quantized-inputs applies to qronos, qronos-stochastic and gpfq only, not to " + m);
  }
}

/// A finite value >= 0 for `option`, if it was given.
std::optional<double> non_negative(const CLI::Option* o, const std::string& text, const char* option) {
  if (!o->count()) return std::nullopt;
  const double v = pptq_tools::parse_double(option, text);
  if (!(v >= 0)) throw UsageError(std::string(option) + " must be >= 0 and finite, got " + text);
  return v;
}

void check_damping(const RawOptions& raw, Config& c) {
  if (raw.o_damp->count() && raw.damp == "auto") {
    // Every candidate is judged on held-out samples: a split of the inputs (pptq_quantize.cpp).
    if (c.method != MethodKind::Optq && c.method != MethodKind::OptqStochastic)
      throw UsageError("--damp auto applies to optq and optq-stochastic, not to " + method_arg(c));
    if (c.inputs.empty())
      throw UsageError("--damp auto needs --inputs: every 5th sample is held out to judge the damp values");
    c.damp_auto = true;
    return;
  }
  c.damp = non_negative(raw.o_damp, raw.damp, "--damp");
  c.lambda = non_negative(raw.o_lambda, raw.lambda, "--lambda");
  if ((c.damp || c.lambda) && !has_damping(c.method))
    throw UsageError(std::string(c.damp ? "--damp" : "--lambda") + " does not apply to " + method_arg(c) +
                     " (no damping)");
}

void check_sweep(const RawOptions& raw, Config& c) {
  const std::string m = method_arg(c);
  if (raw.o_block->count()) {
    c.block_size = pptq_tools::parse_int("--block-size", raw.block_size, 1, kMaxBlockOrGroup);
    if (c.method == MethodKind::Rtn) throw UsageError("--block-size does not apply to " + m);
  }
  if (raw.o_seed->count()) {
    c.seed = pptq_tools::parse_u64("--seed", raw.seed);
    if (!is_stochastic(c.method))
      throw UsageError("--seed applies to optq-stochastic and qronos-stochastic only, not to " + m);
  }
  if (raw.o_eta->count()) {
    c.eta = pptq_tools::parse_double("--eta", raw.eta);
    if (!(c.eta > 0 && c.eta < 1)) throw UsageError("--eta must be in (0, 1), got " + raw.eta);
  }
  if (raw.o_threads->count())
    c.threads = static_cast<int>(pptq_tools::parse_int("--threads", raw.threads, 0, std::numeric_limits<int>::max()));
  if (raw.o_max_memory->count()) c.max_memory = pptq_tools::parse_bytes("--max-memory", raw.max_memory);
}

void check_order(const RawOptions& raw, Config& c) {
  const std::string m = method_arg(c);
  if ((raw.act_order_on || raw.act_order_off) && c.method == MethodKind::Rtn)
    throw UsageError(std::string(raw.act_order_on ? "--act-order" : "--no-act-order") + " does not apply to " + m);
  c.act_order = !raw.act_order_off;
  if (raw.o_qronos_form->count() && !is_qronos(c.method))
    throw UsageError("--qronos-form applies to qronos and qronos-stochastic only, not to " + m);
}

void check_grid(const RawOptions& raw, Config& c) {
  if (raw.o_bits->count()) c.bits = static_cast<int>(pptq_tools::parse_int("--bits", raw.bits, 2, 8));
  if (raw.o_group->count()) c.group_size = pptq_tools::parse_int("--group-size", raw.group_size, -1, kMaxBlockOrGroup);
  if (c.group_size == 0)
    throw UsageError("--group-size must be -1 (one grid per row) or >= 1, got " + std::to_string(c.group_size));
  if (c.static_groups && c.group_size < 0) throw UsageError("--static-groups needs --group-size G");
}

pptq::ggml::Type format_type(std::string name) {
  return pptq::ggml::parse_type(name);  // CLI11 admitted only block formats
}

/// With --format, the format fixes the grid; without, --bits and --output are required.
void check_format(const RawOptions& raw, Config& c) {
  if (c.format_name.empty()) {
    if (!raw.o_bits->count()) throw UsageError("--bits B is required (or --format F)");
    if (c.output.empty()) throw UsageError("--output Q.npy is required");
    if (!c.gguf.empty()) throw UsageError("--gguf needs --format q4_0|q4_k|q3_k|q2_k|q8_0|q5_0|q5_k|q6_k|iq4_nl|iq4_xs");
    if (raw.o_tensor->count()) throw UsageError("--tensor-name needs --format and --gguf");
    return;
  }
  c.format = format_type(c.format_name);
  const int fbits = pptq::ggml::format_of(*c.format).bits;
  if (raw.o_bits->count() && c.bits != fbits)
    throw UsageError("--bits " + std::to_string(c.bits) + " contradicts --format " + c.format_name + " (" +
                     std::to_string(fbits) + "-bit codes); --bits is not needed with --format");
  c.bits = fbits;
  if (c.group_size != -1 || c.static_groups || c.symmetric || c.mse)
    throw UsageError("--group-size, --static-groups, --symmetric and --mse do not apply with --format: the format "
                     "fixes the grid");
  if (c.method == MethodKind::Gpfq) throw UsageError("--format does not support --method gpfq");
  if (c.output.empty() && c.gguf.empty()) throw UsageError("--format needs --output Q.npy or --gguf OUT.gguf (or both)");
  if (c.tensor_name.empty()) throw UsageError("--tensor-name must not be empty");
}

/// Outputs: writable, and no two of them the same file (by identity: cli_common.hpp).
void check_outputs(const Config& c) {
  std::vector<std::pair<std::string, std::string>> outs;
  if (!c.output.empty()) outs.emplace_back("--output", c.output);
  if (!c.gguf.empty()) outs.emplace_back("--gguf", c.gguf);
  if (!c.codes.empty()) outs.emplace_back("--codes", c.codes);
  if (!c.report.empty()) outs.emplace_back("--report", c.report);
  pptq_tools::check_outputs(outs);
}

}  // namespace

void build_app(CLI::App& app, RawOptions& raw) {
  app.name(kProg);
  app.description(
      "Quantize one layer's weights W (rows x cols = out x in features, .npy float16/float32/float64, C or Fortran "
      "order) with round-to-nearest, OPTQ (= GPTQ), stochastic OPTQ, Qronos or GPFQ, using calibration inputs "
      "X (samples x cols) or a Gram/Hessian H (cols x cols). Lambda is on the scale of H = X^T X with X as "
      "given, unnormalized (or of the H given).");
  app.set_version_flag("--version", std::string("pptq-quantize 0.1.0"));
  app.option_defaults()->always_capture_default(false);
  add_input_options(app, raw.cfg);
  add_grid_options(app, raw);
  add_sweep_options(app, raw);
  add_output_options(app, raw);
  app.footer(
      "Exit codes: 0 success; 1 an output could not be written; 2 bad usage; 3 bad data (unreadable or malformed "
      ".npy, an input that is not a regular file, wrong dtype, shape mismatch, NaN/Inf, or a layer whose estimated "
      "memory exceeds MemAvailable or --max-memory); 4 numerical failure (H + lambda*I not positive definite even "
      "after escalating the damping, X^T X overflowing double). On failure no output file is created or "
      "replaced.\n\n"
      "Outputs: each is written to a temporary '.NAME.pptq-tmp-PID-RANDOM' beside it (beside the target of a "
      "symbolic link, which is kept), and all of them are renamed into place together once every temporary is "
      "written; SIGINT, SIGTERM and SIGHUP remove the temporaries, or, during the renames, wait for them, so "
      "the outputs are all old or all new. SIGKILL or a power loss between two renames can leave the first "
      "outputs new and the rest old, with their temporaries beside them: such a '.pptq-tmp-' file is safe to "
      "delete. Two options naming the same file (also through '.', '..' or links) are refused.");
}

Config finish_config(const RawOptions& raw) {
  Config c = raw.cfg;
  for (const auto& n : method_names())
    if (n.first == c.method_name) c.method = n.second;
  check_inputs(c);
  check_damping(raw, c);
  check_sweep(raw, c);
  check_grid(raw, c);
  check_order(raw, c);
  check_format(raw, c);
  check_outputs(c);
  return c;
}

}  // namespace pptq_quantize
