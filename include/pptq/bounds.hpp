// The bound module (docs/theory.md §3, §4, §5.5; documented in docs/bounds.md): the constants C2, Cw, C∞
// of a quantization run, the a-priori error bounds they give, the exact a-posteriori certificate, the
// alphabet size that rules out clipping, a per-layer report that sets all of these against the
// measured errors (measure.hpp), and the adversarial example of docs/theory.md §4.4. The λ guidance of
// §3.5, which runs the quantizer, is lambda_sweep.hpp.
//
// Everything is computed from the SAME factor the quantizer used (QuantResult::factor, kept by default),
// through U = inverse_factor(result) (factor.hpp): U upper with (H_π + λI)⁻¹ = UᵀU, i.e. U = Lᵀ in the
// notation of docs/theory.md, so L_ts = U(s, t), L_tt = U(t, t). No second factorization is made when the
// factor is kept (one triangular inverse, N³/3 FLOPs, which the quantizer itself does not need).
//
// The statements are RECONSTRUCTED (docs/theory.md §0): the paper's text (arXiv 2508.04853) was not
// available; each one here is derived from first principles (docs/theory.md) and checked numerically by
// tests/test_bounds.cpp.
#pragma once

#include "common.hpp"
#include "factor.hpp"
#include "detail/any_matrix.hpp"
#include "detail/factor.hpp"
#include "detail/memory.hpp"
#include "detail/prepare.hpp"
#include "grid.hpp"
#include "measure.hpp"
#include "result.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace pptq {

// ------------------------------------------------------------------------------------------------
// Constants
// ------------------------------------------------------------------------------------------------

/// The constants of docs/theory.md §3.2, §3.4, §4.2 for one (X, λ, order). All on the scale of X (H = XᵀX).
struct BoundConstants {
  double lambda = 0;               ///< λ on the scale of XᵀX
  Index cols = 0;                  ///< N
  double C2 = 0;                   ///< sqrt(Σ_t 1/L_tt²)                   (docs/theory.md §3.2)
  double C2_max = 0;               ///< √N · max_t 1/L_tt  (≥ C2)
  double Cw = 0;                   ///< max_t sqrt(Σ_{s<t} L_ts²/L_ss²)      (docs/theory.md §3.4)
  std::optional<double> Cinf;      ///< max_i ‖(X_π L D⁻¹)_{i,:}‖₂, needs X  (docs/theory.md §4.2)
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

/// V → U = V⁻¹ in place: GPTQ's factor (docs/theory.md §2) from the Cholesky factor the quantizer uses.
inline void invert_factor(Eigen::Ref<Eigen::MatrixXd> V) {
  const int threads = V.rows() < 1024 ? 1 : resolve_threads(0);  // before the scope sets it to 1
  SerialEigenScope serial;
  invert_upper_inplace<double>(V, threads);
}

/// A = X_π L D⁻¹ (m × N): column t is a_t = X L_{:,t}/L_tt (docs/theory.md §4.2). One triangular GEMM, O(mN²).
inline Eigen::MatrixXd scaled_inputs(const Eigen::Ref<const Eigen::MatrixXd>& U, const std::vector<Index>& perm,
                                     const Eigen::Ref<const Eigen::MatrixXd>& X) {
  const Index N = U.rows(), m = X.rows();
  Eigen::MatrixXd M = Eigen::MatrixXd::Zero(N, N);  // M = (D⁻¹U)ᵀ = L D⁻¹, lower
  for (Index t = 0; t < N; ++t)
    for (Index s = 0; s <= t; ++s) M(t, s) = static_cast<double>(U(s, t)) / static_cast<double>(U(s, s));
  Eigen::MatrixXd Xp(m, N);
  advise_huge_pages(Xp.data(), static_cast<std::size_t>(Xp.size()) * sizeof(double));
  for (Index k = 0; k < N; ++k) Xp.col(k) = X.col(perm[k]);
  Eigen::MatrixXd A = zero_on_huge_pages<double>(m, N);
  A.noalias() += Xp * M.triangularView<Eigen::Lower>();
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
/// Throws NumericalError when XᵀX + λI is not positive definite in double (XᵀX overflows).
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
  if (f.status == Status::NumericalIssue) throw NumericalError("pptq: constants_from_inputs: " + f.message);
  detail::invert_factor(f.V);  // U = V⁻¹
  BoundConstants c = detail::constants_from_factor(f.V, perm, lambda, 1.0);
  const Eigen::MatrixXd A = detail::scaled_inputs(f.V, perm, Xd);
  c.Cinf = std::sqrt(A.rowwise().squaredNorm().maxCoeff());
  c.Cinf_crude = std::sqrt(lambda + detail::max_col_sq_norm(Xd));
  return c;
}

/// Standalone from a Gram H = XᵀX (λ on H's scale): no C∞, crude bound from diag(H). Throws
/// NumericalError when H + λI is not positive definite in double.
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
  if (f.status == Status::NumericalIssue) throw NumericalError("pptq: constants_from_gram: " + f.message);
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

/// docs/theory.md §3.2: ‖X(w − q)‖₂ ≤ (δ/2)·C2 (nearest rounding, no clipping).
inline double l2_bound(double delta, const BoundConstants& c) { return 0.5 * delta * c.C2; }
/// docs/theory.md §3.2: ‖w − q‖₂ ≤ (δ/2)·C2/√λ.
inline double weight_l2_bound(double delta, const BoundConstants& c) { return 0.5 * delta * c.C2 / std::sqrt(c.lambda); }
/// docs/theory.md §4.2: with probability ≥ 1 − η, ‖X(w − q)‖_∞ ≤ δ·√(½ log(2m/η))·C∞ (stochastic, no clipping).
inline std::optional<double> stochastic_linf_bound(double delta, const BoundConstants& c, Index m, double eta) {
  if (!c.Cinf) return std::nullopt;
  return delta * azuma_factor(static_cast<double>(m), eta) * *c.Cinf;
}
/// docs/theory.md §4.2: E[‖X(w−q)‖² + λ‖w−q‖²] ≤ (δ²/4)·C2².
inline double stochastic_expected_energy_bound(double delta, const BoundConstants& c) { return 0.25 * delta * delta * c.C2 * c.C2; }
/// docs/theory.md §3.4: max_t |w^(t−1)_t − w_t| ≤ (δ/2)·√N·Cw (deterministic).
inline double drift_bound(double delta, const BoundConstants& c) {
  return 0.5 * delta * std::sqrt(static_cast<double>(c.cols)) * c.Cw;
}
/// docs/theory.md §4.2: with probability ≥ 1 − η, max_t |w^(t−1)_t − w_t| ≤ δ·√(½ log(2N/η))·Cw (stochastic).
inline double stochastic_drift_bound(double delta, const BoundConstants& c, double eta) {
  return delta * azuma_factor(static_cast<double>(c.cols), eta) * c.Cw;
}
/// docs/theory.md §5.5: ‖Xw − X̃q‖₂ ≤ sqrt(R_λ² + (δ²/4)·C2(X̃, λ)²) (least-squares-then-OPTQ form, nearest, no clipping).
inline double qronos_l2_bound(double R_lambda, double delta, const BoundConstants& ct) {
  return std::sqrt(R_lambda * R_lambda + 0.25 * delta * delta * ct.C2 * ct.C2);
}
/// docs/theory.md §5.5: with probability ≥ 1 − η, ‖Xw − X̃q‖_∞ ≤ ‖Xw − X̃w̃‖_∞ + δ·√(½ log(2m/η))·C∞(X̃, λ).
inline std::optional<double> qronos_stochastic_linf_bound(double ls_residual_inf, double delta, const BoundConstants& ct,
                                                          Index m, double eta) {
  auto b = stochastic_linf_bound(delta, ct, m, eta);
  if (!b) return std::nullopt;
  return ls_residual_inf + *b;
}

/// Alphabet size that rules out clipping (docs/theory.md §3.4, §4.3): the midtread A_K = {kδ : |k| ≤ K}.
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
  /// Products with X (or H) as large as the layer: every row's error and ‖Xw‖, RTN's error on every row,
  /// the l∞ errors, C∞ and the l∞ bound. false: for an OPTQ result (its energy kept) the l2 errors come
  /// from the sweep's energy identity (docs/theory.md §3.1 (iv)), ‖Xw‖ and RTN's error are measured on
  /// `sample_rows` evenly spaced rows (LayerReport::sampled_rows), and the l∞ figures are null: a report
  /// at a small fraction of the quantization's cost (docs/bounds.md). Other methods are measured in full.
  bool products_with_x = true;
  Index sample_rows = 256;    ///< rows measured when products_with_x is false (all rows if the layer has fewer)

  void check() const {
    if (!(eta > 0 && eta < 1)) detail::fail("ReportOptions.eta must be in (0, 1), got " + detail::str(eta));
    if (!(h_scale > 0) || !std::isfinite(h_scale)) detail::fail("ReportOptions.h_scale must be > 0 and finite, got " + detail::str(h_scale));
    if (!(rtn_damp > 0) || !std::isfinite(rtn_damp)) detail::fail("ReportOptions.rtn_damp must be > 0 and finite, got " + detail::str(rtn_damp));
    if (!std::isfinite(tolerance)) detail::fail("ReportOptions.tolerance must be finite, got " + detail::str(tolerance));
    if (sample_rows < 1) detail::fail("ReportOptions.sample_rows must be >= 1, got " + detail::str(sample_rows));
  }
};

/// Where one bound of a report stands. Code tests this; BoundCheck::why_not says the same to a human.
enum class CheckState {
  NotEvaluated,   ///< the method has no such bound (drift for RTN, anything for GPFQ, a run without its factor)
  NotApplicable,  ///< the method has it, but its hypothesis fails here (clipping, no X, deterministic rounding, ...)
  Holds,          ///< evaluated: every row within its bound (up to ReportOptions::tolerance)
  Violated,       ///< evaluated: some row exceeds its bound
};

inline const char* to_string(CheckState s) {
  switch (s) {
    case CheckState::NotEvaluated: return "not evaluated";
    case CheckState::NotApplicable: return "not applicable";
    case CheckState::Holds: return "holds";
    case CheckState::Violated: return "violated";
  }
  return "unknown";
}

/// One bound set against what it bounds. Unless evaluated, `bound`, `measured`, `ratio`, `holds` are empty.
struct BoundCheck {
  std::string name;               ///< "l2", "linf", "weight_l2", "drift", "rtn_l2", "rtn_linf"
  std::string statement;          ///< what is claimed, with its section of docs/theory.md
  bool probabilistic = false;     ///< holds with probability ≥ 1 − η (for the whole layer)
  CheckState state = CheckState::NotEvaluated;
  std::optional<double> bound;    ///< layer figure: l2 → sqrt(Σ_rows b²); linf, drift → max over rows
  std::optional<double> measured; ///< the same aggregate of the measured quantity
  std::optional<double> ratio;    ///< bound / measured
  std::optional<bool> holds;      ///< every row within its bound; set exactly when evaluated()
  std::string why_not;            ///< why it was not evaluated, for humans (empty when evaluated)
  Eigen::VectorXd row_bound, row_measured;  ///< per row (empty unless evaluated)

  bool evaluated() const { return state == CheckState::Holds || state == CheckState::Violated; }
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

  // measured (measure.hpp)
  Eigen::VectorXd err_l2;         ///< per row ‖Xw − X̃q‖₂ (X̃ = X when matched)
  double err_fro = 0;
  std::optional<double> err_linf; ///< largest |entry| of XWᵀ − X̃Qᵀ (needs X)
  double ref_fro = 0;             ///< ‖XWᵀ‖_F (sampled_rows: estimated, √(rows/n · Σ_sample ‖Xw‖²))
  double rel_fro = 0;             ///< err_fro / ref_fro (0 when ref_fro = 0; sampled_rows: on the sample's rows)
  /// Set when ref_fro, rel_fro, rtn_fro and rtn_rel_fro were measured on this many evenly spaced rows
  /// (ReportOptions::products_with_x = false); err_l2 and err_fro then come from the energy identity on
  /// every row, and are measured on the sampled rows (certificate_gap compares the two there).
  std::optional<Index> sampled_rows;
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
  std::optional<double> expected_energy_bound;     ///< stochastic: Σ_rows bound on E[energy] (docs/theory.md §4.2)
  std::optional<double> energy;                    ///< Σ_rows Σ_t ẽ_t²/L_tt² measured (X scale)
  std::optional<AlphabetSize> alphabet;            ///< the K (per layer: max over rows) that rules out clipping

  bool holds = true;              ///< every evaluated bound holds
  std::vector<std::string> notes;

  std::vector<const BoundCheck*> checks() const { return {&l2, &linf, &weight_l2_check, &drift, &rtn_l2, &rtn_linf}; }
  std::string summary() const;
};

namespace detail {

/// The reason given for a check the method has no such bound for (CheckState::NotEvaluated).
inline const char* const kNoSuchBound = "does not apply to this method";

/// Evaluates a check from its per-row bound and measured values (l2-type figures aggregate as
/// sqrt(Σ_rows ·²), l∞-type as max over rows).
inline void evaluate_check(BoundCheck& b, Eigen::VectorXd row_bound, Eigen::VectorXd row_measured, double tol, bool sum_squares) {
  bool ok = true;
  for (Index r = 0; r < row_bound.size(); ++r)
    if (!(row_measured(r) <= row_bound(r) * (1 + tol) + 1e-300)) ok = false;
  b.state = ok ? CheckState::Holds : CheckState::Violated;
  b.holds = ok;
  b.why_not.clear();
  b.bound = sum_squares ? row_bound.norm() : row_bound.maxCoeff();
  b.measured = sum_squares ? row_measured.norm() : row_measured.maxCoeff();
  if (*b.measured > 0) b.ratio = *b.bound / *b.measured;
  b.row_bound = std::move(row_bound);
  b.row_measured = std::move(row_measured);
}

inline void not_applicable(BoundCheck& b, const std::string& why) {
  b.state = CheckState::NotApplicable;
  b.why_not = why;
  b.bound.reset();
  b.holds.reset();
  b.ratio.reset();
}

/// A report holds unless one of its evaluated checks is violated.
inline void settle_holds(LayerReport& rep) {
  for (const BoundCheck* b : rep.checks())
    if (b->state == CheckState::Violated) rep.holds = false;
}

/// Per row of s − q, s the sweep's start point and q the result: ‖s − q‖₂, max_t |s_t − q_t|, ‖s‖_∞, and
/// s − q in the sweep's first column. Columns marked in `zero` have s = 0 (OPTQ's dead columns); without
/// marks s is the matrix given.
struct StartStats {
  Eigen::VectorXd l2, max_abs, s_max, e1;
};

/// One pass over S and Q in their own scalar types, a column at a time (each row's sum in column order).
template <typename MS, typename MQ>
StartStats start_stats(const MS& S, const MQ& Q, const std::vector<char>& zero, Index first) {
  const Index rows = S.rows(), N = S.cols();
  Eigen::VectorXd sq = Eigen::VectorXd::Zero(rows), mx = Eigen::VectorXd::Zero(rows), smax = Eigen::VectorXd::Zero(rows);
  const auto s_of = [&](Index i, Index j) { return zero.empty() || !zero[j] ? static_cast<double>(S(i, j)) : 0.0; };
  for (Index j = 0; j < N; ++j)
    for (Index i = 0; i < rows; ++i) {
      const double si = s_of(i, j), d = si - static_cast<double>(Q(i, j));
      sq(i) += d * d;
      mx(i) = std::max(mx(i), std::abs(d));
      smax(i) = std::max(smax(i), std::abs(si));
    }
  StartStats st;
  st.l2 = sq.cwiseSqrt();
  st.max_abs = std::move(mx);
  st.s_max = std::move(smax);
  st.e1.resize(rows);
  for (Index i = 0; i < rows; ++i) st.e1(i) = s_of(i, first) - static_cast<double>(Q(i, first));
  return st;
}

inline StartStats start_stats(const AnyMatrix& S, const AnyMatrix& Q, const std::vector<char>& zero, Index first) {
  return S.visit([&](const auto& Sm) { return Q.visit([&](const auto& Qm) { return start_stats(Sm, Qm, zero, first); }); });
}

/// What every check of one report reads: the problem as given, facts of the run, the measured errors.
struct ReportContext {
  ReportContext(const AnyMatrix& W_, const AnyMatrix& Q_, const ConstMatRef* X_, const ConstMatRef* Xt_,
                const ConstMatRef* H_, const ReportOptions& opt_)
      : Wd(W_), Qd(Q_), X(X_), Xt(Xt_), H(H_), opt(opt_) {}

  /// W and the result's Q (rows × N) as given, float or double: row reductions and sampled rows read
  /// them in place (any_matrix.hpp says why).
  const AnyMatrix& Wa() const { return Wd.source(); }
  const AnyMatrix& Qa() const { return Qd.source(); }
  /// The same in double, for the products with X or H; converted on the first call when float.
  const ConstMatRef& W() const { return Wd.get(); }
  const ConstMatRef& Q() const { return Qd.get(); }
  /// start_stats of W − Q (s = w, first = perm[0]), one pass made on the first call: ‖w − q‖ per row, and
  /// the start point's figures wherever OPTQ's start point is w itself.
  const StartStats& w_minus_q() const {
    if (!wq) wq = start_stats(Wa(), Qa(), {}, first);
    return *wq;
  }

  DoubleView Wd, Qd;
  const ConstMatRef* X;           ///< m × N, or null (only H given)
  const ConstMatRef* Xt;          ///< X̃ (mismatched form), or null
  const ConstMatRef* H;           ///< h_scale·XᵀX, or null (X given)
  const ReportOptions& opt;
  Index rows = 0, N = 0, m = 0;   ///< m = 0 without X
  double tol = 0;                 ///< relative slack of bound ≥ measured
  bool stochastic = false;
  bool clipped = false;
  std::string clip_note;          ///< why the bounds that assume no clipping do not apply
  Index first = 0;                ///< the sweep's first column, perm[0]
  mutable std::optional<StartStats> wq;  ///< w_minus_q(), once computed
  Eigen::MatrixXd Y;              ///< XWᵀ (m × rows), when X is given
  Eigen::VectorXd row_linf;       ///< per row ‖Xw − X̃q‖_∞, when X is given
};

template <typename S>
void validate_report(const QuantResult<S>& r, const AnyMatrix& W, const ConstMatRef* X, const ConstMatRef* Xt,
                     const ConstMatRef* H, const ReportOptions& opt) {
  opt.check();
  W.visit([](const auto& M) {
    require_nonempty(M, "W");
    require_finite(M, "W");
    return 0;
  });
  if (!r.ok()) fail("layer_report: the result failed (" + std::string(to_string(r.status)) + "): " + r.message);
  if (r.rows() != W.rows() || r.cols() != W.cols())
    fail("layer_report: the result is " + str(r.rows()) + " x " + str(r.cols()) + " but W is " + str(W.rows()) + " x " +
         str(W.cols()));
  const Index N = W.cols();
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
}

template <typename S>
ReportContext make_context(const QuantResult<S>& r, const AnyMatrix& W, const ConstMatRef* X, const ConstMatRef* Xt,
                           const ConstMatRef* H, const ReportOptions& opt) {
  ReportContext cx(W, AnyMatrix(r.dequantized), X, Xt, H, opt);
  cx.rows = W.rows();
  cx.N = W.cols();
  cx.m = X ? X->rows() : 0;
  cx.tol = opt.tolerance >= 0 ? opt.tolerance : (std::is_same_v<S, float> ? 1e-4 : 1e-9);
  cx.stochastic = r.rounding == Rounding::Stochastic;
  cx.clipped = r.clipped_total() > 0;
  cx.clip_note = "not applicable: " + str(r.clipped_total()) +
                 " rounding argument(s) fell outside the grid (clipping); the bound assumes none. "
                 "Use a larger alphabet (see `alphabet`) or the infinite alphabet";
  cx.first = r.perm.empty() ? 0 : r.perm[0];
  return cx;
}

/// The report's header: what was run, and every check named and not (yet) evaluated.
template <typename S>
LayerReport start_report(const QuantResult<S>& r, const ReportContext& cx) {
  LayerReport rep;
  rep.method = r.method;
  rep.rounding = r.rounding;
  rep.mismatched = cx.Xt != nullptr;
  rep.rows = cx.rows;
  rep.cols = cx.N;
  rep.eta = cx.opt.eta;
  rep.clipped = r.clipped_total();
  if (cx.X) rep.samples = cx.X->rows();
  rep.l2.name = "l2";
  rep.linf.name = "linf";
  rep.weight_l2_check.name = "weight_l2";
  rep.drift.name = "drift";
  rep.rtn_l2.name = "rtn_l2";
  rep.rtn_linf.name = "rtn_linf";
  for (BoundCheck* b : {&rep.l2, &rep.linf, &rep.weight_l2_check, &rep.drift, &rep.rtn_l2, &rep.rtn_linf})
    b->why_not = kNoSuchBound;
  return rep;
}

/// The measured errors (measure.hpp); keeps XWᵀ and the per-row l∞ errors for the checks.
inline void measure_into(LayerReport& rep, ReportContext& cx) {
  rep.weight_l2 = cx.w_minus_q().l2;
  MeasuredErrors e = cx.X ? measure_on_inputs(cx.W(), cx.Q(), *cx.X, cx.Xt, cx.Y)
                          : measure_on_gram(cx.W(), cx.Q(), *cx.H, cx.opt.h_scale);
  rep.err_l2 = std::move(e.row_l2);
  rep.err_fro = e.fro;
  rep.err_linf = e.linf;
  rep.ref_fro = e.ref_fro;
  rep.rel_fro = e.rel_fro;
  cx.row_linf = std::move(e.row_linf);
}

/// RTN's weights on the result's own grid: each weight to its nearest lattice point; rows `rs` of W only
/// when given (one row of the result per entry).
template <typename S, typename MW>
Eigen::MatrixXd nearest_on_grid(const QuantResult<S>& r, const MW& W, const std::vector<Index>& rs = {}) {
  const Index n = rs.empty() ? W.rows() : static_cast<Index>(rs.size());
  Eigen::MatrixXd Qr(n, W.cols());
  for (Index j = 0; j < W.cols(); ++j)
    for (Index k = 0; k < n; ++k) {
      const Index i = rs.empty() ? k : rs[static_cast<std::size_t>(k)];
      const auto lat = r.grid.lattice(i, j);
      bool c = false;
      Qr(k, j) = static_cast<double>(lat.value(lat.nearest(static_cast<S>(W(i, j)), c)));
    }
  return Qr;
}

/// The same error for RTN on the same grid: one more product (XWᵀ is reused).
template <typename S>
void compare_with_rtn(LayerReport& rep, const ReportContext& cx, const QuantResult<S>& r) {
  const Eigen::MatrixXd Qr = nearest_on_grid(r, cx.W());
  const double f = cx.X ? error_matrix(cx.W(), Qr, *cx.X, cx.Xt, cx.Y).norm()
                        : gram_error_rows(cx.W(), Qr, *cx.H, cx.opt.h_scale).norm();
  rep.rtn_fro = f;
  if (rep.ref_fro > 0) rep.rtn_rel_fro = f / rep.ref_fro;
}

/// Rows ⌊k·rows/n⌋, k < n: n evenly spaced rows (all of them when n ≥ rows).
inline std::vector<Index> evenly_spaced_rows(Index rows, Index n) {
  n = std::min(n, rows);
  std::vector<Index> out(static_cast<std::size_t>(n));
  for (Index k = 0; k < n; ++k) out[static_cast<std::size_t>(k)] = k * rows / n;
  return out;
}

/// Whether the l2 errors can come from the sweep's energy identity: an OPTQ result (its energy per row is
/// ‖X(s − q)‖² + λ‖s − q‖² on H's scale), matched, and no dead column (one no sample touches) with a
/// non-zero weight: there the start point s (0) and w differ, and a refit's energy is about w.
template <typename S>
bool energy_identity_applies(const QuantResult<S>& r, const ReportContext& cx) {
  if (cx.opt.products_with_x || cx.Xt || r.method != Method::OPTQ || r.energy.size() != cx.rows) return false;
  for (Index j = 0; j < cx.N; ++j) {
    const double d = cx.X ? cx.X->col(j).squaredNorm() : (*cx.H)(j, j);
    if (d == 0 && cx.Wa().visit([j](const auto& M) { return M.col(j).cwiseAbs().maxCoeff() > 0; })) return false;
  }
  return true;
}

/// ‖X a_i‖² (a_iᵀHa_i/h from H alone) of every row of A: one product with X or H.
inline Eigen::VectorXd output_sq_norms(const ReportContext& cx, const Eigen::MatrixXd& A) {
  if (cx.X) return layer_outputs(*cx.X, A).colwise().squaredNorm().transpose();
  return quadratic_rows(A, *cx.H, cx.opt.h_scale).cwiseMax(0.0);
}

/// The errors without products as large as the layer (ReportOptions::products_with_x = false): every row's
/// l2 error from the energy identity, and one product with the sampled rows of W, W − Q and W − RTN's Q.
template <typename S>
void measure_sampled(LayerReport& rep, const ReportContext& cx, const QuantResult<S>& r) {
  rep.weight_l2 = cx.w_minus_q().l2;
  const std::vector<Index> rs = evenly_spaced_rows(cx.rows, cx.opt.sample_rows);
  const Index n = static_cast<Index>(rs.size());
  const int parts = cx.opt.compare_rtn ? 3 : 2;
  Eigen::MatrixXd A = on_huge_pages<double>(parts * n, cx.N);
  cx.Wa().visit([&](const auto& Wm) {
    cx.Qa().visit([&](const auto& Qm) {
      for (Index k = 0; k < n; ++k) {
        const Index i = rs[static_cast<std::size_t>(k)];
        A.row(k) = Wm.row(i).template cast<double>();
        A.row(n + k) = Wm.row(i).template cast<double>() - Qm.row(i).template cast<double>();
      }
      return 0;
    });
    if (parts == 3) {
      const Eigen::MatrixXd Qr = nearest_on_grid(r, Wm, rs);
      for (Index k = 0; k < n; ++k) A.row(2 * n + k) = Wm.row(rs[static_cast<std::size_t>(k)]).template cast<double>() - Qr.row(k);
    }
    return 0;
  });
  const Eigen::VectorXd n2 = output_sq_norms(cx, A);
  const double h = cx.opt.h_scale, lam = r.lambda / h;
  rep.err_l2.resize(cx.rows);
  for (Index i = 0; i < cx.rows; ++i)
    rep.err_l2(i) = std::sqrt(std::max(0.0, r.energy(i) / h - lam * rep.weight_l2(i) * rep.weight_l2(i)));
  double ref2 = 0, err2 = 0, rtn2 = 0;
  for (Index k = 0; k < n; ++k) {
    rep.err_l2(rs[static_cast<std::size_t>(k)]) = std::sqrt(n2(n + k));  // measured where measured
    ref2 += n2(k);
    err2 += n2(n + k);
    if (parts == 3) rtn2 += n2(2 * n + k);
  }
  const double scale = static_cast<double>(cx.rows) / static_cast<double>(n);
  rep.err_fro = rep.err_l2.norm();
  rep.ref_fro = std::sqrt(scale * ref2);
  rep.rel_fro = ref2 > 0 ? std::sqrt(err2 / ref2) : 0.0;
  if (parts == 3) {
    rep.rtn_fro = std::sqrt(scale * rtn2);
    if (ref2 > 0) rep.rtn_rel_fro = std::sqrt(rtn2 / ref2);
  }
  rep.sampled_rows = n;
}

/// δ per (row, sweep step): step t of row i rounds column perm[t] to a lattice of step steps(i, group[t]).
/// One column per group, not per step: a rows × N table would be another layer-sized buffer.
struct StepTable {
  Eigen::MatrixXd steps;     ///< rows × groups
  std::vector<Index> group;  ///< per sweep step t, the group of its column
  std::vector<Index> used;   ///< the groups some step rounds in, ascending

  Index size() const { return static_cast<Index>(group.size()); }
  auto col(Index t) const { return steps.col(group[static_cast<std::size_t>(t)]); }
  /// Per row, the largest (smallest) δ of any step.
  Eigen::VectorXd row_max() const { return reduce([](double a, double b) { return std::max(a, b); }); }
  Eigen::VectorXd row_min() const { return reduce([](double a, double b) { return std::min(a, b); }); }
  /// The rows × N table itself (the l∞ bound's weighted product needs it).
  Eigen::MatrixXd dense() const {
    Eigen::MatrixXd D(steps.rows(), size());
    for (Index t = 0; t < size(); ++t) D.col(t) = col(t);
    return D;
  }

 private:
  template <typename Op>
  Eigen::VectorXd reduce(Op op) const {
    Eigen::VectorXd v = steps.col(used.front());
    for (std::size_t k = 1; k < used.size(); ++k)
      for (Index i = 0; i < v.size(); ++i) v(i) = op(v(i), steps(i, used[k]));
    return v;
  }
};

template <typename S>
StepTable step_table(const Grid<S>& grid, const std::vector<Index>& perm, Index rows) {
  const Index groups = grid.scale.cols();
  StepTable D;
  D.steps.resize(rows, groups);  // one lattice per (row, group)
  for (Index g = 0; g < groups; ++g)
    for (Index i = 0; i < rows; ++i)
      D.steps(i, g) = static_cast<double>(Lattice<S>{grid.scale(i, g), grid.zero(i, g), grid.min(i, g), grid.lo, grid.hi,
                                                     grid.levels.empty() ? nullptr : grid.levels.data()}
                                              .step());
  std::vector<char> seen(static_cast<std::size_t>(groups), 0);
  for (const Index j : perm) {
    D.group.push_back(grid.group_index[j]);
    seen[static_cast<std::size_t>(D.group.back())] = 1;
  }
  for (Index g = 0; g < groups; ++g)
    if (seen[static_cast<std::size_t>(g)]) D.used.push_back(g);
  return D;
}

/// Per row r: sqrt(max_i Σ_t δ_{r,t}² A(i,t)²), the Azuma scale of the l∞ bounds. With one δ per row it
/// is δ_r·max_i ‖A_{i,:}‖; otherwise one GEMM.
inline Eigen::VectorXd azuma_rows(const Eigen::MatrixXd& A, const StepTable& D) {
  const Index rows = D.steps.rows();
  const bool uniform = (D.row_max() - D.row_min()).cwiseAbs().maxCoeff() == 0;
  Eigen::VectorXd out(rows);
  if (uniform) {
    const double a2 = A.rowwise().squaredNorm().maxCoeff();
    const auto d0 = D.col(0);
    for (Index i = 0; i < rows; ++i) out(i) = std::sqrt(d0(i) * d0(i) * a2);
  } else {
    const Eigen::MatrixXd G = A.cwiseAbs2() * D.dense().cwiseAbs2().transpose();  // m × rows
    for (Index i = 0; i < rows; ++i) out(i) = std::sqrt(G.col(i).maxCoeff());
  }
  return out;
}

// ---- RTN: the triangle-inequality and Azuma bounds of docs/theory.md §3.2 ("Contrast RTN")

inline void rtn_l2_check(LayerReport& rep, const ReportContext& cx, const StepTable& D, const std::vector<Index>& perm) {
  rep.rtn_l2.statement = cx.stochastic ? "||X(w-q)||_2 <= sum_t delta_t ||X_t|| (|e_t| < delta, no clipping)"
                                       : "||X(w-q)||_2 <= (1/2) sum_t delta_t ||X_t|| (nearest, no clipping; docs/theory.md §3.2)";
  if (cx.clipped) return not_applicable(rep.rtn_l2, cx.clip_note);
  Eigen::VectorXd colnorm(cx.N);
  for (Index j = 0; j < cx.N; ++j)
    colnorm(j) = cx.X ? cx.X->col(j).norm() : std::sqrt(std::max(0.0, (*cx.H)(j, j) / cx.opt.h_scale));
  Eigen::VectorXd b = Eigen::VectorXd::Zero(cx.rows);
  for (Index t = 0; t < cx.N; ++t) b += D.col(t) * colnorm(perm[t]);
  b *= cx.stochastic ? 1.0 : 0.5;
  evaluate_check(rep.rtn_l2, std::move(b), rep.err_l2, cx.tol, true);
}

inline void rtn_linf_check(LayerReport& rep, const ReportContext& cx, const StepTable& D, const std::vector<Index>& perm) {
  rep.rtn_linf.statement = "P[ ||X(W-Q)^T||_max <= sqrt(1/2 log(2 m rows/eta)) max_i sqrt(sum_t delta_t^2 X_it^2) ] >= 1-eta";
  rep.rtn_linf.probabilistic = true;
  if (!cx.stochastic) return not_applicable(rep.rtn_linf, "deterministic rounding: the Azuma l-infinity bound is for stochastic rounding");
  if (!cx.X) return not_applicable(rep.rtn_linf, "needs X (only H was given)");
  if (cx.clipped) return not_applicable(rep.rtn_linf, cx.clip_note);
  Eigen::MatrixXd Xp(cx.m, cx.N);
  for (Index k = 0; k < cx.N; ++k) Xp.col(k) = cx.X->col(perm[k]);
  const double af = azuma_factor(static_cast<double>(cx.m) * static_cast<double>(cx.rows), cx.opt.eta);
  evaluate_check(rep.rtn_linf, af * azuma_rows(Xp, D), cx.row_linf, cx.tol, false);
}

template <typename S>
void rtn_checks(LayerReport& rep, const ReportContext& cx, const QuantResult<S>& r) {
  rep.notes.push_back("RTN has no factor and no certificate; its bounds are the triangle-inequality/Azuma ones of "
                      "docs/theory.md §3.2 (\"Contrast RTN\")");
  if (cx.Xt) {
    rep.notes.push_back("mismatched form: RTN bounds refer to the matched problem and are not evaluated");
    return;
  }
  const StepTable D = step_table(r.grid, r.perm, cx.rows);  // perm is the identity for RTN
  rtn_l2_check(rep, cx, D, r.perm);
  rtn_linf_check(rep, cx, D, r.perm);
}

/// What OPTQ with act-order and λ = rtn_damp·mean(diag) would guarantee on this layer: a fresh factor.
inline void rtn_constants(LayerReport& rep, const ReportContext& cx) {
  if (cx.Xt) {
    rep.notes.push_back("rtn_constants: not computed in the mismatched form");
    return;
  }
  Eigen::MatrixXd Hd = cx.X ? gram_of(*cx.X) : Eigen::MatrixXd(*cx.H / cx.opt.h_scale);
  const double lam = cx.opt.rtn_damp * Hd.diagonal().mean();
  const std::vector<Index> perm = column_order(Hd.diagonal(), true, {});
  Damping d;
  d.lambda = lam > 0 ? lam : 1e-12;
  d.escalate = false;
  auto f = factor_permuted<double>(Hd, perm, {}, d);
  if (f.status == Status::NumericalIssue) return;
  invert_factor(f.V);  // U = V⁻¹
  BoundConstants c = constants_from_factor(f.V, perm, d.lambda, 1.0);
  if (cx.X) {
    c.Cinf = std::sqrt(scaled_inputs(f.V, perm, *cx.X).rowwise().squaredNorm().maxCoeff());
    c.Cinf_crude = std::sqrt(c.lambda + max_col_sq_norm(*cx.X));
  } else {
    c.Cinf_crude = std::sqrt(c.lambda + Hd.diagonal().maxCoeff());
  }
  rep.constants = c;
  rep.notes.push_back("constants: what OPTQ with act-order and lambda = " + str(d.lambda) +
                      " would guarantee on this layer (a fresh factorization)");
}

// ---- OPTQ and Qronos: the bounds of the factored sweep (docs/theory.md §3, §4, §5.5)

/// What the bounds of a factored run share.
struct SweepTerms {
  bool qronos = false;
  const ConstMatRef* Xg = nullptr;  ///< the inputs the factor belongs to: X̃ for Qronos (when given), X otherwise
  double lam = 0;                   ///< λ on X's scale
  BoundConstants c;
  Eigen::MatrixXd A;                ///< X_π L D⁻¹ (m × N), when Xg is given
  Eigen::MatrixXd Sw;               ///< Qronos given X̃: the start point w̃, rows × N (otherwise s is w, read in place)
  StartStats st;                    ///< per row ‖s − q‖, max|s − q|, ‖s‖_∞ and ẽ_1 = s_{π(0)} − q_{π(0)}
  Eigen::VectorXd R2, Rinf;         ///< Qronos: R_λ² and ‖Xw − X̃w̃‖_∞ per row (zero otherwise)
  StepTable D;                      ///< δ per (row, sweep step)
  Eigen::VectorXd S2;               ///< per row Σ_t (bound on |e_t|)²/L_tt², the first term at least ẽ_1²
  double ef = 0.5;                  ///< |e_t| ≤ ef·δ_t surely: ½ nearest, 1 stochastic
  bool excess = false;              ///< some |ẽ_1| exceeds ef·δ (sequential Qronos)
};

/// 1/U_NN² must be h·(‖X_last‖² + λ) (1 + λ for a dead column, set to 1 by the quantizer): catches a
/// wrong X or h_scale, which would make every figure below wrong without a sign.
template <typename S>
void check_factor_belongs(const Eigen::MatrixXd& U, const std::vector<Index>& perm, const ConstMatRef* Xg,
                          const ConstMatRef* H, double lambda_H, double h_scale) {
  const Index N = U.rows();
  const Index last = perm[N - 1];
  const double u = U(N - 1, N - 1);
  const double got = 1.0 / (u * u);
  double col2 = Xg ? Xg->col(last).squaredNorm() : (*H)(last, last);
  if (Xg) col2 *= h_scale;
  const double want = col2 == 0 ? 1.0 + lambda_H : col2 + lambda_H;
  const double want_nofix = col2 + lambda_H;
  const double ctol = std::is_same_v<S, float> ? 1e-3 : 1e-7;
  if (std::abs(got - want) > ctol * want && std::abs(got - want_nofix) > ctol * want_nofix)
    fail("layer_report: the result's factor does not belong to the inputs given: 1/U_NN^2 = " + str(got) +
         " but h_scale*||X_" + str(last) + "||^2 + lambda = " + str(want_nofix) +
         ". Pass the X (X-tilde for Qronos) whose Gram the quantizer used, or set ReportOptions.h_scale");
}

/// The constants of the run's own factor, with C∞ and A = X_π L D⁻¹ when the inputs are given.
inline void sweep_constants(SweepTerms& t, const Eigen::MatrixXd& U, const std::vector<Index>& perm, double lambda_H,
                            const ReportContext& cx) {
  t.c = constants_from_factor(U, perm, lambda_H, cx.opt.h_scale);
  if (t.Xg && cx.opt.products_with_x) {
    t.A = scaled_inputs(U, perm, *t.Xg);
    t.c.Cinf = std::sqrt(t.A.rowwise().squaredNorm().maxCoeff());
    t.c.Cinf_crude = std::sqrt(t.lam + max_col_sq_norm(*t.Xg));
  } else if (t.Xg) {  // C∞ needs X·L (m·N² FLOPs): only the crude bound
    t.c.Cinf_crude = std::sqrt(t.lam + max_col_sq_norm(*t.Xg));
  } else {
    t.c.Cinf_crude = std::sqrt(t.lam + cx.H->diagonal().maxCoeff() / cx.opt.h_scale);
  }
}

/// The sweep's start point: w, or for Qronos given X̃ the least-squares w̃ with R_λ² and ‖Xw − X̃w̃‖_∞
/// (docs/theory.md §5.5). w̃_πᵀ = h·UᵀU (X̃_πᵀ X w + λ w_π), λ on X's scale, U on H's scale.
inline void start_point(LayerReport& rep, SweepTerms& t, const Eigen::MatrixXd& U, const std::vector<Index>& perm,
                        const ReportContext& cx) {
  const Index N = cx.N, rows = cx.rows;
  t.R2 = Eigen::VectorXd::Zero(rows);
  t.Rinf = Eigen::VectorXd::Zero(rows);
  if (!t.qronos) {
    // OPTQ sweeps from w with its dead columns (diag H = 0: no sample touches them) set to 0
    // (docs/theory.md §7 step 3): that is the start point every statement is about.
    std::vector<char> dead(static_cast<std::size_t>(N), 0);
    bool any = false;
    for (Index j = 0; j < N; ++j) {
      dead[static_cast<std::size_t>(j)] = (t.Xg ? t.Xg->col(j).squaredNorm() : (*cx.H)(j, j)) == 0;
      any = any || dead[static_cast<std::size_t>(j)];
    }
    t.st = any ? start_stats(cx.Wa(), cx.Qa(), dead, perm[0]) : cx.w_minus_q();
    return;
  }
  if (!cx.Xt) {
    t.st = cx.w_minus_q();
    return;
  }
  const ConstMatRef& W = cx.W();
  const Eigen::MatrixXd Bt = (cx.Y.transpose() * (*cx.Xt)).transpose();  // N × rows: X̃ᵀ X W
  Eigen::MatrixXd Bp(N, rows);
  for (Index k = 0; k < N; ++k) Bp.row(k) = Bt.row(perm[k]) + t.lam * W.col(perm[k]).transpose();
  Eigen::MatrixXd T = U.triangularView<Eigen::Upper>() * Bp;
  const Eigen::MatrixXd L = U.transpose();
  Bp.noalias() = L.triangularView<Eigen::Lower>() * T;
  Bp *= cx.opt.h_scale;
  t.Sw = on_huge_pages<double>(rows, N);
  for (Index k = 0; k < N; ++k) t.Sw.col(perm[k]) = Bp.row(k).transpose();
  t.st = start_stats(AnyMatrix(t.Sw), cx.Qa(), {}, perm[0]);
  const Eigen::MatrixXd Res = error_matrix(W, t.Sw, *cx.X, cx.Xt, cx.Y);  // XWᵀ − X̃W̃ᵀ
  for (Index i = 0; i < rows; ++i) {
    t.R2(i) = Res.col(i).squaredNorm() + t.lam * (t.Sw.row(i) - W.row(i)).squaredNorm();  // Qronos only
    t.Rinf(i) = Res.col(i).cwiseAbs().maxCoeff();
  }
  rep.R_lambda = t.R2.cwiseSqrt();
  rep.ls_residual_inf = t.Rinf;
}

/// The a-posteriori certificate: R_λ² + energy/h = ‖Xw − X̃q‖² + λ‖w − q‖², an identity for any rounding,
/// clipped or not (docs/theory.md §3.1(iv), §5.5); its measured gap is a self-check of the inputs.
template <typename S>
void fill_certificate(LayerReport& rep, const ReportContext& cx, const Eigen::VectorXd& energy, const SweepTerms& t) {
  if (energy.size() != cx.rows) return;
  const double h = cx.opt.h_scale;
  Eigen::VectorXd cert(cx.rows), lhs(cx.rows);
  // λ‖w − q‖² with OPTQ's w its start point (dead columns 0); Qronos's identity is about w itself.
  const Eigen::VectorXd& sq = t.qronos ? rep.weight_l2 : t.st.l2;
  double gap = 0;
  for (Index i = 0; i < cx.rows; ++i) {
    const double c2 = t.R2(i) + energy(i) / h;
    const double wq = sq(i);
    const double l2 = rep.err_l2(i) * rep.err_l2(i) + t.lam * wq * wq;
    cert(i) = std::sqrt(std::max(0.0, c2));
    lhs(i) = std::sqrt(l2);
    if (l2 > 0) gap = std::max(gap, std::abs(c2 - l2) / l2);
  }
  rep.certificate = cert;
  rep.certificate_lhs = lhs;
  rep.certificate_fro = cert.norm();
  rep.certificate_gap = gap;
  rep.energy = energy.sum() / h;
  if (gap > (std::is_same_v<S, float> ? 1e-2 : 1e-6))
    rep.notes.push_back("certificate identity off by " + str(gap) +
                        " (relative): the inputs may not be those of the run, or the factor is ill-conditioned in this precision");
}

/// The per-step error budget: |e_t| ≤ ef·δ_t, except ẽ_1, which for the sequential Qronos form may exceed
/// it (docs/theory.md §5.5 "first-step excess"): its measured value is used then.
template <typename S>
void error_budget(LayerReport& rep, SweepTerms& t, const ReportContext& cx, const QuantResult<S>& r) {
  t.D = step_table(r.grid, r.perm, cx.rows);
  const Eigen::VectorXd& e1 = t.st.e1;
  t.ef = cx.stochastic ? 1.0 : 0.5;
  t.S2 = Eigen::VectorXd::Zero(cx.rows);
  const Eigen::VectorXd& inv = t.c.inv_Ltt_sq;
  for (Index k = 0; k < cx.N; ++k) {  // a step at a time; each row's sum in step order
    const auto dk = t.D.col(k);
    for (Index i = 0; i < cx.rows; ++i) {
      double et = t.ef * dk(i);
      if (k == 0 && std::abs(e1(i)) > et * (1 + 1e-12)) {
        et = std::abs(e1(i));
        t.excess = true;
      }
      t.S2(i) += et * et * inv(k);
    }
  }
  if (t.excess && !cx.clipped)  // a clipped first weight exceeds it too, but then no bound reads S2
    rep.notes.push_back("first rounding error exceeds the quantizer's |e| bound (sequential Qronos, docs/theory.md §5.5): "
                        "its measured value is used in the l2 and weight bounds");
}

/// ‖Xw − X̃q‖₂ ≤ sqrt(R_λ² + S2) (docs/theory.md §3.2; §5.5 for Qronos).
inline void l2_check(LayerReport& rep, const SweepTerms& t, const ReportContext& cx) {
  rep.l2.statement = std::string(t.qronos ? "||Xw - X~q||_2 <= sqrt(R_lambda^2 + " : "||X(w-q)||_2 <= sqrt(") +
                     (cx.stochastic ? "sum_t delta_t^2/L_tt^2)  (stochastic: |e_t| < delta surely; docs/theory.md §3.1(iv)" +
                                          std::string(t.qronos ? ", §5.5)" : ")")
                                    : "(1/4) sum_t delta_t^2/L_tt^2)  (nearest; docs/theory.md " +
                                          std::string(t.qronos ? "§5.5)" : "§3.2)"));
  if (cx.clipped) return not_applicable(rep.l2, cx.clip_note);
  evaluate_check(rep.l2, (t.R2 + t.S2).cwiseSqrt(), rep.err_l2, cx.tol, true);
}

/// ‖s − q‖₂ ≤ sqrt(S2/λ) (docs/theory.md §3.2).
inline void weight_l2_check(LayerReport& rep, const SweepTerms& t, const ReportContext& cx) {
  rep.weight_l2_check.statement =
      t.qronos ? "||w~ - q||_2 <= sqrt(sum_t e_t-bound^2/L_tt^2 / lambda) (docs/theory.md §3.2 on X~)"
               : "||w - q||_2 <= (delta/2) C2/sqrt(lambda) (docs/theory.md §3.2; delta instead of delta/2 for stochastic)";
  if (cx.clipped) return not_applicable(rep.weight_l2_check, cx.clip_note);
  evaluate_check(rep.weight_l2_check, (t.S2 / t.lam).cwiseSqrt(), t.st.l2, cx.tol, true);
}

/// max_t |w^(t−1)_t − s_t| ≤ bound (docs/theory.md §3.4, §4.2), checked through max_t |q_t − s_t| ≤ bound + max|e_t|:
/// the drifted values themselves are not kept by the sweep.
inline void drift_check(LayerReport& rep, const SweepTerms& t, const ReportContext& cx) {
  rep.drift.statement = cx.stochastic
                            ? "P[ max_t |w^(t-1)_t - w_t| <= delta sqrt(1/2 log(2 N rows/eta)) Cw ] >= 1-eta (docs/theory.md §4.2); "
                              "checked as max_t |q_t - w_t| <= that + delta"
                            : "max_t |w^(t-1)_t - w_t| <= (delta/2) sqrt(N) Cw (docs/theory.md §3.4); checked as "
                              "max_t |q_t - w_t| <= that + delta/2";
  rep.drift.probabilistic = cx.stochastic;
  if (cx.clipped) return not_applicable(rep.drift, cx.clip_note);
  if (cx.stochastic && t.excess)
    return not_applicable(rep.drift, "first rounding error is not a stochastic rounding error of the start point (sequential Qronos)");
  const double sqN = std::sqrt(static_cast<double>(cx.N));
  const double af = azuma_factor(static_cast<double>(cx.N) * static_cast<double>(cx.rows), cx.opt.eta);
  const Eigen::VectorXd row_dmax = t.D.row_max();
  Eigen::VectorXd b(cx.rows), meas = t.st.max_abs;
  for (Index i = 0; i < cx.rows; ++i) {
    double dmax = row_dmax(i);
    if (!cx.stochastic) dmax = std::max(dmax, 2 * std::abs(t.st.e1(i)));
    const double drift = cx.stochastic ? dmax * af * t.c.Cw : 0.5 * dmax * sqN * t.c.Cw;
    b(i) = drift + t.ef * dmax;
  }
  evaluate_check(rep.drift, std::move(b), std::move(meas), cx.tol, false);
}

/// Stochastic l∞ (docs/theory.md §4.2; §5.5 for Qronos), with a union over the layer's rows (η/rows per row).
inline void linf_check(LayerReport& rep, const SweepTerms& t, const ReportContext& cx, bool dynamic_groups) {
  rep.linf.statement = std::string("P[ ||") + (t.qronos ? "Xw - X~q||_inf <= ||Xw - X~w~||_inf + " : "X(w-q)||_inf <= ") +
                       "sqrt(1/2 log(2 m rows/eta)) max_i sqrt(sum_t delta_t^2 a_ti^2) for every row ] >= 1-eta "
                       "(docs/theory.md " + (t.qronos ? "§5.5)" : "§4.2)");
  rep.linf.probabilistic = true;
  if (!cx.stochastic)
    return not_applicable(rep.linf, "deterministic rounding: the Azuma l-infinity bound is for stochastic rounding "
                                    "(deterministic worst case is (delta/2) sqrt(N) Cinf, docs/theory.md §4.2)");
  if (!t.Xg) return not_applicable(rep.linf, "needs X (only H was given)");
  if (t.A.size() == 0) return not_applicable(rep.linf, "ReportOptions.products_with_x = false: no product X·L for it");
  if (cx.clipped) return not_applicable(rep.linf, cx.clip_note);
  if (t.excess)
    return not_applicable(rep.linf, "first rounding error is not a stochastic rounding error of the start point (sequential Qronos)");
  const double af = azuma_factor(static_cast<double>(cx.m) * static_cast<double>(cx.rows), cx.opt.eta);
  evaluate_check(rep.linf, t.Rinf + af * azuma_rows(t.A, t.D), cx.row_linf, cx.tol, false);
  if (dynamic_groups)
    rep.notes.push_back("dynamic groups: their delta depends on the run so far; the Azuma statement is then "
                        "conditional (docs/bounds.md)");
}

/// Stochastic rounding: Σ_rows Σ_t (δ_t²/4)/L_tt² ≥ E[energy] (docs/theory.md §4.2).
inline double stochastic_energy_bound(const SweepTerms& t) {
  Eigen::VectorXd s = Eigen::VectorXd::Zero(t.D.steps.rows());
  for (Index k = 0; k < t.D.size(); ++k) s += (0.25 * t.c.inv_Ltt_sq(k)) * t.D.col(k).cwiseAbs2();
  return s.sum();
}

/// The K (in units of each row's smallest δ) that rules out clipping, max over rows (docs/theory.md §3.4, §4.3).
inline AlphabetSize layer_alphabet(const SweepTerms& t, const ReportContext& cx) {
  double K = 0;
  const double af = azuma_factor(static_cast<double>(cx.N) * static_cast<double>(cx.rows), cx.opt.eta);
  const Eigen::VectorXd row_dmin = t.D.row_min(), row_dmax = t.D.row_max();
  const Eigen::VectorXd& row_winf = t.st.s_max;
  for (Index i = 0; i < cx.rows; ++i) {
    const double dmin = row_dmin(i), dmax = row_dmax(i);
    if (!(dmin > 0)) continue;
    const double winf = row_winf(i);
    const double k = cx.stochastic ? winf / dmin + (dmax / dmin) * af * t.c.Cw
                                   : winf / dmin + 0.5 * (dmax / dmin) * t.c.C2 / std::sqrt(t.lam) + 0.5;
    K = std::max(K, k);
  }
  return alphabet_from_K(K);
}

/// OPTQ and Qronos with their factor kept: constants, start point, certificate, then the bounds.
template <typename S>
void sweep_checks(LayerReport& rep, const ReportContext& cx, const QuantResult<S>& r) {
  SweepTerms t;
  t.qronos = r.method == Method::Qronos;
  const Eigen::MatrixXd U = inverse_factor(r);
  if (U.rows() != cx.N) fail("layer_report: the result's factor is " + str(U.rows()) + " x " + str(U.cols()));
  if (t.qronos && !cx.Xt && cx.X)
    rep.notes.push_back("Qronos result given one input matrix: it is taken as X-tilde = X (no mismatch, R_lambda = 0)");
  if (!t.qronos && cx.Xt) {  // the constants, the certificate and the bounds are about the matched objective
    rep.notes.push_back("mismatched form for a method that ignores X-tilde: measured errors only (the bounds are for "
                        "the matched problem: call layer_report(r, W, X))");
    for (BoundCheck* b : {&rep.l2, &rep.linf, &rep.weight_l2_check, &rep.drift})
      not_applicable(*b, "mismatched form for a method that ignores X-tilde");
    return;
  }
  t.Xg = (t.qronos && cx.Xt) ? cx.Xt : cx.X;
  rep.lambda = r.lambda / cx.opt.h_scale;
  t.lam = rep.lambda;
  check_factor_belongs<S>(U, r.perm, t.Xg, cx.H, r.lambda, cx.opt.h_scale);
  sweep_constants(t, U, r.perm, r.lambda, cx);
  rep.constants = t.c;
  start_point(rep, t, U, r.perm, cx);
  fill_certificate<S>(rep, cx, r.energy, t);
  error_budget(rep, t, cx, r);
  l2_check(rep, t, cx);
  weight_l2_check(rep, t, cx);
  drift_check(rep, t, cx);
  linf_check(rep, t, cx, r.grid.dynamic);
  if (cx.stochastic && !cx.clipped) rep.expected_energy_bound = stochastic_energy_bound(t);
  rep.alphabet = layer_alphabet(t, cx);
  settle_holds(rep);
}

/// The report: W (rows × N), X (m × N, may be null), Xt (X̃, may be null), H (N × N, may be null).
template <typename S>
LayerReport layer_report_impl(const QuantResult<S>& r, const AnyMatrix& W, const ConstMatRef* X, const ConstMatRef* Xt,
                              const ConstMatRef* H, const ReportOptions& opt) {
  validate_report(r, W, X, Xt, H, opt);
  ReportContext cx = make_context(r, W, X, Xt, H, opt);
  LayerReport rep = start_report(r, cx);
  if (energy_identity_applies(r, cx)) {
    measure_sampled(rep, cx, r);
  } else {
    measure_into(rep, cx);
    if (opt.compare_rtn) compare_with_rtn(rep, cx, r);
    if (!opt.products_with_x)
      rep.notes.push_back("errors measured on every row: the energy identity gives them for matched OPTQ results only");
  }
  if (r.method == Method::GPFQ) {
    rep.notes.push_back("GPFQ has no bound in this library: the theory reconstructed in docs/theory.md covers OPTQ and "
                        "Qronos; measured errors only");
    return rep;
  }
  if (r.method == Method::RTN) {
    rtn_checks(rep, cx, r);
    if (opt.rtn_constants) rtn_constants(rep, cx);
    settle_holds(rep);
    return rep;
  }
  if (!r.factor) {
    rep.notes.push_back("the result holds no factor (keep_factor = false): measured errors only");
    return rep;
  }
  sweep_checks(rep, cx, r);
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

namespace detail {

/// fn(M as a double matrix): M itself when it is one, else a converted copy on huge pages (the report's
/// layer-sized inputs: on 4 KiB pages the first touches of a copy cost more than the report's arithmetic
/// with it, docs/performance.md §4).
template <typename Derived, typename Fn>
auto with_double(const Eigen::MatrixBase<Derived>& M, Fn&& fn) {
  if constexpr (std::is_same_v<typename Derived::Scalar, double>) {
    const ConstMatRef D(M.derived());
    return fn(D);
  } else {
    Eigen::MatrixXd copy = on_huge_pages<double>(M.rows(), M.cols());
    copy = M.derived().template cast<double>();
    const ConstMatRef D(copy);
    return fn(D);
  }
}

/// fn(W as an AnyMatrix): float and double read in place (Eigen::Ref copies only a matrix that is not
/// stored by columns), any other scalar converted to double.
template <typename Derived, typename Fn>
auto with_weights(const Eigen::MatrixBase<Derived>& M, Fn&& fn) {
  using T = typename Derived::Scalar;
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    const Eigen::Ref<const Matrix<T>> R(M.derived());
    return fn(AnyMatrix(R));
  } else {
    return with_double(M, [&](const ConstMatRef& D) { return fn(AnyMatrix(D)); });
  }
}

}  // namespace detail

/// Report of a result on its own problem: W and X (XᵀX·h_scale is the H the quantizer used; for Qronos
/// pass X̃ here, or use the mismatched overload).
template <typename S, typename DerivedW, typename DerivedX>
LayerReport layer_report(const QuantResult<S>& r, const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedX>& X,
                         const ReportOptions& opt = {}) {
  return detail::with_weights(W, [&](const detail::AnyMatrix& Wd) {
    return detail::with_double(X, [&](const detail::ConstMatRef& Xd) { return detail::layer_report_impl(r, Wd, &Xd, nullptr, nullptr, opt); });
  });
}

/// Mismatched report (Qronos, GPFQ, or any result judged on the mismatched objective): errors of XWᵀ − X̃Qᵀ.
template <typename S, typename DerivedW, typename DerivedX, typename DerivedXq>
LayerReport layer_report(const QuantResult<S>& r, const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedX>& X,
                         const Eigen::MatrixBase<DerivedXq>& Xq, const ReportOptions& opt = {}) {
  return detail::with_weights(W, [&](const detail::AnyMatrix& Wd) {
    return detail::with_double(X, [&](const detail::ConstMatRef& Xd) {
      return detail::with_double(Xq, [&](const detail::ConstMatRef& Xqd) { return detail::layer_report_impl(r, Wd, &Xd, &Xqd, nullptr, opt); });
    });
  });
}

/// Report from the Gram H (= h_scale·XᵀX) only: no l∞ figures (null), no C∞.
template <typename S, typename DerivedW, typename DerivedH>
LayerReport layer_report_gram(const QuantResult<S>& r, const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& H,
                              const ReportOptions& opt = {}) {
  return detail::with_weights(W, [&](const detail::AnyMatrix& Wd) {
    return detail::with_double(H, [&](const detail::ConstMatRef& Hd) { return detail::layer_report_impl(r, Wd, nullptr, nullptr, &Hd, opt); });
  });
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
  if (sampled_rows) os << " (relative and RTN on " << *sampled_rows << " rows)";
  os << "\n";
  if (certificate_fro) os << "  certificate (fro): " << fmt(*certificate_fro) << "  (identity gap " << fmt(certificate_gap) << ")\n";
  if (constants)
    os << "  constants: C2 " << fmt(constants->C2) << ", C2_max " << fmt(constants->C2_max) << ", Cw " << fmt(constants->Cw)
       << ", Cinf " << fmt(constants->Cinf) << " (crude " << fmt(constants->Cinf_crude) << ")\n";
  if (R_lambda) os << "  R_lambda (fro over rows): " << fmt(R_lambda->norm()) << "\n";
  for (const BoundCheck* b : checks()) {
    if (b->state == CheckState::NotEvaluated) continue;
    os << "  " << b->name << ": ";
    if (b->evaluated())
      os << "bound " << fmt(b->bound) << ", measured " << fmt(b->measured) << ", bound/measured " << fmt(b->ratio)
         << (b->state == CheckState::Holds ? ", holds" : ", VIOLATED") << (b->probabilistic ? " (probabilistic)" : "");
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
// Adversarial example (docs/theory.md §4.4)
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
