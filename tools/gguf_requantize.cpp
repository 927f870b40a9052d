#include "gguf_requantize.hpp"

#include "cli_common.hpp"
#include "heldout.hpp"

#include <pptq/ggml/blocks.hpp>
#include <pptq/ggml/grid.hpp>
#include <pptq/ggml/half.hpp>
#include <pptq/gram.hpp>
#include <pptq/io/npy.hpp>
#include <pptq/measure.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>
#include <utility>

namespace pptq_gguf {

using pptq::DataError;
using pptq_tools::shape_str;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kProg = "pptq-gguf";

void say(const Options& o, const std::string& line) {
  if (!o.quiet) pptq_tools::note(kProg, line);
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// The weight W (rows = ne[1], cols = ne[0]) of a 2-d tensor, decoded to float; DataError on NaN/Inf.
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

/// The Hessians of a job: H from NAME.H.npy, or from NAME.X.npy; with `split` (--damp auto) the held-out
/// samples' Gram in `test` and the others' in `cal` (H = cal + test). The plan checked the header; the
/// shape is checked again in case the file changed since.
struct JobGrams {
  Eigen::MatrixXd H, cal, test;
};
JobGrams load_hessian(const Job& job, const pptq::gguf::TensorInfo& t, pptq::Index cols, bool split) {
  const pptq_tools::NpySource src{job.path, ""};
  const pptq::io::NpyArray a = pptq_tools::read_float_array(src);
  const std::int64_t r = a.shape[0], c = a.shape[1];
  if (c != cols || (!job.from_inputs && r != cols))
    throw DataError(job.path + " is " + shape_str(r, c) + " but " + tensor_label(t) + " has " + std::to_string(cols) +
                    " columns: it must be " +
                    (job.from_inputs ? "samples x " + std::to_string(cols) : shape_str(cols, cols)));
  JobGrams g;
  Eigen::MatrixXd m = pptq_tools::to_finite_matrix<double>(a, src);
  if (!job.from_inputs) {
    g.H = std::move(m);
    return g;
  }
  if (split) {
    if (m.rows() < pptq_tools::kHeldOutEvery)
      throw DataError(job.path + " has " + std::to_string(m.rows()) + " samples: --damp auto holds out every " +
                      std::to_string(pptq_tools::kHeldOutEvery) + "th and needs at least " +
                      std::to_string(pptq_tools::kHeldOutEvery));
    g.cal = pptq_tools::split_gram(m, false, job.path);
    g.test = pptq_tools::split_gram(m, true, job.path);
    g.H = g.cal + g.test;
    return g;
  }
  pptq::Gram<double> gram(cols);
  gram.add(m);
  pptq_tools::require_finite_gram(gram.lower(), nullptr, "X^T X of " + job.path);
  g.H = gram.matrix();
  return g;
}

/// Σ over the rows of (W − Q)_i H (W − Q)_iᵀ (pptq/measure.hpp).
double h_error(const pptq::Matrix<float>& W, const pptq::Matrix<float>& Q, const Eigen::MatrixXd& H) {
  const double fro = pptq::measure_errors_gram(W, Q, H).fro;
  return fro * fro;
}

/// The relative H-error and plain rounding's against the method, on at most kCompareRows evenly spaced rows
/// (the grid fit is per row, so RTN of a subset of rows is exactly those rows of RTN of all of them).
void compare_rows(const pptq::Matrix<float>& W, const pptq::Matrix<float>& Q, const Eigen::MatrixXd& H,
                  pptq::ggml::Type format, const pptq::ggml::FitOptions& fit, bool with_rtn, TensorRecord& rec) {
  const pptq::Index n = std::min<pptq::Index>(W.rows(), TensorRecord::kCompareRows);
  pptq::Matrix<float> Ws(n, W.cols()), Qs(n, W.cols());
  for (pptq::Index k = 0; k < n; ++k) {
    Ws.row(k) = W.row(k * W.rows() / n);
    Qs.row(k) = Q.row(k * W.rows() / n);
  }
  const double e = h_error(Ws, Qs, H), w = h_error(Ws, pptq::Matrix<float>::Zero(n, W.cols()), H);
  if (w > 0) rec.h_error_relative = e / w;
  if (with_rtn) {
    const Eigen::VectorXd imp = H.diagonal().cwiseMax(0.0);
    const auto rtn = pptq::ggml::quantize_rtn(Ws, imp, format, fit);
    if (e > 0) rec.rtn_over_method = h_error(Ws, rtn.dequantized, H) / e;
  }
  rec.compared_rows = n;
}

/// What the quantizer's own figures give: the exact H-error of the final Q (its objective minus λ‖W − Q‖²:
/// the refit's when it ran, else the sweep's energy), the sweep's certificate and C2.
void result_figures(const pptq::ggml::GgmlQuant<float>& gq, const pptq::Matrix<float>& W, bool qronos,
                    TensorRecord& rec) {
  const auto& r = gq.result;
  if (r.energy.size() > 0 && !qronos) rec.certificate = std::sqrt(r.energy.sum());
  if (r.Ltt.size() > 0) rec.C2 = std::sqrt(r.Ltt.cwiseInverse().squaredNorm());
  if (qronos) return;
  const bool refitted = gq.refit.row_after.size() > 0;
  const double objective = refitted ? gq.refit.after : r.energy.sum();
  const double lambda = refitted ? gq.refit.lambda : r.lambda;
  const double drift = (W.cast<double>() - gq.dequantized.cast<double>()).squaredNorm();
  rec.h_error = std::max(0.0, objective - lambda * drift);
}

/// W quantized at damp `d` (nullopt: the method's default) from `g`; NumericalError naming the tensor.
pptq::ggml::GgmlQuant<float> quantize_at(const pptq::Matrix<float>& W, const TensorGrams& g, pptq::ggml::Type format,
                                         const Options& o, std::optional<double> d, const std::string& who) {
  MethodOptions m = method_options(o);
  if (d) m.damp = *d;
  return pptq_tools::on_input_data(who, [&] { return quantize_with(W, g, format, m); });
}

/// --damp auto: every candidate on the calibration Gram, judged on the held-out one.
pptq::DampChoice choose(const pptq::Matrix<float>& W, const TensorGrams& cal, const Eigen::MatrixXd& test,
                        pptq::ggml::Type format, const Options& o, const std::string& who) {
  struct Run {
    bool ok;
    double lambda;
    pptq::Matrix<float> Q;
  };
  return pptq::choose_damp(W, cal.H, test, pptq::default_damps(), [&](double d) {
    pptq::ggml::GgmlQuant<float> gq = quantize_at(W, cal, format, o, d, who);
    return Run{gq.result.ok(), gq.result.lambda, std::move(gq.dequantized)};
  });
}

/// The held-out Gram of --damp auto for tensor `name`: --heldout-grams' or the split of its samples.
std::optional<Eigen::MatrixXd> heldout_of(const std::string& name, const Sources& src, JobGrams& jg) {
  if (src.heldout) return src.heldout->grams_of(name).H;
  if (jg.test.size() > 0) return jg.test;
  return std::nullopt;
}

/// Requantizes W with its Grams into `format`: replaces t's type and data and fills the record. Throws
/// DataError on input the library rejects and NumericalError when the sweep fails, both naming the tensor.
void requantize_matrix(pptq::gguf::TensorInfo& t, const pptq::Matrix<float>& W, JobGrams& jg, TensorGrams& g,
                       const Sources& src, const Options& o, pptq::ggml::Type format, TensorRecord& rec) {
  const std::string who = tensor_label(t) + ": ";
  std::optional<double> damp;
  if (o.damp_auto) {
    const std::optional<Eigen::MatrixXd> test = heldout_of(t.name, src, jg);
    if (!test) throw DataError(who + "--damp auto needs held-out inputs: NAME.X.npy samples or --heldout-grams");
    TensorGrams cal = g;
    if (jg.cal.size() > 0) cal.H = jg.cal;
    rec.damp_auto = choose(W, cal, *test, format, o, who);
    damp = rec.damp_auto->damp;
  }
  pptq::ggml::GgmlQuant<float> gq = quantize_at(W, g, format, o, damp, who);
  if (!gq.result.ok())
    throw pptq::NumericalError(who + pptq::to_string(gq.result.status) + ": " + gq.result.message);
  const bool qronos = o.method == Method::Qronos;
  rec.damp = damp ? *damp : method_options(o).damp.value_or(0.0);
  rec.lambda = gq.result.lambda;
  rec.escalated = gq.result.status == pptq::Status::DampingEscalated;
  rec.refit_gain = gq.refit.gain();
  rec.clipped = gq.result.clipped_total();
  result_figures(gq, W, qronos, rec);
  // Qronos minimizes another objective than (w − q)ᵀH̃(w − q): plain rounding is compared with OPTQ only.
  compare_rows(W, gq.dequantized, g.H, format, optq_options(method_options(o)).fit, !qronos, rec);
  t.type = format;
  t.data = std::move(gq.bytes);
}

/// "[k/n] NAME: done in ... s, ...": the progress line of one requantized matrix.
std::string done_line(const std::string& tag, const TensorRecord& r, bool refit) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(2);
  os << tag << ": done in " << r.seconds << " s";
  os.unsetf(std::ios::fixed);
  os.precision(4);
  if (r.rtn_over_method) {
    os << ", H-error of plain rounding / OPTQ " << *r.rtn_over_method << "x";
    if (r.compared_rows < r.rows) os << " (on " << r.compared_rows << " of " << r.rows << " rows)";
  }
  if (r.damp_auto) os << ", damp " << r.damp << " (auto)";
  os << ", lambda " << r.lambda << (r.escalated ? " (damping escalated)" : "");
  if (refit) os << ", refit gain " << r.refit_gain;
  if (r.clipped > 0) os << ", " << r.clipped << " of " << r.rows * r.cols << " weights clamped to the format's range";
  return os.str();
}

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

/// The Grams of a matrix with a Hessian: from the Gram file, or from its job's .npy (split for --damp auto
/// when it holds samples).
JobGrams grams_for(const pptq::gguf::TensorInfo& m, const Job& job, const Sources& src, const Options& o,
                   pptq::Index cols, TensorGrams& g) {
  JobGrams jg;
  if (src.grams) {
    g = src.grams->grams_of(m.name);
  } else {
    jg = load_hessian(job, m, cols, o.damp_auto && !src.heldout);
    g.H = std::move(jg.H);  // one cols × cols H at a time: the largest tensor's H is most of the peak
  }
  return jg;
}

/// One matrix of a step (a 2-d tensor, or one expert of a 3-d one, in `m` with ne = [in, out]) into s.to:
/// the method with `job`'s Hessian, plain rounding without one, or F16.
TensorRecord run_matrix(pptq::gguf::TensorInfo& m, const Step& s, const std::optional<Job>& job, const Sources& src,
                        const Options& o, const std::string& tag) {
  const auto t0 = Clock::now();
  TensorRecord rec;
  rec.name = m.name;
  rec.rows = static_cast<std::int64_t>(m.ne[1]);
  rec.cols = static_cast<std::int64_t>(m.ne[0]);
  rec.from = m.type;
  rec.bytes_in = m.data.size();
  rec.rule = s.why;
  const pptq::Matrix<float> W = decode_weight(m);
  if (s.action == Action::ToF16) {
    to_f16(m, W);
    rec.action = Action::ToF16;
  } else if (!job) {
    round_tensor(m, W, o, s.to);
    rec.action = Action::Rtn;
  } else {
    TensorGrams g;
    JobGrams jg = grams_for(m, *job, src, o, W.cols(), g);
    requantize_matrix(m, W, jg, g, src, o, s.to, rec);
    rec.action = Action::Optq;
  }
  rec.to = m.type;
  rec.bytes_out = m.data.size();
  rec.seconds = seconds_since(t0);
  if (rec.action == Action::Optq) say(o, done_line(tag, rec, o.refit));
  return rec;
}

/// A step of a 3-d tensor (ne = [in, out, n_expert]): expert by expert, each its own matrix.
void run_experts(pptq::gguf::TensorInfo& t, const Step& s, const Options& o, const std::string& tag,
                 std::vector<TensorRecord>& records) {
  const std::size_t in_bytes = pptq::ggml::row_bytes(t.type, static_cast<std::int64_t>(t.ne[0])) * t.ne[1];
  std::vector<std::uint8_t> out;
  for (std::uint64_t e = 0; e < t.ne[2]; ++e) {
    pptq::gguf::TensorInfo m;  // expert e, named like its tensor (messages name the tensor)
    m.name = t.name;
    m.ne = {t.ne[0], t.ne[1]};
    m.type = t.type;
    m.data.assign(t.data.begin() + static_cast<std::ptrdiff_t>(e * in_bytes),
                  t.data.begin() + static_cast<std::ptrdiff_t>((e + 1) * in_bytes));
    const std::optional<Job> none;
    const auto& job = s.experts.empty() ? none : s.experts[e];
    records.push_back(run_matrix(m, s, job, Sources{}, o, tag + " expert " + std::to_string(e)));
    records.back().expert = e;
    out.insert(out.end(), m.data.begin(), m.data.end());
  }
  t.type = s.to;
  t.data = std::move(out);
}

}  // namespace

MethodOptions method_options(const Options& o) {
  MethodOptions m;
  m.method = o.method;
  if (o.method != Method::Qronos || o.damp_given) m.damp = o.damp;
  m.seed = o.seed;
  m.refit = o.refit;
  m.threads = o.threads;
  return m;
}

pptq::gguf::File output_index(const pptq::gguf::File& model, const RecipePlan& plan) {
  pptq::gguf::File out = model;
  for (const Step& s : plan.steps)
    if (s.action != Action::Copy) out.tensors[s.tensor].type = s.action == Action::ToF16 ? pptq::ggml::Type::F16 : s.to;
  return out;
}

namespace {
void run_step_records(pptq::gguf::TensorInfo& t, const Step& s, const Sources& src, const Options& o,
                      const std::string& tag, std::vector<TensorRecord>& records) {
  if (s.action == Action::Copy) {
    TensorRecord rec;
    rec.name = t.name;
    rec.rows = t.ne.size() > 1 ? static_cast<std::int64_t>(t.ne[1]) : 1;
    rec.cols = static_cast<std::int64_t>(t.ne[0]);
    rec.from = rec.to = t.type;
    rec.bytes_in = rec.bytes_out = t.nbytes();
    rec.rule = s.why;
    records.push_back(rec);
    return;
  }
  // A recipe says why each tensor gets its type; a plain format, where the Hessian came from.
  const std::string with = o.method != Method::Optq ? std::string(" with ") + method_name(o.method) : "";
  const std::string how = o.recipe ? " (" + std::string(action_name(s.action)) + (s.action == Action::Optq ? with : "") +
                                         "; " + s.why + ")"
                                   : (s.job && s.job->from_inputs ? " (H = X^T X)" : "") + with;
  say(o, tag + ": " + shape_str(static_cast<std::int64_t>(t.ne[1]), static_cast<std::int64_t>(t.ne[0])) +
             (t.ne.size() == 3 ? " x " + std::to_string(t.ne[2]) + " experts" : "") + " " +
             pptq::ggml::type_name(t.type) + " -> " + pptq::ggml::type_name(s.to) + how + " ...");
  if (t.ne.size() == 3)
    run_experts(t, s, o, tag, records);
  else
    records.push_back(run_matrix(t, s, s.job, src, o, tag));
}
}  // namespace

void run_step(pptq::gguf::TensorInfo& t, const Step& s, const Sources& src, const Options& o, const std::string& tag,
              std::vector<TensorRecord>& records) {
  const std::size_t first = records.size();
  run_step_records(t, s, src, o, tag, records);
  for (std::size_t k = first; k < records.size(); ++k) records[k].tensor = s.tensor;
}


void stream_steps(pptq::gguf::Reader& model, const RecipePlan& plan, const Sources& src, const Options& o,
                  pptq::gguf::StreamWriter& out, std::vector<TensorRecord>& records) {
  std::size_t n = 0, k = 0;
  for (const Step& s : plan.steps) n += s.action != Action::Copy;
  for (const Step& s : plan.steps) {
    pptq::gguf::TensorInfo t = model.index().tensors[s.tensor];
    t.data = model.load(s.tensor);
    const std::string tag = "[" + std::to_string(k + (s.action != Action::Copy)) + "/" + std::to_string(n) + "] " + t.name;
    k += s.action != Action::Copy;
    run_step(t, s, src, o, tag, records);
    out.write(t.data);
  }
}

}  // namespace pptq_gguf
