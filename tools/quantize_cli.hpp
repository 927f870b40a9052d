// The logic of the `pptq-quantize` command-line tool (main() is in pptq_quantize.cpp).
//
//   pptq-quantize --weights W.npy (--inputs X.npy | --hessian H.npy) [--quantized-inputs XQ.npy]
//       --method rtn|optq|optq-stochastic|qronos|qronos-stochastic|gpfq
//       --bits B [--symmetric] [--group-size G] [--static-groups] [--act-order | --no-act-order] [--mse]
//       [--damp C | --lambda L] [--block-size B] [--seed S] [--eta E] [--threads T] [--progress]
//       --output Q.npy [--codes C.npy] [--report R.json]
//   and, for llama.cpp's block formats (issue 9):
//   pptq-quantize ... --format q4_0|q4_k|q3_k|q2_k [--gguf OUT.gguf] [--tensor-name NAME]
//
// Exit codes: 0 success; 1 an output could not be written (or an unexpected internal error);
// 2 bad usage; 3 bad data; 4 numerical failure (H + λI not positive definite up to the damping cap).
// Nothing is written unless everything succeeded: every output goes through a temporary file that is
// renamed over the destination only after all results (Q, codes, report) are computed.
#pragma once

#include <pptq/bounds.hpp>
#include <pptq/ggml/grid.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/atomic_file.hpp>
#include <pptq/io/npy.hpp>
#include <pptq/pptq.hpp>

#include <CLI/CLI.hpp>

#include "cli_common.hpp"
#include <nlohmann/json.hpp>

#include <Eigen/Core>

#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

namespace pptq_cli {

constexpr const char* kProg = "pptq-quantize";

using pptq_tools::DataError;
using pptq_tools::ExitCode;
using pptq_tools::kExitData;
using pptq_tools::kExitFailure;
using pptq_tools::kExitNumerical;
using pptq_tools::kExitOk;
using pptq_tools::kExitUsage;
using pptq_tools::NumericalError;
using pptq_tools::OutputError;
using pptq_tools::UsageError;

enum class MethodKind { Rtn, Optq, OptqStochastic, Qronos, QronosStochastic, Gpfq };

inline const std::vector<std::pair<std::string, MethodKind>>& method_names() {
  static const std::vector<std::pair<std::string, MethodKind>> names = {
      {"rtn", MethodKind::Rtn},       {"optq", MethodKind::Optq},
      {"optq-stochastic", MethodKind::OptqStochastic}, {"qronos", MethodKind::Qronos},
      {"qronos-stochastic", MethodKind::QronosStochastic}, {"gpfq", MethodKind::Gpfq}};
  return names;
}

inline bool is_mismatched(MethodKind m) {
  return m == MethodKind::Qronos || m == MethodKind::QronosStochastic || m == MethodKind::Gpfq;
}
inline bool is_stochastic(MethodKind m) { return m == MethodKind::OptqStochastic || m == MethodKind::QronosStochastic; }
inline bool has_damping(MethodKind m) { return m != MethodKind::Rtn && m != MethodKind::Gpfq; }
inline bool is_qronos(MethodKind m) { return m == MethodKind::Qronos || m == MethodKind::QronosStochastic; }

/// Everything the command line says, validated.
struct Config {
  std::string weights, inputs, hessian, quantized_inputs, output, codes, report;
  std::string method_name;
  MethodKind method = MethodKind::Optq;
  int bits = 4;
  bool symmetric = false;
  long long group_size = -1;
  bool static_groups = false;
  bool mse = false;
  bool act_order = true;  ///< the library's default; --no-act-order turns it off
  std::optional<double> damp, lambda;
  std::optional<long long> block_size;
  std::optional<std::uint64_t> seed;
  double eta = 0.05;
  int threads = 0;
  bool progress = false;
  // llama.cpp block formats: the format fixes the grid (bits, groups); the GGUF holds one tensor.
  std::string format_name, gguf, tensor_name = "weight";
  std::string qronos_form = "ls";  ///< ls (spec §5.4, the library's default) | sequential (§5.2/5.3)
  std::optional<pptq::ggml::Type> format;
};

// ------------------------------------------------------------------------------------------------
// Command line
// ------------------------------------------------------------------------------------------------

/// Raw values bound to the CLI11 options; turned into a Config by finish_config().
struct RawOptions {
  Config cfg;
  double damp = 0, lambda = 0, eta = 0.05;
  long long block_size = 128;
  std::uint64_t seed = 0;
  bool act_order_on = false, act_order_off = false;
  CLI::Option *o_damp = nullptr, *o_lambda = nullptr, *o_block = nullptr, *o_seed = nullptr, *o_eta = nullptr,
              *o_threads = nullptr, *o_act_on = nullptr, *o_act_off = nullptr, *o_bits = nullptr,
              *o_tensor = nullptr, *o_qronos_form = nullptr;
};

inline void build_app(CLI::App& app, RawOptions& raw) {
  Config& c = raw.cfg;
  app.name(kProg);
  app.description(
      "Quantize one layer's weights W (rows x cols = out x in features, .npy float32/float64, C or Fortran "
      "order) with round-to-nearest, OPTQ (= GPTQ), stochastic OPTQ, Qronos or GPFQ, using calibration inputs "
      "X (samples x cols) or a Gram/Hessian H (cols x cols). Lambda is on the scale of H = X^T X with X as "
      "given, unnormalized (or of the H given).");
  app.set_version_flag("--version", std::string("pptq-quantize 0.1.0"));
  app.option_defaults()->always_capture_default(false);

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
  std::vector<std::string> names;
  for (const auto& n : method_names()) names.push_back(n.first);
  app.add_option("--method", c.method_name, "rtn | optq | optq-stochastic | qronos | qronos-stochastic | gpfq")
      ->required()
      ->check(CLI::IsMember(names))
      ->type_name("M");
  raw.o_bits = app.add_option("--bits", c.bits, "bits per weight, 2..8 (required unless --format is given)")
                   ->check(CLI::Range(2, 8))
                   ->type_name("B");
  app.add_flag("--symmetric", c.symmetric, "symmetric grid (default: asymmetric, as the GPTQ reference)");
  app.add_option("--group-size", c.group_size, "columns per grid group; -1 (default): one grid per row")
      ->type_name("G");
  app.add_flag("--static-groups", c.static_groups,
               "fit the groups on the original W before the sweep (needs --group-size)");
  raw.o_act_on = app.add_flag("--act-order", raw.act_order_on,
                              "sweep columns by decreasing diag(X^T X) (THE DEFAULT, as in the library: it lowers "
                              "the bound C2); the flag only makes it explicit");
  raw.o_act_off = app.add_flag("--no-act-order", raw.act_order_off,
                               "sweep columns in their natural order (the GPTQ reference's default)");
  raw.o_act_on->excludes(raw.o_act_off);
  app.add_flag("--mse", c.mse, "clip search for the grid (the reference's Quantizer(mse=True))");
  raw.o_damp = app.add_option("--damp", raw.damp,
                              "lambda = C * mean(diag(X^T X)) (for qronos: of XQ^T XQ). Default: optq 0.01; qronos "
                              "uses lambda = 1e-6 * lambda_max(XQ^T XQ)")
                   ->type_name("C");
  raw.o_lambda = app.add_option("--lambda", raw.lambda, "absolute lambda on the scale of X^T X (qronos: XQ^T XQ)")
                     ->type_name("L");
  raw.o_damp->excludes(raw.o_lambda);
  raw.o_block = app.add_option("--block-size", raw.block_size,
                               "lazy-batch block size (default " + std::to_string(pptq::OptqOptions{}.block_size) + "; a performance knob: any value gives the same codes)")
                    ->type_name("B");
  raw.o_seed = app.add_option("--seed", raw.seed,
                              "seed of stochastic rounding (optq-stochastic, qronos-stochastic; default 0)")
                   ->type_name("S");
  raw.o_eta = app.add_option("--eta", raw.eta,
                             "failure probability of the report's probabilistic bounds, in (0, 1); default 0.05")
                  ->type_name("E");
  raw.o_threads = app.add_option("--threads", c.threads, "threads (0, the default: all); results do not depend on it")
                      ->type_name("T");
  app.add_flag("--progress", c.progress, "progress on stderr (automatic for large layers when stderr is a terminal)");
  app.add_option("--output", c.output, "the quantized weights, W's shape and dtype (optional with --gguf)")
      ->type_name("Q.npy");
  app.add_option("--codes", c.codes, "the integer codes, int32 rows x cols")->type_name("C.npy");
  app.add_option("--report", c.report, "the JSON report (errors, lambda, order, bounds, timings)")
      ->type_name("R.json");
  app.add_option("--format", c.format_name,
                 "quantize into llama.cpp's block format q4_0 | q4_k | q3_k | q2_k: the format fixes bits and groups "
                 "(needs cols to be a multiple of 32 / 256); optq's damp then defaults to 0.1")
      ->check(CLI::IsMember({"q4_0", "q4_k", "q3_k", "q2_k"}, CLI::ignore_case))
      ->type_name("F");
  app.add_option("--gguf", c.gguf, "with --format: also write a GGUF v3 file holding the tensor, ne = [cols, rows]")
      ->type_name("OUT.gguf");
  raw.o_qronos_form = app.add_option("--qronos-form", c.qronos_form,
                                     "qronos: ls (least squares then OPTQ, spec 5.4; the default) or sequential "
                                     "(the first step corrects the past, spec 5.2)")
                          ->check(CLI::IsMember({"ls", "sequential"}))
                          ->type_name("F");
  raw.o_tensor = app.add_option("--tensor-name", c.tensor_name, "the GGUF tensor's name (default: weight)")
                     ->type_name("NAME");
  app.footer(
      "Exit codes: 0 success; 1 an output could not be written; 2 bad usage; 3 bad data (unreadable or malformed "
      ".npy, wrong dtype, shape mismatch, NaN/Inf); 4 numerical failure (H + lambda*I not positive definite even "
      "after escalating the damping). On failure no output file is created or replaced.");
}

inline std::string dir_of(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

/// Cross-option checks that CLI11 cannot express; throws UsageError.
inline Config finish_config(RawOptions& raw) {
  Config c = raw.cfg;
  for (const auto& n : method_names())
    if (n.first == c.method_name) c.method = n.second;
  const std::string m = "--method " + c.method_name;

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

  if (raw.o_damp->count()) {
    if (!(raw.damp >= 0) || !std::isfinite(raw.damp))
      throw UsageError("--damp must be >= 0 and finite, got " + raw.o_damp->as<std::string>());
    c.damp = raw.damp;
  }
  if (raw.o_lambda->count()) {
    if (!(raw.lambda >= 0) || !std::isfinite(raw.lambda))
      throw UsageError("--lambda must be >= 0 and finite, got " + raw.o_lambda->as<std::string>());
    c.lambda = raw.lambda;
  }
  if ((c.damp || c.lambda) && !has_damping(c.method))
    throw UsageError(std::string(c.damp ? "--damp" : "--lambda") + " does not apply to " + m + " (no damping)");

  if (raw.o_block->count()) {
    if (raw.block_size < 1) throw UsageError("--block-size must be >= 1, got " + std::to_string(raw.block_size));
    if (c.method == MethodKind::Rtn) throw UsageError("--block-size does not apply to " + m);
    c.block_size = raw.block_size;
  }
  if (raw.o_seed->count()) {
    if (!is_stochastic(c.method))
      throw UsageError("--seed applies to optq-stochastic and qronos-stochastic only, not to " + m);
    c.seed = raw.seed;
  }
  if (raw.o_eta->count()) {
    if (!(raw.eta > 0 && raw.eta < 1)) throw UsageError("--eta must be in (0, 1), got " + raw.o_eta->as<std::string>());
    c.eta = raw.eta;
  }
  if (c.threads < 0) throw UsageError("--threads must be >= 0 (0 = all), got " + std::to_string(c.threads));
  if (c.group_size == 0 || c.group_size < -1)
    throw UsageError("--group-size must be -1 (one grid per row) or >= 1, got " + std::to_string(c.group_size));
  if (c.static_groups && c.group_size < 0) throw UsageError("--static-groups needs --group-size G");
  if (raw.act_order_on || raw.act_order_off) {
    if (c.method == MethodKind::Rtn)
      throw UsageError(std::string(raw.act_order_on ? "--act-order" : "--no-act-order") + " does not apply to " + m);
  }
  c.act_order = !raw.act_order_off;

  if (raw.o_qronos_form->count() && !is_qronos(c.method))
    throw UsageError("--qronos-form applies to qronos and qronos-stochastic only, not to " + m);

  if (!c.format_name.empty()) {
    std::string f = c.format_name;
    for (char& ch : f) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    c.format = f == "q4_0" ? pptq::ggml::Type::Q4_0
             : f == "q4_k" ? pptq::ggml::Type::Q4_K
             : f == "q3_k" ? pptq::ggml::Type::Q3_K
                           : pptq::ggml::Type::Q2_K;
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
  } else {
    if (!raw.o_bits->count()) throw UsageError("--bits B is required (or --format F)");
    if (c.output.empty()) throw UsageError("--output Q.npy is required");
    if (!c.gguf.empty()) throw UsageError("--gguf needs --format q4_0|q4_k|q3_k|q2_k");
    if (raw.o_tensor->count()) throw UsageError("--tensor-name needs --format and --gguf");
  }

  // Outputs: distinct paths in writable directories (checked now so that no computation is wasted).
  std::vector<std::pair<const char*, std::string>> outs;
  if (!c.output.empty()) outs.emplace_back("--output", c.output);
  if (!c.gguf.empty()) outs.emplace_back("--gguf", c.gguf);
  if (!c.codes.empty()) outs.emplace_back("--codes", c.codes);
  if (!c.report.empty()) outs.emplace_back("--report", c.report);
  for (std::size_t i = 0; i < outs.size(); ++i) {
    const std::string& p = outs[i].second;
    if (p.empty() || p.back() == '/') throw UsageError(std::string(outs[i].first) + " '" + p + "' does not name a file");
    for (std::size_t k = 0; k < i; ++k)
      if (outs[k].second == p)
        throw UsageError(std::string(outs[k].first) + " and " + outs[i].first + " name the same file '" + p + "'");
    const std::string d = dir_of(p);
    if (::access(d.c_str(), W_OK | X_OK) != 0)
      throw UsageError(std::string(outs[i].first) + " '" + p + "': directory '" + d +
                       "' does not exist or is not writable");
  }
  return c;
}

// ------------------------------------------------------------------------------------------------
// Input
// ------------------------------------------------------------------------------------------------

inline std::string shape_str(pptq::Index r, pptq::Index c) { return std::to_string(r) + " x " + std::to_string(c); }

/// Reads a 2-d float32/float64 array; throws NpyError (unreadable/malformed) or DataError.
inline pptq::io::NpyArray read_array(const std::string& path, const char* option) {
  pptq::io::NpyArray a;
  try {
    a = pptq::io::read_npy(path);  // its messages start with the path
  } catch (const pptq::io::NpyError& e) {
    throw DataError(std::string(option) + ": " + e.what());
  }
  if (a.dtype != pptq::io::DType::f32 && a.dtype != pptq::io::DType::f64)
    throw DataError(path + " (" + option + "): dtype " + pptq::io::dtype_descr(a.dtype) +
                    " is not supported: float32 ('<f4') or float64 ('<f8') only");
  if (a.shape.size() != 2)
    throw DataError(path + " (" + option + "): expected a 2-d array, got " + std::to_string(a.shape.size()) +
                    " dimension(s)");
  if (a.shape[0] == 0 || a.shape[1] == 0)
    throw DataError(path + " (" + option + "): the array is empty (" + std::to_string(a.shape[0]) + " x " +
                    std::to_string(a.shape[1]) + ")");
  return a;
}

template <typename S>
pptq::Matrix<S> to_checked(const pptq::io::NpyArray& a, const std::string& path, const char* option) {
  pptq::Matrix<S> m;
  try {
    m = pptq::io::to_matrix<S>(a);
  } catch (const pptq::io::NpyError& e) {
    throw DataError(path + " (" + option + "): " + e.what());
  }
  for (pptq::Index j = 0; j < m.cols(); ++j)
    for (pptq::Index i = 0; i < m.rows(); ++i)
      if (!std::isfinite(static_cast<double>(m(i, j)))) {
        std::ostringstream os;
        os << path << " (" << option << "): non-finite entry " << static_cast<double>(m(i, j)) << " at (" << i
           << ", " << j << ")";
        throw DataError(os.str());
      }
  return m;
}

inline Eigen::MatrixXd load_double(const std::string& path, const char* option) {
  return to_checked<double>(read_array(path, option), path, option);
}

// ------------------------------------------------------------------------------------------------
// Progress
// ------------------------------------------------------------------------------------------------

class Progress {
 public:
  Progress(bool enabled, std::string label) : enabled_(enabled), tty_(::isatty(2) == 1), label_(std::move(label)) {}

  /// Called by the sweep (from the calling thread) with the fraction of the sweep done.
  std::function<void(double)> callback() {
    if (!enabled_) return {};
    return [this](double f) {
      const int pct = static_cast<int>(std::floor(100.0 * std::min(1.0, std::max(0.0, f))));
      const int step = tty_ ? 1 : 10;
      if (pct / step <= last_ / step && last_ >= 0) return;
      last_ = pct;
      if (tty_)
        std::fprintf(stderr, "\r%s: %s: %3d%% of rows", kProg, label_.c_str(), pct);
      else
        std::fprintf(stderr, "%s: %s: %d%% of rows\n", kProg, label_.c_str(), pct);
      std::fflush(stderr);
    };
  }

  void finish() {
    if (enabled_ && tty_ && last_ >= 0) std::fputc('\n', stderr);
    last_ = -1;
  }
  ~Progress() { finish(); }

 private:
  bool enabled_, tty_;
  std::string label_;
  int last_ = -1;
};

// ------------------------------------------------------------------------------------------------
// Report
// ------------------------------------------------------------------------------------------------

using json = nlohmann::ordered_json;  // keys in the order written: related fields stay together

template <typename T>
json opt_json(const std::optional<T>& v) {
  return v ? json(*v) : json(nullptr);
}

/// The report's `bounds` object. With `rep` (the library's layer report, pptq/bounds.hpp): the constants,
/// certificate, a-priori bounds and whether they hold. Without (the report could not be made): only what the
/// result itself gives (C2, C2_max from L_tt, the certificate for OPTQ, the clipping count). Every key is
/// always present; null when it does not apply.
template <typename S>
json bounds_json(const pptq::QuantResult<S>& r, const pptq::LayerReport* rep, double eta) {
  json b;
  for (const char* k : {"C2", "C2_max", "Cw", "Cinf", "Cinf_crude", "l2_bound", "certificate", "linf_bound", "eta",
                        "holds", "clipped", "weight_l2_bound", "drift_bound", "expected_energy_bound",
                        "alphabet_K_min", "alphabet_bits", "certificate_gap"})
    b[k] = nullptr;
  b["notes"] = json::array();
  b["clipped"] = static_cast<std::int64_t>(r.clipped_total());
  const bool stochastic = r.rounding == pptq::Rounding::Stochastic;
  if (stochastic) b["eta"] = eta;

  if (!rep) {
    if (r.Ltt.size() > 0) {
      double s = 0, mx = 0;
      for (pptq::Index t = 0; t < r.Ltt.size(); ++t) {
        const double inv = 1.0 / r.Ltt(t);
        s += inv * inv;
        mx = std::max(mx, std::abs(inv));
      }
      b["C2"] = std::sqrt(s);
      b["C2_max"] = std::sqrt(static_cast<double>(r.Ltt.size())) * mx;
    }
    if (r.method == pptq::Method::OPTQ && r.energy.size() > 0) b["certificate"] = std::sqrt(r.energy.sum());
    return b;
  }

  if (rep->constants) {
    const pptq::BoundConstants& c = *rep->constants;
    b["C2"] = c.C2;
    b["C2_max"] = c.C2_max;
    b["Cw"] = c.Cw;
    b["Cinf"] = opt_json(c.Cinf);
    b["Cinf_crude"] = opt_json(c.Cinf_crude);
  }
  b["certificate"] = opt_json(rep->certificate_fro);
  b["certificate_gap"] = opt_json(rep->certificate_gap);
  const bool rtn = r.method == pptq::Method::RTN;
  b["l2_bound"] = opt_json(rtn ? rep->rtn_l2.bound : rep->l2.bound);
  b["linf_bound"] = opt_json(rtn ? rep->rtn_linf.bound : rep->linf.bound);
  b["weight_l2_bound"] = opt_json(rep->weight_l2_check.bound);
  b["drift_bound"] = opt_json(rep->drift.bound);
  b["expected_energy_bound"] = opt_json(rep->expected_energy_bound);
  if (rep->alphabet) {
    b["alphabet_K_min"] = rep->alphabet->K_min;
    b["alphabet_bits"] = rep->alphabet->bits;
  }
  bool any = false;
  for (const pptq::BoundCheck* c : rep->checks()) any = any || c->holds.has_value();
  if (any) b["holds"] = rep->holds;
  for (const pptq::BoundCheck* c : rep->checks())
    if (!c->why_not.empty() && c->why_not != "does not apply to this method")
      b["notes"].push_back(c->name + ": " + c->why_not);
  for (const auto& n : rep->notes) b["notes"].push_back(n);
  return b;
}

/// The measured errors when the library's report is unavailable: ‖X(W − Q)ᵀ‖ (‖XWᵀ − X̃Qᵀ‖ when mismatched),
/// or from H alone. No RTN comparison.
struct Errors {
  double fro = 0, rel = 0;
  std::optional<double> linf, rtn_fro;
};

template <typename S>
Errors measure_errors(const pptq::Matrix<S>& W, const pptq::Matrix<S>& Q, const Eigen::MatrixXd* X,
                      const Eigen::MatrixXd* Xq, const Eigen::MatrixXd* H) {
  const Eigen::MatrixXd Wd = W.template cast<double>(), Qd = Q.template cast<double>();
  Errors e;
  double ref = 0;
  if (X) {
    const Eigen::MatrixXd Y = (*X) * Wd.transpose();
    const Eigen::MatrixXd E = Xq ? Eigen::MatrixXd(Y - (*Xq) * Qd.transpose()) : Eigen::MatrixXd((*X) * (Wd - Qd).transpose());
    e.fro = E.norm();
    e.linf = E.cwiseAbs().maxCoeff();
    ref = Y.norm();
  } else {
    const Eigen::MatrixXd D = Wd - Qd;
    e.fro = std::sqrt(std::max(0.0, (D * (*H)).cwiseProduct(D).sum()));
    ref = std::sqrt(std::max(0.0, (Wd * (*H)).cwiseProduct(Wd).sum()));
  }
  e.rel = ref > 0 ? e.fro / ref : 0.0;
  return e;
}

// ------------------------------------------------------------------------------------------------
// The run
// ------------------------------------------------------------------------------------------------

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

inline pptq::GridSpec grid_of(const Config& c) {
  pptq::GridSpec g;
  g.bits = c.bits;
  g.symmetric = c.symmetric;
  g.group_size = static_cast<pptq::Index>(c.group_size);
  g.static_groups = c.static_groups;
  g.mse = c.mse;
  return g;
}

/// The sweep options every method shares (OptqOptions, QronosOptions and GpfqOptions name them alike).
template <typename Options>
Options sweep_options_of(const Config& c) {
  Options o;
  o.act_order = c.act_order;
  if (c.block_size) o.block_size = static_cast<pptq::Index>(*c.block_size);
  o.rounding = is_stochastic(c.method) ? pptq::Rounding::Stochastic : pptq::Rounding::Nearest;
  o.seed = c.seed.value_or(0);
  o.threads = c.threads;
  return o;
}

inline pptq::OptqOptions optq_options_of(const Config& c) {
  auto o = sweep_options_of<pptq::OptqOptions>(c);
  if (c.damp) o.damp = *c.damp;
  o.lambda = c.lambda;
  return o;
}

inline pptq::QronosOptions qronos_options_of(const Config& c) {
  auto o = sweep_options_of<pptq::QronosOptions>(c);
  o.form = c.qronos_form == "sequential" ? pptq::QronosForm::Sequential : pptq::QronosForm::LeastSquaresThenOptq;
  o.damp = c.damp;
  o.lambda = c.lambda;
  return o;
}

inline pptq::GpfqOptions gpfq_options_of(const Config& c) { return sweep_options_of<pptq::GpfqOptions>(c); }

/// Everything computed by one run, before anything is written.
struct Outputs {
  std::vector<std::pair<std::string, std::vector<std::uint8_t>>> files;  // path → bytes, committed together
  std::string summary;
};

template <typename S>
Outputs compute(const Config& cfg, const pptq::io::NpyArray& Wa, Clock::time_point t_start) {
  using pptq::Index;
  const pptq::Matrix<S> W = to_checked<S>(Wa, cfg.weights, "--weights");
  const Index rows = W.rows(), cols = W.cols();

  Eigen::MatrixXd X, Xq, H;
  const bool have_X = !cfg.inputs.empty();
  if (have_X) {
    X = load_double(cfg.inputs, "--inputs");
    if (X.cols() != cols)
      throw DataError(cfg.inputs + " (--inputs) is " + shape_str(X.rows(), X.cols()) + " but " + cfg.weights +
                      " (--weights) is " + shape_str(rows, cols) + ": X must be samples x " + std::to_string(cols));
  }
  if (!cfg.quantized_inputs.empty()) {
    Xq = load_double(cfg.quantized_inputs, "--quantized-inputs");
    if (Xq.rows() != X.rows() || Xq.cols() != X.cols())
      throw DataError(cfg.quantized_inputs + " (--quantized-inputs) is " + shape_str(Xq.rows(), Xq.cols()) + " but " +
                      cfg.inputs + " (--inputs) is " + shape_str(X.rows(), X.cols()) +
                      ": the same samples and columns are needed");
  }
  if (!cfg.hessian.empty()) {
    H = load_double(cfg.hessian, "--hessian");
    if (H.rows() != cols || H.cols() != cols)
      throw DataError(cfg.hessian + " (--hessian) is " + shape_str(H.rows(), H.cols()) + " but " + cfg.weights +
                      " (--weights) has " + std::to_string(cols) + " columns: H must be " + shape_str(cols, cols));
  }

  const pptq::GridSpec grid = grid_of(cfg);
  // Progress: asked for, or automatic on a terminal for layers that take a while (~rows·cols² flops).
  const double work = static_cast<double>(rows) * static_cast<double>(cols) * static_cast<double>(cols);
  Progress progress(cfg.progress || (::isatty(2) == 1 && work >= 1e9), cfg.method_name);
  std::optional<double> t_gram;
  double t_sweep = 0;
  pptq::QuantResult<S> r;
  pptq::QronosOptions qo;  // kept for the report (form, damping mode)

  // llama.cpp block formats (pptq/ggml_grid.hpp): the format's grid is fitted once on W with the
  // importance diag(XᵀX) (diag(X̃ᵀX̃) for Qronos), then the same engine sweeps onto it.
  std::vector<std::uint8_t> block_bytes;
  std::optional<double> refit_gain;
  if (cfg.format && cfg.method != MethodKind::Rtn && !is_mismatched(cfg.method) && have_X) {
    const auto t = Clock::now();
    pptq::Gram<double> g(cols);
    g.add(X);
    H = g.matrix();
    t_gram = seconds_since(t);
  }
  if (cfg.format) {
    const pptq::ggml::Type type = *cfg.format;
    pptq::ggml::FitOptions fit;
    fit.threads = cfg.threads;
    const auto t = Clock::now();
    if (cfg.method == MethodKind::Rtn) {
      const Eigen::VectorXd importance =
          have_X ? Eigen::VectorXd(X.colwise().squaredNorm().transpose()) : Eigen::VectorXd(H.diagonal());
      auto gq = pptq::ggml::quantize_rtn(W, importance, type, fit);
      block_bytes = std::move(gq.bytes);
      r = std::move(gq.result);
    } else if (!is_mismatched(cfg.method)) {
      pptq::ggml::QuantizeOptions qopt;
      qopt.optq = optq_options_of(cfg);
      if (!cfg.damp && !cfg.lambda) qopt.optq.damp = pptq::ggml::QuantizeOptions::default_optq().damp;
      qopt.optq.progress = progress.callback();
      qopt.fit = fit;
      qopt.refit_options.threads = cfg.threads;
      auto gq = pptq::ggml::quantize_optq(W, H, type, qopt);
      block_bytes = std::move(gq.bytes);
      refit_gain = gq.refit.gain();
      r = std::move(gq.result);
    } else {
      auto tg = Clock::now();
      pptq::CrossGram<double> cg(cols);
      cg.add(X, Xq);
      t_gram = seconds_since(tg);
      const Eigen::MatrixXd Ht = cg.htilde();
      const auto grid_f = pptq::ggml::fit_format_grid(W, type, Eigen::VectorXd(Ht.diagonal()), fit);
      qo = qronos_options_of(cfg);
      qo.progress = progress.callback();
      r = pptq::qronos_from_grams(W, Ht, cg.cross(), grid_f, qo);
      if (r.ok()) {
        block_bytes = pptq::ggml::to_bytes(r, type);
        r.dequantized = pptq::ggml::dequantize_bytes(block_bytes, rows, cols, type).template cast<S>();
      }
    }
    t_sweep = seconds_since(t);
  } else if (cfg.method == MethodKind::Rtn) {
    pptq::RtnOptions o;
    o.threads = cfg.threads;
    const auto t = Clock::now();
    r = pptq::rtn(W, grid, o);
    t_sweep = seconds_since(t);
  } else if (!is_mismatched(cfg.method)) {
    // From inputs, the Gram is handed over to OPTQ (the report measures on X, not H): one N × N matrix
    // in the call instead of three (the accumulator, a full copy, the factor).
    std::optional<pptq::Gram<double>> g;
    if (have_X) {
      const auto t = Clock::now();
      g.emplace(cols);
      g->add(X);
      t_gram = seconds_since(t);
    }
    pptq::OptqOptions o = optq_options_of(cfg);
    o.progress = progress.callback();
    const auto t = Clock::now();
    r = have_X ? pptq::optq(W, std::move(*g), grid, o) : pptq::optq(W, H, grid, o);
    t_sweep = seconds_since(t);
  } else {
    auto t = Clock::now();
    pptq::CrossGram<double> cg(cols);
    cg.add(X, Xq);
    t_gram = seconds_since(t);
    t = Clock::now();
    if (is_qronos(cfg.method)) {
      qo = qronos_options_of(cfg);
      qo.progress = progress.callback();
      r = pptq::qronos(W, std::move(cg), grid, qo);  // the report measures on X and Xq: H̃ can go
    } else {
      pptq::GpfqOptions o = gpfq_options_of(cfg);
      o.progress = progress.callback();
      r = pptq::gpfq(W, cg, grid, o);
    }
    t_sweep = seconds_since(t);
  }
  progress.finish();
  if (!r.ok()) throw NumericalError(std::string(pptq::to_string(r.status)) + ": " + r.message);

  // The layer report of pptq/bounds.hpp: measured errors, RTN on the same grid, constants and bounds.
  const auto t_rep = Clock::now();
  pptq::ReportOptions ro;
  ro.eta = cfg.eta;
  ro.compare_rtn = true;
  std::optional<pptq::LayerReport> rep;
  std::string report_error;
  try {
    if (!have_X)
      rep = pptq::layer_report_gram(r, W, H, ro);
    else if (is_mismatched(cfg.method))
      rep = pptq::layer_report(r, W, X, Xq, ro);
    else
      rep = pptq::layer_report(r, W, X, ro);
  } catch (const std::exception& e) {
    report_error = e.what();
  }
  Errors err;
  if (rep) {
    err.fro = rep->err_fro;
    err.rel = rep->rel_fro;
    err.linf = rep->err_linf;
    err.rtn_fro = rep->rtn_fro;
  } else {
    err = measure_errors(W, r.dequantized, have_X ? &X : nullptr, Xq.size() ? &Xq : nullptr, have_X ? nullptr : &H);
  }
  const double t_report = seconds_since(t_rep);

  const bool factor = has_damping(cfg.method);
  const bool stochastic = is_stochastic(cfg.method);
  json j;
  j["tool"] = kProg;
  j["method"] = cfg.method_name;
  j["algorithm"] = pptq::to_string(r.method);
  j["rounding"] = stochastic ? "stochastic" : "nearest";
  j["seed"] = stochastic ? json(cfg.seed.value_or(0)) : json(nullptr);
  j["qronos_form"] = is_qronos(cfg.method) ? json(pptq::to_string(qo.form)) : json(nullptr);
  j["objective"] = is_mismatched(cfg.method) ? "||X W^T - XQ Q^T||" : (have_X ? "||X (W - Q)^T||" : "sqrt(sum_rows (w-q)^T H (w-q))");
  j["dtype"] = std::is_same<S, float>::value ? "float32" : "float64";
  j["rows"] = static_cast<std::int64_t>(rows);
  j["cols"] = static_cast<std::int64_t>(cols);
  j["samples"] = have_X ? json(static_cast<std::int64_t>(X.rows())) : json(nullptr);
  j["bits"] = cfg.bits;
  j["format"] = cfg.format ? json(pptq::ggml::type_name(*cfg.format)) : json(nullptr);
  j["bits_per_weight"] = cfg.format ? json(8.0 * static_cast<double>(block_bytes.size()) /
                                           (static_cast<double>(rows) * static_cast<double>(cols)))
                                    : json(nullptr);
  j["refit_gain"] = opt_json(refit_gain);
  j["symmetric"] = cfg.symmetric;
  j["group_size"] = cfg.format ? json(pptq::ggml::format_of(*cfg.format).sub) : json(cfg.group_size);
  j["static_groups"] = cfg.static_groups;
  j["mse"] = cfg.mse;
  j["act_order"] = cfg.method == MethodKind::Rtn ? json(nullptr) : json(cfg.act_order);
  j["block_size"] = cfg.method == MethodKind::Rtn ? json(nullptr) : json(cfg.block_size.value_or(static_cast<long long>(pptq::OptqOptions{}.block_size)));
  j["threads"] = cfg.threads;
  j["backend"] = pptq::detail::blas_backend();  // what ran the products (OpenBLAS or Eigen: detail/blas.hpp)
  // The damping asked for: damp (relative), lambda (absolute) or, for Qronos by default, alpha·λmax.
  j["damp"] = nullptr;
  j["lambda_requested"] = opt_json(cfg.lambda);
  j["alpha"] = nullptr;
  if (factor && !cfg.lambda) {
    if (cfg.damp)
      j["damp"] = *cfg.damp;
    else if (is_qronos(cfg.method))
      j["alpha"] = qo.alpha;
    else if (cfg.format)
      j["damp"] = pptq::ggml::QuantizeOptions::default_optq().damp;  // the formats' default, chosen for new data
    else
      j["damp"] = pptq::OptqOptions().damp;
  }
  j["lambda"] = factor ? json(r.lambda) : json(nullptr);
  j["lambda_tried"] = factor ? json(r.lambda_tried) : json(nullptr);
  j["damping_escalated"] = factor ? json(r.status == pptq::Status::DampingEscalated) : json(nullptr);
  j["lambda_max"] = (is_qronos(cfg.method) && !cfg.lambda && !cfg.damp) ? json(r.lambda_max) : json(nullptr);
  j["status"] = pptq::to_string(r.status);
  j["message"] = r.message.empty() ? json(nullptr) : json(r.message);
  std::vector<std::int64_t> order(r.perm.begin(), r.perm.end());
  j["order"] = order;
  j["proxy_loss"] = factor ? json(r.proxy_loss) : json(nullptr);
  j["error"] = {{"fro", err.fro}, {"rel", err.rel}, {"linf", opt_json(err.linf)}, {"rtn_fro", opt_json(err.rtn_fro)}};
  j["bounds"] = bounds_json(r, rep ? &*rep : nullptr, cfg.eta);
  j["report_error"] = report_error.empty() ? json(nullptr) : json(report_error);
  auto opt_path = [](const std::string& p) { return p.empty() ? json(nullptr) : json(p); };
  j["inputs"] = {{"weights", cfg.weights},
                 {"inputs", opt_path(cfg.inputs)},
                 {"quantized_inputs", opt_path(cfg.quantized_inputs)},
                 {"hessian", opt_path(cfg.hessian)}};
  j["outputs"] = {{"output", opt_path(cfg.output)},
                  {"codes", opt_path(cfg.codes)},
                  {"report", opt_path(cfg.report)},
                  {"gguf", opt_path(cfg.gguf)}};
  j["time_s"] = {{"gram", opt_json(t_gram)},
                 {"factor", nullptr},
                 {"sweep", t_sweep},
                 {"report", t_report},
                 {"total", seconds_since(t_start)}};

  Outputs out;
  if (!cfg.output.empty()) out.files.emplace_back(cfg.output, pptq::io::serialize_npy(r.dequantized));
  if (!cfg.gguf.empty()) {
    // One tensor, stored as llama.cpp stores a linear layer's weight: ne = [cols, rows].
    pptq::gguf::File f;
    f.set("general.quantized_by", pptq::gguf::Value(std::string("pptq-quantize ") + cfg.method_name));
    f.add_tensor(cfg.tensor_name, {static_cast<std::uint64_t>(cols), static_cast<std::uint64_t>(rows)}, *cfg.format,
                 block_bytes);
    out.files.emplace_back(cfg.gguf, pptq::gguf::serialize(f));
  }
  if (!cfg.codes.empty()) out.files.emplace_back(cfg.codes, pptq::io::serialize_npy(r.codes));
  if (!cfg.report.empty()) {
    const std::string s = j.dump(2) + "\n";
    out.files.emplace_back(cfg.report, std::vector<std::uint8_t>(s.begin(), s.end()));
  }
  std::ostringstream sum;
  sum.precision(4);
  sum << cfg.method_name << " " << rows << "x" << cols << " " << cfg.bits << "-bit: error fro " << err.fro << " (rel "
      << err.rel;
  if (err.rtn_fro) sum << "; rtn " << *err.rtn_fro;
  sum << ")";
  if (factor) sum << ", lambda " << r.lambda;
  if (r.status == pptq::Status::DampingEscalated) sum << " (escalated)";
  if (cfg.format) sum << ", " << pptq::ggml::type_name(*cfg.format);
  sum << " ->";
  if (!cfg.output.empty()) sum << " " << cfg.output;
  if (!cfg.gguf.empty()) sum << " " << cfg.gguf;
  out.summary = sum.str();
  return out;
}

/// Writes every output to a temporary file first, then renames them all: a failure while writing leaves
/// no output behind (a failure between two renames, which needs the file system to fail, may leave the
/// earlier ones).
inline void commit_outputs(const Outputs& out) {
  std::vector<std::unique_ptr<pptq::io::AtomicFile>> files;
  try {
    for (const auto& f : out.files) {
      files.push_back(std::make_unique<pptq::io::AtomicFile>(f.first));
      files.back()->write(f.second.data(), f.second.size());
    }
    for (auto& f : files) f->commit();
  } catch (const std::exception& e) {
    throw OutputError(e.what());
  }
}

inline int run(const Config& cfg) {
  const auto t0 = Clock::now();
  if (cfg.threads > 0) Eigen::setNbThreads(cfg.threads);
  const pptq::io::NpyArray Wa = read_array(cfg.weights, "--weights");
  Outputs out = Wa.dtype == pptq::io::DType::f32 ? compute<float>(cfg, Wa, t0) : compute<double>(cfg, Wa, t0);
  commit_outputs(out);
  std::cout << out.summary << std::endl;
  return kExitOk;
}

/// The whole tool: parse, validate, compute, commit. Returns the exit code.
inline int cli_main(int argc, const char* const* argv) {
  CLI::App app;
  RawOptions raw;
  build_app(app, raw);
  return pptq_tools::run_tool(kProg, app, argc, argv, [&] { return run(finish_config(raw)); });
}

inline int cli_main(int argc, char** argv) { return cli_main(argc, const_cast<const char* const*>(argv)); }

}  // namespace pptq_cli
