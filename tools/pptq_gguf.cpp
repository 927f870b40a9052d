// pptq-gguf: requantize the linear layers of a GGUF model with OPTQ into one of llama.cpp's block formats.
//
//   pptq-gguf requantize --model IN.gguf (--hessians DIR | --grams GRAMS.gguf)
//       --format q4_0|q4_k|q3_k|q2_k|q8_0|q5_0|q5_k|q6_k|iq4_nl|iq4_xs --output OUT.gguf
//       [--method optq|optq-stochastic|qronos] [--seed S] [--only REGEX] [--damp C] [--no-refit] [--threads T] [--quiet]
//       [--allow-unused] [--dry-run]
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
#ifdef PPTQ_WITH_LLAMA
#include "commands.hpp"
#endif

#include <pptq/ggml/grid.hpp>
#include <pptq/measure.hpp>
#include <pptq/gram.hpp>
#include <pptq/measure.hpp>
#include <pptq/ggml/blocks.hpp>
#include <pptq/io/atomic_file.hpp>
#include <pptq/io/gguf.hpp>
#include <pptq/io/npy.hpp>
#include <pptq/result.hpp>

#include <CLI/CLI.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
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

/// The `requantize` command, validated.
struct Options {
  std::string model, hessians, output, format_name;
  std::string grams;  ///< --grams: the Hessians from a Gram file (gguf_hessians.hpp) instead of --hessians
  pptq::ggml::Type format = pptq::ggml::Type::Q4_K;
  Method method = Method::Optq;  ///< --method (gguf_methods.hpp)
  double damp = pptq::ggml::QuantizeOptions::default_optq().damp;  ///< λ = damp · mean(diag H)
  bool damp_given = false;  ///< Qronos's default damping is its own (gguf_methods.hpp)
  std::uint64_t seed = 0;   ///< optq-stochastic
  std::optional<std::regex> only;  ///< --only: requantize only the Gram file's weights whose names match
  bool refit = true;
  int threads = 0;  ///< 0: all; results do not depend on it; capped to the processors (cap_threads)
  std::optional<std::uint64_t> max_memory;  ///< --max-memory: the pre-flight's budget besides MemAvailable
  bool quiet = false;
  bool allow_unused = false;
  std::optional<Recipe> recipe;  ///< --format q4_k_m|q5_k_m|q3_k_m|q2_k_m: llama.cpp's mixture (gguf_recipe.hpp)
  bool dry_run = false;          ///< print the plan, write nothing
  bool rtn_missing = false;      ///< a recipe's tensors without a Hessian: plain rounding instead of a refusal
};

/// How `o` quantizes a tensor (gguf_methods.hpp).
MethodOptions method_options(const Options& o) {
  MethodOptions m;
  m.method = o.method;
  if (o.method != Method::Qronos || o.damp_given) m.damp = o.damp;
  m.seed = o.seed;
  m.refit = o.refit;
  m.threads = o.threads;
  return m;
}

/// A progress line on stderr (names from the model escaped: pptq_tools::note), unless --quiet.
void say(const Options& o, const std::string& line) {
  if (!o.quiet) pptq_tools::note(kProg, line);
}

// ------------------------------------------------------------------------------------------------
// Data
// ------------------------------------------------------------------------------------------------

/// The model; a file that cannot be read is bad input to the tool (exit 3), like a malformed one.
pptq::gguf::File load_model(const std::string& path) {
  try {
    return pptq::gguf::read(path);  // its messages name the file
  } catch (const pptq::IoError& e) {
    throw DataError(e.what());
  }
}

/// The weight W (rows = ne[1], cols = ne[0]) of an F32/F16 tensor, decoded to float; DataError on NaN/Inf.
pptq::Matrix<float> decode_weight(const pptq::gguf::TensorInfo& t) {
  const auto cols = static_cast<pptq::Index>(t.ne[0]), rows = static_cast<pptq::Index>(t.ne[1]);
  const std::size_t rb = pptq::ggml::row_bytes(t.type, cols);
  pptq::Matrix<float> W(rows, cols);
  std::vector<float> row(static_cast<std::size_t>(cols));
  for (pptq::Index i = 0; i < rows; ++i) {
    pptq::ggml::dequantize_row(t.type, t.data.data() + static_cast<std::size_t>(i) * rb, cols, row.data());
    for (pptq::Index j = 0; j < cols; ++j) {
      const float v = row[static_cast<std::size_t>(j)];
      if (!std::isfinite(v)) {
        std::ostringstream os;
        os << tensor_label(t) << " has a non-finite weight " << v << " at row " << i << ", column " << j;
        throw DataError(os.str());
      }
      W(i, j) = v;
    }
  }
  return W;
}

/// H (cols x cols, double) for a job: read NAME.H.npy, or NAME.X.npy and form XᵀX with pptq::Gram<double>.
/// The plan checked the file's header; the shape is checked again here in case the file changed since.
Eigen::MatrixXd load_hessian(const Job& job, const pptq::gguf::TensorInfo& t, pptq::Index cols) {
  const pptq_tools::NpySource src{job.path, ""};
  const pptq::io::NpyArray a = pptq_tools::read_float_array(src);
  const std::int64_t r = a.shape[0], c = a.shape[1];
  if (c != cols || (!job.from_inputs && r != cols))
    throw DataError(job.path + " is " + shape_str(r, c) + " but " + tensor_label(t) + " has " + std::to_string(cols) +
                    " columns: it must be " +
                    (job.from_inputs ? "samples x " + std::to_string(cols) : shape_str(cols, cols)));
  Eigen::MatrixXd m = pptq_tools::to_finite_matrix<double>(a, src);
  if (!job.from_inputs) return m;
  pptq::Gram<double> g(cols);
  g.add(m);
  pptq_tools::require_finite_gram(g.lower(), nullptr, "X^T X of " + job.path);
  return g.matrix();
}

// ------------------------------------------------------------------------------------------------
// Requantizing one tensor
// ------------------------------------------------------------------------------------------------

/// What happened to one tensor (for the progress line).
struct TensorReport {
  pptq::Index rows = 0, cols = 0;
  double seconds = 0;
  double lambda = 0;
  bool escalated = false;
  double refit_gain = 1;
  pptq::Index clipped = 0;  ///< weights clamped to the format's range (QuantResult::clipped_total)
  /// Σ (w − q)ᵀH(w − q) of plain rounding (quantize_rtn, same format and importance) divided by OPTQ's,
  /// over `compared_rows` evenly spaced rows (all rows when there are at most kCompareRows).
  std::optional<double> rtn_over_optq;
  pptq::Index compared_rows = 0;
  static constexpr pptq::Index kCompareRows = 256;
};

/// Σ over the rows of (W − Q)_i H (W − Q)_iᵀ, through the library's measurement (pptq/measure.hpp).
double h_error(const pptq::Matrix<float>& W, const pptq::Matrix<float>& Q, const Eigen::MatrixXd& H) {
  const double fro = pptq::measure_errors_gram(W, Q, H).fro;
  return fro * fro;
}

/// Compares OPTQ's Q with plain rounding on at most kCompareRows rows (the grid fit is per row, so RTN of a
/// subset of rows is exactly those rows of RTN of all of them): cheap next to the sweep.
void compare_with_rtn(const pptq::Matrix<float>& W, const pptq::Matrix<float>& Q, const Eigen::MatrixXd& H,
                      pptq::ggml::Type format, const pptq::ggml::FitOptions& fit, TensorReport& rep) {
  const pptq::Index n = std::min(rep.rows, TensorReport::kCompareRows);
  pptq::Matrix<float> Ws(n, rep.cols), Qs(n, rep.cols);
  for (pptq::Index k = 0; k < n; ++k) {
    Ws.row(k) = W.row(k * rep.rows / n);
    Qs.row(k) = Q.row(k * rep.rows / n);
  }
  const Eigen::VectorXd imp = H.diagonal().cwiseMax(0.0);
  const auto rtn = pptq::ggml::quantize_rtn(Ws, imp, format, fit);
  const double e_optq = h_error(Ws, Qs, H), e_rtn = h_error(Ws, rtn.dequantized, H);
  if (e_optq > 0) rep.rtn_over_optq = e_rtn / e_optq;
  rep.compared_rows = n;
}

/// Requantizes W (t's weight) with H into `o.format` and replaces t's type and data. Throws DataError on
/// input the library rejects and NumericalError when the sweep fails, both naming the tensor.
TensorReport requantize_tensor(pptq::gguf::TensorInfo& t, const pptq::Matrix<float>& W, const TensorGrams& g,
                               const Options& o, pptq::ggml::Type format) {
  const auto t0 = Clock::now();
  TensorReport rep;
  rep.rows = W.rows();
  rep.cols = W.cols();
  const MethodOptions mopt = method_options(o);
  const std::string who = tensor_label(t) + ": ";
  pptq::ggml::GgmlQuant<float> gq = pptq_tools::on_input_data(who, [&] { return quantize_with(W, g, format, mopt); });
  if (!gq.result.ok())
    throw pptq::NumericalError(who + pptq::to_string(gq.result.status) + ": " + gq.result.message);
  rep.lambda = gq.result.lambda;
  rep.escalated = gq.result.status == pptq::Status::DampingEscalated;
  rep.refit_gain = gq.refit.gain();
  rep.clipped = gq.result.clipped_total();
  // Qronos minimizes another objective than (w − q)ᵀH̃(w − q): plain rounding is compared with OPTQ only.
  if (!o.quiet && o.method != Method::Qronos) compare_with_rtn(W, gq.dequantized, g.H, format, optq_options(mopt).fit, rep);
  t.type = format;
  t.data = std::move(gq.bytes);
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return rep;
}

/// "[k/n] NAME: done in ... s, ...": the progress line of one requantized tensor.
std::string done_line(const std::string& tag, const TensorReport& r, bool refit) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(2);
  os << tag << ": done in " << r.seconds << " s";
  os.unsetf(std::ios::fixed);
  os.precision(4);
  if (r.rtn_over_optq) {
    os << ", H-error of plain rounding / OPTQ " << *r.rtn_over_optq << "x";
    if (r.compared_rows < r.rows) os << " (on " << r.compared_rows << " of " << r.rows << " rows)";
  }
  os << ", lambda " << r.lambda << (r.escalated ? " (damping escalated)" : "");
  if (refit) os << ", refit gain " << r.refit_gain;
  if (r.clipped > 0) os << ", " << r.clipped << " of " << r.rows * r.cols << " weights clamped to the format's range";
  return os.str();
}

// ------------------------------------------------------------------------------------------------
// The run
// ------------------------------------------------------------------------------------------------

/// Requantizes every tensor of the plan in f, one after the other, saying what it does. Returns the number
/// of weights clamped to the format's range (QuantResult::clipped_total, summed).
pptq::Index requantize_all(pptq::gguf::File& f, const Plan& plan, const GramSource* grams, const Options& o) {
  pptq::Index clipped = 0;
  const std::string fmt = pptq::ggml::type_name(o.format);
  const std::size_t n = plan.jobs.size();
  for (std::size_t k = 0; k < n; ++k) {
    const Job& job = plan.jobs[k];
    pptq::gguf::TensorInfo& t = f.tensors[job.tensor];
    const std::string tag = "[" + std::to_string(k + 1) + "/" + std::to_string(n) + "] " + t.name;  // say() escapes
    const std::string from = pptq::ggml::type_name(t.type);
    say(o, tag + ": " + shape_str(static_cast<std::int64_t>(t.ne[1]), static_cast<std::int64_t>(t.ne[0])) + " " +
               from + " -> " + fmt + (job.from_inputs ? " (H = X^T X)" : "") +
               (o.method != Method::Optq ? std::string(" with ") + method_name(o.method) : "") + " ...");
    const pptq::Matrix<float> W = decode_weight(t);
    TensorGrams g;
    if (grams) g = grams->grams_of(t.name);
    else g.H = load_hessian(job, t, W.cols());
    const TensorReport rep = requantize_tensor(t, W, g, o, o.format);
    clipped += rep.clipped;
    say(o, done_line(tag, rep, o.refit));
  }
  return clipped;
}

/// The model, after the pre-flight: reading it takes its file and the parsed copy at once.
pptq::gguf::File load_checked_model(const Options& o) {
  std::uint64_t size = 0;
  try {
    size = pptq::io::regular_file_size(o.model, "gguf: ");
  } catch (const pptq::IoError& e) {
    throw DataError(e.what());
  }
  pptq_tools::check_memory(2.0 * static_cast<double>(size), "reading " + o.model, o.max_memory);
  return load_model(o.model);
}

/// The pre-flight of the plan: the model in memory and the largest tensor's requantization.
void check_plan_memory(const pptq::gguf::File& f, const Plan& plan, const GramSource* grams, const Options& o) {
  double model = grams ? static_cast<double>(grams->bytes()) : 0.0, peak = 0;
  std::size_t largest = plan.jobs.front().tensor;
  for (const auto& t : f.tensors) model += static_cast<double>(t.data.size());
  for (const Job& job : plan.jobs) {
    const auto& jt = f.tensors[job.tensor];
    const double m = job_memory(jt, job) +
                     method_extra_memory(o.method, static_cast<double>(jt.ne[1]), static_cast<double>(jt.ne[0]));
    if (m > peak) peak = m, largest = job.tensor;
  }
  const auto& t = f.tensors[largest];
  pptq_tools::check_memory(model + peak,
                           "requantizing " + tensor_label(t) + " (" +
                               shape_str(static_cast<std::int64_t>(t.ne[1]), static_cast<std::int64_t>(t.ne[0])) +
                               ", H " + shape_str(static_cast<std::int64_t>(t.ne[0]), static_cast<std::int64_t>(t.ne[0])) +
                               ") with the model in memory",
                           o.max_memory);
}

/// Writes the output through a temporary (pptq::io::OutputGroup: SIGINT, SIGTERM and SIGHUP remove it).
void write_output(const pptq::gguf::File& f, const std::string& path) {
  try {
    pptq::io::OutputGroup group;
    pptq::gguf::write_to(f, group.add(path));
    pptq_tools::test_signal_point("after-first-temp");
    group.commit();
  } catch (const pptq::IoError& e) {
    throw pptq::IoError(std::string("cannot write the output: ") + e.what());
  }
}

/// --grams: the Gram file, after the pre-flight of its image in memory; checked against --method (Qronos
/// needs the cross Grams of calibrate --quantized-model). Null with --hessians.
std::unique_ptr<const GramSource> open_grams(const Options& o) {
  if (o.grams.empty()) return nullptr;
  std::uint64_t size = 0;
  try {
    size = pptq::io::regular_file_size(o.grams, "--grams: ");
  } catch (const pptq::IoError& e) {
    throw DataError(e.what());
  }
  pptq_tools::check_memory(static_cast<double>(size), "reading " + o.grams, o.max_memory);
  auto g = std::make_unique<const GramSource>(o.grams);
  if (o.method == Method::Qronos && !g->lockstep())
    throw UsageError("--method qronos needs a Gram file from calibrate --quantized-model (H~ and G per input); '" +
                     o.grams + "' holds plain Grams");
  if (o.method != Method::Qronos && g->any_cross())
    say(o, "note: " + o.grams + " comes from calibrate --quantized-model: " + method_name(o.method) +
               " runs on the quantized model's inputs' Grams H~");
  return g;
}

// ------------------------------------------------------------------------------------------------
// Recipes and --dry-run (gguf_recipe.hpp): a type per tensor, each tensor quantized with OPTQ, by plain
// rounding (no Hessian, --rtn-missing), converted to f16 (the last fallback) or copied
// ------------------------------------------------------------------------------------------------

/// Plain rounding onto the format's best fit with uniform importance (pptq::ggml::quantize_rtn): the
/// recipe's tensors without a Hessian under --rtn-missing.
void round_tensor(pptq::gguf::TensorInfo& t, const pptq::Matrix<float>& W, const Options& o, pptq::ggml::Type format) {
  const pptq::ggml::QuantizeOptions qopt = optq_options(method_options(o));
  const Eigen::VectorXd ones = Eigen::VectorXd::Ones(W.cols());
  pptq::ggml::GgmlQuant<float> gq = pptq_tools::on_input_data(
      tensor_label(t) + ": ", [&] { return pptq::ggml::quantize_rtn(W, ones, format, qopt.fit); });
  t.type = format;
  t.data = std::move(gq.bytes);
}

/// F32, BF16 or Q8_0 weights stored as F16 (round to nearest even), llama.cpp's last fallback.
void to_f16(pptq::gguf::TensorInfo& t, const pptq::Matrix<float>& W) {
  std::vector<std::uint8_t> out(static_cast<std::size_t>(W.size()) * 2);
  std::size_t k = 0;
  for (pptq::Index i = 0; i < W.rows(); ++i)
    for (pptq::Index j = 0; j < W.cols(); ++j, k += 2) {
      const std::uint16_t h = pptq::ggml::float_to_half(W(i, j));
      out[k] = static_cast<std::uint8_t>(h & 0xff);
      out[k + 1] = static_cast<std::uint8_t>(h >> 8);
    }
  t.type = pptq::ggml::Type::F16;
  t.data = std::move(out);
}

/// One matrix of a step (a 2-d tensor, or one expert of a 3-d one, in `m` with ne = [in, out]) into s.to:
/// OPTQ with `job`'s Hessian, plain rounding without one, or F16. Returns the clamped weights.
pptq::Index run_matrix(pptq::gguf::TensorInfo& m, const Step& s, const std::optional<Job>& job, const GramSource* grams,
                       const Options& o, const std::string& tag) {
  const pptq::Matrix<float> W = decode_weight(m);
  if (s.action == Action::ToF16) {
    to_f16(m, W);
    return 0;
  }
  if (!job) {
    round_tensor(m, W, o, s.to);
    return 0;
  }
  TensorGrams g;
  if (grams)
    g = grams->grams_of(m.name);
  else
    g.H = load_hessian(*job, m, W.cols());
  const TensorReport rep = requantize_tensor(m, W, g, o, s.to);
  say(o, done_line(tag, rep, o.refit));
  return rep.clipped;
}

/// A step of a 3-d tensor (ne = [in, out, n_expert]): expert by expert, each its own matrix.
pptq::Index run_experts(pptq::gguf::TensorInfo& t, const Step& s, const Options& o, const std::string& tag) {
  const std::size_t in_bytes = pptq::ggml::row_bytes(t.type, static_cast<std::int64_t>(t.ne[0])) * t.ne[1];
  std::vector<std::uint8_t> out;
  pptq::Index clipped = 0;
  for (std::uint64_t e = 0; e < t.ne[2]; ++e) {
    pptq::gguf::TensorInfo m;  // expert e, named like its tensor (messages name the tensor)
    m.name = t.name;
    m.ne = {t.ne[0], t.ne[1]};
    m.type = t.type;
    m.data.assign(t.data.begin() + static_cast<std::ptrdiff_t>(e * in_bytes),
                  t.data.begin() + static_cast<std::ptrdiff_t>((e + 1) * in_bytes));
    const std::optional<Job> none;
    const auto& job = s.experts.empty() ? none : s.experts[e];
    clipped += run_matrix(m, s, job, nullptr, o, tag + " expert " + std::to_string(e));
    out.insert(out.end(), m.data.begin(), m.data.end());
  }
  t.type = s.to;
  t.data = std::move(out);
  return clipped;
}

/// Runs every step of the plan that changes a tensor, saying what it does. Returns the clamped weights.
pptq::Index run_steps(pptq::gguf::File& f, const RecipePlan& plan, const GramSource* grams, const Options& o) {
  pptq::Index clipped = 0;
  std::size_t n = 0, k = 0;
  for (const Step& s : plan.steps) n += s.action != Action::Copy;
  for (const Step& s : plan.steps) {
    if (s.action == Action::Copy) continue;
    pptq::gguf::TensorInfo& t = f.tensors[s.tensor];
    const std::string tag = "[" + std::to_string(++k) + "/" + std::to_string(n) + "] " + t.name;
    say(o, tag + ": " + shape_str(static_cast<std::int64_t>(t.ne[1]), static_cast<std::int64_t>(t.ne[0])) +
               (t.ne.size() == 3 ? " x " + std::to_string(t.ne[2]) + " experts" : "") + " " +
               pptq::ggml::type_name(t.type) + " -> " + pptq::ggml::type_name(s.to) + " (" + action_name(s.action) +
               "; " + s.why + ") ...");
    clipped += t.ne.size() == 3 ? run_experts(t, s, o, tag) : run_matrix(t, s, s.job, grams, o, tag);
  }
  return clipped;
}

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

/// A recipe, or --dry-run: plan, then print it (--dry-run) or run it and write the output.
int run_recipe(pptq::gguf::File& f, const Options& o, Clock::time_point t_start) {
  const std::unique_ptr<const GramSource> grams = o.recipe ? open_grams(o) : nullptr;
  const RecipePlan plan = grams ? recipe_plan_from_grams(f, *grams, o) : plan_of(f, o);
  if (o.dry_run) {
    std::fputs(plan_table(f, plan).c_str(), stdout);
    return pptq_tools::kExitOk;
  }
  Plan optq;  // the memory pre-flight of the OPTQ steps
  for (const Step& s : plan.steps) {
    if (s.job) optq.jobs.push_back(*s.job);
    for (const auto& e : s.experts)
      if (e) optq.jobs.push_back(*e);
  }
  if (!optq.jobs.empty()) check_plan_memory(f, optq, grams.get(), o);
  for (const std::string& u : plan.unused) say(o, "ignoring " + u + ": the recipe quantizes no tensor with it");
  const std::string summary = steps_summary(f, plan);  // before the steps change the types
  const pptq::Index clipped = run_steps(f, plan, grams.get(), o);
  set_recipe_metadata(f, *o.recipe);
  write_output(f, o.output);
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(1);
  os << "wrote " << o.output << " (" << recipe_name(*o.recipe) << "): " << summary << " in "
     << std::chrono::duration<double>(Clock::now() - t_start).count() << " s";
  if (clipped > 0) os << "; " << clipped << " weights clamped to the format's range";
  say(o, os.str());
  return pptq_tools::kExitOk;
}

/// Reads, requantizes and writes. Returns the exit code; throws pptq's errors.
int run(Options o) {
  const auto t_start = Clock::now();
  o.threads = pptq_tools::cap_threads(kProg, o.threads);  // before anything starts a parallel region
  if (o.threads > 0) Eigen::setNbThreads(o.threads);
  pptq::gguf::File f = load_checked_model(o);
  if (o.recipe || o.dry_run) return run_recipe(f, o, t_start);
  const std::unique_ptr<const GramSource> grams = open_grams(o);
  const Plan plan = grams ? grams->plan(f, o.format, o.allow_unused, o.only ? &*o.only : nullptr)
                          : make_plan(f, o.hessians, npy_files(o.hessians), o.format, o.allow_unused,
                                      [](const pptq_tools::NpySource& src) { return pptq_tools::read_float_header(src); });
  check_plan_memory(f, plan, grams.get(), o);
  for (const std::string& u : plan.unused) say(o, "ignoring " + u + ": it matches no tensor of the model");
  std::size_t from_q8 = 0;  // sources already quantized (decoded exactly, then requantized)
  for (const Job& job : plan.jobs) from_q8 += f.tensors[job.tensor].type == pptq::ggml::Type::Q8_0;
  const pptq::Index clipped = requantize_all(f, plan, grams.get(), o);
  write_output(f, o.output);
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(1);
  os << "wrote " << o.output << ": " << plan.jobs.size() << " of " << f.tensors.size() << " tensors requantized to "
     << pptq::ggml::type_name(o.format) << " in " << std::chrono::duration<double>(Clock::now() - t_start).count()
     << " s";
  // OPTQ's error feedback pushes weights past the format's range routinely: a count, not a warning.
  if (clipped > 0) os << "; " << clipped << " weights clamped to the format's range";
  if (from_q8 > 0) os << "; " << from_q8 << " source tensor(s) were already quantized (q8_0)";
  say(o, os.str());
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
              *o_seed = nullptr, *o_only = nullptr;
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
                             "lambda = 1e-6 * lambda_max(H~) unless given)")
                   ->type_name("C");
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
  if (raw.o_damp->count()) {
    o.damp = pptq_tools::parse_double("--damp", raw.damp);
    if (!(o.damp >= 0)) throw UsageError("--damp must be >= 0 and finite, got " + raw.damp);
    o.damp_given = true;
  }
  finish_source_options(raw, o);
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
  pptq_tools::check_outputs({{"--output", o.output}});
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
