// Qronos (docs/theory.md §5): quantize W for the mismatched layer objective min_q ‖Xw − X̃q‖² + λ‖·‖, where X are
// the full-precision model's inputs of the layer and X̃ ("Xq") those produced by the already quantized
// preceding network, on the same samples.
//
// Both published forms run on the one sweep engine (detail/sweep.hpp):
//  - LeastSquaresThenOptq (docs/theory.md §5.4, "Remark 5.2"): w̃ = argmin_v ‖Xw − X̃v‖² + λ‖v − w‖²
//    = (H̃ + λI)⁻¹(X̃ᵀXw + λw), then OPTQ on H̃ = X̃ᵀX̃ from w̃.
//  - Sequential (docs/theory.md §5.2/§5.3, Qronos 2025): the first step "corrects the past" and rounds
//    c₁ = ⟨X̃₁, Xw − X̃_{>1}w_{>1}⟩/‖X̃₁‖²; every later step is an OPTQ step. After that first decision
//    the iterate equals OPTQ(X̃, λ) started from w̃ (docs/theory.md §5.4, verified there), so the engine runs the
//    same sweep from w̃ with c₁ as the first rounding argument: no second loop.
#pragma once

#include "common.hpp"
#include "detail/factor.hpp"
#include "detail/mismatch.hpp"
#include "detail/prepare.hpp"
#include "detail/stopwatch.hpp"
#include "detail/sweep.hpp"
#include "gram.hpp"
#include "grid.hpp"
#include "options.hpp"
#include "result.hpp"

#include <functional>
#include <optional>
#include <vector>

namespace pptq {

enum class QronosForm {
  LeastSquaresThenOptq,  ///< docs/theory.md §5.4: ridge least squares toward w, then OPTQ on X̃ (the default)
  Sequential,            ///< docs/theory.md §5.2/§5.3: first step corrects the past (Brevitas 2025)
};

inline const char* to_string(QronosForm f) {
  return f == QronosForm::Sequential ? "sequential" : "least-squares-then-optq";
}

/// Options of Qronos. Damping: λ = α·λ_max(X̃ᵀX̃) by default (the paper's runs, α = 1e-6), or relative
/// (λ = damp·mean diag(X̃ᵀX̃), GPTQ's convention) or absolute (DampingOptions::lambda); the most specific
/// one set wins (lambda, then damp, then alpha). Act-order is on, as in the paper's configurations.
struct QronosOptions : SweepOptions, DampingOptions {
  QronosForm form = QronosForm::LeastSquaresThenOptq;
  double alpha = 1e-6;          ///< λ = alpha·λ_max(H̃) unless damp or lambda is set
  std::optional<double> damp;   ///< λ = damp·mean(diag H̃)
  int power_iterations = 30;    ///< for λ_max (docs/theory.md §5.3 step 2)

  void check() const {
    SweepOptions::check("QronosOptions");
    DampingOptions::check("QronosOptions");
    if (!(alpha >= 0) || !std::isfinite(alpha)) detail::fail("QronosOptions.alpha must be >= 0 and finite, got " + detail::str(alpha));
    if (damp) detail::check_damp("QronosOptions", *damp);
    if (power_iterations < 1) detail::fail("QronosOptions.power_iterations must be >= 1, got " + detail::str(power_iterations));
  }
};

namespace detail {

/// What qronos_impl is given next to H̃: the cross Gram G = X̃ᵀX (cols × cols), or the correction
/// (G − H̃)Wᵀ = X̃ᵀ(X − X̃)Wᵀ itself (cols × rows, from a CorrectionGram), which saves the rows·cols²
/// product with G.
enum class CrossInput { Gram, Correction };

/// H̃(p, i) of the symmetric H̃, whether it is given whole or by its lower triangle.
template <typename FScalar>
struct SymmetricRead {
  const Eigen::Ref<const Matrix<FScalar>>& H;
  bool lower_only;
  FScalar operator()(Index p, Index i) const { return lower_only && p < i ? H(i, p) : H(p, i); }
};

/// The inputs next to W: H̃ a Gram of W's width, and G a cross Gram (cols × cols) or the correction
/// (cols × rows).
template <typename Scalar, typename FScalar>
void require_qronos_inputs(const Eigen::Ref<const Matrix<Scalar>>& W0, const Eigen::Ref<const Matrix<FScalar>>& Hm,
                           const Eigen::Ref<const Matrix<FScalar>>& Gm, bool correction, bool ht_lower_only, int threads) {
  require_nonempty(W0, "W");
  require_finite(W0, "W", 0, 0, threads);
  if (!correction) {
    require_cross_grams(Hm, Gm, W0.cols(), ht_lower_only, threads);
    return;
  }
  require_gram(Hm, W0.cols(), "Htilde (Xq^T Xq)", ht_lower_only, threads);
  if (Gm.rows() != W0.cols() || Gm.cols() != W0.rows())
    fail("the correction Xq^T (X - Xq) W^T is " + str(Gm.rows()) + " x " + str(Gm.cols()) + " but W is " + str(W0.rows()) +
         " x " + str(W0.cols()) + " (it must be cols x rows)");
  require_finite(Gm, "the correction Xq^T (X - Xq) W^T", 0, 0, threads);
}

/// λ before escalation: absolute, relative, or α·λ_max(H̃) by power iteration (recorded in r).
template <typename Result, typename FScalar>
double qronos_lambda(const QronosOptions& opt, double mean_diag, const Eigen::Ref<const Matrix<FScalar>>& Hm, int threads,
                     Result& r) {
  if (opt.lambda) return *opt.lambda;
  if (opt.damp) return *opt.damp * mean_diag;
  r.lambda_max = lambda_max_power(Hm, opt.power_iterations, threads);
  return opt.alpha * r.lambda_max;
}

/// Step 0 argument of the sequential form (docs/theory.md §5.3 step 4), per row:
/// c₁ = (wᵀG_{p,:} − w_{≠p}ᵀH̃_{p,≠p}) / H̃_pp = w_p + wᵀ(G_{p,:} − H̃_{p,:})ᵀ / H̃_pp, p = perm[0];
/// a dead first column keeps its weight (any value gives the same residual).
template <typename Scalar, typename FScalar>
Vector<Scalar> qronos_first_argument(const Eigen::Ref<const Matrix<Scalar>>& W0, const Eigen::Ref<const Matrix<FScalar>>& Gm,
                                     const SymmetricRead<FScalar>& ht, bool correction, Index p, bool dead) {
  if (dead) return W0.col(p);
  Vector<FScalar> corr;
  if (correction) {
    corr = Gm.row(p).transpose();
  } else {
    Vector<FScalar> d(W0.cols());  // (G − H̃)_{p,:}
    for (Index i = 0; i < W0.cols(); ++i) d(i) = Gm(p, i) - ht(p, i);
    corr = W0.template cast<FScalar>() * d;
  }
  return (corr / ht(p, p) + W0.col(p).template cast<FScalar>()).template cast<Scalar>();
}

/// b_π = ((G − H̃)w)_π for every row, rows × N in sweep order. From a CorrectionGram it is read off; from
/// the Grams it is W·Dt with Dt(i, k) = (G − H̃)(π_k, i), by panels of 1024 sweep columns (Dt is N × 1024,
/// not N × N). Row-chunked: all threads, the same bits for any thread count.
template <typename Scalar, typename FScalar>
Matrix<Scalar> qronos_rhs(const Eigen::Ref<const Matrix<Scalar>>& W0, const Eigen::Ref<const Matrix<FScalar>>& Gm,
                          const SymmetricRead<FScalar>& ht, bool correction, const std::vector<Index>& perm, int threads) {
  const Index rows = W0.rows(), cols = W0.cols();
  Matrix<Scalar> C(rows, cols);
  if (correction) {
    gather_rows_transposed(C, perm, threads, [&](Index p, Index i) { return Gm(p, i); });
    return C;
  }
  constexpr Index panel = 1024;
  Matrix<Scalar> Dt;
  std::vector<Index> pk;
  for (Index k0 = 0; k0 < cols; k0 += panel) {
    const Index w = std::min(panel, cols - k0);
    pk.assign(perm.begin() + k0, perm.begin() + k0 + w);
    Dt.resize(cols, w);
    gather_rows_transposed(Dt, pk, threads, [&](Index p, Index i) { return Gm(p, i) - ht(p, i); });
    for_row_chunks(rows, threads, [&](Index r0, Index r1) {
      auto Cb = C.block(r0, k0, r1 - r0, w);
      Cb.setZero();  // what Eigen's "=" product does before accumulating: the same bits
      gemm_acc<Scalar>(Cb, W0.middleRows(r0, r1 - r0), Dt);
    });
  }
  return C;
}

/// b_π → the sweep's offset (w̃ − w)_π·S = b_π S⁻ᵀ diag(d)⁻² in place (one triangular solve), or for
/// dynamic groups, which are fitted on the iterate itself, w̃ − w = that·S⁻¹ (a second solve).
template <typename Scalar>
void qronos_offset(Matrix<Scalar>& C, const SweepFactor<Scalar>& F, bool dynamic, int threads) {
  const Vector<Scalar> inv_d2 = F.d.array().square().inverse().template cast<Scalar>();
  for_row_chunks(C.rows(), threads, [&](Index r0, Index r1) {
    auto blk = C.middleRows(r0, r1 - r0);
    trsm_right_upper<Scalar>(F.S, blk, true, true);  // blk·S⁻ᵀ
    blk = blk * inv_d2.asDiagonal();
    if (dynamic) trsm_right_upper<Scalar>(F.S, blk, false, true);  // blk·S⁻¹
  });
}

/// Qronos's correction, computed in W's scalar, is refused when it overflowed (rows of W near the
/// scalar's limit times (X̃ᵀX − H̃)/(H̃ + λI) leave float's range): the sweep would round inf − inf, and a
/// correction that cannot be represented has no nearest lattice point to round to. One row's overflow
/// refuses the layer, as attach_sweep does for a non-finite Q.
template <typename Result, typename Scalar>
bool refuse_overflowed_correction(const Matrix<Scalar>& C, const Vector<Scalar>& c1, Result& r) {
  Index row = -1;
  for (Index i = 0; i < C.rows() && row < 0; ++i)
    if (!C.row(i).allFinite() || (c1.size() > 0 && !std::isfinite(c1(i)))) row = i;
  if (row < 0) return false;
  r.status = Status::NumericalIssue;
  r.message = "Qronos's least-squares correction overflows " + std::string(sizeof(Scalar) == 4 ? "float" : "double") +
              " (row " + str(row) + "): scale W down";
  return true;
}

/// Qronos in the engine's form. w̃ = (H̃ + λI)⁻¹(X̃ᵀXw + λw) = w + (H̃ + λI)⁻¹ b with b = (G − H̃)w: the
/// correction form is cheaper (its products run in W's scalar, like the sweep) and more accurate
/// (rounding touches only the correction, small when X̃ is close to X). In sweep order, with
/// H̃_π + λI = VVᵀ and V = S·diag(d): (w̃ − w)_π = b_π V⁻ᵀV⁻¹ = (b_π S⁻ᵀ diag(d)⁻²)·S⁻¹, and the sweep
/// needs only the offset (w̃ − w)_π·S (detail/sweep.hpp). b_π comes before the factor: it is the last
/// read of H̃, which a consumed H̃ gives up to the factor.
///
/// Columns X̃ never touches: H̃'s row and column are zero there. No fix is applied to H̃ (λ > 0 makes
/// H̃ + λI definite): w̃_j = w_j and the column is decoupled, so it ends as RTN of the original weight
/// (docs/theory.md §5.3 step 1). For ordering and relative damping they count as diag 1 (GPTQ).
///
/// ht_lower_only: Ht is an accumulator's lower triangle (its strict upper part is not read). consume:
/// H̃'s own matrix, given up by the caller: the factor is computed in its storage (optq.hpp), after the
/// last read of H̃.
template <typename DerivedW, typename DerivedH, typename DerivedG>
QuantResult<typename DerivedW::Scalar> qronos_impl(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedH>& Ht,
                                                   const Eigen::MatrixBase<DerivedG>& G, CrossInput kind,
                                                   const GridArg<typename DerivedW::Scalar>& grid, const QronosOptions& opt,
                                                   bool ht_lower_only = false,
                                                   Matrix<typename DerivedH::Scalar>* consume = nullptr) {
  using Scalar = typename DerivedW::Scalar;
  using FScalar = typename DerivedH::Scalar;
  static_assert(std::is_floating_point_v<Scalar> && std::is_floating_point_v<FScalar>, "pptq: float or double only");
  opt.check();
  const Eigen::Ref<const Matrix<Scalar>> W0(W.derived());
  const Eigen::Ref<const Matrix<FScalar>> Hm(Ht.derived());
  const Eigen::Ref<const Matrix<FScalar>> Gm(G.derived().template cast<FScalar>());  // no copy when G is FScalar
  const bool correction = kind == CrossInput::Correction;
  require_qronos_inputs(W0, Hm, Gm, correction, ht_lower_only, opt.threads);
  const Stopwatch total;
  const int threads = resolve_threads(opt.threads);
  const SymmetricRead<FScalar> ht{Hm, ht_lower_only};

  const ColumnPlan plan = plan_columns(Hm, opt.act_order, opt.order);
  const std::vector<Index>& perm = plan.perm;
  QuantResult<Scalar> r = start_result<QuantResult<Scalar>>(Method::Qronos, opt.rounding, opt.seed, perm);
  // The grid is fitted once on the original W before anything moves (docs/theory.md §5.3 step 7 note).
  r.grid = grid_for(grid, W0, perm, {}, opt.threads);
  const double mean_diag = plan.diag.mean();
  const Damping damping = damping_policy(mean_diag, 0.0, qronos_lambda(opt, mean_diag, Hm, threads, r), opt.escalate_damping,
                                         opt.escalation_factor, opt.max_damp);
  Vector<Scalar> c1;
  if (opt.form == QronosForm::Sequential) c1 = qronos_first_argument(W0, Gm, ht, correction, perm[0], plan.dead[perm[0]]);
  Matrix<Scalar> C = qronos_rhs(W0, Gm, ht, correction, perm, threads);  // b_π, then the offset

  const Stopwatch factor_time;
  auto f = consume ? factor_permuted_consuming<FScalar>(std::move(*consume), perm, {}, damping, opt.threads, ht_lower_only)
                   : factor_permuted<FScalar>(Hm, perm, {}, damping, opt.threads, ht_lower_only);
  r.seconds.factor = factor_time.seconds();
  attach_factor(r, f);
  if (f.status == Status::NumericalIssue) return r;
  const auto F = make_sweep_factor<Scalar>(std::move(f), opt.threads);
  qronos_offset(C, *F, r.grid.dynamic, threads);
  if (refuse_overflowed_correction(C, c1, r)) return r;

  SweepInput<Scalar> in = sweep_input(W0, perm, F.get(), opt);
  in.offset = &C;
  in.offset_in_start = r.grid.dynamic;
  in.first_argument = opt.form == QronosForm::Sequential ? &c1 : nullptr;
  attach_sweep(r, sweep(in, r.grid), F, opt.keep_factor);
  r.seconds.sweep = total.seconds() - r.seconds.factor;
  return r;
}

}  // namespace detail

// The entry points: one per input form and ownership, each for a GridSpec or a fitted Grid (GridArg).
// Handing an accumulator over (std::move) lets the factor be computed in H̃'s own storage: one N × N
// matrix less, bit-identical results, the accumulator left cleared whatever happens.

/// Qronos from the two Gram matrices: Ht = X̃ᵀX̃ (symmetric) and G = X̃ᵀX, G(i, j) = ⟨X̃_i, X_j⟩.
/// The factor and w̃ are computed in the Grams' scalar type, the sweep in W's.
template <typename DerivedW, typename DerivedH, typename DerivedG>
QuantResult<typename DerivedW::Scalar> qronos_from_grams(const Eigen::MatrixBase<DerivedW>& W,
                                                         const Eigen::MatrixBase<DerivedH>& Ht,
                                                         const Eigen::MatrixBase<DerivedG>& G,
                                                         const GridArg<typename DerivedW::Scalar>& grid,
                                                         const QronosOptions& opt = {}) {
  return detail::qronos_impl(W, Ht, G, detail::CrossInput::Gram, grid, opt);
}

/// Qronos from a streaming accumulator of X̃ᵀX̃ and X̃ᵀX.
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> qronos(const Eigen::MatrixBase<DerivedW>& W, const CrossGram<GScalar>& grams,
                                              const GridArg<typename DerivedW::Scalar>& grid, const QronosOptions& opt = {}) {
  grams.require_samples("qronos");
  return detail::qronos_impl(W, grams.htilde_lower(), grams.cross(), detail::CrossInput::Gram, grid, opt, true);
}

namespace detail {
/// Empties an accumulator handed over to qronos (std::move) when the call ends, however it ends.
template <typename Acc>
struct ClearOnExit {
  Acc& acc;
  ~ClearOnExit() { acc.clear(); }
};
}  // namespace detail

/// Qronos consuming the accumulator (`qronos(W, std::move(grams), grid)`).
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> qronos(const Eigen::MatrixBase<DerivedW>& W, CrossGram<GScalar>&& grams,
                                              const GridArg<typename DerivedW::Scalar>& grid, const QronosOptions& opt = {}) {
  grams.require_samples("qronos");
  detail::ClearOnExit<CrossGram<GScalar>> clear{grams};
  Matrix<GScalar> ht = std::move(grams).release_htilde();
  return detail::qronos_impl(W, ht, grams.cross(), detail::CrossInput::Gram, grid, opt, true, &ht);
}

/// Qronos from a CorrectionGram, which kept H̃ and X̃ᵀ(X − X̃)Wᵀ during calibration instead of the cols ×
/// cols cross Gram: the same result up to rounding, without Qronos's rows·cols² product with G.
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> qronos(const Eigen::MatrixBase<DerivedW>& W, const CorrectionGram<GScalar>& grams,
                                              const GridArg<typename DerivedW::Scalar>& grid, const QronosOptions& opt = {}) {
  grams.require_matches(W);
  return detail::qronos_impl(W, grams.htilde_lower(), grams.correction(), detail::CrossInput::Correction, grid, opt, true);
}

/// Qronos consuming a CorrectionGram (`qronos(W, std::move(grams), grid)`).
template <typename DerivedW, typename GScalar>
QuantResult<typename DerivedW::Scalar> qronos(const Eigen::MatrixBase<DerivedW>& W, CorrectionGram<GScalar>&& grams,
                                              const GridArg<typename DerivedW::Scalar>& grid, const QronosOptions& opt = {}) {
  grams.require_matches(W);
  detail::ClearOnExit<CorrectionGram<GScalar>> clear{grams};
  Matrix<GScalar> ht = std::move(grams).release_htilde();
  return detail::qronos_impl(W, ht, grams.correction(), detail::CrossInput::Correction, grid, opt, true, &ht);
}

/// Qronos from the two activation matrices, samples × cols: X (full-precision model) and Xq (X̃, the
/// quantized model's inputs of the same samples). The Grams are accumulated in double, and handed over
/// to the factor (one N × N matrix less than keeping them).
template <typename DerivedW, typename DerivedX, typename DerivedXq>
QuantResult<typename DerivedW::Scalar> qronos(const Eigen::MatrixBase<DerivedW>& W, const Eigen::MatrixBase<DerivedX>& X,
                                              const Eigen::MatrixBase<DerivedXq>& Xq,
                                              const GridArg<typename DerivedW::Scalar>& grid, const QronosOptions& opt = {}) {
  opt.check();
  detail::require_mismatched_inputs(X, Xq, W.cols());
  CrossGram<double> grams(W.cols());
  grams.add(X, Xq);
  return qronos(W, std::move(grams), grid, opt);
}

}  // namespace pptq
