// pptq-quantize: quantize one layer's weights (W.npy) with RTN, OPTQ, stochastic OPTQ, Qronos or GPFQ, and
// write the quantized weights, the integer codes and a JSON report.
//
//   pptq-quantize --weights W.npy (--inputs X.npy | --hessian H.npy) [--quantized-inputs XQ.npy]
//       --method rtn|optq|optq-stochastic|qronos|qronos-stochastic|gpfq
//       --bits B [--symmetric] [--group-size G] [--static-groups] [--act-order | --no-act-order] [--mse]
//       [--damp C | --lambda L] [--block-size B] [--seed S] [--eta E] [--threads T] [--progress]
//       --output Q.npy [--codes C.npy] [--report R.json]
//   and, for llama.cpp's block formats (docs/formats.md):
//   pptq-quantize ... --format q4_0|q4_k|q3_k|q2_k|q8_0|q5_0|q5_k|q6_k|iq4_nl|iq4_xs [--gguf OUT.gguf] [--tensor-name NAME]
//
// A run is four steps: load (the .npy inputs, checked), quantize (the library), report (errors, bounds,
// JSON) and write. Exit codes (cli_common.hpp): 0 success; 1 an output could not be written (or an
// unexpected internal error); 2 bad usage; 3 bad data; 4 numerical failure (H + λI not positive definite up
// to the damping cap). Nothing is written unless everything succeeded: every output goes through a
// temporary file, and the temporaries are renamed over the destinations together only after all of them
// are written (cli_common.hpp commit_outputs; the window that remains is in pptq/io/atomic_file.hpp).
// Before any data is read, the memory the run needs is estimated from the files' headers and the run
// refused when it exceeds MemAvailable or --max-memory.
#include "cli_common.hpp"
#include "heldout.hpp"
#include "quantize_config.hpp"

#include <pptq/bounds.hpp>
#include <pptq/damp_choice.hpp>
#include <pptq/ggml/grid.hpp>
#include <pptq/io/atomic_file.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>
#include <pptq/pptq.hpp>

#include <nlohmann/json.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <unistd.h>

namespace pptq_quantize {
namespace {

using pptq::Index;
using pptq_tools::NpySource;
using pptq_tools::shape_str;
using json = nlohmann::ordered_json;  // keys in the order written: related fields stay together
using Clock = std::chrono::steady_clock;

/// How the messages name the Gram of --inputs.
constexpr const char* kXtX = "X^T X of the inputs (--inputs)";

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

template <typename T>
json opt_json(const std::optional<T>& v) {
  return v ? json(*v) : json(nullptr);
}

// ------------------------------------------------------------------------------------------------
// Load
// ------------------------------------------------------------------------------------------------

/// The calibration data, in double: X (samples x cols) and, for Qronos and GPFQ, X̃ (XQ); or H (cols x cols).
struct Calibration {
  Eigen::MatrixXd X, Xq, H;
  bool have_X = false;
};

/// Loads --inputs, --quantized-inputs and --hessian and checks their shapes against W's cols columns.
Calibration load_calibration(const Config& cfg, Index rows, Index cols) {
  Calibration cal;
  const std::string w = cfg.weights + " (--weights)";
  cal.have_X = !cfg.inputs.empty();
  if (cal.have_X) {
    cal.X = pptq_tools::load_matrix({cfg.inputs, "--inputs"});
    if (cal.X.cols() != cols)
      throw pptq::DataError(cfg.inputs + " (--inputs) is " + shape_str(cal.X.rows(), cal.X.cols()) + " but " + w +
                            " is " + shape_str(rows, cols) + ": X must be samples x " + std::to_string(cols));
  }
  if (!cfg.quantized_inputs.empty()) {
    cal.Xq = pptq_tools::load_matrix({cfg.quantized_inputs, "--quantized-inputs"});
    if (cal.Xq.rows() != cal.X.rows() || cal.Xq.cols() != cal.X.cols())
      throw pptq::DataError(cfg.quantized_inputs + " (--quantized-inputs) is " + shape_str(cal.Xq.rows(), cal.Xq.cols()) +
                            " but " + cfg.inputs + " (--inputs) is " + shape_str(cal.X.rows(), cal.X.cols()) +
                            ": the same samples and columns are needed");
  }
  if (!cfg.hessian.empty()) {
    cal.H = pptq_tools::load_matrix({cfg.hessian, "--hessian"});
    if (cal.H.rows() != cols || cal.H.cols() != cols)
      throw pptq::DataError(cfg.hessian + " (--hessian) is " + shape_str(cal.H.rows(), cal.H.cols()) + " but " + w +
                            " has " + std::to_string(cols) + " columns: H must be " + shape_str(cols, cols));
  }
  return cal;
}

// ------------------------------------------------------------------------------------------------
// Quantize
// ------------------------------------------------------------------------------------------------

/// Progress of the sweep on stderr: every percent on a terminal, every 10% otherwise.
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

pptq::GridSpec grid_of(const Config& c) {
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
Options sweep_options_of(const Config& c, Progress& progress) {
  Options o;
  o.act_order = c.act_order;
  if (c.block_size) o.block_size = static_cast<pptq::Index>(*c.block_size);
  o.rounding = is_stochastic(c.method) ? pptq::Rounding::Stochastic : pptq::Rounding::Nearest;
  o.seed = c.seed.value_or(0);
  o.threads = c.threads;
  o.progress = progress.callback();
  return o;
}

pptq::OptqOptions optq_options_of(const Config& c, Progress& progress) {
  auto o = sweep_options_of<pptq::OptqOptions>(c, progress);
  if (c.damp) o.damp = *c.damp;
  o.lambda = c.lambda;
  return o;
}

pptq::QronosOptions qronos_options_of(const Config& c, Progress& progress) {
  auto o = sweep_options_of<pptq::QronosOptions>(c, progress);
  o.form = c.qronos_form == "sequential" ? pptq::QronosForm::Sequential : pptq::QronosForm::LeastSquaresThenOptq;
  o.damp = c.damp;
  o.lambda = c.lambda;
  return o;
}

/// What the quantize step gives the report and write steps.
template <typename S>
struct Quantized {
  pptq::QuantResult<S> r;
  pptq::QronosOptions qo;             ///< the Qronos options used (form, damping mode), for the report
  std::vector<std::uint8_t> bytes;    ///< with --format: the tensor in the format's blocks
  std::optional<double> refit_gain;   ///< with --format and OPTQ: the block scales' refit
  std::optional<double> t_gram;       ///< seconds spent forming XᵀX (or X̃ᵀX̃, X̃ᵀX), when formed
  double t_quantize = 0;              ///< seconds of the whole quantization (the parts: r.seconds, t_format)
  std::optional<pptq::ggml::FormatTimings> t_format;  ///< with --format: the fit, the refit, the packing
  std::optional<pptq::DampChoice> damp_auto;          ///< --damp auto: every candidate's errors
};

/// X̃ᵀX̃ and X̃ᵀX of the calibration data, timed into q.t_gram.
template <typename S>
pptq::CrossGram<double> cross_gram(const Calibration& cal, Quantized<S>& q) {
  const auto t = Clock::now();
  pptq::CrossGram<double> cg(cal.X.cols());
  cg.add(cal.X, cal.Xq);
  pptq_tools::require_finite_gram(cg.htilde_lower(), &cg.cross(), "XQ^T XQ or XQ^T X of the inputs");
  q.t_gram = seconds_since(t);
  return cg;
}

/// --format with Qronos: the format's grid is fitted on W with the importance diag(X̃ᵀX̃), then Qronos sweeps
/// onto it and the codes are packed into the format's blocks.
template <typename S>
void format_qronos(const Config& cfg, const pptq::Matrix<S>& W, const Calibration& cal,
                   const pptq::ggml::FitOptions& fit, Progress& progress, Quantized<S>& q) {
  const pptq::ggml::Type type = *cfg.format;
  pptq::CrossGram<double> cg = cross_gram(cal, q);
  const Eigen::MatrixXd Ht = cg.htilde();
  pptq::ggml::FormatTimings ft;
  auto t = Clock::now();
  const auto grid = pptq::ggml::fit_format_grid(W, type, Eigen::VectorXd(Ht.diagonal()), fit);
  ft.fit = seconds_since(t);
  q.qo = qronos_options_of(cfg, progress);
  q.r = pptq::qronos_from_grams(W, Ht, cg.cross(), grid, q.qo);
  if (q.r.ok()) {
    t = Clock::now();
    q.bytes = pptq::ggml::to_bytes(q.r, type);
    q.r.dequantized = pptq::ggml::dequantize_bytes(q.bytes, W.rows(), W.cols(), type).template cast<S>();
    ft.pack = seconds_since(t);
  }
  q.t_format = ft;
}

/// --format (pptq/ggml/grid.hpp): the format's grid is fitted once on W with the importance diag(XᵀX), then
/// the same engine sweeps onto it (plain rounding for rtn).
template <typename S>
void quantize_format(const Config& cfg, const pptq::Matrix<S>& W, Calibration& cal, Progress& progress,
                     Quantized<S>& q) {
  const pptq::ggml::Type type = *cfg.format;
  if (cfg.method != MethodKind::Rtn && !is_mismatched(cfg.method) && cal.have_X) {
    const auto t = Clock::now();
    pptq::Gram<double> g(W.cols());
    g.add(cal.X);
    pptq_tools::require_finite_gram(g.lower(), nullptr, kXtX);
    cal.H = g.matrix();
    q.t_gram = seconds_since(t);
  }
  pptq::ggml::FitOptions fit;
  fit.threads = cfg.threads;
  const auto t = Clock::now();
  if (cfg.method == MethodKind::Rtn) {
    const Eigen::VectorXd importance = cal.have_X ? Eigen::VectorXd(cal.X.colwise().squaredNorm().transpose())
                                                  : Eigen::VectorXd(cal.H.diagonal());
    if (!importance.allFinite())
      throw pptq::NumericalError(std::string("the diagonal of ") + kXtX + " overflows double: scale X down");
    auto gq = pptq::ggml::quantize_rtn(W, importance, type, fit);
    q.t_format = gq.seconds;
    q.bytes = std::move(gq.bytes);
    q.r = std::move(gq.result);
  } else if (!is_mismatched(cfg.method)) {
    pptq::ggml::QuantizeOptions qopt;
    qopt.optq = optq_options_of(cfg, progress);
    if (!cfg.damp && !cfg.lambda) qopt.optq.damp = pptq::ggml::QuantizeOptions::default_optq().damp;
    qopt.fit = fit;
    qopt.refit_options.threads = cfg.threads;
    auto gq = pptq::ggml::quantize_optq(W, cal.H, type, qopt);
    q.t_format = gq.seconds;
    q.bytes = std::move(gq.bytes);
    q.refit_gain = gq.refit.gain();
    q.r = std::move(gq.result);
  } else {
    format_qronos(cfg, W, cal, fit, progress, q);
  }
  q.t_quantize = seconds_since(t);
}

/// OPTQ from X or H. From inputs, the Gram is handed over to OPTQ when the report measures on X
/// (--full-report) or there is none: one N × N matrix in the call instead of three (the accumulator, a full
/// copy, the factor). The default report measures its sampled rows on H (cheaper than on X when there are
/// more samples than columns), so H is kept for it in cal.H.
template <typename S>
void quantize_optq(const Config& cfg, const pptq::Matrix<S>& W, Calibration& cal, const pptq::GridSpec& grid,
                   Progress& progress, Quantized<S>& q) {
  std::optional<pptq::Gram<double>> g;
  const bool keep_h = !cfg.report.empty() && !cfg.full_report;
  if (cal.have_X) {
    const auto t = Clock::now();
    g.emplace(W.cols());
    g->add(cal.X);
    pptq_tools::require_finite_gram(g->lower(), nullptr, kXtX);
    if (keep_h) cal.H = g->matrix();
    q.t_gram = seconds_since(t);
  }
  const pptq::OptqOptions o = optq_options_of(cfg, progress);
  const auto t = Clock::now();
  q.r = cal.have_X && !keep_h ? pptq::optq(W, std::move(*g), grid, o) : pptq::optq(W, cal.H, grid, o);
  q.t_quantize = seconds_since(t);
}

/// Qronos or GPFQ from X and X̃ (through their cross Gram).
template <typename S>
void quantize_mismatched(const Config& cfg, const pptq::Matrix<S>& W, const Calibration& cal,
                         const pptq::GridSpec& grid, Progress& progress, Quantized<S>& q) {
  pptq::CrossGram<double> cg = cross_gram(cal, q);
  const auto t = Clock::now();
  if (is_qronos(cfg.method)) {
    q.qo = qronos_options_of(cfg, progress);
    q.r = pptq::qronos(W, std::move(cg), grid, q.qo);  // the report measures on X and Xq: H̃ can go
  } else {
    q.r = pptq::gpfq(W, cg, grid, sweep_options_of<pptq::GpfqOptions>(cfg, progress));
  }
  q.t_quantize = seconds_since(t);
}

/// The quantize step: the method on the grid (or the format) the command line asks for. A failed sweep
/// (H + λI not positive definite up to the cap) is a NumericalError.
template <typename S>
Quantized<S> quantize(const Config& cfg, const pptq::Matrix<S>& W, Calibration& cal) {
  // Progress: asked for, or automatic on a terminal for layers that take a while (~rows·cols² flops).
  const double work = static_cast<double>(W.rows()) * static_cast<double>(W.cols()) * static_cast<double>(W.cols());
  Progress progress(cfg.progress || (::isatty(2) == 1 && work >= 1e9), cfg.method_name);
  Quantized<S> q;
  if (cfg.format) {
    quantize_format(cfg, W, cal, progress, q);
  } else if (cfg.method == MethodKind::Rtn) {
    pptq::RtnOptions o;
    o.threads = cfg.threads;
    const auto t = Clock::now();
    q.r = pptq::rtn(W, grid_of(cfg), o);
    q.t_quantize = seconds_since(t);
  } else if (!is_mismatched(cfg.method)) {
    quantize_optq(cfg, W, cal, grid_of(cfg), progress, q);
  } else {
    quantize_mismatched(cfg, W, cal, grid_of(cfg), progress, q);
  }
  progress.finish();
  q.qo.progress = {};  // the report keeps q.qo; the callback would outlive `progress`
  if (!q.r.ok()) throw pptq::NumericalError(std::string(pptq::to_string(q.r.status)) + ": " + q.r.message);
  return q;
}

/// --damp auto (docs/theory.md §3.5): the method at every damp of pptq::default_damps() on four fifths of
/// the samples, judged on the fifth held out; the layer is then quantized on all of them at the damp chosen.
template <typename S>
pptq::DampChoice auto_damp(const Config& cfg, const pptq::Matrix<S>& W, const Calibration& cal) {
  if (cal.X.rows() < pptq_tools::kHeldOutEvery)
    throw pptq::DataError("--damp auto holds out every " + std::to_string(pptq_tools::kHeldOutEvery) +
                          "th sample of --inputs and needs at least that many, got " + std::to_string(cal.X.rows()));
  Calibration part;
  part.H = pptq_tools::split_gram(cal.X, false, "--inputs");
  const Eigen::MatrixXd test = pptq_tools::split_gram(cal.X, true, "--inputs");
  struct Run {
    bool ok = false;
    double lambda = 0;
    pptq::Matrix<S> Q;
  };
  return pptq::choose_damp(W, part.H, test, pptq::default_damps(), [&](double d) {
    Config c = cfg;
    c.damp = d;
    c.damp_auto = false;
    c.progress = false;
    Run r;
    try {
      Quantized<S> q = quantize(c, W, part);
      r = Run{true, q.r.lambda, std::move(q.r.dequantized)};
    } catch (const pptq::NumericalError&) {  // this damp failed; another may not
    }
    return r;
  });
}

// ------------------------------------------------------------------------------------------------
// Report
// ------------------------------------------------------------------------------------------------

/// The measured errors: ‖X(W − Q)ᵀ‖ (‖XWᵀ − X̃Qᵀ‖ when mismatched), or from H alone; RTN on the same grid
/// when the library's report gives it.
struct Errors {
  double fro = 0, rel = 0;
  std::optional<double> linf, rtn_fro;
  std::optional<pptq::Index> sampled_rows;  ///< rel and rtn_fro measured on this many rows
};

/// The errors, through the library's measurement (pptq/measure.hpp), when its report is unavailable (no
/// RTN comparison then).
template <typename S>
Errors measure_errors(const pptq::Matrix<S>& W, const pptq::Matrix<S>& Q, const Calibration& cal) {
  const pptq::MeasuredErrors m = !cal.have_X     ? pptq::measure_errors_gram(W, Q, cal.H)
                                 : cal.Xq.size() ? pptq::measure_errors(W, Q, cal.X, cal.Xq)
                                                 : pptq::measure_errors(W, Q, cal.X);
  Errors e;
  e.fro = m.fro;
  e.rel = m.rel_fro;
  if (cal.have_X) e.linf = m.linf;
  return e;
}

/// The report step's measurements: the library's layer report (pptq/bounds.hpp) when it can be made,
/// otherwise why not and the errors measured here.
struct Measured {
  std::optional<pptq::LayerReport> rep;
  std::string report_error;
  Errors err;
  double seconds = 0;
};

template <typename S>
Measured measure(const Config& cfg, const pptq::Matrix<S>& W, const Calibration& cal, const pptq::QuantResult<S>& r) {
  const auto t = Clock::now();
  pptq::ReportOptions ro;
  ro.eta = cfg.eta;
  ro.compare_rtn = true;
  ro.products_with_x = cfg.full_report;
  Measured m;
  // The default report's sampled products go through H when the quantize step kept it (N² per row
  // instead of m·N); --full-report measures on X.
  const bool on_gram = !cal.have_X || (!cfg.full_report && cal.H.size() > 0 && !is_mismatched(cfg.method));
  try {
    if (on_gram)
      m.rep = pptq::layer_report_gram(r, W, cal.H, ro);
    else if (is_mismatched(cfg.method))
      m.rep = pptq::layer_report(r, W, cal.X, cal.Xq, ro);
    else
      m.rep = pptq::layer_report(r, W, cal.X, ro);
  } catch (const std::exception& e) {  // the quantized weights stand without it: the report says why
    m.report_error = e.what();
  }
  if (m.rep) {
    m.err.fro = m.rep->err_fro;
    m.err.rel = m.rep->rel_fro;
    m.err.linf = m.rep->err_linf;
    m.err.rtn_fro = m.rep->rtn_fro;
    m.err.sampled_rows = m.rep->sampled_rows;
  } else {
    m.err = measure_errors(W, r.dequantized, cal);
  }
  m.seconds = seconds_since(t);
  return m;
}

/// Every key of the report's `bounds` object, null until it applies.
template <typename S>
json empty_bounds(const pptq::QuantResult<S>& r, double eta) {
  json b;
  for (const char* k : {"C2", "C2_max", "Cw", "Cinf", "Cinf_crude", "l2_bound", "certificate", "linf_bound", "eta",
                        "holds", "clipped", "weight_l2_bound", "drift_bound", "expected_energy_bound",
                        "alphabet_K_min", "alphabet_bits", "certificate_gap"})
    b[k] = nullptr;
  b["notes"] = json::array();
  b["clipped"] = static_cast<std::int64_t>(r.clipped_total());
  if (r.rounding == pptq::Rounding::Stochastic) b["eta"] = eta;
  return b;
}

/// Without the library's report: what the result itself gives (C2, C2_max from L_tt, OPTQ's certificate).
template <typename S>
void add_result_bounds(json& b, const pptq::QuantResult<S>& r) {
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
}

/// From the library's report: the constants, the certificate, the a-priori bounds and whether they hold.
void add_report_bounds(json& b, pptq::Method method, const pptq::LayerReport& rep) {
  if (rep.constants) {
    const pptq::BoundConstants& c = *rep.constants;
    b["C2"] = c.C2;
    b["C2_max"] = c.C2_max;
    b["Cw"] = c.Cw;
    b["Cinf"] = opt_json(c.Cinf);
    b["Cinf_crude"] = opt_json(c.Cinf_crude);
  }
  b["certificate"] = opt_json(rep.certificate_fro);
  b["certificate_gap"] = opt_json(rep.certificate_gap);
  const bool rtn = method == pptq::Method::RTN;
  b["l2_bound"] = opt_json(rtn ? rep.rtn_l2.bound : rep.l2.bound);
  b["linf_bound"] = opt_json(rtn ? rep.rtn_linf.bound : rep.linf.bound);
  b["weight_l2_bound"] = opt_json(rep.weight_l2_check.bound);
  b["drift_bound"] = opt_json(rep.drift.bound);
  b["expected_energy_bound"] = opt_json(rep.expected_energy_bound);
  if (rep.alphabet) {
    b["alphabet_K_min"] = rep.alphabet->K_min;
    b["alphabet_bits"] = rep.alphabet->bits;
  }
  bool any = false;
  for (const pptq::BoundCheck* c : rep.checks()) any = any || c->holds.has_value();
  if (any) b["holds"] = rep.holds;
  for (const pptq::BoundCheck* c : rep.checks())
    if (c->state == pptq::CheckState::NotApplicable) b["notes"].push_back(c->name + ": " + c->why_not);
  for (const auto& n : rep.notes) b["notes"].push_back(n);
}

/// The report's `bounds` object; every key is always present, null when it does not apply.
template <typename S>
json bounds_json(const pptq::QuantResult<S>& r, const Measured& m, double eta) {
  json b = empty_bounds(r, eta);
  if (m.rep)
    add_report_bounds(b, r.method, *m.rep);
  else
    add_result_bounds(b, r);
  return b;
}

/// The report's fields on the method and the layer.
template <typename S>
void add_run_fields(json& j, const Config& cfg, const Calibration& cal, const Quantized<S>& q) {
  const bool stochastic = is_stochastic(cfg.method);
  const pptq::QuantResult<S>& r = q.r;
  j["tool"] = kProg;
  j["method"] = cfg.method_name;
  j["algorithm"] = pptq::to_string(r.method);
  j["rounding"] = stochastic ? "stochastic" : "nearest";
  j["seed"] = stochastic ? json(cfg.seed.value_or(0)) : json(nullptr);
  j["qronos_form"] = is_qronos(cfg.method) ? json(pptq::to_string(q.qo.form)) : json(nullptr);
  j["objective"] = is_mismatched(cfg.method) ? "||X W^T - XQ Q^T||"
                   : cal.have_X             ? "||X (W - Q)^T||"
                                            : "sqrt(sum_rows (w-q)^T H (w-q))";
  j["dtype"] = std::is_same<S, float>::value ? "float32" : "float64";
  j["rows"] = static_cast<std::int64_t>(r.rows());
  j["cols"] = static_cast<std::int64_t>(r.cols());
  j["samples"] = cal.have_X ? json(static_cast<std::int64_t>(cal.X.rows())) : json(nullptr);
  j["clipped"] = static_cast<std::int64_t>(r.clipped_total());  // weights clamped to the grid's range
}

/// The report's fields on the grid or format and the sweep's options.
template <typename S>
void add_grid_fields(json& j, const Config& cfg, const Quantized<S>& q) {
  const double weights = static_cast<double>(q.r.rows()) * static_cast<double>(q.r.cols());
  j["bits"] = cfg.bits;
  j["format"] = cfg.format ? json(pptq::ggml::type_name(*cfg.format)) : json(nullptr);
  j["bits_per_weight"] = cfg.format ? json(8.0 * static_cast<double>(q.bytes.size()) / weights) : json(nullptr);
  j["refit_gain"] = opt_json(q.refit_gain);
  j["symmetric"] = cfg.symmetric;
  j["group_size"] = cfg.format ? json(pptq::ggml::format_of(*cfg.format).sub) : json(cfg.group_size);
  j["static_groups"] = cfg.static_groups;
  j["mse"] = cfg.mse;
  const bool rtn = cfg.method == MethodKind::Rtn;
  j["act_order"] = rtn ? json(nullptr) : json(cfg.act_order);
  j["block_size"] =
      rtn ? json(nullptr) : json(cfg.block_size.value_or(static_cast<long long>(pptq::OptqOptions{}.block_size)));
  j["threads"] = cfg.threads;
  j["backend"] = pptq::detail::blas_backend();  // what ran the products (OpenBLAS or Eigen: detail/blas.hpp)
}

/// The damping asked for: damp (relative), lambda (absolute) or, for Qronos by default, alpha·λmax; and the
/// λ the factorization used.
template <typename S>
void add_damping_fields(json& j, const Config& cfg, const Quantized<S>& q) {
  const bool factor = has_damping(cfg.method);
  const pptq::QuantResult<S>& r = q.r;
  j["damp"] = nullptr;
  j["lambda_requested"] = opt_json(cfg.lambda);
  j["alpha"] = nullptr;
  if (factor && !cfg.lambda) {
    if (cfg.damp)
      j["damp"] = *cfg.damp;
    else if (is_qronos(cfg.method))
      j["alpha"] = q.qo.alpha;
    else if (cfg.format)
      j["damp"] = pptq::ggml::QuantizeOptions::default_optq().damp;  // the formats' default, chosen for new data
    else
      j["damp"] = pptq::OptqOptions().damp;
  }
  j["lambda"] = factor ? json(r.lambda) : json(nullptr);
  j["lambda_tried"] = factor ? json(r.lambda_tried) : json(nullptr);
  j["damping_escalated"] = factor ? json(r.status == pptq::Status::DampingEscalated) : json(nullptr);
  j["lambda_max"] = (is_qronos(cfg.method) && !cfg.lambda && !cfg.damp) ? json(r.lambda_max) : json(nullptr);
  json a = nullptr;
  if (q.damp_auto) {
    a = {{"chosen_damp", q.damp_auto->damp}, {"heldout", "every 5th sample of --inputs"}, {"candidates", json::array()}};
    for (const auto& p : q.damp_auto->points)
      a["candidates"].push_back({{"damp", p.damp}, {"lambda", p.lambda}, {"calibration_error", p.calibration},
                                 {"heldout_error", p.heldout}});
  }
  j["damp_auto"] = a;
}

/// The report's fields on the result, its errors and bounds.
template <typename S>
void add_result_fields(json& j, const Config& cfg, const pptq::QuantResult<S>& r, const Measured& m) {
  j["status"] = pptq::to_string(r.status);
  j["message"] = r.message.empty() ? json(nullptr) : json(r.message);
  j["order"] = std::vector<std::int64_t>(r.perm.begin(), r.perm.end());
  j["proxy_loss"] = has_damping(cfg.method) ? json(r.proxy_loss) : json(nullptr);
  j["error"] = {{"fro", m.err.fro}, {"rel", m.err.rel}, {"linf", opt_json(m.err.linf)},
                {"rtn_fro", opt_json(m.err.rtn_fro)},
                {"sampled_rows", m.err.sampled_rows ? json(*m.err.sampled_rows) : json(nullptr)}};
  j["bounds"] = bounds_json(r, m, cfg.eta);
  j["report_error"] = m.report_error.empty() ? json(nullptr) : json(m.report_error);
}

/// The report's file names and timings.
template <typename S>
void add_file_fields(json& j, const Config& cfg, const Quantized<S>& q, const Measured& m, Clock::time_point t_start) {
  auto opt_path = [](const std::string& p) { return p.empty() ? json(nullptr) : json(p); };
  j["inputs"] = {{"weights", cfg.weights},
                 {"inputs", opt_path(cfg.inputs)},
                 {"quantized_inputs", opt_path(cfg.quantized_inputs)},
                 {"hessian", opt_path(cfg.hessian)}};
  j["outputs"] = {{"output", opt_path(cfg.output)},
                  {"codes", opt_path(cfg.codes)},
                  {"report", opt_path(cfg.report)},
                  {"gguf", opt_path(cfg.gguf)}};
  const bool factored = q.r.method == pptq::Method::OPTQ || q.r.method == pptq::Method::Qronos;
  auto part = [&](double pptq::ggml::FormatTimings::*field) {
    return q.t_format ? json((*q.t_format).*field) : json(nullptr);
  };
  j["time_s"] = {{"gram", opt_json(q.t_gram)},
                 {"fit", part(&pptq::ggml::FormatTimings::fit)},
                 {"factor", factored ? json(q.r.seconds.factor) : json(nullptr)},
                 {"sweep", q.r.seconds.sweep},
                 {"refit", part(&pptq::ggml::FormatTimings::refit)},
                 {"pack", part(&pptq::ggml::FormatTimings::pack)},
                 {"quantize", q.t_quantize},
                 {"report", m.seconds},
                 {"total", seconds_since(t_start)}};
}

/// The JSON report (--report).
template <typename S>
json report_json(const Config& cfg, const Calibration& cal, const Quantized<S>& q, const Measured& m,
                 Clock::time_point t_start) {
  json j;
  add_run_fields(j, cfg, cal, q);
  add_grid_fields(j, cfg, q);
  add_damping_fields(j, cfg, q);
  add_result_fields(j, cfg, q.r, m);
  add_file_fields(j, cfg, q, m, t_start);
  return j;
}

/// The one line printed on success.
template <typename S>
std::string summary_line(const Config& cfg, const pptq::QuantResult<S>& r, const Errors& err) {
  std::ostringstream sum;
  sum.precision(4);
  sum << cfg.method_name << " " << r.rows() << "x" << r.cols() << " " << cfg.bits << "-bit: error fro " << err.fro
      << " (rel " << err.rel;
  if (err.rtn_fro) sum << "; rtn " << *err.rtn_fro;
  sum << ")";
  if (has_damping(cfg.method)) sum << ", lambda " << r.lambda;
  if (r.status == pptq::Status::DampingEscalated) sum << " (escalated)";
  if (cfg.format) sum << ", " << pptq::ggml::type_name(*cfg.format);
  sum << " ->";
  if (!cfg.output.empty()) sum << " " << cfg.output;
  if (!cfg.gguf.empty()) sum << " " << cfg.gguf;
  return sum.str();
}

// ------------------------------------------------------------------------------------------------
// Write
// ------------------------------------------------------------------------------------------------

/// Everything a run writes, computed before anything is written.
struct Outputs {
  std::vector<std::pair<std::string, std::vector<std::uint8_t>>> files;  // path → bytes, committed together
  std::string summary;
};

/// The files' bytes: Q, the GGUF, the codes, the report.
template <typename S>
Outputs output_files(const Config& cfg, const Quantized<S>& q, const json& report) {
  Outputs out;
  if (!cfg.output.empty()) out.files.emplace_back(cfg.output, pptq::io::serialize_npy(q.r.dequantized));
  if (!cfg.gguf.empty()) {
    // One tensor, stored as llama.cpp stores a linear layer's weight: ne = [cols, rows].
    pptq::gguf::File f;
    f.set("general.quantized_by", pptq::gguf::Value(std::string("pptq-quantize ") + cfg.method_name));
    f.add_tensor(cfg.tensor_name, {static_cast<std::uint64_t>(q.r.cols()), static_cast<std::uint64_t>(q.r.rows())},
                 *cfg.format, q.bytes);
    out.files.emplace_back(cfg.gguf, pptq::gguf::serialize(f));
  }
  if (!cfg.codes.empty()) out.files.emplace_back(cfg.codes, pptq::io::serialize_npy(q.r.codes));
  if (!cfg.report.empty()) {
    // Paths are bytes, not necessarily UTF-8: an invalid sequence becomes U+FFFD rather than an exception.
    const std::string s = report.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
    out.files.emplace_back(cfg.report, std::vector<std::uint8_t>(s.begin(), s.end()));
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// The run
// ------------------------------------------------------------------------------------------------

/// Weights the format (or RTN's grid) cannot represent were clamped to its range: said on stderr, counted in
/// the report ("clipped"). OPTQ-family sweeps without a format clamp the error-fed weights routinely: the
/// report's count says how often, without a warning.
template <typename S>
void warn_clipped(const Config& cfg, const pptq::QuantResult<S>& r) {
  const pptq::Index n = r.clipped_total();
  if (n == 0 || !(cfg.format || cfg.method == MethodKind::Rtn)) return;
  pptq_tools::note(kProg, "warning: " + std::to_string(n) + " of " + std::to_string(r.rows() * r.cols()) +
                              " weights were outside the range the " +
                              (cfg.format ? "format " + cfg.format_name : std::string("grid")) +
                              " represents and were clamped to it (report: clipped)");
}

/// cfg with --damp d (the damp --damp auto chose).
Config with_damp(const Config& cfg, double d) {
  Config c = cfg;
  c.damp = d;
  return c;
}

/// Load, quantize and report, for weights computed in S (double for float64 W, float otherwise).
template <typename S>
Outputs compute(const Config& cfg, const pptq::io::NpyArray& Wa, Clock::time_point t_start) {
  const pptq::Matrix<S> W = pptq_tools::to_finite_matrix<S>(Wa, {cfg.weights, "--weights"});
  Calibration cal = load_calibration(cfg, W.rows(), W.cols());
  std::optional<pptq::DampChoice> chosen;
  if (cfg.damp_auto) chosen = pptq_tools::on_input_data("", [&] { return auto_damp(cfg, W, cal); });
  const Config run_cfg = chosen ? with_damp(cfg, chosen->damp) : cfg;
  Quantized<S> q = pptq_tools::on_input_data("", [&] { return quantize(run_cfg, W, cal); });
  q.damp_auto = std::move(chosen);
  warn_clipped(cfg, q.r);
  const Measured m = measure(run_cfg, W, cal, q.r);
  Outputs out = output_files(run_cfg, q, report_json(run_cfg, cal, q, m, t_start));
  out.summary = summary_line(run_cfg, q.r, m.err);
  return out;
}

/// The pre-flight: the memory the run needs, estimated from the inputs' headers before any data is read
/// (docs/theory.md's H is cols x cols, and the layer's largest objects are H, its factor and copies, the
/// calibration data and the report's products), refused when it exceeds MemAvailable or --max-memory.
void check_memory(const Config& cfg) {
  const pptq::io::NpyArray w = pptq_tools::read_float_header({cfg.weights, "--weights"});
  const double rows = static_cast<double>(w.shape[0]), n = static_cast<double>(w.shape[1]);
  double samples = 0, est = 8.0 * 5.0 * rows * n;  // W, Q, codes and their working copies, in double at most
  if (!cfg.inputs.empty()) {
    const pptq::io::NpyArray x = pptq_tools::read_float_header({cfg.inputs, "--inputs"});
    samples = static_cast<double>(x.shape[0]);
    const double copies = cfg.quantized_inputs.empty() ? 1 : 2;  // X, and X~ for the mismatched methods
    est += copies * samples * n * (8.0 + static_cast<double>(pptq::io::dtype_size(x.dtype)));
  }
  // H (or X~^T X~ and X~^T X), the factor and the copies the methods make: four n x n doubles at most.
  const double h_copies = (cfg.method == MethodKind::Rtn && !cfg.format) ? (cfg.hessian.empty() ? 0 : 2) : 4;
  est += h_copies * 8.0 * n * n;
  // The report's products X W^T and the error E (samples x rows); by default on 3 x 256 sampled rows.
  est += 3.0 * 8.0 * samples * (cfg.full_report ? rows : std::min(rows, 256.0));
  pptq_tools::check_memory(est, "quantizing " + cfg.weights + " (" + pptq_tools::shape_str(w.shape[0], w.shape[1]) +
                                    ", H " + pptq_tools::shape_str(w.shape[1], w.shape[1]) + ")",
                           cfg.max_memory);
}

int run(Config cfg) {
  const auto t0 = Clock::now();
  cfg.threads = pptq_tools::cap_threads(kProg, cfg.threads);  // before anything starts a parallel region
  if (cfg.threads > 0) Eigen::setNbThreads(cfg.threads);
  check_memory(cfg);
  const pptq::io::NpyArray Wa = pptq_tools::read_float_array({cfg.weights, "--weights"});
  const Outputs out =
      Wa.dtype == pptq::io::DType::f64 ? compute<double>(cfg, Wa, t0) : compute<float>(cfg, Wa, t0);
  pptq_tools::commit_outputs(out.files);
  std::cout << pptq_tools::terminal_safe(out.summary) << std::endl;
  return pptq_tools::kExitOk;
}

}  // namespace
}  // namespace pptq_quantize

int main(int argc, char** argv) {
  pptq::io::remove_temporaries_on_signals();  // SIGINT/SIGTERM/SIGHUP leave no temporary behind
  pptq_tools::reuse_freed_memory();
  CLI::App app;
  pptq_quantize::RawOptions raw;
  pptq_quantize::build_app(app, raw);
  return pptq_tools::run_tool(pptq_quantize::kProg, app, argc, argv,
                              [&] { return pptq_quantize::run(pptq_quantize::finish_config(raw)); });
}
