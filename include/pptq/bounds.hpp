// The bound module (spec math.md §3, §4, §5.5; documented in docs/bounds.md): the constants C2, Cw, C∞
// of a quantization run, the a-priori error bounds they give, the exact a-posteriori certificate, the
// alphabet size that rules out clipping, a per-layer report that sets all of these against the
// measured errors, λ guidance (§3.5) and the adversarial example of §4.4.
//
// Everything is computed from the SAME factor the quantizer used (QuantResult::factor, kept by default),
// through U = inverse_factor(result) (factor.hpp): U upper with (H_π + λI)⁻¹ = UᵀU, i.e. U = Lᵀ in the spec's
// notation, so L_ts = U(s, t), L_tt = U(t, t). No second factorization is made when the factor is kept
// (one triangular inverse, N³/3 FLOPs, which the quantizer itself no longer needs).
//
// The statements are RECONSTRUCTED (spec §0): the paper's text was not available; each one here is
// derived from first principles (docs/bounds.md) and checked numerically by tests/test_bounds.cpp.
#pragma once

#include "common.hpp"
#include "factor.hpp"
#include "detail/factor.hpp"
#include "detail/prepare.hpp"
#include "grid.hpp"
#include "optq.hpp"
#include "result.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace pptq {

// ------------------------------------------------------------------------------------------------
// Constants
// ------------------------------------------------------------------------------------------------

/// The constants of spec §3.2, §3.4, §4.2 for one (X, λ, order). All on the scale of X (H = XᵀX).
struct BoundConstants {
  double lambda = 0;               ///< λ on the scale of XᵀX
  Index cols = 0;                  ///< N
  double C2 = 0;                   ///< sqrt(Σ_t 1/L_tt²)                               (spec §3.2)
  double C2_max = 0;               ///< √N · max_t 1/L_tt  (≥ C2)
  double Cw = 0;                   ///< max_t sqrt(Σ_{s<t} L_ts²/L_ss²)                  (spec §3.4)
  std::optional<double> Cinf;      ///< max_i ‖(X_π L D⁻¹)_{i,:}‖₂, needs X              (spec §4.2)
  std::optional<double> Cinf_crude;///< sqrt(λ + max_t ‖X_t‖²) ≥ C∞, needs X or diag(H)
  Eigen::VectorXd inv_Ltt_sq;      ///< 1/L_tt² in sweep order (C2² is their sum)
  std::vector<Index> perm;         ///< the sweep order they belong to
};

namespace detail {

/// X's scale from the factor's: the quantizer was given H = h·XᵀX and λ_H, so U_X = √h·U_H,
/// λ_X = λ_H/h; the ratios U(s,t)/U(s,s) (hence Cw and C∞) do not depend on h.
inline BoundConstants constants_from_factor(const Eigen::Ref<const Eigen::MatrixXd>& U, const std::vector<Index>& perm,
                                            double lambda_H, double h_scale) {
  const Index N = U.rows();
  BoundConstants c;
  c.lambda = lambda_H / h_scale;
  c.cols = N;
  c.perm = perm;
  c.inv_Ltt_sq.resize(N);
  double mx = 0, cw2 = 0;
  for (Index t = 0; t < N; ++t) {
    const double d = static_cast<double>(U(t, t));
    c.inv_Ltt_sq(t) = 1.0 / (h_scale * d * d);
    mx = std::max(mx, c.inv_Ltt_sq(t));
    double s = 0;
    for (Index k = 0; k < t; ++k) {
      const double v = static_cast<double>(U(k, t)) / static_cast<double>(U(k, k));
      s += v * v;
    }
    cw2 = std::max(cw2, s);
  }
  c.C2 = std::sqrt(c.inv_Ltt_sq.sum());
  c.C2_max = std::sqrt(static_cast<double>(N) * mx);
  c.Cw = std::sqrt(cw2);
  return c;
}

/// U of a result, after checking it has a factor and that h_scale is valid.
template <typename S>
Eigen::MatrixXd checked_inverse_factor(const QuantResult<S>& r, double h_scale) {
  if (!r.factor) fail("constants: the result holds no factor (RTN/GPFQ, or keep_factor = false)");
  if (!(h_scale > 0)) fail("constants: h_scale must be > 0, got " + str(h_scale));
  return inverse_factor(r);
}

/// V → U = V⁻¹ in place: GPTQ's factor (spec §2) from the Cholesky factor the quantizer uses.
inline void invert_factor(Eigen::Ref<Eigen::MatrixXd> V) {
  const int threads = V.rows() < 1024 ? 1 : resolve_threads(0);  // before the scope sets it to 1
  SerialEigenScope serial;
  invert_upper_inplace<double>(V, threads);
}

/// A = X_π L D⁻¹ (m × N): column t is a_t = X L_{:,t}/L_tt (spec §4.2). One triangular GEMM, O(mN²).
inline Eigen::MatrixXd scaled_inputs(const Eigen::Ref<const Eigen::MatrixXd>& U, const std::vector<Index>& perm,
                                     const Eigen::Ref<const Eigen::MatrixXd>& X) {
  const Index N = U.rows(), m = X.rows();
  Eigen::MatrixXd M = Eigen::MatrixXd::Zero(N, N);  // M = (D⁻¹U)ᵀ = L D⁻¹, lower
  for (Index t = 0; t < N; ++t)
    for (Index s = 0; s <= t; ++s) M(t, s) = static_cast<double>(U(s, t)) / static_cast<double>(U(s, s));
  Eigen::MatrixXd Xp(m, N);
  for (Index k = 0; k < N; ++k) Xp.col(k) = X.col(perm[k]);
  Eigen::MatrixXd A = Xp * M.triangularView<Eigen::Lower>();
  return A;
}

/// XᵀX through a symmetric rank update (half the flops of a GEMM).
inline Eigen::MatrixXd gram_of(const Eigen::Ref<const Eigen::MatrixXd>& X) {
  Eigen::MatrixXd H = Eigen::MatrixXd::Zero(X.cols(), X.cols());
  H.selfadjointView<Eigen::Lower>().rankUpdate(X.transpose());
  H.triangularView<Eigen::StrictlyUpper>() = H.transpose();
  return H;
}

inline double max_col_sq_norm(const Eigen::Ref<const Eigen::MatrixXd>& X) {
  return X.cols() ? X.colwise().squaredNorm().maxCoeff() : 0.0;
}

template <typename DerivedH>
Matrix<double> gram_as_double(const Eigen::MatrixBase<DerivedH>& H) {
  return H.derived().template cast<double>();
}

}  // namespace detail

/// Constants of a result from its kept factor. Without X: C∞ is unavailable and so is its crude bound.
template <typename S>
BoundConstants constants(const QuantResult<S>& r, double h_scale = 1.0) {
  return detail::constants_from_factor(detail::checked_inverse_factor(r, h_scale), r.perm, r.lambda, h_scale);
}

/// Constants of a result with the X whose Gram (times h_scale) the quantizer factored (for Qronos: X̃).
/// Adds C∞ (O(m N²)) and its crude bound.
template <typename S, typename DerivedX>
BoundConstants constants(const QuantResult<S>& r, const Eigen::MatrixBase<DerivedX>& X, double h_scale = 1.0) {
  const Eigen::MatrixXd U = detail::checked_inverse_factor(r, h_scale);  // once, for both uses below
  const Eigen::Ref<const Eigen::MatrixXd> Xd(X.derived().template cast<double>());
  if (Xd.cols() != U.rows()) detail::fail("constants: X has " + detail::str(Xd.cols()) + " columns, the factor " + detail::str(U.rows()));
  BoundConstants c = detail::constants_from_factor(U, r.perm, r.lambda, h_scale);
  const Eigen::MatrixXd A = detail::scaled_inputs(U, r.perm, Xd);
  c.Cinf = std::sqrt(A.rowwise().squaredNorm().maxCoeff());
  c.Cinf_crude = std::sqrt(c.lambda + detail::max_col_sq_norm(Xd));
  return c;
}

/// Standalone: factor XᵀX + λI in the given order (empty perm: natural) and compute every constant.
template <typename DerivedX>
BoundConstants constants_from_inputs(const Eigen::MatrixBase<DerivedX>& X, double lambda, std::vector<Index> perm = {}) {
  const Eigen::Ref<const Eigen::MatrixXd> Xd(X.derived().template cast<double>());
  detail::require_nonempty(Xd, "X");
  detail::require_finite(Xd, "X");
  if (!(lambda > 0) || !std::isfinite(lambda)) detail::fail("constants_from_inputs: lambda must be > 0, got " + detail::str(lambda));
  const Index N = Xd.cols();
  perm = detail::column_order(Eigen::VectorXd::Ones(N), false, perm);  // validates; empty: natural order
  const Eigen::MatrixXd H = detail::gram_of(Xd);
  detail::Damping d;
  d.lambda = lambda;
  d.escalate = false;
  auto f = detail::factor_permuted<double>(H, perm, {}, d);
  if (f.status == Status::NumericalIssue) detail::fail("constants_from_inputs: " + f.message);
  detail::invert_factor(f.V);  // U = V⁻¹
  BoundConstants c = detail::constants_from_factor(f.V, perm, lambda, 1.0);
  const Eigen::MatrixXd A = detail::scaled_inputs(f.V, perm, Xd);
  c.Cinf = std::sqrt(A.rowwise().squaredNorm().maxCoeff());
  c.Cinf_crude = std::sqrt(lambda + detail::max_col_sq_norm(Xd));
  return c;
}

/// Standalone from a Gram H = XᵀX (λ on H's scale): no C∞, crude bound from diag(H).
template <typename DerivedH>
BoundConstants constants_from_gram(const Eigen::MatrixBase<DerivedH>& H, double lambda, std::vector<Index> perm = {}) {
  const Matrix<double> Hd = detail::gram_as_double(H);
  detail::require_gram(Hd, Hd.cols(), "H");
  if (!(lambda > 0) || !std::isfinite(lambda)) detail::fail("constants_from_gram: lambda must be > 0, got " + detail::str(lambda));
  const Index N = Hd.cols();
  perm = detail::column_order(Eigen::VectorXd::Ones(N), false, perm);
  detail::Damping d;
  d.lambda = lambda;
  d.escalate = false;
  auto f = detail::factor_permuted<double>(Hd, perm, {}, d);
  if (f.status == Status::NumericalIssue) detail::fail("constants_from_gram: " + f.message);
  detail::invert_factor(f.V);  // U = V⁻¹
  BoundConstants c = detail::constants_from_factor(f.V, perm, lambda, 1.0);
  c.Cinf_crude = std::sqrt(lambda + Hd.diagonal().maxCoeff());
  return c;
}

// ------------------------------------------------------------------------------------------------
// Bounds as plain formulas (uniform δ; the report handles a δ per column)
// ------------------------------------------------------------------------------------------------

/// √(½ log(2n/η)): the Azuma–Hoeffding + union factor over n events.
inline double azuma_factor(double n, double eta) { return std::sqrt(0.5 * std::log(2.0 * n / eta)); }

/// Spec §3.2: ‖X(w − q)‖₂ ≤ (δ/2)·C2 (nearest rounding, no clipping).
inline double l2_bound(double delta, const BoundConstants& c) { return 0.5 * delta * c.C2; }
/// Spec §3.2: ‖w − q‖₂ ≤ (δ/2)·C2/√λ.
inline double weight_l2_bound(double delta, const BoundConstants& c) { return 0.5 * delta * c.C2 / std::sqrt(c.lambda); }
/// Spec §4.2: with probability ≥ 1 − η, ‖X(w − q)‖_∞ ≤ δ·√(½ log(2m/η))·C∞ (stochastic, no clipping).
inline std::optional<double> stochastic_linf_bound(double delta, const BoundConstants& c, Index m, double eta) {
  if (!c.Cinf) return std::nullopt;
  return delta * azuma_factor(static_cast<double>(m), eta) * *c.Cinf;
}
/// Spec §4.2: E[‖X(w−q)‖² + λ‖w−q‖²] ≤ (δ²/4)·C2².
inline double stochastic_expected_energy_bound(double delta, const BoundConstants& c) { return 0.25 * delta * delta * c.C2 * c.C2; }
/// Spec §3.4: max_t |w^(t−1)_t − w_t| ≤ (δ/2)·√N·Cw (deterministic).
inline double drift_bound(double delta, const BoundConstants& c) {
  return 0.5 * delta * std::sqrt(static_cast<double>(c.cols)) * c.Cw;
}
/// Spec §4.2: with probability ≥ 1 − η, max_t |w^(t−1)_t − w_t| ≤ δ·√(½ log(2N/η))·Cw (stochastic).
inline double stochastic_drift_bound(double delta, const BoundConstants& c, double eta) {
  return delta * azuma_factor(static_cast<double>(c.cols), eta) * c.Cw;
}
/// Spec §5.5: ‖Xw − X̃q‖₂ ≤ sqrt(R_λ² + (δ²/4)·C2(X̃, λ)²) (least-squares-then-OPTQ form, nearest, no clipping).
inline double qronos_l2_bound(double R_lambda, double delta, const BoundConstants& ct) {
  return std::sqrt(R_lambda * R_lambda + 0.25 * delta * delta * ct.C2 * ct.C2);
}
/// Spec §5.5: with probability ≥ 1 − η, ‖Xw − X̃q‖_∞ ≤ ‖Xw − X̃w̃‖_∞ + δ·√(½ log(2m/η))·C∞(X̃, λ).
inline std::optional<double> qronos_stochastic_linf_bound(double ls_residual_inf, double delta, const BoundConstants& ct,
                                                          Index m, double eta) {
  auto b = stochastic_linf_bound(delta, ct, m, eta);
  if (!b) return std::nullopt;
  return ls_residual_inf + *b;
}

/// Alphabet size that rules out clipping (spec §3.4, §4.3): the midtread A_K = {kδ : |k| ≤ K}.
struct AlphabetSize {
  double K_min = 0;  ///< the real-valued requirement
  long K = 0;        ///< ⌈K_min⌉
  int bits = 0;      ///< ⌈log2(2K + 1)⌉
};

inline AlphabetSize alphabet_from_K(double K_min) {
  AlphabetSize a;
  a.K_min = K_min;
  a.K = static_cast<long>(std::ceil(K_min - 1e-12));
  if (a.K < 0) a.K = 0;
  a.bits = static_cast<int>(std::ceil(std::log2(2.0 * static_cast<double>(a.K) + 1.0) - 1e-12));
  return a;
}

/// Deterministic: K ≥ ‖w‖_∞/δ + ½(C2/√λ + 1). Stochastic (probability ≥ 1 − η):
/// K ≥ ‖w‖_∞/δ + √(½ log(2N/η))·Cw.
inline AlphabetSize alphabet_size(double w_inf, double delta, const BoundConstants& c, Rounding rounding, double eta = 0.05) {
  if (!(delta > 0)) detail::fail("alphabet_size: delta must be > 0, got " + detail::str(delta));
  if (rounding == Rounding::Nearest) return alphabet_from_K(w_inf / delta + 0.5 * (c.C2 / std::sqrt(c.lambda) + 1.0));
  return alphabet_from_K(w_inf / delta + azuma_factor(static_cast<double>(c.cols), eta) * c.Cw);
}

// ------------------------------------------------------------------------------------------------
// The report
// ------------------------------------------------------------------------------------------------

struct ReportOptions {
  double eta = 0.05;          ///< failure probability of the stochastic statements, for the whole layer
  double h_scale = 1.0;       ///< the quantizer was given H = h_scale·XᵀX (e.g. 2/n for GPTQ's mean Hessian)
  bool compare_rtn = false;   ///< also measure RTN on the result's own grid (one more GEMM)
  bool rtn_constants = false; ///< RTN results: factor XᵀX + λI (λ = rtn_damp·mean diag, act order) for C2 etc.
  double rtn_damp = 0.01;
  double tolerance = -1;      ///< relative slack when checking bound ≥ measured; < 0: 1e-9 (double), 1e-4 (float)

  void check() const {
    if (!(eta > 0 && eta < 1)) detail::fail("ReportOptions.eta must be in (0, 1), got " + detail::str(eta));
    if (!(h_scale > 0) || !std::isfinite(h_scale)) detail::fail("ReportOptions.h_scale must be > 0 and finite, got " + detail::str(h_scale));
    if (!(rtn_damp > 0) || !std::isfinite(rtn_damp)) detail::fail("ReportOptions.rtn_damp must be > 0 and finite, got " + detail::str(rtn_damp));
    if (!std::isfinite(tolerance)) detail::fail("ReportOptions.tolerance must be finite, got " + detail::str(tolerance));
  }
};

/// One bound set against what it bounds. Not applicable: `bound` and `holds` are empty and `why_not` says why.
struct BoundCheck {
  std::string name;               ///< "l2", "linf", "weight_l2", "drift", "rtn_l2", "rtn_linf"
  std::string statement;          ///< what is claimed, with the spec section
  bool probabilistic = false;     ///< holds with probability ≥ 1 − η (for the whole layer)
  std::optional<double> bound;    ///< layer figure: l2 → sqrt(Σ_rows b²); linf, drift → max over rows
  std::optional<double> measured; ///< the same aggregate of the measured quantity
  std::optional<double> ratio;    ///< bound / measured
  std::optional<bool> holds;      ///< every row within its bound (empty: not evaluated)
  std::string why_not;
  Eigen::VectorXd row_bound, row_measured;  ///< per row (empty when not applicable)
};

struct LayerReport {
  Method method = Method::OPTQ;
  Rounding rounding = Rounding::Nearest;
  bool mismatched = false;        ///< errors are ‖XWᵀ − X̃Qᵀ‖ (Qronos, GPFQ, or any method given X̃)
  Index rows = 0, cols = 0;
  std::optional<Index> samples;   ///< m (empty when only H was given)
  double lambda = 0;              ///< λ on the scale of XᵀX (result's λ / h_scale); 0 without a factor
  double eta = 0.05;
  Index clipped = 0;

  // measured
  Eigen::VectorXd err_l2;         ///< per row ‖Xw − X̃q‖₂ (X̃ = X when matched)
  double err_fro = 0;
  std::optional<double> err_linf; ///< largest |entry| of XWᵀ − X̃Qᵀ (needs X)
  double ref_fro = 0;             ///< ‖XWᵀ‖_F
  double rel_fro = 0;             ///< err_fro / ref_fro (0 when ref_fro = 0)
  std::optional<double> rtn_fro;  ///< same error for RTN on the same grid (compare_rtn)
  std::optional<double> rtn_rel_fro;
  Eigen::VectorXd weight_l2;      ///< per row ‖w − q‖₂

  // a-posteriori certificate: cert² = R_λ² + Σ_t ẽ_t²/L_tt² = ‖Xw − X̃q‖² + λ‖w − q‖² exactly
  std::optional<Eigen::VectorXd> certificate;      ///< per row (empty for RTN, GPFQ)
  std::optional<Eigen::VectorXd> certificate_lhs;  ///< per row sqrt(‖Xw − X̃q‖² + λ‖w − q‖²), measured
  std::optional<double> certificate_fro;           ///< sqrt(Σ_rows cert²) ≥ err_fro
  std::optional<double> certificate_gap;           ///< max_rows |cert² − lhs²| / lhs²: an exactness self-check

  std::optional<BoundConstants> constants;         ///< of the factored Gram (X̃'s for Qronos)
  std::optional<Eigen::VectorXd> R_lambda;         ///< Qronos: per row sqrt(‖Xw − X̃w̃‖² + λ‖w̃ − w‖²)
  std::optional<Eigen::VectorXd> ls_residual_inf;  ///< Qronos: per row ‖Xw − X̃w̃‖_∞

  BoundCheck l2, linf, weight_l2_check, drift;     ///< OPTQ / Qronos
  BoundCheck rtn_l2, rtn_linf;                     ///< RTN
  std::optional<double> expected_energy_bound;     ///< stochastic: Σ_rows bound on E[energy] (spec §4.2)
  std::optional<double> energy;                    ///< Σ_rows Σ_t ẽ_t²/L_tt² measured (X scale)
  std::optional<AlphabetSize> alphabet;            ///< the K (per layer: max over rows) that rules out clipping

  bool holds = true;              ///< every evaluated bound holds
  std::vector<std::string> notes;

  std::vector<const BoundCheck*> checks() const { return {&l2, &linf, &weight_l2_check, &drift, &rtn_l2, &rtn_linf}; }
  std::string summary() const;
};

namespace detail {

inline void finish_check(BoundCheck& b, double tol, bool sum_squares) {
  if (b.row_bound.size() == 0) return;
  bool ok = true;
  for (Index r = 0; r < b.row_bound.size(); ++r)
    if (!(b.row_measured(r) <= b.row_bound(r) * (1 + tol) + 1e-300)) ok = false;
  b.holds = ok;
  if (sum_squares) {
    b.bound = b.row_bound.norm();
    b.measured = b.row_measured.norm();
  } else {
    b.bound = b.row_bound.maxCoeff();
    b.measured = b.row_measured.maxCoeff();
  }
  if (*b.measured > 0) b.ratio = *b.bound / *b.measured;
}

inline void not_applicable(BoundCheck& b, const std::string& why) {
  b.why_not = why;
  b.bound.reset();
  b.holds.reset();
  b.ratio.reset();
}

/// The shared body: W (rows × N), X (m × N, may be null), Xt (X̃, may be null), H (N × N, may be null).
template <typename S>
LayerReport layer_report_impl(const QuantResult<S>& r, const Eigen::Ref<const Eigen::MatrixXd>& W,
                              const Eigen::Ref<const Eigen::MatrixXd>* X, const Eigen::Ref<const Eigen::MatrixXd>* Xt,
                              const Eigen::Ref<const Eigen::MatrixXd>* H, const ReportOptions& opt) {
  opt.check();
  require_nonempty(W, "W");
  require_finite(W, "W");
  if (!r.ok()) fail("layer_report: the result failed (" + std::string(to_string(r.status)) + "): " + r.message);
  if (r.rows() != W.rows() || r.cols() != W.cols())
    fail("layer_report: the result is " + str(r.rows()) + " x " + str(r.cols()) + " but W is " + str(W.rows()) + " x " +
         str(W.cols()));
  const Index rows = W.rows(), N = W.cols();
  if (X) {
    require_nonempty(*X, "X");
    if (X->cols() != N) fail("layer_report: X has " + str(X->cols()) + " columns but W has " + str(N));
    require_finite(*X, "X");
  }
  if (Xt) {
    if (Xt->rows() != X->rows() || Xt->cols() != X->cols())
      fail("layer_report: Xq (X-tilde) is " + str(Xt->rows()) + " x " + str(Xt->cols()) + " but X is " + str(X->rows()) +
           " x " + str(X->cols()) + " (same samples, same columns)");
    require_finite(*Xt, "Xq");
  }
  if (H) require_gram(*H, N, "H");
  if (static_cast<Index>(r.perm.size()) != N) fail("layer_report: the result's perm has " + str(r.perm.size()) + " entries");

  const double tol = opt.tolerance >= 0 ? opt.tolerance : (std::is_same_v<S, float> ? 1e-4 : 1e-9);
  LayerReport rep;
  rep.method = r.method;
  rep.rounding = r.rounding;
  rep.mismatched = Xt != nullptr;
  rep.rows = rows;
  rep.cols = N;
  rep.eta = opt.eta;
  rep.clipped = r.clipped_total();
  if (X) rep.samples = X->rows();
  rep.l2.name = "l2";
  rep.linf.name = "linf";
  rep.weight_l2_check.name = "weight_l2";
  rep.drift.name = "drift";
  rep.rtn_l2.name = "rtn_l2";
  rep.rtn_linf.name = "rtn_linf";
  const char* not_run = "does not apply to this method";
  for (BoundCheck* b : {&rep.l2, &rep.linf, &rep.weight_l2_check, &rep.drift, &rep.rtn_l2, &rep.rtn_linf}) b->why_not = not_run;

  const Eigen::MatrixXd Q = r.dequantized.template cast<double>();
  const Eigen::MatrixXd D = W - Q;  // rows × N
  rep.weight_l2 = D.rowwise().norm();

  // ---- measured errors: one GEMM X(W − Q)ᵀ (matched) or XWᵀ − X̃Qᵀ (mismatched), plus ‖XWᵀ‖
  Eigen::MatrixXd Y;  // X Wᵀ (m × rows), when X is given
  Eigen::MatrixXd E;  // the error matrix (m × rows)
  if (X) {
    Y.noalias() = (*X) * W.transpose();
    if (Xt) {
      E = Y;
      E.noalias() -= (*Xt) * Q.transpose();
    } else {
      E.noalias() = (*X) * D.transpose();
    }
    rep.err_l2 = E.colwise().norm().transpose();
    rep.err_linf = E.cwiseAbs().maxCoeff();
    rep.ref_fro = Y.norm();
  } else {
    const Eigen::MatrixXd HD = D * (*H);  // rows × N
    const Eigen::MatrixXd HW = W * (*H);
    rep.err_l2.resize(rows);
    double ref2 = 0;
    for (Index i = 0; i < rows; ++i) {
      rep.err_l2(i) = std::sqrt(std::max(0.0, HD.row(i).dot(D.row(i)) / opt.h_scale));
      ref2 += HW.row(i).dot(W.row(i)) / opt.h_scale;
    }
    rep.ref_fro = std::sqrt(std::max(0.0, ref2));
  }
  rep.err_fro = rep.err_l2.norm();
  rep.rel_fro = rep.ref_fro > 0 ? rep.err_fro / rep.ref_fro : 0.0;

  if (opt.compare_rtn) {
    Eigen::MatrixXd Qr(rows, N);
    for (Index j = 0; j < N; ++j)
      for (Index i = 0; i < rows; ++i) {
        const auto lat = r.grid.lattice(i, j);
        bool c = false;
        Qr(i, j) = static_cast<double>(lat.value(lat.nearest(static_cast<S>(W(i, j)), c)));
      }
    double f;
    if (X) {
      Eigen::MatrixXd Er;
      if (Xt) {
        Er = Y;
        Er.noalias() -= (*Xt) * Qr.transpose();
      } else {
        Er.noalias() = (*X) * (W - Qr).transpose();
      }
      f = Er.norm();
    } else {
      const Eigen::MatrixXd Dr = W - Qr;
      f = std::sqrt(std::max(0.0, (Dr * (*H)).cwiseProduct(Dr).sum() / opt.h_scale));
    }
    rep.rtn_fro = f;
    if (rep.ref_fro > 0) rep.rtn_rel_fro = f / rep.ref_fro;
  }

  const bool clipped = rep.clipped > 0;
  const std::string clip_note = "not applicable: " + str(rep.clipped) +
                                " rounding argument(s) fell outside the grid (clipping); the bound assumes none. "
                                "Use a larger alphabet (see `alphabet`) or the infinite alphabet";
  const bool stochastic = r.rounding == Rounding::Stochastic;
  const Index m = X ? X->rows() : 0;

  // δ per (row, sweep step)
  auto delta_matrix = [&](const std::vector<Index>& perm) {
    Eigen::MatrixXd Dl(rows, N);
    for (Index t = 0; t < N; ++t)
      for (Index i = 0; i < rows; ++i) Dl(i, t) = static_cast<double>(r.grid.lattice(i, perm[t]).step());
    return Dl;
  };
  auto uniform_rows = [&](const Eigen::MatrixXd& Dl) {
    for (Index i = 0; i < rows; ++i)
      if (Dl.row(i).maxCoeff() != Dl.row(i).minCoeff()) return false;
    return true;
  };
  // max_i Σ_t δ_{r,t}² A(i,t)² per row r: with one δ per row it is δ_r²·max_i ‖A_{i,:}‖²; otherwise one GEMM.
  auto azuma_rows = [&](const Eigen::MatrixXd& A, const Eigen::MatrixXd& Dl) {
    Eigen::VectorXd out(rows);
    if (uniform_rows(Dl)) {
      const double a2 = A.rowwise().squaredNorm().maxCoeff();
      for (Index i = 0; i < rows; ++i) out(i) = std::sqrt(Dl(i, 0) * Dl(i, 0) * a2);
    } else {
      const Eigen::MatrixXd G = A.cwiseAbs2() * Dl.cwiseAbs2().transpose();  // m × rows
      for (Index i = 0; i < rows; ++i) out(i) = std::sqrt(G.col(i).maxCoeff());
    }
    return out;
  };

  // ---------------------------------------------------------------- GPFQ
  if (r.method == Method::GPFQ) {
    rep.notes.push_back("GPFQ has no bound in this library: the theory reconstructed in docs/bounds.md covers OPTQ and "
                        "Qronos; measured errors only");
    rep.holds = true;
    return rep;
  }

  // ---------------------------------------------------------------- RTN
  if (r.method == Method::RTN) {
    rep.notes.push_back("RTN has no factor and no certificate; its bounds are the triangle-inequality/Azuma ones of "
                        "spec §3.2 (\"Contrast RTN\")");
    if (Xt) {
      rep.notes.push_back("mismatched form: RTN bounds refer to the matched problem and are not evaluated");
    } else {
      Eigen::VectorXd colnorm(N);
      for (Index j = 0; j < N; ++j)
        colnorm(j) = X ? X->col(j).norm() : std::sqrt(std::max(0.0, (*H)(j, j) / opt.h_scale));
      const Eigen::MatrixXd Dl = delta_matrix(r.perm);  // perm is the identity for RTN
      rep.rtn_l2.statement = stochastic ? "||X(w-q)||_2 <= sum_t delta_t ||X_t|| (|e_t| < delta, no clipping)"
                                        : "||X(w-q)||_2 <= (1/2) sum_t delta_t ||X_t|| (nearest, no clipping; spec 3.2)";
      if (clipped) {
        not_applicable(rep.rtn_l2, clip_note);
      } else {
        rep.rtn_l2.why_not.clear();
        Eigen::VectorXd b(rows);
        for (Index i = 0; i < rows; ++i) {
          double s = 0;
          for (Index t = 0; t < N; ++t) s += Dl(i, t) * colnorm(r.perm[t]);
          b(i) = (stochastic ? 1.0 : 0.5) * s;
        }
        rep.rtn_l2.row_bound = b;
        rep.rtn_l2.row_measured = rep.err_l2;
        finish_check(rep.rtn_l2, tol, true);
      }
      rep.rtn_linf.statement = "P[ ||X(W-Q)^T||_max <= sqrt(1/2 log(2 m rows/eta)) max_i sqrt(sum_t delta_t^2 X_it^2) ] >= 1-eta";
      rep.rtn_linf.probabilistic = true;
      if (!stochastic) {
        not_applicable(rep.rtn_linf, "deterministic rounding: the Azuma l-infinity bound is for stochastic rounding");
      } else if (!X) {
        not_applicable(rep.rtn_linf, "needs X (only H was given)");
      } else if (clipped) {
        not_applicable(rep.rtn_linf, clip_note);
      } else {
        rep.rtn_linf.why_not.clear();
        Eigen::MatrixXd Xp(m, N);
        for (Index k = 0; k < N; ++k) Xp.col(k) = X->col(r.perm[k]);
        const double af = azuma_factor(static_cast<double>(m) * static_cast<double>(rows), opt.eta);
        rep.rtn_linf.row_bound = af * azuma_rows(Xp, Dl);
        rep.rtn_linf.row_measured = E.cwiseAbs().colwise().maxCoeff().transpose();
        finish_check(rep.rtn_linf, tol, false);
      }
    }
    if (opt.rtn_constants) {
      if (Xt) {
        rep.notes.push_back("rtn_constants: not computed in the mismatched form");
      } else {
        Eigen::MatrixXd Hd = X ? gram_of(*X) : Eigen::MatrixXd(*H / opt.h_scale);
        const double lam = opt.rtn_damp * Hd.diagonal().mean();
        const std::vector<Index> perm = column_order(Hd.diagonal(), true, {});
        Damping d;
        d.lambda = lam > 0 ? lam : 1e-12;
        d.escalate = false;
        auto f = factor_permuted<double>(Hd, perm, {}, d);
        if (f.status != Status::NumericalIssue) {
          invert_factor(f.V);  // U = V⁻¹
          BoundConstants c = constants_from_factor(f.V, perm, d.lambda, 1.0);
          if (X) {
            c.Cinf = std::sqrt(scaled_inputs(f.V, perm, *X).rowwise().squaredNorm().maxCoeff());
            c.Cinf_crude = std::sqrt(c.lambda + max_col_sq_norm(*X));
          } else {
            c.Cinf_crude = std::sqrt(c.lambda + Hd.diagonal().maxCoeff());
          }
          rep.constants = c;
          rep.notes.push_back("constants: what OPTQ with act-order and lambda = " + str(d.lambda) +
                              " would guarantee on this layer (a fresh factorization)");
        }
      }
    }
    for (const BoundCheck* b : rep.checks())
      if (b->holds && !*b->holds) rep.holds = false;
    return rep;
  }

  // ---------------------------------------------------------------- OPTQ / Qronos
  const bool qronos = r.method == Method::Qronos;
  if (!r.factor) {
    rep.notes.push_back("the result holds no factor (keep_factor = false): measured errors only");
    return rep;
  }
  const Eigen::MatrixXd U = inverse_factor(r);
  if (U.rows() != N) fail("layer_report: the result's factor is " + str(U.rows()) + " x " + str(U.cols()));
  if (qronos && !Xt && X)
    rep.notes.push_back("Qronos result given one input matrix: it is taken as X-tilde = X (no mismatch, R_lambda = 0)");
  if (!qronos && Xt)
    rep.notes.push_back("mismatched form for a method that ignores X-tilde: measured errors only (the bounds are for "
                        "the matched problem: call layer_report(r, W, X))");

  // Inputs the factor belongs to: X̃ for Qronos, X otherwise.
  const Eigen::Ref<const Eigen::MatrixXd>* Xg = (qronos && Xt) ? Xt : X;
  rep.lambda = r.lambda / opt.h_scale;
  const double lam = rep.lambda;

  // Consistency: 1/U_NN² must be h·(‖X_last‖² + λ) (or h·(1 + λ)-ish for a dead column): catches a wrong X or h_scale.
  {
    const Index last = r.perm[N - 1];
    const double u = static_cast<double>(U(N - 1, N - 1));
    const double got = 1.0 / (u * u);
    double col2 = Xg ? Xg->col(last).squaredNorm() : (*H)(last, last);
    if (Xg) col2 *= opt.h_scale;
    const double want = col2 == 0 ? 1.0 + r.lambda : col2 + r.lambda;
    const double want_nofix = col2 + r.lambda;
    const double ctol = std::is_same_v<S, float> ? 1e-3 : 1e-7;
    if (std::abs(got - want) > ctol * want && std::abs(got - want_nofix) > ctol * want_nofix)
      fail("layer_report: the result's factor does not belong to the inputs given: 1/U_NN^2 = " + str(got) +
           " but h_scale*||X_" + str(last) + "||^2 + lambda = " + str(want_nofix) +
           ". Pass the X (X-tilde for Qronos) whose Gram the quantizer used, or set ReportOptions.h_scale");
  }

  BoundConstants c = constants_from_factor(U, r.perm, r.lambda, opt.h_scale);
  Eigen::MatrixXd A;
  if (Xg) {
    A = scaled_inputs(U, r.perm, *Xg);
    c.Cinf = std::sqrt(A.rowwise().squaredNorm().maxCoeff());
    c.Cinf_crude = std::sqrt(lam + max_col_sq_norm(*Xg));
  } else {
    c.Cinf_crude = std::sqrt(lam + H->diagonal().maxCoeff() / opt.h_scale);
  }
  rep.constants = c;
  const Eigen::VectorXd& inv = c.inv_Ltt_sq;

  // Start point s of the sweep (w for OPTQ, w̃ for Qronos) and R_λ², ‖Xw − X̃w̃‖_∞.
  Eigen::MatrixXd Sw = W;  // rows × N, original order
  Eigen::VectorXd R2 = Eigen::VectorXd::Zero(rows), Rinf = Eigen::VectorXd::Zero(rows);
  if (qronos && Xt) {
    // w̃_πᵀ = h·UᵀU (X̃_πᵀ X w + λ w_π), λ on X's scale; U on H's scale.
    const Eigen::MatrixXd Bt = (Y.transpose() * (*Xt)).transpose();  // N × rows: X̃ᵀ X W
    Eigen::MatrixXd Bp(N, rows);
    for (Index k = 0; k < N; ++k) Bp.row(k) = Bt.row(r.perm[k]) + lam * W.col(r.perm[k]).transpose();
    const Eigen::MatrixXd Ud = U.template cast<double>();
    Eigen::MatrixXd T = Ud.triangularView<Eigen::Upper>() * Bp;
    const Eigen::MatrixXd Ld = Ud.transpose();  // L = Uᵀ
    Bp.noalias() = Ld.triangularView<Eigen::Lower>() * T;
    Bp *= opt.h_scale;
    for (Index k = 0; k < N; ++k) Sw.col(r.perm[k]) = Bp.row(k).transpose();
    Eigen::MatrixXd Res = Y;
    Res.noalias() -= (*Xt) * Sw.transpose();
    for (Index i = 0; i < rows; ++i) {
      R2(i) = Res.col(i).squaredNorm() + lam * (Sw.row(i) - W.row(i)).squaredNorm();
      Rinf(i) = Res.col(i).cwiseAbs().maxCoeff();
    }
    rep.R_lambda = R2.cwiseSqrt();
    rep.ls_residual_inf = Rinf;
  }

  // ---- certificate: R_λ² + energy/h = ‖Xw − X̃q‖² + λ‖w − q‖² (spec §3.1(iv), §5.5)
  if (r.energy.size() == rows) {
    Eigen::VectorXd cert(rows), lhs(rows);
    double gap = 0;
    for (Index i = 0; i < rows; ++i) {
      const double c2 = R2(i) + r.energy(i) / opt.h_scale;
      const double l2 = rep.err_l2(i) * rep.err_l2(i) + lam * rep.weight_l2(i) * rep.weight_l2(i);
      cert(i) = std::sqrt(std::max(0.0, c2));
      lhs(i) = std::sqrt(l2);
      if (l2 > 0) gap = std::max(gap, std::abs(c2 - l2) / l2);
    }
    rep.certificate = cert;
    rep.certificate_lhs = lhs;
    rep.certificate_fro = cert.norm();
    rep.certificate_gap = gap;
    rep.energy = r.energy.sum() / opt.h_scale;
    if (gap > (std::is_same_v<S, float> ? 1e-2 : 1e-6))
      rep.notes.push_back("certificate identity off by " + str(gap) +
                          " (relative): the inputs may not be those of the run, or the factor is ill-conditioned in this precision");
  }

  if (Xt && !qronos) {
    for (BoundCheck* b : {&rep.l2, &rep.linf, &rep.weight_l2_check, &rep.drift})
      not_applicable(*b, "mismatched form for a method that ignores X-tilde");
    return rep;
  }

  const Eigen::MatrixXd Dl = delta_matrix(r.perm);
  // ẽ_1 = s_{π(0)} − q_{π(0)}: for the sequential Qronos form it may exceed δ/2 (spec §5.5 "first-step excess").
  Eigen::VectorXd e1(rows);
  for (Index i = 0; i < rows; ++i) e1(i) = Sw(i, r.perm[0]) - Q(i, r.perm[0]);
  const double ef = stochastic ? 1.0 : 0.5;  // |e_t| ≤ ef·δ_t (sure)
  bool excess = false;
  Eigen::VectorXd S2(rows);  // Σ_t (ef δ_t)²/L_tt², first term max(·, ẽ_1²)
  for (Index i = 0; i < rows; ++i) {
    double s = 0;
    for (Index t = 0; t < N; ++t) {
      double et = ef * Dl(i, t);
      if (t == 0 && std::abs(e1(i)) > et * (1 + 1e-12)) {
        et = std::abs(e1(i));
        excess = true;
      }
      s += et * et * inv(t);
    }
    S2(i) = s;
  }
  if (excess)
    rep.notes.push_back("first rounding error exceeds the quantizer's |e| bound (sequential Qronos, spec §5.5): its "
                        "measured value is used in the l2 and weight bounds");

  // l2
  rep.l2.statement = std::string(qronos ? "||Xw - X~q||_2 <= sqrt(R_lambda^2 + " : "||X(w-q)||_2 <= sqrt(") +
                     (stochastic ? "sum_t delta_t^2/L_tt^2)  (stochastic: |e_t| < delta surely; spec 3.1(iv)" :
                                   "(1/4) sum_t delta_t^2/L_tt^2)  (nearest; spec ") +
                     (qronos ? "5.5)" : (stochastic ? ")" : "3.2)"));
  if (clipped) {
    not_applicable(rep.l2, clip_note);
  } else {
    rep.l2.why_not.clear();
    rep.l2.row_bound = (R2 + S2).cwiseSqrt();
    rep.l2.row_measured = rep.err_l2;
    finish_check(rep.l2, tol, true);
  }

  // weight l2: ‖s − q‖ ≤ sqrt(S2/λ)
  rep.weight_l2_check.statement = qronos ? "||w~ - q||_2 <= sqrt(sum_t e_t-bound^2/L_tt^2 / lambda) (spec 3.2 on X~)"
                                         : "||w - q||_2 <= (delta/2) C2/sqrt(lambda) (spec 3.2; delta instead of delta/2 for stochastic)";
  if (clipped) {
    not_applicable(rep.weight_l2_check, clip_note);
  } else {
    rep.weight_l2_check.why_not.clear();
    rep.weight_l2_check.row_bound = (S2 / lam).cwiseSqrt();
    rep.weight_l2_check.row_measured = (Sw - Q).rowwise().norm();
    finish_check(rep.weight_l2_check, tol, true);
  }

  // drift: max_t |w^(t−1)_t − s_t| ≤ bound, checked through max_t |q_t − s_t| ≤ bound + max|e_t|
  {
    const double sqN = std::sqrt(static_cast<double>(N));
    const double af = azuma_factor(static_cast<double>(N) * static_cast<double>(rows), opt.eta);
    rep.drift.statement = stochastic ? "P[ max_t |w^(t-1)_t - w_t| <= delta sqrt(1/2 log(2 N rows/eta)) Cw ] >= 1-eta (spec 4.2); "
                                       "checked as max_t |q_t - w_t| <= that + delta"
                                     : "max_t |w^(t-1)_t - w_t| <= (delta/2) sqrt(N) Cw (spec 3.4); checked as "
                                       "max_t |q_t - w_t| <= that + delta/2";
    rep.drift.probabilistic = stochastic;
    if (clipped) {
      not_applicable(rep.drift, clip_note);
    } else if (stochastic && excess) {
      not_applicable(rep.drift, "first rounding error is not a stochastic rounding error of the start point (sequential Qronos)");
    } else {
      rep.drift.why_not.clear();
      Eigen::VectorXd b(rows), meas(rows);
      for (Index i = 0; i < rows; ++i) {
        double dmax = Dl.row(i).maxCoeff();
        if (!stochastic) dmax = std::max(dmax, 2 * std::abs(e1(i)));
        const double drift = stochastic ? dmax * af * c.Cw : 0.5 * dmax * sqN * c.Cw;
        b(i) = drift + ef * dmax;
        meas(i) = (Sw.row(i) - Q.row(i)).cwiseAbs().maxCoeff();
      }
      rep.drift.row_bound = b;
      rep.drift.row_measured = meas;
      finish_check(rep.drift, tol, false);
    }
  }

  // stochastic l∞ (union over the layer's rows: η/rows per row)
  rep.linf.statement = std::string("P[ ||") + (qronos ? "Xw - X~q||_inf <= ||Xw - X~w~||_inf + " : "X(w-q)||_inf <= ") +
                       "sqrt(1/2 log(2 m rows/eta)) max_i sqrt(sum_t delta_t^2 a_ti^2) for every row ] >= 1-eta (spec " +
                       (qronos ? "5.5)" : "4.2)");
  rep.linf.probabilistic = true;
  if (!stochastic) {
    not_applicable(rep.linf, "deterministic rounding: the Azuma l-infinity bound is for stochastic rounding "
                             "(deterministic worst case is (delta/2) sqrt(N) Cinf, spec 4.2)");
  } else if (!Xg) {
    not_applicable(rep.linf, "needs X (only H was given)");
  } else if (clipped) {
    not_applicable(rep.linf, clip_note);
  } else if (excess) {
    not_applicable(rep.linf, "first rounding error is not a stochastic rounding error of the start point (sequential Qronos)");
  } else {
    rep.linf.why_not.clear();
    const double af = azuma_factor(static_cast<double>(m) * static_cast<double>(rows), opt.eta);
    rep.linf.row_bound = Rinf + af * azuma_rows(A, Dl);
    rep.linf.row_measured = E.cwiseAbs().colwise().maxCoeff().transpose();
    finish_check(rep.linf, tol, false);
    if (r.grid.dynamic)
      rep.notes.push_back("dynamic groups: their delta depends on the run so far; the Azuma statement is then "
                          "conditional (docs/bounds.md)");
  }
  if (stochastic && !clipped) {
    double s = 0;
    for (Index i = 0; i < rows; ++i)
      for (Index t = 0; t < N; ++t) s += 0.25 * Dl(i, t) * Dl(i, t) * inv(t);
    rep.expected_energy_bound = s;
  }

  // alphabet: the K (in units of each row's smallest δ) that rules out clipping, max over rows
  {
    double K = 0;
    const double af = azuma_factor(static_cast<double>(N) * static_cast<double>(rows), opt.eta);
    for (Index i = 0; i < rows; ++i) {
      const double dmin = Dl.row(i).minCoeff(), dmax = Dl.row(i).maxCoeff();
      if (!(dmin > 0)) continue;
      const double winf = Sw.row(i).cwiseAbs().maxCoeff();
      const double k = stochastic ? winf / dmin + (dmax / dmin) * af * c.Cw
                                  : winf / dmin + 0.5 * (dmax / dmin) * c.C2 / std::sqrt(lam) + 0.5;
      K = std::max(K, k);
    }
    rep.alphabet = alphabet_from_K(K);
  }

  for (const BoundCheck* b : rep.checks())
    if (b->holds && !*b->holds) rep.holds = false;
  return rep;
}

inline std::string fmt(double v) {
  std::ostringstream os;
  os.precision(5);
  os << v;
  return os.str();
}
inline std::string fmt(const std::optional<double>& v) { return v ? fmt(*v) : std::string("null"); }

}  // namespace detail

/// Report of a result on its own problem: W and X (XᵀX·h_scale is the H the quantizer used; for Qronos
/// pass X̃ here, or use the mismatched overload).
template <typename S, typename DerivedW, typename DerivedX>
LayerReport layer_report(const QuantResult<S>& r, const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedX>& X,
                         const ReportOptions& opt = {}) {
  const Eigen::Ref<const Eigen::MatrixXd> Wd(W.derived().template cast<double>());
  const Eigen::Ref<const Eigen::MatrixXd> Xd(X.derived().template cast<double>());
  return detail::layer_report_impl(r, Wd, &Xd, nullptr, nullptr, opt);
}

/// Mismatched report (Qronos, GPFQ, or any result judged on the mismatched objective): errors of XWᵀ − X̃Qᵀ.
template <typename S, typename DerivedW, typename DerivedX, typename DerivedXq>
LayerReport layer_report(const QuantResult<S>& r, const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedX>& X,
                         const Eigen::MatrixBase<DerivedXq>& Xq, const ReportOptions& opt = {}) {
  const Eigen::Ref<const Eigen::MatrixXd> Wd(W.derived().template cast<double>());
  const Eigen::Ref<const Eigen::MatrixXd> Xd(X.derived().template cast<double>());
  const Eigen::Ref<const Eigen::MatrixXd> Xqd(Xq.derived().template cast<double>());
  return detail::layer_report_impl(r, Wd, &Xd, &Xqd, nullptr, opt);
}

/// Report from the Gram H (= h_scale·XᵀX) only: no l∞ figures (null), no C∞.
template <typename S, typename DerivedW, typename DerivedH>
LayerReport layer_report_gram(const QuantResult<S>& r, const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& H,
                              const ReportOptions& opt = {}) {
  const Eigen::Ref<const Eigen::MatrixXd> Wd(W.derived().template cast<double>());
  const Eigen::Ref<const Eigen::MatrixXd> Hd(H.derived().template cast<double>());
  return detail::layer_report_impl(r, Wd, nullptr, nullptr, &Hd, opt);
}

inline std::string LayerReport::summary() const {
  using detail::fmt;
  std::ostringstream os;
  os << "pptq layer report: " << to_string(method) << " (" << (rounding == Rounding::Nearest ? "nearest" : "stochastic")
     << ")" << (mismatched ? ", mismatched" : "") << ", " << rows << " x " << cols;
  if (samples) os << ", m = " << *samples;
  os << ", lambda = " << fmt(lambda) << ", eta = " << eta << ", clipped = " << clipped << "\n";
  os << "  error: fro " << fmt(err_fro) << ", linf " << fmt(err_linf) << ", relative " << fmt(rel_fro);
  if (rtn_fro) os << " (RTN: fro " << fmt(*rtn_fro) << ", relative " << fmt(rtn_rel_fro) << ")";
  os << "\n";
  if (certificate_fro) os << "  certificate (fro): " << fmt(*certificate_fro) << "  (identity gap " << fmt(certificate_gap) << ")\n";
  if (constants)
    os << "  constants: C2 " << fmt(constants->C2) << ", C2_max " << fmt(constants->C2_max) << ", Cw " << fmt(constants->Cw)
       << ", Cinf " << fmt(constants->Cinf) << " (crude " << fmt(constants->Cinf_crude) << ")\n";
  if (R_lambda) os << "  R_lambda (fro over rows): " << fmt(R_lambda->norm()) << "\n";
  for (const BoundCheck* b : checks()) {
    if (b->why_not == "does not apply to this method") continue;
    os << "  " << b->name << ": ";
    if (b->bound)
      os << "bound " << fmt(b->bound) << ", measured " << fmt(b->measured) << ", bound/measured " << fmt(b->ratio)
         << (b->holds && *b->holds ? ", holds" : ", VIOLATED") << (b->probabilistic ? " (probabilistic)" : "");
    else
      os << b->why_not;
    os << "\n";
  }
  if (expected_energy_bound) os << "  E[energy] bound " << fmt(*expected_energy_bound) << ", energy " << fmt(energy) << "\n";
  if (alphabet) os << "  no-clipping alphabet: K >= " << fmt(alphabet->K_min) << " (" << alphabet->bits << " bits)\n";
  for (const auto& n : notes) os << "  note: " << n << "\n";
  os << "  all evaluated bounds hold: " << (holds ? "yes" : "NO") << "\n";
  return os.str();
}

// ------------------------------------------------------------------------------------------------
// λ guidance (spec §3.5)
// ------------------------------------------------------------------------------------------------

struct LambdaPoint {
  double c = 0, lambda = 0;
  double C2 = 0, Cw = 0;
  std::optional<double> bound;    ///< layer l2 bound (null when clipping made it inapplicable)
  double measured = 0;            ///< ‖X(W − Q)ᵀ‖_F on the calibration X
  std::optional<double> heldout;  ///< ‖X_test(W − Q)ᵀ‖_F
  Index clipped = 0;
};

struct LambdaGuide {
  std::vector<LambdaPoint> points;
  Index best = -1;                ///< index into points
  double lambda = 0, c = 0;       ///< the recommendation
  std::string rule;
};

namespace detail {
template <typename DerivedW>
LambdaGuide lambda_sweep_impl(const Eigen::MatrixBase<DerivedW>& W, const Eigen::Ref<const Eigen::MatrixXd>& X,
                              const Eigen::Ref<const Eigen::MatrixXd>* Xtest, const GridSpec& grid, OptqOptions opt,
                              std::vector<double> cs) {
  if (cs.empty()) cs = {1e-4, 1e-3, 1e-2, 1e-1, 1.0};
  for (double c : cs)
    if (!(c > 0) || !std::isfinite(c)) fail("lambda_sweep: every c must be > 0 and finite, got " + str(c));
  require_nonempty(X, "X");
  require_finite(X, "X");
  if (X.cols() != W.cols()) fail("lambda_sweep: X has " + str(X.cols()) + " columns but W has " + str(W.cols()));
  if (Xtest) {
    if (Xtest->cols() != W.cols()) fail("lambda_sweep: X_test has " + str(Xtest->cols()) + " columns but W has " + str(W.cols()));
    require_finite(*Xtest, "X_test");
  }
  const Eigen::MatrixXd H = detail::gram_of(X);
  const double base = X.squaredNorm() / static_cast<double>(X.cols());
  const Eigen::Ref<const Eigen::MatrixXd> Wd(W.derived().template cast<double>());
  LambdaGuide g;
  opt.keep_factor = true;
  opt.escalate_damping = false;
  for (double c : cs) {
    opt.lambda = c * base;
    const auto r = optq(W, H, grid, opt);
    LambdaPoint p;
    p.c = c;
    p.lambda = *opt.lambda;
    p.clipped = r.clipped_total();
    if (r.ok()) {
      const LayerReport rep = layer_report(r, W, X);
      p.C2 = rep.constants->C2;
      p.Cw = rep.constants->Cw;
      p.bound = rep.l2.bound;
      p.measured = rep.err_fro;
      if (Xtest) p.heldout = ((*Xtest) * (Wd - r.dequantized.template cast<double>()).transpose()).norm();
    } else {
      p.measured = std::numeric_limits<double>::infinity();
    }
    g.points.push_back(p);
  }
  auto score = [&](const LambdaPoint& p) -> double {
    if (Xtest) return p.heldout ? *p.heldout : std::numeric_limits<double>::infinity();
    return p.bound ? *p.bound : std::numeric_limits<double>::infinity();
  };
  double best = std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < g.points.size(); ++i)
    if (score(g.points[i]) < best) {
      best = score(g.points[i]);
      g.best = static_cast<Index>(i);
    }
  if (Xtest) {
    g.rule = "smallest held-out error ||X_test (W - Q)^T||_F";
  } else if (g.best >= 0) {
    g.rule = "smallest layer l2 bound sqrt(sum_rows row_bound^2) (no held-out data given)";
  } else {
    g.rule = "no bound applicable (clipping at every lambda): smallest calibration error";
    for (std::size_t i = 0; i < g.points.size(); ++i)
      if (g.best < 0 || g.points[i].measured < g.points[g.best].measured) g.best = static_cast<Index>(i);
  }
  g.lambda = g.points[g.best].lambda;
  g.c = g.points[g.best].c;
  return g;
}
}  // namespace detail

/// Sweep λ = c·‖X‖_F²/N over `cs` (default 1e-4, 1e-3, 1e-2, 0.1, 1), running OPTQ (opt's other fields kept)
/// for each; recommend the smallest layer l2 bound.
template <typename DerivedW, typename DerivedX>
LambdaGuide lambda_sweep(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedX>& X, const GridSpec& grid,
                         const OptqOptions& opt = {}, const std::vector<double>& cs = {}) {
  const Eigen::Ref<const Eigen::MatrixXd> Xd(X.derived().template cast<double>());
  return detail::lambda_sweep_impl(W, Xd, nullptr, grid, opt, cs);
}

/// As above with held-out inputs: recommend the smallest held-out error ‖X_test(W − Q)ᵀ‖_F.
template <typename DerivedW, typename DerivedX, typename DerivedT>
LambdaGuide lambda_sweep(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedX>& X,
                         const Eigen::MatrixBase<DerivedT>& X_test, const GridSpec& grid, const OptqOptions& opt = {},
                         const std::vector<double>& cs = {}) {
  const Eigen::Ref<const Eigen::MatrixXd> Xd(X.derived().template cast<double>());
  const Eigen::Ref<const Eigen::MatrixXd> Td(X_test.derived().template cast<double>());
  return detail::lambda_sweep_impl(W, Xd, &Td, grid, opt, cs);
}

// ------------------------------------------------------------------------------------------------
// Adversarial example (spec §4.4)
// ------------------------------------------------------------------------------------------------

struct AdversarialExample {
  Eigen::MatrixXd X;  ///< H_N/√N (Sylvester Hadamard), N × N, orthonormal columns
  Eigen::VectorXd w;  ///< (½ − ε)δ·1
  Eigen::MatrixXd W;  ///< `rows` copies of wᵀ
  double delta = 1, eps = 0.05;
  /// What deterministic OPTQ attains on it: ‖X(w − q)‖_∞ = ‖X(w − q)‖₂ = (½ − ε)δ√N (q = 0).
  double deterministic_linf() const { return (0.5 - eps) * delta * std::sqrt(static_cast<double>(X.cols())); }
};

inline AdversarialExample adversarial_example(Index N, double delta = 1.0, double eps = 0.05, Index rows = 1) {
  if (N < 1 || (N & (N - 1)) != 0) detail::fail("adversarial_example: N must be a power of two, got " + detail::str(N));
  if (!(delta > 0)) detail::fail("adversarial_example: delta must be > 0, got " + detail::str(delta));
  if (!(eps > 0 && eps < 0.5)) detail::fail("adversarial_example: eps must be in (0, 1/2), got " + detail::str(eps));
  if (rows < 1) detail::fail("adversarial_example: rows must be >= 1, got " + detail::str(rows));
  AdversarialExample ex;
  ex.delta = delta;
  ex.eps = eps;
  ex.X.resize(N, N);
  ex.X(0, 0) = 1.0;
  for (Index n = 1; n < N; n *= 2) {  // H_2n = [H H; H −H]
    ex.X.block(0, n, n, n) = ex.X.block(0, 0, n, n);
    ex.X.block(n, 0, n, n) = ex.X.block(0, 0, n, n);
    ex.X.block(n, n, n, n) = -ex.X.block(0, 0, n, n);
  }
  ex.X /= std::sqrt(static_cast<double>(N));
  ex.w = Eigen::VectorXd::Constant(N, (0.5 - eps) * delta);
  ex.W = ex.w.transpose().replicate(rows, 1);
  return ex;
}

}  // namespace pptq
