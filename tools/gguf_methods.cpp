// pptq-gguf requantize --method (gguf_methods.hpp).
#include "gguf_methods.hpp"

#include <pptq/qronos.hpp>

#include <Eigen/Cholesky>

#include <utility>

namespace pptq_gguf {

const char* method_name(Method m) {
  switch (m) {
    case Method::Optq: return "optq";
    case Method::OptqStochastic: return "optq-stochastic";
    case Method::Qronos: return "qronos";
  }
  return "optq";
}

Method parse_method(const std::string& name) {
  for (Method m : {Method::Optq, Method::OptqStochastic, Method::Qronos})
    if (name == method_name(m)) return m;
  throw pptq::UsageError("--method must be one of optq, optq-stochastic, qronos, got '" + name + "'");
}

pptq::ggml::QuantizeOptions optq_options(const MethodOptions& o) {
  pptq::ggml::QuantizeOptions q;
  if (o.damp) q.optq.damp = *o.damp;
  if (o.method == Method::OptqStochastic) {
    q.optq.rounding = pptq::Rounding::Stochastic;
    q.optq.seed = o.seed;
  }
  q.optq.threads = o.threads;
  // Nothing the tool does afterwards reads the factor (the refit works from H, the report from the
  // result's energy and L_tt, which are kept anyway): not keeping it saves cols² floats at the peak.
  q.optq.keep_factor = false;
  q.fit.threads = o.threads;
  q.refit = o.refit;
  q.refit_options.threads = o.threads;
  return q;
}

namespace {

/// Qronos's target W̃: per row w̃ = (H̃ + λI)⁻¹(Gw + λw) = w + (H̃ + λI)⁻¹(G − H̃)w, the minimizer of
/// ‖Xw − X̃v‖² + λ‖v − w‖² (docs/theory.md §5.4). For any q that objective equals
/// (w̃ − q)ᵀ(H̃ + λI)(w̃ − q) plus a constant, so the format's refit (which lowers exactly that form for a
/// target and a Gram) run on (W̃, H̃) lowers Qronos's own objective, as on (W, H) it lowers OPTQ's.
/// Empty when H̃ + λI cannot be factored (then no refit).
pptq::Matrix<float> refit_target(const pptq::Matrix<float>& W, const TensorGrams& g, double lambda) {
  Eigen::MatrixXd A = g.H;
  A.diagonal().array() += lambda;
  const Eigen::LLT<Eigen::MatrixXd> llt(A);
  if (llt.info() != Eigen::Success) return {};
  const Eigen::MatrixXd Wt = W.cast<double>().transpose();  // cols × rows
  Eigen::MatrixXd target = Wt + llt.solve((g.cross - g.H) * Wt);
  if (!target.allFinite()) return {};
  return target.transpose().cast<float>();
}

pptq::ggml::GgmlQuant<float> quantize_qronos(const pptq::Matrix<float>& W, const TensorGrams& g, pptq::ggml::Type format,
                                             const MethodOptions& o) {
  if (g.cross.size() == 0)
    throw pptq::UsageError("--method qronos needs the cross Grams of calibrate --quantized-model in the Gram file");
  pptq::ggml::GgmlQuant<float> out;
  out.type = format;
  pptq::ggml::FitOptions fit;
  fit.threads = o.threads;
  const Eigen::VectorXd importance = g.H.diagonal().cwiseMax(0.0);
  const pptq::Grid<float> grid = pptq::ggml::fit_format_grid(W, format, importance, fit);
  pptq::QronosOptions qo;
  qo.damp = o.damp;  // unset: λ = alpha·λ_max(H̃), the library's (and pptq-quantize's) default
  qo.threads = o.threads;
  out.result = pptq::qronos_from_grams(W, g.H, g.cross, grid, qo);
  if (!out.result.ok()) return out;
  if (o.refit) {
    const pptq::Matrix<float> target = refit_target(W, g, out.result.lambda);
    pptq::ggml::RefitOptions ro;
    ro.threads = o.threads;
    if (target.size() != 0) out.refit = pptq::ggml::refit_format_grid(target, g.H, out.result, format, ro);
  }
  out.codes = out.result.codes;
  out.bytes = pptq::ggml::to_bytes(out.result, format);
  out.dequantized = pptq::ggml::dequantize_bytes(out.bytes, W.rows(), W.cols(), format);
  out.result.dequantized = out.dequantized;  // ggml's decode of the bytes, bit for bit
  out.bits_per_weight = 8.0 * static_cast<double>(out.bytes.size()) / static_cast<double>(W.rows() * W.cols());
  return out;
}

}  // namespace

pptq::ggml::GgmlQuant<float> quantize_with(const pptq::Matrix<float>& W, const TensorGrams& g, pptq::ggml::Type format,
                                          const MethodOptions& o) {
  if (o.method == Method::Qronos) return quantize_qronos(W, g, format, o);
  return pptq::ggml::quantize_optq(W, g.H, format, optq_options(o));
}

double method_extra_memory(Method m, double rows, double cols) {
  if (m != Method::Qronos) return 0;
  // G, H̃ + λI and its factor, G − H̃ (cols × cols doubles); W̃ and its transposes (rows × cols doubles).
  return 4.0 * 8.0 * cols * cols + 3.0 * 8.0 * rows * cols;
}

}  // namespace pptq_gguf
